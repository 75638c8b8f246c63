"""The worker runtime: claims, dispatches, keeps leases, records outcomes, maintains the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from .._states import State
from .._stops import STOP_SHUTDOWN
from ..errors import StoreError
from ..store.contract.budgets import ClaimedRows
from ..store.contract.tasks import (
    TasksClaim,
)
from . import _log
from ._core import WorkerCore
from ._lifecycle import ExitCode, SignalPolicy, run_start_hooks, run_stop_hooks

log = logging.getLogger("flowmill.worker")

IDLE_RECHECK_S = 0.1  # stop_when_idle: how soon to look again while others still work
_BUSY_STATES = frozenset(
    {State.SCHEDULED, State.RUNNING, State.WAITING_CHILDREN, State.SUSPENDED, State.BLOCKED}
)


class Worker(WorkerCore):
    """Runs the app's tasks: `await app.worker(concurrency=64).run()` or `flowmill worker`."""

    # -- public ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: no more claims, running attempts get the grace period."""
        self._stop_requested.set()
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._attempts)

    def readiness(self) -> tuple[bool, str]:
        """Whether this worker claims work now, and why not (for a readiness probe)."""
        if self._stopping or self._stop_requested.is_set():
            return False, "shutting down"
        if not self._claiming:
            return False, "starting"
        if not self._store_ok:
            return False, "store unreachable"
        return True, "ready"

    async def run(
        self, *, install_signal_handlers: bool = False, stop_when_idle: bool = False
    ) -> None:
        """Work until `stop()` (or SIGTERM/SIGINT when asked to install handlers).

        Raises `StartHookFailed` when an `on_worker_start` hook fails (nothing is claimed);
        `on_worker_stop` hooks run once the last attempt has ended, even after an error.
        """
        self._stop_when_idle = stop_when_idle
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            self._install_signals(loop)
        hooks_begun = False
        background: list[asyncio.Task[None]] = []
        claim: asyncio.Task[None] | None = None
        try:
            _log.worker_starting(self.app, self.worker_id, self.queues, self.concurrency)
            await self.app.open()
            hooks_begun = True
            await run_start_hooks(self.on_start, self.resources)
            await self.scheduler.declare()  # the fleet fires the last declared definition
            self._limits = self.app.claim_limits(self.queues)
            background = [
                loop.create_task(self._listen_for_work(), name="flowmill-listen"),
                loop.create_task(self._lease_keeper(), name="flowmill-leases"),
                loop.create_task(self._cancel_watcher(), name="flowmill-cancels"),
                loop.create_task(self.maintenance.loop(), name="flowmill-maintenance"),
                loop.create_task(self.heartbeat.loop(), name="flowmill-heartbeat"),
            ]
            claim = loop.create_task(self._claim_loop(), name="flowmill-claim")
            self._claiming = True
            log.info("worker %s: store open, claiming", self.worker_id, extra=self._extra())
            await self._stop_requested.wait()
            self._stopping = True
            self._wake.set()
            await claim
            await self._drain()
        finally:
            self._stopping = True
            if claim is not None:
                claim.cancel()
            for t in background:
                t.cancel()
            await asyncio.gather(*filter(None, [claim, *background]), return_exceptions=True)
            if self._tasks:  # an error cut the drain short: let the attempts end first
                for a in list(self._attempts.values()):
                    a.token.fire(STOP_SHUTDOWN)
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self.pool.close()
            if hooks_begun:  # the store was opened: say this worker stopped
                await self.heartbeat.beat(stopped=True)
                await run_stop_hooks(self.on_stop, self.resources)
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
        log.info(
            "worker %s stopped: %d claimed, outcomes %s",
            self.worker_id,
            self.stats.claimed,
            dict(self.stats.outcomes) or "none",
            extra=self._extra(),
        )

    # -- claiming --------------------------------------------------------------------

    def _claim_requests(self, free: int) -> list[tuple[list[str], int]]:
        unlimited: list[str] = []
        requests: list[tuple[list[str], int]] = []
        for name, tdef in self.app.registry.items():
            if tdef.max_concurrency is None:
                unlimited.append(name)
                continue
            room = tdef.max_concurrency - self._per_kind[name]
            if room > 0:
                requests.append(([name], min(room, free)))
            else:
                self._room_limited = True
        if unlimited:
            requests.insert(0, (unlimited, min(free, self.claim_batch)))
        return requests

    async def _claim_loop(self) -> None:
        backoff = 0.05
        idle_rounds = 0
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency + self.prefetch - len(self._attempts)
            self._room_limited = free <= 0
            requests = self._claim_requests(free) if free > 0 else []
            if not requests:
                self._room_limited = True
                await self._wake.wait()
                continue
            short = False
            retry_in: int | None = None  # ms until a rate limit gives a held task a token
            capped = False
            try:
                for kinds, limit in requests:
                    # Rows a free slot runs at once are claimed started (the attempt counts
                    # now, in the claim itself); the prefetched rest unstarted, each marked
                    # started just before its handler runs (see `_mark_started`).
                    free_now = self.concurrency - self._running - len(self._queue)
                    starting = min(limit, max(0, free_now))
                    for n, start in ((starting, True), (limit - starting, False)):
                        if n <= 0:
                            continue
                        rows = await self.app.store.tasks_claim(
                            TasksClaim(
                                self.worker_id,
                                self.queues,
                                kinds,
                                n,
                                self.lease_ttl_ms,
                                self.clock.store_now(),
                                self._limits.of(kinds),
                                start=start,
                            )
                        )
                        if isinstance(rows, ClaimedRows):
                            if rows.retry_in_ms is not None:
                                retry_in = min(retry_in or rows.retry_in_ms, rows.retry_in_ms)
                            capped = capped or rows.held_by_running
                        if rows:
                            idle_rounds = 0
                        for row in rows:
                            self._accept(row, marked=start)
                        if len(rows) < n:
                            short = True
                            break
                    else:  # this request took all it asked for: more may be ready
                        self._room_limited = True
                backoff = 0.05
                self._store_ok = True
            except StoreError as exc:
                self._store_ok = False
                log.warning("claim failed (%s); retrying in %.2fs", exc, backoff)
                # Real time, not the injected clock: pacing retries against an outage is
                # not task time, and a ManualClock that no test advances would stall here.
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._dispatch()
            self._capped = capped
            if short:
                if self._stop_when_idle and not self._attempts and retry_in is None:
                    # Idle twice in a row, with a claim in between: a task made ready just
                    # before the check (a parent's finalize) is claimed by the second look.
                    idle_rounds = idle_rounds + 1 if await self._store_idle() else 0
                    if idle_rounds >= 2:
                        self.stop()
                        return
                    if idle_rounds:
                        continue
                    # Another worker still holds tasks: their ends send no "work" wake-up,
                    # so look again soon rather than after a whole poll interval.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(IDLE_RECHECK_S):
                            await self._wake.wait()
                    continue
                await self._wait_woken(retry_in)

    async def _wait_woken(self, retry_in_ms: int | None) -> None:
        """Wait for a wake-up; with tasks held by a rate limit, no longer than its refill."""
        if retry_in_ms is None:
            await self._wake.wait()
            return
        timer = self.clock.call_later(retry_in_ms / 1000, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def _listen_for_work(self) -> None:
        # One long-lived consumer of the store's wake-ups; a timeout doubles as the fallback
        # poll, so a lost wake-up only delays work by poll_interval.
        while True:
            try:
                await self.app.store.wait_for_work(self.poll_s)
            except StoreError as exc:
                log.debug("waiting for work failed: %s", exc)
                await asyncio.sleep(self.poll_s)  # real time, as the claim retry above
            self._wake.set()

    async def _store_idle(self) -> bool:
        counts = await self.app.store.tasks_count()
        return not any(
            c.count for c in counts if c.queue in self.queues and c.state in _BUSY_STATES
        )

    # -- maintenance -----------------------------------------------------------------

    async def maintain(self, *, full: bool = True) -> None:
        """One maintenance pass (see `Maintenance.maintain`)."""
        await self.maintenance.maintain(full=full)

    async def run_hooks(self) -> int:
        """Run pending on_cancel hooks of ended orchestrators; returns how many ran."""
        return await self.maintenance.run_hooks()

    # -- shutdown --------------------------------------------------------------------

    async def _drain(self) -> None:
        # Claimed but never started: give them back at once, without spending an attempt.
        queued = list(self._queue)
        self._queue.clear()
        if queued:
            log.info("handing back %d claimed task(s) not yet started", len(queued))
        for a in queued:
            a.token.fire(STOP_SHUTDOWN)
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run_one(a))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(self._attempts) > len(queued):
            log.info(
                "waiting up to %gs for %d running attempt(s) to end",
                self.shutdown_grace_s,
                len(self._attempts) - len(queued),
                extra=self._extra(),
            )
            self._idle.clear()
            grace_over = asyncio.Event()
            timer = self.clock.call_later(self.shutdown_grace_s, grace_over.set)
            idle = asyncio.ensure_future(self._idle.wait())
            over = asyncio.ensure_future(grace_over.wait())
            await asyncio.wait((idle, over), return_when=asyncio.FIRST_COMPLETED)
            timer.cancel()
            idle.cancel()
            over.cancel()
        left = [a for a in self._attempts.values() if not a.token.is_set]
        if left:
            log.warning(
                "shutdown grace (%gs) is over: asking %d attempt(s) to stop within %gs; "
                "they are handed back to run again",
                self.shutdown_grace_s,
                len(left),
                self.cancel_grace_s,
                extra=self._extra(),
            )
        for a in left:
            a.token.fire(STOP_SHUTDOWN)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        policy = SignalPolicy(self.repeat_window_s, self._graceful_stop, self._forced_stop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, policy, sig)

    def _graceful_stop(self, signame: str) -> None:
        log.info(
            "%s: stopping: no new claims; running attempts get %gs to end, then %gs to stop "
            "when asked, and are handed back",
            signame,
            self.shutdown_grace_s,
            self.cancel_grace_s,
            extra=self._extra(),
        )
        self.stop()

    def _forced_stop(self, signame: str) -> None:
        self.exit_code = ExitCode.FORCED
        log.warning(
            "%s again: cutting the grace short, asking %d running attempt(s) to stop now; "
            "they are handed back",
            signame,
            len(self._attempts),
            extra=self._extra(),
        )
        self.stop()
        for a in list(self._attempts.values()):
            a.token.fire(STOP_SHUTDOWN)
