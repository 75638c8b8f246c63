"""`flowmill workflows list|show`: workflow runs and their nodes."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.text import Text

from .._app import App
from .._clock import from_ms
from ..workflows._builder import WorkflowStatus
from ._common import (
    on_store,
    print_columns,
    stdout_console,
    when,
)
from ._root import AppOpt, UrlOpt, workflows_cli

_STATE_STYLE = {
    "completed": "green",
    "failed": "red",
    "dead_lettered": "red",
    "cancelled": "yellow",
    "expired": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "ready": "blue",
    "blocked": "dim",
}


def _duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    ms = value.total_seconds() * 1000
    return f" {ms:.0f} ms" if ms < 10_000 else f" {ms / 1000:.1f} s"


@workflows_cli.command("list")
def workflows_list(
    url: UrlOpt = None,
    app_path: AppOpt = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only runs of this workflow")
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", min=1, help="How many runs")] = 20,
) -> None:
    """The newest workflow runs, with their nodes counted by state."""
    _, runs = on_store(url, app_path, lambda app: app.workflow_runs(name=name, limit=limit))
    console = stdout_console()
    if not runs:
        console.print("no workflow runs")
        return
    rows = [
        [
            r.id,
            r.name,
            when(from_ms(r.created_at_ms), short=True),
            f"{r.total}",
            ", ".join(f"{s.value} {n}" for s, n in sorted(r.by_state.items())),
        ]
        for r in runs
    ]
    print_columns(console, "workflow runs", ["id", "name", "created", "nodes", "states"], rows)


@workflows_cli.command("show")
def workflows_show(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="The workflow run id")],
    url: UrlOpt = None,
    app_path: AppOpt = None,
) -> None:
    """A tree of the run's nodes: state, duration, attempts and errors.

    Each node is drawn under its first upstream; its other upstreams are named."""
    from rich.tree import Tree

    async def work(app: App) -> WorkflowStatus:
        return await (await app.workflow_run(run_id)).status()

    _, status = on_store(url, app_path, work)
    console = stdout_console()
    counts = ", ".join(f"{s.value} {n}" for s, n in sorted(status.counts.items()))
    root = Tree(
        Text.assemble(
            (f"{status.name}", "bold"),
            f"  run {status.id}  ",
            (status.state.value, _STATE_STYLE.get(status.state.value, "")),
            f"  ({counts})",
        )
    )
    branches: dict[str, Tree] = {}
    for node in status.nodes.values():
        parent = branches.get(node.upstream[0], root) if node.upstream else root
        label = Text.assemble(
            (node.name, "bold"),
            "  ",
            (node.state.value, _STATE_STYLE.get(node.state.value, "")),
            _duration(node.duration),
            f"  attempts {node.attempts}" if node.attempts > 1 else "",
            f"  (also after {', '.join(node.upstream[1:])})" if len(node.upstream) > 1 else "",
        )
        if node.error is not None:
            label.append(f"\n{node.error.type}: {node.error.message}", style="red")
        branches[node.name] = parent.add(label)
    console.print(root)
