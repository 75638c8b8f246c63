"""A result waiter on Redis: `results_get` reads the newest finish wake-up with the results,
so the waiter's next `wait_for_finish` blocks at once (no read of its own, no spurious
wake-up) and still wakes for a finish that came after the results were read."""

from __future__ import annotations

import asyncio
from typing import Any

from flowmill._states import State
from flowmill.store.contract.tasks import TasksInsert
from flowmill.store.redis import RedisStore
from flowmill.testing.conformance._util import T0, claim_one, finish, task

from .test_redis_batch import store

__all__ = ["store"]


def _count_xrevrange(store: RedisStore) -> list[Any]:
    calls: list[Any] = []
    client = store._c()
    real = client.xrevrange

    async def counting(*a: Any, **kw: Any) -> Any:
        calls.append(a)
        return await real(*a, **kw)

    client.xrevrange = counting
    return calls


async def _running(store: RedisStore) -> tuple[str, int]:
    (out,) = await store.tasks_insert(TasksInsert([task()], "skip", T0))
    row = await claim_one(store)
    assert row.id == out.id
    return row.id, row.lease_epoch


async def test_the_wait_after_results_get_blocks_until_a_finish(store: RedisStore) -> None:
    task_id, epoch = await _running(store)
    before = _count_xrevrange(store)

    async def waiter() -> None:
        assert await store.results_get([task_id]) == []
        await store.wait_for_finish(30)

    w = asyncio.ensure_future(waiter())
    for _ in range(200):  # let it reach its blocking read
        await asyncio.sleep(0)
    assert not w.done()  # a first wait without the cursor would have answered at once
    await finish(store, task_id, epoch, State.COMPLETED)
    await asyncio.wait_for(w, 10)
    assert before == []  # the cursor came with the results: no read of its own


async def test_a_finish_between_the_read_and_the_wait_wakes_it(store: RedisStore) -> None:
    task_id, epoch = await _running(store)

    async def waiter() -> None:
        assert await store.results_get([task_id]) == []
        await finish(store, task_id, epoch, State.COMPLETED)  # before the wait starts
        await store.wait_for_finish(30)

    await asyncio.wait_for(waiter(), 10)
    (row,) = await store.results_get([task_id])
    assert row.state is State.COMPLETED
