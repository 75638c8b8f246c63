"""Crash safety with real processes: SIGKILL a worker mid-run; nothing is lost or doubled."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

import flowmill as fm

from . import _crash_app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def spawn(
    module: str, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run `python -m module args...`; wait for its "ready" line; kill it on the way out."""
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def worker_process(
    url: str, ledger: Path, *, until_idle: bool, lease_s: float = 1.0
) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """A worker of `_crash_app` (short lease by default, so kills are reaped fast)."""
    mode = "idle" if until_idle else "forever"
    return spawn(
        "tests.crash._crash_app", url, str(ledger), mode, env={"FM_TEST_LEASE_S": str(lease_s)}
    )


def ledger_count(ledger: Path, sql: str) -> int:
    with sqlite3.connect(ledger, timeout=30) as conn:
        return int(conn.execute(sql).fetchone()[0])


def wait_for(check: object, *, timeout: float = 60, what: str) -> None:
    """Wait for a worker process to make `check()` true (an event, not a timer)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def test_sigkill_mid_run_every_task_completes_with_one_effect(
    tmp_path: Path, db_url: str
) -> None:
    url, ledger = db_url, tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    app = _crash_app.build(url, str(ledger))
    n = 300
    handles = await app.submit_many("effect", range(n))
    with worker_process(url, ledger, until_idle=False) as first:
        wait_for(
            lambda: ledger_count(ledger, "SELECT count(*) FROM effects") >= 60,
            what="the first worker to make progress",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    in_flight = len(await app.list_tasks(states=[fm.State.RUNNING], limit=1000))
    assert in_flight > 0, "the kill should land while tasks are running"
    with worker_process(url, ledger, until_idle=True) as second:
        assert second.wait(timeout=120) == 0
    results = [await h.result(timeout=timedelta(seconds=30)) for h in handles]
    assert results == list(range(n))
    # Exactly one effect per task; re-runs only for what was in flight at the kill.
    assert ledger_count(ledger, "SELECT count(*) FROM effects") == n
    assert ledger_count(ledger, "SELECT count(DISTINCT task_id) FROM executions") == n
    reruns = ledger_count(ledger, "SELECT count(*) FROM executions") - n
    assert 0 <= reruns <= in_flight
    attempts = {t.attempts for t in await app.list_tasks(limit=n)}
    assert attempts <= {1, 2}
    await app.close()


async def test_restart_with_tasks_scheduled_running_and_retrying(
    tmp_path: Path, db_url: str
) -> None:
    url, ledger = db_url, tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    app = _crash_app.build(url, str(ledger))
    # Due after the first worker's kill even on a loaded machine (a worker process takes
    # 1-3 s to start there), so the restart finds them still scheduled.
    scheduled = await app.submit_many("effect", range(10), delay=timedelta(seconds=6))
    slow = await app.submit_many("slow", range(100, 104))
    flaky = await app.submit_many("flaky", range(200, 210))
    with worker_process(url, ledger, until_idle=False) as first:
        wait_for(
            lambda: ledger_count(ledger, "SELECT count(*) FROM executions WHERE n >= 100") >= 14,
            what="slow tasks running and flaky tasks failed once",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    states = {t.id: t.state for t in await app.list_tasks(limit=100)}
    assert {states[h.id] for h in slow} == {fm.State.RUNNING}
    assert fm.State.SCHEDULED in {states[h.id] for h in scheduled}
    with worker_process(url, ledger, until_idle=True) as second:
        assert second.wait(timeout=120) == 0
    for group, values in (
        (scheduled, range(10)),
        (slow, range(100, 104)),
        (flaky, range(200, 210)),
    ):
        assert [await h.result(timeout=timedelta(seconds=30)) for h in group] == list(values)
    for h in slow:
        info = await app.get(h.id)
        assert info.attempts == 2  # the killed attempt was reaped as lease_expired
    for h in flaky:
        assert (await app.get(h.id)).attempts == 2
    assert ledger_count(ledger, "SELECT count(*) FROM effects") == 24
    await app.close()


async def test_sigterm_stops_gracefully_and_releases(tmp_path: Path, db_url: str) -> None:
    url, ledger = db_url, tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    app = _crash_app.build(url, str(ledger))
    slow = await app.submit_many("slow", range(3))
    with worker_process(url, ledger, until_idle=False) as proc:
        wait_for(
            lambda: ledger_count(ledger, "SELECT count(*) FROM executions") >= 3,
            what="slow tasks to start",
        )
        proc.send_signal(signal.SIGTERM)
        # The handlers ignore the stop request; after the grace periods they are cancelled
        # and their tasks released without spending an attempt.
        assert proc.wait(timeout=90) == 0
    for h in slow:
        info = await app.get(h.id)
        assert (info.state, info.attempts) == (fm.State.READY, 0)
    await app.close()


async def test_several_worker_processes_share_one_store(tmp_path: Path, db_url: str) -> None:
    url, ledger = db_url, tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    app = _crash_app.build(url, str(ledger))
    n = 1000
    handles = await app.submit_many("effect", range(n))
    with (
        worker_process(url, ledger, until_idle=True) as a,
        worker_process(url, ledger, until_idle=True) as b,
    ):
        assert a.wait(timeout=120) == 0
        assert b.wait(timeout=120) == 0
    assert [await h.result(timeout=timedelta(seconds=30)) for h in handles] == list(range(n))
    # No task ran twice: with no crash, at-least-once is exactly once.
    assert ledger_count(ledger, "SELECT count(*) FROM executions") == n
    assert ledger_count(ledger, "SELECT count(DISTINCT pid) FROM executions") == 2
    await app.close()


async def test_four_worker_processes_five_thousand_tasks_each_once(
    tmp_path: Path, db_url: str
) -> None:
    ledger = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    app = _crash_app.build(db_url, str(ledger))
    n = 4 * 5000
    handles = await app.submit_many("tick", range(n))
    # A normal lease: with no crash, no lease may expire, so nothing may run twice.
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(worker_process(db_url, ledger, until_idle=True, lease_s=30))
            for _ in range(4)
        ]
        for w in workers:
            assert w.wait(timeout=300) == 0
    rows = await app.store.results_get([h.id for h in handles])
    assert len(rows) == n
    assert {r.state for r in rows} == {fm.State.COMPLETED}
    # The ledger: each task's effect once, and no task ran twice; all four did work.
    assert ledger_count(ledger, "SELECT count(*) FROM effects") == n
    assert ledger_count(ledger, "SELECT count(*) FROM executions") == n
    assert ledger_count(ledger, "SELECT count(DISTINCT pid) FROM executions") == 4
    await app.close()
