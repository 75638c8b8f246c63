"""`flowmill schedules list|pause|resume|run-now NAME`: the stored schedules."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from .._app import App
from .._clock import from_ms, from_ms_opt
from .._schedules import run_now, set_paused
from ..store.contract.schedules import ScheduleRow, SchedulesList
from ._common import fail, on_store, print_columns, stdout_console, when
from ._root import AppOpt, UrlOpt, schedules_cli

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The schedule's name")]


def trigger_text(row: ScheduleRow) -> str:
    """ "cron 0 3 * * * Europe/Paris" or "every 0:05:00"."""
    kind, _, spec = row.trigger.partition(":")
    if kind == "every":
        return f"every {timedelta(milliseconds=int(spec))}"
    return f"cron {spec} {row.tz or 'UTC'}"


def declared_text(row: ScheduleRow) -> str:
    if row.undeclared_since_ms is None:
        return "yes"
    return f"not declared by any worker since {when(from_ms(row.undeclared_since_ms), short=True)}"


@schedules_cli.command("list")
def schedules_list(url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Every stored schedule: trigger, next and last fire time, paused, misfire policy, and
    whether the code of the workers started last declares it."""

    async def work(app: App) -> list[ScheduleRow]:
        await app.open()
        return await app.store.schedules_list(SchedulesList())

    _, rows = on_store(url, app_path, work)
    console = stdout_console()
    if not rows:
        console.print("no schedules")
        return
    table = [
        [
            r.name,
            r.kind,
            trigger_text(r),
            "paused" if r.paused else when(from_ms(r.next_fire_ms), short=True),
            when(from_ms_opt(r.last_tick_ms), short=True),
            str(r.fired),
            r.misfire,
            declared_text(r),
        ]
        for r in rows
    ]
    headers = ["name", "task", "trigger", "next", "last tick", "fired", "misfire", "declared"]
    print_columns(console, "schedules", headers, table)


def _pause(name: str, paused: bool, url: str | None, app_path: str | None) -> None:
    async def work(app: App) -> ScheduleRow | None:
        await app.open()
        return await set_paused(app.store, name, paused, app.clock.store_now())

    _, row = on_store(url, app_path, work)
    if row is None:
        fail(f"no schedule named {name!r}")
    console = stdout_console()
    if row.paused:
        console.print(f"schedule {name} paused")
    else:
        console.print(f"schedule {name} resumed; next fire {when(from_ms(row.next_fire_ms))}")


@schedules_cli.command("pause")
def schedules_pause(name: NameArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Stop firing a schedule (until `resume`; a worker's declaration keeps the pause)."""
    _pause(name, True, url, app_path)


@schedules_cli.command("resume")
def schedules_resume(name: NameArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Fire a paused schedule again from its next tick (ticks that fell while paused are
    not fired)."""
    _pause(name, False, url, app_path)


@schedules_cli.command("run-now")
def schedules_run_now(name: NameArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Submit one task of a schedule now; its next fire time does not change."""

    async def work(app: App) -> object:
        await app.open()
        return await run_now(app.store, name, app.clock.store_now())

    _, out = on_store(url, app_path, work)
    if out is None:
        fail(f"no schedule named {name!r}")
    stdout_console().print(f"submitted task {getattr(out, 'id', '')} for schedule {name}")
