"""Issue 13 items 1, 2 and 7 in one process: `FailOutcome.retry_at` from the app's clock,
prefetched tasks that a dead worker never started go back uncharged, and a closed
waitpoint answers HTTP 409."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

import flowmill as fm
from flowmill.store.contract.tasks import LeasesExpired, TasksClaim
from flowmill.worker._outcome import reap

from .test_signals import asgi_post, suspended_web_waitpoint


async def test_retry_at_comes_from_the_apps_clock(app: fm.App, clock: fm.ManualClock) -> None:
    @app.task(name="flaky", retry=fm.Retry(backoff=fm.Fixed(timedelta(minutes=5))))
    async def flaky(n: int) -> None:
        return None

    await app.submit(flaky, 1)
    async with app.claimer(worker_id="w", kinds=["flaky"]) as c:
        t = await c.claim()
        assert t is not None
        out = await t.fail("overloaded")
    # The ManualClock is years away from the host's wall clock: only it gives this time.
    assert out.retry_at == clock.now + timedelta(minutes=5)


async def test_a_dead_workers_prefetched_tasks_go_back_uncharged(
    app: fm.App, clock: fm.ManualClock
) -> None:
    @app.task(name="one_shot", retry=fm.Retry(max_attempts=1))
    async def one_shot(n: int) -> int:
        return n

    handles = await app.submit_many(one_shot, range(5))
    store = app.store
    # A worker claims one task to run now and four to prefetch, then dies.
    now = clock.store_now()
    kinds, queues = ["one_shot"], ["default"]
    await store.tasks_claim(TasksClaim("dead", queues, kinds, 1, 1_000, now, start=True))
    await store.tasks_claim(TasksClaim("dead", queues, kinds, 4, 1_000, now, start=False))
    await clock.advance(timedelta(seconds=2))
    expired = await store.leases_expired(LeasesExpired(now_ms=clock.store_now()))
    assert sorted(e.started for e in expired) == [False, False, False, False, True]
    # The reaper: the started attempt counts (one attempt: dead-lettered), the rest do not.
    worker = app.worker(concurrency=2, clock=clock)
    await worker.maintain()
    states = [(await app.get(h.id)).state for h in handles]
    assert states.count(fm.State.DEAD_LETTERED) == 1
    assert states.count(fm.State.READY) == 4
    assert {(await app.get(h.id)).attempts for h in handles} == {0, 1}
    assert [reap(e).release for e in expired].count(True) == 4


async def test_a_closed_waitpoint_answers_409(app: fm.App) -> None:
    from flowmill.web import signals_app

    wp = await suspended_web_waitpoint(app)
    asgi = signals_app(app)

    async def post(body: bytes) -> tuple[int, Any]:
        return await asgi_post(asgi, f"/signals/{wp.id}", body)

    body = msgspec.json.encode({"name": "approved", "token": wp.token})
    assert await post(body) == (202, {"status": "accepted", "resumed": True})
    assert await post(body) == (
        409,
        {"status": "closed", "reason": "waitpoint closed: its suspension resumed"},
    )
