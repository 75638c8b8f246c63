"""The PostgreSQL store's operator operations: `worker_heartbeat`, `workers_list`,
`workers_prune`, `queue_set_paused`, `queues_list`, `tasks_purge`.

The claim statements (`_sql.Queries.ready_filter`) exclude paused queues themselves, so a
pause holds for every process from the moment it commits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import AsyncConnection

from ..._states import State
from ..contract.admin import (
    QueueRow,
    QueueSetPaused,
    QueuesList,
    TasksPurge,
    WorkerHeartbeat,
    WorkerRow,
    WorkersList,
    WorkersPage,
    WorkersPrune,
)
from ._compact import compact_statements
from ._schema import quote_schema
from ._sql import ACTIVE_SQL, CLOCK, NOW
from ._text import dec, enc

T = TypeVar("T")
Conn = AsyncConnection[Any]


_WORKER_COLUMNS = (
    "id, host, pid, version, queues, kinds, concurrency, started_at, last_seen_at, "
    "heartbeat_ms, in_flight, stopped_at"
)


class AdminQueries:
    """Every statement of the operator operations, for one schema."""

    def __init__(self, schema: str) -> None:
        s = quote_schema(schema)
        now = f"coalesce(%(now)s::bigint, {CLOCK})"
        self.now = f"SELECT {now}"
        self.worker_heartbeat = f"""
WITH {NOW}
INSERT INTO {s}.workers ({_WORKER_COLUMNS})
SELECT %(id)s, %(host)s, %(pid)s, %(version)s, %(queues)s, %(kinds)s, %(concurrency)s,
    %(started)s, c.now, %(every)s, %(in_flight)s,
    CASE WHEN %(stopped)s THEN c.now END
FROM c
ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
    version = excluded.version, queues = excluded.queues, kinds = excluded.kinds,
    concurrency = excluded.concurrency, started_at = excluded.started_at,
    last_seen_at = excluded.last_seen_at, heartbeat_ms = excluded.heartbeat_ms,
    in_flight = excluded.in_flight, stopped_at = excluded.stopped_at
"""
        self.workers_list = f"SELECT {_WORKER_COLUMNS} FROM {s}.workers ORDER BY id"
        self.workers_prune = (
            f"DELETE FROM {s}.workers WHERE last_seen_at < {now} - %(older)s::bigint"
        )
        self.queue_paused = f"SELECT paused FROM {s}.queues WHERE name = %(name)s FOR UPDATE"
        self.queue_set_paused = f"""
INSERT INTO {s}.queues (name, paused, updated_at) VALUES (%(name)s, %(paused)s, {now})
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at
"""
        self.notify = "SELECT pg_notify(%(channel)s, '')"
        self.queue_counts = f"SELECT queue, state, count(*) FROM {s}.tasks GROUP BY queue, state"
        # The ready index holds only ready rows: this walks them, never the whole table.
        self.queue_oldest = (
            f"SELECT queue, min(updated_at) FROM {s}.tasks WHERE state = 'ready' GROUP BY queue"
        )
        self.queues_paused = f"SELECT name, paused FROM {s}.queues"
        active = f"IN ({ACTIVE_SQL})"
        guards = (
            f"(t.parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.tasks p "
            f"WHERE p.id = t.parent_id AND p.state {active})) "
            f"AND (t.workflow_id IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.tasks w "
            f"WHERE w.workflow_id = t.workflow_id AND w.state {active})) "
            f"AND (t.children_total = 0 OR NOT EXISTS (SELECT 1 FROM {s}.tasks k "
            f"WHERE k.parent_id = t.id AND k.state {active})) "
            f"AND (NOT t.has_dependents OR NOT EXISTS (SELECT 1 FROM {s}.deps d "
            f"JOIN {s}.tasks x ON x.id = d.task_id WHERE d.upstream_id = t.id "
            f"AND x.state {active}))"
        )
        # One statement, one transaction: the batch and everything it owns. Pairs of
        # deletes on one table are kept disjoint (a row is never deleted twice).
        self.tasks_purge = f"""
WITH pick AS MATERIALIZED (
    SELECT t.seq, t.id, t.workflow_id FROM {s}.tasks t
    WHERE t.finished_at IS NOT NULL AND t.finished_at < %(before)s
        AND t.state = ANY(%(states)s::text[]) AND {guards}
    ORDER BY t.finished_at LIMIT %(limit)s
    FOR UPDATE OF t SKIP LOCKED
),
sus AS (SELECT id FROM {s}.suspensions WHERE task_id IN (SELECT id FROM pick)),
d1 AS (DELETE FROM {s}.signals WHERE suspension_id IN (SELECT id FROM sus)),
d2 AS (DELETE FROM {s}.signals WHERE task_id IN (SELECT id FROM pick)
    AND suspension_id IS NULL),
d3 AS (DELETE FROM {s}.suspensions WHERE id IN (SELECT id FROM sus)),
d4 AS (DELETE FROM {s}.waitpoints WHERE task_id IN (SELECT id FROM pick)),
d5 AS (DELETE FROM {s}.frames WHERE task_id IN (SELECT id FROM pick)),
d6 AS (DELETE FROM {s}.frame_seqs WHERE task_id IN (SELECT id FROM pick)),
d7 AS (DELETE FROM {s}.events WHERE task_id IN (SELECT id FROM pick)),
d8 AS (DELETE FROM {s}.results WHERE task_id IN (SELECT id FROM pick)),
d9 AS (DELETE FROM {s}.deps WHERE task_id IN (SELECT id FROM pick)),
d10 AS (DELETE FROM {s}.deps WHERE upstream_id IN (SELECT id FROM pick)
    AND task_id NOT IN (SELECT id FROM pick)),
dw AS (DELETE FROM {s}.workflows wf WHERE wf.id IN (SELECT workflow_id FROM pick)
    AND NOT EXISTS (SELECT 1 FROM {s}.tasks x WHERE x.workflow_id = wf.id
        AND x.seq NOT IN (SELECT seq FROM pick))),
dt AS (DELETE FROM {s}.tasks WHERE seq IN (SELECT seq FROM pick) RETURNING 1)
SELECT count(*) FROM dt
"""
        compact_statements(self)


def _worker_row(r: Sequence[Any]) -> WorkerRow:
    return WorkerRow(
        worker_id=str(r[0]),
        host=str(r[1]),
        pid=int(r[2]),
        version=str(r[3]),
        queues=tuple(json.loads(r[4])),
        kinds=tuple(json.loads(r[5])),
        concurrency=int(r[6]),
        started_at_ms=int(r[7]),
        last_seen_ms=int(r[8]),
        heartbeat_ms=int(r[9]),
        in_flight=int(r[10]),
        stopped_at_ms=None if r[11] is None else int(r[11]),
    )


class PostgresAdminMixin:
    """The `AdminStore` operations of `PostgresStore`."""

    if TYPE_CHECKING:
        _aq: AdminQueries
        work_channel: str

        async def _run(self, job: Callable[[Conn], Awaitable[T]], *, idempotent: bool) -> T: ...

    async def worker_heartbeat(self, p: WorkerHeartbeat) -> None:
        params = {
            "now": p.now_ms,
            "id": p.worker_id,
            "host": p.host,
            "pid": p.pid,
            "version": p.version,
            "queues": json.dumps(list(p.queues)),
            "kinds": json.dumps(list(p.kinds)),
            "concurrency": p.concurrency,
            "started": p.started_at_ms,
            "every": p.heartbeat_ms,
            "in_flight": p.in_flight,
            "stopped": p.stopped,
        }

        async def job(conn: Conn) -> None:
            await conn.execute(self._aq.worker_heartbeat, params)

        await self._run(job, idempotent=True)

    async def workers_list(self, p: WorkersList) -> WorkersPage:
        async def job(conn: Conn) -> WorkersPage:
            row = await (await conn.execute(self._aq.now, {"now": p.now_ms})).fetchone()
            assert row is not None
            rows = await (await conn.execute(self._aq.workers_list)).fetchall()
            return WorkersPage(int(row[0]), [_worker_row(r) for r in rows])

        return await self._run(job, idempotent=True)

    async def workers_prune(self, p: WorkersPrune) -> int:
        async def job(conn: Conn) -> int:
            cur = await conn.execute(
                self._aq.workers_prune, {"now": p.now_ms, "older": p.older_than_ms}
            )
            return cur.rowcount

        return await self._run(job, idempotent=True)

    async def queue_set_paused(self, p: QueueSetPaused) -> bool:
        name = enc(p.queue)

        async def job(conn: Conn) -> bool:
            async with conn.transaction():
                cur = await conn.execute(self._aq.queue_paused, {"name": name})
                row = await cur.fetchone()
                before = bool(row[0]) if row is not None else False
                await conn.execute(
                    self._aq.queue_set_paused,
                    {"name": name, "paused": p.paused, "now": p.now_ms},
                )
                if not p.paused:  # its ready tasks are claimable again: wake workers
                    await conn.execute(self._aq.notify, {"channel": self.work_channel})
            return before != p.paused

        return await self._run(job, idempotent=True)

    async def queues_list(self, p: QueuesList) -> list[QueueRow]:
        async def job(conn: Conn) -> list[QueueRow]:
            row = await (await conn.execute(self._aq.now, {"now": p.now_ms})).fetchone()
            assert row is not None
            now = int(row[0])
            counts: dict[str, dict[State, int]] = defaultdict(dict)
            for queue, state, n in await (await conn.execute(self._aq.queue_counts)).fetchall():
                counts[dec(queue)][State(state)] = int(n)
            cur = await conn.execute(self._aq.queue_oldest)
            oldest = {dec(q): int(at) for q, at in await cur.fetchall()}
            cur = await conn.execute(self._aq.queues_paused)
            paused = {dec(n): bool(v) for n, v in await cur.fetchall()}
            return [
                QueueRow(
                    name=name,
                    paused=paused.get(name, False),
                    counts=counts.get(name, {}),
                    oldest_ready_age_ms=(max(0, now - oldest[name]) if name in oldest else None),
                )
                for name in sorted(set(counts) | set(paused))
            ]

        return await self._run(job, idempotent=True)

    async def tasks_purge(self, p: TasksPurge) -> int:
        params = {
            "before": p.before_ms,
            "states": [State(s).value for s in p.states],
            "limit": p.limit,
        }

        async def job(conn: Conn) -> int:
            row = await (await conn.execute(self._aq.tasks_purge, params)).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._run(job, idempotent=True)
