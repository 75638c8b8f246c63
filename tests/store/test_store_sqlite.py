"""The SQLite store: the conformance suite (file and in-memory) and SQLite-only behaviour."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from flowmill._states import State
from flowmill.errors import SchemaError, StoreError, StoreUnavailable
from flowmill.store._common.wake import wake_dir_for
from flowmill.store.contract import Capabilities, MigrateResult
from flowmill.store.contract.tasks import (
    Finish,
    InsertStatus,
    TasksClaim,
    TasksFinish,
    TasksInsert,
    TasksList,
)
from flowmill.store.sqlite import SQLiteStore, Synchronous
from flowmill.store.sqlite._schema import SCHEMA_VERSION
from flowmill.testing import StoreConformance
from flowmill.testing.conformance._util import T0, task
from flowmill.testing.conformance.wake import wait_until_woken


class TestSQLiteStore(StoreConformance):
    @pytest.fixture(params=["file", "memory"])
    async def store(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[SQLiteStore]:
        path = ":memory:" if request.param == "memory" else str(tmp_path / "flowmill.db")
        s = SQLiteStore(path)
        await s.open()
        try:
            yield s
        finally:
            await s.close()


# -- SQLite only ---------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "flowmill.db")


@pytest.fixture
async def opened(db_path: str) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _expect_open_error(path: str, error: type[Exception], match: str) -> None:
    s = SQLiteStore(path)
    with pytest.raises(error, match=match):
        await s.open()
    await s.close()  # closing a store that never opened is harmless


class TestOpen:
    async def test_fresh_file_gets_the_schema(self, opened: SQLiteStore, db_path: str) -> None:
        with closing(sqlite3.connect(db_path)) as conn:
            meta = dict(conn.execute("SELECT key, value FROM fm_meta").fetchall())
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert meta == {"app": "flowmill", "schema_version": str(SCHEMA_VERSION)}
        assert mode == "wal"

    async def test_schema_version_reads_without_creating(self, tmp_path: Path) -> None:
        path = tmp_path / "fresh.db"
        s = SQLiteStore(str(path))
        assert await s.schema_version() is None
        assert not path.exists()
        sqlite3.connect(path).close()  # an empty file: no schema yet
        assert await s.schema_version() is None
        assert path.stat().st_size == 0

    async def test_migrate_before_open_creates_then_reports(self, db_path: str) -> None:
        s = SQLiteStore(db_path)
        assert await s.migrate() == MigrateResult(None, SCHEMA_VERSION)
        assert await s.schema_version() == SCHEMA_VERSION
        assert await s.migrate() == MigrateResult(SCHEMA_VERSION, SCHEMA_VERSION)
        await s.open()
        assert await s.schema_version() == SCHEMA_VERSION
        await s.close()

    async def test_schema_version_refuses_a_foreign_database(self, db_path: str) -> None:
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
            conn.commit()
        with pytest.raises(SchemaError, match="not a flowmill database"):
            await SQLiteStore(db_path).schema_version()

    async def test_capabilities(self, db_path: str) -> None:
        assert SQLiteStore(db_path).capabilities == Capabilities(durable=True, local_file=True)
        memory = SQLiteStore(":memory:")
        assert memory.capabilities == Capabilities(durable=False, local_file=False)
        assert await memory.schema_version() is None
        await memory.open()
        assert await memory.schema_version() == SCHEMA_VERSION
        assert await memory.migrate() == MigrateResult(SCHEMA_VERSION, SCHEMA_VERSION)
        await memory.close()

    async def test_not_a_sqlite_file(self, db_path: str) -> None:
        _write_junk(db_path)
        await _expect_open_error(db_path, SchemaError, "not a usable SQLite database")

    async def test_a_foreign_sqlite_database(self, db_path: str) -> None:
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
            conn.commit()
        await _expect_open_error(db_path, SchemaError, "not a flowmill database.*customers")
        with closing(sqlite3.connect(db_path)) as conn:  # and it was left alone
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        assert tables == ["customers"]

    async def test_a_foreign_fm_meta_table(self, db_path: str) -> None:
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("CREATE TABLE fm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT INTO fm_meta VALUES ('app', 'someone-else')")
            conn.commit()
        await _expect_open_error(db_path, SchemaError, "not a flowmill database")

    async def test_a_garbled_schema_version(self, opened: SQLiteStore, db_path: str) -> None:
        await opened.close()
        _set_meta(db_path, "schema_version", "two")
        await _expect_open_error(db_path, SchemaError, "schema version")

    async def test_a_newer_schema_is_refused(self, opened: SQLiteStore, db_path: str) -> None:
        await opened.tasks_insert(TasksInsert([task()]))
        await opened.close()
        _set_meta(db_path, "schema_version", str(SCHEMA_VERSION + 1))
        await _expect_open_error(db_path, SchemaError, f"version {SCHEMA_VERSION + 1}, newer")
        with closing(sqlite3.connect(db_path)) as conn:  # not downgraded
            version = conn.execute("SELECT value FROM fm_meta WHERE key = 'schema_version'")
            assert version.fetchone()[0] == str(SCHEMA_VERSION + 1)

    async def test_missing_parent_directory(self, tmp_path: Path) -> None:
        path = str(tmp_path / "no" / "such" / "dir" / "flowmill.db")
        await _expect_open_error(path, StoreError, "does not exist")
        assert not (tmp_path / "no").exists()

    async def test_path_is_a_directory(self, tmp_path: Path) -> None:
        await _expect_open_error(str(tmp_path), StoreError, "cannot open")

    async def test_reopen_keeps_the_data(self, db_path: str) -> None:
        first = SQLiteStore(db_path)
        await first.open()
        t = task(payload=b"kept", key="k")
        await first.tasks_insert(TasksInsert([t], now_ms=T0))
        await first.close()
        second = SQLiteStore(db_path)
        await second.open()
        try:
            rec = await second.task_get(t.id)
            assert rec is not None and (rec.payload, rec.state) == (b"kept", State.READY)
            out = await second.tasks_insert(TasksInsert([task(key="k")], now_ms=T0))
            assert out[0].status is InsertStatus.SKIPPED
        finally:
            await second.close()

    async def test_close_and_open_the_same_instance(
        self, opened: SQLiteStore, db_path: str
    ) -> None:
        t = task()
        await opened.tasks_insert(TasksInsert([t], now_ms=T0))
        await opened.wait_for_work(0)
        await opened.close()
        with pytest.raises(StoreError, match="not open"):
            await opened.task_get(t.id)
        await opened.open()
        assert await opened.task_get(t.id) is not None
        await wait_until_woken(
            opened.wait_for_work, lambda: opened.tasks_insert(TasksInsert([task()]))
        )
        other = SQLiteStore(db_path)  # and its wake-ups still reach other stores
        await other.open()
        try:
            await wait_until_woken(
                other.wait_for_work, lambda: opened.tasks_insert(TasksInsert([task()]))
            )
        finally:
            await other.close()

    async def test_open_twice_is_harmless(self, opened: SQLiteStore) -> None:
        await opened.open()
        assert await opened.tasks_count() == []

    async def test_concurrent_first_opens_of_one_file(self, db_path: str) -> None:
        stores = [SQLiteStore(db_path) for _ in range(4)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            await stores[0].tasks_insert(TasksInsert([task()]))
            assert [sum(c.count for c in await s.tasks_count()) for s in stores] == [1] * 4
        finally:
            for s in stores:
                await s.close()

    @pytest.mark.parametrize(("mode", "value"), [("FULL", 2), ("NORMAL", 1)])
    async def test_synchronous(self, db_path: str, mode: Synchronous, value: int) -> None:
        s = SQLiteStore(db_path, synchronous=mode)
        await s.open()
        try:
            await s.tasks_insert(TasksInsert([task()]))
            assert await _pragma(s, "synchronous") == value
            assert await _pragma(s, "journal_mode") == "wal"
        finally:
            await s.close()

    @pytest.mark.parametrize("mode", ["OFF", "normal", "EXTRA", ""])
    def test_invalid_synchronous(self, db_path: str, mode: str) -> None:
        with pytest.raises(StoreError, match="synchronous"):
            SQLiteStore(db_path, synchronous=mode)  # type: ignore[arg-type]

    async def test_memory_stores_are_isolated(self) -> None:
        a, b = SQLiteStore(":memory:"), SQLiteStore(":memory:")
        await a.open()
        await b.open()
        try:
            await a.tasks_insert(TasksInsert([task()]))
            assert await b.tasks_count() == []
            assert a.url == "sqlite://:memory:"
        finally:
            await a.close()
            await b.close()

    async def test_url(self, opened: SQLiteStore, db_path: str) -> None:
        assert opened.url == f"sqlite:///{db_path}"


class TestWriter:
    async def test_a_held_write_lock_is_store_unavailable(self, db_path: str) -> None:
        s = SQLiteStore(db_path, busy_timeout_ms=50)
        await s.open()
        try:
            with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
                other.execute("BEGIN IMMEDIATE")
                with pytest.raises(StoreUnavailable, match="locked"):
                    await s.tasks_insert(TasksInsert([task()]))
                assert await s.tasks_count() == []  # reads still work under WAL
                other.execute("ROLLBACK")
            await s.tasks_insert(TasksInsert([task()]))
            assert sum(c.count for c in await s.tasks_count()) == 1
        finally:
            await s.close()

    async def test_a_failing_job_in_a_group_fails_alone(self, opened: SQLiteStore) -> None:
        good = [task() for _ in range(20)]
        clash = task(id=good[0].id)
        results = await asyncio.gather(
            *(opened.tasks_insert(TasksInsert([t])) for t in [*good, clash]),
            return_exceptions=True,
        )
        assert all(isinstance(r, list) for r in results[:-1])
        assert isinstance(results[-1], StoreError)
        assert sum(c.count for c in await opened.tasks_count()) == 20

    @pytest.mark.parametrize("group", [1, 8])
    async def test_a_job_that_ends_the_transaction_does_not_kill_the_writer(
        self, opened: SQLiteStore, group: int
    ) -> None:
        # Some SQLite errors (SQLITE_FULL, SQLITE_IOERR...) roll the whole transaction back
        # by themselves; the writer must answer every caller and keep going.
        def wreck(conn: sqlite3.Connection, tx: object) -> None:
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error (simulated)")

        jobs = [opened.tasks_insert(TasksInsert([task()])) for _ in range(group - 1)]
        results = await asyncio.wait_for(
            asyncio.gather(opened._write(wreck), *jobs, return_exceptions=True), 10
        )
        assert isinstance(results[0], StoreError)
        stored = sum(c.count for c in await opened.tasks_count())
        ok = [r for r in results[1:] if isinstance(r, list)]
        assert stored == len(ok)  # whoever was told "inserted" really is stored
        await asyncio.wait_for(opened.tasks_insert(TasksInsert([task()])), 10)
        assert sum(c.count for c in await opened.tasks_count()) == stored + 1


class TestSharing:
    async def test_two_stores_on_one_file(self, db_path: str) -> None:
        a, b = SQLiteStore(db_path), SQLiteStore(db_path)
        await a.open()
        await b.open()
        try:
            t = task(key="shared")
            await a.tasks_insert(TasksInsert([t], now_ms=T0))
            rec = await b.task_get(t.id)
            assert rec is not None and rec.state is State.READY
            out = await b.tasks_insert(TasksInsert([task(key="shared")], now_ms=T0))
            assert out[0].id == t.id and out[0].status is InsertStatus.SKIPPED
            (row,) = await b.tasks_claim(TasksClaim("w", ["default"], ["job"], 5, 1000, T0))
            fin = Finish(t.id, row.lease_epoch, State.COMPLETED, result=b"ok")
            await b.tasks_finish(TasksFinish([fin], T0))
            (res,) = await a.results_get([t.id])
            assert res.result == b"ok"
        finally:
            await a.close()
            await b.close()

    async def test_two_stores_never_claim_the_same_task(self, db_path: str) -> None:
        a, b = SQLiteStore(db_path), SQLiteStore(db_path)
        await a.open()
        await b.open()
        try:
            await a.tasks_insert(TasksInsert([task() for _ in range(100)], now_ms=T0))
            claims = [
                s.tasks_claim(TasksClaim(f"w{i}", ["default"], ["job"], 7, 1000, T0))
                for i in range(15)
                for s in (a, b)
            ]
            got = [r.id for rows in await asyncio.gather(*claims) for r in rows]
            assert len(got) == len(set(got)) == 100
        finally:
            await a.close()
            await b.close()

    async def test_a_wake_up_reaches_another_store(self, db_path: str) -> None:
        a, b = SQLiteStore(db_path), SQLiteStore(db_path)
        await a.open()
        await b.open()
        try:
            await wait_until_woken(b.wait_for_work, lambda: a.tasks_insert(TasksInsert([task()])))
            rec = await a.tasks_list(TasksList())
            row = (await a.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 1000)))[0]
            fin = TasksFinish([Finish(row.id, row.lease_epoch, State.COMPLETED)])
            await wait_until_woken(b.wait_for_finish, lambda: a.tasks_finish(fin))
            assert len(rec) == 1
        finally:
            await a.close()
            await b.close()

    async def test_a_waiter_that_just_arrived_is_woken(self, db_path: str) -> None:
        a = SQLiteStore(db_path)
        await a.open()
        await a.wait_for_work(0)
        try:
            for _ in range(3):  # a has just listed its peers when each newcomer binds
                await a.tasks_insert(TasksInsert([task()]))
                b = SQLiteStore(db_path)
                await b.open()
                try:
                    await wait_until_woken(
                        b.wait_for_work, lambda: a.tasks_insert(TasksInsert([task()]))
                    )
                finally:
                    await b.close()
        finally:
            await a.close()

    async def test_a_wake_up_from_another_process(self, opened: SQLiteStore, db_path: str) -> None:
        task_id = "from-the-other-process"

        async def insert_elsewhere() -> None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD,
                db_path,
                task_id,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert out.decode().strip() == "inserted"

        await wait_until_woken(opened.wait_for_work, insert_elsewhere)
        (row,) = await opened.tasks_claim(TasksClaim("w", ["default"], ["job"], 1, 1000))
        assert (row.id, row.payload) == (task_id, b'{"from": "child"}')

    async def test_a_dead_peer_socket_is_removed(self, opened: SQLiteStore, db_path: str) -> None:
        await opened.wait_for_work(0)  # binds this store's socket, creating the directory
        directory = wake_dir_for(db_path)
        dead = os.path.join(directory, "999999999-dead.s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(dead)
        sock.close()  # the file stays, nobody listens: like a process that was killed
        await opened.tasks_insert(TasksInsert([task()]))
        assert not _exists(dead)


_CHILD = """
import asyncio, sys
from flowmill.store.sqlite import SQLiteStore
from flowmill.store.contract.tasks import NewTask, TasksInsert

async def main() -> None:
    store = SQLiteStore(sys.argv[1])
    await store.open()
    try:
        payload = b'{"from": "child"}'
        await store.tasks_insert(TasksInsert([NewTask(sys.argv[2], "job", payload)]))
    finally:
        await store.close()
    print("inserted")

asyncio.run(main())
"""


def _write_junk(path: str) -> None:
    Path(path).write_bytes(b"this is not a database, just some text\n" * 200)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _set_meta(path: str, key: str, value: str) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE fm_meta SET value = ? WHERE key = ?", (value, key))
        conn.commit()


async def _pragma(store: SQLiteStore, name: str) -> object:
    """A pragma as the store's writer connection sees it."""
    value: object = await store._write(
        lambda conn, tx: conn.execute(f"PRAGMA {name}").fetchone()[0]
    )
    return value


class TestListWindow:
    """A filtered `tasks_list` reads a window in seq order, then the index for the rest."""

    @pytest.mark.parametrize("window", [1, 3, 7, 100])
    async def test_every_window_gives_the_same_pages(
        self, opened: SQLiteStore, monkeypatch: pytest.MonkeyPatch, window: int
    ) -> None:
        from flowmill.store.sqlite import _reads

        rows = [
            task(kind="a" if i % 4 == 0 else "b", queue=f"q{i % 2}", key=f"k-{i % 3}-{i}")
            for i in range(30)
        ]
        ids = [o.id for o in await opened.tasks_insert(TasksInsert(rows))]
        monkeypatch.setattr(_reads, "LIST_WINDOW", window)
        for p, want in [
            (TasksList(kind="a"), [ids[i] for i in range(30) if i % 4 == 0]),
            (TasksList(kind="b", queue="q1"), [ids[i] for i in range(30) if i % 2 == 1]),
            (TasksList(text="k-2-"), [ids[i] for i in range(30) if i % 3 == 2]),
            (TasksList(states=[State.READY]), ids),
            (TasksList(states=[State.READY], queue="q1"), [ids[i] for i in range(30) if i % 2]),
            (TasksList(kind="nope"), []),
        ]:
            for limit in (1, 4, 50):
                seen: list[str] = []
                after: str | None = None
                while page := await opened.tasks_list(
                    TasksList(p.states, p.queue, p.kind, limit, after, text=p.text)
                ):
                    assert len(page) <= limit
                    seen.extend(r.id for r in page)
                    after = page[-1].id
                assert seen == want, (p, limit)
