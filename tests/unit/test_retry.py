"""Tests for the retry policy: backoff sequences, JSON form and the retry decision."""

from __future__ import annotations

import dataclasses
import random
import time
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowmill._retry import (
    _LINEAR_UNBOUNDED_CAP,
    Backoff,
    Exponential,
    Fixed,
    Linear,
    Retry,
    RetryAction,
    RetryDecision,
    backoff_from_json,
    backoff_to_json,
    decide_retry,
)
from flowmill.errors import ConfigurationError, RetryCapExceeded

S = timedelta(seconds=1)
MS = timedelta(milliseconds=1)


def sequence(b: Backoff, n: int = 6) -> list[timedelta]:
    return [b.delay(attempt) for attempt in range(1, n + 1)]


# --- sequences without jitter ---------------------------------------------------------------


def test_fixed_sequence() -> None:
    assert sequence(Fixed()) == [S] * 6
    assert sequence(Fixed(timedelta(seconds=5))) == [5 * S] * 6
    assert sequence(Fixed(delay=timedelta(0))) == [timedelta(0)] * 6


def test_linear_default_sequence() -> None:
    assert sequence(Linear()) == [1 * S, 2 * S, 3 * S, 4 * S, 5 * S, 6 * S]


def test_linear_custom_sequence_and_cap() -> None:
    b = Linear(initial=2 * S, step=3 * S, maximum=10 * S)
    assert sequence(b) == [2 * S, 5 * S, 8 * S, 10 * S, 10 * S, 10 * S]


def test_linear_zero_step_is_constant() -> None:
    assert sequence(Linear(initial=4 * S, step=timedelta(0))) == [4 * S] * 6


def test_exponential_default_sequence() -> None:
    b = Exponential(jitter=False)
    assert sequence(b) == [1 * S, 2 * S, 4 * S, 8 * S, 16 * S, 32 * S]
    # 2**8 = 256 s is under the 5 min cap, 2**9 = 512 s is over it.
    assert b.delay(9) == 256 * S
    assert b.delay(10) == timedelta(minutes=5)


def test_exponential_custom_sequence_and_cap() -> None:
    b = Exponential(initial=100 * MS, multiplier=3.0, maximum=5 * S, jitter=False)
    assert sequence(b) == [100 * MS, 300 * MS, 900 * MS, 2700 * MS, 5 * S, 5 * S]


def test_exponential_fractional_multiplier() -> None:
    b = Exponential(initial=S, multiplier=1.5, maximum=timedelta(minutes=1), jitter=False)
    expected = [timedelta(seconds=1.5 ** (n - 1)) for n in range(1, 7)]
    assert sequence(b) == expected


def test_exponential_multiplier_one_is_constant() -> None:
    assert sequence(Exponential(initial=3 * S, multiplier=1.0, jitter=False)) == [3 * S] * 6


def test_exponential_int_multiplier_is_normalised_to_float() -> None:
    b = Exponential(multiplier=2)
    assert isinstance(b.multiplier, float)
    assert b == Exponential(multiplier=2.0)


def test_exponential_zero_initial_stays_zero() -> None:
    b = Exponential(initial=timedelta(0), jitter=False)
    assert sequence(b) == [timedelta(0)] * 6


def test_maximum_equal_to_initial_is_allowed() -> None:
    assert sequence(Exponential(initial=7 * S, maximum=7 * S, jitter=False)) == [7 * S] * 6
    assert sequence(Linear(initial=7 * S, maximum=7 * S)) == [7 * S] * 6


# --- overflow safety ------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [64, 1_025, 10_000, 10**9, 10**400])
def test_exponential_huge_attempt_returns_maximum(attempt: int) -> None:
    b = Exponential(jitter=False)
    start = time.perf_counter()
    assert b.delay(attempt) == timedelta(minutes=5)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("attempt", [10_000, 10**9])
def test_exponential_huge_attempt_with_huge_maximum(attempt: int) -> None:
    b = Exponential(initial=timedelta(microseconds=1), multiplier=1e300, maximum=timedelta.max)
    assert b.delay(attempt, random.Random(0)) <= timedelta.max
    assert dataclasses.replace(b, jitter=False).delay(attempt) == timedelta.max


def test_exponential_tiny_multiplier_large_attempt() -> None:
    # log(multiplier) is tiny, so the cap is only reached for very large attempts.
    b = Exponential(initial=S, multiplier=1.000001, maximum=2 * S, jitter=False)
    assert S < b.delay(100_000) < 2 * S
    assert b.delay(10**9) == 2 * S


@pytest.mark.parametrize("attempt", [10_000, 10**9])
def test_linear_huge_attempt_returns_maximum(attempt: int) -> None:
    assert Linear().delay(attempt) == timedelta(minutes=5)


def test_linear_without_maximum_is_capped_at_a_year() -> None:
    b = Linear(step=timedelta(days=1), maximum=None)
    assert b.delay(3) == timedelta(days=2, seconds=1)
    assert b.delay(10**9) == _LINEAR_UNBOUNDED_CAP == timedelta(days=365)


def test_linear_without_maximum_keeps_a_longer_initial() -> None:
    b = Linear(initial=timedelta(days=400), maximum=None)
    assert b.delay(1) == timedelta(days=400)
    assert b.delay(10**9) == timedelta(days=400)


# --- jitter ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b",
    [
        Fixed(10 * S, jitter=True),
        Linear(initial=S, step=2 * S, maximum=9 * S, jitter=True),
        Exponential(initial=S, maximum=20 * S, jitter=True),
    ],
    ids=["fixed", "linear", "exponential"],
)
def test_jitter_within_bounds_and_deterministic(b: Backoff) -> None:
    plain = dataclasses.replace(b, jitter=False) if not isinstance(b, Fixed) else Fixed(b.interval)
    rng = random.Random(1234)
    draws = [b.delay(attempt, rng) for attempt in range(1, 7) for _ in range(50)]
    for i, d in enumerate(draws):
        assert timedelta(0) <= d <= plain.delay(i // 50 + 1)
    # Full jitter spreads over the whole range, not just near the top.
    assert len(set(draws)) > 250
    assert min(draws) < plain.delay(1) / 2

    again = random.Random(1234)
    assert draws == [b.delay(attempt, again) for attempt in range(1, 7) for _ in range(50)]


def test_jitter_without_rng_uses_module_random() -> None:
    b = Exponential()
    for attempt in range(1, 20):
        assert timedelta(0) <= b.delay(attempt) <= timedelta(minutes=5)


def test_jitter_on_zero_delay_is_zero() -> None:
    assert Fixed(timedelta(0), jitter=True).delay(1, random.Random(0)) == timedelta(0)


def test_jitter_on_huge_delay_stays_in_range() -> None:
    b = Exponential(initial=timedelta.max, maximum=timedelta.max)
    rng = random.Random(5)
    for _ in range(100):
        assert timedelta(0) <= b.delay(10**9, rng) <= timedelta.max


# --- invalid input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Fixed(-S), "delay"),
        (lambda: Linear(initial=-S), "initial"),
        (lambda: Linear(step=-S), "step"),
        (lambda: Linear(maximum=-S), "maximum"),
        (lambda: Linear(initial=10 * S, maximum=5 * S), "maximum"),
        (lambda: Exponential(initial=-S), "initial"),
        (lambda: Exponential(maximum=-S), "maximum"),
        (lambda: Exponential(initial=10 * S, maximum=5 * S), "maximum"),
        (lambda: Exponential(multiplier=0.5), "multiplier"),
        (lambda: Exponential(multiplier=-2.0), "multiplier"),
        (lambda: Exponential(multiplier=float("inf")), "multiplier"),
        (lambda: Exponential(multiplier=float("nan")), "multiplier"),
        (lambda: Exponential(multiplier=True), "multiplier"),
        (lambda: Exponential(multiplier="2"), "multiplier"),  # type: ignore[arg-type]
        (lambda: Fixed(5), "delay"),  # type: ignore[arg-type]
        (lambda: Linear(step=1.0), "step"),  # type: ignore[arg-type]
        (lambda: Exponential(jitter=1), "jitter"),  # type: ignore[arg-type]
    ],
)
def test_invalid_config_raises(make: object, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        make()  # type: ignore[operator]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="multiplier"):
        Exponential(multiplier=0.0)


@pytest.mark.parametrize("b", [Fixed(), Linear(), Exponential()], ids=["f", "l", "e"])
@pytest.mark.parametrize("attempt", [0, -1])
def test_delay_rejects_attempt_below_one(b: Backoff, attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        b.delay(attempt)


def test_strategies_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Exponential().initial = S  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Fixed().interval = S  # type: ignore[misc]


def test_fixed_repr_matches_constructor() -> None:
    assert repr(Fixed(2 * S, jitter=True)) == (
        "Fixed(delay=datetime.timedelta(seconds=2), jitter=True)"
    )
    assert Fixed(2 * S) == Fixed(delay=2 * S)
    assert Fixed(2 * S) != Fixed(3 * S)


# --- JSON -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b",
    [
        Fixed(),
        Fixed(timedelta(seconds=30), jitter=True),
        Linear(),
        Linear(initial=250 * MS, step=2 * S, maximum=None, jitter=True),
        Exponential(),
        Exponential(initial=100 * MS, multiplier=1.5, maximum=timedelta(hours=1), jitter=False),
    ],
)
def test_json_round_trip(b: Backoff) -> None:
    assert backoff_from_json(backoff_to_json(b)) == b


def test_json_shape() -> None:
    assert backoff_to_json(Exponential()) == (
        b'{"type":"exponential","initial_ms":1000,"multiplier":2.0,'
        b'"maximum_ms":300000,"jitter":true}'
    )
    assert backoff_to_json(Fixed(5 * S)) == b'{"type":"fixed","delay_ms":5000,"jitter":false}'
    assert backoff_to_json(Linear(maximum=None)) == (
        b'{"type":"linear","initial_ms":1000,"step_ms":1000,"maximum_ms":null,"jitter":false}'
    )


def test_json_empty_object_is_default_exponential() -> None:
    assert backoff_from_json(b"{}") == Exponential()


def test_json_missing_keys_take_defaults() -> None:
    assert backoff_from_json(b'{"type":"fixed"}') == Fixed()
    assert backoff_from_json(b'{"type":"linear","step_ms":5000}') == Linear(step=5 * S)
    assert backoff_from_json(b'{"multiplier":3}') == Exponential(multiplier=3.0)


def test_json_ignores_unknown_keys() -> None:
    assert backoff_from_json(b'{"type":"fixed","delay_ms":10,"future":1}') == Fixed(10 * MS)


def test_json_rounds_sub_millisecond_durations() -> None:
    # Rounding is monotonic, so maximum >= initial still holds after the round trip.
    b = Linear(initial=timedelta(microseconds=1_499), maximum=timedelta(microseconds=1_500))
    assert backoff_from_json(backoff_to_json(b)) == Linear(initial=1 * MS, maximum=2 * MS)


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"nope"}',
        b'{"type":3}',
        b"[]",
        b"not json",
        b'{"type":"fixed","delay_ms":"5"}',
        b'{"type":"fixed","delay_ms":true}',
        b'{"type":"fixed","delay_ms":-5}',
        b'{"type":"exponential","multiplier":0.5}',
        b'{"type":"exponential","initial_ms":10,"maximum_ms":5}',
        b'{"type":"fixed","delay_ms":100000000000000000000000}',
    ],
)
def test_json_invalid_raises_configuration_error(data: bytes) -> None:
    with pytest.raises(ConfigurationError):
        backoff_from_json(data)


def test_json_unknown_type_names_it() -> None:
    with pytest.raises(ConfigurationError, match="nope"):
        backoff_from_json(b'{"type":"nope"}')


# --- Retry policy ---------------------------------------------------------------------------


def test_retry_defaults() -> None:
    r = Retry()
    assert r.max_attempts == 3
    assert r.backoff == Exponential()


@pytest.mark.parametrize("value", [0, -3, True, False, 2.0, "3", None])
def test_retry_rejects_bad_max_attempts(value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_attempts must be >= 1"):
        Retry(max_attempts=value)  # type: ignore[arg-type]


def test_retry_max_attempts_message() -> None:
    with pytest.raises(ConfigurationError) as info:
        Retry(max_attempts=0)
    assert str(info.value) == "max_attempts must be >= 1, got 0"


def test_retry_rejects_non_backoff() -> None:
    with pytest.raises(ConfigurationError, match="backoff"):
        Retry(backoff=timedelta(seconds=1))  # type: ignore[arg-type]


def test_retry_action_values() -> None:
    assert [a.value for a in RetryAction] == ["retry", "fail", "dead_letter"]
    assert RetryAction("dead_letter") is RetryAction.DEAD_LETTER
    assert f"{RetryAction.RETRY}" == "retry"


# --- decide_retry ---------------------------------------------------------------------------

NO_JITTER = Exponential(jitter=False)


def test_not_retryable_fails() -> None:
    for attempt in (1, 2, 3):
        d = decide_retry(attempt=attempt, max_attempts=3, retryable=False, backoff=NO_JITTER)
        assert d == RetryDecision(RetryAction.FAIL, None)


def test_retryable_at_cap_dead_letters() -> None:
    d = decide_retry(attempt=3, max_attempts=3, retryable=True, backoff=NO_JITTER)
    assert d == RetryDecision(RetryAction.DEAD_LETTER, None)
    d = decide_retry(attempt=1, max_attempts=1, retryable=True, backoff=NO_JITTER)
    assert d.action is RetryAction.DEAD_LETTER


def test_retryable_before_cap_retries_with_backoff_delay() -> None:
    d1 = decide_retry(attempt=1, max_attempts=5, retryable=True, backoff=NO_JITTER)
    d4 = decide_retry(attempt=4, max_attempts=5, retryable=True, backoff=NO_JITTER)
    assert d1 == RetryDecision(RetryAction.RETRY, 1 * S)
    assert d4 == RetryDecision(RetryAction.RETRY, 8 * S)


def test_retry_uses_rng_for_jitter() -> None:
    b = Exponential(jitter=True)
    d = decide_retry(attempt=4, max_attempts=5, retryable=True, backoff=b, rng=random.Random(9))
    assert d.action is RetryAction.RETRY
    assert d.delay == b.delay(4, random.Random(9))


def test_requested_delay_overrides_backoff() -> None:
    d = decide_retry(
        attempt=1,
        max_attempts=3,
        retryable=True,
        backoff=NO_JITTER,
        requested_delay=timedelta(hours=2),
    )
    assert d == RetryDecision(RetryAction.RETRY, timedelta(hours=2))


def test_negative_requested_delay_is_clamped_to_zero() -> None:
    d = decide_retry(
        attempt=1, max_attempts=3, retryable=True, backoff=NO_JITTER, requested_delay=-S
    )
    assert d == RetryDecision(RetryAction.RETRY, timedelta(0))


def test_requested_delay_does_not_grant_extra_attempt() -> None:
    d = decide_retry(
        attempt=3, max_attempts=3, retryable=True, backoff=NO_JITTER, requested_delay=S
    )
    assert d.action is RetryAction.DEAD_LETTER


@pytest.mark.parametrize(
    ("attempt", "max_attempts"),
    [(0, 3), (-1, 3), (4, 3), (10**9, 3), (1, 0), (0, 0), (1, -1)],
)
@pytest.mark.parametrize("retryable", [True, False])
def test_out_of_range_attempt_raises(attempt: int, max_attempts: int, retryable: bool) -> None:
    with pytest.raises(RetryCapExceeded):
        decide_retry(
            attempt=attempt, max_attempts=max_attempts, retryable=retryable, backoff=NO_JITTER
        )


# --- properties -----------------------------------------------------------------------------

durations = st.integers(min_value=0, max_value=10**12).map(lambda us: timedelta(microseconds=us))


@st.composite
def backoffs(draw: st.DrawFn) -> tuple[Backoff, timedelta]:
    """A backoff strategy and the largest delay it may ever return."""
    jitter = draw(st.booleans())
    kind = draw(st.sampled_from(["fixed", "linear", "exponential"]))
    if kind == "fixed":
        delay = draw(durations)
        return Fixed(delay, jitter=jitter), delay
    initial = draw(durations)
    maximum = initial + draw(durations)
    if kind == "linear":
        b = Linear(initial=initial, step=draw(durations), maximum=maximum, jitter=jitter)
        return b, maximum
    multiplier = draw(st.floats(min_value=1.0, max_value=1e6, allow_nan=False))
    return Exponential(initial, multiplier, maximum, jitter), maximum


@given(
    policy=backoffs(),
    max_attempts=st.integers(min_value=1, max_value=50),
    data=st.data(),
    retryable=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_decision_properties(
    policy: tuple[Backoff, timedelta],
    max_attempts: int,
    data: st.DataObject,
    retryable: bool,
    seed: int,
) -> None:
    backoff, upper = policy
    attempt = data.draw(st.integers(min_value=1, max_value=max_attempts), label="attempt")
    d = decide_retry(
        attempt=attempt,
        max_attempts=max_attempts,
        retryable=retryable,
        backoff=backoff,
        rng=random.Random(seed),
    )
    if attempt == max_attempts:
        assert d.action is not RetryAction.RETRY
    if not retryable:
        assert d.action is RetryAction.FAIL
    if d.action is RetryAction.RETRY:
        assert d.delay is not None
        assert timedelta(0) <= d.delay <= upper
    else:
        assert d.delay is None


@given(policy=backoffs(), attempt=st.integers(min_value=1, max_value=10**12))
def test_delay_within_bounds_for_any_attempt(
    policy: tuple[Backoff, timedelta], attempt: int
) -> None:
    backoff, upper = policy
    assert timedelta(0) <= backoff.delay(attempt, random.Random(attempt)) <= upper


@given(policy=backoffs())
def test_json_round_trip_property(policy: tuple[Backoff, timedelta]) -> None:
    backoff, _ = policy
    restored = backoff_from_json(backoff_to_json(backoff))
    assert type(restored) is type(backoff)
    assert backoff_to_json(restored) == backoff_to_json(backoff)
