"""The SQLite writer's inline path: small inserts commit on the caller's loop when it is idle."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from flowmill.store.contract.tasks import InsertStatus, TasksInsert, TasksList
from flowmill.store.sqlite import SQLiteStore
from flowmill.store.sqlite._threads import ConnectionThread
from flowmill.testing.conformance._util import task


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "flowmill.db"), busy_timeout_ms=10_000)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_concurrent_inserts_on_one_loop_share_one_commit(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[int] = []
    run_group = ConnectionThread._run_group

    def counting(self: ConnectionThread, conn: sqlite3.Connection, group: Any, **kw: Any) -> None:
        groups.append(len(group))
        run_group(self, conn, group, **kw)

    monkeypatch.setattr(ConnectionThread, "_run_group", counting)
    outs = await asyncio.gather(*(store.tasks_insert(TasksInsert([task()])) for _ in range(32)))
    assert [o.status for [o] in outs] == [InsertStatus.INSERTED] * 32
    assert groups == [32]
    assert len(await store.tasks_list(TasksList(limit=100))) == 32


async def test_an_insert_waits_off_the_loop_while_another_process_writes(
    store: SQLiteStore,
) -> None:
    await store.tasks_insert(TasksInsert([task()]))
    with closing(sqlite3.connect(store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # the write lock, held by "another process"
        pending = asyncio.create_task(store.tasks_insert(TasksInsert([task()])))
        # The loop keeps running while the insert waits for the lock on the writer thread.
        started = time.monotonic()
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 2.0
        assert not pending.done()
        other.execute("COMMIT")
    [out] = await asyncio.wait_for(pending, 10)
    assert out.status is InsertStatus.INSERTED
    assert len(await store.tasks_list(TasksList(limit=10))) == 2


async def test_a_failed_insert_alone_in_its_group_leaves_nothing_behind(
    store: SQLiteStore,
) -> None:
    first = task()
    await store.tasks_insert(TasksInsert([first]))
    again = task()
    # The same task id twice in one batch violates the primary key: the whole job fails.
    with pytest.raises(Exception, match="UNIQUE"):
        await store.tasks_insert(TasksInsert([again, again]))
    [out] = await store.tasks_insert(TasksInsert([task()]))
    assert out.status is InsertStatus.INSERTED
    assert len(await store.tasks_list(TasksList(limit=10))) == 2


async def test_a_lone_insert_on_an_idle_loop_commits_before_it_yields(
    store: SQLiteStore,
) -> None:
    await store.tasks_insert(TasksInsert([task()]))
    await asyncio.sleep(0)  # nothing of this test's own left to run on the loop
    pending = store.tasks_insert(TasksInsert([task()]))
    # One step of the coroutine runs it to its end: committed without a loop iteration.
    with pytest.raises(StopIteration) as done:
        pending.send(None)
    [outcome] = done.value.value
    assert outcome.status is InsertStatus.INSERTED
    assert len(await store.tasks_list(TasksList(limit=10))) == 2


async def test_a_loop_that_submits_one_by_one_still_runs_its_timers(store: SQLiteStore) -> None:
    fired: list[bool] = []
    asyncio.get_running_loop().call_later(0, fired.append, True)
    submits = 0
    while not fired:
        await store.tasks_insert(TasksInsert([task()]))
        submits += 1
        # A coroutine that never yields would starve the timer forever: it yields after
        # a few commits made at once (`_threads._MAX_NOW_STREAK`).
        assert submits <= 16
