"""Rate limits and concurrency caps of task kinds and queues, and the option checks that
budgets and limits add to `@app.task` (kept apart from `_budgets`: `_task` imports them)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigurationError
from .store.contract.budgets import ClaimLimit, LimitScope


class LimitedKind(Protocol):
    """What the claim limits read of a task definition (a `TaskDef` is one)."""

    @property
    def rate_limit(self) -> RateLimit | None: ...

    @property
    def max_concurrency(self) -> int | None: ...


MAX_BUDGET_ID_LEN = 255


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `per_second` claims a second on average, `burst` at once (default: one
    second's worth, at least 1): `@app.task(rate_limit=fm.RateLimit(per_second=5))`."""

    per_second: float
    burst: int | None = None

    def __post_init__(self) -> None:
        rate = self.per_second
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
            raise ConfigurationError(f"per_second must be a finite number > 0, got {rate!r}")
        if rate <= 0:
            raise ConfigurationError(f"per_second must be > 0, got {rate!r}")
        burst = self.burst
        if burst is None:
            object.__setattr__(self, "burst", max(1, math.ceil(rate)))
        elif isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError(f"burst must be an int >= 1, got {burst!r}")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """The limits `app.queue_limits(name, ...)` set on every task of a queue."""

    rate_limit: RateLimit | None = None
    max_concurrency: int | None = None


def check_budget_id(budget_id: object) -> str:
    if not isinstance(budget_id, str) or not budget_id or len(budget_id) > MAX_BUDGET_ID_LEN:
        raise ConfigurationError(
            f"a budget id must be a non-empty string of at most {MAX_BUDGET_ID_LEN} "
            f"characters, got {budget_id!r}"
        )
    return budget_id


def check_max_concurrency(value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigurationError(f"max_concurrency must be an int >= 1, got {value!r}")
    return value


def check_rate_limit(value: object) -> RateLimit | None:
    if value is not None and not isinstance(value, RateLimit):
        raise ConfigurationError(f"rate_limit must be fm.RateLimit(...), got {value!r}")
    return value


def _limit(scope: LimitScope, name: str, rate: RateLimit | None, cap: int | None) -> ClaimLimit:
    return ClaimLimit(
        scope,
        name,
        per_second=None if rate is None else float(rate.per_second),
        burst=None if rate is None else rate.burst,
        max_running=cap,
    )


def kind_limits(registry: Mapping[str, LimitedKind]) -> dict[str, ClaimLimit]:
    """The claim limit of every task kind that has a rate limit or a concurrency cap."""
    return {
        name: _limit("kind", name, t.rate_limit, t.max_concurrency)
        for name, t in registry.items()
        if t.rate_limit is not None or t.max_concurrency is not None
    }


def queue_claim_limits(
    limits: Mapping[str, QueueLimits], queues: Iterable[str]
) -> tuple[ClaimLimit, ...]:
    return tuple(
        _limit("queue", q, limits[q].rate_limit, limits[q].max_concurrency)
        for q in queues
        if q in limits
    )


class ClaimLimits:
    """The limits a worker or claimer passes with its claims, looked up once."""

    def __init__(
        self,
        registry: Mapping[str, LimitedKind],
        queue_limits: Mapping[str, QueueLimits],
        queues: Iterable[str],
    ) -> None:
        self.kinds = kind_limits(registry)
        self.queues = queue_claim_limits(queue_limits, queues)

    def __bool__(self) -> bool:
        return bool(self.kinds or self.queues)

    def of(self, kinds: Sequence[str]) -> tuple[ClaimLimit, ...]:
        """The limits that apply to a claim of these kinds (empty: claim as ever)."""
        if not self:
            return ()
        return tuple(self.kinds[k] for k in kinds if k in self.kinds) + self.queues
