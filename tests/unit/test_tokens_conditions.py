"""Waitpoint tokens (HMAC, rotation, constant-time checks) and resume conditions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import flowmill as fm
from flowmill._conditions import (
    AllOf,
    AnyOf,
    Count,
    Signal,
    decode_condition,
    encode_condition,
    satisfied,
)
from flowmill._tokens import TokenKeys, key_id, new_secret

A, B = b"a" * 32, b"b" * 32


def test_sign_and_verify() -> None:
    keys = TokenKeys(A)
    token = keys.sign("wp1", "task1", 1_000)
    assert keys.verify(token, "wp1", "task1", 1_000) is None
    assert token.startswith(key_id(A) + ".1000.")


@pytest.mark.parametrize(
    ("token_for", "checked_as", "why"),
    [
        (("wp1", "task1", 1_000), ("wp2", "task1", 1_000), "does not match"),  # wrong waitpoint
        (("wp1", "task1", 1_000), ("wp1", "task2", 1_000), "does not match"),  # wrong task
        (("wp1", "task1", 1_000), ("wp1", "task1", 2_000), "does not match"),  # other expiry
    ],
)
def test_tokens_bind_waitpoint_task_and_expiry(
    token_for: tuple[str, str, int], checked_as: tuple[str, str, int], why: str
) -> None:
    keys = TokenKeys(A)
    assert why in (keys.verify(keys.sign(*token_for), *checked_as) or "")


def test_forged_and_malformed_tokens() -> None:
    keys = TokenKeys(A)
    good = keys.sign("wp", "t", 5)
    kid, expiry, mac = good.split(".")
    forged = f"{kid}.{expiry}.{'A' * len(mac)}"
    assert keys.verify(forged, "wp", "t", 5) == "token does not match this waitpoint"
    assert keys.verify("garbage", "wp", "t", 5) == "malformed token"
    assert keys.verify(TokenKeys(B).sign("wp", "t", 5), "wp", "t", 5) == (
        "token signed with an unknown key"
    )


def test_rotation_keeps_old_tokens_valid() -> None:
    old_token = TokenKeys(A).sign("wp", "t", 9)
    rotated = TokenKeys(B, previous=A)
    assert rotated.verify(old_token, "wp", "t", 9) is None
    assert rotated.verify(rotated.sign("wp", "t", 9), "wp", "t", 9) is None
    assert TokenKeys(B).verify(old_token, "wp", "t", 9) == "token signed with an unknown key"


def test_secrets_must_be_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fm.ConfigurationError, match="too short"):
        TokenKeys(b"short")
    monkeypatch.setenv("FLOWMILL_SECRET", "x" * 40)
    monkeypatch.delenv("FLOWMILL_SECRET_PREVIOUS", raising=False)
    keys = TokenKeys.from_env(stored=A)
    assert keys is not None
    assert (keys.current, keys.previous) == (b"x" * 40, A)
    monkeypatch.delenv("FLOWMILL_SECRET")
    assert TokenKeys.from_env(stored=None) is None
    assert len(new_secret()) == 64


def test_condition_algebra_and_json_round_trip() -> None:
    approved, rejected = Signal("approved", "wp1"), Signal("rejected", "wp1")
    either = approved | rejected
    assert isinstance(either, AnyOf)
    both = Signal("a") & Signal("b") & Signal("c")
    assert isinstance(both, AllOf)
    assert len(both.parts) == 3
    three = Count(3, Signal("vote", "wp2"))
    spec = decode_condition(encode_condition(either | three))
    assert spec == {
        "any": [
            {"signal": "approved", "waitpoint": "wp1"},
            {"signal": "rejected", "waitpoint": "wp1"},
            {"count": 3, "of": {"signal": "vote", "waitpoint": "wp2"}},
        ]
    }


def test_evaluation() -> None:
    spec = decode_condition(
        encode_condition(
            (Signal("approved", "wp1") | Signal("rejected", "wp1")) & Count(2, Signal("vote"))
        )
    )
    assert not satisfied(spec, [("wp1", "approved")])
    assert not satisfied(spec, [("wp1", "approved"), ("wpX", "vote")])
    assert satisfied(spec, [("wp1", "approved"), ("wpX", "vote"), ("wpY", "vote")])
    assert not satisfied(spec, [("wp9", "approved"), ("a", "vote"), ("b", "vote")])
    assert satisfied(decode_condition(encode_condition(Signal("*"))), [("w", "anything")])


def test_bad_conditions() -> None:
    with pytest.raises(fm.ConfigurationError):
        Signal("")
    with pytest.raises(fm.ConfigurationError):
        Count(0, Signal("x"))
    with pytest.raises(fm.ConfigurationError):
        encode_condition("approved")  # type: ignore[arg-type]


@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=6), st.integers(1, 4))
def test_count_matches_a_plain_count(names: list[str], n: int) -> None:
    spec = decode_condition(encode_condition(Count(n, Signal("a"))))
    assert satisfied(spec, [("w", x) for x in names]) == (names.count("a") >= n)


@pytest.mark.parametrize(
    "token",
    [
        "é1234567.5.mac",  # a non-ASCII key id
        "ключ.5.mac",
        "00000000.5.\u00e9\u00e9\u00e9",  # a non-ASCII mac
        "\x00.5.\x00",
        "..",
        "a.b.c.d",
        "",
    ],
)
def test_garbage_tokens_are_refused_not_raised(token: str) -> None:
    keys = TokenKeys(A, previous=B)
    assert keys.verify(token, "wp", "t", 5) in (
        "malformed token",
        "token does not match this waitpoint",
        "token signed with an unknown key",
    )


def test_a_non_ascii_key_id_is_a_malformed_token() -> None:
    keys = TokenKeys(A)
    _, expiry, mac = keys.sign("wp", "t", 5).split(".")
    assert keys.verify(f"é{key_id(A)[1:]}.{expiry}.{mac}", "wp", "t", 5) == "malformed token"


@given(st.text(max_size=80))
def test_any_text_token_is_refused_with_a_reason(token: str) -> None:
    keys = TokenKeys(A)
    why = keys.verify(token, "wp", "t", 5)
    assert isinstance(why, str)
    assert why
