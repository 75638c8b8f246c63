"""Riding out a Redis/Valkey server that is down or restarting.

A call whose command never reached a server able to run it (the connection was refused,
connecting timed out, or the server is still loading its dataset after a restart) is
sent again, with backoff, for up to `PATIENCE_S`: sending it again cannot run it twice.
The first such failure logs one line, and the first success after it one more, so an
outage reads as two lines in a worker's log, not one per call. A call that was sent and
lost its connection before the reply (the server died under it) is never sent again
here: its outcome is unknown, and the caller decides (`StoreUnavailable`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import exceptions as rx

from ...errors import StoreUnavailable

log = logging.getLogger("flowmill.store.redis")
T = TypeVar("T")

PATIENCE_S = 30.0
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0


def not_sent(exc: BaseException | None) -> bool:
    """Whether this driver error says the command never ran: sending it again is safe."""
    if isinstance(exc, rx.BusyLoadingError):
        return True  # the server answered LOADING and ran nothing
    if isinstance(exc, rx.TimeoutError):
        return str(exc) == "Timeout connecting to server"
    if isinstance(exc, rx.ConnectionError):
        return isinstance(exc.__cause__, ConnectionRefusedError | FileNotFoundError)
    return False


class Outage:
    """One store's view of its server's reachability (shared by its concurrent calls)."""

    def __init__(
        self,
        where: str,
        patience_s: float = PATIENCE_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.where = where
        self.patience_s = patience_s
        self.down_since: float | None = None
        self._clock = clock  # tests inject a clock and a sleep that drives it
        self._sleep = sleep

    async def ride(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, sent again with backoff while the server cannot take it (see above)."""
        delay = _FIRST_DELAY_S
        deadline: float | None = None
        while True:
            try:
                result = await call()
            except StoreUnavailable as exc:
                if not not_sent(exc.__cause__):
                    raise
                now = self._clock()
                if self.down_since is None:
                    self.down_since = now
                    log.warning(
                        "%s is unreachable (%s): waiting for it, retrying with backoff "
                        "for up to %g s",
                        self.where,
                        _reason(exc.__cause__),
                        self.patience_s,
                    )
                if deadline is None:
                    deadline = now + self.patience_s
                if now >= deadline:
                    raise
                # a server coming back, not a timer: the wait grows while it stays down
                await self._sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _MAX_DELAY_S)
                continue
            if self.down_since is not None:
                down_for = self._clock() - self.down_since
                self.down_since = None
                log.warning("%s is reachable again after %.1f s", self.where, down_for)
            return result


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, rx.BusyLoadingError):
        return "loading its dataset"
    if isinstance(exc, rx.TimeoutError):
        return "connecting timed out"
    return "connection refused"
