"""What a JSON value may hold: plain JSON for a task submitted by name, and no object
fields its declared classes lack for a strict payload (`@app.task(strict=False)` opts out).

A leaf: the codec builds on it, and it imports nothing of ours.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import msgspec


def pydantic_base() -> type[Any] | None:
    """Return pydantic's BaseModel if pydantic has been imported, else None."""
    # A BaseModel subclass or instance cannot exist unless pydantic is already imported,
    # so looking in sys.modules keeps pydantic optional and costs no import.
    base = getattr(sys.modules.get("pydantic"), "BaseModel", None)
    return base if isinstance(base, type) else None


def is_pydantic_model(tp: Any) -> bool:
    base = pydantic_base()
    return base is not None and isinstance(tp, type) and issubclass(tp, base)


def strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def is_structured_class(tp: Any) -> bool:
    return isinstance(tp, type) and (
        dataclasses.is_dataclass(tp) or issubclass(tp, msgspec.Struct) or is_pydantic_model(tp)
    )


def object_as_any(tp: Any) -> Any:
    """`object` means "any JSON value" here, but msgspec treats it as a custom class:
    rewrite it to `Any`, also inside generics (`list[object]`, `dict[str, object]`)."""
    if tp is object:
        return Any
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if not args or origin is None or origin is typing.Annotated or origin is typing.Literal:
        return tp
    new_args = tuple(object_as_any(a) for a in args)
    if new_args == args:
        return tp
    if origin is types.UnionType or origin is typing.Union:
        return typing.Union[new_args]  # noqa: UP007 - built from a tuple of types
    try:
        return origin[new_args]
    except TypeError:
        return tp


STRICT_HINT = (
    " (declare the field, or register the task with strict=False to ignore unknown fields)"
)

UnknownCheck = Callable[[Any, str], "str | None"]
"""Given a decoded JSON value and its path, a message naming an unknown field (or None)."""


def json_syntax_error(data: bytes | str) -> str | None:
    """Where JSON text is malformed: `malformed JSON at line 1, column 7: Expecting ','`."""
    try:
        json.loads(data)
    except json.JSONDecodeError as exc:
        return f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except (ValueError, RecursionError) as exc:  # e.g. bytes that are not UTF-8
        return f"malformed JSON: {exc}"
    return None


def non_json(value: Any, path: str = "$") -> str | None:
    """Why `value` is not a plain JSON value (`$.when` is a datetime...), or None.

    Dataclass, msgspec Struct and pydantic instances pass: they encode as JSON objects.
    """
    stack = [(value, path)]
    while stack:
        v, at = stack.pop()
        if v is None or isinstance(v, str | bool | int):
            continue
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return f"`{at}` is {v}, which JSON cannot hold"
        elif isinstance(v, list | tuple):
            stack.extend((item, f"{at}[{n}]") for n, item in enumerate(v))
        elif isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    return f"`{at}` has a {type(k).__name__} key {k!r}; JSON keys are strings"
                stack.append((item, f"{at}.{k}"))
        elif not is_structured_class(type(v)):
            return (
                f"`{at}` is a {type(v).__name__}; use str, int, float, bool, None, list or "
                "dict (or a dataclass, msgspec Struct or pydantic model)"
            )
    return None


def unknown_fields_check(tp: Any) -> UnknownCheck | None:
    """A check that refuses object keys the declared classes (dataclass, msgspec Struct,
    pydantic model, TypedDict) do not have, at any depth; None when `tp` holds none."""
    return _UnknownFields().build(tp)


def _fields_of(tp: Any) -> tuple[set[str], dict[str, Any]] | None:
    """The keys a class accepts and the declared type of each field (None: not checked)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        return names, {n: hints.get(n, Any) for n in names}
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        config = tp.__struct_config__
        if config.array_like:
            return None
        infos = msgspec.structs.fields(tp)
        keys = {f.encode_name for f in infos}
        if isinstance(config.tag_field, str):
            keys.add(config.tag_field)
        return keys, {f.encode_name: f.type for f in infos}
    if is_pydantic_model(tp):
        if tp.model_config.get("extra") in ("allow", "forbid"):  # declared: pydantic's rule
            return None
        keys, types_ = set(), {}
        for name, info in tp.model_fields.items():
            aliases = {name, info.alias, info.validation_alias}
            for key in (a for a in aliases if isinstance(a, str)):
                keys.add(key)
                types_[key] = info.annotation
        return keys, types_
    if typing.is_typeddict(tp):
        hints = _hints(tp)
        return set(hints), hints
    return None


def _hints(tp: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(tp, include_extras=True)
    except (NameError, TypeError, AttributeError):
        return {}


class _UnknownFields:
    """Compiles a type into an unknown-field check once, recursive types included."""

    def __init__(self) -> None:
        self._done: dict[Any, UnknownCheck | None] = {}
        self._building: dict[Any, list[UnknownCheck | None]] = {}

    def build(self, tp: Any) -> UnknownCheck | None:
        tp = strip_annotated(object_as_any(tp))
        try:
            if tp in self._done:
                return self._done[tp]
        except TypeError:  # an unhashable type argument: not checked
            return None
        pending = self._building.get(tp)
        if pending is not None:  # a recursive type: look its check up when it runs
            return lambda v, p: pending[0](v, p) if pending[0] is not None else None
        cell: list[UnknownCheck | None] = [None]
        self._building[tp] = cell
        cell[0] = self._done[tp] = self._compile(tp)
        del self._building[tp]
        return cell[0]

    def _compile(self, tp: Any) -> UnknownCheck | None:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Union or origin is types.UnionType:
            members = [c for c in (self.build(a) for a in args) if c is not None]
            return _any_of(members) if members else None
        if origin is not None and is_structured_class(origin):
            tp = origin  # a generic class: its own field types (type variables: unchecked)
        elif origin is not None and isinstance(origin, type):
            if issubclass(origin, collections.abc.Mapping) and len(args) == 2:
                value = self.build(args[1])
                return None if value is None else _mapping_of(value)
            if issubclass(origin, tuple) and args and args[-1] is not Ellipsis:
                items = [self.build(a) for a in args]
                return None if not any(items) else _tuple_of(items)
            if issubclass(origin, collections.abc.Iterable) and args:
                item = self.build(args[0])
                return None if item is None else _items_of(item)
            return None
        fields = _fields_of(tp)
        if fields is None:
            return None
        keys, field_types = fields
        nested = {k: c for k, c in ((k, self.build(t)) for k, t in field_types.items()) if c}
        return _object_of(frozenset(keys), nested)


def _object_of(keys: frozenset[str], nested: dict[str, UnknownCheck]) -> UnknownCheck:
    def check(value: Any, path: str) -> str | None:
        if not isinstance(value, dict):
            return None
        for key in value:
            if key not in keys:
                return f"Object contains unknown field `{key}` - at `{path}`"
        for key, inner in nested.items():
            if key in value:
                found = inner(value[key], f"{path}.{key}")
                if found is not None:
                    return found
        return None

    return check


def _any_of(members: list[UnknownCheck]) -> UnknownCheck:
    def check(value: Any, path: str) -> str | None:
        first = None
        for member in members:
            found = member(value, path)
            if found is None:
                return None
            first = first or found
        return first

    return check


def _mapping_of(inner: UnknownCheck) -> UnknownCheck:
    def check(value: Any, path: str) -> str | None:
        if isinstance(value, dict):
            for k, v in value.items():
                found = inner(v, f"{path}.{k}")
                if found is not None:
                    return found
        return None

    return check


def _items_of(inner: UnknownCheck) -> UnknownCheck:
    def check(value: Any, path: str) -> str | None:
        if isinstance(value, list | tuple):
            for n, v in enumerate(value):
                found = inner(v, f"{path}[{n}]")
                if found is not None:
                    return found
        return None

    return check


def _tuple_of(items: list[UnknownCheck | None]) -> UnknownCheck:
    def check(value: Any, path: str) -> str | None:
        if isinstance(value, list | tuple):
            for n, (inner, v) in enumerate(zip(items, value, strict=False)):
                found = inner(v, f"{path}[{n}]") if inner is not None else None
                if found is not None:
                    return found
        return None

    return check
