"""The operator's calls on every backend: paused queues, the worker registry, retention,
and the store-derived gauges."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill.store.contract.admin import WorkerHeartbeat
from flowmill.store.contract.tasks import TasksClaim

from ..conftest import eventually

DAY = timedelta(days=1)


async def drain(*workers: fm.Worker) -> None:
    await asyncio.wait_for(asyncio.gather(*(w.run(stop_when_idle=True) for w in workers)), 30)


async def test_a_paused_queue_is_claimed_by_no_worker_until_resumed(app: fm.App) -> None:
    sent: list[int] = []
    other: list[int] = []

    @app.task(queue="mail")
    async def send(n: int) -> None:
        sent.append(n)

    @app.task
    async def chore(n: int) -> None:
        other.append(n)

    assert await app.pause_queue("mail") is True
    held = [(await app.submit(send, i)).id for i in range(3)]  # submits still succeed
    await app.submit(chore, 1)
    queues = ["mail", "default"]
    await drain(app.worker(queues=queues), app.worker(queues=queues))
    assert (sent, other) == ([], [1])
    assert [(await app.get(i)).state for i in held] == [fm.State.READY] * 3
    mail = {q.name: q for q in await app.list_queues()}["mail"]
    assert (mail.paused, mail.counts) == (True, {fm.State.READY: 3})

    assert await app.resume_queue("mail") is True
    assert await app.resume_queue("mail") is False
    await drain(app.worker(queues=queues), app.worker(queues=queues))
    assert sorted(sent) == [0, 1, 2]


async def test_a_pause_holds_for_another_app_and_after_a_restart(
    app: fm.App, db_url: str, clock: fm.ManualClock
) -> None:
    @app.task(queue="mail")
    async def send(n: int) -> None:
        return None

    await app.submit(send, 1)
    await app.pause_queue("mail")
    await app.close()
    again = fm.App(db_url, clock=clock)  # a second process, or the same after a restart
    try:
        paused = {q.name: q.paused for q in await again.list_queues()}
        assert paused == {"mail": True}
        claim = TasksClaim("other", ["mail"], [send.name], 10, 30_000, clock.store_now())
        assert await again.store.tasks_claim(claim) == []
        await again.resume_queue("mail")
        assert [r.kind for r in await again.store.tasks_claim(claim)] == [send.name]
    finally:
        await again.close()


async def test_a_running_worker_is_registered_alive_then_stopped(
    app: fm.App, clock: fm.ManualClock
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.task
    async def slow(n: int) -> None:
        started.set()
        await release.wait()

    worker = app.worker(concurrency=4, heartbeat_interval=timedelta(seconds=5))
    run = asyncio.create_task(worker.run())
    try:
        await app.submit(slow, 1)
        await asyncio.wait_for(started.wait(), 10)

        async def registered() -> bool:
            return bool(await app.workers())

        await eventually(registered, what="the worker's first heartbeat")
        assert await worker.heartbeat.beat()  # as the timer does every heartbeat_interval
        (info,) = await app.workers()
        assert (info.id, info.status, info.alive) == (worker.worker_id, "alive", True)
        assert (info.concurrency, info.queues, info.kinds) == (4, ("default",), (slow.name,))
        assert info.version and info.in_flight == 1
        first_seen = info.last_seen

        async def beat_on_the_timer() -> bool:
            await clock.advance(timedelta(seconds=5))  # past the loop's heartbeat_interval
            return (await app.workers())[0].last_seen > first_seen

        await eventually(beat_on_the_timer, what="a heartbeat from the timer")
    finally:
        release.set()
        worker.stop()
        await asyncio.wait_for(run, 30)
    (info,) = await app.workers()
    assert info.status == "stopped"
    assert info.stopped_at is not None


async def test_a_worker_silent_for_three_heartbeats_is_dead_then_pruned(
    app: fm.App, clock: fm.ManualClock
) -> None:
    now = clock.store_now()
    assert now is not None
    beat = WorkerHeartbeat("gone", "h", 1, "1", ("default",), (), 1, now, 5_000, now_ms=now)
    await app.store.worker_heartbeat(beat)
    await clock.advance(timedelta(seconds=15))
    assert [w.status for w in await app.workers()] == ["alive"]
    await clock.advance(timedelta(milliseconds=1))
    assert [w.status for w in await app.workers()] == ["dead"]
    snapshot = await app.metrics_snapshot()
    assert snapshot.workers_alive == 0
    await clock.advance(timedelta(hours=1))
    await app.worker().maintenance.apply_retention()
    assert await app.workers() == []


async def test_retention_deletes_old_finished_tasks_and_keeps_dead_letters_and_live_runs(
    db_url: str, clock: fm.ManualClock
) -> None:
    app = fm.App(db_url, clock=clock, retention=DAY)
    try:

        @app.task
        async def ok(n: int) -> int:
            return n

        @app.task(retry=fm.Retry(max_attempts=1))
        async def bad(n: int) -> None:
            raise RuntimeError("boom")

        @app.task(queue="held")
        async def later(n: int) -> None:
            return None

        done = [(await app.submit(ok, i)).id for i in range(3)]
        dead = (await app.submit(bad, 0)).id
        await app.pause_queue("held")  # the run's second node waits: the run is live
        wf = app.workflow("pair")
        wf.add(ok, 10, name="first")
        wf.add(later, 11, name="second")
        run = await wf.submit()
        await drain(app.worker(queues=["default", "held"]))
        nodes = (await run.status()).nodes
        assert nodes["first"].state is fm.State.COMPLETED

        await clock.advance(DAY / 2)
        worker = app.worker()
        assert await worker.maintenance.apply_retention() == 0  # not old enough yet
        await clock.advance(DAY)
        assert await worker.maintenance.apply_retention() == 3
        for task_id in done:
            with pytest.raises(fm.TaskNotFound):
                await app.get(task_id)
        assert (await app.get(dead)).state is fm.State.DEAD_LETTERED
        assert (await app.get(nodes["first"].task_id)).state is fm.State.COMPLETED
        events = [e async for e in app.events(follow=False)]
        assert not {e.task_id for e in events} & set(done)
        # Dead letters go only when named.
        assert await app.purge(older_than=DAY, states=["dead_lettered"]) == 1
    finally:
        await app.close()


async def test_purge_runs_in_batches_and_reports_progress(
    app: fm.App, clock: fm.ManualClock
) -> None:
    @app.task
    async def ok(n: int) -> int:
        return n

    await app.submit_many(ok, range(5))
    await drain(app.worker())
    await clock.advance(timedelta(hours=2))
    batches: list[int] = []
    assert await app.purge(older_than=timedelta(hours=1), batch=2, progress=batches.append) == 5
    assert batches == [2, 2, 1]
    assert await app.list_tasks() == []
    with pytest.raises(fm.ConfigurationError, match="not terminal"):
        await app.purge(older_than=DAY, states=["running"])
    with pytest.raises(fm.ConfigurationError):
        fm.App(app.url, retention=timedelta(0))


async def test_metrics_snapshot_reads_the_gauges_from_the_store(
    app: fm.App, clock: fm.ManualClock
) -> None:
    @app.task(queue="mail", retry=fm.Retry(max_attempts=1))
    async def send(n: int) -> None:
        raise RuntimeError("smtp down")

    await app.submit(send, 1)
    await drain(app.worker(queues=["mail"]))
    await app.pause_queue("mail")
    await app.submit(send, 2)
    await clock.advance(timedelta(seconds=90))
    await app.submit(send, 3)
    snap = await app.metrics_snapshot()
    assert snap.tasks == {("mail", fm.State.DEAD_LETTERED): 1, ("mail", fm.State.READY): 2}
    assert snap.oldest_ready_seconds == {"mail": 90.0}
    assert (snap.dead_letters, snap.workers_alive) == (1, 0)
    assert [q.paused for q in snap.queues] == [True]
