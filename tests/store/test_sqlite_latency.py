"""The SQLite store's round-trip path: no wait on it but the commits' own.

A result read arms the finish wake-ups (no second read), runs on the caller's loop when the
reader is idle (no thread hops), a write waits for another process's lock in short steps
(not SQLite's 1, 2, 5 ms ladder), and a wake-up reaches other processes before this one's
loop is woken.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from flowmill._states import State
from flowmill.store._common import wake as _wake
from flowmill.store.contract.tasks import InsertStatus, TasksInsert
from flowmill.store.sqlite import SQLiteStore, _threads
from flowmill.store.sqlite import _store as sqlite_store
from flowmill.testing.conformance._util import T0, claim_one, finish, task


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "flowmill.db"), busy_timeout_ms=5_000)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _running(store: SQLiteStore) -> tuple[str, int]:
    (out,) = await store.tasks_insert(TasksInsert([task()], "skip", T0))
    row = await claim_one(store)
    assert row.id == out.id
    return row.id, row.lease_epoch


async def test_the_wait_after_results_get_blocks_until_a_finish(store: SQLiteStore) -> None:
    task_id, epoch = await _running(store)
    reads: list[list[str]] = []
    real = store.results_get

    async def counting(ids: Any) -> Any:
        reads.append(list(ids))
        return await real(ids)

    async def waiter() -> None:
        assert await counting([task_id]) == []
        await store.wait_for_finish(30)

    w = asyncio.ensure_future(waiter())
    for _ in range(200):  # let it reach its wait
        await asyncio.sleep(0)
    assert not w.done()  # a first wait that was not armed would have answered at once
    await finish(store, task_id, epoch, State.COMPLETED)
    await asyncio.wait_for(w, 10)
    assert reads == [[task_id]]
    (row,) = await store.results_get([task_id])
    assert row.state is State.COMPLETED


async def test_a_finish_between_the_read_and_the_wait_wakes_it(store: SQLiteStore) -> None:
    task_id, epoch = await _running(store)

    async def waiter() -> None:
        assert await store.results_get([task_id]) == []
        await finish(store, task_id, epoch, State.COMPLETED)  # before the wait starts
        await store.wait_for_finish(30)

    await asyncio.wait_for(waiter(), 10)


async def test_a_small_result_read_runs_on_the_callers_thread_when_the_reader_is_idle(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id, epoch = await _running(store)
    await finish(store, task_id, epoch, State.COMPLETED)
    threads: list[int] = []
    real = sqlite_store.results_get

    def recording(c: sqlite3.Connection, ids: list[str]) -> Any:
        threads.append(threading.get_ident())
        return real(c, ids)

    monkeypatch.setattr(sqlite_store, "results_get", recording)
    (row,) = await store.results_get([task_id])
    assert row.state is State.COMPLETED
    assert threads == [threading.get_ident()]

    # While the reader thread holds its connection, the read queues for that thread.
    reader = store._reader
    assert reader is not None
    reader._conn_lock.acquire()
    try:
        pending = asyncio.ensure_future(store.results_get([task_id]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not pending.done()
    finally:
        reader._conn_lock.release()
    (row,) = await asyncio.wait_for(pending, 10)
    assert row.state is State.COMPLETED
    assert len(threads) == 2 and threads[1] != threading.get_ident()


async def test_a_write_waits_for_another_process_in_short_steps(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer polls the lock after pauses from 50 us up to 1 ms (SQLite's own busy
    handler would sleep 1 ms, then 2, then 5 ...); the other writer commits during them."""
    await store.tasks_insert(TasksInsert([task()], "skip", T0))
    pauses: list[float] = []
    with closing(
        sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    ) as other:
        other.execute("BEGIN IMMEDIATE")  # the write lock, held by "another process"

        def pause(seconds: float) -> None:
            pauses.append(seconds)
            if len(pauses) == 8:
                other.execute("COMMIT")  # that process ends its commit

        monkeypatch.setattr(_threads.time, "sleep", pause)
        # Big enough for the writer thread: no inline attempt on this loop.
        outs = await asyncio.wait_for(
            store.tasks_insert(TasksInsert([task() for _ in range(20)], "skip", T0)), 10
        )
    assert [o.status for o in outs] == [InsertStatus.INSERTED] * 20
    assert len(pauses) == 8
    assert pauses[0] == pytest.approx(0.00005)
    assert max(pauses) <= 0.001


async def test_a_write_still_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    s = SQLiteStore(str(tmp_path / "flowmill.db"), busy_timeout_ms=50)
    await s.open()
    try:
        with closing(sqlite3.connect(s.path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(Exception, match="locked"):
                await asyncio.wait_for(
                    s.tasks_insert(TasksInsert([task() for _ in range(20)], "skip", T0)), 10
                )
            other.execute("ROLLBACK")
    finally:
        await s.close()


async def test_other_processes_get_the_wake_up_before_this_loop_is_woken(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short folder of its own: socket paths are capped at 108 bytes, and CI's basetemp
    # is longer than that.
    short = tempfile.mkdtemp(prefix="fmw-", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    directory = os.path.join(short, "wake")
    bus = _wake.WakeBus(directory)
    loop = asyncio.get_running_loop()
    bus.listen(loop)
    assert bus._sock is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(os.path.join(directory, "peer.s"))
        peer.setblocking(False)
        seen: list[bool] = []
        real = loop.call_soon_threadsafe

        def recording(callback: Any, *args: Any, **kw: Any) -> Any:
            try:
                seen.append(peer.recv(8, socket.MSG_PEEK) == _wake.FINISH)
            except BlockingIOError:
                seen.append(False)
            return real(callback, *args, **kw)

        monkeypatch.setattr(loop, "call_soon_threadsafe", recording)
        try:
            bus.notify(_wake.FINISH)
        finally:
            monkeypatch.undo()
            bus.close()
        assert seen == [True]
        assert peer.recv(8) == _wake.FINISH


async def test_a_claim_and_a_finish_commit_inline_only_on_an_idle_loop(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[tuple[str, int]] = []
    for name in ("tasks_claim", "tasks_finish"):
        real = getattr(sqlite_store, name)

        def recording(*a: Any, _name: str = name, _real: Any = real) -> Any:
            threads.append((_name, threading.get_ident()))
            return _real(*a)

        monkeypatch.setattr(sqlite_store, name, recording)
    here = threading.get_ident()

    # Nothing else to run on this loop: both commit here, without a hop to the writer.
    task_id, epoch = await _running(store)
    await finish(store, task_id, epoch, State.COMPLETED)
    assert threads == [("tasks_claim", here), ("tasks_finish", here)]

    # Another task keeps the loop busy: the commits go to the writer thread, so that they
    # do not stall it.
    threads.clear()
    done = False

    async def spinner() -> None:
        while not done:
            await asyncio.sleep(0)

    spin = asyncio.ensure_future(spinner())
    try:
        task_id, epoch = await _running(store)
        await finish(store, task_id, epoch, State.COMPLETED)
    finally:
        done = True
        await spin
    assert [name for name, _ in threads] == ["tasks_claim", "tasks_finish"]
    assert all(ident != here for _, ident in threads)


async def test_a_write_runs_no_statement_but_its_own(store: SQLiteStore) -> None:
    """No busy_timeout toggling around BEGIN: the writer's connection keeps SQLite's busy
    timeout at 0 and waits for other processes itself."""
    writer = store._writer
    assert writer is not None and writer._conn is not None
    statements: list[str] = []
    writer._conn.set_trace_callback(statements.append)
    try:
        task_id, epoch = await _running(store)
        await finish(store, task_id, epoch, State.COMPLETED)
    finally:
        writer._conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 3
    assert statements.count("COMMIT") == 3
    assert not [s for s in statements if s.upper().startswith("PRAGMA")]


async def test_a_socket_that_cannot_be_bound_is_closed_and_waits_fall_back_to_polling(
    tmp_path: Path,
) -> None:
    directory = str(tmp_path / ("d" * 120))  # over the 108-byte cap of a socket path
    opened: list[socket.socket] = []
    real = socket.socket

    def recording(*a: Any, **kw: Any) -> socket.socket:
        sock = real(*a, **kw)
        opened.append(sock)
        return sock

    bus = _wake.WakeBus(directory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", recording)
        bus.listen(asyncio.get_running_loop())
    assert bus._sock is None
    assert opened and all(s.fileno() == -1 for s in opened)
    bus.close()
