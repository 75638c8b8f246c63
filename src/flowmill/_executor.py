"""Orchestrators: `execute` spawns children and returns a memo; `finalize` sees them all."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ._codec import Codec, inspect_executor_generic
from ._task import TaskDef, TaskOptions, module_name
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._context import Context

P = TypeVar("P")
M = TypeVar("M")
R = TypeVar("R")


class Executor(Generic[P, M, R]):
    """Base class of an orchestrator task: `class Scan(fm.Executor[Req, Memo, Report])`.

    `execute` runs first and returns the memo, which is stored with the task: after a crash
    it is never run again once its memo is stored. When every child (including children
    that siblings spawned later) has ended, `finalize(payload, memo, ctx)` runs and its
    return value is the task's result. `on_cancel` runs once if the task is cancelled, or
    fails because a child failed while `fail_fast` is set. Methods may be sync or async.
    """

    fail_fast: ClassVar[bool] = True

    async def execute(self, payload: P, ctx: Context) -> M:
        raise NotImplementedError(f"{type(self).__name__} must define execute()")

    async def finalize(self, payload: P, memo: M, ctx: Context) -> R:
        raise NotImplementedError(f"{type(self).__name__} must define finalize()")

    async def on_cancel(self, payload: P, memo: M | None, ctx: Context) -> None:
        return None


@dataclass(slots=True)
class ExecutorParts:
    """What the worker needs beyond a TaskDef to run an orchestrator's phases."""

    instance: Executor[Any, Any, Any]
    memo: Codec[Any]
    has_on_cancel: bool
    finalize_async: bool
    on_cancel_async: bool


def make_executor_def(
    cls: type[Executor[Any, Any, Any]], options: TaskOptions, max_payload_bytes: int
) -> TaskDef:
    """A TaskDef for an Executor subclass: its generic arguments give payload, memo, result."""
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ConfigurationError(f"@app.executor needs a subclass of fm.Executor, got {cls!r}")
    if cls.execute is Executor.execute:
        raise ConfigurationError(f"executor {cls.__qualname__} must define execute()")
    try:
        instance = cls()
    except TypeError as exc:
        raise ConfigurationError(
            f"executor {cls.__qualname__} must be constructible without arguments: {exc}"
        ) from exc
    payload_t, memo_t, result_t = inspect_executor_generic(cls)
    tdef = options.build(
        f"{module_name(cls)}.{cls.__qualname__}",
        instance.execute,
        payload_type=payload_t,
        result_type=result_t,
        wants_context=True,
        takes_payload=True,
        max_payload_bytes=max_payload_bytes,
    )
    tdef.executor = ExecutorParts(
        instance=instance,
        memo=Codec(memo_t, task=tdef.name, what="memo", max_bytes=max_payload_bytes),
        has_on_cancel=cls.on_cancel is not Executor.on_cancel,
        finalize_async=inspect.iscoroutinefunction(instance.finalize),
        on_cancel_async=inspect.iscoroutinefunction(instance.on_cancel),
    )
    tdef.fail_fast = bool(cls.fail_fast)
    return tdef
