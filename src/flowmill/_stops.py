"""How a running attempt is asked to stop: the stop reasons, the cancel token, `Suspended`.

A leaf: the worker, the claimer and in-task code all use these, so it imports nothing of
flowmill's own.
"""

from __future__ import annotations

import asyncio
import threading

# Why a token fired, as recorded by the worker; the runner adds "timeout" itself.
STOP_OPERATOR = "cancelled by operator"
STOP_SHUTDOWN = "worker shutting down"
STOP_LEASE_LOST = "lease lost"
STOP_LEASE_UNHEALTHY = "lease unhealthy: renewals failing"


class Suspended(BaseException):
    """Raised by `ctx.suspend` to end the attempt: the task now waits for its signals.

    A BaseException, so that a handler's `except Exception` does not swallow it.
    """


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
