"""The task the signal-latency benchmark runs: wait for approval, report when it resumed."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from typing import Any

import msgspec

import flowmill as fm
from flowmill._conditions import Signal

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import say

TASK = "bench.await_approval"


def build(url: str, schema: str | None = None) -> fm.App:
    options: dict[str, Any] = {} if schema is None else {"schema": schema}
    app = fm.App(url, **options)

    @app.task(name=TASK)
    async def await_approval(n: int, ctx: fm.Context) -> int:
        if await ctx.resume_signals():
            return time.time_ns()  # the resumed handler is running: the figure ends here
        wp = await ctx.create_waitpoint("approval", expires_in=timedelta(minutes=10))
        # Publish the waitpoint the way a real task would hand it out (here: a frame).
        await ctx.append_frame("waitpoint", msgspec.json.encode({"id": wp.id, "token": wp.token}))
        await ctx.suspend(Signal("approved", wp), timeout=timedelta(minutes=10))
        return -1

    return app


async def worker_main(url: str, schema: str | None) -> None:
    app = build(url, schema)
    await app.open()
    worker = app.worker(concurrency=8)
    say("ready")
    await worker.run(install_signal_handlers=True)
    await app.close()


if __name__ == "__main__":
    asyncio.run(worker_main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
