"""Budgets, rate limits and concurrency caps in the PostgreSQL store.

A usage report locks its task row FOR SHARE (the fence) and the budget row FOR UPDATE, then
reads the dedup keys in a new statement: concurrent reports of one budget queue on the
row lock, and each sees everything the ones before it committed. A limited claim upserts
and locks its limit rows FOR UPDATE in key order, then counts running tasks and spends
tokens: claims sharing a limit run one after another, so no cap or rate is exceeded
across any number of workers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import AsyncConnection

from ...errors import LeaseLost, UnknownBudget
from .._common.budget_rules import (
    Allowance,
    Budget,
    Key,
    Walk,
    check_dimensions,
    check_limits,
    default_burst,
    dumps,
    loads_amounts,
    loads_names,
    new_budget,
)
from ..contract.budgets import (
    BudgetDefine,
    BudgetReset,
    BudgetRow,
    BudgetUsage,
    ClaimedRows,
    UsageReport,
    UsageStatus,
)
from ..contract.tasks import TasksClaim
from ._compact import compact_statements
from ._rows import claimed_row
from ._schema import quote_schema
from ._sql import CLOCK, NOW
from ._text import dec, enc, enc_all, enc_opt

if TYPE_CHECKING:
    from ._sql import Queries

T = TypeVar("T")
Conn = AsyncConnection[Any]

_COLUMNS = "id, hard, soft, usage, reset_every, window_start, breached"


class BudgetQueries:
    """Every statement of the budget and limited-claim operations, for one schema."""

    def __init__(self, schema: str, q: Queries) -> None:
        s = quote_schema(schema)
        self.clock = f"SELECT coalesce(%(now)s::bigint, {CLOCK})"
        self.lock = f"SELECT {_COLUMNS} FROM {s}.budgets WHERE id = %(id)s FOR UPDATE"
        self.fence = (
            f"SELECT 1 FROM {s}.tasks WHERE id = %(task)s AND lease_epoch = %(epoch)s "
            "AND state = 'running' FOR SHARE"
        )
        self.seen = (
            f"SELECT 1 FROM {s}.budget_reports WHERE budget_id = %(id)s AND dedup_key = %(key)s"
        )
        self.budget_define_insert = f"""
INSERT INTO {s}.budgets ({_COLUMNS}, created_at, updated_at)
VALUES (%(id)s, %(hard)s, %(soft)s, %(usage)s, %(every)s, %(start)s, %(breached)s, %(now)s,
    %(now)s)
ON CONFLICT (id) DO NOTHING RETURNING id
"""
        self.update = f"""
UPDATE {s}.budgets SET hard = %(hard)s, soft = %(soft)s, usage = %(usage)s,
    reset_every = %(every)s, window_start = %(start)s, breached = %(breached)s,
    updated_at = %(now)s
WHERE id = %(id)s
"""
        self.budget_report_usage = f"""
INSERT INTO {s}.budget_reports (budget_id, dedup_key, task_id, amounts, at)
VALUES (%(id)s, %(key)s, %(task)s, %(amounts)s, %(now)s)
"""
        self.ready = f"SELECT count(*) FROM {s}.tasks WHERE budget_id = %(id)s AND state = 'ready'"
        self.budgets_get = f"""
WITH {NOW}
SELECT {", ".join(f"b.{col}" for col in _COLUMNS.split(", "))},
    (SELECT count(*) FROM {s}.tasks t WHERE t.budget_id = b.id AND t.state = 'ready'), c.now
FROM {s}.budgets b, c
WHERE cardinality(%(ids)s::text[]) = 0 OR b.id = ANY(%(ids)s::text[])
ORDER BY b.id
"""
        self.notify = "SELECT pg_notify(%(channel)s, '')"

        # -- limited claims ---------------------------------------------------------------
        keys = "unnest(%(scopes)s::text[], %(names)s::text[])"
        self.limits_upsert = f"""
INSERT INTO {s}.limits (scope, name, tokens, refilled_at)
SELECT k.scope, k.name, k.tokens, %(now)s::bigint
FROM unnest(%(scopes)s::text[], %(names)s::text[], %(tokens)s::float8[]) AS k(scope, name, tokens)
ORDER BY k.scope, k.name
ON CONFLICT (scope, name) DO NOTHING
"""
        self.limits_lock = f"""
SELECT l.scope, l.name, l.tokens, l.refilled_at FROM {s}.limits l
WHERE (l.scope, l.name) IN (SELECT * FROM {keys} AS k(scope, name))
ORDER BY l.scope, l.name FOR UPDATE
"""
        self.running = f"""
SELECT 'kind', kind, count(*) FROM {s}.tasks
WHERE state = 'running' AND kind = ANY(%(kinds)s::text[]) GROUP BY kind
UNION ALL
SELECT 'queue', queue, count(*) FROM {s}.tasks
WHERE state = 'running' AND queue = ANY(%(queues)s::text[]) GROUP BY queue
"""
        self.candidates = f"""
WITH {NOW}
SELECT t.seq, t.kind, t.queue FROM {s}.tasks t
WHERE t.queue = ANY(%(queues)b::text[]) AND {q.ready_filter}
    AND t.seq <> ALL(%(chosen)s::bigint[])
ORDER BY t.priority DESC, t.seq LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED
"""
        self.limits_save = f"""
UPDATE {s}.limits l SET tokens = v.tokens, refilled_at = v.at
FROM unnest(%(scopes)s::text[], %(names)s::text[], %(tokens)s::float8[], %(ats)s::bigint[])
    AS v(scope, name, tokens, at)
WHERE l.scope = v.scope AND l.name = v.name
"""
        compact_statements(self)


def _budget(row: Sequence[Any]) -> Budget:
    return Budget(
        id=dec(row[0]),
        hard=loads_amounts(row[1]),
        soft=loads_amounts(row[2]),
        usage=loads_amounts(row[3]),
        reset_every_ms=None if row[4] is None else int(row[4]),
        window_start_ms=int(row[5]),
        breached=loads_names(row[6]),
    )


def _values(b: Budget, now: int) -> dict[str, Any]:
    return {
        "id": enc(b.id),
        "hard": dumps(b.hard),
        "soft": dumps(b.soft),
        "usage": dumps(b.usage),
        "every": b.reset_every_ms,
        "start": b.window_start_ms,
        "breached": None if b.breached is None else dumps(b.breached),
        "now": now,
    }


class PostgresBudgetsMixin:
    """The `BudgetsStore` operations of `PostgresStore`, and its limited claims."""

    if TYPE_CHECKING:
        _bq: BudgetQueries
        _q: Queries
        work_channel: str

        async def _run(self, job: Callable[[Conn], Awaitable[T]], *, idempotent: bool) -> T: ...

    async def _budget_now(self, conn: Conn, now_ms: int | None) -> int:
        if now_ms is not None:
            return now_ms
        row = await (await conn.execute(self._bq.clock, {"now": None})).fetchone()
        assert row is not None
        return int(row[0])

    async def _budget_locked(self, conn: Conn, budget_id: str) -> Budget | None:
        row = await (await conn.execute(self._bq.lock, {"id": enc(budget_id)})).fetchone()
        return None if row is None else _budget(row)

    async def _budget_ready(self, conn: Conn, budget_id: str) -> int:
        row = await (await conn.execute(self._bq.ready, {"id": enc(budget_id)})).fetchone()
        return 0 if row is None else int(row[0])

    async def budget_define(self, p: BudgetDefine) -> BudgetRow:
        check_limits(p.hard, p.soft)

        async def job(conn: Conn) -> BudgetRow:
            async with conn.transaction():
                now = await self._budget_now(conn, p.now_ms)
                b = await self._budget_locked(conn, p.budget_id)
                if b is None:
                    b = new_budget(p.budget_id, p.hard, p.soft, p.reset_every_ms, now)
                    cur = await conn.execute(self._bq.budget_define_insert, _values(b, now))
                    if await cur.fetchone() is not None:
                        return b.row(now, 0)
                    # Defined meanwhile by another caller: redefine that one.
                    b = await self._budget_locked(conn, p.budget_id)
                    assert b is not None
                was_breached = b.breached is not None
                b.redefine(p.hard, p.soft, p.reset_every_ms, now)
                await conn.execute(self._bq.update, _values(b, now))
                if was_breached and b.breached is None:
                    await conn.execute(self._bq.notify, {"channel": self.work_channel})
                return b.row(now, await self._budget_ready(conn, b.id))

        return await self._run(job, idempotent=True)

    async def budget_reset(self, p: BudgetReset) -> BudgetRow:
        async def job(conn: Conn) -> BudgetRow:
            async with conn.transaction():
                now = await self._budget_now(conn, p.now_ms)
                b = await self._budget_locked(conn, p.budget_id)
                if b is None:
                    raise UnknownBudget(p.budget_id)
                b.reset(now)
                await conn.execute(self._bq.update, _values(b, now))
                await conn.execute(self._bq.notify, {"channel": self.work_channel})
                return b.row(now, await self._budget_ready(conn, b.id))

        return await self._run(job, idempotent=True)

    async def budget_report_usage(self, p: BudgetUsage) -> UsageReport:
        amounts = check_dimensions(p.dimensions)  # bad input fails before any write
        key = enc_opt(p.dedup_key)

        async def job(conn: Conn) -> UsageReport:
            async with conn.transaction():
                now = await self._budget_now(conn, p.now_ms)
                fenced = await conn.execute(self._bq.fence, {"task": p.task_id, "epoch": p.epoch})
                if await fenced.fetchone() is None:
                    raise LeaseLost(p.task_id, p.epoch)
                b = await self._budget_locked(conn, p.budget_id)
                if b is None:
                    raise UnknownBudget(p.budget_id)
                # A new statement, under the lock: it sees every report committed before.
                if key is not None:
                    cur = await conn.execute(self._bq.seen, {"id": enc(b.id), "key": key})
                    if await cur.fetchone() is not None:
                        return UsageReport(UsageStatus.ALREADY_APPLIED, b.row(now, 0).usage)
                report = b.report(amounts, now)
                await conn.execute(self._bq.update, _values(b, now))
                if key is not None and report.status is not UsageStatus.HARD_BREACH:
                    await conn.execute(
                        self._bq.budget_report_usage,
                        {
                            "id": enc(b.id),
                            "key": key,
                            "task": p.task_id,
                            "amounts": dumps(amounts),
                            "now": now,
                        },
                    )
                return report

        # With a dedup key, a report whose reply was lost answers ALREADY_APPLIED when run
        # again; without one it could count twice.
        return await self._run(job, idempotent=p.dedup_key is not None)

    async def budgets_get(
        self, budget_ids: Sequence[str], now_ms: int | None = None
    ) -> list[BudgetRow]:
        params = {"now": now_ms, "ids": [enc(i) for i in dict.fromkeys(budget_ids)]}

        async def job(conn: Conn) -> list[BudgetRow]:
            rows = await (await conn.execute(self._bq.budgets_get, params)).fetchall()
            return [_budget(r).row(int(r[8]), int(r[7])) for r in rows]

        return await self._run(job, idempotent=True)

    # -- limited claims -------------------------------------------------------------------

    async def _claim_limited(self, p: TasksClaim) -> ClaimedRows:
        kinds = list(dict.fromkeys(p.kinds))
        queues = list(dict.fromkeys(p.queues))
        by_key = {(lim.scope, lim.name): lim for lim in p.limits}
        ordered = sorted(by_key)
        scopes = [scope for scope, _ in ordered]
        names = [enc(name) for _, name in ordered]
        starts = [
            float(default_burst(by_key[k])) if by_key[k].per_second is not None else 0.0
            for k in ordered
        ]

        async def job(conn: Conn) -> ClaimedRows:
            async with conn.transaction():
                now = await self._budget_now(conn, p.now_ms)
                keyed = {"scopes": scopes, "names": names}
                await conn.execute(self._bq.limits_upsert, {**keyed, "tokens": starts, "now": now})
                cur = await conn.execute(self._bq.limits_lock, keyed)
                buckets: dict[Key, tuple[float, int]] = {
                    (scope, dec(name)): (float(tokens), int(at))
                    for scope, name, tokens, at in await cur.fetchall()
                    if by_key[(scope, dec(name))].per_second is not None
                }
                # A new statement, under the locks: it sees the claims committed before.
                cur = await conn.execute(
                    self._bq.running,
                    {
                        "kinds": [enc(n) for s, n in ordered if s == "kind"],
                        "queues": [enc(n) for s, n in ordered if s == "queue"],
                    },
                )
                running = {(s, dec(n)): int(c) for s, n, c in await cur.fetchall()}
                allow = Allowance.build(by_key.values(), running, buckets, now)
                walk = Walk(allow, kinds, queues, p.limit)
                while (page := walk.next()) is not None:
                    page_kinds, page_queues, need = page
                    cur = await conn.execute(
                        self._bq.candidates,
                        {
                            "now": now,
                            "kinds": enc_all(page_kinds),
                            "queues": enc_all(page_queues),
                            "chosen": walk.chosen,
                            "limit": need,
                        },
                    )
                    rows = [(int(s), dec(k), dec(q)) for s, k, q in await cur.fetchall()]
                    walk.feed(rows, need)
                out = ClaimedRows()
                if walk.chosen:
                    cur = await conn.execute(
                        self._q.tasks_claim_picked,
                        {
                            "now": now,
                            "seqs": walk.chosen,
                            "worker": p.worker_id,
                            "ttl": p.lease_ttl_ms,
                            "start": p.start,
                        },
                    )
                    out.extend(claimed_row(r) for r in await cur.fetchall())
                saved = allow.buckets()
                if saved:
                    await conn.execute(
                        self._bq.limits_save,
                        {
                            "scopes": [b[0] for b in saved],
                            "names": [enc(b[1]) for b in saved],
                            "tokens": [b[2] for b in saved],
                            "ats": [b[3] for b in saved],
                        },
                    )
                if len(out) < p.limit:
                    out.retry_in_ms = allow.retry_in_ms()
                    out.held_by_running = allow.capped()
                return out

        # As a plain claim: one whose reply was lost is reclaimed when its lease expires.
        return await self._run(job, idempotent=True)
