"""Redis memory does not grow with tasks retention has deleted: a purge takes every key of
its tasks (signal idempotency keys included) and their entries of the event Stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from flowmill._states import State
from flowmill.store.contract.admin import TasksPurge
from flowmill.store.contract.signals import (
    DeliverStatus,
    FrameAppend,
    SignalDeliver,
    WaitpointCreate,
)
from flowmill.store.contract.tasks import EventsRead, TaskProgress
from flowmill.store.redis import RedisStore
from flowmill.store.redis._layout import SCHEMA_VERSION
from flowmill.testing.conformance._util import T0, add, claim, finish, insert, task

from .test_store_redis import valkey_server

pytestmark = pytest.mark.redis

ENDED = (State.COMPLETED, State.FAILED, State.CANCELLED)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey-retention")) as url:
        yield url


@pytest.fixture
async def store(server: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(server, prefix=f"fmret:{uuid.uuid4().hex[:12]}:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _keys(store: RedisStore) -> set[str]:
    client = store._c()
    return {k.decode() async for k in client.scan_iter(match=store.prefix + "*", count=1000)}


async def _run_with_signals(store: RedisStore, n: int) -> list[tuple[str, str]]:
    """n tasks that ran with a waitpoint, idempotent signals, frames and progress, then
    completed at T0 + 10; returns (task id, waitpoint id) pairs."""
    await insert(store, *[task() for _ in range(n)])
    out = []
    for i, row in enumerate(await claim(store, limit=n)):
        wp = f"wp-{uuid.uuid4().hex[:8]}"
        await store.waitpoint_create(WaitpointCreate(row.id, row.lease_epoch, wp, "k", 60_000, T0))
        for key in ("a", "b", "a"):
            await store.signal_deliver(SignalDeliver(wp, "go", b"{}", key, T0 + 1))
        for frame in (b"one", b"two"):
            await store.frames_append(FrameAppend(row.id, row.lease_epoch, "text", frame, None, T0))
        await store.task_progress(TaskProgress(row.id, row.lease_epoch, 50.0, f"{i}", T0 + 2))
        await finish(store, row.id, row.lease_epoch, State.COMPLETED, now=T0 + 10, result=b"1")
        out.append((row.id, wp))
    return out


async def test_a_purge_leaves_no_key_of_its_tasks_nor_their_events(
    store: RedisStore,
) -> None:
    client, k = store._c(), store._k
    empty = await _keys(store)
    ran = await _run_with_signals(store, 20)
    keeper = await add(store, now=T0 + 20)  # still ready: retention keeps it
    during = await _keys(store)
    assert sum(1 for key in during if key.startswith(k + "sik:")) == 20
    assert sum(1 for key in during if key.startswith(k + "fr:")) == 20
    assert await client.xlen(k + "ev") == 20 * 4 + 1  # insert, run, progress, end; +1
    assert await store.tasks_purge(TasksPurge(T0 + 100, ENDED, 1000, T0 + 100)) == 20
    after = await _keys(store)
    left = sorted(key for key in after - empty if any(t in key or wp in key for t, wp in ran))
    assert left == []  # not one key of a purged task, its waitpoint or its signals
    assert not [key for key in after if key.startswith((k + "sik", k + "fr:", k + "wp:"))]
    # the event Stream holds the keeper's one event: the purged tasks' entries are gone
    events = await store.events_read(EventsRead())
    assert [(e.task_id, e.state) for e in events] == [(keeper, State.READY)]
    assert await client.xlen(k + "ev") == 1
    # a repeated signal to a purged waitpoint finds nothing to answer as a duplicate
    out = await store.signal_deliver(SignalDeliver(ran[0][1], "go", b"{}", "a", T0 + 200))
    assert out.status is DeliverStatus.REJECTED


async def test_the_events_of_an_older_task_that_stays_are_kept(store: RedisStore) -> None:
    # a purge takes its tasks' events only: an older task's stay, as do younger ones'
    client, k = store._c(), store._k
    older = await add(store, kind="other")  # not claimed by the run below
    ran = await _run_with_signals(store, 5)
    assert await store.tasks_purge(TasksPurge(T0 + 100, ENDED, 1000, T0 + 100)) == 5
    events = await store.events_read(EventsRead())
    assert [e.task_id for e in events] == [older]
    assert await client.xlen(k + "ev") == 1
    younger = await add(store, now=T0 + 300)
    assert {e.task_id for e in await store.events_read(EventsRead())} == {older, younger}
    assert not any(ran[0][0] in key for key in await _keys(store))


async def test_purging_everything_empties_the_event_stream(store: RedisStore) -> None:
    client, k = store._c(), store._k
    await _run_with_signals(store, 3)
    assert await store.tasks_purge(TasksPurge(T0 + 100, ENDED, 1000, T0 + 100)) == 3
    assert await client.xlen(k + "ev") == 0
    # the next events get ids after the deleted ones: a reader's cursor stays valid
    before = int((await client.get(k + "evn")).decode())
    fresh = await add(store, now=T0 + 300)
    (event,) = await store.events_read(EventsRead(after=before))
    assert event.task_id == fresh


async def test_layout_4_signal_keys_are_split_per_waitpoint(store: RedisStore) -> None:
    client, k = store._c(), store._k
    await add(store)
    (row,) = await claim(store, limit=1)
    wp = "wp-legacy"
    await store.waitpoint_create(WaitpointCreate(row.id, row.lease_epoch, wp, "k", 60_000, T0))
    # layout 4 kept every waitpoint's keys in one hash, fields "<len>:<waitpoint><key>"
    await client.hset(k + "sik", f"{len(wp)}:{wp}key-1", "1")
    await client.hset(k + "meta", "schema_version", 4)
    done = await store.migrate()
    assert (done.before, done.after) == (4, SCHEMA_VERSION)
    assert await client.exists(k + "sik") == 0
    assert await client.hgetall(k + "sik:" + wp) == {b"key-1": b"1"}
    out = await store.signal_deliver(SignalDeliver(wp, "go", b"{}", "key-1", T0 + 1))
    assert out.status is DeliverStatus.DUPLICATE
