"""Conformance: schedules (`schedules_*`): upsert by name, the firing compare-and-set with
its tasks in the same transaction, pause and resume, and reads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from ..._states import State
from ...store.contract import Store
from ...store.contract.schedules import (
    FireOutcome,
    FireStatus,
    ScheduleDecl,
    ScheduleFire,
    SchedulePause,
    ScheduleRow,
    SchedulesList,
    SchedulesUpsert,
)
from ...store.contract.tasks import InsertStatus, NewTask, TasksInsert, TasksList
from ._util import KIND, QUEUE, T0, task

MINUTE = 60_000


def decl(name: str = "nightly", **kw: object) -> ScheduleDecl:
    base = ScheduleDecl(
        name=name,
        kind=KIND,
        trigger=f"every:{MINUTE}",
        tz=None,
        misfire="run_once",
        jitter_ms=0,
        payload=b'{"n": 1}',
        queue=QUEUE,
        priority=0,
        max_attempts=3,
        retry_policy=b"{}",
        timeout_ms=None,
        definition="d1",
        paused=False,
        first_fire_ms=T0 + MINUTE,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def upsert(store: Store, *decls: ScheduleDecl, now: int = T0) -> dict[str, ScheduleRow]:
    rows = await store.schedules_upsert(SchedulesUpsert(list(decls), now))
    return {r.name: r for r in rows}


def tick_tasks(name: str, ticks: Sequence[int]) -> list[NewTask]:
    return [task(key=f"schedule:{name}:{t}") for t in ticks]


async def fire(
    store: Store,
    row: ScheduleRow,
    ticks: Sequence[int],
    next_ms: int,
    *,
    now: int,
) -> FireOutcome:
    return await store.schedules_fire(
        ScheduleFire(
            name=row.name,
            expected_version=row.version,
            expected_next_ms=row.next_fire_ms,
            next_fire_ms=next_ms,
            tasks=tick_tasks(row.name, ticks),
            last_tick_ms=ticks[-1] if ticks else None,
            now_ms=now,
        )
    )


async def stored_tasks(store: Store) -> int:
    rows = await store.tasks_list(TasksList((State.READY, State.SCHEDULED), None, None, 10_000))
    return len(rows)


class SchedulesUpsertConformance:
    """`schedules_upsert`: insert by name, keep the next fire time across restarts, reset it
    when the trigger changes, and mark what a starting worker does not declare."""

    async def test_a_new_schedule_is_stored(self, store: Store) -> None:
        rows = await upsert(store, decl())
        r = rows["nightly"]
        assert (r.version, r.next_fire_ms, r.paused, r.fired) == (1, T0 + MINUTE, False, 0)
        assert (r.kind, r.trigger, r.payload, r.queue) == (
            KIND,
            f"every:{MINUTE}",
            b'{"n": 1}',
            QUEUE,
        )
        assert (r.declared_at_ms, r.undeclared_since_ms, r.created_at_ms) == (T0, None, T0)
        assert (r.last_tick_ms, r.last_fired_at_ms) == (None, None)

    async def test_declaring_again_keeps_the_next_fire_time(self, store: Store) -> None:
        await upsert(store, decl())
        rows = await upsert(store, decl(first_fire_ms=T0 + 5 * MINUTE), now=T0 + 4 * MINUTE)
        r = rows["nightly"]
        assert (r.version, r.next_fire_ms, r.declared_at_ms) == (1, T0 + MINUTE, T0 + 4 * MINUTE)

    async def test_a_changed_definition_bumps_the_version(self, store: Store) -> None:
        await upsert(store, decl())
        rows = await upsert(store, decl(definition="d2", payload=b"2", first_fire_ms=T0 + 9))
        r = rows["nightly"]
        assert (r.version, r.payload, r.next_fire_ms) == (2, b"2", T0 + MINUTE)

    async def test_a_changed_trigger_or_tz_resets_the_next_fire_time(self, store: Store) -> None:
        await upsert(store, decl())
        rows = await upsert(
            store, decl(definition="d2", trigger="every:1000", first_fire_ms=T0 + 1000)
        )
        assert (rows["nightly"].version, rows["nightly"].next_fire_ms) == (2, T0 + 1000)
        rows = await upsert(
            store, decl(definition="d3", trigger="every:1000", tz="UTC", first_fire_ms=T0 + 7)
        )
        assert (rows["nightly"].version, rows["nightly"].next_fire_ms, rows["nightly"].tz) == (
            3,
            T0 + 7,
            "UTC",
        )

    async def test_declared_paused_applies_when_it_changes(self, store: Store) -> None:
        rows = await upsert(store, decl(paused=True))
        assert rows["nightly"].paused
        resumed = await store.schedules_set_paused(SchedulePause("nightly", False, T0 + MINUTE, T0))
        assert resumed is not None and not resumed.paused
        rows = await upsert(store, decl(paused=True))  # the same declared value: operator wins
        assert not rows["nightly"].paused
        # The declared value changes to unpaused: it applies, from the first tick after now.
        rows = await upsert(store, decl(paused=False, first_fire_ms=T0 + 2 * MINUTE))
        assert not rows["nightly"].paused and rows["nightly"].next_fire_ms == T0 + 2 * MINUTE
        rows = await upsert(store, decl(paused=True))
        assert rows["nightly"].paused
        rows = await upsert(store, decl(paused=False, first_fire_ms=T0 + 3 * MINUTE))
        assert not rows["nightly"].paused and rows["nightly"].next_fire_ms == T0 + 3 * MINUTE

    async def test_undeclared_schedules_are_marked_and_kept(self, store: Store) -> None:
        await upsert(store, decl("a"), decl("b"))
        rows = await upsert(store, decl("a"), now=T0 + 10)
        assert set(rows) == {"a", "b"}
        assert (rows["a"].undeclared_since_ms, rows["b"].undeclared_since_ms) == (None, T0 + 10)
        rows = await upsert(store, now=T0 + 20)  # a worker declaring none: both undeclared
        assert (rows["a"].undeclared_since_ms, rows["b"].undeclared_since_ms) == (T0 + 20, T0 + 10)
        rows = await upsert(store, decl("b"), now=T0 + 30)
        assert (rows["a"].undeclared_since_ms, rows["b"].undeclared_since_ms) == (T0 + 20, None)

    async def test_concurrent_upserts_of_one_name_store_one_row(self, store: Store) -> None:
        await asyncio.gather(*(upsert(store, decl(), decl("other")) for _ in range(8)))
        rows = await store.schedules_list(SchedulesList())
        assert [r.name for r in rows] == ["nightly", "other"]
        assert rows[0].version == 1


class SchedulesListConformance:
    async def test_all_or_named_by_name(self, store: Store) -> None:
        assert await store.schedules_list(SchedulesList()) == []
        await upsert(store, decl("b"), decl("a"), decl("c"))
        assert [r.name for r in await store.schedules_list(SchedulesList())] == ["a", "b", "c"]
        named = await store.schedules_list(SchedulesList(["c", "a", "zz"]))
        assert [r.name for r in named] == ["a", "c"]


class SchedulesFireConformance:
    """`schedules_fire`: the compare-and-set, and its tasks in the same transaction."""

    async def test_a_firing_inserts_its_tasks_and_advances(self, store: Store) -> None:
        row = (await upsert(store, decl()))["nightly"]
        tick = T0 + MINUTE
        out = await fire(store, row, [tick], tick + MINUTE, now=tick)
        assert out.status is FireStatus.FIRED and out.row is not None
        assert [o.status for o in out.inserted] == [InsertStatus.INSERTED]
        assert (out.row.next_fire_ms, out.row.last_tick_ms, out.row.last_fired_at_ms) == (
            tick + MINUTE,
            tick,
            tick,
        )
        assert out.row.fired == 1
        assert await stored_tasks(store) == 1

    async def test_a_stale_firing_inserts_nothing(self, store: Store) -> None:
        row = (await upsert(store, decl()))["nightly"]
        tick = T0 + MINUTE
        assert (await fire(store, row, [tick], tick + MINUTE, now=tick)).status is FireStatus.FIRED
        out = await fire(store, row, [tick], tick + MINUTE, now=tick)  # the same expectation
        assert out.status is FireStatus.STALE and out.row is not None
        assert out.inserted == () and out.row.fired == 1
        assert await stored_tasks(store) == 1

    async def test_a_redeclared_definition_makes_a_firing_stale(self, store: Store) -> None:
        row = (await upsert(store, decl()))["nightly"]
        await upsert(store, decl(definition="d2", payload=b"2"))
        out = await fire(store, row, [T0 + MINUTE], T0 + 2 * MINUTE, now=T0 + MINUTE)
        assert out.status is FireStatus.STALE and await stored_tasks(store) == 0

    async def test_paused_and_missing(self, store: Store) -> None:
        row = (await upsert(store, decl(paused=True)))["nightly"]
        out = await fire(store, row, [T0 + MINUTE], T0 + 2 * MINUTE, now=T0 + MINUTE)
        assert out.status is FireStatus.PAUSED and out.row is not None and out.row.paused
        out = await fire(store, replace(row, name="nope"), [T0], T0 + MINUTE, now=T0)
        assert (out.status, out.row) == (FireStatus.MISSING, None)
        assert await stored_tasks(store) == 0

    async def test_an_empty_firing_only_advances(self, store: Store) -> None:
        row = (await upsert(store, decl(misfire="skip")))["nightly"]
        out = await fire(store, row, [], T0 + 9 * MINUTE, now=T0 + 8 * MINUTE)
        assert out.status is FireStatus.FIRED and out.row is not None
        assert (out.row.next_fire_ms, out.row.last_tick_ms, out.row.fired) == (
            T0 + 9 * MINUTE,
            None,
            0,
        )

    async def test_a_tick_already_held_is_skipped_not_counted(self, store: Store) -> None:
        row = (await upsert(store, decl()))["nightly"]
        tick = T0 + MINUTE
        await store.tasks_insert(TasksInsert(tick_tasks("nightly", [tick]), "skip", T0))
        out = await fire(store, row, [tick, tick + MINUTE], tick + 2 * MINUTE, now=tick + MINUTE)
        assert [o.status for o in out.inserted] == [InsertStatus.SKIPPED, InsertStatus.INSERTED]
        assert out.row is not None and out.row.fired == 1
        assert await stored_tasks(store) == 2

    async def test_concurrent_firings_of_one_tick_insert_once(self, store: Store) -> None:
        row = (await upsert(store, decl()))["nightly"]
        tick = T0 + MINUTE
        outs = await asyncio.gather(
            *(fire(store, row, [tick], tick + MINUTE, now=tick) for _ in range(10))
        )
        assert sorted(o.status.value for o in outs) == ["fired"] + ["stale"] * 9
        assert await stored_tasks(store) == 1


class SchedulesSetPausedConformance:
    async def test_pause_and_resume(self, store: Store) -> None:
        await upsert(store, decl())
        row = await store.schedules_set_paused(SchedulePause("nightly", True, None, T0 + 1))
        assert row is not None and row.paused and row.next_fire_ms == T0 + MINUTE
        again = await store.schedules_set_paused(SchedulePause("nightly", True, None, T0 + 2))
        assert again == row  # pausing a paused schedule changes nothing
        row = await store.schedules_set_paused(
            SchedulePause("nightly", False, T0 + 60 * MINUTE, T0 + 3)
        )
        assert row is not None and not row.paused and row.next_fire_ms == T0 + 60 * MINUTE
        same = await store.schedules_set_paused(SchedulePause("nightly", False, T0, T0 + 4))
        assert same is not None and same.next_fire_ms == T0 + 60 * MINUTE  # not paused: kept

    async def test_unknown_schedule(self, store: Store) -> None:
        assert await store.schedules_set_paused(SchedulePause("nope", True)) is None
