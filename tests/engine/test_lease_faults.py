"""Lease faults with real worker processes (issue 13 items 1 and 2), on every backend.

- Worker processes whose wall clocks are stepped ±300 s take no lease from a healthy
  worker: leases are judged on the store's clock (SQLite: the host's boot-time clock).
- A task that kills its worker process on every attempt is dead-lettered after exactly its
  max_attempts, and charges nothing to the tasks its worker had prefetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from pathlib import Path

import pytest

import flowmill as fm
from tests.crash import _crash_app
from tests.crash.test_crash import ledger_count, spawn

from . import _lease_fleet

MODULE = "tests.engine._lease_fleet"


async def test_wall_clock_steps_cause_no_premature_reclaims(tmp_path: Path, db_url: str) -> None:
    ledger = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(ledger))
    app = _lease_fleet.build(db_url, str(ledger))
    tasks = 60
    handles = await app.submit_many("work", [300] * tasks)
    # Three workers whose wall clocks disagree by up to 10 minutes; leases are 5 s and a
    # task takes 0.3 s, so no lease of a healthy worker may ever be taken from it.
    with contextlib.ExitStack() as stack:
        for offset in ("-300", "0", "300"):
            env = {"FM_CLOCK_OFFSET_S": offset, "FM_LEASE_S": "5"}
            stack.enter_context(spawn(MODULE, db_url, str(ledger), "forever", env=env))
        for h in handles:
            await h.result(timeout=timedelta(seconds=120))
    runs = ledger_count(ledger, "SELECT count(*) FROM executions")
    reclaimed = [t.id for t in await app.list_tasks(limit=tasks) if t.attempts != 1]
    await app.close()
    assert (runs, reclaimed) == (tasks, [])  # 0 double runs, 0 premature reclaims


async def _supervise(db_url: str, ledger: Path, app: fm.App, workers: int) -> int:
    """Keep `workers` worker processes (concurrency 1, prefetch 8) running until every task
    has ended, restarting each one the poison kills; returns how many it killed."""
    env = {"FM_CONCURRENCY": "1", "FM_PREFETCH": "8", "FM_LEASE_S": "1"}
    deaths = 0

    async def ended() -> bool:
        return not any(c.count for c in await app.status() if not c.state.terminal)

    async def one_slot() -> None:
        nonlocal deaths
        while not await ended():
            with spawn(MODULE, db_url, str(ledger), "idle", env=env) as proc:
                code = await asyncio.to_thread(proc.wait, 120)
            if code == _lease_fleet.POISON_EXIT:
                deaths += 1
            else:
                assert code == 0

    await asyncio.gather(*(one_slot() for _ in range(workers)))
    return deaths


@pytest.mark.parametrize("good", [500])
async def test_a_poison_task_charges_no_good_task(tmp_path: Path, db_url: str, good: int) -> None:
    figures: dict[str, float] = {}
    for with_poison in (False, True):
        ledger = tmp_path / f"ledger-{with_poison}.db"
        _crash_app.init_ledger(str(ledger))
        app = _lease_fleet.build(db_url, str(ledger))
        poison = await app.submit("poison", 0) if with_poison else None
        goods = await app.submit_many("good", [10] * good)
        started = time.monotonic()
        deaths = await _supervise(db_url, ledger, app, workers=2)
        elapsed = time.monotonic() - started
        infos = [await app.get(h.id) for h in goods]
        states = {s: sum(1 for i in infos if i.state is s) for s in {i.state for i in infos}}
        assert states == {fm.State.COMPLETED: good}  # 0 good tasks dead-lettered, all done
        assert all(i.attempts == 1 for i in infos)
        if poison is not None:
            end = await app.get(poison.id)
            assert end.state is fm.State.DEAD_LETTERED
            assert end.attempts == _lease_fleet.POISON_MAX_ATTEMPTS
            assert deaths == _lease_fleet.POISON_MAX_ATTEMPTS
        else:
            assert deaths == 0
        figures["poison" if with_poison else "clean"] = good / elapsed
        await app.close()
    drop = 1 - figures["poison"] / figures["clean"]
    print(
        f"\nfleet throughput, {good} good tasks, 2 workers: clean {figures['clean']:.0f}/s, "
        f"with poison {figures['poison']:.0f}/s, drop {drop:.0%}"
    )
