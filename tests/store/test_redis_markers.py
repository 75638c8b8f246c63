"""Redis: blocking claims on the queues' marker sets (BZPOPMIN), on Redis, Valkey and a
cluster. Every write that makes a task claimable leaves a marker; a waiter blocks on them
without a call before each wait; a delayed task wakes its waiter at its due time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from flowmill._states import State
from flowmill.store.contract.admin import QueueSetPaused
from flowmill.store.contract.tasks import Finish, TaskRetry, TasksFinish, TasksPromote
from flowmill.store.redis import LIBRARY_VERSION, RedisStore
from flowmill.store.redis._store import LIBRARY
from flowmill.testing.conformance._parents import claim_all, kids, start, wait
from flowmill.testing.conformance._util import (
    ERR,
    QUEUE,
    T0,
    TTL,
    add,
    claim,
    claim_one,
    finish,
    insert,
    make_state,
    task,
)
from flowmill.testing.conformance.wake import WORK_ACTIONS, wait_until_woken

from .test_store_redis import _delete_prefix, cluster_url, open_test_store, valkey_url

__all__ = ["cluster_url", "valkey_url"]


@pytest.fixture(params=["redis", "valkey", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[RedisStore]:
    if request.param == "redis":
        s = await open_test_store()
    else:
        s = await open_test_store(request.getfixturevalue(f"{request.param}_url"))
    try:
        yield s
    finally:
        await _delete_prefix(s)
        await s.close()


async def markers(store: RedisStore, queue: str = QUEUE) -> dict[bytes, float]:
    got = await store._c().zrange(store._k + "wm:" + queue, 0, -1, withscores=True)
    return dict(got)


async def clear(store: RedisStore, queue: str = QUEUE) -> None:
    await store._c().delete(store._k + "wm:" + queue)


async def _child_done(store: RedisStore, now: int) -> object:
    parent = await start(store, "orch", now=now)
    await kids(store, parent, 1)
    (child,) = await claim_all(store, 1, now=now)
    assert await wait(store, parent, now=now) is State.WAITING_CHILDREN
    await clear(store)
    return await finish(store, child.id, child.lease_epoch, State.COMPLETED, now=now)


async def _lease_reclaimed(store: RedisStore, now: int) -> object:
    task_id = await make_state(store, State.RUNNING, now=now)
    await clear(store)
    item = Finish(task_id, 1, State.READY, error=ERR, expired_lease=True)
    return await store.tasks_finish(TasksFinish([item], now + TTL + 1))


async def _unpaused(store: RedisStore, now: int) -> object:
    await store.queue_set_paused(QueueSetPaused(QUEUE, True))
    await add(store, now)
    await clear(store)
    return await store.queue_set_paused(QueueSetPaused(QUEUE, False))


async def _operator_retry(store: RedisStore, now: int) -> object:
    task_id = await make_state(store, State.FAILED, now=now)
    await clear(store)
    return await store.task_retry(TaskRetry(task_id, now))


MARKING: dict[str, Callable[[RedisStore, int], Awaitable[object]]] = {
    "child-done-parent-finalizes": _child_done,
    "lease-reclaimed": _lease_reclaimed,
    "queue-unpaused": _unpaused,
    "operator-retry": _operator_retry,
}


@pytest.mark.parametrize("name", sorted(MARKING))
async def test_a_write_that_makes_work_claimable_leaves_a_marker(
    store: RedisStore, name: str
) -> None:
    await MARKING[name](store, T0)
    assert (await markers(store))[b"w"] == 0


async def test_a_ready_insert_marks_its_queue_and_a_delayed_one_its_due_time(
    store: RedisStore,
) -> None:
    await insert(store, task(queue="other"), now=T0)
    assert await markers(store, "other") == {b"w": 0}
    assert await markers(store) == {}
    await insert(store, task(delay_ms=5_000), now=T0)
    await insert(store, task(delay_ms=9_000), now=T0)
    assert await markers(store) == {b"d": T0 + 5_000}  # the earliest due time is kept
    await insert(store, task(delay_ms=1_000), now=T0)
    assert await markers(store) == {b"d": T0 + 1_000}
    assert await store.tasks_promote(TasksPromote(now_ms=T0 + 1_000)) == 1
    assert (await markers(store))[b"w"] == 0


async def test_a_full_claim_marks_its_queue_again_for_the_next_waiter(
    store: RedisStore,
) -> None:
    await insert(store, task(), task(), now=T0)
    await clear(store)
    await claim_one(store)  # one of two: work is left
    assert await markers(store) == {b"w": 0}
    await clear(store)
    await claim_one(store)  # the last one: nothing left
    assert await markers(store) == {}


@pytest.mark.parametrize("name", sorted(WORK_ACTIONS))
async def test_a_store_that_claimed_waits_on_the_markers(store: RedisStore, name: str) -> None:
    now = await store.now_ms()
    store._markers.learn([QUEUE])
    calls: list[Any] = []
    real = store._next_due

    async def counted(after: int | None) -> tuple[int | None, int]:
        calls.append(after)
        return await real(after)

    store._next_due = counted  # type: ignore[method-assign]
    store._markers._next_due = counted
    await wait_until_woken(store.wait_for_work, lambda: WORK_ACTIONS[name](store, now), waiters=3)
    # the clock is read once when the listener starts, not before every wait
    assert len(calls) <= 1
    assert store._markers._listener is not None


async def test_a_delayed_task_wakes_its_waiter_at_its_due_time(store: RedisStore) -> None:
    store._markers.learn([QUEUE])
    await store.wait_for_work(0)  # the first wait answers at once
    now = await store.now_ms()
    await insert(store, task(delay_ms=300), now=now)
    await store.wait_for_work(60)  # the `d` marker pops; the wait ends at the due time
    assert now + 300 <= await store.now_ms() < now + 30_000


async def test_a_layout_without_markers_gets_them_for_its_ready_queues(
    store: RedisStore,
) -> None:
    await insert(store, task(), task(queue="mail"), task(queue="later", delay_ms=60_000))
    k, client = store._k, store._c()
    await client.delete(k + "wm:" + QUEUE, k + "wm:mail", k + "wm:later")
    await client.hset(k + "meta", "schema_version", 5)
    done = await store.migrate()
    assert (done.before, done.after) == (5, 6)
    assert await markers(store) == {b"w": 0}
    assert await markers(store, "mail") == {b"w": 0}
    assert await markers(store, "later") == {}  # made ready (and marked) by its promotion


async def test_another_library_version_sends_waiters_back_to_the_stream(
    valkey_url: str,
) -> None:
    # a private server: the library is loaded for the whole server
    store = await open_test_store(valkey_url)
    client = store._c()
    try:
        store._markers.learn([QUEUE])
        await store.wait_for_work(0)
        older = LIBRARY.replace(LIBRARY_VERSION, "0ther0ther00")
        await client.function_load(older, replace=True)
        await store.wait_for_work(60)  # the listener's next idle block finds it
        assert store._markers.stale
        now = await store.now_ms()
        await wait_until_woken(store.wait_for_work, lambda: WORK_ACTIONS["insert"](store, now))
        assert store._markers.stale
        await client.function_load(LIBRARY, replace=True)
        await store.wait_for_work(0)
        assert not store._markers.stale
    finally:
        await client.function_load(LIBRARY, replace=True)
        await _delete_prefix(store)
        await store.close()


async def test_a_woken_store_that_does_not_claim_leaves_the_next_marker_to_others(
    store: RedisStore,
) -> None:
    busy = RedisStore(store.url, prefix=store.prefix)
    await busy.open()
    try:
        for s in (busy, store):
            s._markers.learn([QUEUE])
        now = await store.now_ms()
        woken = asyncio.Event()

        async def busy_waiter() -> None:
            await busy.wait_for_work(0)
            await busy.wait_for_work(60)  # the first insert's marker
            woken.set()
            await busy.wait_for_work(60)  # still waiting, but it claims nothing (all busy)

        pending = asyncio.ensure_future(busy_waiter())
        try:
            await asyncio.sleep(0)
            while busy._markers._listener is None:
                await asyncio.sleep(0)  # until its listener starts
            await insert(busy, task(), now=now)
            await asyncio.wait_for(woken.wait(), 5)
            # the idle store gets the next marker, though `busy` still waits
            await wait_until_woken(store.wait_for_work, lambda: insert(store, task(), now=now))
        finally:
            pending.cancel()
    finally:
        await busy.close()


async def test_a_wait_after_a_full_claim_is_woken(store: RedisStore) -> None:
    # a full claim pauses the listener (the worker claims again by itself), but a caller
    # that waits next wants more work
    now = await store.now_ms()
    await insert(store, task(), now=now)
    await claim_one(store, now=now)
    await wait_until_woken(store.wait_for_work, lambda: insert(store, task(), now=now))


async def test_a_marker_taken_by_a_store_serving_other_kinds_reaches_one_that_serves_it(
    store: RedisStore,
) -> None:
    other = RedisStore(store.url, prefix=store.prefix)  # a worker of kind "x" only
    await other.open()
    try:
        for s in (other, store):
            s._markers.learn([QUEUE])
        now = await store.now_ms()
        woken = asyncio.Event()

        async def other_waiter() -> None:
            await other.wait_for_work(0)
            await other.wait_for_work(60)  # it takes the marker of a task it cannot run
            woken.set()

        pending = asyncio.ensure_future(other_waiter())
        try:
            while other._markers._listener is None:
                await asyncio.sleep(0)  # until its listener starts
            await insert(store, task(), now=now)
            await asyncio.wait_for(woken.wait(), 5)
            assert await markers(store) == {}

            async def other_claims_nothing() -> object:
                got = await claim(other, kinds=("x",), now=now)
                assert got == []
                return got

            # its claim leaves the task behind: the store that serves the kind is woken
            await wait_until_woken(store.wait_for_work, other_claims_nothing)
        finally:
            pending.cancel()
    finally:
        await other.close()


async def test_a_store_woken_for_a_kind_it_does_not_serve_leaves_the_marker_to_others(
    store: RedisStore,
) -> None:
    submitter = RedisStore(store.url, prefix=store.prefix)  # another process
    await submitter.open()
    try:
        store._markers.learn([QUEUE])
        now = await store.now_ms()

        async def worker_of_x() -> None:  # one task: its waits share one wake-up cursor
            await store.wait_for_work(0)
            await store.wait_for_work(60)  # the marker pops here
            assert await markers(store) == {}
            assert await claim(store, kinds=("x",), now=now) == []
            assert b"w" in await markers(store)  # put back for a process serving the kind
            # resting, it does not pop the marker again at once (it would spin on it)
            await store.wait_for_work(0.2)
            assert b"w" in await markers(store)

        flow = asyncio.ensure_future(worker_of_x())
        while store._markers._listener is None and not flow.done():
            await asyncio.sleep(0)  # until its listener starts
        await insert(submitter, task(), now=now)
        await asyncio.wait_for(flow, 10)
    finally:
        await submitter.close()
