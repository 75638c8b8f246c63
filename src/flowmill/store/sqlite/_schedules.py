"""Schedules in the SQLite store (see `contract.schedules`).

Every write runs on the single writer thread in its own savepoint (and across processes
under SQLite's write lock), so a firing's compare-and-set and the insert of its tasks
commit together or not at all.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from ..contract.schedules import (
    FireOutcome,
    FireStatus,
    ScheduleDecl,
    ScheduleFire,
    SchedulePause,
    ScheduleRow,
    SchedulesList,
    SchedulesUpsert,
)
from ..contract.tasks import InsertStatus, TasksInsert
from ._clock import now_or_wall
from ._insert import tasks_insert
from ._sql import marks
from ._threads import Job, Tx

_COLUMNS = (
    "name, kind, trigger, tz, misfire, jitter_ms, payload, queue, priority, max_attempts, "
    "retry_policy, timeout_ms, definition, version, paused, next_fire_ms, last_tick_ms, "
    "last_fired_at_ms, fired, declared_at_ms, undeclared_since_ms, created_at"
)

_INSERT_SQL = (
    "INSERT INTO fm_schedules (name, kind, trigger, tz, misfire, jitter_ms, payload, queue, "
    "priority, max_attempts, retry_policy, timeout_ms, definition, version, paused, "
    "declared_paused, next_fire_ms, fired, declared_at_ms, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, 0, ?, ?, ?)"
)

# The stored definition becomes the declared one; see `SchedulesUpsert` for each rule. The
# CASEs read the row's old values (SQLite evaluates every SET expression on the old row).
_UPDATE_SQL = (
    "UPDATE fm_schedules SET "
    "version = version + (definition <> :definition), "
    "next_fire_ms = CASE WHEN trigger <> :trigger OR tz IS NOT :tz "
    "  OR (declared_paused <> :paused AND NOT :paused) THEN :first ELSE next_fire_ms END, "
    "paused = CASE WHEN declared_paused <> :paused THEN :paused ELSE paused END, "
    "declared_paused = :paused, kind = :kind, trigger = :trigger, tz = :tz, "
    "misfire = :misfire, jitter_ms = :jitter_ms, payload = :payload, queue = :queue, "
    "priority = :priority, max_attempts = :max_attempts, retry_policy = :retry_policy, "
    "timeout_ms = :timeout_ms, definition = :definition, declared_at_ms = :now, "
    "undeclared_since_ms = NULL, updated_at = :now WHERE name = :name"
)


def _row(r: tuple[Any, ...]) -> ScheduleRow:
    return ScheduleRow(
        name=r[0],
        kind=r[1],
        trigger=r[2],
        tz=r[3],
        misfire=r[4],
        jitter_ms=r[5],
        payload=bytes(r[6]),
        queue=r[7],
        priority=r[8],
        max_attempts=r[9],
        retry_policy=bytes(r[10]),
        timeout_ms=r[11],
        definition=r[12],
        version=r[13],
        paused=bool(r[14]),
        next_fire_ms=r[15],
        last_tick_ms=r[16],
        last_fired_at_ms=r[17],
        fired=r[18],
        declared_at_ms=r[19],
        undeclared_since_ms=r[20],
        created_at_ms=r[21],
    )


def _select(c: sqlite3.Connection, names: list[str]) -> list[ScheduleRow]:
    if names:
        rows = c.execute(
            f"SELECT {_COLUMNS} FROM fm_schedules WHERE name IN ({marks(len(names))}) "
            "ORDER BY name",
            names,
        ).fetchall()
    else:
        rows = c.execute(f"SELECT {_COLUMNS} FROM fm_schedules ORDER BY name").fetchall()
    return [_row(r) for r in rows]


def _upsert_one(c: sqlite3.Connection, d: ScheduleDecl, now: int) -> None:
    values = {
        "name": d.name,
        "kind": d.kind,
        "trigger": d.trigger,
        "tz": d.tz,
        "misfire": d.misfire,
        "jitter_ms": d.jitter_ms,
        "payload": d.payload,
        "queue": d.queue,
        "priority": d.priority,
        "max_attempts": d.max_attempts,
        "retry_policy": d.retry_policy,
        "timeout_ms": d.timeout_ms,
        "definition": d.definition,
        "paused": d.paused,
        "first": d.first_fire_ms,
        "now": now,
    }
    if c.execute(_UPDATE_SQL, values).rowcount:
        return
    c.execute(
        _INSERT_SQL,
        (
            d.name,
            d.kind,
            d.trigger,
            d.tz,
            d.misfire,
            d.jitter_ms,
            d.payload,
            d.queue,
            d.priority,
            d.max_attempts,
            d.retry_policy,
            d.timeout_ms,
            d.definition,
            d.paused,
            d.paused,
            d.first_fire_ms,
            now,
            now,
            now,
        ),
    )


def schedules_upsert(c: sqlite3.Connection, p: SchedulesUpsert) -> list[ScheduleRow]:
    now = now_or_wall(p.now_ms)
    names = [d.name for d in p.schedules]
    for d in p.schedules:
        _upsert_one(c, d, now)
    c.execute(
        "UPDATE fm_schedules SET undeclared_since_ms = ?, updated_at = ? "
        f"WHERE undeclared_since_ms IS NULL AND name NOT IN ({marks(len(names))})",
        (now, now, *names),
    )
    return _select(c, [])


def schedules_fire(c: sqlite3.Connection, tx: Tx, p: ScheduleFire) -> FireOutcome:
    now = now_or_wall(p.now_ms)
    advanced = c.execute(
        "UPDATE fm_schedules SET next_fire_ms = ?, updated_at = ? "
        "WHERE name = ? AND version = ? AND next_fire_ms = ? AND NOT paused",
        (p.next_fire_ms, now, p.name, p.expected_version, p.expected_next_ms),
    ).rowcount
    if not advanced:
        found = _select(c, [p.name])
        if not found:
            return FireOutcome(FireStatus.MISSING, None)
        status = FireStatus.PAUSED if found[0].paused else FireStatus.STALE
        return FireOutcome(status, found[0])
    outcomes: tuple[Any, ...] = ()
    if p.tasks:
        outcomes = tuple(tasks_insert(c, tx, TasksInsert(p.tasks, "skip", now)))
        inserted = sum(o.status is InsertStatus.INSERTED for o in outcomes)
        c.execute(
            "UPDATE fm_schedules SET last_tick_ms = ?, last_fired_at_ms = ?, "
            "fired = fired + ? WHERE name = ?",
            (p.last_tick_ms, now, inserted, p.name),
        )
    return FireOutcome(FireStatus.FIRED, _select(c, [p.name])[0], outcomes)


def schedules_set_paused(c: sqlite3.Connection, p: SchedulePause) -> ScheduleRow | None:
    now = now_or_wall(p.now_ms)
    if p.paused:
        c.execute(
            "UPDATE fm_schedules SET paused = 1, updated_at = ? WHERE name = ? AND NOT paused",
            (now, p.name),
        )
    else:
        c.execute(
            "UPDATE fm_schedules SET paused = 0, updated_at = ?, "
            "next_fire_ms = coalesce(?, next_fire_ms) WHERE name = ? AND paused",
            (now, p.next_fire_ms, p.name),
        )
    found = _select(c, [p.name])
    return found[0] if found else None


class SQLiteSchedulesMixin:
    """The `SchedulesStore` operations of `SQLiteStore`."""

    if TYPE_CHECKING:

        async def _write(self, job: Job) -> Any: ...

        async def _read(self, job: Job) -> Any: ...

    async def schedules_upsert(self, p: SchedulesUpsert) -> list[ScheduleRow]:
        result: list[ScheduleRow] = await self._write(lambda c, tx: schedules_upsert(c, p))
        return result

    async def schedules_list(self, p: SchedulesList) -> list[ScheduleRow]:
        names = list(p.names)
        result: list[ScheduleRow] = await self._read(lambda c, tx: _select(c, names))
        return result

    async def schedules_fire(self, p: ScheduleFire) -> FireOutcome:
        result: FireOutcome = await self._write(lambda c, tx: schedules_fire(c, tx, p))
        return result

    async def schedules_set_paused(self, p: SchedulePause) -> ScheduleRow | None:
        result: ScheduleRow | None = await self._write(lambda c, tx: schedules_set_paused(c, p))
        return result
