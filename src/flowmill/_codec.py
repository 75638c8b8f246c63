"""Typed JSON codecs for task payloads and results, and handler signature inspection.

Payloads and results are stored as JSON produced by msgspec, never pickle, so a stored
task can only ever decode into the type its handler declares.
"""

from __future__ import annotations

import collections.abc
import contextlib
import datetime
import decimal
import functools
import inspect
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import msgspec

from ._shape import (
    STRICT_HINT,
    is_pydantic_model,
    is_structured_class,
    json_syntax_error,
    non_json,
    object_as_any,
    pydantic_base,
    strip_annotated,
    unknown_fields_check,
)
from .errors import ConfigurationError, PayloadError, PayloadTooLarge

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Codec",
    "HandlerSignature",
    "decode_json",
    "describe_type",
    "inspect_executor_generic",
    "inspect_handler",
    "stored_bytes",
]

T = TypeVar("T")

DEFAULT_MAX_BYTES = 1024 * 1024

_NONE_TYPE: Any = type(None)

# Types msgspec.convert would otherwise coerce from strings (e.g. an ISO string to a
# datetime). Declaring them "builtin" makes the encode-side check demand real instances.
_CONVERT_BUILTINS = (
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
    bytes,
    bytearray,
)

# Classes that are not checked with isinstance: either isinstance is too loose for them
# (bool is an int, a datetime is a date) or their contents matter (a bare list is fine,
# but msgspec.convert also validates a TypedDict's keys).
_CONVERT_CHECKED_CLASSES: frozenset[Any] = frozenset(
    {int, float, str, bool, list, dict, tuple, set, frozenset, _NONE_TYPE, *_CONVERT_BUILTINS}
)

_MAX_REPORTED_ERRORS = 5


def _enc_hook(obj: Any) -> Any:
    """Encode values msgspec does not support natively (pydantic models nested in others)."""
    base = pydantic_base()
    if base is not None and isinstance(obj, base):
        return obj.model_dump(mode="json")
    # msgspec lets a NotImplementedError escape as is; a TypeError is what encode raises.
    raise TypeError(f"Encoding objects of type {type(obj).__name__} is unsupported")


def _dec_hook(tp: Any, obj: Any) -> Any:
    """Decode into types msgspec does not support natively (pydantic models nested in others)."""
    if is_pydantic_model(tp):
        try:
            return tp.model_validate(obj)
        except ValueError as exc:
            # msgspec turns a ValueError into a ValidationError and appends the path of
            # the model inside the document; the model's own field path goes first.
            raise ValueError(f"{describe_type(tp)} {_describe_pydantic_error(exc, '')}") from exc
    # A NotImplementedError would escape msgspec unconverted; a ValueError becomes a
    # ValidationError carrying the path, like msgspec's own type errors.
    raise ValueError(f"Expected `{describe_type(tp)}`, got `{type(obj).__name__}`")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)


def _pydantic_path(loc: Any, root: str) -> str:
    parts = [root]
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    return "".join(parts)


def _describe_pydantic_error(exc: ValueError, root: str = "$") -> str:
    """Render a pydantic ValidationError in msgspec's style: `message - at `$.field``."""
    errors_fn = getattr(exc, "errors", None)
    if not callable(errors_fn):
        return str(exc)
    try:
        errors = errors_fn(include_url=False)
    except TypeError:
        errors = errors_fn()
    parts = []
    for err in errors[:_MAX_REPORTED_ERRORS]:
        loc = err.get("loc", ())
        msg = str(err.get("msg", "invalid value"))
        if loc:
            path = _pydantic_path(loc, root)
            parts.append(f"{msg} - at `{path}`" if root else f"field `{path.lstrip('.')}`: {msg}")
        else:
            parts.append(msg)
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more errors")
    return "; ".join(parts) if parts else str(exc)


def _instance_check_class(tp: Any) -> type[Any] | None:
    """Return the class an encoded value must be an instance of, or None to use convert."""
    base = strip_annotated(tp)
    if isinstance(base, type):
        if base in _CONVERT_CHECKED_CLASSES or typing.is_typeddict(base):
            return None
        return base
    # A parameterised generic dataclass/Struct (Box[int]) cannot be used with isinstance,
    # but its origin can, which keeps the check as cheap as for a plain class.
    origin = typing.get_origin(base)
    if is_structured_class(origin):
        return cast("type[Any]", origin)
    return None


def _with_task(err: PayloadError, task: str, what: str) -> PayloadError:
    # PayloadError is defined without these attributes; callers use them to route errors.
    vars(err).update(task=task, what=what)
    return err


class Codec(Generic[T]):
    """Encodes and decodes one declared type to JSON bytes."""

    __slots__ = (
        "_decoder",
        "_instance_of",
        "_json_only",
        "_model",
        "_prefix",
        "_strict_check",
        "_unknown",
        "max_bytes",
        "strict",
        "task",
        "type",
        "what",
    )

    def __init__(
        self,
        tp: Any,
        *,
        task: str,
        what: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        strict: bool = False,
        json_only: bool = False,
    ) -> None:
        """`strict`: refuse object fields the declared classes do not have (payloads).
        `json_only`: encode only plain JSON values (a task submitted by name)."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigurationError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        self.type: Any = tp  # as declared (the `object` rewrite below is for msgspec only)
        self.task = task
        self.what = what
        self.max_bytes = max_bytes
        self.strict = strict
        self._json_only = json_only
        self._prefix = f"task {task!r}: {what}"
        # All type analysis happens here so encode/decode stay a few microseconds.
        tp = object_as_any(tp)
        base = strip_annotated(tp)
        self._model: Any = base if is_pydantic_model(base) else None
        skip = base is Any or base is object
        self._instance_of: type[Any] | None = None if skip else _instance_check_class(tp)
        self._strict_check = not skip and self._instance_of is None
        self._unknown = unknown_fields_check(tp) if strict else None
        try:
            self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(tp, dec_hook=_dec_hook)
        except TypeError as exc:
            raise ConfigurationError(
                f"task {task!r}: {what} type {describe_type(tp)} is not supported: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"Codec({describe_type(self.type)}, task={self.task!r}, what={self.what!r})"

    def encode(self, value: Any) -> bytes:
        """Check `value` against the declared type and encode it to JSON bytes."""
        if self._instance_of is not None:
            if not isinstance(value, self._instance_of):
                raise self._mismatch(value, None)
        elif self._strict_check:
            try:
                msgspec.convert(value, self.type, strict=True, builtin_types=_CONVERT_BUILTINS)
            except (msgspec.ValidationError, TypeError) as exc:
                raise self._mismatch(value, exc) from exc
            # Plain dicts where classes are declared: their keys are not checked by convert.
            unknown = self._unknown(value, "$") if self._unknown is not None else None
            if unknown is not None:
                raise self._mismatch(value, None, f"{unknown}{STRICT_HINT}")
        elif self._json_only:
            problem = non_json(value)
            if problem is not None:
                raise _with_task(
                    PayloadError(f"{self._prefix} submitted by name must be JSON: {problem}"),
                    self.task,
                    self.what,
                )
        try:
            if self._model is not None:
                data: bytes = value.model_dump_json().encode()
            else:
                data = _ENCODER.encode(value)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _with_task(
                PayloadError(
                    f"{self._prefix} ({type(value).__name__}) cannot be encoded as JSON: {exc}"
                ),
                self.task,
                self.what,
            ) from exc
        if len(data) > self.max_bytes:
            raise _with_task(
                PayloadTooLarge(f"task {self.task!r} {self.what}", len(data), self.max_bytes),
                self.task,
                self.what,
            )
        return data

    def decode(self, data: bytes) -> T:
        """Decode JSON bytes into the declared type, validating every field.

        `data` is what the store returned. A value another tool wrote into the column (a
        number, text with invalid UTF-8) is a `PayloadError` saying what it holds."""
        if type(data) is not bytes:
            data = _stored_or_raise(data, self.task, self.what)
        if self._model is not None:
            try:
                out = cast("T", self._model.model_validate_json(data))
            except ValueError as exc:
                raise self._undecodable(_with_utf8(_describe_pydantic_error(exc), data)) from exc
        else:
            try:
                out = cast("T", self._decoder.decode(data))
            except msgspec.ValidationError as exc:
                raise self._undecodable(_with_utf8(str(exc), data)) from exc
            except msgspec.DecodeError as exc:
                detail = json_syntax_error(data) or str(exc)
                raise self._undecodable(_with_utf8(detail, data)) from exc
        if self._unknown is not None:
            # Only once the typed decode succeeded: the common case pays one more parse.
            unknown = self._unknown(msgspec.json.decode(data), "$")
            if unknown is not None:
                raise self._undecodable(f"{unknown}{STRICT_HINT}")
        return out

    def _mismatch(
        self, value: Any, exc: Exception | None, detail: str | None = None
    ) -> PayloadError:
        message = f"{self._prefix} must be {describe_type(self.type)}, got {_describe_value(value)}"
        if exc is not None or detail is not None:
            message = f"{message}: {detail if detail is not None else exc}"
        return _with_task(PayloadError(message), self.task, self.what)

    def _undecodable(self, detail: str) -> PayloadError:
        message = f"{self._prefix} does not decode as {describe_type(self.type)}: {detail}"
        return _with_task(PayloadError(message), self.task, self.what)


_ANY_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def stored_bytes(data: object) -> bytes | None:
    """The bytes of a stored JSON value, or None when the store holds no bytes or text."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        # Text stored with invalid UTF-8 arrives with its bad bytes as lone surrogates (the
        # SQLite store reads text so); encoding them back lets the error point at them.
        return data.encode("utf-8", "surrogateescape")
    return None


def _stored_or_raise(data: object, task: str, what: str) -> bytes:
    raw = None
    with contextlib.suppress(UnicodeEncodeError):
        raw = stored_bytes(data)
    if raw is None:
        text = repr(data)
        text = text if len(text) <= 60 else f"{text[:57]}..."
        message = f"task {task!r}: {what} is not JSON: the store holds {type(data).__name__} {text}"
        raise _with_task(PayloadError(message), task, what)
    return raw


def _with_utf8(detail: str, data: bytes) -> str:
    """A decode error's text, plus where the bytes stop being UTF-8 if they do."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{detail}; not valid UTF-8: 0x{data[exc.start]:02x} at byte {exc.start}"
    return detail


def decode_json(data: object, *, task: str, what: str) -> Any:
    """Decode a stored value as plain JSON (no declared type); None stays None.

    Raises `PayloadError`, like `Codec.decode`, for anything that is not JSON."""
    if data is None:
        return None
    raw = data if type(data) is bytes else _stored_or_raise(data, task, what)
    try:
        return _ANY_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        detail = json_syntax_error(raw) or str(exc)
        message = f"task {task!r}: {what} does not decode as JSON: {_with_utf8(detail, raw)}"
        raise _with_task(PayloadError(message), task, what) from exc


def _describe_value(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def describe_type(tp: Any) -> str:
    """Return a readable name for a type, for error messages: `AddArgs`, `int | None`."""
    if tp is None or tp is _NONE_TYPE:
        return "None"
    if tp is Any:
        return "Any"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, str):
        return tp
    if isinstance(tp, typing.ForwardRef):
        return tp.__forward_arg__
    if isinstance(tp, list):
        return "[" + ", ".join(describe_type(t) for t in tp) + "]"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return describe_type(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(describe_type(a) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is not None:
        origin_name = describe_type(origin)
        if not args:
            return origin_name
        return f"{origin_name}[{', '.join(describe_type(a) for a in args)}]"
    name = getattr(tp, "__name__", None)
    if isinstance(name, str):
        return name
    return repr(tp).replace("typing.", "")


@dataclass(frozen=True, slots=True)
class HandlerSignature:
    """The payload type, result type and context use read from a handler's signature."""

    payload_type: Any
    """Any when unannotated; type(None) when the function takes no parameters."""
    result_type: Any
    """Any when unannotated; type(None) for `-> None`."""
    wants_context: bool
    """True when the handler takes a second positional parameter."""


def _callable_name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_callable_name(fn.func)})"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def _hints_source(fn: Any) -> Any:
    if isinstance(fn, functools.partial):
        return _hints_source(fn.func)
    if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, type):
        return fn
    # A callable instance: its annotations live on the class's __call__.
    return type(fn).__call__


def inspect_handler(fn: Callable[..., Any]) -> HandlerSignature:
    """Read a handler's payload type, result type and whether it takes a context."""
    name = _callable_name(fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"handler {name}: cannot read its signature: {exc}") from exc
    try:
        hints = typing.get_type_hints(_hints_source(fn), include_extras=True)
    except (NameError, TypeError, SyntaxError, AttributeError) as exc:
        raise ConfigurationError(
            f"handler {name}: cannot resolve its type annotations: {exc}"
        ) from exc

    kind = inspect.Parameter
    positional = [p for p in params if p.kind in (kind.POSITIONAL_ONLY, kind.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is p.empty]
    keyword_required = [
        p.name for p in params if p.kind is kind.KEYWORD_ONLY and p.default is p.empty
    ]
    if keyword_required:
        raise ConfigurationError(
            f"handler {name}: keyword-only parameter(s) {', '.join(keyword_required)} have no "
            "default; a handler is called as handler(payload) or handler(payload, ctx)"
        )
    if not positional and any(p.kind is kind.VAR_POSITIONAL for p in params):
        raise ConfigurationError(
            f"handler {name}: takes only *args; declare the payload as a named parameter"
        )
    if len(required) > 2:
        raise ConfigurationError(
            f"handler {name}: takes {len(required)} required parameters "
            f"({', '.join(required)}); a handler takes (payload) or (payload, ctx)"
        )

    payload_type = hints.get(positional[0].name, Any) if positional else _NONE_TYPE
    result_type = hints.get("return", Any)
    if not inspect.iscoroutinefunction(fn) and typing.get_origin(result_type) in (
        collections.abc.Coroutine,
        collections.abc.Awaitable,
    ):
        # A plain function returning a coroutine is awaited like an async def handler.
        result_args = typing.get_args(result_type)
        result_type = result_args[-1] if result_args else Any
    return HandlerSignature(
        payload_type=payload_type,
        result_type=result_type,
        wants_context=len(positional) >= 2,
    )


def inspect_executor_generic(cls: type) -> tuple[Any, Any, Any]:
    """Return the (P, M, R) type arguments a class passed to its three-parameter generic base."""
    for klass in cls.__mro__:
        # Read each class's own __orig_bases__: getattr would repeat the parent's.
        for base in klass.__dict__.get("__orig_bases__", ()):
            origin = typing.get_origin(base)
            if origin is Generic or origin is typing.Protocol:
                continue
            args = typing.get_args(base)
            if len(args) == 3:
                p, m, r = (Any if isinstance(a, TypeVar) else a for a in args)
                return p, m, r
    return Any, Any, Any
