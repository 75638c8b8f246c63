"""Processes die: kill -9 loops, a database restart, SIGKILL mid-write, stopped zombies."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

import flowmill as fm
from tests.crash import _crash_app, _private_pg
from tests.crash.test_crash import ledger_count, spawn, wait_for, worker_process
from tests.crash.test_pg_restart import _submit_acknowledged, server

from . import _ledger

pytestmark = pytest.mark.chaos

__all__ = ["server"]  # the private PostgreSQL fixture, used by name

SIZES = [
    pytest.param({"tasks": 300, "kills": 5}, id="short"),
    pytest.param({"tasks": 2000, "kills": 22}, id="long", marks=pytest.mark.long),
]
IN_FLIGHT_PER_WORKER = 16  # _crash_app's worker: concurrency 8 and prefetch 8


async def _outcome(app: fm.App, ids: list[str], ledger: _ledger.Ledger) -> None:
    rows = []
    for i in range(0, len(ids), 500):
        rows += await app.store.results_get(ids[i : i + 500])
    ledger.completed = sum(1 for r in rows if r.state is fm.State.COMPLETED)
    ledger.lost = len(ids) - ledger.completed


def _stop_outside_a_write(proc: subprocess.Popen[str], *files: str) -> None:
    """SIGSTOP `proc` at a moment it holds no lock on any of the SQLite `files`.

    A process stopped inside a write transaction blocks every other writer of that file
    until it resumes: SQLite's own locking, which no lease can fence (the limit is in
    docs/explanation/leases-and-fencing.md). The scenario here is a zombie with tasks in
    flight, so the stop is retried until each file takes a write: flowmill's database
    and the test's own ledger, which the handlers write to.
    """
    for _ in range(200):
        proc.send_signal(signal.SIGSTOP)
        if all(_writable(path) for path in files):
            return
        proc.send_signal(signal.SIGCONT)  # stopped mid-write: let it finish, try again
        time.sleep(0.01)
    raise AssertionError("the zombie was inside a write at every one of 200 stops")


def _writable(path: str) -> bool:
    # EXCLUSIVE, not IMMEDIATE: in rollback-journal mode (the ledger) a stopped reader's
    # shared lock blocks every commit too, and only an exclusive lock sees it.
    probe = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        probe.execute("BEGIN EXCLUSIVE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


@pytest.mark.parametrize("size", SIZES)
async def test_kill9_loop(
    tmp_path: Path, db_url: str, rng: random.Random, seed: int, size: dict[str, int]
) -> None:
    n, kills = size["tasks"], size["kills"]
    book = _ledger.start("kill9_loop", db_url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    app = _crash_app.build(db_url, str(effects))
    ids = [h.id for h in await app.submit_many("effect", range(n))]
    book.tasks = n
    step = max(1, n // (kills + 1))
    for _ in range(kills):
        done = ledger_count(effects, "SELECT count(*) FROM effects")
        goal = min(n, done + rng.randint(1, step))
        with worker_process(db_url, effects, until_idle=False) as proc:
            wait_for(
                lambda goal=goal: ledger_count(effects, "SELECT count(*) FROM effects") >= goal,
                what="progress before the kill",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            book.kills += 1
    with worker_process(db_url, effects, until_idle=True) as last:
        assert last.wait(timeout=300) == 0
    await _outcome(app, ids, book)
    book.read_effects(effects)
    # Re-runs can only be of tasks in flight when a worker was killed (not one more).
    book.premature_reclaims = max(0, book.duplicate_runs - kills * IN_FLIGHT_PER_WORKER)
    await app.close()
    assert (book.lost, book.completed) == (0, n)
    assert ledger_count(effects, "SELECT count(*) FROM effects") == n
    assert book.premature_reclaims == 0


@pytest.mark.parametrize("restarts", [1, pytest.param(3, marks=pytest.mark.long)])
async def test_postgres_restart(
    server: _private_pg.PrivatePG, tmp_path: Path, seed: int, restarts: int
) -> None:
    book = _ledger.start("postgres_restart", server.url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    app = _crash_app.build(server.url, str(effects))
    await app.open()
    ids = await _submit_acknowledged(app, 200)
    with worker_process(server.url, effects, until_idle=False) as worker:
        for r in range(restarts):
            wait_for(
                lambda r=r: ledger_count(effects, "SELECT count(*) FROM effects") >= 20 * (r + 1),
                what="work in progress before the restart",
            )
            await asyncio.to_thread(server.restart_immediate)
            book.kills += 1
            ids += await _submit_acknowledged(app, 100)
        for task_id in ids:
            await app.handle(task_id, "effect").result(timeout=timedelta(seconds=120))
        assert worker.poll() is None, "the worker must survive the restarts"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    book.tasks = len(ids)
    await _outcome(app, ids, book)
    book.read_effects(effects)
    await app.close()
    assert book.lost == 0
    assert ledger_count(effects, "SELECT count(DISTINCT task_id) FROM effects") == len(set(ids))


@pytest.mark.parametrize("kills", [8, pytest.param(20, marks=pytest.mark.long)])
async def test_sigkill_mid_submit_many_sqlite(
    tmp_path: Path, rng: random.Random, seed: int, kills: int
) -> None:
    db = tmp_path / "flowmill.db"
    url, batch = f"sqlite:///{db}", 200
    book = _ledger.start("sigkill_mid_submit_many", url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    acknowledged: set[int] = set()
    for k in range(kills):
        first = str(k * 1_000_000)
        with spawn("tests.chaos._submitter", url, str(effects), str(batch), first) as proc:
            await asyncio.sleep(rng.uniform(0.02, 0.4))  # the fault's timing, from the seed
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            assert proc.stdout is not None
            acknowledged |= {int(line) for line in proc.stdout.read().split()}
        book.kills += 1
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with sqlite3.connect(db) as conn:
        ns = [int(row[0]) for row in conn.execute("SELECT CAST(payload AS TEXT) FROM fm_tasks")]
    per_batch: dict[int, int] = {}
    for value in ns:
        per_batch[value // batch] = per_batch.get(value // batch, 0) + 1
    book.tasks = len(ns)
    book.extra = {"batches_stored": len(per_batch), "batches_acknowledged": len(acknowledged)}
    book.lost = sum(batch - per_batch.get(b, 0) for b in acknowledged)
    # Each batch is all or nothing; every acknowledged batch is whole; no task twice.
    assert set(per_batch.values()) <= {batch}
    assert book.lost == 0
    assert len(ns) == len(set(ns))
    assert acknowledged, "the submitter should get some batches through"


@pytest.mark.parametrize("tasks", [12, pytest.param(60, marks=pytest.mark.long)])
async def test_sigstop_zombie_is_fenced(tmp_path: Path, db_url: str, seed: int, tasks: int) -> None:
    book = _ledger.start("sigstop_zombie", db_url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    from . import _chaos_app

    app = _chaos_app.build(db_url, str(effects))
    handles = await app.submit_many("work", [800] * tasks)
    book.tasks = tasks
    env = {"FM_TEST_LEASE_S": "1", "FM_CHAOS_CONCURRENCY": "4", "FM_CHAOS_PREFETCH": "0"}
    with spawn("tests.chaos._chaos_app", db_url, str(effects), "forever", env=env) as zombie:
        wait_for(
            lambda: ledger_count(effects, "SELECT count(*) FROM executions") >= 1,
            what="the first worker to start tasks",
        )
        sqlite_files = [db_url.removeprefix("sqlite:///")] if db_url.startswith("sqlite:") else []
        _stop_outside_a_write(zombie, str(effects), *sqlite_files)
        book.kills += 1
        try:
            with spawn("tests.chaos._chaos_app", db_url, str(effects), "forever", env=env) as other:
                results = [await h.result(timeout=timedelta(seconds=120)) for h in handles]
                before = {
                    t.id: (t.state, t.attempts, t.lease_epoch)
                    for t in await app.list_tasks(limit=tasks)
                }
                other.send_signal(signal.SIGTERM)
                assert other.wait(timeout=60) == 0
        finally:
            zombie.send_signal(signal.SIGCONT)
        # The zombie wakes with handlers mid-sleep; let it finish them and stop.
        zombie.send_signal(signal.SIGTERM)
        assert zombie.wait(timeout=60) == 0
    after = {t.id: (t.state, t.attempts, t.lease_epoch) for t in await app.list_tasks(limit=tasks)}
    ran_by: dict[str, set[int]] = {}
    with sqlite3.connect(effects) as conn:
        for task_id, pid in conn.execute("SELECT task_id, pid FROM executions"):
            ran_by.setdefault(task_id, set()).add(pid)
    await _outcome(app, [h.id for h in handles], book)
    book.read_effects(effects)
    stolen = [h for h in handles if zombie.pid in ran_by.get(h.id, set()) and len(ran_by[h.id]) > 1]
    book.extra = {"zombie_runs_refused": len(stolen)}
    await app.close()
    assert stolen, "the zombie must have had tasks in flight when it was stopped"
    # The zombie's late finishes were all refused: nothing changed after it woke, and
    # every task it had lost carries the other worker's result.
    assert after == before
    for h, pid in zip(handles, results, strict=True):
        if h in stolen:
            assert pid != zombie.pid
    assert book.lost == 0
