"""Chaos scenarios for issue 13 items 1, 2, 3, 4, 7 (3 and 4 fixed: no mark left on them).

Each is a real scenario with its ledger, marked `xfail(strict=True)` where it fails today,
so the fix that makes it pass flips it (and must then drop the mark).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flowmill as fm
from flowmill._conditions import Signal
from flowmill.store.contract.signals import DeliverStatus
from tests.conftest import eventually
from tests.crash import _crash_app
from tests.crash.test_crash import ledger_count, spawn
from tests.engine.test_worker import running

from . import _chaos_app, _ledger

pytestmark = pytest.mark.chaos


def _backend(db_url: str) -> str:
    """The backend a `db_url` names (by its scheme, whatever the registry's params are)."""
    scheme = db_url.split(":", 1)[0]
    return "postgres" if scheme in ("postgresql", "postgres") else scheme


def _xfail_on(db_url: str, request: pytest.FixtureRequest, backend: str, reason: str) -> None:
    if _backend(db_url) == backend:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("tasks", [60, pytest.param(400, marks=pytest.mark.long)])
async def test_wall_clock_steps_cause_no_premature_reclaims(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str, seed: int, tasks: int
) -> None:
    book = _ledger.start("wall_clock_steps", db_url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    app = _chaos_app.build(db_url, str(effects))
    handles = await app.submit_many("work", [300] * tasks)
    book.tasks = tasks
    # Three workers whose wall clocks disagree by up to 10 minutes; leases are 5 s and a
    # task takes 0.3 s, so no lease of a healthy worker may ever be taken from it.
    with contextlib.ExitStack() as stack:
        for offset in ("-300", "0", "300"):
            env = {"FM_CHAOS_CLOCK_OFFSET_S": offset, "FM_TEST_LEASE_S": "5"}
            stack.enter_context(
                spawn("tests.chaos._chaos_app", db_url, str(effects), "forever", env=env)
            )
            book.kills += 1  # one clock step per worker
        failed = 0
        for h in handles:
            try:
                await h.result(timeout=timedelta(seconds=120))
            except fm.TaskFailed:  # reclaimed from healthy workers until out of attempts
                failed += 1
    book.read_effects(effects)
    book.completed = tasks - failed
    book.extra = {"failed": failed}
    book.premature_reclaims = sum(1 for t in await app.list_tasks(limit=tasks) if t.attempts > 1)
    await app.close()
    assert (book.duplicate_runs, book.premature_reclaims, failed) == (0, 0, 0)


@pytest.mark.parametrize("good", [40, pytest.param(400, marks=pytest.mark.long)])
async def test_a_poison_task_hurts_no_good_task(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str, seed: int, good: int
) -> None:
    book = _ledger.start("poison_task", db_url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    app = _chaos_app.build(db_url, str(effects))
    poison = await app.submit("poison", 0)
    goods = await app.submit_many("good", range(1, good + 1))
    book.tasks = good + 1
    env = {"FM_CHAOS_CONCURRENCY": "1", "FM_CHAOS_PREFETCH": "4"}
    # A supervisor: restart the worker whenever the poison kills it, until all have ended.
    for _ in range(3 * _chaos_app.POISON_MAX_ATTEMPTS + 10):
        infos = [await app.get(h.id) for h in [poison, *goods]]
        if all(i.state.terminal for i in infos):
            break
        with spawn("tests.chaos._chaos_app", db_url, str(effects), "idle", env=env) as proc:
            code = await asyncio.to_thread(proc.wait, 120)
        if code == _chaos_app.POISON_EXIT:
            book.kills += 1
        else:
            assert code == 0
    infos = [await app.get(h.id) for h in goods]
    end = await app.get(poison.id)
    book.read_effects(effects)
    book.completed = sum(1 for i in infos if i.state is fm.State.COMPLETED)
    book.lost = good - book.completed
    book.extra = {
        "good_dead_lettered": sum(1 for i in infos if i.state is fm.State.DEAD_LETTERED),
        "poison_attempts": end.attempts,
    }
    await app.close()
    assert end.state is fm.State.DEAD_LETTERED
    assert end.attempts == _chaos_app.POISON_MAX_ATTEMPTS
    assert book.kills == _chaos_app.POISON_MAX_ATTEMPTS
    assert (book.extra["good_dead_lettered"], book.lost) == (0, 0)


# -- corrupt rows --------------------------------------------------------------------------

# What another tool may have written into a payload or result column, per backend: SQLite
# keeps any type in any column; PostgreSQL's bytea holds bytes only.
CORRUPT: dict[str, dict[str, Any]] = {
    "sqlite": {
        "integer": 42,
        "real": 1.5,
        "blob": b"\xff\xfe\x00",
        "text": "not json {",
    },
    "postgres": {"blob": b"\xff\xfe\x00", "text": b"not json {"},
}


@contextlib.contextmanager
def _raw(db_url: str) -> Iterator[tuple[Any, str]]:
    """A raw DB-API connection to the store's database and its table prefix."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split(":///", 1)[1], timeout=30)
        try:
            yield conn, "fm_"
            conn.commit()
        finally:
            conn.close()
        return
    import psycopg

    base, _, query = db_url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        yield _PgCursor(conn), f"{query}."


class _PgCursor:
    """`execute` with `?` placeholders, as sqlite3 takes them."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)


def _corrupt(db_url: str, table: str, column: str, value: Any, task_id: str) -> None:
    with _raw(db_url) as (conn, prefix):
        key = "id" if table == "tasks" else "task_id"
        conn.execute(f"UPDATE {prefix}{table} SET {column} = ? WHERE {key} = ?", (value, task_id))


@pytest.mark.parametrize("variant", ["integer", "real", "blob", "text"])
async def test_a_corrupt_payload_fails_its_attempt_at_once(
    request: pytest.FixtureRequest, tmp_path: Path, db_url: str, seed: int, variant: str
) -> None:
    backend = _backend(db_url)
    if variant not in CORRUPT.get(backend, {}):
        pytest.skip(f"no {variant} corruption on {backend} (its column holds bytes only)")
    book = _ledger.start(f"corrupt_payload_{variant}", db_url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    app = _chaos_app.build(db_url, str(effects))
    bad = await app.submit("effect", 0)
    goods = await app.submit_many("effect", range(1, 11))
    book.tasks = 11
    _corrupt(db_url, "tasks", "payload", CORRUPT[backend][variant], bad.id)
    async with running(app.worker(lease_ttl=timedelta(seconds=60), concurrency=4)):
        results = [await h.result(timeout=timedelta(seconds=30)) for h in goods]

        async def ended() -> bool:
            return (await app.store.task_get(bad.id)).state.terminal  # type: ignore[union-attr]

        # Well before the 60 s lease could expire: the attempt fails at once.
        await eventually(ended, timeout=10, what="the corrupt task to fail")
    record = await app.store.task_get(bad.id)
    book.completed = len(results)
    book.read_effects(effects)
    await app.close()
    assert record is not None
    assert record.attempts == 1
    assert record.state in (fm.State.FAILED, fm.State.DEAD_LETTERED)
    assert record.error is not None
    assert record.error.type == "PayloadError"
    assert ledger_count(effects, "SELECT count(*) FROM effects") == 10


@pytest.mark.parametrize(
    ("column", "variant"),
    [("payload", v) for v in CORRUPT["sqlite"]] + [("result", v) for v in CORRUPT["sqlite"]],
)
async def test_inspection_survives_a_corrupt_row(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    db_url: str,
    seed: int,
    column: str,
    variant: str,
) -> None:
    backend = _backend(db_url)
    if variant not in CORRUPT.get(backend, {}):
        pytest.skip(f"no {variant} corruption on {backend} (its column holds bytes only)")
    book = _ledger.start(f"corrupt_{column}_{variant}_inspection", db_url, seed)
    effects = tmp_path / "ledger.db"
    _crash_app.init_ledger(str(effects))
    app = _chaos_app.build(db_url, str(effects))
    handles = await app.submit_many("effect", range(5))
    book.tasks = 5
    if column == "result":  # complete them all first, so each has a result row
        async with running(app.worker(concurrency=4)):
            for h in handles:
                await h.result(timeout=timedelta(seconds=30))
        _corrupt(db_url, "results", "result", CORRUPT[backend][variant], handles[2].id)
    else:
        _corrupt(db_url, "tasks", "payload", CORRUPT[backend][variant], handles[2].id)
    listed = await app.list_tasks(limit=10)
    shown = await app.get(handles[2].id)
    book.completed = len(listed)
    await app.close()
    assert {t.id for t in listed} == {h.id for h in handles}
    assert shown.id == handles[2].id


# -- one-shot waitpoints -------------------------------------------------------------------


@pytest.mark.parametrize("late", [5, pytest.param(60, marks=pytest.mark.long)])
async def test_a_waitpoint_closes_when_its_suspension_resumes(
    request: pytest.FixtureRequest, db_url: str, seed: int, late: int
) -> None:
    book = _ledger.start("one_shot_waitpoints", db_url, seed)
    app = fm.App(db_url)
    made: dict[str, Any] = {}
    seen: list[list[tuple[str, str]]] = []
    second_step = asyncio.Event()

    @app.task(name="two_steps")
    async def two_steps(_: None, ctx: fm.Context) -> str:
        resumed = await ctx.resume_signals()
        seen.append([(s.waitpoint_id, s.name) for s in resumed])
        if "first" not in made:
            made["first"] = await ctx.create_waitpoint("first", expires_in=timedelta(hours=1))
            await ctx.suspend(Signal("approved", made["first"]))
        if "second" not in made:
            made["second"] = await ctx.create_waitpoint("second", expires_in=timedelta(hours=1))
            second_step.set()
            await ctx.suspend(Signal("done", made["second"]))
        return "ok"

    async with running(app.worker(concurrency=2)):
        h = await app.submit(two_steps, None)
        await eventually(lambda: _state_is(app, h.id, fm.State.SUSPENDED), what="suspension 1")
        first = made["first"]
        out = await app.deliver_signal(first.id, first.token, "approved")
        assert out.status is DeliverStatus.ACCEPTED
        await asyncio.wait_for(second_step.wait(), 30)
        await eventually(lambda: _state_is(app, h.id, fm.State.SUSPENDED), what="suspension 2")
        # Late deliveries to the first waitpoint, whose suspension has resumed.
        late_outcomes = [
            await app.deliver_signal(first.id, first.token, name)
            for name in ["approved", "noise"] * (late // 2 + 1)
        ][:late]
        second = made["second"]
        await app.deliver_signal(second.id, second.token, "done")
        assert await h.result(timeout=timedelta(seconds=30)) == "ok"
    book.tasks = 1
    book.extra = {
        "late_signals": late,
        "late_accepted": sum(o.status is DeliverStatus.ACCEPTED for o in late_outcomes),
    }
    await app.close()
    assert book.extra["late_accepted"] == 0
    assert all("closed" in f"{o.status.value} {o.reason}" for o in late_outcomes)
    # Each resume sees exactly the signals of the suspension that resumed.
    assert seen[-1] == [(second.id, "done")]


async def _state_is(app: fm.App, task_id: str, state: fm.State) -> bool:
    return (await app.get(task_id)).state is state
