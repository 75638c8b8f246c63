"""A task module for the crash tests, run in worker subprocesses.

Each task writes its effect to a ledger database keyed by task id (idempotent, as real
effects must be under at-least-once execution) and logs every execution separately, so a
test can tell "each task's effect happened once" from "each task ran once".
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import flowmill as fm


def recorder(ledger: str) -> Callable[[str, int, int], None]:
    """`record(task_id, n, attempt)`: log an execution and (once per task) its effect."""
    local = threading.local()

    def record(task_id: str, n: int, attempt: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            # One connection per thread; synchronous=OFF survives a killed process (the
            # kernel has the writes), which is all these tests need of the ledger.
            conn = local.conn = sqlite3.connect(ledger, timeout=30)
            conn.execute("PRAGMA synchronous = OFF")
        with conn:
            conn.execute(
                "INSERT INTO executions (task_id, n, pid, attempt) VALUES (?, ?, ?, ?)",
                (task_id, n, os.getpid(), attempt),
            )
            conn.execute("INSERT OR IGNORE INTO effects (task_id, n) VALUES (?, ?)", (task_id, n))

    return record


def build(url: str, ledger: str) -> fm.App:
    app = fm.App(url)
    record = recorder(ledger)

    @app.task(name="effect", retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    async def effect(n: int, ctx: fm.Context) -> int:
        await asyncio.sleep(0.02)  # the work: long enough for a kill to land mid-task
        await asyncio.to_thread(record, ctx.task_id, n, ctx.attempt)
        return n

    @app.task(name="tick", retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    def tick(n: int, ctx: fm.Context) -> int:
        record(ctx.task_id, n, ctx.attempt)  # sync: runs in the worker's thread pool
        return n

    @app.task(name="slow", retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    async def slow(n: int, ctx: fm.Context) -> int:
        await asyncio.to_thread(record, ctx.task_id, n, ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(3600)  # still running when the worker is killed
        return n

    @app.task(
        name="flaky", retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(milliseconds=500)))
    )
    async def flaky(n: int, ctx: fm.Context) -> int:
        await asyncio.to_thread(record, ctx.task_id, n, ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return n

    return app


def init_ledger(path: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE effects (task_id TEXT PRIMARY KEY, n INTEGER)")
        conn.execute(
            "CREATE TABLE executions (task_id TEXT, n INTEGER, pid INTEGER, attempt INTEGER)"
        )


def env_lease_s() -> float:
    """The worker lease a crash test asks for (`FM_TEST_LEASE_S`, 1 s by default)."""
    return float(os.environ.get("FM_TEST_LEASE_S", "1"))


async def serve(app: fm.App, *, lease_s: float, until_idle: bool = False, **options: Any) -> None:
    """Run a worker of `app` for a crash test: maintenance every 100-200 ms (a killed
    attempt is reaped fast), "ready" on stdout once the store is open."""
    worker = app.worker(
        lease_ttl=timedelta(seconds=lease_s),
        reap_interval=timedelta(milliseconds=200),
        promote_interval=timedelta(milliseconds=100),
        poll_interval=timedelta(milliseconds=200),
        shutdown_grace=timedelta(seconds=1),
        cancel_grace=timedelta(milliseconds=300),
        **options,
    )
    await app.open()
    print("ready", flush=True)
    await worker.run(install_signal_handlers=True, stop_when_idle=until_idle)
    await app.close()


async def _main(url: str, ledger: str, until_idle: bool) -> None:
    app = build(url, ledger)
    await serve(app, lease_s=env_lease_s(), until_idle=until_idle, concurrency=8, prefetch=8)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], sys.argv[3] == "idle"))
