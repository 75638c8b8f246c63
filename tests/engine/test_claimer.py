"""Claimed tasks: your own worker loop, with leases, fencing and single-use endings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

import flowmill as fm
from flowmill.store.contract.tasks import TasksClaim, TasksFinish

TTL = timedelta(seconds=30)


@dataclass
class Prompt:
    text: str


def register(app: fm.App) -> fm.TaskDef:
    @app.task(
        name="llm",
        queue="llm",
        retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(seconds=5))),
    )
    async def llm(p: Prompt) -> str:
        raise AssertionError("run by a claimer, not a worker")

    return llm


async def test_claim_progress_complete(app: fm.App) -> None:
    llm = register(app)
    h = await app.submit(llm, Prompt("hi"))
    async with app.claimer(worker_id="gpu-1", queues=["llm"], lease_ttl=TTL) as c:
        task = await c.claim(wait=timedelta(seconds=5))
        assert task is not None
        assert (task.task_id, task.kind, task.queue, task.attempt_index) == (h.id, "llm", "llm", 1)
        assert task.decoded() == Prompt("hi")
        assert task.payload == b'{"text":"hi"}'
        assert task.is_lease_healthy()
        await task.update_progress(10, "loading model")
        assert (await app.get(h.id)).progress == 10
        with pytest.raises(ValueError, match="0 to 100"):
            await task.update_progress(101)
        await task.complete("Hello")
        with pytest.raises(fm.TaskAlreadyFinished):
            await task.complete("again")
        with pytest.raises(fm.TaskAlreadyFinished):
            await task.fail("too late")
        assert await c.claim() is None
    assert await h.result(timeout=timedelta(seconds=5)) == "Hello"


async def test_claim_waits_for_work_without_polling(app: fm.App) -> None:
    llm = register(app)
    async with app.claimer(worker_id="w", queues=["llm"]) as c:
        waiting = asyncio.create_task(c.claim(wait=timedelta(seconds=30)))
        await asyncio.sleep(0.05)
        h = await app.submit(llm, Prompt("late"))
        task = await asyncio.wait_for(waiting, 10)  # woken by the submit, well before 30 s
        assert task is not None
        assert task.task_id == h.id
        await task.complete("ok")


async def test_fail_outcomes(app: fm.App) -> None:
    llm = register(app)
    a = await app.submit(llm, Prompt("a"))
    async with app.claimer(worker_id="w", queues=["llm"]) as c:
        t = await c.claim()
        assert t is not None
        first = await t.fail("model overloaded", category="capacity")
        assert first.state is fm.State.SCHEDULED
        assert first.will_retry
        assert first.retry_at is not None
        info = await app.get(a.id)
        assert info.error is not None
        assert (info.error.message, info.error.category) == ("model overloaded", "capacity")
        b = await app.submit(llm, Prompt("b"))
        t = await c.claim()
        assert t is not None
        assert t.task_id == b.id
        final = await t.fail("budget exhausted", category="budget", retryable=False)
        assert (final.state, final.will_retry) == (fm.State.FAILED, False)


async def _fence_out(app: fm.App, clock: fm.ManualClock) -> Any:
    """Partition the claimer (its renewals fail), let the lease expire and be reaped, and
    claim the task again elsewhere: the first claim's epoch is now stale."""
    real = app.store.leases_renew

    async def partitioned(p: Any) -> Any:
        raise fm.StoreUnavailable("partitioned")

    app.store.leases_renew = partitioned  # type: ignore[method-assign]
    try:
        reaper = app.worker(queues=["other"])
        await clock.advance(timedelta(seconds=31))
        await reaper.maintain()
        await clock.advance(timedelta(seconds=5))  # the retry backoff
        await reaper.maintain()
    finally:
        app.store.leases_renew = real  # type: ignore[method-assign]
    [row] = await app.store.tasks_claim(
        TasksClaim("new", ["llm"], ["llm"], 1, 30_000, clock.store_now())
    )
    return row


@pytest.mark.parametrize(
    "write",
    ["progress", "renew", "complete", "fail", "cancel", "delay", "wait_for_children"],
)
async def test_every_fenced_write_refuses_a_stale_epoch(
    app: fm.App, clock: fm.ManualClock, write: str
) -> None:
    llm = register(app)
    h = await app.submit(llm, Prompt("x"))
    async with app.claimer(worker_id="old", queues=["llm"], lease_ttl=TTL) as c:
        stale = await c.claim()
        assert stale is not None
        fresh = await _fence_out(app, clock)
        assert fresh.lease_epoch > stale.lease_epoch
        call = {
            "progress": lambda: stale.update_progress(50),
            "renew": stale.renew_lease,
            "complete": lambda: stale.complete("x"),
            "fail": lambda: stale.fail("x"),
            "cancel": lambda: stale.cancel("x"),
            "delay": lambda: stale.delay(timedelta(seconds=1)),
            "wait_for_children": lambda: stale.wait_for_children(),
        }[write]
        with pytest.raises(fm.LeaseLost):
            await call()
    info = await app.get(h.id)  # the stale write changed nothing
    assert (info.state, info.lease_epoch, info.progress) == (
        fm.State.RUNNING,
        fresh.lease_epoch,
        None,
    )


async def test_lost_reply_repeat_returns_the_recorded_outcome(app: fm.App) -> None:
    llm = register(app)
    h = await app.submit(llm, Prompt("x"))
    real = app.store.tasks_finish

    async def applied_then_lost(p: TasksFinish) -> Any:
        await real(p)
        raise fm.StoreUnavailable("connection reset while reading the reply")

    async with app.claimer(worker_id="w", queues=["llm"]) as c:
        task = await c.claim()
        assert task is not None
        app.store.tasks_finish = applied_then_lost  # type: ignore[method-assign]
        try:
            with pytest.raises(fm.StoreUnavailable):
                await task.complete("v1")
        finally:
            app.store.tasks_finish = real  # type: ignore[method-assign]
        await task.complete("v1")  # the same call again: answered with the recorded outcome
        with pytest.raises(fm.TaskAlreadyFinished):
            await task.complete("v1")
    assert await h.result(timeout=timedelta(seconds=5)) == "v1"


async def test_renewal_failures_make_the_lease_unhealthy(
    app: fm.App, clock: fm.ManualClock
) -> None:
    llm = register(app)
    await app.submit(llm, Prompt("x"))
    real = app.store.leases_renew

    async def broken(p: Any) -> Any:
        raise fm.StoreUnavailable("network down")

    async with app.claimer(worker_id="w", queues=["llm"], lease_ttl=TTL) as c:
        task = await c.claim()
        assert task is not None
        app.store.leases_renew = broken  # type: ignore[method-assign]
        try:
            for n in (1, 2, 3):
                await clock.advance(timedelta(seconds=10))  # the keeper renews at ttl/3
                await asyncio.sleep(0)
                assert task.consecutive_renewal_failures == n
            assert not task.is_lease_healthy()
            assert task.cancelled
            assert task.cancel_reason == "lease unhealthy: renewals failing"
        finally:
            app.store.leases_renew = real  # type: ignore[method-assign]
        await task.renew_lease()
        assert task.consecutive_renewal_failures == 0


async def test_delay_gives_the_attempt_back_and_exit_releases(
    app: fm.App, clock: fm.ManualClock
) -> None:
    llm = register(app)
    a = await app.submit(llm, Prompt("a"))
    b = await app.submit(llm, Prompt("b"))
    async with app.claimer(worker_id="w", queues=["llm"]) as c:
        first = await c.claim()
        assert first is not None
        assert first.task_id == a.id
        await first.delay(timedelta(minutes=5))
        held = await c.claim()
        assert held is not None
        assert held.task_id == b.id
    # Leaving the block released b; a waits for its time; neither spent an attempt.
    ia, ib = await app.get(a.id), await app.get(b.id)
    assert (ia.state, ia.attempts) == (fm.State.SCHEDULED, 0)
    assert (ib.state, ib.attempts) == (fm.State.READY, 0)


async def test_claim_many_and_bad_arguments(app: fm.App) -> None:
    llm = register(app)
    await app.submit_many(llm, [Prompt(str(i)) for i in range(5)])
    with pytest.raises(fm.ConfigurationError):
        fm.App("sqlite://:memory:").claimer(worker_id="w")  # no kinds known
    with pytest.raises(fm.ConfigurationError):
        app.claimer(worker_id="", queues=["llm"])
    async with app.claimer(worker_id="w", queues=["llm"]) as c:
        got = await c.claim_many(3)
        assert len(got) == 3
        for t in got:
            await t.complete("ok")
        assert len(await c.claim_many(10)) == 2
