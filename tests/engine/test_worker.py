"""The worker runtime, driven by a manual clock: leases, reaping, promotion, limits."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill.store.contract.tasks import LeasesExpired, LeasesRenew, TasksClaim, TasksFinish
from flowmill.worker._outcome import reap

from ..conftest import eventually

TTL = timedelta(seconds=30)


@dataclass
class Job:
    n: int


@contextlib.asynccontextmanager
async def running(worker: fm.Worker) -> AsyncIterator[fm.Worker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def reap_elsewhere(app: fm.App, task_id: str) -> None:
    """What another worker's reaper does, for which `task_id`'s lease ran out long ago: it
    takes the task back (to retry it), while its attempt may still run here."""
    later = (app.clock.store_now() or 0) + 3_600_000
    expired = await app.store.leases_expired(LeasesExpired(now_ms=later))
    assert [e.task_id for e in expired] == [task_id]
    await app.store.tasks_finish(TasksFinish([reap(e) for e in expired], later))


async def state_of(app: fm.App, task_id: str) -> fm.State:
    return (await app.get(task_id)).state


async def test_async_and_sync_handlers_run_and_record_results(app: fm.App) -> None:
    threads: list[str] = []

    @app.task
    async def double(job: Job) -> int:
        return job.n * 2

    @app.task
    def triple(job: Job) -> int:
        threads.append(threading.current_thread().name)
        return job.n * 3

    async with running(app.worker()):
        a = await app.submit(double, Job(4))
        b = await app.submit(triple, Job(4))
        assert await a.result(timeout=timedelta(seconds=10)) == 8
        assert await b.result(timeout=timedelta(seconds=10)) == 12
    assert threads[0].startswith("flowmill-sync")
    info = await app.get(b.id)
    assert (info.state, info.attempts, info.result) == (fm.State.COMPLETED, 1, 12)
    assert info.finished_at is not None


async def test_delayed_task_waits_for_the_promoter(app: fm.App, clock: fm.ManualClock) -> None:
    @app.task
    async def later(job: Job) -> int:
        return job.n

    async with running(app.worker()) as w:
        h = await app.submit(later, Job(7), delay=timedelta(seconds=60))
        await w.maintain()
        assert await state_of(app, h.id) is fm.State.SCHEDULED
        await clock.advance(timedelta(seconds=61))
        await w.maintain()
        assert await h.result(timeout=timedelta(seconds=10)) == 7


async def test_retry_then_dead_letter_then_replay(app: fm.App, clock: fm.ManualClock) -> None:
    fail = {"on": True}

    @app.task(retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(seconds=5))))
    async def flaky(job: Job) -> int:
        if fail["on"]:
            raise RuntimeError(f"boom {job.n}")
        return job.n

    async with running(app.worker()) as w:
        h = await app.submit(flaky, Job(1))
        for attempt in (1, 2):
            await eventually(lambda: _is(app, h.id, fm.State.SCHEDULED), what=f"retry {attempt}")
            info = await app.get(h.id)
            assert info.attempts == attempt
            assert info.error is not None
            assert info.error.category == "handler_error"
            await clock.advance(timedelta(seconds=5))
            await w.maintain()
        with pytest.raises(fm.TaskFailed) as failed:
            await h.result(timeout=timedelta(seconds=10))
        assert failed.value.state == "dead_lettered"
        assert failed.value.message == "boom 1"
        assert "RuntimeError" in (failed.value.traceback or "")
        assert [d.id for d in await app.dead_letters()] == [h.id]
        fail["on"] = False
        assert await app.replay(h.id) is fm.State.READY
        assert await h.result(timeout=timedelta(seconds=10)) == 1
    assert (await app.get(h.id)).attempts == 1


async def _is(app: fm.App, task_id: str, state: fm.State) -> bool:
    return await state_of(app, task_id) is state


async def test_fail_is_not_retried_and_retry_later_counts(
    app: fm.App, clock: fm.ManualClock
) -> None:
    @app.task(retry=fm.Retry(max_attempts=5))
    async def refuse(job: Job) -> None:
        raise fm.Fail("bad input", category="validation")

    @app.task(retry=fm.Retry(max_attempts=2))
    async def wait_a_bit(job: Job) -> None:
        raise fm.RetryLater(timedelta(seconds=90), "rate limited")

    async with running(app.worker()) as w:
        a = await app.submit(refuse, Job(1))
        with pytest.raises(fm.TaskFailed) as err:
            await a.result(timeout=timedelta(seconds=10))
        assert (err.value.state, err.value.category) == ("failed", "validation")
        assert (await app.get(a.id)).attempts == 1
        b = await app.submit(wait_a_bit, Job(1))
        await eventually(lambda: _is(app, b.id, fm.State.SCHEDULED), what="retry later")
        info = await app.get(b.id)
        assert info.run_at is not None
        assert int((info.run_at - clock.now).total_seconds()) == 90
        await clock.advance(timedelta(seconds=90))
        await w.maintain()
        with pytest.raises(fm.TaskFailed) as err:
            await b.result(timeout=timedelta(seconds=10))
        assert err.value.state == "dead_lettered"


@dataclass
class Strict:
    a: int
    b: int


async def test_undecodable_payload_fails_that_task_only(app: fm.App) -> None:
    @app.task(name="strict", retry=fm.Retry(max_attempts=5))
    async def strict(p: Strict) -> int:
        return p.a + p.b

    # A producer with an older definition of the task stored a payload of another shape.
    other = fm.App(app.url)
    old = other.task(name="strict")(_old_strict)
    bad = await other.submit(old, {"a": 1, "b": "two"})
    await other.close()
    async with running(app.worker()):
        good = await app.submit(strict, Strict(1, 2))
        with pytest.raises(fm.TaskFailed) as err:
            await app.handle(bad.id, strict).result(timeout=timedelta(seconds=10))
        assert await good.result(timeout=timedelta(seconds=10)) == 3
    assert err.value.state == "failed"
    assert err.value.category == "decode_error"
    message = err.value.message or ""
    assert "strict" in message
    assert "$.b" in message
    assert "int" in message
    assert (await app.get(bad.id)).attempts == 1


async def _old_strict(p: dict[str, object]) -> int:
    return 0


async def test_result_of_the_wrong_type_fails_the_task(app: fm.App) -> None:
    @app.task
    async def liar(job: Job) -> int:
        return "not an int"  # type: ignore[return-value]

    async with running(app.worker()):
        h = await app.submit(liar, Job(1))
        with pytest.raises(fm.TaskFailed) as err:
            await h.result(timeout=timedelta(seconds=10))
    assert (err.value.state, err.value.category) == ("failed", "result_error")


async def test_expired_lease_is_reaped_on_the_store_clock(
    app: fm.App, clock: fm.ManualClock
) -> None:
    @app.task(retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(0))))
    async def work(job: Job) -> int:
        return job.n

    h = await app.submit(work, Job(5))
    # A worker claims it and dies without a word.
    [row] = await app.store.tasks_claim(
        TasksClaim("dead-worker", ["default"], [work.name], 1, 30_000, clock.store_now())
    )
    worker = app.worker(lease_ttl=TTL)
    async with running(worker):
        await worker.maintain()
        assert await state_of(app, h.id) is fm.State.RUNNING  # the lease is still valid
        await clock.advance(timedelta(seconds=31))
        await worker.maintain()
        assert await h.result(timeout=timedelta(seconds=10)) == 5
    info = await app.get(h.id)
    assert info.attempts == 2
    assert worker.stats.reaped == 1
    history = [(e.state, e.detail) async for e in app.events(follow=False) if e.task_id == h.id]
    assert (fm.State.READY, "lease_expired") in history
    assert row.lease_epoch == 1


async def test_a_task_that_kills_its_worker_is_dead_lettered(
    app: fm.App, clock: fm.ManualClock
) -> None:
    @app.task(retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(0))))
    async def poison(job: Job) -> None:
        return None

    h = await app.submit(poison, Job(0))
    worker = app.worker(lease_ttl=TTL)
    for _ in range(3):
        rows = await app.store.tasks_claim(
            TasksClaim("doomed", ["default"], [poison.name], 1, 30_000, clock.store_now())
        )
        assert len(rows) == 1
        await clock.advance(timedelta(seconds=31))
        await worker.maintain()
    info = await app.get(h.id)
    assert (info.state, info.attempts) == (fm.State.DEAD_LETTERED, 3)
    assert info.error is not None
    assert info.error.category == "lease_expired"


async def test_renewal_keeps_a_long_attempt_alive(app: fm.App, clock: fm.ManualClock) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    @app.task
    async def slow(job: Job) -> int:
        started.set()
        await release.wait()
        return job.n

    worker = app.worker(lease_ttl=TTL)
    async with running(worker):
        h = await app.submit(slow, Job(9))
        await asyncio.wait_for(started.wait(), 10)
        for _ in range(6):  # three lease lifetimes, renewed every ttl/3
            await clock.advance(timedelta(seconds=10))
            await worker.renew_leases()
            await worker.maintain()
        assert await state_of(app, h.id) is fm.State.RUNNING
        release.set()
        assert await h.result(timeout=timedelta(seconds=10)) == 9
    assert worker.stats.reaped == 0


class FlakyRenewals:
    """A store proxy whose lease renewals fail while `broken` is set."""

    def __init__(self, store: fm.App) -> None:
        self.inner = store.store
        self.broken = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def leases_renew(self, p: LeasesRenew) -> object:
        if self.broken:
            raise fm.StoreUnavailable("connection reset")
        return await self.inner.leases_renew(p)


async def test_three_failed_renewals_mark_the_lease_unhealthy(app: fm.App) -> None:
    observed: list[str | None] = []
    started = asyncio.Event()

    @app.task(retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(0))))
    async def careful(job: Job, ctx: fm.Context) -> int:
        if ctx.attempt == 1:
            started.set()
            await ctx.wait_cancelled()
            observed.append(ctx.cancel_reason)
            ctx.check_cancelled()
        return job.n

    proxy = FlakyRenewals(app)
    worker = app.worker(lease_ttl=TTL)
    worker_store = proxy
    async with running(worker):
        h = await app.submit(careful, Job(3))
        await asyncio.wait_for(started.wait(), 10)
        app.store, original = worker_store, app.store  # type: ignore[assignment]
        try:
            proxy.broken = True
            for failures in (1, 2):
                await worker.renew_leases()
                assert not observed, f"token fired after {failures} failures"
            await worker.renew_leases()
            await eventually(lambda: _true(bool(observed)), what="token")
        finally:
            app.store = original
        assert observed == ["lease unhealthy: renewals failing"]
        assert await h.result(timeout=timedelta(seconds=10)) == 3
    assert worker.stats.unhealthy == 1
    info = await app.get(h.id)
    assert info.attempts == 2


async def _true(value: bool) -> bool:
    return value


async def test_per_kind_max_concurrency_and_backpressure(app: fm.App) -> None:
    gate = asyncio.Event()
    live = {"now": 0, "peak": 0}

    @app.task(max_concurrency=2)
    async def limited(job: Job) -> None:
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        await gate.wait()
        live["now"] -= 1

    @app.task
    async def free(job: Job) -> int:
        return job.n

    worker = app.worker(concurrency=4, prefetch=2)
    async with running(worker):
        limited_handles = await app.submit_many(limited, [Job(i) for i in range(10)])
        free_handles = await app.submit_many(free, [Job(i) for i in range(20)])
        # The free tasks get through even though the limited kind is saturated.
        assert sum([await f.result(timeout=timedelta(seconds=10)) for f in free_handles]) == 190
        await eventually(lambda: _true(live["now"] == 2), what="two limited running")
        running_now = await app.list_tasks(states=[fm.State.RUNNING])
        assert len(running_now) <= 4 + 2  # never more claimed than slots + prefetch
        assert worker.in_flight <= 6
        gate.set()
        for h in limited_handles:
            await h.result(timeout=timedelta(seconds=10))
    assert live["peak"] == 2


async def test_worker_never_claims_kinds_it_has_no_handler_for(db_url: str) -> None:
    producer = fm.App(db_url)
    consumer = fm.App(db_url)

    @producer.task(name="only-here")
    async def only_here(job: Job) -> None:
        return None

    @producer.task(name="both")
    @consumer.task(name="both")
    async def both(job: Job) -> int:
        return job.n

    try:
        orphan = await producer.submit(only_here, Job(1))
        shared = await producer.submit("both", Job(2))
        async with running(consumer.worker(worker_id="consumer")):
            assert (
                await consumer.handle(shared.id, "both").result(timeout=timedelta(seconds=10)) == 2
            )
            info = await consumer.get(orphan.id)
            assert (info.state, info.attempts) == (fm.State.READY, 0)
    finally:
        await producer.close()
        await consumer.close()


async def test_cancel_queued_and_running(app: fm.App, clock: fm.ManualClock) -> None:
    started = asyncio.Event()

    @app.task
    async def endless(job: Job, ctx: fm.Context) -> None:
        started.set()
        await ctx.wait_cancelled()
        ctx.check_cancelled()

    queued = await app.submit(endless, Job(0), delay=timedelta(hours=1))
    assert await app.cancel(queued.id) is fm.State.CANCELLED
    worker = app.worker(lease_ttl=TTL)
    async with running(worker):
        h = await app.submit(endless, Job(1))
        await asyncio.wait_for(started.wait(), 10)
        assert await app.cancel(h.id) is fm.State.RUNNING  # asked to stop
        # No clock moves: the cancel wake-up alone reaches the attempt.
        with pytest.raises(fm.TaskFailed) as err:
            await h.result(timeout=timedelta(seconds=10))
    assert err.value.state == "cancelled"
    assert (await app.get(queued.id)).state is fm.State.CANCELLED
    assert await app.cancel(h.id) is fm.State.CANCELLED  # terminal: a no-op


async def test_graceful_shutdown_releases_without_spending_an_attempt(
    app: fm.App, clock: fm.ManualClock
) -> None:
    started = asyncio.Event()
    finish_quick = asyncio.Event()

    @app.task(max_concurrency=1)
    async def stubborn(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()  # ignores the token; cancelled after the grace period

    @app.task
    async def quick(job: Job) -> int:
        await finish_quick.wait()
        return job.n

    worker = app.worker(shutdown_grace=timedelta(seconds=10), cancel_grace=timedelta(seconds=1))
    run = asyncio.create_task(worker.run())
    s = await app.submit(stubborn, Job(0))
    q = await app.submit(quick, Job(5))
    await asyncio.wait_for(started.wait(), 10)
    await eventually(lambda: _is(app, q.id, fm.State.RUNNING), what="quick running")
    worker.stop()
    finish_quick.set()  # finishes within the grace period: its result is kept
    assert await q.result(timeout=timedelta(seconds=10)) == 5
    # Drive the clock through the shutdown grace, the token's grace and the cancel's grace.
    # The worker registers each timer only once it gets there, so keep advancing until done.
    for _ in range(100):
        if run.done():
            break
        await clock.advance(timedelta(seconds=10))
        await asyncio.wait({run}, timeout=0.05)
    await asyncio.wait_for(run, 10)
    info = await app.get(s.id)
    assert (info.state, info.attempts) == (fm.State.READY, 0)
    assert worker.runner.stats.stops[fm.TimeoutClass.LATE] == 1


async def test_stop_when_idle_drains_and_returns(app: fm.App) -> None:
    @app.task
    async def noop(n: int) -> None:
        return None

    handles = await app.submit_many(noop, range(500))
    worker = app.worker(concurrency=16)
    await asyncio.wait_for(worker.run(stop_when_idle=True), 30)
    assert worker.stats.outcomes["completed"] == 500
    rows = await app.store.results_get([h.id for h in handles])
    assert len(rows) == 500
    assert {r.state for r in rows} == {fm.State.COMPLETED}


class OutageOnce:
    """A store proxy whose first claim, first wait for work and first finish each fail with
    StoreUnavailable, as during a short outage."""

    def __init__(self, app: fm.App) -> None:
        self.inner = app.store
        self.failed: set[str] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def _first(self, op: str) -> None:
        if op not in self.failed:
            self.failed.add(op)
            raise fm.StoreUnavailable(f"{op}: connection reset")

    async def tasks_claim(self, p: TasksClaim) -> object:
        self._first("claim")
        return await self.inner.tasks_claim(p)

    async def wait_for_work(self, timeout_s: float) -> None:
        self._first("wait")
        await self.inner.wait_for_work(timeout_s)

    async def tasks_finish(self, p: TasksFinish) -> object:
        self._first("finish")
        return await self.inner.tasks_finish(p)


async def test_outage_retries_do_not_wait_for_a_manual_clock(app: fm.App) -> None:
    # The app runs on a ManualClock that nothing advances here: retries against a store
    # outage are paced in real time, or this drain would never end.
    @app.task
    async def double(job: Job) -> int:
        return job.n * 2

    handles = [await app.submit(double, Job(n)) for n in range(3)]
    proxy = OutageOnce(app)
    app.store, original = proxy, app.store  # type: ignore[assignment]
    try:
        worker = app.worker()
        await asyncio.wait_for(worker.run(stop_when_idle=True), 30)
    finally:
        app.store = original
    assert proxy.failed == {"claim", "wait", "finish"}
    assert [await h.result(timeout=timedelta(seconds=5)) for h in handles] == [0, 2, 4]
