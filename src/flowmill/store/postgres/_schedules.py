"""Schedules in the PostgreSQL store (see `contract.schedules`).

A firing is one transaction: an UPDATE that compares and sets `next_fire_ms` (and `version`)
on the schedule's row, then the insert of its tasks. Concurrent firings of one schedule
queue on that row's lock; the first commits, and the UPDATE of each of the others, judged
again on the committed row (READ COMMITTED), matches nothing: they insert nothing. An
upsert writes each declared row with INSERT ... ON CONFLICT, in name order, so concurrent
starting workers never deadlock on one another's rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import AsyncConnection

from ..contract.schedules import (
    FireOutcome,
    FireStatus,
    ScheduleFire,
    SchedulePause,
    ScheduleRow,
    SchedulesList,
    SchedulesUpsert,
)
from ..contract.tasks import InsertOutcome, InsertStatus, TasksInsert
from ._compact import compact_statements
from ._insert import insert_keyed
from ._schema import quote_schema
from ._sql import CLOCK
from ._text import dec, enc, enc_all

if TYPE_CHECKING:
    from ._sql import Queries

T = TypeVar("T")
Conn = AsyncConnection[Any]

_COLUMNS = (
    "name, kind, trigger, tz, misfire, jitter_ms, payload, queue, priority, max_attempts, "
    "retry_policy, timeout_ms, definition, version, paused, next_fire_ms, last_tick_ms, "
    "last_fired_at_ms, fired, declared_at_ms, undeclared_since_ms, created_at"
)


class ScheduleQueries:
    """Every statement of the schedule operations, for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        self.clock = f"SELECT coalesce(%(now)s::bigint, {CLOCK})"
        self.select_all = f"SELECT {_COLUMNS} FROM {s}.schedules ORDER BY name"
        self.select_named = (
            f"SELECT {_COLUMNS} FROM {s}.schedules WHERE name = ANY(%(names)s) ORDER BY name"
        )
        # The declared definition replaces the stored one; see `SchedulesUpsert`.
        self.upsert = (
            f"INSERT INTO {s}.schedules AS t (name, kind, trigger, tz, misfire, jitter_ms, "
            "payload, queue, priority, max_attempts, retry_policy, timeout_ms, definition, "
            "version, paused, declared_paused, next_fire_ms, fired, declared_at_ms, "
            "created_at, updated_at) VALUES (%(name)s, %(kind)s, %(trigger)s, %(tz)s, "
            "%(misfire)s, %(jitter_ms)s, %(payload)s, %(queue)s, %(priority)s, "
            "%(max_attempts)s, %(retry_policy)s, %(timeout_ms)s, %(definition)s, 1, "
            "%(paused)s, %(paused)s, %(first)s, 0, %(now)s, %(now)s, %(now)s) "
            "ON CONFLICT (name) DO UPDATE SET "
            "version = t.version + CASE WHEN t.definition <> EXCLUDED.definition "
            "  THEN 1 ELSE 0 END, "
            "next_fire_ms = CASE WHEN t.trigger <> EXCLUDED.trigger "
            "  OR t.tz IS DISTINCT FROM EXCLUDED.tz "
            "  OR (t.declared_paused <> EXCLUDED.declared_paused AND NOT EXCLUDED.paused) "
            "  THEN EXCLUDED.next_fire_ms ELSE t.next_fire_ms END, "
            "paused = CASE WHEN t.declared_paused <> EXCLUDED.declared_paused "
            "  THEN EXCLUDED.paused ELSE t.paused END, "
            "declared_paused = EXCLUDED.declared_paused, kind = EXCLUDED.kind, "
            "trigger = EXCLUDED.trigger, tz = EXCLUDED.tz, misfire = EXCLUDED.misfire, "
            "jitter_ms = EXCLUDED.jitter_ms, payload = EXCLUDED.payload, "
            "queue = EXCLUDED.queue, priority = EXCLUDED.priority, "
            "max_attempts = EXCLUDED.max_attempts, retry_policy = EXCLUDED.retry_policy, "
            "timeout_ms = EXCLUDED.timeout_ms, definition = EXCLUDED.definition, "
            "declared_at_ms = EXCLUDED.declared_at_ms, undeclared_since_ms = NULL, "
            "updated_at = EXCLUDED.updated_at"
        )
        self.undeclared = (
            f"UPDATE {s}.schedules SET undeclared_since_ms = %(now)s, updated_at = %(now)s "
            "WHERE undeclared_since_ms IS NULL AND NOT (name = ANY(%(names)s))"
        )
        self.advance = (
            f"UPDATE {s}.schedules SET next_fire_ms = %(next)s, updated_at = %(now)s "
            "WHERE name = %(name)s AND version = %(version)s AND next_fire_ms = %(expected)s "
            "AND NOT paused RETURNING name"
        )
        self.fired = (
            f"UPDATE {s}.schedules SET last_tick_ms = %(tick)s::bigint, "
            "last_fired_at_ms = %(now)s, fired = fired + %(inserted)s WHERE name = %(name)s"
        )
        self.pause = (
            f"UPDATE {s}.schedules SET paused = true, updated_at = %(now)s "
            "WHERE name = %(name)s AND NOT paused"
        )
        self.resume = (
            f"UPDATE {s}.schedules SET paused = false, updated_at = %(now)s, "
            "next_fire_ms = coalesce(%(next)s::bigint, next_fire_ms) "
            "WHERE name = %(name)s AND paused"
        )
        compact_statements(self)


def _row(r: tuple[Any, ...]) -> ScheduleRow:
    return ScheduleRow(
        name=dec(r[0]),
        kind=dec(r[1]),
        trigger=r[2],
        tz=r[3],
        misfire=r[4],
        jitter_ms=int(r[5]),
        payload=bytes(r[6]),
        queue=dec(r[7]),
        priority=r[8],
        max_attempts=r[9],
        retry_policy=bytes(r[10]),
        timeout_ms=None if r[11] is None else int(r[11]),
        definition=r[12],
        version=int(r[13]),
        paused=bool(r[14]),
        next_fire_ms=int(r[15]),
        last_tick_ms=None if r[16] is None else int(r[16]),
        last_fired_at_ms=None if r[17] is None else int(r[17]),
        fired=int(r[18]),
        declared_at_ms=int(r[19]),
        undeclared_since_ms=None if r[20] is None else int(r[20]),
        created_at_ms=int(r[21]),
    )


class PostgresSchedulesMixin:
    """The `SchedulesStore` operations of `PostgresStore`."""

    if TYPE_CHECKING:
        _schq: ScheduleQueries
        _q: Queries
        work_channel: str

        async def _run(self, job: Callable[[Conn], Awaitable[T]], *, idempotent: bool) -> T: ...

    async def _schedule_now(self, conn: Conn, now_ms: int | None) -> int:
        row = await (await conn.execute(self._schq.clock, {"now": now_ms})).fetchone()
        assert row is not None
        return int(row[0])

    async def _schedules_select(self, conn: Conn, names: list[str]) -> list[ScheduleRow]:
        if names:
            cur = await conn.execute(self._schq.select_named, {"names": enc_all(names)})
        else:
            cur = await conn.execute(self._schq.select_all)
        return [_row(r) for r in await cur.fetchall()]

    async def schedules_upsert(self, p: SchedulesUpsert) -> list[ScheduleRow]:
        decls = sorted(p.schedules, key=lambda d: d.name)

        async def job(conn: Conn) -> list[ScheduleRow]:
            async with conn.transaction():
                now = await self._schedule_now(conn, p.now_ms)
                for d in decls:
                    await conn.execute(
                        self._schq.upsert,
                        {
                            "name": enc(d.name),
                            "kind": enc(d.kind),
                            "trigger": d.trigger,
                            "tz": d.tz,
                            "misfire": d.misfire,
                            "jitter_ms": d.jitter_ms,
                            "payload": d.payload,
                            "queue": enc(d.queue),
                            "priority": d.priority,
                            "max_attempts": d.max_attempts,
                            "retry_policy": d.retry_policy,
                            "timeout_ms": d.timeout_ms,
                            "definition": d.definition,
                            "paused": d.paused,
                            "first": d.first_fire_ms,
                            "now": now,
                        },
                    )
                await conn.execute(
                    self._schq.undeclared,
                    {"now": now, "names": enc_all([d.name for d in decls])},
                )
                return await self._schedules_select(conn, [])

        return await self._run(job, idempotent=True)

    async def schedules_list(self, p: SchedulesList) -> list[ScheduleRow]:
        names = list(p.names)
        return await self._run(lambda conn: self._schedules_select(conn, names), idempotent=True)

    async def schedules_fire(self, p: ScheduleFire) -> FireOutcome:
        async def job(conn: Conn) -> FireOutcome:
            async with conn.transaction():
                now = await self._schedule_now(conn, p.now_ms)
                cur = await conn.execute(
                    self._schq.advance,
                    {
                        "next": p.next_fire_ms,
                        "now": now,
                        "name": enc(p.name),
                        "version": p.expected_version,
                        "expected": p.expected_next_ms,
                    },
                )
                if await cur.fetchone() is None:
                    found = await self._schedules_select(conn, [p.name])
                    if not found:
                        return FireOutcome(FireStatus.MISSING, None)
                    status = FireStatus.PAUSED if found[0].paused else FireStatus.STALE
                    return FireOutcome(status, found[0])
                outcomes: list[InsertOutcome] = []
                if p.tasks:
                    tasks = list(p.tasks)
                    outcomes = await insert_keyed(
                        conn,
                        q=self._q,
                        work_channel=self.work_channel,
                        tasks=tasks,
                        p=TasksInsert(tasks, "skip", now),
                    )
                    inserted = sum(o.status is InsertStatus.INSERTED for o in outcomes)
                    await conn.execute(
                        self._schq.fired,
                        {
                            "tick": p.last_tick_ms,
                            "now": now,
                            "inserted": inserted,
                            "name": enc(p.name),
                        },
                    )
                (row,) = await self._schedules_select(conn, [p.name])
                return FireOutcome(FireStatus.FIRED, row, tuple(outcomes))

        # Not idempotent: a lost reply after commit must not fire again blindly (the caller
        # reads the schedule again; its compare-and-set refuses a second firing anyway).
        return await self._run(job, idempotent=False)

    async def schedules_set_paused(self, p: SchedulePause) -> ScheduleRow | None:
        async def job(conn: Conn) -> ScheduleRow | None:
            async with conn.transaction():
                now = await self._schedule_now(conn, p.now_ms)
                if p.paused:
                    await conn.execute(self._schq.pause, {"now": now, "name": enc(p.name)})
                else:
                    await conn.execute(
                        self._schq.resume,
                        {"now": now, "name": enc(p.name), "next": p.next_fire_ms},
                    )
                found = await self._schedules_select(conn, [p.name])
                return found[0] if found else None

        return await self._run(job, idempotent=True)
