"""A worker that claims a task's next attempt while its earlier attempt still runs there.

After a stall past the lease TTL, a reaper can reclaim a task whose attempt still runs in
this worker, and this same worker can claim the retry before its next renewal finds the
old lease gone. Both attempts are then held here at once: the old one must still be
renewed (so that it finds its lease lost and is asked to stop) and waited for at shutdown.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import flowmill as fm

from .test_worker import reap_elsewhere, running

WAIT_S = 30.0
STOP_S = 10.0  # well under the worker's shutdown grace (20 s)


async def test_the_earlier_attempt_is_still_renewed_and_told_its_lease_is_lost(
    app: fm.App,
) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()

    @app.task(retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(0))))
    async def stalls(n: int, ctx: fm.Context) -> int:
        if ctx.attempt == 1:
            started.set()
            await ctx.wait_cancelled()  # until the worker finds its lease gone
            stopped.set()
        return n

    w = app.worker()
    async with running(w):
        h = await app.submit(stalls, 5)
        await asyncio.wait_for(started.wait(), WAIT_S)
        await reap_elsewhere(app, h.id)
        # This worker claims and runs attempt 2 while attempt 1 still runs here.
        assert await h.result(timeout=timedelta(seconds=WAIT_S)) == 5
        # Attempt 1 is still held, so a renewal (this one, or the worker's own since the
        # claim) finds its lease gone and asks it to stop. Were it dropped when attempt 2
        # was claimed, nothing would ever ask it, nor would shutdown.
        await w.renew_leases()
        await asyncio.wait_for(stopped.wait(), STOP_S)
    assert w.in_flight == 0
