"""Conformance: wake-ups (`wait_for_work`, `wait_for_finish`) and the store's own clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from ..._states import State
from ...store.contract import Store
from ...store.contract.tasks import (
    LeasesExpired,
    TaskCancel,
    TaskRetry,
    TasksExpire,
    TasksPromote,
)
from ._util import ERR, TTL, claim, claim_one, finish, get, insert, make_state, task

# The waiter gets this long; far less than its own timeout, so only a wake-up can end it.
WAKE_DEADLINE_S = 5.0


WAIT_S = 60.0


Action = Callable[[Store, int], Awaitable[object]]


async def wait_until_woken(
    wait: Callable[[float], Awaitable[None]],
    action: Callable[[], Awaitable[object]],
    waiters: int = 1,
) -> None:
    """Start waiters, run `action`, and require each to return long before its timeout.

    Each waiter first makes one zero-length wait: a backend may answer the first wait of a
    waiter at once (it cannot know what it missed), and any wake-up left over from setting
    the test up is consumed there.
    """
    primed = [asyncio.Event() for _ in range(waiters)]

    async def waiter(ready: asyncio.Event) -> float:
        await wait(0)
        ready.set()
        started = time.monotonic()
        await wait(WAIT_S)
        return time.monotonic() - started

    pending = [asyncio.ensure_future(waiter(ev)) for ev in primed]
    try:
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in primed)), WAKE_DEADLINE_S)
        await action()
        elapsed = await asyncio.wait_for(asyncio.gather(*pending), WAKE_DEADLINE_S)
    finally:
        for p in pending:
            p.cancel()
    assert max(elapsed) < WAKE_DEADLINE_S


async def _insert_ready(store: Store, now: int) -> object:
    return await insert(store, task(), now=now)


async def _retry_now(store: Store, now: int) -> object:
    task_id = await make_state(store, State.RUNNING, now=now, kind="wake")
    rec = await get(store, task_id)
    return await finish(store, task_id, rec.lease_epoch, State.READY, now=now, error=ERR)


async def _promote(store: Store, now: int) -> object:
    await insert(store, task(delay_ms=10), now=now)
    return await store.tasks_promote(TasksPromote(now_ms=now + 10))


async def _operator_retry(store: Store, now: int) -> object:
    task_id = await make_state(store, State.FAILED, now=now, kind="wake")
    return await store.task_retry(TaskRetry(task_id, now))


async def _complete(store: Store, now: int) -> object:
    task_id = await make_state(store, State.RUNNING, now=now, kind="wake")
    rec = await get(store, task_id)
    return await finish(store, task_id, rec.lease_epoch, State.COMPLETED, now=now, result=b"1")


async def _dead_letter(store: Store, now: int) -> object:
    task_id = await make_state(store, State.RUNNING, now=now, kind="wake")
    rec = await get(store, task_id)
    return await finish(store, task_id, rec.lease_epoch, State.DEAD_LETTERED, now=now, error=ERR)


async def _cancel_running(store: Store, now: int) -> object:
    task_id = await make_state(store, State.RUNNING, now=now, kind="wake")
    return await store.task_cancel(TaskCancel(task_id, now_ms=now))


async def _cancel_ready(store: Store, now: int) -> object:
    task_id = await make_state(store, State.READY, now=now, kind="wake")
    return await store.task_cancel(TaskCancel(task_id, now_ms=now))


async def _expire(store: Store, now: int) -> object:
    await insert(store, task(ttl_ms=5), now=now)
    return await store.tasks_expire(TasksExpire(now_ms=now + 5))


WORK_ACTIONS: dict[str, Action] = {
    "insert": _insert_ready,
    "finish-ready": _retry_now,
    "promote": _promote,
    "operator-retry": _operator_retry,
}


FINISH_ACTIONS: dict[str, Action] = {
    "complete": _complete,
    "dead-letter": _dead_letter,
    "cancel-running": _cancel_running,
    "cancel-ready": _cancel_ready,
    "expire": _expire,
}


class WakeConformance:
    """A write that makes work ready, or ends a task, wakes waiters promptly."""

    @pytest.mark.parametrize("name", sorted(WORK_ACTIONS))
    async def test_wait_for_work_is_woken(self, store: Store, name: str) -> None:
        now = await store.now_ms()
        await wait_until_woken(store.wait_for_work, lambda: WORK_ACTIONS[name](store, now))

    @pytest.mark.parametrize("name", sorted(FINISH_ACTIONS))
    async def test_wait_for_finish_is_woken(self, store: Store, name: str) -> None:
        now = await store.now_ms()
        await wait_until_woken(store.wait_for_finish, lambda: FINISH_ACTIONS[name](store, now))

    async def test_waits_time_out_quietly(self, store: Store) -> None:
        for _ in range(2):
            await asyncio.wait_for(store.wait_for_work(0.01), WAKE_DEADLINE_S)
            await asyncio.wait_for(store.wait_for_finish(0.01), WAKE_DEADLINE_S)

    async def test_many_waiters_are_all_woken(self, store: Store) -> None:
        now = await store.now_ms()
        await wait_until_woken(store.wait_for_work, lambda: _insert_ready(store, now), waiters=5)
        await wait_until_woken(store.wait_for_finish, lambda: _complete(store, now), waiters=5)


class NowMsConformance:
    """`now_ms`: the store's own clock, which `now_ms=None` means; and the protocol's shape."""

    async def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert isinstance(store.url, str) and store.url

    async def test_now_is_close_to_the_wall_clock(self, store: Store) -> None:
        now = await store.now_ms()
        assert isinstance(now, int)
        assert abs(now - time.time_ns() // 1_000_000) < 5 * 60_000

    async def test_none_means_the_store_clock(self, store: Store) -> None:
        before = await store.now_ms()
        t = task(delay_ms=3_600_000, ttl_ms=7_200_000)
        await insert(store, t, now=None)
        rec = await get(store, t.id)
        after = await store.now_ms()
        assert rec.state is State.SCHEDULED
        assert (
            rec.run_at_ms is not None and before + 3_600_000 <= rec.run_at_ms <= after + 3_600_000
        )
        assert before <= rec.created_at_ms <= after
        assert await store.tasks_promote(TasksPromote()) == 0
        ready = task()
        await insert(store, ready, now=None)
        row = await claim_one(store, now=None)
        assert before + TTL <= row.lease_expires_at_ms <= await store.now_ms() + TTL
        assert await store.leases_expired(LeasesExpired()) == []
        assert await claim(store, now=None) == []
