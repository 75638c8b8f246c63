"""What one submit writes on SQLite: its task row is its creation event (migration 0007).

A submit's commit holds the task row and its index entries only: no fm_events row, no
AUTOINCREMENT counter, no events index entry. The event log still reads the creation
event, in commit order with every other event, and retention never lets an id be handed
out twice.
"""

from __future__ import annotations

import sqlite3
import struct
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from flowmill._states import State
from flowmill.store.contract.admin import TasksPurge
from flowmill.store.contract.tasks import EventsRead, TasksInsert
from flowmill.store.sqlite import SQLiteStore
from flowmill.store.sqlite import _schema as sqlite_schema
from flowmill.testing.conformance._util import (
    T0,
    add,
    all_events,
    claim_one,
    finish,
    make_state,
    task,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "flowmill.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _on_writer(store: SQLiteStore, fn: Any) -> Any:
    assert store._writer is not None
    return await store._writer.run(lambda c, tx: fn(c))


async def test_a_submit_writes_its_task_row_and_no_event_row(store: SQLiteStore) -> None:
    traced: list[str] = []
    await _on_writer(store, lambda c: c.set_trace_callback(traced.append))
    await store.tasks_insert(TasksInsert([task()]))
    await _on_writer(store, lambda c: c.set_trace_callback(None))
    # Between the setup job's COMMIT and the next job's BEGIN: BEGIN IMMEDIATE, the INSERT
    # (traced again as it enters the tags trigger), COMMIT.
    submit = traced[1:-1]
    assert [" ".join(s.split()[:3]) for s in submit] == [
        "BEGIN IMMEDIATE",
        "INSERT INTO fm_tasks",
        "INSERT INTO fm_tasks",
        "COMMIT",
    ]
    assert not any("INTO fm_events" in s for s in submit)
    with closing(sqlite3.connect(store.path)) as conn:
        assert conn.execute("SELECT count(*) FROM fm_events").fetchone() == (0,)
    assert [e.state for e in await all_events(store)] == [State.READY]


def _wal_frames_by_btree(path: str) -> Counter[str]:
    """The WAL's frames counted by the B-tree their page belongs to."""
    with open(path + "-wal", "rb") as f:
        data = f.read()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages: Counter[int] = Counter()
    for off in range(32, len(data) - 24, 24 + page_size):
        pages[struct.unpack(">I", data[off : off + 4])[0]] += 1
    with closing(sqlite3.connect(path)) as conn:
        names = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    out: Counter[str] = Counter()
    for page, n in pages.items():
        out[names.get(page, "?")] += n
    return out


async def test_one_by_one_submits_write_the_task_pages_only(store: SQLiteStore) -> None:
    for _ in range(50):  # past the first page splits
        await store.tasks_insert(TasksInsert([task()]))

    def checkpoint_off(c: sqlite3.Connection) -> None:
        c.execute("PRAGMA wal_autocheckpoint = 0")

    await _on_writer(store, checkpoint_off)
    with closing(sqlite3.connect(store.path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    n = 300
    for _ in range(n):
        await store.tasks_insert(TasksInsert([task()]))
    frames = _wal_frames_by_btree(store.path)
    # The task row, its id, ready and state index entries, and their page splits: the
    # event table, its index and sqlite_sequence (7.7 frames a submit before) are not
    # written at all.
    assert not {"fm_events", "fm_events_task_seq", "sqlite_sequence"} & set(frames)
    assert sum(frames.values()) / n < 5.0, frames


async def test_the_creation_event_is_read_in_commit_order(store: SQLiteStore) -> None:
    first = await add(store)
    row = await claim_one(store)
    second = await add(store, now=T0 + 1, delay_ms=1_000)
    await finish(store, first, row.lease_epoch, State.COMPLETED, now=T0 + 2, result=b"1")
    events = await all_events(store)
    assert [(e.task_id, e.state, e.at_ms, e.detail) for e in events] == [
        (first, State.READY, T0, None),
        (first, State.RUNNING, T0, "worker-1"),
        (second, State.SCHEDULED, T0 + 1, None),
        (first, State.COMPLETED, T0 + 2, None),
    ]
    assert [e.id for e in events] == sorted({e.id for e in events})
    after_first = await store.events_read(EventsRead(after=events[0].id, limit=2))
    assert after_first == events[1:3]


async def test_a_purged_newest_task_never_gives_its_ids_again(store: SQLiteStore) -> None:
    await add(store)
    newest = await make_state(store, State.COMPLETED, kind="other")
    seen = await all_events(store)
    assert seen[-1].task_id == newest
    assert await store.tasks_purge(TasksPurge(T0 + 1, (State.COMPLETED,))) == 1
    later = await add(store, now=T0 + 5)
    # A reader that had read up to the purged task's last event still sees the new one.
    assert [e.task_id for e in await store.events_read(EventsRead(after=seen[-1].id))] == [later]


async def test_migration_0007_keeps_the_stored_events_and_numbers_above_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "old.db")
    full = sqlite_schema.MIGRATIONS
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full[:6])
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", 6)
    await SQLiteStore(path).migrate()
    kept, gone = "0190a000-0000-7000-8000-0000000000b1", "0190a000-0000-7000-8000-0000000000b2"
    with closing(sqlite3.connect(path)) as conn, conn:
        for task_id in (kept, gone):
            conn.execute(
                "INSERT INTO fm_tasks (id, kind, queue, state, payload, max_attempts, "
                "retry_policy, created_at, updated_at) "
                "VALUES (?, 'k', 'default', 'ready', x'6e756c6c', 3, x'7b7d', 1, 1)",
                (task_id,),
            )
            conn.execute(
                "INSERT INTO fm_events (task_id, task_seq, kind, state, at) "
                "SELECT id, seq, kind, state, created_at FROM fm_tasks WHERE id = ?",
                (task_id,),
            )
        # The newest events were deleted (retention): AUTOINCREMENT never reused their ids.
        top = conn.execute("SELECT max(id) FROM fm_events").fetchone()[0]
        conn.execute("DELETE FROM fm_events WHERE task_id = ?", (gone,))
        conn.execute("DELETE FROM fm_tasks WHERE id = ?", (gone,))
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", full)
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", len(full))
    store = SQLiteStore(path)
    await store.open()
    try:
        new = await add(store)
        events = await all_events(store)
        assert [(e.task_id, e.state) for e in events] == [
            (kept, State.READY),
            (new, State.READY),
        ]
        assert events[1].id > top
    finally:
        await store.close()
