"""Inspection: `flowmill status`, `tasks list|show|cancel|retry`, `replay`, `dead-letters`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from .._app import App, TaskInfo
from .._budgets import BudgetStatus
from .._inspect import Undecodable
from .._logging import mask_url
from .._states import State
from ..errors import FlowmillError, IllegalTransition
from ._common import (
    add_row,
    fail,
    new_table,
    on_store,
    parse_states,
    parse_tag,
    print_columns,
    print_titled,
    shorten,
    stdout_console,
    to_json,
    when,
)
from ._json import print_json, status_json, task_json
from ._root import AppOpt, IdArg, JsonOpt, UrlOpt, cli, tasks_cli

LimitOpt = Annotated[int, typer.Option(metavar="N", min=1, max=10_000, help="At most this many")]
AfterOpt = Annotated[
    str | None, typer.Option(metavar="ID", help="Start after this task id (the next page)")
]


@cli.command()
def status(url: UrlOpt = None, app_path: AppOpt = None, json_out: JsonOpt = False) -> None:
    """Task counts by queue and state, dead letters included; then every budget."""
    app, rows = on_store(url, app_path, lambda app: app.status())
    if json_out:
        print_json(status_json(rows))
        return
    console = stdout_console()
    if not rows:
        console.print(f"no tasks in {mask_url(app.url)}")
        _print_budgets(console, rows.budgets)
        return
    shown = [s for s in State if s is State.DEAD_LETTERED or any(r.state is s for r in rows)]
    queues = sorted({r.queue for r in rows})
    counts = {(r.queue, r.state): r.count for r in rows}
    table = new_table("queue")
    for s in shown:
        table.add_column(s.value, justify="right", style="red" if s is State.DEAD_LETTERED else "")
    table.add_column("total", justify="right", style="bold")
    for q in [*queues, "all"] if len(queues) > 1 else queues:
        picked = queues if q == "all" else [q]
        cells = [sum(counts.get((p, s), 0) for p in picked) for s in shown]
        total = sum(r.count for r in rows if r.queue in picked)
        add_row(table, q, *(str(c) for c in cells), str(total))
    print_titled(console, f"tasks in {mask_url(app.url)}", table)
    _print_budgets(console, rows.budgets)


def _amounts(values: dict[str, int]) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(values.items())) or "-"


def _print_budgets(console: Console, budgets: list[BudgetStatus]) -> None:
    """Usage against limits; a hard-breached budget holds its ready tasks back."""
    if not budgets:
        return
    table = new_table("budget", "usage", "hard", "soft", "window ends", "state", "held")
    for b in budgets:
        state = f"HARD-BREACHED ({', '.join(b.breached)})" if b.hard_breached else "ok"
        add_row(
            table,
            b.id,
            _amounts(b.usage),
            _amounts(b.hard),
            _amounts(b.soft),
            when(b.window_ends_at, short=True),
            state,
            str(b.tasks_held),
        )
    print_titled(console, "budgets", table)


@tasks_cli.command("list")
def tasks_list(
    state: Annotated[
        list[str] | None,
        typer.Option(metavar="STATE", help="Only these states (repeat, or comma-separate)"),
    ] = None,
    queue: Annotated[str | None, typer.Option(metavar="NAME", help="Only this queue")] = None,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="Only this task name")] = None,
    tag: Annotated[
        str | None,
        typer.Option(metavar="KEY[=VALUE]", help="Only tasks with this tag (and value)"),
    ] = None,
    search: Annotated[
        str | None,
        typer.Option(metavar="PREFIX", help="Only tasks whose id or key starts with PREFIX"),
    ] = None,
    limit: LimitOpt = 50,
    after: AfterOpt = None,
    url: UrlOpt = None,
    app_path: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tasks in submission order, filtered (the next page: --after the last id)."""
    states = parse_states(state)
    tag_key, tag_value = parse_tag(tag)
    app, infos = on_store(
        url,
        app_path,
        lambda app: app.list_tasks(
            states=states,
            queue=queue,
            name=name,
            limit=limit,
            after=after,
            tag=tag_key,
            tag_value=tag_value,
            search=search,
        ),
    )
    if json_out:
        print_json([task_json(i) for i in infos])
        return
    _print_tasks(infos, limit, f"tasks in {mask_url(app.url)}")


def _print_tasks(infos: list[TaskInfo], limit: int, title: str) -> None:
    console = stdout_console()
    if not infos:
        console.print("no matching tasks")
        return
    rows = [
        [
            i.id,
            i.name,
            i.queue,
            i.state.value,
            f"{i.attempts}/{i.max_attempts}",
            str(i.priority),
            when(i.created_at, short=True),
            _error_cell(i),
        ]
        for i in infos
    ]
    headers = ["id", "name", "queue", "state", "tries", "prio", "created", "error"]
    print_columns(console, title, headers, rows)
    if len(infos) == limit:
        console.print(f"(first {limit}; next page: --after {infos[-1].id})")


def _error_cell(i: TaskInfo) -> str:
    """The error column of a list; fields of the row that did not decode are named first."""
    cells = [f"{i.error.type}: {shorten(i.error.message, 50)}"] if i.error else []
    if i.decode_errors:
        cells.insert(0, f"[undecodable: {', '.join(i.decode_errors)}]")
    return " ".join(cells)


def _undecodable(info: TaskInfo, field: str) -> str:
    why = info.decode_errors.get(field)
    return "-" if why is None else f"<undecodable: {why}>"


def _shown(value: object) -> str:
    """A payload or result for `tasks show`: JSON, or the marker of one that did not decode."""
    return str(value) if isinstance(value, Undecodable) else to_json(value, indent=2)


@tasks_cli.command("show")
def tasks_show(
    task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None, json_out: JsonOpt = False
) -> None:
    """Every field of one task, its error with traceback, and its result."""
    _, info = on_store(url, app_path, lambda app: app.get(task_id))
    if json_out:
        print_json(task_json(info))
        return
    console = stdout_console()
    table = new_table("field", "value", header=False)
    table.columns[0].style = "bold"
    table.columns[0].no_wrap = True
    table.columns[1].overflow = "fold"
    fields: list[tuple[str, str]] = [
        ("id", info.id),
        ("name", info.name),
        ("queue", info.queue),
        ("state", info.state.value),
        ("phase", info.phase.value),
        ("attempts", f"{info.attempts} of {info.max_attempts}"),
        ("priority", str(info.priority)),
        ("key", info.key or "-"),
        ("tags", to_json(info.tags) if info.tags else _undecodable(info, "tags")),
        ("parent", info.parent_id or "-"),
        ("progress", "-" if info.progress is None else f"{info.progress:g}%"),
        ("progress message", info.progress_message or "-"),
        ("lease owner", info.lease_owner or "-"),
        ("lease expires", when(info.lease_expires_at)),
        ("cancel requested", "yes" if info.cancel_requested else "no"),
        ("created", when(info.created_at)),
        ("updated", when(info.updated_at)),
        ("run at", when(info.run_at)),
        ("expires", when(info.expires_at)),
        ("started", when(info.started_at)),
        ("finished", when(info.finished_at)),
        ("payload", _shown(info.payload)),
        ("result", "-" if info.result is None else _shown(info.result)),
    ]
    if info.error is not None:
        fields.append(("error", f"{info.error.type} ({info.error.category}): {info.error.message}"))
    for k, v in fields:
        add_row(table, k, v)
    print_titled(console, f"task {info.id}", table)
    if info.error is not None and info.error.traceback:
        console.print("[bold]traceback[/] (last attempt):", markup=True)
        console.print(info.error.traceback.rstrip(), markup=False)


@tasks_cli.command("cancel")
def tasks_cancel(task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Cancel a waiting task now, or ask a running one to stop."""
    _, after = on_store(
        url, app_path, lambda app: app.cancel(task_id, "cancelled from the flowmill CLI")
    )
    if after is State.CANCELLED:
        print(f"task {task_id}: cancelled")
    elif after is State.RUNNING:
        print(f"task {task_id}: running; asked its worker to stop it")
    else:
        fail(f"task {task_id} is {after.value}: it can no longer be cancelled")


def _retry(task_id: str, url: str | None, app_path: str | None) -> None:
    async def retry(app: App) -> State:
        try:
            return await app.retry(task_id)
        except IllegalTransition as exc:
            raise FlowmillError(
                f"task {task_id} is {exc.source}: only failed or dead-lettered tasks can be retried"
            ) from None

    _, after = on_store(url, app_path, retry)
    print(f"task {task_id}: {after.value} (a fresh attempt budget)")


@tasks_cli.command("retry")
def tasks_retry(task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Run a failed or dead-lettered task again."""
    _retry(task_id, url, app_path)


@cli.command()
def replay(task_id: IdArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Run a dead-lettered (or failed) task again: the same as `tasks retry`."""
    _retry(task_id, url, app_path)


@cli.command("dead-letters")
def dead_letters(
    limit: LimitOpt = 50,
    after: AfterOpt = None,
    url: UrlOpt = None,
    app_path: AppOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Tasks whose retries ran out, oldest first; `flowmill replay ID` runs one again."""
    app, infos = on_store(url, app_path, lambda app: app.dead_letters(limit=limit, after=after))
    if json_out:
        print_json([task_json(i) for i in infos])
        return
    console = stdout_console()
    if not infos:
        console.print(f"no dead letters in {mask_url(app.url)}")
        return
    rows = [
        [
            i.id,
            i.name,
            i.queue,
            f"{i.attempts}/{i.max_attempts}",
            when(i.finished_at, short=True),
            f"{i.error.type}: {shorten(i.error.message, 50)}" if i.error else "",
        ]
        for i in infos
    ]
    headers = ["id", "name", "queue", "tries", "finished", "error"]
    print_columns(console, f"dead letters in {mask_url(app.url)}", headers, rows)
    if len(infos) == limit:
        console.print(f"(first {limit}; next page: --after {infos[-1].id})")
