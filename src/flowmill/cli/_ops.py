"""Operating a store: `flowmill workers`, `queues list|pause|resume`, `purge` and `top`."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .._app import App
from .._logging import mask_url
from .._operate import MetricsSnapshot, QueueInfo, WorkerInfo, purge_states
from .._states import State
from ._common import (
    fail,
    new_table,
    on_store,
    parse_states,
    print_titled,
    stdout_console,
)
from ._root import AppOpt, UrlOpt, cli, queues_cli

_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")


def parse_duration(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `45s`, `2w`, or a sum like `1d12h`."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"bad duration {text!r}: use e.g. 7d, 12h, 30m, 45s or 1d12h")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def ago(delta: timedelta | None) -> str:
    """A short age: `3s`, `4m05s`, `2h10m`, `3d4h`; `-` for None."""
    if delta is None:
        return "-"
    s = int(delta.total_seconds())
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600}h"


_STATUS_STYLE = {"alive": "green", "dead": "red", "stopped": "dim"}


def workers_table(workers: list[WorkerInfo]) -> Table:
    table = new_table(
        "worker", "status", "host", "pid", "queues", "in flight", "last seen", "version"
    )
    for w in workers:
        table.add_row(
            Text(w.id),
            Text(w.status, style=_STATUS_STYLE[w.status]),
            Text(w.host),
            Text(str(w.pid)),
            Text(",".join(w.queues)),
            Text(f"{w.in_flight}/{w.concurrency}"),
            Text(f"{ago(w.last_seen_ago)} ago"),
            Text(w.version),
        )
    return table


_SHOWN = (
    State.READY,
    State.RUNNING,
    State.SCHEDULED,
    State.BLOCKED,
    State.WAITING_CHILDREN,
    State.SUSPENDED,
    State.COMPLETED,
    State.FAILED,
    State.DEAD_LETTERED,
)


def queues_table(queues: list[QueueInfo]) -> Table:
    table = new_table("queue", "paused")
    for s in _SHOWN:
        table.add_column(s.value, justify="right", style="red" if s is State.DEAD_LETTERED else "")
    table.add_column("oldest ready", justify="right")
    for q in queues:
        paused = Text("PAUSED", style="bold yellow") if q.paused else Text("-")
        table.add_row(
            Text(q.name),
            paused,
            *(Text(str(q.counts.get(s, 0))) for s in _SHOWN),
            Text(ago(q.oldest_ready_age)),
        )
    return table


@cli.command()
def workers(
    url: UrlOpt = None,
    app_path: AppOpt = None,
    alive: Annotated[bool, typer.Option("--alive", help="Only the live ones")] = False,
) -> None:
    """Workers of the registry: alive, dead (silent for 3 heartbeats) or stopped."""
    app, rows = on_store(url, app_path, lambda app: app.workers())
    console = stdout_console()
    shown = [w for w in rows if w.alive] if alive else rows
    if not shown:
        console.print(f"no {'live ' if alive else ''}workers in {mask_url(app.url)}")
        return
    live = sum(w.alive for w in rows)
    print_titled(console, f"workers in {mask_url(app.url)} ({live} alive)", workers_table(shown))


@queues_cli.command("list")
def queues_list(url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Every queue: paused or not, task counts by state, the oldest ready task's age."""
    app, rows = on_store(url, app_path, lambda app: app.list_queues())
    console = stdout_console()
    if not rows:
        console.print(f"no queues in {mask_url(app.url)}")
        return
    print_titled(console, f"queues in {mask_url(app.url)}", queues_table(rows))


NameArg = Annotated[str, typer.Argument(metavar="QUEUE", help="The queue's name")]


@queues_cli.command("pause")
def queues_pause(name: NameArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Stop every worker claiming from QUEUE (submits still succeed) until resumed."""
    app, changed = on_store(url, app_path, lambda app: app.pause_queue(name))
    print(
        f"queue {name} paused in {mask_url(app.url)}"
        if changed
        else f"queue {name} was already paused"
    )


@queues_cli.command("resume")
def queues_resume(name: NameArg, url: UrlOpt = None, app_path: AppOpt = None) -> None:
    """Let workers claim from QUEUE again."""
    app, changed = on_store(url, app_path, lambda app: app.resume_queue(name))
    print(
        f"queue {name} resumed in {mask_url(app.url)}"
        if changed
        else f"queue {name} was not paused"
    )


@cli.command()
def purge(
    older_than: Annotated[
        str, typer.Option("--older-than", help="Finished before this long ago: 7d, 12h, 30m")
    ],
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="Only these finished states (repeat or comma-separate). Default: all but "
            "dead_lettered",
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Tasks per transaction")] = 500,
    url: UrlOpt = None,
    app_path: AppOpt = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Delete finished tasks (with their events, frames, results) older than --older-than."""
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        fail(str(exc), 2)
    states = purge_states(parse_states(state) or None)
    bad = [s.value for s in states if not s.terminal]
    if bad:
        fail(f"only finished tasks can be purged; not terminal: {', '.join(bad)}", 2)
    console = stdout_console()

    async def work(app: App) -> int:
        # At most this many can go: the bar's end (tasks too young or still needed stay).
        total = sum(q.counts.get(s, 0) for q in await app.list_queues() for s in states)
        if not progress:
            return await app.purge(older_than=age, states=states, batch=batch)
        bar = Progress(
            TextColumn("purging"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        with bar:
            job = bar.add_task("purge", total=total or None)
            return await app.purge(
                older_than=age,
                states=states,
                batch=batch,
                progress=lambda n: bar.advance(job, n),
            )

    app, done = on_store(url, app_path, work)
    names = ", ".join(s.value for s in states)
    where = mask_url(app.url)
    print(f"purged {done} task(s) ({names}) finished more than {older_than} ago from {where}")


def top_view(app_url: str, snap: MetricsSnapshot) -> Group:
    live = snap.workers_alive
    head = Text.assemble(("flowmill top", "bold"), f"  {app_url}")
    # The counts get a line of their own, so a long store URL cannot wrap them apart.
    counts = Text.assemble(
        (f"{live} worker(s) alive", "green" if live else "yellow"),
        "  ",
        (f"{snap.dead_letters} dead letter(s)", "red" if snap.dead_letters else ""),
    )
    parts: list[Text | Table] = [head, counts, Text("queues", style="italic")]
    parts.append(queues_table(snap.queues) if snap.queues else Text("no queues"))
    parts.append(Text("workers", style="italic"))
    parts.append(workers_table(snap.workers) if snap.workers else Text("no workers"))
    return Group(*parts)


@cli.command()
def top(
    url: UrlOpt = None,
    app_path: AppOpt = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one view and exit")] = False,
) -> None:
    """A live view of queues and workers, read from the store (Ctrl-C to quit)."""
    console = stdout_console()

    async def work(app: App) -> None:
        snap = await app.metrics_snapshot()
        if once:
            console.print(top_view(mask_url(app.url), snap))
            return
        with Live(top_view(mask_url(app.url), snap), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(top_view(app.url, await app.metrics_snapshot()), refresh=True)

    on_store(url, app_path, work)
