"""Budgets, rate limits and concurrency caps: the public types and the engine's side.

A budget counts usage by dimension (tokens, requests, dollars...) against hard and soft
limits, per window (`reset_every`) or for good. Attempts report usage, fenced by their
lease; the store judges and applies each report atomically. Tasks submitted with
`budget=` wait, ready, while their budget is hard-breached. Rate limits and concurrency
caps of task kinds and queues are passed with every claim and kept by the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._clock import from_ms
from ._limits import (
    ClaimLimits,
    QueueLimits,
    RateLimit,
    check_budget_id,
    check_max_concurrency,
    check_rate_limit,
)
from ._task import check_queue, positive_ms
from .errors import InvalidUsage, UnknownBudget
from .store._common.budget_rules import check_dimensions, check_limits
from .store.contract.budgets import BudgetDefine, BudgetReset, BudgetRow, BudgetUsage, UsageReport
from .store.contract.tasks import CountRow, LeaseRef

if TYPE_CHECKING:
    from ._clock import Clock
    from ._task import TaskDef
    from .store.contract import Store

MAX_DEDUP_KEY_LEN = 512


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget as `app.budget(id)` shows it: limits, usage in the current window, and
    whether it is hard-breached (its tasks then wait: `tasks_held` of them are ready)."""

    id: str
    hard: dict[str, int]
    soft: dict[str, int]
    usage: dict[str, int]
    reset_every: timedelta | None
    window_ends_at: datetime | None
    hard_breached: bool
    tasks_held: int
    breached: tuple[str, ...] = ()  # the dimensions that ended the window

    @staticmethod
    def of(row: BudgetRow) -> BudgetStatus:
        every = row.reset_every_ms
        ends = None
        if every is not None:
            ends = from_ms(row.window_start_ms + every)
        return BudgetStatus(
            id=row.id,
            hard=row.hard,
            soft=row.soft,
            usage=row.usage,
            reset_every=None if every is None else timedelta(milliseconds=every),
            window_ends_at=ends,
            hard_breached=row.hard_breached,
            tasks_held=row.tasks_held,
            breached=row.breached,
        )


class StatusReport(list[CountRow]):
    """What `app.status()` returns: task counts by queue and state (a list of `CountRow`,
    as ever), and `budgets`: every budget's `BudgetStatus`."""

    def __init__(self, counts: Iterable[CountRow], budgets: Sequence[BudgetStatus]) -> None:
        super().__init__(counts)
        self.budgets = list(budgets)


class Budgets:
    """The budget calls of `App` (a base class of it): define, read, reset, report."""

    if TYPE_CHECKING:
        store: Store
        clock: Clock
        registry: dict[str, TaskDef]
        _queue_limits: dict[str, QueueLimits]

        async def open(self) -> Any: ...

    async def define_budget(
        self,
        budget_id: str,
        *,
        hard: Mapping[str, int] | None = None,
        soft: Mapping[str, int] | None = None,
        reset_every: timedelta | None = None,
    ) -> BudgetStatus:
        """Create a budget or change its limits (usage so far is kept and judged again).

        `hard`: a report that would take a dimension over it is refused (HARD_BREACH) and
        the budget's tasks wait until the window ends; `soft`: reports go on, answered
        SOFT_BREACH. With `reset_every`, usage starts from zero every period.
        """
        check_budget_id(budget_id)
        hard, soft = dict(hard or {}), dict(soft or {})
        check_limits(hard, soft)
        every = positive_ms("reset_every", reset_every)
        await self.open()
        row = await self.store.budget_define(
            BudgetDefine(budget_id, hard, soft, every, self.clock.store_now())
        )
        return BudgetStatus.of(row)

    async def budget(self, budget_id: str) -> BudgetStatus:
        """The budget's limits and usage now; `UnknownBudget` when it was never defined."""
        check_budget_id(budget_id)
        await self.open()
        rows = await self.store.budgets_get([budget_id], self.clock.store_now())
        if not rows:
            raise UnknownBudget(budget_id)
        return BudgetStatus.of(rows[0])

    async def budgets(self) -> list[BudgetStatus]:
        """Every budget, by id."""
        await self.open()
        return [
            BudgetStatus.of(r) for r in await self.store.budgets_get([], self.clock.store_now())
        ]

    async def reset_budget(self, budget_id: str) -> BudgetStatus:
        """Zero the usage and end the breach now (a new window starts)."""
        check_budget_id(budget_id)
        await self.open()
        row = await self.store.budget_reset(BudgetReset(budget_id, self.clock.store_now()))
        return BudgetStatus.of(row)

    def queue_limits(
        self,
        name: str,
        *,
        rate_limit: RateLimit | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        """Limit every task of a queue, across all workers of this app (None: no limit).

        Workers and claimers pass these limits with their claims: every process that
        claims from the queue must set the same ones."""
        check_queue(name)
        limits = QueueLimits(check_rate_limit(rate_limit), check_max_concurrency(max_concurrency))
        if limits == QueueLimits():
            self._queue_limits.pop(name, None)
        else:
            self._queue_limits[name] = limits

    def claim_limits(self, queues: Iterable[str]) -> ClaimLimits:
        """The limits a claim of these queues passes (rate limits and caps of kinds too)."""
        return ClaimLimits(self.registry, self._queue_limits, queues)

    async def require_budget(self, budget_id: str) -> None:
        """`UnknownBudget` unless the budget exists (budgets are never deleted)."""
        check_budget_id(budget_id)
        await self.open()
        if not await self.store.budgets_get([budget_id], self.clock.store_now()):
            raise UnknownBudget(budget_id)


async def report_usage(
    store: Store,
    clock: Clock,
    lease: LeaseRef,
    budget_id: str,
    dimensions: Mapping[str, int],
    dedup_key: str | None,
) -> UsageReport:
    """Report usage for the attempt holding `lease`: checked here, judged by the store."""
    check_budget_id(budget_id)
    amounts = check_dimensions(dimensions)
    if dedup_key is not None and (
        not isinstance(dedup_key, str) or not dedup_key or len(dedup_key) > MAX_DEDUP_KEY_LEN
    ):
        raise InvalidUsage(
            f"dedup_key must be a non-empty string of at most {MAX_DEDUP_KEY_LEN} "
            f"characters, got {dedup_key!r}"
        )
    return await store.budget_report_usage(
        BudgetUsage(lease.task_id, lease.epoch, budget_id, amounts, dedup_key, clock.store_now())
    )
