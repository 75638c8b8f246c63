"""What a running handler sees of its attempt: identity, cancellation and progress."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import TYPE_CHECKING

from ._errors import Cancelled
from .store._base import TaskProgress

if TYPE_CHECKING:
    from .store._base import Store


class CancelToken:
    """A cooperative stop request for one attempt, readable from the loop and from threads."""

    __slots__ = ("_future", "_reason", "_thread")

    def __init__(self) -> None:
        self._reason: str | None = None
        self._thread = threading.Event()
        self._future: asyncio.Future[None] | None = None

    def fire(self, reason: str) -> None:
        """Ask the attempt to stop (call on the event loop's thread). The first reason wins."""
        if self._reason is None:
            self._reason = reason
        self._thread.set()
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def future(self) -> asyncio.Future[None]:
        """A future that resolves when the token fires (for `asyncio.wait` without a task)."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
            if self._thread.is_set():
                self._future.set_result(None)
        return self._future

    @property
    def is_set(self) -> bool:
        return self._thread.is_set()

    @property
    def reason(self) -> str | None:
        return self._reason

    async def wait(self) -> None:
        await asyncio.shield(self.future())


class Context:
    """Passed to handlers that take a second parameter: `async def h(p: P, ctx: fm.Context)`."""

    def __init__(
        self,
        *,
        task_id: str,
        kind: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        lease_epoch: int,
        worker_id: str,
        store: Store,
        token: CancelToken,
        loop: asyncio.AbstractEventLoop,
        now_ms: int | None = None,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.lease_epoch = lease_epoch
        self.worker_id = worker_id
        self._store = store
        self._token = token
        self._loop = loop
        self._now_ms = now_ms

    @property
    def cancelled(self) -> bool:
        """True once the attempt has been asked to stop (timeout, cancel, lost lease, shutdown)."""
        return self._token.is_set

    @property
    def cancel_reason(self) -> str | None:
        return self._token.reason

    def check_cancelled(self) -> None:
        """Raise `fm.Cancelled` if the attempt has been asked to stop; call it between steps."""
        if self._token.is_set:
            raise Cancelled(self._token.reason or "cancelled")

    async def wait_cancelled(self) -> None:
        """Wait until the attempt is asked to stop (for use in `asyncio.wait` races)."""
        await self._token.wait()

    async def progress(self, pct: float, message: str | None = None) -> None:
        """Record progress (0..100) on the task, fenced by this attempt's lease."""
        if not isinstance(pct, int | float) or isinstance(pct, bool) or not math.isfinite(pct):
            raise ValueError(f"progress must be a number from 0 to 100, got {pct!r}")
        if not 0 <= pct <= 100:
            raise ValueError(f"progress must be from 0 to 100, got {pct}")
        await self._store.task_progress(
            TaskProgress(self.task_id, self.lease_epoch, float(pct), message, self._now_ms)
        )

    def progress_blocking(self, pct: float, message: str | None = None) -> None:
        """`progress` for sync handlers running in a worker thread."""
        fut = asyncio.run_coroutine_threadsafe(self.progress(pct, message), self._loop)
        fut.result()
