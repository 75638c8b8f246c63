"""The attempt runner: runs one handler call under a deadline and a cancellation token.

It knows nothing of the store: it returns how the attempt ended, and `_outcome` turns that
into the store write. Each timed-out attempt is classified (see `TimeoutClass`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .._clock import Clock
from .._context import Context
from .._stops import CancelToken
from .._task import TaskDef

TIMEOUT_REASON = "timeout"


class TimeoutClass(StrEnum):
    """How a handler answered its stop request."""

    COOPERATIVE = "cooperative"  # it ended within the grace period after the token fired
    LATE = "late"  # async: it ended only once its coroutine was cancelled
    NON_COOPERATIVE = "non_cooperative"  # it did not end at all: abandoned, slot freed


@dataclass(slots=True)
class RunnerStats:
    """Counters a worker exposes (and a metrics exporter reads)."""

    timeouts: dict[TimeoutClass, int] = field(
        default_factory=lambda: dict.fromkeys(TimeoutClass, 0)
    )
    stops: dict[TimeoutClass, int] = field(default_factory=lambda: dict.fromkeys(TimeoutClass, 0))
    abandoned_threads: int = 0
    abandoned_coroutines: int = 0


@dataclass(frozen=True, slots=True)
class Ended:
    """How one handler call ended. `stop_reason` is set when the token fired before the end."""

    value: Any = None
    error: BaseException | None = None
    stop_reason: str | None = None
    classification: TimeoutClass | None = None
    finished: bool = True  # False when the handler was abandoned

    @property
    def timed_out(self) -> bool:
        return self.stop_reason == TIMEOUT_REASON


class SyncPool:
    """Threads for sync handlers. A thread that will not stop is left behind with its pool."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pool = self._new()
        self._old: list[ThreadPoolExecutor] = []

    def _new(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self._size, thread_name_prefix="flowmill-sync")

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._pool

    def abandon(self) -> None:
        """Stop sending work to the pool that holds a stuck thread; later calls get a new one."""
        old, self._pool = self._pool, self._new()
        old.shutdown(wait=False)
        self._old.append(old)

    def close(self) -> None:
        for pool in (*self._old, self._pool):
            pool.shutdown(wait=False, cancel_futures=True)


class AttemptRunner:
    """Calls handlers with a deadline, a cooperative token and a grace period."""

    def __init__(self, *, clock: Clock, grace_s: float, pool: SyncPool) -> None:
        self.clock = clock
        self.grace_s = grace_s
        self.pool = pool
        self.stats = RunnerStats()

    async def call(self, tdef: TaskDef, payload: Any, ctx: Context, token: CancelToken) -> Ended:
        """Run a task function under its timeout."""
        args: tuple[Any, ...] = (payload,) if tdef.takes_payload else ()
        if tdef.wants_context:
            args = (*args, ctx)
        return await self.invoke(
            tdef.fn, args, is_async=tdef.is_async, timeout_ms=tdef.timeout_ms, token=token
        )

    async def invoke(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        is_async: bool,
        timeout_ms: int | None,
        token: CancelToken,
    ) -> Ended:
        """Run any handler callable (a task, or an executor's execute/finalize/on_cancel)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any]
        if is_async:
            fut = asyncio.ensure_future(fn(*args))
        else:
            fut = loop.run_in_executor(
                self.pool.executor, functools.partial(contextvars.copy_context().run, fn, *args)
            )
        timer = None
        if timeout_ms is not None:
            timer = self.clock.call_later(timeout_ms / 1000, lambda: token.fire(TIMEOUT_REASON))
        try:
            stop = token.future()
            await asyncio.wait((fut, stop), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        # The handler may end in the same loop turn as the stop that ended it (a sync handler
        # raising `Cancelled` from `check_cancelled` on a busy loop): an error then is that
        # stop's outcome, not a handler error. A value is kept as it is.
        if fut.done() and not (token.is_set and not _succeeded(fut)):
            return _ended(fut)
        return await self._stop(is_async, fut, token)

    async def _stop(self, is_async: bool, fut: asyncio.Future[Any], token: CancelToken) -> Ended:
        reason = token.reason or "cancelled"
        counter = self.stats.timeouts if reason == TIMEOUT_REASON else self.stats.stops
        if await self._within(fut, self.grace_s):
            counter[TimeoutClass.COOPERATIVE] += 1
            return _ended(fut, reason, TimeoutClass.COOPERATIVE)
        if is_async:
            fut.cancel()
            if await self._within(fut, self.grace_s):
                counter[TimeoutClass.LATE] += 1
                return _ended(fut, reason, TimeoutClass.LATE)
            self.stats.abandoned_coroutines += 1
        else:
            self.pool.abandon()
            self.stats.abandoned_threads += 1
        counter[TimeoutClass.NON_COOPERATIVE] += 1
        fut.add_done_callback(_swallow)
        return Ended(
            stop_reason=reason, classification=TimeoutClass.NON_COOPERATIVE, finished=False
        )

    async def _within(self, fut: asyncio.Future[Any], seconds: float) -> bool:
        if fut.done():
            return True
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.clock.call_later(seconds, lambda: _resolve(expired))
        try:
            await asyncio.wait((fut, expired), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        return fut.done()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _succeeded(fut: asyncio.Future[Any]) -> bool:
    return not fut.cancelled() and fut.exception() is None


def _ended(
    fut: asyncio.Future[Any], reason: str | None = None, cls: TimeoutClass | None = None
) -> Ended:
    if fut.cancelled():
        return Ended(error=asyncio.CancelledError(), stop_reason=reason, classification=cls)
    exc = fut.exception()
    if exc is not None:
        return Ended(error=exc, stop_reason=reason, classification=cls)
    return Ended(value=fut.result(), stop_reason=reason, classification=cls)


def _swallow(fut: asyncio.Future[Any]) -> None:
    # An abandoned call's eventual exception is of no interest; retrieve it so asyncio
    # does not log "exception was never retrieved".
    if not fut.cancelled():
        fut.exception()
