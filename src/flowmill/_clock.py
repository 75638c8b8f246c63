"""Time as the engine sees it: injected, so that tests drive timers instead of sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


def from_ms(ms: int) -> datetime:
    """A store time (integer ms since the Unix epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def from_ms_opt(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


class Clock(Protocol):
    """What the worker's timers and the store calls take their time from."""

    def store_now(self) -> int | None:
        """The `now_ms` to pass to the store: `None` lets the store use its own clock."""

    def wall_ms(self) -> int:
        """Milliseconds since the epoch, for computing absolute times (run_at) locally."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for local deadlines."""

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` on the loop after `seconds` of this clock's time."""


class Timer(Protocol):
    def cancel(self) -> None: ...


class SystemClock:
    """The real clock; the store judges leases and due times by its own clock."""

    def store_now(self) -> int | None:
        return None

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback()

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when a test calls `advance`; sleepers wake as it passes them."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._ms = int(start.timestamp() * 1000)
        self._sleepers: list[tuple[int, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def store_now(self) -> int | None:
        return self._ms

    def wall_ms(self) -> int:
        return self._ms

    def monotonic(self) -> float:
        return self._ms / 1000

    @property
    def now(self) -> datetime:
        return from_ms(self._ms)

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, lambda: _resolve(fut))
        try:
            await fut
        finally:
            timer.cancel()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        entry = _ManualTimer(self._ms + max(0, round(seconds * 1000)), callback)
        if entry.deadline <= self._ms:
            asyncio.get_running_loop().call_soon(entry.fire)
        else:
            heapq.heappush(self._sleepers, (entry.deadline, next(self._seq), entry))
        return entry

    def sleepers(self) -> int:
        """How many sleeps are pending (lets a test wait until loops are parked)."""
        return sum(1 for _, _, t in self._sleepers if not t.cancelled)

    async def advance(self, by: timedelta) -> None:
        """Move time forward and let every sleeper whose deadline passed run."""
        self._ms += int(by.total_seconds() * 1000)
        while self._sleepers and self._sleepers[0][0] <= self._ms:
            _, _, timer = heapq.heappop(self._sleepers)
            timer.fire()
        # Give woken coroutines a few turns of the loop to act on the new time.
        for _ in range(5):
            await asyncio.sleep(0)
