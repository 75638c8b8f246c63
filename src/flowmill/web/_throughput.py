"""Throughput of the last hour, per minute, counted from the store's events.

The event log is read by cursor only (`events_read(after=id)`), so the first read finds the
first event of the hour with a binary search over ids (about 2·log2(n) one-row reads: a
store with a million events costs ~40 point reads), and every later read goes on from the
cursor, at most `MAX_EVENTS_PER_READ` events a time. One `Throughput` per dashboard app
(no module state); it survives between polls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._states import State
from ..store.contract.tasks import Event, EventsRead

if TYPE_CHECKING:
    from ..store._front import StoreFront

WINDOW_MS = 60 * 60 * 1000
BUCKET_MS = 60 * 1000
BATCH = 2000
MAX_EVENTS_PER_READ = 20_000

_FAILED = frozenset({State.FAILED, State.DEAD_LETTERED, State.EXPIRED})


@dataclass
class Throughput:
    """Counts of tasks that ended, by minute: `completed` and `failed` (failed, dead
    lettered or expired)."""

    cursor: int | None = None
    completed: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _first(self, store: StoreFront, after: int) -> Event | None:
        got = await store.events_read(EventsRead(after, 1))
        return got[0] if got else None

    async def _start(self, store: StoreFront, since_ms: int) -> int:
        """A cursor before the first event at or after `since_ms` (binary search on ids)."""
        hi = 1
        while (ev := await self._first(store, hi)) is not None and ev.at_ms < since_ms:
            hi *= 2
        lo = 0  # invariant: the first event after `hi` is None or recent enough
        while lo < hi:
            mid = (lo + hi) // 2
            ev = await self._first(store, mid)
            if ev is None or ev.at_ms >= since_ms:
                hi = mid
            else:
                lo = mid + 1
        return lo

    async def read(self, store: StoreFront, now_ms: int) -> dict[str, Any]:
        """Read the events since the last call and return the chart's series."""
        async with self.lock:
            since = now_ms - WINDOW_MS
            if self.cursor is None:
                self.cursor = await self._start(store, since)
            seen = 0
            behind = False
            while True:
                events = await store.events_read(EventsRead(self.cursor, BATCH))
                for ev in events:
                    self.cursor = ev.id
                    if ev.at_ms < since:
                        continue
                    bucket = ev.at_ms - ev.at_ms % BUCKET_MS
                    if ev.state is State.COMPLETED:
                        self.completed[bucket] = self.completed.get(bucket, 0) + 1
                    elif ev.state in _FAILED:
                        self.failed[bucket] = self.failed.get(bucket, 0) + 1
                seen += len(events)
                if len(events) < BATCH:
                    break
                if seen >= MAX_EVENTS_PER_READ:
                    behind = True
                    break
            first = now_ms - now_ms % BUCKET_MS - WINDOW_MS + BUCKET_MS
            for series in (self.completed, self.failed):
                for old in [b for b in series if b < first]:
                    del series[old]
            buckets = range(first, first + WINDOW_MS, BUCKET_MS)
            return {
                "bucket_s": BUCKET_MS // 1000,
                "start_ms": first,
                "completed": [self.completed.get(b, 0) for b in buckets],
                "failed": [self.failed.get(b, 0) for b in buckets],
                "behind": behind,
            }
