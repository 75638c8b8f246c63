"""Strict payloads: object fields a declared class lacks are refused by name; JSON syntax
errors say where; a task submitted by name takes plain JSON values only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import msgspec
import pydantic
import pytest

import flowmill as fm
from flowmill._codec import Codec
from flowmill._shape import json_syntax_error, non_json


@dataclass
class Inner:
    x: int


@dataclass
class Outer:
    name: str
    inner: Inner | None = None


@dataclass
class Tree:
    label: str
    children: list[Tree]


class Renamed(msgspec.Struct, rename="camel"):
    first_name: str


class Tagged(msgspec.Struct, tag=True):
    n: int


class Model(pydantic.BaseModel):
    a: int
    b: Inner | None = None


class Loose(pydantic.BaseModel, extra="allow"):
    a: int


class Typed(TypedDict):
    k: int


def codec(tp: object, strict: bool = True) -> Codec[object]:
    return Codec(tp, task="t", what="payload", strict=strict)


@pytest.mark.parametrize(
    ("tp", "data", "needle"),
    [
        (Outer, b'{"name": "a", "extra": 1}', "unknown field `extra` - at `$`"),
        (Outer, b'{"name": "a", "inner": {"x": 1, "y": 2}}', "unknown field `y` - at `$.inner`"),
        (list[Outer], b'[{"name": "a"}, {"name": "b", "z": 0}]', "field `z` - at `$[1]`"),
        (dict[str, Inner], b'{"k": {"x": 1, "w": 1}}', "field `w` - at `$.k`"),
        (tuple[int, Inner], b'[1, {"x": 1, "q": 1}]', "field `q` - at `$[1]`"),
        (Tree, b'{"label": "r", "children": [{"label": "c", "children": [], "n": 1}]}', "`n`"),
        (Renamed, b'{"firstName": "a", "first_name": "b"}', "unknown field `first_name`"),
        (Tagged, b'{"type": "Tagged", "n": 1, "m": 2}', "unknown field `m`"),
        (Model, b'{"a": 1, "c": 2}', "unknown field `c`"),
        (Model, b'{"a": 1, "b": {"x": 1, "y": 2}}', "field `y` - at `$.b`"),
        (Typed, b'{"k": 1, "j": 2}', "unknown field `j`"),
    ],
)
def test_unknown_fields_are_refused_by_name(tp: object, data: bytes, needle: str) -> None:
    with pytest.raises(fm.PayloadError) as err:
        codec(tp).decode(data)
    assert needle in str(err.value)
    assert "strict=False" in str(err.value)
    codec(tp, strict=False).decode(data)  # the opt-out ignores them


@pytest.mark.parametrize(
    ("tp", "data"),
    [
        (Outer, b'{"name": "a", "inner": null}'),
        (Tree, b'{"label": "r", "children": [{"label": "c", "children": []}]}'),
        (Renamed, b'{"firstName": "a"}'),
        (Tagged, b'{"type": "Tagged", "n": 1}'),
        (Loose, b'{"a": 1, "anything": 2}'),  # the model allows extras itself
        (dict[str, int], b'{"any": 1, "keys": 2}'),
        (object, b'{"a": {"b": 1}}'),
    ],
)
def test_declared_fields_and_open_types_pass(tp: object, data: bytes) -> None:
    codec(tp).decode(data)


def test_results_and_memos_are_not_strict() -> None:
    # A newer worker may return a field an older submitter's class lacks.
    app = fm.App("sqlite://:memory:")

    @app.task
    async def f(p: Outer) -> Outer:
        return p

    assert f.payload.strict and not f.result.strict
    assert f.result.decode(b'{"name": "a", "new": 1}') == Outer("a")


def test_strict_false_is_a_task_option() -> None:
    app = fm.App("sqlite://:memory:")

    @app.task(strict=False)
    async def f(p: Outer) -> None:
        return None

    class Ex(fm.Executor[Outer, None, None]):
        async def execute(self, req: Outer, ctx: fm.Context) -> None:
            return None

    ex = app.executor(strict=False)(Ex)
    assert f.payload.decode(b'{"name": "a", "new": 1}') == Outer("a")
    assert not ex.payload.strict


def test_plain_dicts_where_classes_are_declared_are_checked_at_submit() -> None:
    with pytest.raises(fm.PayloadError, match=r"unknown field `c` - at `\$\[0\]`"):
        codec(list[Inner]).encode([{"x": 1, "c": 2}])
    assert codec(list[Inner]).encode([{"x": 1}]) == b'[{"x":1}]'


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"a": 1', "line 1, column 8"),
        ("{bad", "line 1, column 2"),
        ('{\n  "a": 1,\n  "b": }', "line 3, column 8"),
        ("", "line 1, column 1"),
    ],
)
def test_json_syntax_errors_say_where(text: str, where: str) -> None:
    message = json_syntax_error(text)
    assert message is not None and where in message and "malformed JSON" in message
    with pytest.raises(fm.PayloadError) as err:
        codec(Outer).decode(text.encode())
    assert where in str(err.value)
    assert "truncated" not in str(err.value)


def test_valid_json_has_no_syntax_error() -> None:
    assert json_syntax_error('{"a": [1, 2.5, null, true]}') is None


def test_non_json_names_the_path() -> None:
    assert non_json({"a": [1, "x", None, {"b": True}], "c": 1.5}) is None
    assert non_json(Outer("a")) is None
    assert non_json({"a": [{"b": b"x"}]}) == (
        "`$.a[0].b` is a bytes; use str, int, float, bool, None, list or dict "
        "(or a dataclass, msgspec Struct or pydantic model)"
    )
    assert non_json(float("inf")) == "`$` is inf, which JSON cannot hold"
