"""The store contract for budgets, rate limits and concurrency caps.

Same rules as `protocol`: frozen params, int ms times, `now_ms=None` is the store's clock, a
worker's usage report is fenced by `(task_id, epoch)`. Budgets are never deleted, so a
budget id checked once stays valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from .records import ClaimedRow

LimitScope = Literal["kind", "queue"]
LIMIT_SCOPES: tuple[str, ...] = ("kind", "queue")


@dataclass(frozen=True, slots=True)
class BudgetDefine:
    """Create a budget, or change its limits. Redefining keeps the usage of the current
    window (and its start) and judges the breach again against the new hard limits."""

    budget_id: str
    hard: Mapping[str, int]
    soft: Mapping[str, int]
    reset_every_ms: int | None = None
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class BudgetReset:
    """Zero a budget's usage and end its breach; a new window starts now."""

    budget_id: str
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """Report usage against a budget from a running attempt (fenced), atomically.

    In order: a stale fence raises `LeaseLost`; an unknown budget `UnknownBudget`; a
    negative or non-int amount `InvalidUsage`; a `dedup_key` applied before to this budget
    answers ALREADY_APPLIED; an elapsed window is rolled (usage zeroed) first; a budget
    breached in this window, or a report that would take a dimension over its hard limit,
    answers HARD_BREACH and applies nothing (and marks the budget breached); otherwise every
    amount is applied and the key recorded: SOFT_BREACH when a dimension is now over its soft
    limit, else OK. A budget whose usage reaches a hard limit exactly is breached too.
    """

    task_id: str
    epoch: int
    budget_id: str
    dimensions: Mapping[str, int]
    dedup_key: str | None = None
    now_ms: int | None = None


class UsageStatus(StrEnum):
    """What a usage report did."""

    OK = "ok"
    SOFT_BREACH = "soft_breach"  # applied; some dimension is now over its soft limit
    HARD_BREACH = "hard_breach"  # nothing applied: it would not fit, or the budget is spent
    ALREADY_APPLIED = "already_applied"  # this dedup key was applied before: nothing changed


@dataclass(frozen=True, slots=True)
class UsageReport:
    """The answer to `report_usage`: `usage` is the budget's usage after the call, and
    `breached` the dimensions over their soft (SOFT_BREACH) or hard (HARD_BREACH) limit."""

    status: UsageStatus
    usage: dict[str, int] = field(default_factory=dict)
    breached: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is UsageStatus.OK

    @property
    def soft_breach(self) -> bool:
        return self.status is UsageStatus.SOFT_BREACH

    @property
    def hard_breach(self) -> bool:
        return self.status is UsageStatus.HARD_BREACH

    @property
    def already_applied(self) -> bool:
        return self.status is UsageStatus.ALREADY_APPLIED


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """A budget as the store sees it at `now`: an elapsed window reads as a fresh one.

    `breached` names the dimensions that ended the window (empty when not breached);
    `tasks_held` counts the ready tasks the breach holds back (0 when not breached)."""

    id: str
    hard: dict[str, int]
    soft: dict[str, int]
    usage: dict[str, int]
    reset_every_ms: int | None
    window_start_ms: int
    hard_breached: bool
    breached: tuple[str, ...]
    tasks_held: int
    now_ms: int


@dataclass(frozen=True, slots=True)
class ClaimLimit:
    """A limit the claim enforces across every claimer that passes it.

    `scope` "kind" or "queue" and `name` say which ready tasks it covers. `max_running`: at
    most that many of them running at once. `per_second` and `burst`: a token bucket stored
    in the database, refilled on the store's clock up to `burst`; each claimed task takes a
    token. Claimers should agree on the numbers: the last claim's refill rate applies.
    """

    scope: LimitScope
    name: str
    per_second: float | None = None
    burst: int | None = None
    max_running: int | None = None


class ClaimedRows(list[ClaimedRow]):
    """What `tasks_claim` returns: the claimed rows, and (only when limits were passed) why
    others were left: `retry_in_ms` is how soon a rate limit gives out its next token when
    a ready task waited for one; `held_by_running` says a concurrency cap held a task."""

    retry_in_ms: int | None = None
    held_by_running: bool = False
