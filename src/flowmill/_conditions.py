"""Resume conditions for suspended tasks: `Signal(...) | Signal(...)`, `&`, `Count(n, ...)`.

A condition is stored as JSON with the suspension and evaluated by the store, inside the
transaction that records a signal, so "satisfied" and "resumed" happen together. The
evaluator is pure and shared by every backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from .errors import ConfigurationError


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


class Condition:
    """Base of the resume conditions; combine with `|` (any) and `&` (all)."""

    def __or__(self, other: Condition) -> Condition:
        return AnyOf((*_flatten(self, AnyOf), *_flatten(other, AnyOf)))

    def __and__(self, other: Condition) -> Condition:
        return AllOf((*_flatten(self, AllOf), *_flatten(other, AllOf)))

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


def _flatten(c: Condition, kind: type[AnyOf] | type[AllOf]) -> tuple[Condition, ...]:
    return c.parts if isinstance(c, kind) else (c,)


def _waitpoint_id(waitpoint: _HasId | str | None) -> str | None:
    if waitpoint is None or isinstance(waitpoint, str):
        return waitpoint
    return waitpoint.id


@dataclass(frozen=True, slots=True, init=False)
class Signal(Condition):
    """A signal named `name` (`"*"`: any name), on `waitpoint` (None: any waitpoint)."""

    name: str
    waitpoint_id: str | None

    def __init__(self, name: str, waitpoint: _HasId | str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a signal name must be a non-empty string, got {name!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "waitpoint_id", _waitpoint_id(waitpoint))

    def to_json(self) -> dict[str, Any]:
        return {"signal": self.name, "waitpoint": self.waitpoint_id}


@dataclass(frozen=True, slots=True)
class AnyOf(Condition):
    parts: tuple[Condition, ...]

    def to_json(self) -> dict[str, Any]:
        return {"any": [p.to_json() for p in self.parts]}


@dataclass(frozen=True, slots=True)
class AllOf(Condition):
    parts: tuple[Condition, ...]

    def to_json(self) -> dict[str, Any]:
        return {"all": [p.to_json() for p in self.parts]}


@dataclass(frozen=True, slots=True, init=False)
class Count(Condition):
    """At least `n` signals matching `of` (e.g. three approvals)."""

    n: int
    of: Signal

    def __init__(self, n: int, of: Signal) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"Count needs n >= 1, got {n!r}")
        if not isinstance(of, Signal):
            raise ConfigurationError("Count counts signals: Count(3, fm.Signal(...))")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "of", of)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.n, "of": self.of.to_json()}


def encode_condition(condition: Condition) -> bytes:
    if not isinstance(condition, Condition):
        raise ConfigurationError(
            f"suspend needs a condition such as fm.Signal(...), got {condition!r}"
        )
    return msgspec.json.encode(condition.to_json())


# -- the evaluator the stores run -------------------------------------------------------

SignalKey = tuple[str, str]  # (waitpoint id, signal name)


def _matches(spec: Mapping[str, Any], key: SignalKey) -> bool:
    waitpoint, name = key
    return spec["signal"] in ("*", name) and spec.get("waitpoint") in (None, waitpoint)


def satisfied(condition: Mapping[str, Any], signals: Iterable[SignalKey]) -> bool:
    """Whether the signals received (in order, duplicates removed) satisfy the condition."""
    seen = list(signals)
    return _eval(condition, seen)


def _eval(c: Mapping[str, Any], seen: list[SignalKey]) -> bool:
    if "signal" in c:
        return any(_matches(c, k) for k in seen)
    if "any" in c:
        return any(_eval(p, seen) for p in c["any"])
    if "all" in c:
        return all(_eval(p, seen) for p in c["all"])
    if "count" in c:
        return sum(1 for k in seen if _matches(c["of"], k)) >= int(c["count"])
    raise ValueError(f"unknown condition {c!r}")


def decode_condition(data: bytes | str) -> dict[str, Any]:
    value = msgspec.json.decode(data)
    if not isinstance(value, dict):
        raise ValueError("a condition is a JSON object")
    return value
