"""A worker process whose app declares one fast schedule, for the schedule chaos scenario.

Run as `python -m tests.chaos._schedule_app URL LEDGER forever`: `_crash_app`'s tasks and
worker (maintenance every 100 ms), plus the schedule `chaos-tick`, every `TICK_MS`, run_all.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

import flowmill as fm
from tests.crash import _crash_app

NAME = "chaos-tick"
TICK_MS = 500


def build(url: str, ledger: str) -> fm.App:
    app = _crash_app.build(url, ledger)
    app.schedule(NAME, "effect", 0, every=timedelta(milliseconds=TICK_MS), misfire="run_all")
    return app


async def _main(url: str, ledger: str) -> None:
    app = build(url, ledger)
    await _crash_app.serve(app, lease_s=_crash_app.env_lease_s(), concurrency=8, prefetch=8)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
