"""Workflow recovery with real processes: SIGKILL every worker mid-run, start a fresh one.

The run finishes with every node's expected result, each node's effect happens once, and
no node that had completed before the kill runs again (the store, not the workers, holds
what is done); nodes caught running are run again, and their dependents after them.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

import flowmill as fm

from ..conftest import eventually
from . import _wf_crash_app
from ._wf_crash_app import TASK, Step
from .test_crash import spawn

pytestmark = pytest.mark.slow

JOIN = "join"
KILL_AFTER = 18  # completed nodes before the kill


def worker(
    url: str, ledger: Path, *, lease_s: float
) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return spawn(
        "tests.crash._wf_crash_app",
        url,
        str(ledger),
        "forever",
        env={"FM_TEST_LEASE_S": str(lease_s), "FM_TEST_CONCURRENCY": "4"},
    )


def build_dag(app: fm.App) -> tuple[fm.Workflow, dict[str, tuple[str, ...]], dict[str, int]]:
    """49 nodes in layers: root; a fan-out of 16 beside a diamond; 16 nodes joining pairs
    of the fan-out; a fan-in join of those and the diamond; a fan-out of 10 after the join
    and a final fan-in. Returns the workflow, each node's upstreams and its expected result
    (its weight plus its upstreams' results, as the task computes it)."""
    wf = app.workflow("crash-dag")
    ups: dict[str, tuple[str, ...]] = {}
    expected: dict[str, int] = {}

    def add(name: str, after: Sequence[str], sleep_ms: int) -> None:
        weight = len(ups) + 1
        wf.add(TASK, Step(name, weight, sleep_ms), name=name, after=list(after))
        ups[name] = tuple(after)
        expected[name] = weight + sum(expected[u] for u in after)

    add("root", [], 100)
    fan = [f"a[{i}]" for i in range(16)]
    for i, name in enumerate(fan):
        add(name, ["root"], 100 + (i * 37) % 100)
    add("top", ["root"], 150)
    add("left", ["top"], 200)
    add("right", ["top"], 120)
    add("bottom", ["left", "right"], 100)
    pairs = [f"b[{i}]" for i in range(16)]
    for i, name in enumerate(pairs):
        add(name, [fan[i], fan[(i + 1) % len(fan)]], 200 + (i * 53) % 200)
    add(JOIN, [*pairs, "bottom"], 100)
    tail = [f"t[{i}]" for i in range(10)]
    for i, name in enumerate(tail):
        add(name, [JOIN], 50 + (i * 29) % 100)
    add("end", tail, 50)
    return wf, ups, expected


Row = tuple[int, str, int, int, str, int | None]  # id, node, pid, attempt, phase, value


def executions(ledger: Path) -> list[Row]:
    with sqlite3.connect(ledger, timeout=30) as conn:
        return list(
            conn.execute("SELECT id, node, pid, attempt, phase, value FROM executions ORDER BY id")
        )


async def at_kill_point(run: fm.WorkflowRun, ups: dict[str, tuple[str, ...]]) -> bool:
    """Whether a good part of the run has completed while nodes are running; fails if the
    run got so far that the join could be caught running (it must run exactly once)."""
    nodes = (await run.status()).nodes
    done = {n for n, s in nodes.items() if s.state is fm.State.COMPLETED}
    if nodes[JOIN].state is not fm.State.BLOCKED or len(set(ups[JOIN]) - done) < 3:
        raise AssertionError(f"the run got past the kill point unseen ({len(done)} done)")
    running = any(s.state is fm.State.RUNNING for s in nodes.values())
    return len(done) >= KILL_AFTER and running


async def test_sigkill_every_worker_mid_run_restart_finishes_and_no_completed_node_reruns(
    tmp_path: Path, db_url: str
) -> None:
    url, ledger = db_url, tmp_path / "ledger.db"
    _wf_crash_app.init_ledger(str(ledger))
    app = _wf_crash_app.build(url, str(ledger))
    wf, ups, expected = build_dag(app)

    # 1. Two workers with a short lease (killed attempts are reaped fast) start the run;
    # kill both mid-run.
    with contextlib.ExitStack() as stack:
        first = [stack.enter_context(worker(url, ledger, lease_s=1)) for _ in range(2)]
        run = await wf.submit()  # once both are up, so neither gets far alone
        await eventually(
            lambda: at_kill_point(run, ups), timeout=60, what="the workers to be mid-run"
        )
        for proc in first:
            proc.send_signal(signal.SIGKILL)
        for proc in first:
            proc.wait(timeout=30)
    at_kill = (await run.status()).nodes
    completed = {n for n, s in at_kill.items() if s.state is fm.State.COMPLETED}
    running = {n for n, s in at_kill.items() if s.state is fm.State.RUNNING}
    assert KILL_AFTER <= len(completed) < len(expected)
    assert running, "the kill should land while nodes are running"
    assert at_kill[JOIN].state is fm.State.BLOCKED
    kill_mark = max(r[0] for r in executions(ledger))

    # 2. A fresh worker (a normal lease: nothing it runs may expire) finishes the run.
    with worker(url, ledger, lease_s=30) as fresh:
        result = await run.result(timeout=timedelta(seconds=60))
        fresh.send_signal(signal.SIGTERM)
        assert fresh.wait(timeout=60) == 0
    assert dict(result) == expected
    final = (await run.status()).nodes
    assert {s.state for s in final.values()} == {fm.State.COMPLETED}

    rows = executions(ledger)
    assert {r[2] for r in rows} <= {first[0].pid, first[1].pid, fresh.pid}
    assert all((r[0] > kill_mark) == (r[2] == fresh.pid) for r in rows)
    # Every execution that got to the end computed the expected value from its upstreams.
    assert all(value == expected[node] for _, node, _, _, phase, value in rows if phase == "end")

    # Nothing that had completed ran again; everything else ran exactly once after the
    # kill (the fresh worker's lease never expires): the nodes caught running included.
    after = [r for r in rows if r[2] == fresh.pid]
    started_after = Counter(r[1] for r in after if r[4] == "start")
    ended_after = Counter(r[1] for r in after if r[4] == "end")
    assert not completed & set(started_after), "completed nodes ran again after the kill"
    left = Counter(dict.fromkeys(set(expected) - completed, 1))
    assert started_after == left
    assert ended_after == left
    assert running <= set(started_after)
    # A node caught running whose handler had started (its start is in the ledger) spent
    # that attempt; one a worker had only prefetched went back uncharged (issue 13 item 2).
    began = {r[1] for r in rows if r[0] <= kill_mark and r[4] == "start"}
    assert all(r[3] >= 2 for r in after if r[1] in running & began and r[4] == "start")
    for name in running & began:
        assert final[name].attempts >= 2  # the killed attempt was reaped, not lost
    for name in completed:
        was, now = at_kill[name], final[name]
        assert (now.attempts, now.finished_at) == (was.attempts, was.finished_at)

    # Each node ran only after its upstreams ended: before the kill and after it (where a
    # rerun upstream's new end is the one that counts).
    ends: dict[str, list[int]] = {}
    for row_id, node, _, _, phase, _ in rows:
        if phase == "end":
            ends.setdefault(node, []).append(row_id)
    for row_id, node, pid, _, phase, _ in rows:
        if phase != "start":
            continue
        for up in ups[node]:
            before = [e for e in ends[up] if e < row_id]
            assert before, f"{node} started before its upstream {up} ended"
            if pid == fresh.pid and up not in completed:
                assert before[-1] > kill_mark, f"{node} ran before the rerun of {up}"

    # The fan-in join ran exactly once; every node's effect happened exactly once.
    assert [r[4] for r in rows if r[1] == JOIN] == ["start", "end"]
    with sqlite3.connect(ledger, timeout=30) as conn:
        effects = dict(conn.execute("SELECT node, value FROM effects"))
        count = conn.execute("SELECT count(*) FROM effects").fetchone()[0]
    assert effects == expected
    assert count == len(expected)
    await app.close()
