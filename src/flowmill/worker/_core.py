"""The worker's core: its options, and each claimed attempt from dispatch to recorded outcome."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from time import perf_counter
from typing import Any

from .._clock import Clock
from .._context import Context
from .._observe import AttemptObserver
from .._runtime import Runtime
from .._schedules import Scheduler
from .._states import Phase, State
from .._stops import STOP_LEASE_LOST, CancelToken, Suspended
from .._task import TaskDef, check_queue
from ..errors import ConfigurationError, PayloadError, StoreError
from ..store.contract.tasks import (
    ClaimedRow,
    Finish,
    LeaseRef,
)
from ..workflows._when import check_condition
from . import _log
from ._leases import HeldLease, renew
from ._lifecycle import ExitCode, WorkerHook
from ._maintenance import Maintenance, default_reap_interval
from ._outcome import (
    before_start,
    beyond_cap,
    decide_finish,
    decode_failure,
)
from ._recorder import Recorder
from ._registry import Heartbeat
from ._runner import AttemptRunner, Ended, SyncPool
from ._stats import WorkerStats

log = logging.getLogger("flowmill.worker")

CANCEL_CHECK_INTERVAL_S = 0.5  # at most two cancel-driven renewals a second


@dataclass(slots=True)
class _Attempt:
    row: ClaimedRow
    tdef: TaskDef
    lease: HeldLease
    started: bool = False
    claimed_at: float = field(default_factory=perf_counter)
    ran: bool = False  # the handler was called (not handed back before it started)
    error: BaseException | None = None  # what the handler raised, for the log's traceback
    outcome: str | None = None  # when no Finish says it (waiting for children, lease lost)
    # The store's lease record says the handler started (the claim said so, or a renewal
    # with start=True did): a reclaim of this lease then counts the attempt.
    marked: bool = True

    @property
    def token(self) -> CancelToken:
        return self.lease.token


def _ms(value: timedelta) -> int:
    return int(value.total_seconds() * 1000)


class WorkerCore:
    """The worker's configuration and its attempts: slots, the attempt runner, outcomes
    recorded, leases kept. `Worker` adds claiming, maintenance and shutdown."""

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
        shutdown_grace: timedelta = timedelta(seconds=20),
        cancel_grace: timedelta = timedelta(seconds=3),
        repeat_signal_window: timedelta = timedelta(seconds=2),
        poll_interval: timedelta = timedelta(seconds=5),
        promote_interval: timedelta = timedelta(seconds=2),
        reap_interval: timedelta | None = None,
        unserved_check_interval: timedelta = timedelta(seconds=60),
        on_start: Sequence[WorkerHook] = (),
        on_stop: Sequence[WorkerHook] = (),
        heartbeat_interval: timedelta = timedelta(seconds=5),
        retention: timedelta | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency!r}")
        if lease_ttl <= timedelta(0):
            raise ConfigurationError(f"lease_ttl must be > 0, got {lease_ttl}")
        if reap_interval is not None and reap_interval <= timedelta(0):
            raise ConfigurationError(f"reap_interval must be > 0, got {reap_interval}")
        self.app = app
        self.queues = [check_queue(q) for q in (queues or sorted(app.queues()))]
        self.concurrency = concurrency
        self.prefetch = prefetch if prefetch is not None else min(concurrency, claim_batch)
        self.claim_batch = claim_batch
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"
        self.lease_ttl_ms = _ms(lease_ttl)
        self.shutdown_grace_s = shutdown_grace.total_seconds()
        self.cancel_grace_s = cancel_grace.total_seconds()
        self.repeat_window_s = repeat_signal_window.total_seconds()
        self.on_start = list(on_start)
        self.on_stop = list(on_stop)
        self.resources: dict[str, Any] = {}  # what the start hooks share, as ctx.resources
        self._resources_view = types.MappingProxyType(self.resources)
        self.exit_code = ExitCode.OK
        self.poll_s = poll_interval.total_seconds()
        self.clock = clock or app.clock
        self.pool = SyncPool(concurrency)
        self.runner = AttemptRunner(
            clock=self.clock, grace_s=cancel_grace.total_seconds(), pool=self.pool
        )
        self.stats = WorkerStats()
        declared = getattr(app, "schedules", {})  # what `app.schedule` declared
        self.scheduler = Scheduler(app.store, self.clock, declared, self.worker_id)
        self.maintenance = Maintenance(
            app,
            clock=self.clock,
            runner=self.runner,
            stats=self.stats,
            worker_id=self.worker_id,
            lease_ttl_ms=self.lease_ttl_ms,
            promote_s=promote_interval.total_seconds(),
            reap_s=(reap_interval or default_reap_interval(lease_ttl)).total_seconds(),
            queues=self.queues,
            unserved_s=unserved_check_interval.total_seconds(),
            resources=self._resources_view,
            scheduler=self.scheduler,
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
        # by (task id, lease epoch): after a reclaim this worker may claim a task's next
        # attempt while its earlier attempt, whose lease it has not yet found lost, still
        # runs here; both are held, renewed (the earlier one then finds its lease gone and
        # is asked to stop) and waited for at shutdown
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._queue: collections.deque[_Attempt] = collections.deque()
        self._running = 0
        self._per_kind: collections.Counter[str] = collections.Counter()
        self._limits = app.claim_limits(self.queues)  # rate limits and caps of every worker
        self._capped = False  # a cap held tasks back: another worker's finish may free it
        self._wake = asyncio.Event()
        # Whether an attempt's end should wake the claim loop: not when its last claim
        # found the store out of ready tasks (new ones send a wake-up of their own), so
        # that an idle worker's every finish is not followed by a claim that finds nothing.
        self._claim_on_release = True
        self._room_limited = False  # the last claim left out a kind at its max_concurrency
        self._idle = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._stop_when_idle = False
        self._claiming = False  # store open, hooks run, claim loop on: ready for work
        self._store_ok = True  # the last claim reached the store
        self._tasks: set[asyncio.Task[None]] = set()
        # Finishes and starts (prefetched leases marked started) go out together: on SQLite
        # they share a group commit, so a prefetched start costs no commit of its own.
        self.recorder = Recorder(app, self.clock, self.stats, self.lease_ttl_ms)
        # Told about every attempt (`flowmill._metrics`, `flowmill._tracing`); empty: no cost.
        self.observers: list[AttemptObserver] = []

    def _extra(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id}

    def _accept(self, row: ClaimedRow, *, marked: bool = True) -> None:
        self.stats.claimed += 1
        tdef = self.app.registry.get(row.kind)
        attempt = (
            _Attempt(row, tdef, HeldLease(LeaseRef(row.id, row.lease_epoch)), marked=marked)
            if tdef is not None
            else None
        )
        if attempt is None:  # the claim filters on our kinds, so this means a registry change
            log.error("claimed task %s of unknown kind %s", row.id, row.kind)
            return
        self._attempts[row.id, row.lease_epoch] = attempt
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
        began = time.monotonic()
        observed = await self._observers_started(a) if self.observers else ()
        finish: Finish | None = None
        try:
            try:
                finish = await self._attempt(a)
            except PayloadError as err:
                # A stored value the engine read for this attempt (an upstream's result
                # for `when=`) does not decode: no retry can fix it, so fail it now
                # rather than let the lease run out.
                finish = decode_failure(row, err)
            finally:
                # The handler is done: its slot starts the next attempt while this outcome
                # is recorded (that start and this finish then go out together).
                self._running -= 1
                self._dispatch()
            a.lease.ending = True
            not_recorded = (
                await self.recorder.record(a.row, a.token, finish) if finish is not None else None
            )
            self._log_end(a, finish, not_recorded, began)
        except Exception:
            log.exception("worker error while running task %s", row.id)
        finally:
            if observed:
                _observers_ended(observed, row, finish, time.monotonic() - began)
            self._release_slot(a)

    async def _observers_started(self, a: _Attempt) -> tuple[tuple[AttemptObserver, object], ...]:
        """Tell the observers an attempt starts; an observer that fails is logged and not
        told of the end: it never costs the attempt or its slot."""
        told: list[tuple[AttemptObserver, object]] = []
        for o in tuple(self.observers):  # one may be removed while the attempt runs
            try:
                told.append((o, await o.started(a.row, perf_counter() - a.claimed_at)))
            except Exception:
                log.exception("an attempt observer failed at the start of %s", a.row.id)
        return tuple(told)

    def _log_end(
        self, a: _Attempt, finish: Finish | None, not_recorded: str | None, began: float
    ) -> None:
        outcome = not_recorded or (
            _log.outcome_of(finish)
            if finish is not None
            else a.outcome or ("suspended" if isinstance(a.error, Suspended) else _log.LEASE_LOST)
        )
        duration_ms = int((time.monotonic() - began) * 1000)
        _log.attempt_ended(a.row, self.worker_id, outcome, duration_ms, a.error, finish, a.ran)

    def _ran(self, a: _Attempt, ended: Ended) -> Ended:
        a.error = ended.error
        return ended

    def _release_slot(self, a: _Attempt) -> None:
        self._attempts.pop((a.row.id, a.row.lease_epoch), None)
        self._per_kind[a.row.kind] -= 1
        if self._claim_on_release:
            self._wake.set()
        if not self._attempts:
            self._idle.set()

    async def _attempt(self, a: _Attempt) -> Finish | None:
        row, tdef = a.row, a.tdef
        a.started = True
        if a.token.is_set:
            return before_start(a.row, a.token.reason)
        if not a.marked:
            try:
                held = await self.recorder.mark_started(a.lease.ref)
            except StoreError as exc:
                # Not recorded as started: give the attempt back rather than run a handler
                # whose death the reaper would not count.
                log.warning("task %s: marking it started failed (%s)", row.id, exc)
                return Finish(row.id, row.lease_epoch, State.READY, release=True)
            if not held:
                self.stats.lease_lost += 1
                a.token.fire(STOP_LEASE_LOST)
                return None
            a.marked = True
            if a.lease.token.is_set:  # stopped while it was being marked: ends uncounted
                return before_start(a.row, a.token.reason)
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
        a.ran = True
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "task %s %s attempt %d started",
                row.id,
                row.kind,
                row.attempt,
                extra=_log.fields(row, self.worker_id),
            )
        parts = tdef.executor
        if parts is None:
            ended = self._ran(a, await self.runner.call(tdef, payload, ctx, a.token))
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
            return decide_finish(row, tdef, self._ran(a, ended))
        ended = self._ran(a, await self.runner.call(tdef, payload, ctx, a.token))
        if ended.error is not None or ended.stop_reason is not None or not ended.finished:
            return decide_finish(row, tdef, ended)  # incl. an execute that suspended
        waited = await self.recorder.wait_children(row, parts.memo, ended.value)
        if isinstance(waited, Finish):
            return waited
        a.outcome = waited
        return None

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
            resources=self._resources_view,
        )

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


def _observers_ended(
    told: tuple[tuple[AttemptObserver, object], ...],
    row: ClaimedRow,
    finish: Finish | None,
    took_s: float,
) -> None:
    for o, state in reversed(told):
        try:
            o.ended(row, state, finish, took_s)
        except Exception:
            log.exception("an attempt observer failed at the end of %s", row.id)
