"""`flowmill submit`: submit one task by name, optionally wait for its result."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.text import Text

from .._app import App, TaskInfo
from .._handle import TaskHandle
from .._shape import json_syntax_error
from .._states import State
from ..errors import TaskFailed
from ._common import fail, make_app, one_line_errors, require_store, run_on, seconds, to_json
from ._root import AppOpt, UrlOpt, cli

# `flowmill submit MODULE:APP NAME [PAYLOAD]`, the form before `--app`: still understood.
_APP_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _older_form(first: str, second: str | None, third: str | None) -> bool:
    """True for `MODULE:APP NAME [PAYLOAD]`: three arguments, or an app path followed by
    something that is not JSON (a task name)."""
    if third is not None:
        return True
    return (
        second is not None
        and _APP_PATH.match(first) is not None
        and json_syntax_error(second) is not None
    )


def _parse(payload: str | None) -> tuple[bytes, Any]:
    """The payload argument as JSON bytes and value; a syntax error says where it is."""
    data = (payload if payload is not None else "null").encode()
    try:
        return data, msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        fail(f"PAYLOAD_JSON: {json_syntax_error(data) or exc}", 2)


def unclaimed_notice(info: TaskInfo, now_ms: int, after_s: float) -> str | None:
    """What `submit --wait` says when the task still waits, due and never claimed."""
    due = info.run_at is None or info.run_at.timestamp() * 1000 <= now_ms
    waiting = info.state is State.READY or (info.state is State.SCHEDULED and due)
    if not waiting or info.attempts > 0 or info.lease_owner is not None:
        return None
    return (
        f"task {info.id} ({info.name}) is still waiting after {after_s:g} s: no worker has "
        f"claimed it yet; is a worker running with this task registered, serving queue "
        f"{info.queue!r}? (still waiting)"
    )


async def _watch(app: App, h: TaskHandle[Any], after_s: float) -> None:
    await asyncio.sleep(after_s)  # the user's own notice delay, not a test's timer
    info = await app.get(h.id)
    now_ms = app.clock.store_now() or int(time.time() * 1000)
    notice = unclaimed_notice(info, now_ms, after_s)
    if notice is not None:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            Text.assemble(("note:", "bold yellow"), " ", notice)
        )


@cli.command(context_settings={"allow_extra_args": True})
def submit(
    ctx: typer.Context,
    task_name: Annotated[
        str, typer.Argument(metavar="TASK_NAME", help="The task's name, e.g. jobs.resize")
    ],
    payload: Annotated[
        str | None,
        typer.Argument(metavar="PAYLOAD_JSON", help="The payload as JSON [default: null]"),
    ] = None,
    app_path: AppOpt = None,
    url: UrlOpt = None,
    key: Annotated[
        str | None, typer.Option(metavar="KEY", help="Dedup key: one active task per key")
    ] = None,
    delay: Annotated[
        float | None, typer.Option(metavar="SECONDS", help="Run after this many seconds")
    ] = None,
    priority: Annotated[int | None, typer.Option(metavar="N", help="Higher runs first")] = None,
    queue: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Queue [default: the task's, else default]"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result and print it")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="With --wait: give up after this many seconds"),
    ] = None,
    unclaimed_notice_s: Annotated[
        float,
        typer.Option(
            "--notice-after",
            metavar="SECONDS",
            min=0,
            help="With --wait: say so on stderr if no worker has claimed the task by then "
            "(0: never)",
        ),
    ] = 3.0,
) -> None:
    """Submit one task and print its id (with --wait, then its result as JSON).

    Without --app the payload is sent as plain JSON, for the worker that registers
    TASK_NAME; with --app it is first checked against that task's type.

    The older form, flowmill submit MODULE:APP TASK_NAME [PAYLOAD_JSON], works too.
    """
    if len(ctx.args) > 1:
        fail(f"unexpected arguments: {' '.join(ctx.args[1:])}", 2)
    older_payload = ctx.args[0] if ctx.args else None
    if _older_form(task_name, payload, older_payload):
        if app_path is not None:
            fail("give the app once: --app MODULE:APP, or as the first argument", 2)
        app_path, task_name, payload = task_name, str(payload), older_payload
    data, value = _parse(payload)
    with one_line_errors():
        app = make_app(url, app_path)
        if app_path is not None:
            tdef = app.registry.get(task_name)
            if tdef is None:
                names = ", ".join(app.task_names()) or "none"
                fail(
                    f"no task named {task_name!r} in {app_path} (registered: {names}); "
                    "without --app a name is submitted as plain JSON"
                )
            value = tdef.payload.decode(data)

        async def run(app: App) -> tuple[str, Any]:
            if app_path is None:
                await require_store(app)  # a mistyped path would create a database nobody reads
            h = await app.submit(
                task_name, value, key=key, delay=seconds("--delay", delay), priority=priority,
                queue=queue,
            )  # fmt: skip
            if not wait:
                return h.id, None
            print(h.id, flush=True)
            watch = None
            if unclaimed_notice_s > 0:
                watch = asyncio.create_task(_watch(app, h, unclaimed_notice_s + (delay or 0)))
            try:
                return h.id, await h.result(timeout=seconds("--timeout", timeout))
            finally:
                if watch is not None:
                    watch.cancel()

        try:
            task_id, result = run_on(app, run)
        except TaskFailed as exc:
            fail(f"task {exc.task_id} ended {exc.state}: {exc.error_type}: {exc.message}")
    print(to_json(result) if wait else task_id)
