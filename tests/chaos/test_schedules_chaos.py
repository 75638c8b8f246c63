"""Schedules under kill -9: worker processes that fire one schedule are killed at random
(one of them, or all at once) and restarted; every tick is fired exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
from pathlib import Path

import pytest

import flowmill as fm
from flowmill._schedules import SCHEDULE_TAG
from flowmill.store.contract.schedules import SchedulesList
from flowmill.store.contract.tasks import TasksList
from tests.crash import _crash_app
from tests.crash.test_crash import spawn

from . import _ledger
from ._schedule_app import NAME, TICK_MS

pytestmark = pytest.mark.chaos

SIZES = [
    pytest.param({"rounds": 6}, id="short"),
    pytest.param({"rounds": 30}, id="long", marks=pytest.mark.long),
]
WORKERS = 2


async def fired_ticks(app: fm.App) -> list[int]:
    rows = await app.store.tasks_list(TasksList((), None, "effect", 100_000))
    return sorted(
        int((r.dedup_key or "").rsplit(":", 1)[1]) for r in rows if r.tags.get(SCHEDULE_TAG) == NAME
    )


async def wait_for_ticks(app: fm.App, goal: int, timeout: float = 60) -> None:
    """Wait until the workers have fired `goal` ticks (polling the store, not a timer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(await fired_ticks(app)) < goal:
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {goal} fired ticks")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("size", SIZES)
async def test_killing_firing_workers_neither_loses_nor_doubles_a_tick(
    tmp_path: Path, db_url: str, rng: random.Random, seed: int, size: dict[str, int]
) -> None:
    book = _ledger.start("schedule_kills", db_url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    app = fm.App(db_url)
    await app.open()

    def worker() -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
        return spawn("tests.chaos._schedule_app", db_url, str(effects), "forever")

    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(worker()) for _ in range(WORKERS)]
        for _ in range(size["rounds"]):
            await wait_for_ticks(app, len(await fired_ticks(app)) + rng.randint(1, 4))
            victims = procs if rng.random() < 0.3 else [rng.choice(procs)]
            for proc in victims:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                book.kills += 1
            procs = [p for p in procs if p.poll() is None]
            procs += [stack.enter_context(worker()) for _ in range(WORKERS - len(procs))]
        await wait_for_ticks(app, len(await fired_ticks(app)) + 2)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    ticks = await fired_ticks(app)
    [row] = await app.store.schedules_list(SchedulesList([NAME]))
    await app.close()
    book.tasks = len(ticks)
    book.extra["doubled"] = len(ticks) - len(set(ticks))
    expected = list(range(ticks[0], ticks[-1] + 1, TICK_MS))
    book.lost = len(set(expected) - set(ticks))
    book.read_effects(effects)
    assert book.extra["doubled"] == 0, "a tick was fired twice"
    assert book.lost == 0, "a tick was lost"
    assert ticks == expected
    assert row.fired == len(ticks) and row.next_fire_ms == ticks[-1] + TICK_MS
