"""Redis partitions, groundwork of issue 14: the `partitions=` count (parsed, stamped,
matched, and above 1 refused until partitioning lands), placement of a task by its id, and
ids minted by the engine so that what must share a partition does."""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill._rows import Common, Opts, id_tag, key_tag, new_task_ids
from flowmill.errors import ConfigurationError
from flowmill.store.redis import RedisStore
from flowmill.store.redis._conn import parse_url
from flowmill.store.redis._partitions import (
    MAX_PARTITIONS,
    key_partition,
    misplaced,
    parse_count,
    partition_of,
    prefix_of,
)
from flowmill.testing.conformance._util import insert, task

from ..engine.test_worker import running
from .test_store_redis import REDIS_URL, _delete_prefix, open_test_store

WAIT = timedelta(seconds=20)


# -- ids: the tag every client computes alone, and ids minted to share one ------------------


def test_the_tag_of_an_id_is_its_last_four_hex_digits_or_a_crc_of_the_id() -> None:
    assert id_tag("0190f3c2-1a2b-7c3d-8e4f-0123456789ab") == 0x89AB
    assert id_tag("job-1") == zlib.crc32(b"job-1") & 0xFFFF
    assert id_tag("xyz") == zlib.crc32(b"xyz") & 0xFFFF  # shorter than four characters
    assert id_tag("task-12g4") == zlib.crc32(b"task-12g4") & 0xFFFF  # not all hex


def test_ids_minted_near_another_share_its_tag_and_stay_unique_uuid7() -> None:
    for near in ("0190f3c2-1a2b-7c3d-8e4f-01234567beef", "parent-made-by-hand"):
        ids = new_task_ids(500, near=near)
        assert len(set(ids)) == 500
        assert {id_tag(i) for i in ids} == {id_tag(near)}
        assert all(uuid.UUID(i).version == 7 for i in ids)
        assert {len(i) for i in ids} == {36}


def test_ids_minted_alone_spread_over_the_partitions() -> None:
    ids = new_task_ids(20_000, random.Random(14).randbytes)  # seeded: the same every run
    for n in (2, 4, 8, 256):
        counts = [0] * n
        for i in ids:
            counts[partition_of(i, n)] += 1
        assert all(counts), f"an empty partition among {n}: {counts}"
        if n <= 8:  # uniform enough: no partition holds twice its share
            assert max(counts) < 2 * len(ids) / n


def _tdef(name: str) -> fm.TaskDef:
    app = fm.App("sqlite:///:memory:")

    @app.task(name=name)
    async def handler(_: None) -> None:
        return None

    return handler


def test_a_keyed_submit_mints_the_tag_of_its_kind_and_key() -> None:
    tdef = _tdef("mail")
    common = Common.build(tdef, Opts())
    first = common.tasks(tdef, [b"1", b"2", b"3"], ["a", None, "b"], None)
    again = common.tasks(tdef, [b"1"], ["a"], None)
    assert id_tag(first[0].id) == id_tag(again[0].id) == key_tag("mail", "a")
    assert id_tag(first[2].id) == key_tag("mail", "b")
    assert first[0].id != again[0].id
    assert key_tag("mail", "a") != key_tag("other", "a")  # dedup keys are per kind
    # so they meet in one partition whatever the count
    for n in (2, 4, 8):
        assert partition_of(first[0].id, n) == key_partition("mail", "a", n)
    assert misplaced(first, 8) is None


def test_children_take_their_parents_tag_even_with_keys() -> None:
    tdef = _tdef("child")
    parent = new_task_ids(1)[0]
    common = Common.build(tdef, Opts(parent=parent))
    kids = common.tasks(tdef, [b"1", b"2"], ["k1", "k2"], ["c1", "c2"])
    assert {id_tag(t.id) for t in kids} == {id_tag(parent)}
    assert misplaced(kids, 8) is None


# -- placement checks for ids made by hand ---------------------------------------------


def _apart(n: int, of: str) -> str:
    """An id in another partition than `of` among `n`."""
    return next(
        i for i in (f"hand-{x}" for x in range(100)) if partition_of(i, n) != partition_of(of, n)
    )


def test_hand_made_ids_in_the_wrong_partition_are_named() -> None:
    parent = "parent-1"
    child = replace(task(id=_apart(4, parent)), parent_id=parent)
    assert misplaced([child], 1) is None  # one partition: everything is together
    why = misplaced([task(), child], 4)
    assert why is not None and "parent" in why and child.id in why
    node = replace(task(id=_apart(4, "run-1")), workflow_id="run-1")
    assert "workflow run" in (misplaced([node], 4) or "")
    keyed = task(id=_apart(4, "x"), key="k")
    if partition_of(keyed.id, 4) == key_partition(keyed.kind, "k", 4):
        keyed = task(id=f"{keyed.id}-{(key_tag(keyed.kind, 'k') + 1) % 4:04x}", key="k")
    assert "dedup key" in (misplaced([keyed], 4) or "")
    fitting = task(id=f"hand-{key_tag(keyed.kind, 'k'):04x}", key="k")
    assert misplaced([fitting], 4) is None


# -- the count in the URL and in the store ---------------------------------------------


def test_the_count_is_parsed_from_the_url() -> None:
    assert parse_url("redis://h/0?partitions=1").partitions == 1
    assert parse_url("redis+cluster://h:7000?partitions=8").partitions == 8
    assert parse_url("redis://h/0").partitions is None
    assert "partitions" not in parse_url("redis://h/0?partitions=1&db=0").driver_url
    assert parse_count(str(MAX_PARTITIONS)) == MAX_PARTITIONS
    for bad in ("0", "257", "x", "-1", "+4", " 4", "", "4.0"):
        with pytest.raises(ConfigurationError, match="partitions must be an integer from 1"):
            parse_url(f"redis://h/0?partitions={bad}")


def test_more_than_one_partition_is_refused_until_it_lands() -> None:
    with pytest.raises(ConfigurationError, match="partitions=4 is not available"):
        RedisStore("redis://127.0.0.1:6379/0?partitions=4")
    with pytest.raises(ConfigurationError, match="partitions=8 is not available"):
        RedisStore("redis+cluster://127.0.0.1:7000?partitions=8")
    assert RedisStore("redis://127.0.0.1:6379/0?partitions=1")._k == prefix_of("fm:", 0)


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    store = await open_test_store()
    try:
        yield store
    finally:
        await _delete_prefix(store)
        await store.close()


async def test_a_store_is_stamped_with_one_partition_in_todays_layout(
    redis_store: RedisStore,
) -> None:
    assert redis_store._k == redis_store.prefix + "{fm:0}:"
    assert await redis_store._c().hget(redis_store._k + "meta", "partitions") == b"1"
    assert redis_store.partitions == 1


async def test_a_stamped_count_is_adopted_and_an_explicit_one_must_match_it(
    redis_store: RedisStore,
) -> None:
    meta = redis_store._k + "meta"
    # a store created by a flowmill with partitions, with 4 of them
    await redis_store._c().hset(meta, "partitions", 4)
    url = f"{REDIS_URL}?prefix={redis_store.prefix}"
    with pytest.raises(ConfigurationError, match=r"created with partitions=4.*partitions=1"):
        await RedisStore(url + "&partitions=1").open()
    with pytest.raises(ConfigurationError, match="partitions=4 is not available"):
        await RedisStore(url).open()  # adopted, and this build cannot serve it
    assert await redis_store._c().hget(meta, "partitions") == b"4"  # nothing written


async def test_a_store_stamped_before_partitions_opens_with_one(redis_store: RedisStore) -> None:
    t = task()
    await redis_store._c().hdel(redis_store._k + "meta", "partitions")
    await insert(redis_store, t)
    url = f"{REDIS_URL}?prefix={redis_store.prefix}&partitions=1"
    again = RedisStore(url)
    await again.open()
    try:
        assert again.partitions == 1
        assert await again._c().hget(again._k + "meta", "partitions") == b"1"
        assert await again.task_get(t.id) is not None
    finally:
        await again.close()


# -- the engine mints co-located ids (seen through a Redis store) -----------------------


@pytest.fixture
async def app() -> AsyncIterator[fm.App]:
    store = await open_test_store()
    await store.close()
    application = fm.App(f"{REDIS_URL}?prefix={store.prefix}", clock=fm.ManualClock())
    await application.open()
    try:
        yield application
    finally:
        await application.close()
        await store.open()
        await _delete_prefix(store)
        await store.close()


async def test_spawned_children_and_workflow_nodes_share_their_anchors_tag(
    app: fm.App,
) -> None:
    @app.task(name="leaf")
    async def leaf(n: int) -> int:
        return n

    @app.executor(name="fan")
    class Fan(fm.Executor[int, None, int]):
        async def execute(self, n: int, ctx: fm.Context) -> None:
            await ctx.spawn_many(leaf, list(range(n)))

        async def finalize(self, n: int, memo: None, ctx: fm.Context) -> int:
            return sum([c.result async for c in ctx.children(leaf)])

    @app.task(name="step")
    async def step(_: None) -> None:
        return None

    flow = app.workflow("two")
    first = flow.add(step, name="a")
    flow.add(step, name="b", after=[first])
    keyed = await app.submit("leaf", 7, key="seven")
    async with running(app.worker()):
        parent = await app.submit("fan", 20)
        assert await parent.result(timeout=WAIT) == sum(range(20))
        run = await flow.submit()
        await run.result(timeout=WAIT)
    kids = [t for t in await app.list_tasks(name="leaf", limit=1000) if t.id != keyed.id]
    assert len(kids) == 20
    assert {id_tag(t.id) for t in kids} == {id_tag(parent.id)}
    nodes = await app.list_tasks(name="step")
    assert len(nodes) == 2 and {id_tag(t.id) for t in nodes} == {id_tag(run.id)}
    assert id_tag(keyed.id) == key_tag("leaf", "seven")
