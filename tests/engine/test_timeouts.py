"""Timeouts: cooperative, late and non-cooperative handlers, each classified and counted."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

import flowmill as fm

from .test_worker import Job, running

TIMEOUT = timedelta(seconds=5)
GRACE = timedelta(seconds=1)
NO_RETRY = fm.Retry(max_attempts=1)


async def _time_out(clock: fm.ManualClock, started: asyncio.Event, *, steps: int) -> None:
    await asyncio.wait_for(started.wait(), 10)
    await clock.advance(TIMEOUT)
    for _ in range(steps):
        await clock.advance(GRACE)


async def _timed_out(h: fm.TaskHandle[object]) -> fm.TaskFailed:
    with pytest.raises(fm.TaskFailed) as err:
        await h.result(timeout=timedelta(seconds=10))
    assert err.value.state == "dead_lettered"  # a timeout is retryable: attempts ran out
    assert err.value.category == "timeout"
    return err.value


async def test_cooperative_async_handler(app: fm.App, clock: fm.ManualClock) -> None:
    started = asyncio.Event()

    @app.task(timeout=TIMEOUT, retry=NO_RETRY)
    async def polite(job: Job, ctx: fm.Context) -> None:
        started.set()
        await ctx.wait_cancelled()
        assert ctx.cancel_reason == "timeout"
        ctx.check_cancelled()

    worker = app.worker(cancel_grace=GRACE)
    async with running(worker):
        h = await app.submit(polite, Job(0))
        await _time_out(clock, started, steps=0)
        err = await _timed_out(h)
    assert "cooperative" in (err.message or "")
    assert worker.runner.stats.timeouts[fm.TimeoutClass.COOPERATIVE] == 1


async def test_late_async_handler_is_cancelled(app: fm.App, clock: fm.ManualClock) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @app.task(timeout=TIMEOUT, retry=NO_RETRY)
    async def deaf(job: Job) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    worker = app.worker(cancel_grace=GRACE)
    async with running(worker):
        h = await app.submit(deaf, Job(0))
        await _time_out(clock, started, steps=1)
        await _timed_out(h)
    assert cancelled.is_set()
    assert worker.runner.stats.timeouts[fm.TimeoutClass.LATE] == 1


async def test_non_cooperative_sync_handler_is_abandoned_and_its_slot_freed(
    app: fm.App, clock: fm.ManualClock
) -> None:
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    release = threading.Event()

    @app.task(timeout=TIMEOUT, retry=NO_RETRY)
    def stuck(job: Job) -> None:
        loop.call_soon_threadsafe(started.set)
        release.wait(60)  # ignores ctx entirely

    @app.task
    def after(job: Job) -> int:
        return job.n

    worker = app.worker(concurrency=1, prefetch=1, cancel_grace=GRACE)
    try:
        async with running(worker):
            h = await app.submit(stuck, Job(0))
            await _time_out(clock, started, steps=1)
            err = await _timed_out(h)
            # the only slot is free again although the thread still runs
            nxt = await app.submit(after, Job(4))
            assert await nxt.result(timeout=timedelta(seconds=10)) == 4
    finally:
        release.set()
    assert "non_cooperative" in (err.message or "")
    assert worker.runner.stats.timeouts[fm.TimeoutClass.NON_COOPERATIVE] == 1
    assert worker.runner.stats.abandoned_threads == 1


async def test_async_handler_that_swallows_cancellation_is_abandoned(
    app: fm.App, clock: fm.ManualClock
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.task(timeout=TIMEOUT, retry=NO_RETRY)
    async def stubborn(job: Job) -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # refuses to stop

    worker = app.worker(cancel_grace=GRACE)
    async with running(worker):
        h = await app.submit(stubborn, Job(0))
        await _time_out(clock, started, steps=2)
        await _timed_out(h)
        release.set()
    assert worker.runner.stats.timeouts[fm.TimeoutClass.NON_COOPERATIVE] == 1
    assert worker.runner.stats.abandoned_coroutines == 1


async def test_timeout_is_retried_with_backoff(app: fm.App, clock: fm.ManualClock) -> None:
    started = asyncio.Event()

    @app.task(timeout=TIMEOUT, retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(0))))
    async def first_slow(job: Job, ctx: fm.Context) -> int:
        if ctx.attempt == 1:
            started.set()
            await ctx.wait_cancelled()
            ctx.check_cancelled()
        return ctx.attempt

    async with running(app.worker(cancel_grace=GRACE)):
        h = await app.submit(first_slow, Job(0))
        await _time_out(clock, started, steps=0)
        assert await h.result(timeout=timedelta(seconds=10)) == 2


async def test_sync_handler_sees_the_token(app: fm.App, clock: fm.ManualClock) -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    @app.task(timeout=TIMEOUT, retry=NO_RETRY)
    def looping(job: Job, ctx: fm.Context) -> None:
        loop.call_soon_threadsafe(started.set)
        while True:
            ctx.check_cancelled()  # raises fm.Cancelled once the token fires
            threading.Event().wait(0.001)

    worker = app.worker(cancel_grace=GRACE)
    async with running(worker):
        h = await app.submit(looping, Job(0))
        await _time_out(clock, started, steps=0)
        await _timed_out(h)
    assert worker.runner.stats.timeouts[fm.TimeoutClass.COOPERATIVE] == 1
