"""The worker runtime: claims, dispatches, keeps leases, records outcomes, maintains the store."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from time import perf_counter
from typing import Any

from .._clock import Clock
from .._codec import Codec
from .._context import Context
from .._observe import AttemptObserver
from .._runtime import Runtime
from .._states import Phase, State
from .._stops import STOP_LEASE_LOST, STOP_OPERATOR, STOP_SHUTDOWN, CancelToken
from .._task import TaskDef, check_queue
from ..errors import ConfigurationError, LeaseLost, PayloadError, StoreError, StoreUnavailable
from ..store.contract.budgets import ClaimedRows
from ..store.contract.tasks import (
    ClaimedRow,
    Finish,
    FinishOutcome,
    FinishStatus,
    LeaseRef,
    TasksClaim,
    TasksFinish,
    TaskWaitChildren,
)
from ..workflows._when import check_condition
from ._batch import Batcher
from ._leases import HeldLease, renew
from ._maintenance import Maintenance
from ._outcome import (
    beyond_cap,
    decide_finish,
    decode_failure,
    encode_failure,
    operator_cancel,
)
from ._registry import Heartbeat
from ._runner import AttemptRunner, SyncPool
from ._stats import WorkerStats

log = logging.getLogger("flowmill.worker")

CANCEL_CHECK_INTERVAL_S = 0.5  # at most two cancel-driven renewals a second
_NOT_STARTED = object()  # an observer whose `started` failed: not told of the end
IDLE_RECHECK_S = 0.1  # stop_when_idle: how soon to look again while others still work
_BUSY_STATES = frozenset(
    {State.SCHEDULED, State.RUNNING, State.WAITING_CHILDREN, State.SUSPENDED, State.BLOCKED}
)


@dataclass(slots=True)
class _Attempt:
    row: ClaimedRow
    tdef: TaskDef
    lease: HeldLease
    started: bool = False
    claimed_at: float = field(default_factory=perf_counter)

    @property
    def token(self) -> CancelToken:
        return self.lease.token


def _ms(value: timedelta) -> int:
    return int(value.total_seconds() * 1000)


class Worker:
    """Runs the app's tasks: `await app.worker(concurrency=64).run()` or `flowmill worker`."""

    def __init__(
        self,
        app: Runtime,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 64,
        worker_id: str | None = None,
        lease_ttl: timedelta = timedelta(seconds=30),
        prefetch: int | None = None,
        claim_batch: int = 100,
        shutdown_grace: timedelta = timedelta(seconds=30),
        cancel_grace: timedelta = timedelta(seconds=5),
        poll_interval: timedelta = timedelta(seconds=5),
        promote_interval: timedelta = timedelta(seconds=2),
        reap_interval: timedelta = timedelta(seconds=10),
        heartbeat_interval: timedelta = timedelta(seconds=5),
        retention: timedelta | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency!r}")
        if lease_ttl <= timedelta(0):
            raise ConfigurationError(f"lease_ttl must be > 0, got {lease_ttl}")
        self.app = app
        self.queues = [check_queue(q) for q in (queues or sorted(app.queues()))]
        self.concurrency = concurrency
        self.prefetch = prefetch if prefetch is not None else min(concurrency, claim_batch)
        self.claim_batch = claim_batch
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"
        self.lease_ttl_ms = _ms(lease_ttl)
        self.shutdown_grace_s = shutdown_grace.total_seconds()
        self.poll_s = poll_interval.total_seconds()
        self.clock = clock or app.clock
        self.pool = SyncPool(concurrency)
        self.runner = AttemptRunner(
            clock=self.clock, grace_s=cancel_grace.total_seconds(), pool=self.pool
        )
        self.stats = WorkerStats()
        self.maintenance = Maintenance(
            app,
            clock=self.clock,
            runner=self.runner,
            stats=self.stats,
            worker_id=self.worker_id,
            lease_ttl_ms=self.lease_ttl_ms,
            promote_s=promote_interval.total_seconds(),
            reap_s=reap_interval.total_seconds(),
            retention_ms=None if retention is None else _ms(retention),
        )
        self.heartbeat = Heartbeat(
            app,
            clock=self.clock,
            worker_id=self.worker_id,
            queues=self.queues,
            concurrency=concurrency,
            interval_s=heartbeat_interval.total_seconds(),
            in_flight=lambda: len(self._attempts),
        )
        self._attempts: dict[str, _Attempt] = {}
        self._queue: collections.deque[_Attempt] = collections.deque()
        self._running = 0
        self._per_kind: collections.Counter[str] = collections.Counter()
        self._limits = app.claim_limits(self.queues)  # rate limits and caps of every worker
        self._capped = False  # a cap held tasks back: another worker's finish may free it
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._stop_when_idle = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._finisher: Batcher[Finish, FinishOutcome] = Batcher(self._finish_batch)
        # Told about every attempt (`flowmill._metrics`, `flowmill._tracing`); empty: no cost.
        self.observers: list[AttemptObserver] = []

    # -- public ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop: no more claims, running attempts get the grace period."""
        self._stop_requested.set()
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._attempts)

    async def run(
        self, *, install_signal_handlers: bool = False, stop_when_idle: bool = False
    ) -> None:
        """Work until `stop()` (or SIGTERM/SIGINT when asked to install handlers)."""
        await self.app.open()
        self._stop_when_idle = stop_when_idle
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            self._install_signals(loop)
        kinds = self.app.task_names()
        self._limits = self.app.claim_limits(self.queues)
        log.info(
            "worker %s: queues %s, %d task kinds, concurrency %d",
            self.worker_id,
            ",".join(self.queues),
            len(kinds),
            self.concurrency,
        )
        background = [
            loop.create_task(self._listen_for_work(), name="flowmill-listen"),
            loop.create_task(self._lease_keeper(), name="flowmill-leases"),
            loop.create_task(self._cancel_watcher(), name="flowmill-cancels"),
            loop.create_task(self.maintenance.loop(), name="flowmill-maintenance"),
            loop.create_task(self.heartbeat.loop(), name="flowmill-heartbeat"),
        ]
        claim = loop.create_task(self._claim_loop(), name="flowmill-claim")
        try:
            await self._stop_requested.wait()
            self._stopping = True
            self._wake.set()
            await claim
            await self._drain()
        finally:
            claim.cancel()
            for t in background:
                t.cancel()
            await asyncio.gather(claim, *background, return_exceptions=True)
            self.pool.close()
            await self.heartbeat.beat(stopped=True)
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
        log.info("worker %s stopped", self.worker_id)

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
        if unlimited:
            requests.insert(0, (unlimited, min(free, self.claim_batch)))
        return requests

    async def _claim_loop(self) -> None:
        backoff = 0.05
        idle_rounds = 0
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency + self.prefetch - len(self._attempts)
            requests = self._claim_requests(free) if free > 0 else []
            if not requests:
                await self._wake.wait()
                continue
            short = False
            retry_in: int | None = None  # ms until a rate limit gives a held task a token
            capped = False
            try:
                for kinds, limit in requests:
                    rows = await self.app.store.tasks_claim(
                        TasksClaim(
                            self.worker_id,
                            self.queues,
                            kinds,
                            limit,
                            self.lease_ttl_ms,
                            self.clock.store_now(),
                            self._limits.of(kinds),
                        )
                    )
                    short = short or len(rows) < limit
                    if isinstance(rows, ClaimedRows):
                        if rows.retry_in_ms is not None:
                            retry_in = min(retry_in or rows.retry_in_ms, rows.retry_in_ms)
                        capped = capped or rows.held_by_running
                    if rows:
                        idle_rounds = 0
                    for row in rows:
                        self._accept(row)
                backoff = 0.05
            except StoreError as exc:
                log.warning("claim failed (%s); retrying in %.2fs", exc, backoff)
                await self.clock.sleep(backoff)
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
                await self.clock.sleep(self.poll_s)
            self._wake.set()

    async def _store_idle(self) -> bool:
        counts = await self.app.store.tasks_count()
        return not any(
            c.count for c in counts if c.queue in self.queues and c.state in _BUSY_STATES
        )

    def _accept(self, row: ClaimedRow) -> None:
        self.stats.claimed += 1
        tdef = self.app.registry.get(row.kind)
        attempt = (
            _Attempt(row, tdef, HeldLease(LeaseRef(row.id, row.lease_epoch)))
            if tdef is not None
            else None
        )
        if attempt is None:  # the claim filters on our kinds, so this means a registry change
            log.error("claimed task %s of unknown kind %s", row.id, row.kind)
            return
        self._attempts[row.id] = attempt
        self._per_kind[row.kind] += 1
        self._queue.append(attempt)

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._running < self.concurrency:
            attempt = self._queue.popleft()
            self._running += 1
            task = loop.create_task(self._run_one(attempt))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- running ---------------------------------------------------------------------

    async def _run_one(self, a: _Attempt) -> None:
        row = a.row
        if self.observers:
            await self._observed(a)
            return
        try:
            finish = await self._attempt(a)
            if finish is not None:
                await self._record(a, finish)
        except Exception:
            log.exception("worker error while running task %s", row.id)
        finally:
            self._running -= 1
            self._release_slot(a)
            self._dispatch()

    async def _observed(self, a: _Attempt) -> None:
        """`_run_one` with the observers told of the attempt's start and end. An observer
        that fails is logged and skipped: it never costs the attempt or its slot."""
        row = a.row
        observers = tuple(self.observers)  # one may be removed while the attempt runs
        began = perf_counter()
        states: list[object] = []
        finish: Finish | None = None
        try:
            for o in observers:
                try:
                    states.append(await o.started(row, began - a.claimed_at))
                except Exception:
                    log.exception("an attempt observer failed at the start of %s", row.id)
                    states.append(_NOT_STARTED)
            finish = await self._attempt(a)
            if finish is not None:
                await self._record(a, finish)
        except Exception:
            log.exception("worker error while running task %s", row.id)
        finally:
            took = perf_counter() - began
            for o, state in reversed(list(zip(observers, states, strict=False))):
                if state is _NOT_STARTED:
                    continue
                try:
                    o.ended(row, state, finish, took)
                except Exception:
                    log.exception("an attempt observer failed at the end of %s", row.id)
            self._running -= 1
            self._release_slot(a)
            self._dispatch()

    def _release_slot(self, a: _Attempt) -> None:
        self._attempts.pop(a.row.id, None)
        self._per_kind[a.row.kind] -= 1
        self._wake.set()
        if not self._attempts:
            self._idle.set()

    async def _attempt(self, a: _Attempt) -> Finish | None:
        row, tdef = a.row, a.tdef
        a.started = True
        if a.token.is_set:
            return self._before_start(a)
        if row.attempt > row.max_attempts:
            return beyond_cap(row)
        ctx = self._context(row, a.token)
        if row.condition is not None:
            skip = await check_condition(self.app, row, ctx.upstreams)
            if skip is not None:
                return skip
        try:
            payload = tdef.payload.decode(row.payload)
        except PayloadError as err:
            return decode_failure(row, err)
        parts = tdef.executor
        if parts is None:
            ended = await self.runner.call(tdef, payload, ctx, a.token)
            return decide_finish(row, tdef, ended)
        instance = parts.instance
        if row.phase is Phase.FINALIZE:
            try:
                memo = parts.memo.decode(row.memo or b"null")
            except PayloadError as err:
                return decode_failure(row, err)
            ended = await self.runner.invoke(
                instance.finalize,
                (payload, memo, ctx),
                is_async=parts.finalize_async,
                timeout_ms=tdef.timeout_ms,
                token=a.token,
            )
            return decide_finish(row, tdef, ended)
        ended = await self.runner.call(tdef, payload, ctx, a.token)
        if ended.error is not None or ended.stop_reason is not None or not ended.finished:
            return decide_finish(row, tdef, ended)  # incl. an execute that suspended
        return await self._wait_children(row, parts.memo, ended.value)

    def _context(self, row: ClaimedRow, token: CancelToken) -> Context:
        return Context(
            task_id=row.id,
            kind=row.kind,
            queue=row.queue,
            attempt=row.attempt,
            max_attempts=row.max_attempts,
            lease_epoch=row.lease_epoch,
            worker_id=self.worker_id,
            app=self.app,
            token=token,
            loop=asyncio.get_running_loop(),
            parent_id=row.parent_id,
            phase=row.phase,
            now_ms=self.clock.store_now(),
        )

    async def _wait_children(self, row: ClaimedRow, codec: Codec[Any], memo: Any) -> Finish | None:
        """Execute returned: store its memo and park the task until its children end."""
        try:
            data = codec.encode(memo)
        except PayloadError as err:
            return encode_failure(row, err)
        try:
            state = await self.app.store.task_wait_children(
                TaskWaitChildren(row.id, row.lease_epoch, data, self.clock.store_now())
            )
        except LeaseLost:
            self.stats.lease_lost += 1
            log.warning("task %s: lease lost before its memo was stored", row.id)
            return None
        self.stats.outcomes[str(state)] += 1
        return None

    def _before_start(self, a: _Attempt) -> Finish | None:
        reason = a.token.reason
        row = a.row
        if reason == STOP_OPERATOR:
            return operator_cancel(row)
        if reason == STOP_LEASE_LOST:
            return None
        return Finish(row.id, row.lease_epoch, State.READY, release=True)

    async def _record(self, a: _Attempt, finish: Finish) -> None:
        delay = 0.05
        while True:
            try:
                outcome = await self._finisher.submit(finish)
                break
            except StoreUnavailable as exc:
                # Keep the outcome until the store takes it or the lease is gone: a result
                # that was computed must not be dropped because of a passing outage.
                if a.token.reason == STOP_LEASE_LOST:
                    log.warning("dropping outcome of %s: lease lost (%s)", a.row.id, exc)
                    return
                log.warning("recording %s failed (%s); retrying in %.2fs", a.row.id, exc, delay)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)
            except StoreError:
                # Not an outage: retrying cannot help. The lease will expire and the reaper
                # retries the task, so the attempt is not lost, only repeated.
                log.exception("recording the outcome of %s failed", a.row.id)
                return
        if outcome.status is FinishStatus.LEASE_LOST:
            self.stats.lease_lost += 1
            log.warning("task %s: lease lost before its outcome was recorded", a.row.id)
        else:
            self.stats.outcomes[str(outcome.state)] += 1

    async def _finish_batch(self, items: list[Finish]) -> list[FinishOutcome]:
        return await self.app.store.tasks_finish(TasksFinish(items, self.clock.store_now()))

    # -- leases ----------------------------------------------------------------------

    async def _lease_keeper(self) -> None:
        while True:
            await self.clock.sleep(self.lease_ttl_ms / 3000)
            await self.renew_leases()

    async def _cancel_watcher(self) -> None:
        # A cancel request wakes waiters on the finish channel; renewing at once tells the
        # attempt within about a second instead of at the next ttl/3 renewal. The channel
        # also fires on every completion, hence the one-renewal-per-interval limit.
        while True:
            try:
                await self.app.store.wait_for_finish(self.poll_s)
            except StoreError:
                await asyncio.sleep(self.poll_s)
                continue
            if self._capped:
                self._wake.set()  # a task ended somewhere: a capped kind may have room
            if self._attempts:
                await self.renew_leases()
                await asyncio.sleep(CANCEL_CHECK_INTERVAL_S)

    async def renew_leases(self) -> None:
        """Renew every held lease once (the background keeper calls this every ttl/3)."""
        tally = await renew(
            self.app.store,
            [a.lease for a in self._attempts.values()],
            self.lease_ttl_ms,
            self.clock.store_now(),
        )
        self.stats.unhealthy += tally.unhealthy
        self.stats.lease_lost += tally.lost

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
        for a in queued:
            a.token.fire(STOP_SHUTDOWN)
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run_one(a))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._attempts:
            self._idle.clear()
            grace_over = asyncio.Event()
            timer = self.clock.call_later(self.shutdown_grace_s, grace_over.set)
            idle = asyncio.ensure_future(self._idle.wait())
            over = asyncio.ensure_future(grace_over.wait())
            await asyncio.wait((idle, over), return_when=asyncio.FIRST_COMPLETED)
            timer.cancel()
            idle.cancel()
            over.cancel()
        for a in list(self._attempts.values()):
            a.token.fire(STOP_SHUTDOWN)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        def on_signal(sig: signal.Signals) -> None:
            if self._stop_requested.is_set():
                log.warning("second %s: cancelling running attempts now", sig.name)
                for a in list(self._attempts.values()):
                    a.token.fire(STOP_SHUTDOWN)
                return
            log.info(
                "%s: stopping after the running attempts (grace %.0fs)",
                sig.name,
                self.shutdown_grace_s,
            )
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
