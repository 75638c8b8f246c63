"""A workflow app for the workflow crash test, run in worker subprocesses.

Every node runs the one task `wf_node`: its result is its own weight plus the results of
its upstream nodes, so a node that ran with the wrong (or missing) upstream results shows
in the run's result. Each execution is logged twice in a ledger database (a `start` row
before the work, an `end` row after it) with the pid of the worker that ran it, and each
node writes one effect keyed by node name (idempotent, as real effects must be under
at-least-once execution). A test can then tell "each node's effect happened once" from
"each node ran once", and which process ran what, in which order (the rowid).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta

import flowmill as fm

from ._crash_app import env_lease_s, serve

TASK = "wf_node"


@dataclass
class Step:
    node: str  # the node's name (a handler does not know it otherwise)
    weight: int
    sleep_ms: int  # the work: long enough for a kill to land while nodes run


def build(url: str, ledger: str) -> fm.App:
    app = fm.App(url)
    local = threading.local()

    def record(step: Step, ctx: fm.Context, phase: str, value: int | None) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            # One connection per thread; synchronous=OFF survives a killed process (the
            # kernel has the writes), which is all the test needs of the ledger.
            conn = local.conn = sqlite3.connect(ledger, timeout=30)
            conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.execute(
                "INSERT INTO executions (node, task_id, pid, attempt, phase, value)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (step.node, ctx.task_id, os.getpid(), ctx.attempt, phase, value),
            )
            if phase == "end":
                conn.execute(
                    "INSERT OR IGNORE INTO effects (node, task_id, value) VALUES (?, ?, ?)",
                    (step.node, ctx.task_id, value),
                )

    @app.task(name=TASK, retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    async def wf_node(step: Step, ctx: fm.Context) -> int:
        await asyncio.to_thread(record, step, ctx, "start", None)
        up = await ctx.upstreams()
        value = step.weight + sum(int(up[name]) for name in up)
        await asyncio.sleep(step.sleep_ms / 1000)
        await asyncio.to_thread(record, step, ctx, "end", value)
        return value

    return app


def init_ledger(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE effects (node TEXT PRIMARY KEY, task_id TEXT, value INTEGER)")
        conn.execute(
            "CREATE TABLE executions (id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT,"
            " task_id TEXT, pid INTEGER, attempt INTEGER, phase TEXT, value INTEGER)"
        )


async def _main(url: str, ledger: str, until_idle: bool) -> None:
    app = build(url, ledger)
    concurrency = int(os.environ.get("FM_TEST_CONCURRENCY", "4"))
    await serve(app, lease_s=env_lease_s(), until_idle=until_idle, concurrency=concurrency)


if __name__ == "__main__":
    # Run this module's own copy (not `__main__`'s), so `Step` is `tests.crash._wf_crash_app.Step`
    # in the worker as in the test process.
    from tests.crash import _wf_crash_app

    asyncio.run(_wf_crash_app._main(sys.argv[1], sys.argv[2], sys.argv[3] == "idle"))
