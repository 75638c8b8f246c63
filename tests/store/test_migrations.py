"""Migrations are frozen, numbered files, numbered alike on every backend.

A released migration never changes: a schema change is a new file. When one is released,
add its checksum below; a test here fails if any listed file changes or a file is not
listed, so changing a released migration cannot go unnoticed.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from contextlib import closing
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from flowmill._states import State
from flowmill.store._common.migrations import load
from flowmill.store.contract import MigrateResult
from flowmill.store.contract.admin import TasksPurge
from flowmill.store.contract.tasks import EventsRead, TasksInsert, TasksList
from flowmill.store.postgres import PostgresStore
from flowmill.store.postgres import _schema as postgres_schema
from flowmill.store.sqlite import SQLiteStore
from flowmill.store.sqlite import _schema as sqlite_schema
from flowmill.testing.conformance._util import task

from ._pg_store_fixtures import pg_url, schema

__all__ = ["pg_url", "schema"]  # fixtures, used by name

# backend package -> {file name: sha256 of its bytes}. Append; never edit a line.
CHECKSUMS: dict[str, dict[str, str]] = {
    "flowmill.store.sqlite": {
        "0001_initial.sql": "91b500d661bbdc3dcbe3288380842579e8709dfc23588d181baae812d014cc82",
        "0002_schedules.sql": "404e2925dec1e9c35ac57718c98c312deb5884004d20d02ddcf7f095ed0b9d46",
        "0003_operations.sql": "9aabf009107318c7baa79a702162f1eb3f8cfb1b9a96ce9bc2d8460b639203c0",
        "0004_lease_start_clock.sql": (
            "530780c5b4aad04be9426be01f63c3da3466b617d5e4aac7fbb54d06c283d2b8"
        ),
        "0005_list_filters.sql": "cd657ae7528034d0269d5d4a6f3d890353f267a5582c3f7afb858c34868bf14d",
        "0006_events_by_seq.sql": (
            "3cf62c4662a19ef5eabc87ba7d11ce2da5e275f351cb7b1e68a9a368269b87f1"
        ),
        "0007_creation_events.sql": (
            "72bac3e5ee935db9d3f61980a34e8452c6445e2725b43606aaefb6373f0adfda"
        ),
    },
    "flowmill.store.postgres": {
        "0001_initial.sql": "e4ee1a77c10fec53b1f205c371616de86699a2708d25f2462f7c2846ed2dcb26",
        "0002_schedules.sql": "608370f6d5168a2810eb481a65adff3c8fe3d405b24b91df16042996a96933fe",
        "0003_operations.sql": "9f86f584b13f11fb1005581d12a0c1d8a423a9afbc3ab736587c78b1fe30565a",
        "0004_lease_start_clock.sql": (
            "2f7ccef46fe548a34f78ba5899482ae2b987810c96da16254dbbf2d55155d61f"
        ),
        "0005_list_filters.sql": "a7480a8265d0a034ebf744c336aebcf320550c906c3c7e1514d1de1c381250e2",
        "0006_events_by_seq.sql": (
            "a1f34b03df4fa3a643831f0ba00b96fe17a3eca8a374f7491cc6ed5cae58bed3"
        ),
        "0007_creation_events.sql": (
            "781d0692ba8440a80f66021cfd34877d909ecd70bdac2fd248343ff1621fc721"
        ),
    },
}

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def _files(package: str) -> dict[str, bytes]:
    folder = files(package).joinpath("migrations")
    return {f.name: f.read_bytes() for f in folder.iterdir() if f.name.endswith(".sql")}


@pytest.mark.parametrize("package", sorted(CHECKSUMS))
def test_released_migrations_are_unchanged(package: str) -> None:
    found = _files(package)
    assert sorted(found) == sorted(CHECKSUMS[package]), "add a new migration's checksum here"
    for name, data in found.items():
        assert hashlib.sha256(data).hexdigest() == CHECKSUMS[package][name], (
            f"{package} migration {name} changed: a released migration is frozen, "
            "write a new one instead"
        )


@pytest.mark.parametrize("package", sorted(CHECKSUMS))
def test_numbering_is_contiguous_from_one(package: str) -> None:
    names = sorted(_files(package))
    assert all(_NAME.match(n) for n in names), names
    assert [int(n[:4]) for n in names] == list(range(1, len(names) + 1))
    assert [m.version for m in load(package)] == list(range(1, len(names) + 1))


def test_numbering_is_aligned_across_backends() -> None:
    by_backend = {p: sorted(_files(p)) for p in CHECKSUMS}
    first, *rest = by_backend.values()
    for names in rest:
        assert names == first, by_backend


def test_the_schema_version_is_the_number_of_migrations() -> None:
    assert len(_files("flowmill.store.sqlite")) == sqlite_schema.SCHEMA_VERSION
    assert len(_files("flowmill.store.postgres")) == postgres_schema.SCHEMA_VERSION


def test_a_gap_in_the_numbering_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fake_backend"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "migrations" / "0001_initial.sql").write_text("SELECT 1;")
    (package / "migrations" / "0003_later.sql").write_text("SELECT 3;")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match=r"not numbered 1\.\.n"):
        load("fake_backend")


async def test_an_older_sqlite_database_is_upgraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "old.db")
    current = sqlite_schema.SCHEMA_VERSION
    assert await SQLiteStore(path).migrate() == MigrateResult(None, current)
    # A release that adds migration current + 1: the file at `current` is brought up to it.
    newer = (*sqlite_schema.MIGRATIONS, "CREATE TABLE fm_probe (x INTEGER);")
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", newer)
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", current + 1)
    store = SQLiteStore(path)
    assert await store.schema_version() == current
    assert await store.migrate() == MigrateResult(current, current + 1)
    assert await store.schema_version() == current + 1
    with closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "fm_probe" in tables


@pytest.mark.postgres
async def test_an_older_postgres_schema_is_upgraded(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = postgres_schema.SCHEMA_VERSION
    assert await PostgresStore(pg_url, schema=schema).migrate() == MigrateResult(None, current)
    newer = (*postgres_schema.MIGRATIONS, "CREATE TABLE {s}.probe (x integer);")
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", newer)
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", current + 1)
    store = PostgresStore(pg_url, schema=schema)
    assert await store.schema_version() == current
    assert await store.migrate() == MigrateResult(current, current + 1)
    assert await store.schema_version() == current + 1
    await store.open()
    try:
        assert await store.meta_get_or_set("probe", "x") == "x"
    finally:
        await store.close()


async def _tagged_before_0005(store: Any) -> list[str]:
    await store.open()
    try:
        rows = [task(tags={"team": "blue"}), task(), task(tags={"team": "red"}, key="ord-1")]
        return [o.id for o in await store.tasks_insert(TasksInsert(rows))]
    finally:
        await store.close()


async def _filters_after_0005(store: Any, ids: list[str]) -> None:
    await store.open()
    try:
        tagged = await store.tasks_list(TasksList(tag_key="team"))
        assert [r.id for r in tagged] == [ids[0], ids[2]]  # migration 0005 filled its index
        red = await store.tasks_list(TasksList(tag_key="team", tag_value="red"))
        assert [r.id for r in red] == [ids[2]]
        assert [r.id for r in await store.tasks_list(TasksList(text="ord-"))] == [ids[2]]
    finally:
        await store.close()


async def test_migration_0005_indexes_the_tags_already_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "old.db")
    full = sqlite_schema.MIGRATIONS
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full[:4])
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 4)
    await SQLiteStore(path).migrate()
    # Today's code writes columns of later migrations: the old rows go in as raw SQL.
    ids = ["0190a000-0000-7000-8000-00000000000" + str(i) for i in range(3)]
    with closing(sqlite3.connect(path)) as conn, conn:
        for i, tags, key in (
            (0, '{"team": "blue"}', None),
            (1, None, None),
            (2, '{"team": "red"}', "ord-1"),
        ):
            _raw_task(conn, ids[i], "ready", tags=tags, key=key)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "fm_tasks" in tables and "fm_task_tags" not in tables
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full)
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", len(full))
    await _filters_after_0005(SQLiteStore(path), ids)


@pytest.mark.postgres
async def test_migration_0005_indexes_the_tags_already_stored_on_postgres(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = postgres_schema.MIGRATIONS
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", full[:4])
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", 4)
    ids = await _tagged_before_0005(PostgresStore(pg_url, schema=schema))
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", full)
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", len(full))
    await _filters_after_0005(PostgresStore(pg_url, schema=schema), ids)


# Rows whose tags are not a JSON object, as a tool outside flowmill could leave them: the
# tag index skips them, and neither the migration, a re-tag nor a purge fails on them.
CORRUPT_TAGS = ["{", "[1, 2]", "42"]


async def test_migration_0005_and_its_triggers_pass_over_corrupt_tags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "old.db")
    full = sqlite_schema.MIGRATIONS
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full[:4])
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 4)
    await SQLiteStore(path).migrate()
    # Today's code writes columns of later migrations: the old rows go in as raw SQL.
    bad = [f"0190a000-0000-7000-8000-0000000000b{i}" for i in range(3)]
    good = "0190a000-0000-7000-8000-0000000000c0"
    with closing(sqlite3.connect(path)) as conn:
        for task_id in bad:
            _raw_task(conn, task_id, "ready")
        _raw_task(conn, good, "ready", tags='{"team": "blue"}')
        for task_id, tags in zip(bad, CORRUPT_TAGS, strict=True):
            conn.execute("UPDATE fm_tasks SET tags = ? WHERE id = ?", (tags, task_id))
        conn.commit()
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full)
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", len(full))
    store = SQLiteStore(path)
    await store.open()  # migrates
    try:
        assert [r.id for r in await store.tasks_list(TasksList(tag_key="team"))] == [good]
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute('UPDATE fm_tasks SET tags = \'{"x": "1"}\' WHERE id = ?', (bad[0],))
        conn.execute("UPDATE fm_tasks SET tags = '{' WHERE id = ?", (good,))
        conn.execute(f"DELETE FROM fm_tasks WHERE id IN ({','.join('?' * 3)})", bad)
        conn.commit()
        assert conn.execute("SELECT count(*) FROM fm_task_tags").fetchone() == (0,)


@pytest.mark.postgres
async def test_migration_0005_and_its_triggers_pass_over_corrupt_tags_on_postgres(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    full = postgres_schema.MIGRATIONS
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", full[:4])
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", 4)
    store = PostgresStore(pg_url, schema=schema)
    await store.open()
    try:
        bad = [o.id for o in await store.tasks_insert(TasksInsert([task() for _ in range(3)]))]
        good = (await store.tasks_insert(TasksInsert([task(tags={"team": "blue"})])))[0].id
    finally:
        await store.close()
    tasks = f'"{schema}".tasks'
    with psycopg.connect(pg_url.split("?", 1)[0], autocommit=True) as conn:
        for task_id, tags in zip(bad, CORRUPT_TAGS, strict=True):
            conn.execute(f"UPDATE {tasks} SET tags = %s WHERE id = %s", (tags, task_id))
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", full)
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", len(full))
    store = PostgresStore(pg_url, schema=schema)
    await store.open()  # migrates
    try:
        assert [r.id for r in await store.tasks_list(TasksList(tag_key="team"))] == [good]
    finally:
        await store.close()
    with psycopg.connect(pg_url.split("?", 1)[0], autocommit=True) as conn:
        conn.execute(f'UPDATE {tasks} SET tags = \'{{"x": "1"}}\' WHERE id = %s', (bad[0],))
        conn.execute(f"UPDATE {tasks} SET tags = '{{' WHERE id = %s", (good,))
        conn.execute(f"DELETE FROM {tasks} WHERE id = ANY(%s)", (bad,))
        (left,) = conn.execute(f'SELECT count(*) FROM "{schema}".task_tags').fetchone() or (None,)
        assert left == 0


def _raw_task(
    conn: sqlite3.Connection,
    task_id: str,
    state: str,
    *,
    tags: str | None = None,
    key: str | None = None,
    finished_at: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO fm_tasks (id, kind, queue, state, payload, max_attempts, retry_policy, "
        "created_at, updated_at, tags, dedup_key, finished_at) "
        "VALUES (?, 'k', 'default', ?, x'6e756c6c', 3, x'7b7d', 1, 1, ?, ?, ?)",
        (task_id, state, tags, key, finished_at),
    )


async def test_migration_0006_finds_the_events_already_stored_by_task_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "old.db")
    full = sqlite_schema.MIGRATIONS
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full[:5])
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 5)
    await SQLiteStore(path).migrate()
    old, kept = "0190a000-0000-7000-8000-0000000000a1", "0190a000-0000-7000-8000-0000000000a2"
    with closing(sqlite3.connect(path)) as conn, conn:
        _raw_task(conn, old, "completed", finished_at=10)
        _raw_task(conn, kept, "ready")
        for task_id, state in ((old, "ready"), (kept, "ready"), (old, "completed")):
            conn.execute(
                "INSERT INTO fm_events (task_id, kind, state, at) VALUES (?, 'k', ?, 1)",
                (task_id, state),
            )
        conn.execute(  # an event whose task is gone: it keeps a NULL seq, and stays
            "INSERT INTO fm_events (task_id, kind, state, at) VALUES ('gone', 'k', 'ready', 1)"
        )
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full)
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", len(full))
    store = SQLiteStore(path)
    await store.open()
    try:
        with closing(sqlite3.connect(path)) as conn:
            seqs = dict(conn.execute("SELECT id, seq FROM fm_tasks").fetchall())
            backfilled = conn.execute("SELECT task_id, task_seq FROM fm_events ORDER BY id")
            assert backfilled.fetchall() == [
                (old, seqs[old]),
                (kept, seqs[kept]),
                (old, seqs[old]),
                ("gone", None),
            ]
            indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "fm_events_task_seq" in indexes and "fm_events_task" not in indexes
        assert await store.tasks_purge(TasksPurge(100, (State.COMPLETED,))) == 1
        events = await store.events_read(EventsRead())
        assert [(e.task_id, e.state) for e in events] == [
            (kept, State.READY),
            ("gone", State.READY),
        ]
    finally:
        await store.close()
