"""Redis: reads over a parent's children run in bounded slices, one FCALL each."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from flowmill._states import State
from flowmill.store.contract.tasks import ChildrenSummaryQuery, ErrorGroup
from flowmill.store.redis import RedisStore, _tree
from flowmill.testing.conformance._parents import kids, mixed_children, start, summary_of

from .test_store_redis import _delete_prefix, open_test_store, valkey_url

__all__ = ["valkey_url"]


@pytest.fixture
async def redis_store(valkey_url: str) -> AsyncIterator[RedisStore]:
    # a private server: these tests call the functions directly, and the shared Redis may
    # hold another client's version of the library meanwhile
    store = await open_test_store(valkey_url)
    try:
        yield store
    finally:
        await _delete_prefix(store)
        await store.close()


async def test_one_summary_call_reads_at_most_a_thousand_children(
    redis_store: RedisStore,
) -> None:
    parent = await start(redis_store, fail_fast=False)
    await kids(redis_store, parent, 1_005)
    params = msgspec.msgpack.encode({"parent": parent.id, "examples": 3, "limit": 5_000})
    client = redis_store._c()
    first = msgspec.msgpack.decode(
        await client.fcall("fm_children_summary", 1, redis_store._k, params)
    )
    assert (first["total"], first["by_state"]) == (1_000, {"ready": 1_000})
    assert first["after"]
    params = msgspec.msgpack.encode(
        {"parent": parent.id, "examples": 3, "limit": 5_000, "after": first["after"]}
    )
    rest = msgspec.msgpack.decode(
        await client.fcall("fm_children_summary", 1, redis_store._k, params)
    )
    assert (rest["total"], rest["by_state"], rest["after"]) == (5, {"ready": 5}, False)
    got = await redis_store.children_summary(ChildrenSummaryQuery(parent.id))
    assert got == summary_of(parent.id, {State.READY: 1_005}, ())


async def test_a_summary_added_up_from_slices_is_the_same(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, ids = await mixed_children(redis_store)
    whole = await redis_store.children_summary(ChildrenSummaryQuery(parent.id, 5, 5))
    for size in (1, 2, 4):
        monkeypatch.setattr(_tree, "SUMMARY_SLICE", size)
        for top, examples in ((1, 2), (5, 5), (0, 0)):
            got = await redis_store.children_summary(
                ChildrenSummaryQuery(parent.id, top_errors=top, examples=examples)
            )
            assert (got.total, got.by_state) == (whole.total, whole.by_state)
            want = tuple(
                ErrorGroup(g.message, g.count, g.example_ids[:examples])
                for g in whole.top_errors[:top]
            )
            assert got.top_errors == want
    assert whole.top_errors == (
        ErrorGroup("disk full", 3, (ids[0], ids[2], ids[3])),
        ErrorGroup("too slow", 1, (ids[1],)),
    )
    assert whole.by_state == {
        State.FAILED: 3,
        State.DEAD_LETTERED: 1,
        State.COMPLETED: 2,
        State.CANCELLED: 1,
        State.RUNNING: 1,
        State.READY: 1,
    }


async def test_a_client_of_layout_5_still_gets_the_whole_summary(
    redis_store: RedisStore,
) -> None:
    # during a rolling upgrade an older client calls without `limit`: the old reply
    parent = await start(redis_store, fail_fast=False)
    await kids(redis_store, parent, 3)
    params = msgspec.msgpack.encode({"parent": parent.id, "top": 5, "examples": 3})
    got = msgspec.msgpack.decode(
        await redis_store._c().fcall("fm_children_summary", 1, redis_store._k, params)
    )
    assert got == {"total": 3, "by_state": {"ready": 3}, "top": []}
