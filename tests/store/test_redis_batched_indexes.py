"""A Redis claim, finish or insert of many tasks writes their indexes once per call.

The functions move a batch's lease set, ready sets, ended set, counters and sequence and
event numbers together (one command per set or counter, not one per task). These tests
hold them to that, counted by the server itself (INFO commandstats on a private server),
and check that what the batched writes leave is what one task at a time left: counters,
lease and ended sets, event order, sequence order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from flowmill._states import State
from flowmill.store.contract.tasks import (
    ChildrenPage,
    CountRow,
    EventsRead,
    Finish,
    LeaseRef,
    TasksFinish,
    TasksInsert,
)
from flowmill.store.redis import RedisStore
from flowmill.testing.conformance._util import T0, TTL, claim, claim_one, insert, task

from .test_store_redis import valkey_server

pytestmark = pytest.mark.redis

N = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey-batched")) as url:
        yield url


@pytest.fixture
async def store(server: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(server, prefix=f"fmbix:{uuid.uuid4().hex[:12]}:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _reset_stats(store: RedisStore) -> None:
    await store._c().config_resetstat()


async def _calls(store: RedisStore) -> dict[str, int]:
    """Commands run since the last reset, by name (those a function ran included)."""
    stats: dict[str, Any] = await store._c().info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def _ready_on_two_queues(store: RedisStore) -> list[str]:
    tasks = [task(kind=("a", "b")[i % 2], queue=("q1", "q2")[i // 10]) for i in range(N)]
    await insert(store, *tasks)
    return [t.id for t in tasks]


async def test_a_claim_moves_its_tasks_indexes_once_per_set(store: RedisStore) -> None:
    ids = await _ready_on_two_queues(store)
    await _reset_stats(store)
    rows = await claim(store, limit=N, kinds=("a", "b"), queues=("q1", "q2"))
    calls = await _calls(store)
    assert sorted(r.id for r in rows) == sorted(ids)
    # four ready sets (2 queues x 2 kinds): one ZREM each, one ZADD of the lease set
    assert calls.get("zrem", 0) == 4, calls
    assert calls.get("zadd", 0) == 1, calls
    assert calls.get("hincrby", 0) <= 8, calls  # cnt and run, per queue and per kind
    assert calls.get("incr", 0) == 0 and calls.get("incrby", 0) == 1, calls  # event numbers
    assert await store.tasks_count() == [
        CountRow("q1", State.RUNNING, 10),
        CountRow("q2", State.RUNNING, 10),
    ]
    c = store._c()
    assert await c.zcard(store._k + "ls") == N
    assert {int(s) for _, s in await c.zrange(store._k + "ls", 0, -1, withscores=True)} == {
        T0 + TTL
    }
    run = await c.hgetall(store._k + "run")
    assert {k.decode(): int(v) for k, v in run.items()} == {
        "kind|a": 10,
        "kind|b": 10,
        "queue|q1": 10,
        "queue|q2": 10,
    }
    # every claim's `running` event, numbered in the order of the reply
    events = await store.events_read(EventsRead(after=0, limit=1000))
    running = [e.task_id for e in events if e.state == State.RUNNING]
    assert running == [r.id for r in rows]


async def test_a_finish_writes_its_tasks_indexes_once(store: RedisStore) -> None:
    await _ready_on_two_queues(store)
    rows = await claim(store, limit=N, kinds=("a", "b"), queues=("q1", "q2"))
    items = [
        Finish(r.id, r.lease_epoch, State.COMPLETED, result=f'{{"i": {i}}}'.encode())
        for i, r in enumerate(rows)
    ]
    await _reset_stats(store)
    out = await store.tasks_finish(TasksFinish(items, T0 + 5))
    calls = await _calls(store)
    assert {o.state for o in out} == {State.COMPLETED}
    assert calls.get("zrem", 0) == 1, calls  # the lease set
    assert calls.get("zadd", 0) == 1, calls  # the ended set
    assert calls.get("hgetall", 0) == 0, calls  # a finish reads only the fields it needs
    assert calls.get("hincrby", 0) <= 8, calls
    assert await store.tasks_count() == [
        CountRow("q1", State.COMPLETED, 10),
        CountRow("q2", State.COMPLETED, 10),
    ]
    c = store._c()
    assert await c.zcard(store._k + "ls") == 0
    assert await c.zcard(store._k + "fin") == N
    run = await c.hgetall(store._k + "run")
    assert {int(v) for v in run.values()} == {0}
    for i, r in enumerate(rows):
        (res,) = await store.results_get([r.id])
        assert res.state == State.COMPLETED and res.result == f'{{"i": {i}}}'.encode()
    # each result row names its own ending's event (the last event of the task)
    events = await store.events_read(EventsRead(after=0, limit=1000))
    last = {e.task_id: e.id for e in events}
    for r in rows:
        evl = await c.hget(store._k + "t:" + r.id, "evl")
        assert int(evl) == last[r.id]


async def test_an_insert_numbers_its_rows_in_order_and_counts_them(store: RedisStore) -> None:
    parent = await insert(store, task(kind="p"))
    row = await claim_one(store, kinds=("p",))
    kids = [task(parent_id=parent[0].id) for _ in range(N)]
    await _reset_stats(store)
    await store.tasks_insert(TasksInsert(kids, now_ms=T0, fence=LeaseRef(row.id, row.lease_epoch)))
    calls = await _calls(store)
    assert calls.get("incr", 0) == 0, calls
    assert calls.get("incrby", 0) == 2, calls  # sequence and event numbers, once each
    assert calls.get("hincrby", 0) <= 4, calls  # the ready counter, the parent's counts
    page = await store.children_page(ChildrenPage(row.id, limit=100))
    assert [c.id for c in page] == [k.id for k in kids]
    seqs = [c.seq for c in page]
    assert seqs == list(range(seqs[0], seqs[0] + N))
    events = await store.events_read(EventsRead(after=0, limit=1000))
    ready = [e.task_id for e in events if e.state == State.READY and e.task_id != row.id]
    assert ready == [k.id for k in kids]
    counts = {(c.queue, c.state): c.count for c in await store.tasks_count()}
    assert counts[("default", State.READY)] == N
    assert [r.id for r in await claim(store, limit=N)] == [k.id for k in kids]
