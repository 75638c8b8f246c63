"""Concurrent inserts on a Redis store go out together: one FCALL carries many callers'.

Each caller still gets its own outcomes or its own error, exactly as if it had called
alone: a rejected duplicate in one caller's batch writes nothing of that batch and
leaves the others' inserts alone.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flowmill.errors import DuplicateTask, LeaseLost
from flowmill.store.contract.tasks import InsertStatus, LeaseRef, TasksInsert
from flowmill.store.redis import RedisStore
from flowmill.testing.conformance._util import T0, claim_one, task

pytestmark = pytest.mark.redis

BASE = os.environ.get("FLOWMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    from redis.asyncio import Redis

    try:
        probe = Redis.from_url(BASE, socket_connect_timeout=2)
        await probe.ping()
        await probe.aclose()
    except Exception as exc:
        pytest.skip(f"{BASE} does not answer: {exc}")
    prefix = f"fmbatch:{os.urandom(6).hex()}:"
    s = RedisStore(BASE, prefix=prefix)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        client = Redis.from_url(BASE)
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def _count_fcalls(store: RedisStore) -> Counter[str]:
    """Count the functions `store` calls, by name."""
    calls: Counter[str] = Counter()
    real = store._fcall

    async def counting(fn: str, params: dict[str, Any], *a: Any, **kw: Any) -> Any:
        calls[fn] += 1
        return await real(fn, params, *a, **kw)

    store._fcall = counting  # type: ignore[method-assign]
    return calls


async def test_concurrent_inserts_share_calls_and_keep_their_payloads(store: RedisStore) -> None:
    calls = _count_fcalls(store)
    n = 60
    batches = [
        [task(payload=f'{{"n": {i}, "j": {j}}}'.encode()) for j in range(i % 3 + 1)]
        for i in range(n)
    ]
    outs = await asyncio.gather(*(store.tasks_insert(TasksInsert(b, "skip", T0)) for b in batches))
    assert calls["fm_insert"] + calls["fm_insert_many"] < n / 4, calls
    assert calls["fm_insert_many"] >= 1
    for b, out in zip(batches, outs, strict=True):
        assert [o.id for o in out] == [t.id for t in b]
        assert {o.status for o in out} == {InsertStatus.INSERTED}
        for t in b:
            rec = await store.task_get(t.id)
            assert rec is not None and rec.payload == t.payload


async def test_an_error_is_its_callers_alone(store: RedisStore) -> None:
    first = task(key="k1")
    await store.tasks_insert(TasksInsert([first], "skip", T0))
    lone = task()
    dup_batch = [task(), task(key="k1")]  # the duplicate comes second: nothing is written
    after = [task(), task()]
    calls = _count_fcalls(store)
    # the three callers queue before the sender runs: one call carries them all
    calls_done = [
        asyncio.ensure_future(store.tasks_insert(TasksInsert([lone], "skip", T0))),
        asyncio.ensure_future(store.tasks_insert(TasksInsert(dup_batch, "reject", T0))),
        asyncio.ensure_future(store.tasks_insert(TasksInsert(after, "skip", T0))),
    ]
    results = await asyncio.gather(*calls_done, return_exceptions=True)
    assert calls == Counter({"fm_insert_many": 1}), calls
    assert [o.id for o in results[0]] == [lone.id]  # type: ignore[union-attr]
    assert isinstance(results[1], DuplicateTask)
    assert [o.id for o in results[2]] == [t.id for t in after]  # type: ignore[union-attr]
    assert await store.task_get(dup_batch[0].id) is None
    for t in (lone, *after):
        assert await store.task_get(t.id) is not None


async def test_spawns_in_one_call_are_fenced_each(store: RedisStore) -> None:
    """The call checks a fence once for all its spawns; a stale epoch is still refused."""
    parent_id = (await store.tasks_insert(TasksInsert([task()], "skip", T0)))[0].id
    row = await claim_one(store)
    assert row.id == parent_id
    good = LeaseRef(parent_id, row.lease_epoch)
    stale = LeaseRef(parent_id, row.lease_epoch + 1)
    kids = [task(parent_id=parent_id) for _ in range(4)]
    calls = _count_fcalls(store)
    results = await asyncio.gather(
        store.tasks_insert(TasksInsert([kids[0]], "skip", T0, fence=good)),
        store.tasks_insert(TasksInsert([kids[1]], "skip", T0, fence=good)),
        store.tasks_insert(TasksInsert([kids[2]], "skip", T0, fence=stale)),
        store.tasks_insert(TasksInsert([kids[3]], "skip", T0, fence=good)),
        return_exceptions=True,
    )
    assert calls == Counter({"fm_insert_many": 1}), calls
    assert isinstance(results[2], LeaseLost)
    for i in (0, 1, 3):
        assert [o.id for o in results[i]] == [kids[i].id]  # type: ignore[union-attr]
    assert await store.task_get(kids[2].id) is None
    total = await store._c().hget(f"{store._k}t:{parent_id}", "children_total")
    assert total == b"3"
