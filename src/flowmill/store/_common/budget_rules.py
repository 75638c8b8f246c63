"""Budget and rate-limit arithmetic shared by the stores: pure functions over stored values.

Each store reads the rows under its own serialisation (SQLite's single writer, PostgreSQL
row locks), lets these functions decide, and writes the result back in the same
transaction; the rules therefore cannot drift apart between backends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import ConfigurationError, InvalidUsage
from ..contract.budgets import LIMIT_SCOPES, BudgetRow, ClaimLimit, UsageReport, UsageStatus

MAX_AMOUNT = 2**63 - 1  # limits and usage fit a signed 64-bit integer anywhere they go


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_dimensions(dimensions: Mapping[str, int]) -> dict[str, int]:
    """A usage report's amounts: at least one, each a named non-negative int."""
    if not isinstance(dimensions, Mapping):
        raise InvalidUsage(
            f"usage must map dimension names to amounts, got {type(dimensions).__name__}"
        )
    if not dimensions:
        raise InvalidUsage("usage names no dimension: report at least one amount")
    out: dict[str, int] = {}
    for name, amount in dimensions.items():
        if not isinstance(name, str) or not name:
            raise InvalidUsage(f"a usage dimension must be a non-empty string, got {name!r}")
        if not _is_int(amount):
            raise InvalidUsage(f"usage of {name!r} must be an int, got {amount!r}")
        if amount < 0:
            raise InvalidUsage(f"usage of {name!r} must be >= 0, got {amount}")
        if amount > MAX_AMOUNT:
            raise InvalidUsage(f"usage of {name!r} is too large: {amount}")
        out[name] = amount
    return out


def check_limits(hard: Mapping[str, int], soft: Mapping[str, int]) -> None:
    """Budget limits: non-negative ints by dimension name, soft <= hard where both exist."""
    for what, limits in (("hard", hard), ("soft", soft)):
        if not isinstance(limits, Mapping):
            raise ConfigurationError(f"{what} limits must be a mapping, got {limits!r}")
        for name, value in limits.items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(
                    f"a {what} limit needs a non-empty dimension name, got {name!r}"
                )
            if not _is_int(value) or not 0 <= value <= MAX_AMOUNT:
                raise ConfigurationError(
                    f"the {what} limit of {name!r} must be an int >= 0, got {value!r}"
                )
    for name, value in soft.items():
        if name in hard and value > hard[name]:
            raise ConfigurationError(
                f"the soft limit of {name!r} ({value}) is above its hard limit ({hard[name]})"
            )


def check_claim_limit(limit: ClaimLimit) -> None:
    if limit.scope not in LIMIT_SCOPES:
        raise ConfigurationError(f"a claim limit's scope is 'kind' or 'queue', got {limit.scope!r}")
    if limit.per_second is not None and not (
        math.isfinite(limit.per_second) and limit.per_second > 0
    ):
        raise ConfigurationError(f"per_second must be > 0, got {limit.per_second!r}")
    if limit.burst is not None and limit.burst < 1:
        raise ConfigurationError(f"burst must be >= 1, got {limit.burst!r}")
    if limit.max_running is not None and limit.max_running < 1:
        raise ConfigurationError(f"max_running must be >= 1, got {limit.max_running!r}")


def dumps(value: Mapping[str, int] | Sequence[str]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads_amounts(text: str | None) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads(text).items()} if text else {}


def loads_names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(str(n) for n in json.loads(text))


# -- budgets -----------------------------------------------------------------------------


@dataclass(slots=True)
class Budget:
    """One budget's stored values; `breached` is None while the budget is not breached."""

    id: str
    hard: dict[str, int]
    soft: dict[str, int]
    usage: dict[str, int]
    reset_every_ms: int | None
    window_start_ms: int
    breached: tuple[str, ...] | None

    def roll(self, now: int) -> bool:
        """Start a new window if the current one has ended; windows keep their boundaries."""
        every = self.reset_every_ms
        if every is None or now < self.window_start_ms + every:
            return False
        self.window_start_ms += (now - self.window_start_ms) // every * every
        self.usage = {}
        self.breached = self._exhausted()
        return True

    def _exhausted(self) -> tuple[str, ...] | None:
        """The dimensions whose usage has reached their hard limit: nothing more fits."""
        full = tuple(sorted(d for d, cap in self.hard.items() if self.usage.get(d, 0) >= cap))
        return full or None

    def redefine(
        self, hard: Mapping[str, int], soft: Mapping[str, int], every: int | None, now: int
    ) -> None:
        self.roll(now)
        self.hard, self.soft, self.reset_every_ms = dict(hard), dict(soft), every
        self.roll(now)  # a shorter period may have ended the window already
        self.breached = self._exhausted()

    def reset(self, now: int) -> None:
        self.usage, self.window_start_ms = {}, now
        self.breached = self._exhausted()

    def report(self, amounts: Mapping[str, int], now: int) -> UsageReport:
        """Judge and (unless refused) apply one report; the caller stores the result."""
        self.roll(now)
        if self.breached is not None:
            return UsageReport(UsageStatus.HARD_BREACH, dict(self.usage), self.breached)
        over = tuple(
            sorted(
                d for d, cap in self.hard.items() if self.usage.get(d, 0) + amounts.get(d, 0) > cap
            )
        )
        if over:
            self.breached = over
            return UsageReport(UsageStatus.HARD_BREACH, dict(self.usage), over)
        for d, amount in amounts.items():
            self.usage[d] = self.usage.get(d, 0) + amount
        self.breached = self._exhausted()
        soft = tuple(sorted(d for d, cap in self.soft.items() if self.usage.get(d, 0) > cap))
        status = UsageStatus.SOFT_BREACH if soft else UsageStatus.OK
        return UsageReport(status, dict(self.usage), soft)

    def row(self, now: int, ready: int) -> BudgetRow:
        """How the budget reads at `now` (`ready`: its ready tasks), without storing a roll."""
        view = Budget(
            self.id,
            self.hard,
            self.soft,
            dict(self.usage),
            self.reset_every_ms,
            self.window_start_ms,
            self.breached,
        )
        view.roll(now)
        breached = view.breached is not None
        return BudgetRow(
            id=view.id,
            hard=dict(view.hard),
            soft=dict(view.soft),
            usage=view.usage,
            reset_every_ms=view.reset_every_ms,
            window_start_ms=view.window_start_ms,
            hard_breached=breached,
            breached=view.breached or (),
            tasks_held=ready if breached else 0,
            now_ms=now,
        )


def new_budget(
    budget_id: str, hard: Mapping[str, int], soft: Mapping[str, int], every: int | None, now: int
) -> Budget:
    b = Budget(budget_id, dict(hard), dict(soft), {}, every, now, None)
    b.breached = b._exhausted()
    return b


# -- rate limits and concurrency caps ---------------------------------------------------

Key = tuple[str, str]  # (scope, name)


@dataclass(slots=True)
class _Slot:
    limit: ClaimLimit
    running: int = 0
    tokens: float | None = None  # None: no rate limit
    refilled_at: int = 0

    def room(self) -> int:
        out = math.inf
        if self.limit.max_running is not None:
            out = min(out, self.limit.max_running - self.running)
        if self.tokens is not None:
            out = min(out, math.floor(self.tokens + 1e-9))
        return max(0, int(out)) if out != math.inf else 1 << 62


def default_burst(limit: ClaimLimit) -> int:
    if limit.burst is not None:
        return limit.burst
    return max(1, math.ceil(limit.per_second or 1))


@dataclass(slots=True)
class Allowance:
    """What the limits of one claim still allow, decremented as tasks are taken."""

    now: int
    slots: dict[Key, _Slot] = field(default_factory=dict)

    @staticmethod
    def build(
        limits: Iterable[ClaimLimit],
        running: Mapping[Key, int],
        buckets: Mapping[Key, tuple[float, int]],
        now: int,
    ) -> Allowance:
        """`buckets`: stored (tokens, refilled_at) per key; a missing one starts full."""
        out = Allowance(now)
        for limit in limits:
            check_claim_limit(limit)
            key = (limit.scope, limit.name)
            slot = _Slot(limit, running.get(key, 0))
            if limit.per_second is not None:
                burst = default_burst(limit)
                tokens, at = buckets.get(key, (float(burst), now))
                elapsed = max(0, now - at)
                slot.tokens = min(float(burst), tokens + elapsed * limit.per_second / 1000)
                slot.refilled_at = max(at, now)
            out.slots[key] = slot
        return out

    def keys(self) -> list[Key]:
        """Every key, in the one order rows are locked in."""
        return sorted(self.slots)

    def blocked(self, scope: str) -> set[str]:
        return {n for (s, n), slot in self.slots.items() if s == scope and slot.room() <= 0}

    def take(self, kind: str, queue: str) -> bool:
        """Whether a task of that kind and queue may be claimed now; if so, count it."""
        slots = [s for s in (self.slots.get(("kind", kind)), self.slots.get(("queue", queue))) if s]
        if any(s.room() <= 0 for s in slots):
            return False
        for s in slots:
            s.running += 1
            if s.tokens is not None:
                s.tokens -= 1
        return True

    def buckets(self) -> list[tuple[str, str, float, int]]:
        """(scope, name, tokens, refilled_at) of every rate-limited key, to store back."""
        return [
            (scope, name, slot.tokens, slot.refilled_at)
            for (scope, name), slot in sorted(self.slots.items())
            if slot.tokens is not None
        ]

    def retry_in_ms(self) -> int | None:
        """How soon the first rate-limited key out of tokens gets one back (None: none is)."""
        waits = [
            math.ceil((1 - slot.tokens) * 1000 / slot.limit.per_second)
            for slot in self.slots.values()
            if slot.tokens is not None and slot.limit.per_second and slot.tokens < 1 - 1e-9
        ]
        return max(1, min(waits)) if waits else None

    def capped(self) -> bool:
        """Whether a concurrency cap is full."""
        return any(
            s.limit.max_running is not None and s.running >= s.limit.max_running
            for s in self.slots.values()
        )


@dataclass(slots=True)
class Walk:
    """Picks ready tasks for a limited claim, page by page, in the claim's order.

    A store asks `next()` for the kinds, queues and row count of the next candidate query
    (ready tasks, best first, leaving out `chosen`), and `feed`s the (seq, kind, queue)
    rows back. Keys with no room left are dropped from the next query, so a capped kind
    with many ready tasks costs one more page, not a scan: every page either fills the
    claim, is the last one, or exhausts at least one key.
    """

    allow: Allowance
    kinds: list[str]
    queues: list[str]
    limit: int
    chosen: list[int] = field(default_factory=list)
    done: bool = False

    def next(self) -> tuple[list[str], list[str], int] | None:
        if self.done or len(self.chosen) >= self.limit:
            return None
        kinds_blocked, queues_blocked = self.allow.blocked("kind"), self.allow.blocked("queue")
        kinds = [k for k in self.kinds if k not in kinds_blocked]
        queues = [q for q in self.queues if q not in queues_blocked]
        if not kinds or not queues:
            return None
        return kinds, queues, self.limit - len(self.chosen)

    def feed(self, rows: Sequence[tuple[int, str, str]], asked: int) -> None:
        skipped = False
        for seq, kind, queue in rows:
            if self.allow.take(kind, queue):
                self.chosen.append(seq)
            else:
                skipped = True
        self.done = len(rows) < asked or not skipped
