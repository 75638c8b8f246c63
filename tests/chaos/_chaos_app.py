"""Worker processes for the chaos tier: `_crash_app`'s tasks and worker, plus a few more.

Run as `python -m tests.chaos._chaos_app URL LEDGER MODE` (MODE: idle | forever). Options
come from the environment, so a scenario can vary one worker process at a time:

- `FM_CHAOS_CLOCK_OFFSET_S`: this process's wall clock runs that many seconds off (as if
  NTP or an operator stepped it); set before flowmill is imported, so every wall-clock
  read in the process sees it. The monotonic clock is left alone, as the kernel does.
- `FM_TEST_LEASE_S`, `FM_CHAOS_CONCURRENCY`, `FM_CHAOS_PREFETCH`: the worker's sizes.
"""

from __future__ import annotations

import os
import time

_OFFSET_NS = int(float(os.environ.get("FM_CHAOS_CLOCK_OFFSET_S", "0")) * 1e9)
if _OFFSET_NS:
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + _OFFSET_NS
    time.time = lambda: _time() + _OFFSET_NS / 1e9

import asyncio  # noqa: E402 - after the clock offset, on purpose
import sys  # noqa: E402
from datetime import timedelta  # noqa: E402

import flowmill as fm  # noqa: E402
from tests.crash import _crash_app  # noqa: E402

POISON_EXIT = 77  # the poison task's exit status, so a supervisor knows who killed it
POISON_MAX_ATTEMPTS = 3


def build(url: str, ledger: str) -> fm.App:
    """`_crash_app.build()` (effect, tick, slow, flaky) and the chaos kinds."""
    app = _crash_app.build(url, ledger)
    record = _crash_app.recorder(ledger)

    @app.task(name="work", retry=fm.Retry(max_attempts=5, backoff=fm.Fixed(timedelta(0))))
    async def work(n: int, ctx: fm.Context) -> int:
        """Runs for n ms, records the run, and returns the pid that finished it."""
        await asyncio.to_thread(record, ctx.task_id, n, ctx.attempt)
        await asyncio.sleep(n / 1000)
        return os.getpid()

    @app.task(name="good", retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(0))))
    def good(n: int, ctx: fm.Context) -> int:
        """Quick and healthy; two attempts, so being charged for others' deaths shows."""
        record(ctx.task_id, n, ctx.attempt)
        return n

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
    app = build(url, ledger)
    await _crash_app.serve(
        app,
        lease_s=_crash_app.env_lease_s(),
        until_idle=until_idle,
        concurrency=int(os.environ.get("FM_CHAOS_CONCURRENCY", "8")),
        prefetch=int(os.environ.get("FM_CHAOS_PREFETCH", "8")),
    )


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], sys.argv[3] == "idle"))
