"""Task definitions: what `@app.task` records about a handler and its options."""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import IntEnum
from typing import Any

from ._codec import Codec, inspect_handler
from ._limits import RateLimit, check_budget_id, check_max_concurrency, check_rate_limit
from ._retry import Retry, backoff_to_json
from .errors import ConfigurationError, UnknownTask

QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


class Priority(IntEnum):
    """Named priorities; any int works, and higher runs first."""

    LOW = -10
    NORMAL = 0
    HIGH = 10
    CRITICAL = 20


def check_queue(name: str) -> str:
    """A queue name: 1-128 letters, digits, `_ . : -`, starting with a letter or digit."""
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise ConfigurationError(
            f"bad queue name {name!r}: use 1-128 letters, digits, '_', '.', ':' or '-'"
        )
    return name


def positive_ms(name: str, value: timedelta | None, *, allow_zero: bool = False) -> int | None:
    """A duration option as integer milliseconds, refusing negative (or zero) values."""
    if value is None:
        return None
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a timedelta, got {type(value).__name__}")
    ms = int(value.total_seconds() * 1000)
    if ms < 0 or (ms == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return ms


@dataclass(slots=True)
class TaskDef:
    """A registered task: its handler, codecs and defaults."""

    name: str
    fn: Callable[..., Any]
    payload: Codec[Any]
    result: Codec[Any]
    wants_context: bool
    takes_payload: bool
    is_async: bool
    retry: Retry
    timeout_ms: int | None
    queue: str
    priority: int
    max_concurrency: int | None
    ttl_ms: int | None
    retry_policy: bytes = field(default=b"{}")
    executor: Any = None  # ExecutorParts for an orchestrator (see _executor.py)
    fail_fast: bool = True  # as a parent: the first failed child fails it
    rate_limit: RateLimit | None = None  # claims of this kind, across all workers
    budget: str | None = None  # the default budget of its submits

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the task object calls the handler directly (handy in unit tests)."""
        return self.fn(*args, **kwargs)


def module_name(fn: Any) -> str:
    """The importable name of the handler's module, also when it runs as `__main__`.

    `python jobs.py` names the module `__main__`, but a worker started with `flowmill worker
    jobs:app` imports it as `jobs`: both must derive the same task name.
    """
    module = getattr(fn, "__module__", None) or "unknown"
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return str(spec.name)  # python -m package.jobs
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else module


def _positional_count(fn: Callable[..., Any]) -> int:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in inspect.signature(fn).parameters.values() if p.kind in kinds)


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The options `@app.task` and `@app.executor` share, validated once for both."""

    name: str | None = None
    retry: Retry | None = None
    timeout: timedelta | None = None
    queue: str = "default"
    priority: int = Priority.NORMAL
    max_concurrency: int | None = None
    ttl: timedelta | None = None
    rate_limit: RateLimit | None = None
    budget: str | None = None
    strict: bool = True  # refuse payload fields the payload's classes do not declare

    def build(
        self,
        default_name: str,
        fn: Callable[..., Any],
        *,
        payload_type: Any,
        result_type: Any,
        wants_context: bool,
        takes_payload: bool,
        max_payload_bytes: int,
        json_only: bool = False,
    ) -> TaskDef:
        task_name = self.name or default_name
        if not isinstance(task_name, str) or not task_name or len(task_name) > 255:
            raise ConfigurationError(f"bad task name {task_name!r}")
        retry = self.retry if self.retry is not None else Retry()
        if not isinstance(retry, Retry):
            raise ConfigurationError(f"retry must be fm.Retry(...), got {retry!r}")
        limit = check_max_concurrency(self.max_concurrency)
        if not isinstance(self.priority, int):
            raise ConfigurationError(f"priority must be an int, got {self.priority!r}")
        return TaskDef(
            name=task_name,
            fn=fn,
            payload=Codec(
                payload_type,
                task=task_name,
                what="payload",
                max_bytes=max_payload_bytes,
                strict=bool(self.strict),
                json_only=json_only,
            ),
            result=Codec(result_type, task=task_name, what="result", max_bytes=max_payload_bytes),
            wants_context=wants_context,
            takes_payload=takes_payload,
            is_async=inspect.iscoroutinefunction(fn),
            retry=retry,
            timeout_ms=positive_ms("timeout", self.timeout),
            queue=check_queue(self.queue),
            priority=int(self.priority),
            max_concurrency=limit,
            ttl_ms=positive_ms("ttl", self.ttl),
            retry_policy=backoff_to_json(retry.backoff),
            rate_limit=check_rate_limit(self.rate_limit),
            budget=None if self.budget is None else check_budget_id(self.budget),
        )


def make_task_def(fn: Callable[..., Any], options: TaskOptions, max_payload_bytes: int) -> TaskDef:
    """A TaskDef for a plain function: its annotations give the payload and result types."""
    if not callable(fn):
        raise ConfigurationError(f"@task needs a function, got {fn!r}")
    sig = inspect_handler(fn)
    return options.build(
        f"{module_name(fn)}.{fn.__qualname__}",
        fn,
        payload_type=sig.payload_type,
        result_type=sig.result_type,
        wants_context=sig.wants_context,
        takes_payload=_positional_count(fn) > 0,
        max_payload_bytes=max_payload_bytes,
    )


def by_name(name: str, max_payload_bytes: int) -> TaskDef:
    """The definition a submit uses for a task name this app has no handler for.

    Its payload and result are plain JSON, its options the defaults (queue "default",
    `Retry()`, no timeout): the worker that registers the name decodes the payload.
    """
    if not isinstance(name, str) or not name or len(name) > 255:
        raise ConfigurationError(f"bad task name {name!r}")

    def not_here(*_: Any) -> Any:
        raise UnknownTask(f"task {name!r} is not registered on this app")

    return TaskOptions(name=name).build(
        name,
        not_here,
        payload_type=Any,
        result_type=Any,
        wants_context=False,
        takes_payload=True,
        max_payload_bytes=max_payload_bytes,
        json_only=True,
    )
