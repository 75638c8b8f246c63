"""Budgets, rate limits and concurrency caps in the SQLite store.

Every write runs on the single writer thread inside the group transaction (and across
processes under SQLite's write lock), so reading a budget, judging a report and storing
the result is atomic, and a limited claim counts running tasks and spends tokens with no
other claim in between.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import LeaseLost, UnknownBudget
from .._common import wake as _wake
from .._common.budget_rules import (
    Allowance,
    Budget,
    Key,
    Walk,
    check_dimensions,
    check_limits,
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
from ..contract.tasks import ClaimedRow, TasksClaim
from ._admin import NOT_PAUSED_SQL
from ._sql import marks
from ._threads import Job, Tx

# A claim condition with one parameter (now): the task names no budget, or one that is not
# hard-breached in its current window. The subquery does not depend on the row: SQLite
# runs it once per statement.
NOT_HELD_SQL = (
    "(budget_id IS NULL OR budget_id NOT IN (SELECT id FROM fm_budgets "
    "WHERE breached IS NOT NULL AND (reset_every IS NULL OR ? < window_start + reset_every)))"
)

_COLUMNS = "id, hard, soft, usage, reset_every, window_start, breached"


def _now(now_ms: int | None) -> int:
    return now_ms if now_ms is not None else time.time_ns() // 1_000_000


class SQLiteBudgetsMixin:
    """The `BudgetsStore` operations of `SQLiteStore`."""

    if TYPE_CHECKING:

        async def _write(self, job: Job) -> Any: ...

        async def _read(self, job: Job) -> Any: ...

    async def budget_define(self, p: BudgetDefine) -> BudgetRow:
        check_limits(p.hard, p.soft)
        result: BudgetRow = await self._write(lambda c, tx: budget_define(c, tx, p))
        return result

    async def budget_reset(self, p: BudgetReset) -> BudgetRow:
        result: BudgetRow = await self._write(lambda c, tx: budget_reset(c, tx, p))
        return result

    async def budget_report_usage(self, p: BudgetUsage) -> UsageReport:
        amounts = check_dimensions(p.dimensions)  # bad input fails before any write
        result: UsageReport = await self._write(lambda c, tx: budget_report_usage(c, p, amounts))
        return result

    async def budgets_get(
        self, budget_ids: Sequence[str], now_ms: int | None = None
    ) -> list[BudgetRow]:
        ids = list(dict.fromkeys(budget_ids))
        result: list[BudgetRow] = await self._read(lambda c, tx: budgets_get(c, ids, _now(now_ms)))
        return result


# -- jobs: each runs on the writer (or reader) thread, inside the group transaction -----


def _load(c: sqlite3.Connection, budget_id: str) -> Budget | None:
    row = c.execute(f"SELECT {_COLUMNS} FROM fm_budgets WHERE id = ?", (budget_id,)).fetchone()
    return None if row is None else _budget(row)


def _budget(row: Sequence[Any]) -> Budget:
    return Budget(
        id=row[0],
        hard=loads_amounts(row[1]),
        soft=loads_amounts(row[2]),
        usage=loads_amounts(row[3]),
        reset_every_ms=row[4],
        window_start_ms=row[5],
        breached=loads_names(row[6]),
    )


def _save(c: sqlite3.Connection, b: Budget, now: int) -> None:
    c.execute(
        "INSERT INTO fm_budgets (id, hard, soft, usage, reset_every, window_start, breached, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET hard = excluded.hard, soft = excluded.soft, "
        "usage = excluded.usage, reset_every = excluded.reset_every, "
        "window_start = excluded.window_start, breached = excluded.breached, "
        "updated_at = excluded.updated_at",
        (
            b.id,
            dumps(b.hard),
            dumps(b.soft),
            dumps(b.usage),
            b.reset_every_ms,
            b.window_start_ms,
            None if b.breached is None else dumps(b.breached),
            now,
            now,
        ),
    )


def _ready_count(c: sqlite3.Connection, budget_id: str) -> int:
    row = c.execute(
        "SELECT count(*) FROM fm_tasks WHERE budget_id = ? AND state = 'ready'", (budget_id,)
    ).fetchone()
    return int(row[0])


def budget_define(c: sqlite3.Connection, tx: Tx, p: BudgetDefine) -> BudgetRow:
    now = _now(p.now_ms)
    b = _load(c, p.budget_id)
    if b is None:
        b = new_budget(p.budget_id, p.hard, p.soft, p.reset_every_ms, now)
    else:
        was_breached = b.breached is not None
        b.redefine(p.hard, p.soft, p.reset_every_ms, now)
        if was_breached and b.breached is None:
            tx.wake(_wake.WORK)  # its held tasks may be claimed now
    _save(c, b, now)
    return b.row(now, _ready_count(c, b.id))


def budget_reset(c: sqlite3.Connection, tx: Tx, p: BudgetReset) -> BudgetRow:
    now = _now(p.now_ms)
    b = _load(c, p.budget_id)
    if b is None:
        raise UnknownBudget(p.budget_id)
    b.reset(now)
    _save(c, b, now)
    tx.wake(_wake.WORK)
    return b.row(now, _ready_count(c, b.id))


def budget_report_usage(
    c: sqlite3.Connection, p: BudgetUsage, amounts: dict[str, int]
) -> UsageReport:
    now = _now(p.now_ms)
    fenced = c.execute(
        "SELECT 1 FROM fm_tasks WHERE id = ? AND lease_epoch = ? AND state = 'running'",
        (p.task_id, p.epoch),
    ).fetchone()
    if fenced is None:
        raise LeaseLost(p.task_id, p.epoch)
    b = _load(c, p.budget_id)
    if b is None:
        raise UnknownBudget(p.budget_id)
    if p.dedup_key is not None:
        seen = c.execute(
            "SELECT 1 FROM fm_budget_reports WHERE budget_id = ? AND dedup_key = ?",
            (p.budget_id, p.dedup_key),
        ).fetchone()
        if seen is not None:
            return UsageReport(UsageStatus.ALREADY_APPLIED, b.row(now, 0).usage)
    report = b.report(amounts, now)
    _save(c, b, now)
    if p.dedup_key is not None and report.status is not UsageStatus.HARD_BREACH:
        c.execute(
            "INSERT INTO fm_budget_reports (budget_id, dedup_key, task_id, amounts, at) "
            "VALUES (?, ?, ?, ?, ?)",
            (p.budget_id, p.dedup_key, p.task_id, dumps(amounts), now),
        )
    return report


def budgets_get(c: sqlite3.Connection, ids: list[str], now: int) -> list[BudgetRow]:
    if ids:
        rows = c.execute(
            f"SELECT {_COLUMNS} FROM fm_budgets WHERE id IN ({marks(len(ids))}) ORDER BY id",
            ids,
        ).fetchall()
    else:
        rows = c.execute(f"SELECT {_COLUMNS} FROM fm_budgets ORDER BY id").fetchall()
    out = []
    for row in rows:
        out.append(_budget(row).row(now, _ready_count(c, row[0])))
    return out


# -- limited claims -------------------------------------------------------------------


def _running(c: sqlite3.Connection, p: TasksClaim) -> dict[Key, int]:
    out: dict[Key, int] = {}
    for scope in ("kind", "queue"):
        names = [lim.name for lim in p.limits if lim.scope == scope and lim.max_running]
        if names:
            rows = c.execute(
                f"SELECT {scope}, count(*) FROM fm_tasks WHERE state = 'running' "
                f"AND {scope} IN ({marks(len(names))}) GROUP BY {scope}",
                names,
            )
            out.update(((scope, name), n) for name, n in rows)
    return out


def _buckets(c: sqlite3.Connection, p: TasksClaim) -> dict[Key, tuple[float, int]]:
    out: dict[Key, tuple[float, int]] = {}
    for lim in p.limits:
        if lim.per_second is not None:
            row = c.execute(
                "SELECT tokens, refilled_at FROM fm_limits WHERE scope = ? AND name = ?",
                (lim.scope, lim.name),
            ).fetchone()
            if row is not None:
                out[(lim.scope, lim.name)] = (float(row[0]), int(row[1]))
    return out


def claim_limited(
    c: sqlite3.Connection, p: TasksClaim, now: int, take: Callable[[list[int]], list[ClaimedRow]]
) -> ClaimedRows:
    """A claim under `p.limits`: `take` claims the chosen seqs (as the plain claim does)."""
    allow = Allowance.build(p.limits, _running(c, p), _buckets(c, p), now)
    walk = Walk(allow, list(dict.fromkeys(p.kinds)), list(dict.fromkeys(p.queues)), p.limit)
    while (page := walk.next()) is not None:
        kinds, queues, need = page
        rows = c.execute(
            "SELECT seq, kind, queue FROM fm_tasks WHERE state = 'ready' "
            f"AND queue IN ({marks(len(queues))}) AND kind IN ({marks(len(kinds))}) "
            "AND (expires_at IS NULL OR expires_at > ? OR started_at IS NOT NULL) "
            f"AND {NOT_HELD_SQL} AND {NOT_PAUSED_SQL} "
            f"AND seq NOT IN ({marks(len(walk.chosen))}) "
            "ORDER BY priority DESC, seq LIMIT ?",
            (*queues, *kinds, now, now, *walk.chosen, need),
        ).fetchall()
        walk.feed(rows, need)
    out = ClaimedRows(take(walk.chosen) if walk.chosen else [])
    c.executemany(
        "INSERT INTO fm_limits (scope, name, tokens, refilled_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (scope, name) DO UPDATE SET tokens = excluded.tokens, "
        "refilled_at = excluded.refilled_at",
        allow.buckets(),
    )
    if len(out) < p.limit:
        out.retry_in_ms = allow.retry_in_ms()
        out.held_by_running = allow.capped()
    return out
