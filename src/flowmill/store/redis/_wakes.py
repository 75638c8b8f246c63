"""Blocking claims: the work wake-up as a BZPOPMIN on the queues' marker sets.

Every write that makes a task claimable adds member `w` to its queue's marker set
(`wm:<queue>`, see flowmill.lua); a task made scheduled keeps the earliest due time of its
queue in member `d`. A store whose claims have named queues waits for work with one
blocking connection: `BZPOPMIN` over those queues' sets, so one marker wakes one process
(no herd, and no call before each wait). Every waiting asyncio task of the store wakes on
a pop. A `d` marker popped before its time is kept here, and bounds the next block: a
delayed task wakes its worker at its due time, after which the next later due time is
read once (`fm_next_due`).

A store that has not claimed yet (it does not know its queues) waits on the `ww` Stream
as before, and so does a store that finds another version of the library loaded (checked
after each block that timed out, at most once a second while idle).

One pop wakes one process, and a process blocks only while it is starved: after a wake-up
it pops no other marker until a claim of its own comes back short (one whose slots are
all busy, or that is still claiming full batches, leaves the next markers to the others,
and never wakes itself with the marker its own full claim left). A claim that leaves
ready tasks behind in a queue marks it again, so a marker popped by a process that serves
other kinds of that queue reaches one that serves the task's kind: the process that
popped it and claimed nothing leaves the markers to the others for `REST_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")
_WAKE_READ = 128  # wake-up Stream entries one XREAD takes

# The longest one BZPOPMIN blocks: queues a claim names later are watched from the next
# block on, and a listener with no waiter left ends.
BLOCK_CAP_S = 1.0
# How long a process woken by a marker whose claim then took nothing leaves the markers
# to other processes: the marker may have been for a kind it does not serve, and the
# claim put it back for them (without this pause it would pop it again itself, at once).
REST_S = 0.5


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Markers:
    """The store's one listener on its marker sets, and its waiters."""

    def __init__(
        self,
        k: str,
        run: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]],
        next_due: Callable[[int | None], Awaitable[tuple[int | None, int]]],
        blocking: Callable[[], Any],
        track: Callable[[asyncio.Task[None]], None],
        ours: Callable[[], Awaitable[bool]],
    ) -> None:
        self._k = k
        self._run = run
        self._next_due = next_due
        self._blocking = blocking
        self._track = track
        self._ours = ours
        # the library loaded is not this client's (an older one, loaded by an older client
        # during a rolling upgrade, writes no markers): wait on the `ww` Stream meanwhile
        self.stale = False
        self.queues: set[str] = set()
        self._gen = 0
        self._event = asyncio.Event()
        self._seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._waiting = 0
        # set by a claim that came back short, cleared by a full one and by each wake-up:
        # the listener blocks only while the process waits for work
        self._claimed = asyncio.Event()
        self._claimed.set()
        # a wait that starts after a full claim (not after a wake-up) is a caller that wants
        # more work: it blocks the listener again
        self._wait_arms = False
        self._listener: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        # the earliest due time of a popped `d` marker (the server's clock), and how far
        # the server's clock is ahead of this host's
        self._due: int | None = None
        self._offset_ms: int | None = None
        # a pop woke this process since its last claim; a claim of nothing after it rests
        # the listener until `_rest_until` (monotonic seconds)
        self._popped = False
        self._rest_until = 0.0

    def learn(self, queues: Any) -> None:
        """The queues a claim named: their markers wake this store's waiters."""
        self.queues.update(queues)

    def claimed(self, full: bool, got: int) -> None:
        """A claim came back with `got` tasks: a full one means the process claims again by
        itself; none after a pop means the marker was another's, left for the others."""
        if self._popped and got == 0:
            self._rest_until = time.monotonic() + REST_S
        self._popped = False
        self._wait_arms = full
        if full:
            self._claimed.clear()
        else:
            self._claimed.set()

    async def wait(self, timeout_s: float, waiter: object) -> None:
        """Until a marker pops after `waiter`'s last wait, or `timeout_s` passes.

        A waiter's first wait answers at once (it cannot know what it missed), as does a
        wait after a pop that came while the waiter was busy."""
        seen = self._seen.get(waiter)
        if seen is None or seen != self._gen or timeout_s <= 0:
            self._seen[waiter] = self._gen
            return
        if self._wait_arms:
            self._wait_arms = False
            self._claimed.set()
        event = self._event
        self._waiting += 1
        try:
            if self._listener is None or self._listener.done():
                self._listener = asyncio.ensure_future(self._listen())
                self._track(self._listener)
            try:
                async with asyncio.timeout(timeout_s):
                    await event.wait()
            except TimeoutError:
                pass
        finally:
            self._waiting -= 1
            self._seen[waiter] = self._gen
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _fire(self) -> None:
        self._wait_arms = False
        self._gen += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    def _server_now(self) -> int:
        return _wall_ms() + (self._offset_ms or 0)

    async def _listen(self) -> None:
        try:
            if self._offset_ms is None:
                _, now = await self._next_due(None)
                self._offset_ms = now - _wall_ms()
            while self._waiting > 0:
                await self._once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
            self._fire()

    async def _once(self) -> None:
        block_s = BLOCK_CAP_S
        if self._due is not None:
            left = self._due - self._server_now()
            if left <= 0:
                await self._due_now()
                return
            block_s = min(block_s, left / 1000 + 0.001)
        if not self._claimed.is_set():
            # woken, and no short claim since: the next marker is another's
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(block_s):
                    await self._claimed.wait()
            return
        rest = self._rest_until - time.monotonic()
        if rest > 0:  # the last marker was not ours: let another process pop the next
            await asyncio.sleep(min(rest, block_s))
            return
        keys = [f"{self._k}wm:{q}" for q in sorted(self.queues)]
        blocking = self._blocking()
        got = await self._run("wm", lambda: blocking.bzpopmin(keys, timeout=block_s))
        if not got:
            if not await self._ours():
                self.stale = True
                self._fire()
            return
        _key, _member, score = got
        due = int(float(score))
        if due <= self._server_now():
            self._claimed.clear()
            self._popped = True
            self._fire()
        elif self._due is None or due < self._due:
            self._due = due

    async def _due_now(self) -> None:
        """A delayed task is due: wake the waiters, and keep the next later due time."""
        fired = self._due
        self._due = None
        self._fire()
        nxt, now = await self._next_due(fired)
        self._offset_ms = now - _wall_ms()
        if nxt is not None:
            self._due = nxt


class RedisWakesMixin:
    """The wake-ups and the clock of `RedisStore`."""

    if TYPE_CHECKING:
        _k: str
        _blocking: Any
        _markers: Markers
        _cursors: weakref.WeakKeyDictionary[Any, dict[str, bytes]]

        def _c(self) -> Any: ...

        async def _run(self, where: str, call: Callable[[], Awaitable[Any]]) -> Any: ...

        async def _fcall(self, fn: str, params: dict[str, Any]) -> Any: ...

        async def _detached(self, call: Awaitable[T]) -> T: ...

        async def _library_ours(self) -> bool: ...

    async def now_ms(self) -> int:
        # TIME of the node holding the partition: the clock its functions judge by
        _due, now = await self._next_due(None)
        return now

    async def _next_due(self, after: int | None) -> tuple[int | None, int]:
        """The partition's next due time (later than `after`, if given), and the server's
        clock."""
        due, now = await self._fcall("fm_next_due", {} if after is None else {"after": after})
        return (None if due is None else int(due)), int(now)

    async def _wait(self, which: str, timeout_s: float, waiter: object) -> None:
        """Block on the wake-up Stream `which` until an entry after `waiter`'s cursor.

        Each waiting asyncio task keeps its own cursor (the last entry it saw), so one
        loop consuming a wake-up never hides it from another; a task's first wait answers
        at once, since it cannot know what it missed.
        """
        client = self._c()
        key = self._k + which
        cursors = self._cursors.setdefault(waiter, {})
        last = cursors.get(which)
        if last is None or timeout_s <= 0:
            newest = await self._run(which, lambda: client.xrevrange(key, count=1))
            cursors[which] = newest[0][0] if newest else b"0-0"
            return
        block_ms = max(1, int(timeout_s * 1000))
        if which == "ww":
            block_ms = await self._until_due(block_ms)
        blocking = self._blocking
        assert blocking is not None
        got = await self._run(
            which, lambda: blocking.xread({key: last}, count=_WAKE_READ, block=block_ms)
        )
        if got:
            cursors[which] = got[0][1][-1][0]

    async def _until_due(self, block_ms: int) -> int:
        """Delayed tasks wake a waiter at their due time: no longer than until the next one."""
        due, now = await self._next_due(None)
        if due is None:
            return block_ms
        return block_ms if due <= now else max(1, min(block_ms, due - now + 1))

    async def _wait_cancellable(self, which: str, timeout_s: float) -> None:
        """A wake-up wait the caller's cancel always ends at once (see `_detached`)."""
        waiter = asyncio.current_task()
        await self._detached(self._wait(which, timeout_s, waiter))

    async def wait_for_work(self, timeout_s: float) -> None:
        markers = self._markers
        if markers.stale:
            markers.stale = not await self._library_ours()
        if not markers.queues or markers.stale:  # no claim yet: the queues are not known
            await self._wait_cancellable("ww", timeout_s)
            return
        waiter = asyncio.current_task()
        await self._detached(self._markers.wait(timeout_s, waiter))

    async def wait_for_finish(self, timeout_s: float) -> None:
        await self._wait_cancellable("wf", timeout_s)
