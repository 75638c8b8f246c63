"""Worker processes for the lease fault tests (`test_lease_faults`).

Run as `python -m tests.engine._lease_fleet URL LEDGER MODE` (MODE: idle | forever).
Options come from the environment, so each worker process can differ:

- `FM_CLOCK_OFFSET_S`: this process's wall clock runs that many seconds off (as if NTP or
  an operator stepped it); applied before flowmill is imported, so every wall-clock read
  in the process sees it. The monotonic clocks are left alone, as the kernel does.
- `FM_LEASE_S`, `FM_CONCURRENCY`, `FM_PREFETCH`: the worker's sizes.
"""

from __future__ import annotations

import os
import time

_OFFSET_NS = int(float(os.environ.get("FM_CLOCK_OFFSET_S", "0")) * 1e9)
if _OFFSET_NS:
    _time_ns, _time = time.time_ns, time.time

    def _stepped_ns() -> int:
        return _time_ns() + _OFFSET_NS

    def _stepped_s() -> float:
        return _time() + _OFFSET_NS / 1e9

    time.time_ns = _stepped_ns
    time.time = _stepped_s

import asyncio  # noqa: E402 - after the clock offset, on purpose
import sqlite3  # noqa: E402
import sys  # noqa: E402
from datetime import timedelta  # noqa: E402

import flowmill as fm  # noqa: E402
from tests.crash import _crash_app  # noqa: E402

POISON_EXIT = 77  # the poison task's exit status: the supervisor knows who killed it
POISON_MAX_ATTEMPTS = 3


def build(url: str, ledger: str) -> fm.App:
    app = fm.App(url)

    def record(task_id: str, n: int, attempt: int) -> None:
        with sqlite3.connect(ledger, timeout=30) as conn:
            conn.execute(
                "INSERT INTO executions (task_id, n, pid, attempt) VALUES (?, ?, ?, ?)",
                (task_id, n, os.getpid(), attempt),
            )
            conn.execute("INSERT OR IGNORE INTO effects (task_id, n) VALUES (?, ?)", (task_id, n))
        conn.close()

    @app.task(name="work", retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    async def work(ms: int, ctx: fm.Context) -> int:
        """Records its run, then works for `ms` milliseconds."""
        await asyncio.to_thread(record, ctx.task_id, ms, ctx.attempt)
        await asyncio.sleep(ms / 1000)
        return os.getpid()

    @app.task(name="good", retry=fm.Retry(max_attempts=1))
    async def good(ms: int, ctx: fm.Context) -> int:
        """One attempt only: a single death charged to it dead-letters it."""
        await asyncio.to_thread(record, ctx.task_id, ms, ctx.attempt)
        await asyncio.sleep(ms / 1000)
        return ms

    @app.task(
        name="poison",
        retry=fm.Retry(max_attempts=POISON_MAX_ATTEMPTS, backoff=fm.Fixed(timedelta(0))),
        priority=10,
    )
    async def poison(n: int, ctx: fm.Context) -> int:
        await asyncio.to_thread(record, ctx.task_id, n, ctx.attempt)
        os._exit(POISON_EXIT)  # kills its worker process on every attempt

    return app


async def _main(url: str, ledger: str, until_idle: bool) -> None:
    await _crash_app.serve(
        build(url, ledger),
        lease_s=float(os.environ.get("FM_LEASE_S", "1")),
        until_idle=until_idle,
        concurrency=int(os.environ.get("FM_CONCURRENCY", "8")),
        prefetch=int(os.environ.get("FM_PREFETCH", "8")),
    )


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], sys.argv[3] == "idle"))
