"""Tests for flowmill._codec: typed JSON codecs and handler signature inspection."""

# String annotations on purpose: inspect_handler must resolve them with get_type_hints.
from __future__ import annotations

import dataclasses
import datetime
import decimal
import time
import uuid
from collections.abc import Coroutine
from typing import Any, Generic, Literal, TypedDict, TypeVar

import msgspec
import pydantic
import pytest

from flowmill._codec import (
    DEFAULT_MAX_BYTES,
    Codec,
    HandlerSignature,
    describe_type,
    inspect_executor_generic,
    inspect_handler,
)
from flowmill.errors import ConfigurationError, PayloadError, PayloadTooLarge

NoneType = type(None)


@dataclasses.dataclass
class AddArgs:
    a: int
    b: int


@dataclasses.dataclass
class Item:
    sku: str
    qty: int = 1


@dataclasses.dataclass
class Order:
    order_id: int
    items: list[Item]
    note: str | None = None
    shipped_at: datetime.datetime | None = None


class Point(msgspec.Struct):
    x: float
    y: float


class User(pydantic.BaseModel):
    name: str
    age: int


class Team(pydantic.BaseModel):
    title: str
    members: list[User]


class Movie(TypedDict):
    title: str
    year: int


T = TypeVar("T")


@dataclasses.dataclass
class Box(Generic[T]):
    value: T


def codec(tp: Any, **kwargs: Any) -> Codec[Any]:
    return Codec(tp, task="add", what="payload", **kwargs)


# --- round trips ---------------------------------------------------------------------------

ROUND_TRIPS = [
    pytest.param(AddArgs, AddArgs(1, 2), id="dataclass"),
    pytest.param(
        Order,
        Order(
            order_id=7,
            items=[Item("a"), Item("b", 3)],
            note=None,
            shipped_at=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        ),
        id="nested-dataclass",
    ),
    pytest.param(Order, Order(order_id=8, items=[], note="gift"), id="dataclass-optional-set"),
    pytest.param(Point, Point(1.5, -2.0), id="struct"),
    pytest.param(User, User(name="ada", age=36), id="pydantic"),
    pytest.param(
        Team,
        Team(title="core", members=[User(name="ada", age=36), User(name="bo", age=2)]),
        id="pydantic-nested",
    ),
    pytest.param(list[User], [User(name="ada", age=36)], id="list-of-pydantic"),
    pytest.param(int, 42, id="int"),
    pytest.param(int, 2**70, id="big-int"),
    pytest.param(float, 2.5, id="float"),
    pytest.param(str, "héllo ✓", id="str"),
    pytest.param(bool, False, id="bool"),
    pytest.param(list[int], [1, 2, 3], id="list-int"),
    pytest.param(dict[str, float], {"a": 1.5, "b": -0.25}, id="dict-str-float"),
    pytest.param(tuple[int, str], (1, "x"), id="tuple"),
    pytest.param(NoneType, None, id="none"),
    pytest.param(int | None, None, id="optional-none"),
    pytest.param(int | None, 3, id="optional-int"),
    pytest.param(Literal["a", "b"], "b", id="literal"),
    pytest.param(Any, {"free": ["form", 1, None]}, id="any"),
    pytest.param(
        datetime.datetime, datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), id="dt"
    ),
    pytest.param(datetime.date, datetime.date(2024, 1, 2), id="date"),
    pytest.param(uuid.UUID, uuid.UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
    pytest.param(decimal.Decimal, decimal.Decimal("1.10"), id="decimal"),
    pytest.param(Movie, {"title": "Heat", "year": 1995}, id="typeddict"),
    pytest.param(Box[int], Box(5), id="generic-dataclass"),
    pytest.param(dict[str, AddArgs], {"x": AddArgs(1, 2)}, id="dict-of-dataclass"),
]


@pytest.mark.parametrize(("tp", "value"), ROUND_TRIPS)
def test_round_trip(tp: Any, value: Any) -> None:
    c = codec(tp)
    data = c.encode(value)
    assert isinstance(data, bytes)
    assert c.decode(data) == value


def test_encode_produces_plain_json() -> None:
    assert codec(AddArgs).encode(AddArgs(1, 2)) == b'{"a":1,"b":2}'
    assert codec(User).encode(User(name="ada", age=36)) == b'{"name":"ada","age":36}'


def test_decoded_types_match_declaration() -> None:
    order = codec(Order).decode(b'{"order_id":1,"items":[{"sku":"a"}]}')
    assert order == Order(order_id=1, items=[Item("a", 1)])
    assert isinstance(order.items[0], Item)
    assert codec(dict[str, float]).decode(b'{"a":1}') == {"a": 1.0}


def test_codec_exposes_declared_type() -> None:
    c = Codec(list[int], task="t", what="result")
    assert c.type == list[int]
    assert DEFAULT_MAX_BYTES == 1024 * 1024
    assert "list[int]" in repr(c)


# --- encode-side type checks -------------------------------------------------------------


def test_dataclass_given_dict_is_rejected() -> None:
    with pytest.raises(PayloadError, match=r"^task 'add': payload must be AddArgs, got dict$"):
        codec(AddArgs).encode({"a": 1, "b": 2})


def test_int_given_str_is_rejected() -> None:
    with pytest.raises(PayloadError, match=r"task 'add': payload must be int, got str"):
        codec(int).encode("1")


def test_int_given_bool_is_rejected() -> None:
    with pytest.raises(PayloadError, match=r"must be int, got bool"):
        codec(int).encode(True)


def test_float_accepts_int() -> None:
    c = codec(float)
    assert c.decode(c.encode(3)) == 3.0


def test_list_with_wrong_element_names_the_position() -> None:
    with pytest.raises(PayloadError, match=r"must be list\[int\], got list") as info:
        codec(list[int]).encode([1, "x"])
    assert "$[1]" in str(info.value)
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


@pytest.mark.parametrize(
    ("tp", "value", "expected"),
    [
        (int | None, "x", "int | None"),
        (NoneType, 0, "None"),
        (datetime.datetime, "2024-01-01T00:00:00", "datetime"),
        (datetime.date, datetime.datetime(2024, 1, 1), "date"),
        (Movie, {"title": "Heat"}, "Movie"),
        (Literal["a", "b"], "c", "Literal['a', 'b']"),
        (Point, {"x": 1, "y": 2}, "Point"),
        (User, {"name": "ada", "age": 1}, "User"),
        (dict[str, AddArgs], {"x": 1}, "dict[str, AddArgs]"),
        (Box[int], {"value": 1}, "Box[int]"),
    ],
)
def test_wrong_type_names_expected_type(tp: Any, value: Any, expected: str) -> None:
    with pytest.raises(PayloadError) as info:
        codec(tp).encode(value)
    assert f"must be {expected}, got " in str(info.value)
    assert info.value.task == "add"  # type: ignore[attr-defined]
    assert info.value.what == "payload"  # type: ignore[attr-defined]


@pytest.mark.parametrize("tp", [Any, object])
def test_any_skips_validation(tp: Any) -> None:
    c = codec(tp)
    assert c.decode(c.encode({"k": [1, "two", None]})) == {"k": [1, "two", None]}
    assert c.decode(c.encode(AddArgs(1, 2))) == {"a": 1, "b": 2}


def test_result_messages_say_result() -> None:
    c = Codec(int, task="add", what="result")
    with pytest.raises(PayloadError, match=r"^task 'add': result must be int, got str"):
        c.encode("x")


# --- unencodable values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (Any, {object(), object()}),
        (Any, object()),
        (list[Any], [1, object()]),
    ],
)
def test_unencodable_value_is_payload_error(tp: Any, value: Any) -> None:
    with pytest.raises(PayloadError, match=r"task 'add': payload .*cannot be encoded as JSON"):
        codec(tp).encode(value)


def test_unencodable_field_of_valid_dataclass_is_payload_error() -> None:
    @dataclasses.dataclass
    class Holder:
        thing: Any

    with pytest.raises(PayloadError, match=r"cannot be encoded as JSON: .*unsupported") as info:
        codec(Holder).encode(Holder(thing=object()))
    assert not isinstance(info.value, PayloadTooLarge)


def test_recursive_value_is_payload_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(PayloadError, match=r"cannot be encoded as JSON"):
        codec(Any).encode(loop)


# --- decode errors -----------------------------------------------------------------------


def test_decode_wrong_field_type_names_task_path_and_type() -> None:
    with pytest.raises(PayloadError) as info:
        codec(AddArgs).decode(b'{"a": 1, "b": "x"}')
    message = str(info.value)
    assert message.startswith("task 'add': payload does not decode as AddArgs: ")
    assert "$.b" in message
    assert "int" in message
    assert info.value.task == "add"  # type: ignore[attr-defined]
    assert info.value.what == "payload"  # type: ignore[attr-defined]
    assert isinstance(info.value.__cause__, msgspec.ValidationError)


def test_decode_missing_field() -> None:
    with pytest.raises(PayloadError, match=r"missing required field `b`"):
        codec(AddArgs).decode(b'{"a": 1}')


def test_decode_nested_error_has_full_path() -> None:
    with pytest.raises(PayloadError, match=r"\$\.items\[1\]\.qty"):
        codec(Order).decode(b'{"order_id": 1, "items": [{"sku": "a"}, {"sku": "b", "qty": "2"}]}')


@pytest.mark.parametrize("tp", [AddArgs, int, list[int], User, Any])
@pytest.mark.parametrize("data", [b"{not json", b"", b'{"a": 1', b"\xff\xfe"])
def test_invalid_json_is_payload_error(tp: Any, data: bytes) -> None:
    with pytest.raises(PayloadError, match=r"^task 'add': payload does not decode as "):
        codec(tp).decode(data)


def test_pydantic_bad_field_names_field() -> None:
    with pytest.raises(PayloadError) as info:
        codec(User).decode(b'{"name": "ada", "age": "old"}')
    message = str(info.value)
    assert message.startswith("task 'add': payload does not decode as User: ")
    assert "$.age" in message
    assert "integer" in message
    assert info.value.what == "payload"  # type: ignore[attr-defined]
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_pydantic_nested_bad_field_names_field_and_path() -> None:
    with pytest.raises(PayloadError) as info:
        codec(list[User]).decode(b'[{"name": "ada", "age": 1}, {"name": "bo", "age": "x"}]')
    message = str(info.value)
    assert "User field `age`" in message
    assert "$[1]" in message


def test_pydantic_many_errors_are_summarised() -> None:
    class Wide(pydantic.BaseModel):
        f0: int
        f1: int
        f2: int
        f3: int
        f4: int
        f5: int
        f6: int

    with pytest.raises(PayloadError, match=r"and 2 more errors"):
        codec(Wide).decode(b"{}")


# --- size limit --------------------------------------------------------------------------


def test_size_limit() -> None:
    c = codec(str, max_bytes=100)
    assert len(c.encode("x" * 97)) == 99
    assert len(c.encode("x" * 98)) == 100  # exactly at the limit is allowed
    with pytest.raises(PayloadTooLarge) as info:
        c.encode("x" * 99)
    err = info.value
    assert err.size == 101
    assert err.limit == 100
    assert isinstance(err, PayloadError)
    assert str(err) == "task 'add' payload is 101 bytes, over the limit of 100 bytes"
    assert err.task == "add"  # type: ignore[attr-defined]


def test_size_limit_applies_to_pydantic() -> None:
    with pytest.raises(PayloadTooLarge):
        codec(User, max_bytes=10).encode(User(name="a" * 20, age=1))


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_invalid_max_bytes(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_bytes"):
        codec(int, max_bytes=bad)


def test_unsupported_type_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"task 'add': payload type"):
        codec("NotAType")


# --- speed -------------------------------------------------------------------------------


def test_small_dataclass_is_fast() -> None:
    c = codec(AddArgs)
    value = AddArgs(1, 2)
    data = c.encode(value)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        c.decode(c.encode(value))
    per_call = (time.perf_counter() - start) / n
    assert c.decode(data) == value
    # A generous bound (typical is ~1us) so slow CI machines do not flake.
    assert per_call < 50e-6


# --- describe_type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "expected"),
    [
        (AddArgs, "AddArgs"),
        (int, "int"),
        (list[int], "list[int]"),
        (int | None, "int | None"),
        (dict[str, float], "dict[str, float]"),
        (tuple[int, ...], "tuple[int, ...]"),
        (NoneType, "None"),
        (None, "None"),
        (Any, "Any"),
        (Literal["a", 1], "Literal['a', 1]"),
        (Box[int], "Box[int]"),
        (list[AddArgs | None], "list[AddArgs | None]"),
    ],
)
def test_describe_type(tp: Any, expected: str) -> None:
    assert describe_type(tp) == expected


# --- inspect_handler ---------------------------------------------------------------------


def sync_handler(payload: AddArgs) -> int:
    return payload.a + payload.b


def sync_handler_ctx(payload: AddArgs, ctx: Any) -> list[int]:
    return [payload.a]


async def async_handler(payload: Order) -> Item:
    return payload.items[0]


async def async_handler_ctx(payload: int, ctx: object) -> None:
    return None


def unannotated(payload, ctx):  # type: ignore[no-untyped-def]
    return payload


def no_params() -> str:
    return "ok"


def returns_none(payload: Movie | None) -> None:
    return None


def coroutine_returner(payload: int) -> Coroutine[Any, Any, str]:
    return async_str(payload)


async def async_str(payload: int) -> str:
    return str(payload)


def with_defaults(payload: int, ctx: Any = None, extra: int = 3, *, flag: bool = False) -> int:
    return payload


def too_many(a: int, b: int, c: int) -> int:
    return a


def kw_only(payload: int, *, needed: int) -> int:
    return payload


def star_args(*args: Any) -> None:
    return None


def bad_annotation(payload: DoesNotExist) -> None:  # type: ignore[name-defined]  # noqa: F821
    return None


class Service:
    def handle(self, payload: AddArgs, ctx: Any) -> int:
        return payload.a

    async def handle_async(self, payload: User) -> User:
        return payload


class CallableHandler:
    def __call__(self, payload: Point) -> float:
        return payload.x


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (sync_handler, HandlerSignature(AddArgs, int, False)),
        (sync_handler_ctx, HandlerSignature(AddArgs, list[int], True)),
        (async_handler, HandlerSignature(Order, Item, False)),
        (async_handler_ctx, HandlerSignature(int, NoneType, True)),
        (unannotated, HandlerSignature(Any, Any, True)),
        (no_params, HandlerSignature(NoneType, str, False)),
        (returns_none, HandlerSignature(Movie | None, NoneType, False)),
        (coroutine_returner, HandlerSignature(int, str, False)),
        (with_defaults, HandlerSignature(int, int, True)),
        (Service().handle, HandlerSignature(AddArgs, int, True)),
        (Service().handle_async, HandlerSignature(User, User, False)),
        (CallableHandler(), HandlerSignature(Point, float, False)),
    ],
    ids=lambda v: v.__class__.__name__ if isinstance(v, HandlerSignature) else None,
)
def test_inspect_handler(fn: Any, expected: HandlerSignature) -> None:
    assert inspect_handler(fn) == expected


def test_inspect_handler_resolves_string_annotations() -> None:
    # This module uses `from __future__ import annotations`: the raw annotations are str.
    assert sync_handler.__annotations__["payload"] == "AddArgs"
    sig = inspect_handler(sync_handler)
    assert sig.payload_type is AddArgs
    assert sig.result_type is int


def test_inspect_handler_feeds_codec() -> None:
    sig = inspect_handler(sync_handler_ctx)
    payload = Codec(sig.payload_type, task="add", what="payload")
    result = Codec(sig.result_type, task="add", what="result")
    assert payload.decode(payload.encode(AddArgs(1, 2))) == AddArgs(1, 2)
    assert result.decode(result.encode([3])) == [3]


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (too_many, r"too_many: takes 3 required parameters"),
        (kw_only, r"kw_only: keyword-only parameter\(s\) needed"),
        (star_args, r"star_args: takes only \*args"),
        (bad_annotation, r"bad_annotation: cannot resolve its type annotations"),
    ],
)
def test_inspect_handler_rejects(fn: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        inspect_handler(fn)


# --- inspect_executor_generic ------------------------------------------------------------

P = TypeVar("P")
M = TypeVar("M")
R = TypeVar("R")


class Base(Generic[P, M, R]):
    pass


class Scan(Base[AddArgs, int, list[str]]):
    pass


class SubScan(Scan):
    pass


class Mixin:
    pass


class Mixed(Mixin, Base[int, str, None]):
    pass


class Unparameterised(Base):  # type: ignore[type-arg]
    pass


class StillGeneric(Base[P, M, R]):
    pass


def test_inspect_executor_generic() -> None:
    assert inspect_executor_generic(Scan) == (AddArgs, int, list[str])
    assert inspect_executor_generic(SubScan) == (AddArgs, int, list[str])
    assert inspect_executor_generic(Mixed) == (int, str, NoneType)
    assert inspect_executor_generic(Unparameterised) == (Any, Any, Any)
    assert inspect_executor_generic(StillGeneric) == (Any, Any, Any)
    assert inspect_executor_generic(Base) == (Any, Any, Any)
    assert inspect_executor_generic(Mixin) == (Any, Any, Any)
