"""Retry policy: backoff strategies, their JSON form, and the pure retry decision.

The policy is stored on the task row as JSON (`backoff_to_json`) so that a maintenance
process that does not import the task's code can still decide whether and when to retry.
`decide_retry` is pure (no clock, no I/O): the caller adds the delay to its own "now".
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Final, TypeAlias

import msgspec

from .errors import ConfigurationError, RetryCapExceeded

__all__ = [
    "Backoff",
    "Exponential",
    "Fixed",
    "Linear",
    "Retry",
    "RetryAction",
    "RetryDecision",
    "backoff_from_json",
    "backoff_to_json",
    "decide_retry",
]

_ZERO: Final = timedelta(0)
_ONE_US: Final = timedelta(microseconds=1)

_LINEAR_UNBOUNDED_CAP: Final = timedelta(days=365)
"""Ceiling of a `Linear` backoff whose `maximum` is None.

An unbounded linear delay would eventually leave `timedelta`'s range; a year is far beyond
any useful retry delay yet far inside that range. If `initial` itself is longer, `initial`
is the ceiling, so attempt 1 still waits exactly `initial`.
"""


def _us(value: timedelta) -> int:
    # Integer microseconds keep the arithmetic exact and free of timedelta's range limit.
    return value // _ONE_US


def _check_duration(name: str, value: object) -> None:
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a timedelta, got {value!r}")
    if value < _ZERO:
        raise ConfigurationError(f"{name} must be >= 0, got {value!r}")


def _check_jitter(value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"jitter must be a bool, got {value!r}")


def _check_attempt(attempt: int) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError(f"attempt must be an int, got {attempt!r}")
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")


def _finish(delay_us: int, jitter: bool, rng: random.Random | None) -> timedelta:
    if jitter and delay_us > 0:
        # Integer draw: exactly uniform over [0, delay] at microsecond resolution, with no
        # float rounding that could land past the upper bound. Without a caller's rng, the
        # `random` module's shared instance is used because it is reseeded in forked
        # children; a private module-level Random would give every forked worker the same
        # "jitter" and defeat its purpose.
        delay_us = rng.randint(0, delay_us) if rng is not None else random.randint(0, delay_us)
    return timedelta(microseconds=delay_us)


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Fixed:
    """Backoff that waits the same duration after every failed attempt.

    Constructed as `Fixed(delay=..., jitter=...)`. The duration is stored as `interval`
    because `delay` is the method every strategy shares: a slotted class cannot hold a
    field and a method under one name.
    """

    interval: timedelta
    jitter: bool

    def __init__(self, delay: timedelta = timedelta(seconds=1), jitter: bool = False) -> None:
        _check_duration("delay", delay)
        _check_jitter(jitter)
        object.__setattr__(self, "interval", delay)
        object.__setattr__(self, "jitter", jitter)

    def __repr__(self) -> str:
        # Spelled like the constructor call, so the repr can be pasted back as code.
        return f"Fixed(delay={self.interval!r}, jitter={self.jitter!r})"

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Return the wait after failed attempt number `attempt` (1-based)."""
        _check_attempt(attempt)
        return _finish(_us(self.interval), self.jitter, rng)


@dataclass(frozen=True, slots=True)
class Linear:
    """Backoff that waits `initial`, then `step` longer after each further failure.

    Capped at `maximum`; with `maximum=None` capped at 365 days (`_LINEAR_UNBOUNDED_CAP`).
    """

    initial: timedelta = timedelta(seconds=1)
    step: timedelta = timedelta(seconds=1)
    maximum: timedelta | None = timedelta(minutes=5)
    jitter: bool = False

    def __post_init__(self) -> None:
        _check_duration("initial", self.initial)
        _check_duration("step", self.step)
        if self.maximum is not None:
            _check_duration("maximum", self.maximum)
            if self.maximum < self.initial:
                raise ConfigurationError(
                    f"maximum must be >= initial, got maximum={self.maximum!r} "
                    f"< initial={self.initial!r}"
                )
        _check_jitter(self.jitter)

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Return the wait after failed attempt number `attempt` (1-based)."""
        _check_attempt(attempt)
        cap = self.maximum if self.maximum is not None else max(_LINEAR_UNBOUNDED_CAP, self.initial)
        # Python ints do not overflow, so even attempt=10**9 with a one-day step is exact.
        delay_us = min(_us(self.initial) + _us(self.step) * (attempt - 1), _us(cap))
        return _finish(delay_us, self.jitter, rng)


@dataclass(frozen=True, slots=True)
class Exponential:
    """Backoff that waits `initial * multiplier ** (attempt - 1)`, capped at `maximum`."""

    initial: timedelta = timedelta(seconds=1)
    multiplier: float = 2.0
    maximum: timedelta = timedelta(minutes=5)
    jitter: bool = True

    def __post_init__(self) -> None:
        _check_duration("initial", self.initial)
        m: object = self.multiplier
        if isinstance(m, bool) or not isinstance(m, int | float):
            raise ConfigurationError(f"multiplier must be a number, got {m!r}")
        if not math.isfinite(m):
            raise ConfigurationError(f"multiplier must be finite, got {m!r}")
        if m < 1:
            raise ConfigurationError(f"multiplier must be >= 1, got {m!r}")
        # Normalised to float so that equality and the JSON form do not depend on 2 vs 2.0.
        object.__setattr__(self, "multiplier", float(m))
        _check_duration("maximum", self.maximum)
        if self.maximum < self.initial:
            raise ConfigurationError(
                f"maximum must be >= initial, got maximum={self.maximum!r} "
                f"< initial={self.initial!r}"
            )
        _check_jitter(self.jitter)

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Return the wait after failed attempt number `attempt` (1-based)."""
        _check_attempt(attempt)
        return _finish(self._raw_us(attempt), self.jitter, rng)

    def _raw_us(self, attempt: int) -> int:
        initial_us, max_us, m = _us(self.initial), _us(self.maximum), self.multiplier
        exponent = attempt - 1
        if exponent == 0 or initial_us == 0 or m == 1.0:
            return initial_us
        # Decide "capped or not" in log space first: m ** exponent itself may overflow a
        # float (or take forever as an int) long before the caller's attempt count is
        # unreasonable. max_us >= initial_us > 0 here, so the log is defined.
        try:
            growth = float(exponent) * math.log(m)
        except OverflowError:
            return max_us
        if growth >= math.log(max_us / initial_us):
            return max_us
        # Below the cap the power is bounded by max_us / initial_us, so it is now safe.
        raw: int
        if m.is_integer():
            # Exact integer arithmetic for the common multipliers (2, 3, ...).
            raw = initial_us * int(m) ** exponent
        else:
            raw = round(initial_us * m**exponent)
        # The log test is approximate near the boundary; the min keeps the cap exact.
        return min(raw, max_us)


Backoff: TypeAlias = Fixed | Linear | Exponential
"""Any backoff strategy: `Fixed`, `Linear` or `Exponential`."""


# Durations are integer milliseconds: portable to any JSON reader, and a retry delay finer
# than a millisecond is meaningless for a queue polled over a network.


class _FixedJSON(msgspec.Struct, tag="fixed", tag_field="type", frozen=True):
    delay_ms: int = 1_000
    jitter: bool = False


class _LinearJSON(msgspec.Struct, tag="linear", tag_field="type", frozen=True):
    initial_ms: int = 1_000
    step_ms: int = 1_000
    maximum_ms: int | None = 300_000
    jitter: bool = False


class _ExponentialJSON(msgspec.Struct, tag="exponential", tag_field="type", frozen=True):
    initial_ms: int = 1_000
    multiplier: float = 2.0
    maximum_ms: int = 300_000
    jitter: bool = True


_JSONForm: TypeAlias = _FixedJSON | _LinearJSON | _ExponentialJSON
_JSON_TYPES: Final = frozenset({"fixed", "linear", "exponential"})
_ENCODER: Final = msgspec.json.Encoder()


def _to_ms(value: timedelta) -> int:
    # Rounds half up to the nearest millisecond. Rounding is monotonic, so a valid policy
    # (maximum >= initial) stays valid after a round trip.
    ms, rest_us = divmod(_us(value), 1_000)
    return ms + 1 if rest_us >= 500 else ms


def _from_ms(name: str, ms: int) -> timedelta:
    try:
        return timedelta(milliseconds=ms)
    except OverflowError:
        raise ConfigurationError(f"{name} is out of range: {ms}") from None


def backoff_to_json(b: Backoff) -> bytes:
    """Encode a backoff strategy as JSON for storage on the task row."""
    form: _JSONForm
    if isinstance(b, Fixed):
        form = _FixedJSON(delay_ms=_to_ms(b.interval), jitter=b.jitter)
    elif isinstance(b, Linear):
        form = _LinearJSON(
            initial_ms=_to_ms(b.initial),
            step_ms=_to_ms(b.step),
            maximum_ms=None if b.maximum is None else _to_ms(b.maximum),
            jitter=b.jitter,
        )
    elif isinstance(b, Exponential):
        form = _ExponentialJSON(
            initial_ms=_to_ms(b.initial),
            multiplier=b.multiplier,
            maximum_ms=_to_ms(b.maximum),
            jitter=b.jitter,
        )
    else:
        raise ConfigurationError(f"not a backoff strategy: {b!r}")
    return _ENCODER.encode(form)


def backoff_from_json(data: bytes) -> Backoff:
    """Decode a backoff strategy stored by `backoff_to_json`.

    Missing keys take the strategy's defaults and a missing "type" means exponential, so
    `b"{}"` decodes to `Exponential()`. Unknown keys are ignored so that a maintenance
    process running older code can still read a policy written by newer code.
    """
    try:
        raw = msgspec.json.decode(data, type=dict[str, Any])
    except msgspec.MsgspecError as exc:
        raise ConfigurationError(f"invalid backoff JSON: {exc}") from None
    kind = raw.setdefault("type", "exponential")
    if kind not in _JSON_TYPES:
        raise ConfigurationError(f"unknown backoff type {kind!r}")
    try:
        form: _JSONForm = msgspec.convert(raw, type=_JSONForm)
    except msgspec.MsgspecError as exc:
        raise ConfigurationError(f"invalid {kind} backoff JSON: {exc}") from None
    if isinstance(form, _FixedJSON):
        return Fixed(delay=_from_ms("delay_ms", form.delay_ms), jitter=form.jitter)
    if isinstance(form, _LinearJSON):
        return Linear(
            initial=_from_ms("initial_ms", form.initial_ms),
            step=_from_ms("step_ms", form.step_ms),
            maximum=None if form.maximum_ms is None else _from_ms("maximum_ms", form.maximum_ms),
            jitter=form.jitter,
        )
    return Exponential(
        initial=_from_ms("initial_ms", form.initial_ms),
        multiplier=form.multiplier,
        maximum=_from_ms("maximum_ms", form.maximum_ms),
        jitter=form.jitter,
    )


@dataclass(frozen=True, slots=True)
class Retry:
    """A task's retry policy: how many attempts in total, and how long to wait between them."""

    max_attempts: int = 3
    backoff: Backoff = Exponential()

    def __post_init__(self) -> None:
        n: object = self.max_attempts
        # bool is an int subclass, but `max_attempts=True` is a bug, not "one attempt".
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {n!r}")
        if not isinstance(self.backoff, Fixed | Linear | Exponential):
            raise ConfigurationError(
                f"backoff must be Fixed, Linear or Exponential, got {self.backoff!r}"
            )


class RetryAction(StrEnum):
    """What to do with a task whose attempt just failed."""

    RETRY = "retry"
    FAIL = "fail"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """The outcome of `decide_retry`: the action, and the wait before the next attempt."""

    action: RetryAction
    delay: timedelta | None  # set only when action is RETRY


def decide_retry(
    *,
    attempt: int,
    max_attempts: int,
    retryable: bool,
    backoff: Backoff,
    requested_delay: timedelta | None = None,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Decide what happens after attempt number `attempt` (1-based) of a task failed.

    Not retryable -> FAIL; retryable but out of attempts -> DEAD_LETTER; otherwise RETRY
    after `requested_delay` (from `RetryLater`, clamped to >= 0; not capped by the backoff's
    maximum, since the handler knows best) or else the backoff's delay.

    Raises `RetryCapExceeded` when `attempt` is outside 1..max_attempts: such an attempt
    should never have run, and answering would hide the bug or grant an extra run.
    """
    if max_attempts < 1:
        raise RetryCapExceeded(f"max_attempts must be >= 1, got {max_attempts}")
    if attempt < 1:
        raise RetryCapExceeded(f"attempt must be >= 1, got {attempt}")
    if attempt > max_attempts:
        raise RetryCapExceeded(f"attempt {attempt} is beyond max_attempts={max_attempts}")
    if not retryable:
        return RetryDecision(RetryAction.FAIL, None)
    if attempt == max_attempts:
        return RetryDecision(RetryAction.DEAD_LETTER, None)
    if requested_delay is not None:
        return RetryDecision(RetryAction.RETRY, max(requested_delay, _ZERO))
    return RetryDecision(RetryAction.RETRY, backoff.delay(attempt, rng))
