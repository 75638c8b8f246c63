"""Orchestrators survive SIGKILL at any point: execute never re-runs once its memo is stored."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

import flowmill as fm

from ..conftest import eventually
from . import _orch_app
from .test_crash import spawn, wait_for

pytestmark = pytest.mark.slow
N = 6  # children; the parent's result is sum(range(N)) * 10 + N


def worker(url: str, ledger: Path) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return spawn("tests.crash._orch_app", url, str(ledger))


async def _is_waiting(app: fm.App, task_id: str) -> bool:
    return (await app.get(task_id)).state is fm.State.WAITING_CHILDREN


def runs(ledger: Path, what: str) -> list[tuple[str, int]]:
    with sqlite3.connect(ledger, timeout=30) as conn:
        return [
            (t, a)
            for t, a in conn.execute(
                "SELECT task_id, attempt FROM runs WHERE what = ? ORDER BY rowid", (what,)
            )
        ]


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> tuple[str, Path, Path]:
    ledger = tmp_path / "ledger.db"
    _orch_app.init_ledger(str(ledger))
    return db_url, ledger, tmp_path


async def _finish_with_second_worker(url: str, ledger: Path, h: fm.TaskHandle[int]) -> int:
    with worker(url, ledger) as second:
        result = await h.result(timeout=timedelta(seconds=60))
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    return result


async def test_killed_during_execute_reruns_execute_without_double_spawns(
    setup: tuple[str, Path, Path],
) -> None:
    url, ledger, marks = setup
    app = _orch_app.build(url, str(ledger))
    (marks / "block-execute").touch()
    h = await app.submit("crashy", N)
    with worker(url, ledger) as first:
        wait_for(lambda: len(runs(ledger, "execute")) == 1, what="execute to start")
        kill(first)
    (marks / "block-execute").unlink()
    assert await _finish_with_second_worker(url, ledger, h) == sum(range(N)) * 10 + N
    # No memo was stored, so execute ran again; its keyed spawns did not duplicate.
    assert [a for _, a in runs(ledger, "execute")] == [1, 2]
    kids = [t for t in await app.list_tasks(limit=100) if t.name == "kid"]
    assert len(kids) == N
    assert len(runs(ledger, "finalize")) == 1
    await app.close()


async def test_killed_while_waiting_for_children(setup: tuple[str, Path, Path]) -> None:
    url, ledger, marks = setup
    app = _orch_app.build(url, str(ledger))
    (marks / "block-kids").touch()
    h = await app.submit("crashy", N)

    with worker(url, ledger) as first:
        wait_for(lambda: len(runs(ledger, "kid")) >= 1, what="children to start")
        await eventually(lambda: _is_waiting(app, h.id), what="parent waiting")
        kill(first)
    (marks / "block-kids").unlink()
    assert await _finish_with_second_worker(url, ledger, h) == sum(range(N)) * 10 + N
    assert [a for _, a in runs(ledger, "execute")] == [1]  # the memo was stored: never again
    assert len(runs(ledger, "finalize")) == 1
    info = await app.get(h.id)
    assert (info.state, info.result) == (fm.State.COMPLETED, sum(range(N)) * 10 + N)
    await app.close()


async def test_killed_during_finalize_reruns_finalize_with_the_same_memo(
    setup: tuple[str, Path, Path],
) -> None:
    url, ledger, marks = setup
    app = _orch_app.build(url, str(ledger))
    (marks / "block-finalize").touch()
    h = await app.submit("crashy", N)
    with worker(url, ledger) as first:
        wait_for(lambda: len(runs(ledger, "finalize")) == 1, what="finalize to start")
        kill(first)
    (marks / "block-finalize").unlink()
    assert await _finish_with_second_worker(url, ledger, h) == sum(range(N)) * 10 + N
    assert [a for _, a in runs(ledger, "execute")] == [1]
    assert [a for _, a in runs(ledger, "finalize")] == [1, 2]
    await app.close()


async def test_children_ending_while_no_worker_is_up(setup: tuple[str, Path, Path]) -> None:
    url, ledger, marks = setup
    app = _orch_app.build(url, str(ledger))
    (marks / "block-kids").touch()
    h = await app.submit("crashy", N)

    with worker(url, ledger) as first:
        await eventually(lambda: _is_waiting(app, h.id), what="parent waiting")
        first.send_signal(signal.SIGTERM)  # graceful: the kids are released, not run
        first.wait(timeout=60)
    # No worker is up: the operator cancels every child; the last one readies the parent.
    for kid in [t for t in await app.list_tasks(limit=100) if t.name == "kid"]:
        await app.cancel(kid.id)
    info = await app.get(h.id)
    assert (info.state, info.phase) == (fm.State.READY, fm.Phase.FINALIZE)
    (marks / "block-kids").unlink()
    assert await _finish_with_second_worker(url, ledger, h) == N * 1000 * 10 + N
    assert [a for _, a in runs(ledger, "execute")] == [1]
    await app.close()
