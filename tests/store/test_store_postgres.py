"""The PostgreSQL store: the conformance suite, and what only a server backend has to show."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from flowmill._states import State
from flowmill.errors import SchemaError, StoreError, StoreUnavailable
from flowmill.store.contract import Capabilities, MigrateResult, Store
from flowmill.store.contract.tasks import (
    EventsRead,
    Finish,
    FinishStatus,
    InsertStatus,
    NewTask,
    TasksClaim,
    TasksFinish,
    TasksInsert,
)
from flowmill.store.postgres import PostgresStore
from flowmill.store.postgres._schema import SCHEMA_VERSION
from flowmill.testing import StoreConformance
from flowmill.testing._pg import (
    drop_pg_schema,
    fresh_pg_schema,
    unique_schema_name,
)

from ._pg_store_fixtures import pg_url, schema, store

pytestmark = pytest.mark.postgres
__all__ = ["pg_url", "schema", "store"]  # fixtures, used by name


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    async def store(self, pg_url: str, schema: str) -> AsyncIterator[PostgresStore]:
        s = PostgresStore(pg_url, schema=schema)
        await s.open()
        try:
            yield s
        finally:
            await s.close()


def new(n: int, prefix: str = "t", **kw: object) -> list[NewTask]:
    tag = os.urandom(3).hex()
    return [NewTask(id=f"{prefix}-{tag}-{i}", kind="job", payload=b"{}", **kw) for i in range(n)]  # type: ignore[arg-type]


def claim_params(limit: int, queues: tuple[str, ...] = ("default",)) -> TasksClaim:
    return TasksClaim("w", list(queues), ["job"], limit, 30_000)


async def sql_exec(url: str, query: sql.Composed, *args: object) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(query, args or None)


# -- opening: URLs, servers, schemas -------------------------------------------------


async def start_waiting(
    wait: Callable[[float], Awaitable[None]], timeout_s: float = 60
) -> asyncio.Future[None]:
    """A task that waits once (a task's first wait may return at once), then for real."""
    primed = asyncio.Event()

    async def waiter() -> None:
        await wait(0)
        primed.set()
        await wait(timeout_s)

    fut = asyncio.ensure_future(waiter())
    await asyncio.wait_for(primed.wait(), 10)
    return fut


def one_line_error(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


async def test_postgres_scheme_alias_is_accepted(pg_url: str, schema: str) -> None:
    url = pg_url.replace("postgresql://", "postgres://", 1)
    s = PostgresStore(url, schema=schema)
    await s.open()
    try:
        assert isinstance(s, Store)
        assert await s.now_ms() > 0
    finally:
        await s.close()


async def test_the_url_may_name_the_schema(pg_url: str, schema: str) -> None:
    sep = "&" if "?" in pg_url else "?"
    s = PostgresStore(f"{pg_url}{sep}schema={schema}&application_name=fm_schema_test")
    assert s.schema == schema
    await s.open()
    try:
        await s.tasks_insert(TasksInsert(new(1)))
    finally:
        await s.close()
    other = PostgresStore(pg_url, schema=schema)
    await other.open()
    try:
        assert sum(c.count for c in await other.tasks_count()) == 1
    finally:
        await other.close()
    assert PostgresStore(pg_url).schema == "flowmill"


@pytest.mark.parametrize("url", ["mysql://localhost/db", "localhost:5432", ""])
def test_a_url_that_is_not_postgresql_is_refused(url: str) -> None:
    with pytest.raises(StoreError) as info:
        PostgresStore(url)
    assert "not a PostgreSQL URL" in one_line_error(info.value)


async def test_an_unreachable_server_is_one_clear_line() -> None:
    s = PostgresStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(StoreUnavailable) as info:
        await s.open()
    text = one_line_error(info.value)
    assert "127.0.0.1:1" in text and "refused" in text.lower()


async def test_a_missing_database_is_one_clear_line(pg_url: str) -> None:
    s = PostgresStore(pg_url.rsplit("/", 1)[0] + "/no_such_db_flowmill")
    with pytest.raises(StoreError) as info:
        await s.open()
    assert not isinstance(info.value, StoreUnavailable)
    assert 'database "no_such_db_flowmill" does not exist' in one_line_error(info.value)


async def test_an_unknown_user_is_one_clear_line(pg_url: str) -> None:
    s = PostgresStore(pg_url.replace("postgres@", "no_such_role_fm@", 1))
    with pytest.raises(StoreError) as info:
        await s.open()
    assert "no_such_role_fm" in one_line_error(info.value)


async def test_a_password_never_appears_in_errors() -> None:
    s = PostgresStore("postgresql://user:s3cret@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(StoreUnavailable) as info:
        await s.open()
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(s)


async def test_missing_permissions_are_one_clear_line(pg_url: str, schema: str) -> None:
    role = unique_schema_name("fm_role")
    await sql_exec(pg_url, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        # A new role may connect but not create schemas (no CREATE on the database).
        s = PostgresStore(pg_url.replace("postgres@", f"{role}@", 1), schema=schema)
        with pytest.raises(StoreError) as info:
            await s.open()
        assert "permission denied" in one_line_error(info.value)
    finally:
        await sql_exec(pg_url, sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_open_creates_the_schema_and_migrate_is_idempotent(pg_url: str, schema: str) -> None:
    s = PostgresStore(pg_url, schema=schema)
    assert await s.schema_version() is None
    assert await s.migrate() == MigrateResult(None, SCHEMA_VERSION)
    assert await s.migrate() == MigrateResult(SCHEMA_VERSION, SCHEMA_VERSION)
    assert await s.schema_version() == SCHEMA_VERSION
    await s.open()
    await s.close()


async def test_schema_version_creates_nothing(pg_url: str, schema: str) -> None:
    s = PostgresStore(pg_url, schema=schema)
    assert await s.schema_version() is None
    assert await s.schema_version() is None  # the schema was not created by reading it
    assert s.capabilities == Capabilities(durable=True, local_file=False)


async def test_a_newer_schema_is_refused(store: PostgresStore, pg_url: str, schema: str) -> None:
    await sql_exec(
        pg_url,
        sql.SQL("UPDATE {}.meta SET value = '999' WHERE key = 'schema_version'").format(
            sql.Identifier(schema)
        ),
    )
    with pytest.raises(SchemaError) as info:
        await PostgresStore(pg_url, schema=schema).open()
    assert "version 999" in one_line_error(info.value)


async def test_a_foreign_schema_is_refused(pg_url: str, schema: str) -> None:
    await sql_exec(pg_url, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    await sql_exec(
        pg_url, sql.SQL("CREATE TABLE {}.orders (id int)").format(sql.Identifier(schema))
    )
    with pytest.raises(SchemaError) as info:
        await PostgresStore(pg_url, schema=schema).open()
    assert "not a flowmill schema" in one_line_error(info.value)


async def test_concurrent_openers_migrate_once(pg_url: str, schema: str) -> None:
    stores = [PostgresStore(pg_url, schema=schema, min_size=0) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        await stores[0].tasks_insert(TasksInsert(new(3)))
        assert sum(c.count for c in await stores[-1].tasks_count()) == 3
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_closed_store_refuses_calls(pg_url: str, schema: str) -> None:
    s = PostgresStore(pg_url, schema=schema)
    with pytest.raises(StoreError, match="not open"):
        await s.now_ms()
    await s.open()
    await s.close()
    with pytest.raises(StoreError, match="not open"):
        await s.tasks_claim(claim_params(1))


@pytest.mark.parametrize(
    "name", ['we"ird; DROP SCHEMA public; --', "ünï 中文 🚀", "x" * 63, "UPPER case"]
)
async def test_awkward_schema_names_are_quoted(pg_url: str, name: str) -> None:
    name = name[:-6] + os.urandom(3).hex() if len(name) == 63 else f"{name} {os.urandom(3).hex()}"
    s = PostgresStore(pg_url, schema=name)
    await s.open()
    try:
        await s.tasks_insert(TasksInsert(new(2)))
        woken = await start_waiting(s.wait_for_work)
        await s.tasks_insert(TasksInsert(new(1)))
        await asyncio.wait_for(woken, 10)
        assert len(await s.tasks_claim(claim_params(10))) == 3
    finally:
        await s.close()
        await drop_pg_schema(pg_url, name)


def test_a_schema_name_too_long_is_refused() -> None:
    with pytest.raises(StoreError, match="63 bytes"):
        PostgresStore("postgresql://localhost/db", schema="é" * 40)


# -- concurrency -----------------------------------------------------------------------


async def test_concurrent_claimers_never_double_claim(pg_url: str, schema: str) -> None:
    stores = [PostgresStore(pg_url, schema=schema, max_size=4) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        tasks = new(3000)
        await stores[0].tasks_insert(TasksInsert(tasks))
        claimed: list[str] = []

        async def claimer(s: PostgresStore) -> None:
            while rows := await s.tasks_claim(claim_params(7)):
                claimed.extend(r.id for r in rows)
                await asyncio.sleep(0)

        await asyncio.gather(*(claimer(s) for s in stores for _ in range(4)))
        counts = Counter(claimed)
        assert counts.most_common(1)[0][1] == 1
        assert set(counts) == {t.id for t in tasks}
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_claim_across_queues_follows_priority_then_age(store: PostgresStore) -> None:
    low = new(3, "low", queue="q1", priority=1)
    high = new(2, "high", queue="q2", priority=5)
    mid = new(2, "mid", queue="q3", priority=3)
    for batch in (low, high, mid):
        await store.tasks_insert(TasksInsert(batch))
    rows = await store.tasks_claim(claim_params(5, ("q1", "q2", "q3", "q1")))
    assert [r.id for r in rows] == [t.id for t in (*high, *mid, low[0])]


async def test_concurrent_small_calls_are_combined_correctly(store: PostgresStore) -> None:
    batches = [new(3, f"b{i}") for i in range(40)]
    outs = await asyncio.gather(*(store.tasks_insert(TasksInsert(b)) for b in batches))
    for batch, out in zip(batches, outs, strict=True):
        assert [(o.id, o.status) for o in out] == [(t.id, InsertStatus.INSERTED) for t in batch]
    rows = await store.tasks_claim(claim_params(200))
    assert len(rows) == 120
    finishes = [
        TasksFinish([Finish(r.id, r.lease_epoch, State.COMPLETED, result=r.id.encode())])
        for r in rows
    ]
    results = await asyncio.gather(*(store.tasks_finish(f) for f in finishes))
    assert all(out[0].status is FinishStatus.APPLIED for out in results)
    got = await store.results_get([r.id for r in rows])
    assert sorted((g.task_id, g.result) for g in got) == sorted((r.id, r.id.encode()) for r in rows)


async def test_a_bad_call_merged_with_others_fails_alone(store: PostgresStore) -> None:
    (taken,) = new(1, "taken")
    await store.tasks_insert(TasksInsert([taken]))
    good = [new(2, f"g{i}") for i in range(10)]
    bad = [*new(1, "bad"), taken]
    outs = await asyncio.gather(
        *(store.tasks_insert(TasksInsert(b)) for b in (*good[:5], bad, *good[5:])),
        return_exceptions=True,
    )
    assert isinstance(outs[5], StoreError)
    assert all(isinstance(o, list) for i, o in enumerate(outs) if i != 5)
    assert await store.task_get(bad[0].id) is None
    assert sum(c.count for c in await store.tasks_count()) == 21


# -- wake-ups and the clock ------------------------------------------------------------


async def test_notify_wakes_a_waiter_in_another_store(pg_url: str, schema: str) -> None:
    waiter, writer = PostgresStore(pg_url, schema=schema), PostgresStore(pg_url, schema=schema)
    await waiter.open()
    await writer.open()
    try:
        work = await start_waiting(waiter.wait_for_work)
        await asyncio.sleep(0.2)
        assert not work.done()
        (t,) = new(1)
        await writer.tasks_insert(TasksInsert([t]))
        await asyncio.wait_for(work, 10)

        done = await start_waiting(waiter.wait_for_finish)
        (row,) = await writer.tasks_claim(claim_params(1))
        await writer.tasks_finish(TasksFinish([Finish(row.id, row.lease_epoch, State.COMPLETED)]))
        await asyncio.wait_for(done, 10)
    finally:
        await waiter.close()
        await writer.close()


async def test_schemas_do_not_wake_each_other(pg_url: str, schema: str) -> None:
    async with fresh_pg_schema(pg_url) as other_schema:
        a, b = PostgresStore(pg_url, schema=schema), PostgresStore(pg_url, schema=other_schema)
        await a.open()
        await b.open()
        try:
            work = await start_waiting(a.wait_for_work, 0.5)
            await b.tasks_insert(TasksInsert(new(1)))
            started = asyncio.get_running_loop().time()
            await work
            assert asyncio.get_running_loop().time() - started > 0.3
        finally:
            await a.close()
            await b.close()


async def test_now_is_the_database_clock(store: PostgresStore, pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
        row = await cur.fetchone()
    assert row is not None
    assert abs(await store.now_ms() - int(row[0])) < 2_000


# -- connection loss -----------------------------------------------------------------


async def terminate_backends(url: str, app_name: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (app_name,),
        )
        row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def test_recovers_after_its_connections_are_terminated(pg_url: str, schema: str) -> None:
    app_name = unique_schema_name("fm_kill")
    sep = "&" if "?" in pg_url else "?"
    s = PostgresStore(f"{pg_url}{sep}application_name={app_name}", schema=schema, min_size=3)
    writer = PostgresStore(pg_url, schema=schema)
    await s.open()
    await writer.open()
    try:
        await s.tasks_insert(TasksInsert(new(5)))
        await (await start_waiting(s.wait_for_work, 0))  # the LISTEN connection is up
        await asyncio.gather(*(s.tasks_count() for _ in range(3)))
        assert await terminate_backends(pg_url, app_name) >= 2

        # Idempotent calls run again on a fresh connection; nothing surfaces.
        rows = await s.tasks_claim(claim_params(5))
        assert len(rows) == 5
        out = await s.tasks_finish(
            TasksFinish([Finish(r.id, r.lease_epoch, State.COMPLETED) for r in rows])
        )
        assert {o.status for o in out} == {FinishStatus.APPLIED}
        for _ in range(5):  # every pooled connection has been replaced
            await s.tasks_insert(TasksInsert(new(1)))
        assert await s.tasks_claim(claim_params(10))

        # The LISTEN connection comes back too: a write elsewhere wakes us again.
        async def woken() -> bool:
            work = await start_waiting(s.wait_for_work)
            await asyncio.sleep(0.05)
            await writer.tasks_insert(TasksInsert(new(1)))
            try:
                await asyncio.wait_for(work, 2)
            except TimeoutError:
                return False
            return True

        for _ in range(10):
            if await woken():
                break
        else:
            raise AssertionError("the LISTEN connection did not come back")
    finally:
        await s.close()
        await writer.close()


async def test_an_insert_whose_connection_dies_is_run_again(pg_url: str, schema: str) -> None:
    app_name = unique_schema_name("fm_kill")
    sep = "&" if "?" in pg_url else "?"
    s = PostgresStore(f"{pg_url}{sep}application_name={app_name}", schema=schema, timeout_s=2)
    await s.open()
    try:
        await s.tasks_count()
        await terminate_backends(pg_url, app_name)
        tasks = new(3)
        out = await s.tasks_insert(TasksInsert(tasks))
        assert [o.status for o in out] == [InsertStatus.INSERTED] * 3
        assert sum(c.count for c in await s.tasks_count()) == 3
    finally:
        await s.close()


async def test_an_insert_whose_reply_was_lost_is_not_doubled(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = store._run
    lost: list[bool] = []

    async def run_then_lose_reply(job: Any, *, idempotent: bool) -> Any:
        result = await run(job, idempotent=idempotent)
        if not idempotent and not lost:  # the insert committed; its reply never came
            lost.append(True)
            raise StoreUnavailable("connection lost (simulated)") from psycopg.OperationalError(
                "server closed the connection unexpectedly"
            )
        return result

    monkeypatch.setattr(store, "_run", run_then_lose_reply)
    tasks = new(4)
    out = await store.tasks_insert(TasksInsert(tasks))
    assert lost and [o.status for o in out] == [InsertStatus.INSERTED] * 4
    assert sum(c.count for c in await store.tasks_count()) == 4
    events = await store.events_read(EventsRead())
    assert sorted(e.task_id for e in events) == sorted(t.id for t in tasks)
