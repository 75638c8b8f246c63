"""Claimed tasks: a worker loop of your own (a GPU box, an agent, another language's bridge).

`app.claimer(...)` hands out `ClaimedTask`s: each holds a lease that the claimer renews in
the background at ttl/3, and must end with exactly one of `complete`, `fail`, `cancel`,
`delay` or `wait_for_children`. Every write is fenced by the lease epoch: after another
claim took the task over, writes raise `LeaseLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

import msgspec

from .._budgets import report_usage
from .._clock import from_ms
from .._codec import decode_json
from .._conditions import Condition
from .._context import check_progress
from .._runtime import Runtime
from .._signals import Fenced, ResumeSignal, Waitpoint
from .._states import State
from .._stops import STOP_LEASE_LOST
from .._task import check_queue
from ..errors import (
    ConfigurationError,
    LeaseLost,
    StoreError,
    TaskAlreadyFinished,
)
from ..store.contract.budgets import ClaimedRows, UsageReport
from ..store.contract.signals import FrameRef, OnTimeout, SuspendStatus
from ..store.contract.tasks import (
    ClaimedRow,
    ErrorInfo,
    Finish,
    FinishStatus,
    LeaseRef,
    TaskProgress,
    TasksClaim,
    TasksFinish,
    TaskWaitChildren,
)
from ..workflows._when import check_condition
from ._leases import HeldLease, renew
from ._outcome import retry_finish


@dataclass(frozen=True, slots=True)
class FailOutcome:
    """What `ClaimedTask.fail` led to: a retry at `retry_at`, or a terminal state."""

    state: State
    retry_at: datetime | None = None

    @property
    def will_retry(self) -> bool:
        return self.state in (State.SCHEDULED, State.READY)


class ClaimedTask:
    """One claimed attempt. The terminal calls are single-use; every write is fenced.

    It is started when claimed (the caller holds it): if the caller dies, the reaper ends
    the attempt as a `lease_expired` failure that counts toward max_attempts."""

    def __init__(self, claimer: Claimer, row: ClaimedRow) -> None:
        self._claimer = claimer
        self._row = row
        self._done = False
        self._lease = HeldLease(LeaseRef(row.id, row.lease_epoch))

    # -- identity ----------------------------------------------------------------------

    @property
    def task_id(self) -> str:
        return self._row.id

    @property
    def kind(self) -> str:
        return self._row.kind

    @property
    def queue(self) -> str:
        return self._row.queue

    @property
    def attempt_index(self) -> int:
        """1-based number of this attempt."""
        return self._row.attempt

    @property
    def attempt_id(self) -> str:
        """Unique per attempt: a good prefix for usage dedup keys."""
        return f"{self._row.id}:{self._row.attempt}:{self._row.lease_epoch}"

    @property
    def lease_epoch(self) -> int:
        return self._row.lease_epoch

    @property
    def lease_id(self) -> str:
        return f"{self._row.id}@{self._row.lease_epoch}"

    @property
    def payload(self) -> bytes:
        """The payload as stored: JSON bytes."""
        return self._row.payload

    @property
    def parent_id(self) -> str | None:
        return self._row.parent_id

    def decoded(self) -> Any:
        """The payload decoded with the task's registered type (plain JSON when unknown).

        `PayloadError` when it does not decode: fail the attempt with `retryable=False`,
        since no retry can fix a payload."""
        row = self._row
        tdef = self._claimer.app.registry.get(row.kind)
        if tdef is None:
            return decode_json(row.payload, task=row.kind, what="payload")
        return tdef.payload.decode(row.payload)

    # -- lease health ------------------------------------------------------------------

    def is_lease_healthy(self) -> bool:
        """False after 3 renewals in a row failed: check it before irreversible side effects."""
        return self._lease.healthy

    @property
    def consecutive_renewal_failures(self) -> int:
        """Renewals in a row that failed since the last one that worked."""
        return self._lease.failures

    @property
    def cancelled(self) -> bool:
        """True once the attempt should stop: lease lost or unhealthy, or a cancel request."""
        return self._lease.token.is_set

    @property
    def cancel_reason(self) -> str | None:
        return self._lease.token.reason

    async def wait_cancelled(self) -> None:
        await self._lease.token.wait()

    async def renew_lease(self) -> None:
        """Renew now (the claimer also does it every ttl/3). `LeaseLost` if it is gone."""
        self._check_open()
        await self._claimer._renew([self])
        if self._lease.token.reason == STOP_LEASE_LOST:
            raise LeaseLost(self.task_id, self.lease_epoch)

    # -- non-terminal writes -----------------------------------------------------------

    async def update_progress(self, pct: float, message: str | None = None) -> None:
        """Record progress from 0 to 100 (fenced)."""
        self._check_open()
        app = self._claimer.app
        await app.store.task_progress(
            TaskProgress(
                self.task_id, self.lease_epoch, check_progress(pct), message, app.clock.store_now()
            )
        )

    async def report_usage(
        self, budget_id: str, dimensions: Mapping[str, int], dedup_key: str | None = None
    ) -> UsageReport:
        """Count usage against a budget (fenced): OK, SOFT_BREACH, HARD_BREACH (nothing
        applied) or ALREADY_APPLIED (`dedup_key` seen before; see `attempt_id`)."""
        self._check_open()
        app = self._claimer.app
        return await report_usage(
            app.store, app.clock, self._lease.ref, budget_id, dimensions, dedup_key
        )

    async def append_frame(
        self, frame_type: str, payload: bytes, metadata: Mapping[str, Any] | None = None
    ) -> FrameRef:
        """Append to this attempt's output stream (fenced); `FrameTooLarge` over 64 KiB."""
        self._check_open()
        return await self._fenced().append_frame(frame_type, payload, metadata)

    async def create_waitpoint(self, key: str, expires_in: timedelta) -> Waitpoint:
        self._check_open()
        return await self._fenced().create_waitpoint(key, expires_in)

    async def resume_signals(self) -> list[ResumeSignal]:
        return await self._fenced().resume_signals()

    def _fenced(self) -> Fenced:
        return Fenced(self._claimer.app, self.task_id, self.lease_epoch)

    # -- terminal writes (single use) ---------------------------------------------------

    async def suspend(
        self,
        condition: Condition,
        *,
        timeout: timedelta | None = None,
        on_timeout: OnTimeout = OnTimeout.FAIL,
    ) -> SuspendStatus:
        """Suspend until signals satisfy `condition`; ALREADY_SATISFIED keeps the lease."""
        self._check_open()
        try:
            status = await self._fenced().suspend_status(condition, timeout, on_timeout)
        except LeaseLost:
            self._close()
            raise
        if status is SuspendStatus.SUSPENDED:
            self._close()
        elif status is SuspendStatus.CANCEL_REQUESTED:
            # Asked to cancel while held: the cancel wins over the suspend, as it would
            # over a retry. The attempt ends cancelled here.
            await self.cancel("cancel requested")
        return status

    async def complete(self, result: Any = None) -> None:
        """End the attempt with its result (encoded with the task's result type if known)."""
        tdef = self._claimer.app.registry.get(self.kind)
        data = tdef.result.encode(result) if tdef is not None else msgspec.json.encode(result)
        await self._finish(Finish(self.task_id, self.lease_epoch, State.COMPLETED, result=data))

    async def fail(
        self,
        reason: str,
        category: str = "handler_error",
        *,
        retryable: bool = True,
        retry_after: timedelta | None = None,
    ) -> FailOutcome:
        """End the attempt as failed: retried per the task's policy, unless not `retryable`."""
        finish = retry_finish(
            self._row,
            ErrorInfo("Failed", reason, category, None),
            retryable=retryable,
            requested_delay=retry_after,
        )
        state = await self._finish(finish)
        retry_at = None
        if state is State.SCHEDULED and finish.delay_ms is not None:
            # The injected clock, not this host's wall clock (tests drive time).
            retry_at = from_ms(self._claimer.app.clock.wall_ms() + finish.delay_ms)
        return FailOutcome(state, retry_at)

    async def cancel(self, reason: str = "cancelled by the worker") -> None:
        await self._finish(
            Finish(
                self.task_id,
                self.lease_epoch,
                State.CANCELLED,
                error=ErrorInfo("Cancelled", reason, "cancelled", None),
            )
        )

    async def delay(self, until: datetime | timedelta) -> None:
        """Give the task back until a later time; the attempt is not spent."""
        if isinstance(until, timedelta):
            if until < timedelta(0):
                raise ConfigurationError(f"delay must be >= 0, got {until}")
            finish = Finish(
                self.task_id,
                self.lease_epoch,
                State.SCHEDULED,
                delay_ms=int(until.total_seconds() * 1000),
                release=True,
            )
        else:
            if until.tzinfo is None:
                raise ConfigurationError("delay until needs a timezone-aware datetime")
            finish = Finish(
                self.task_id,
                self.lease_epoch,
                State.SCHEDULED,
                run_at_ms=int(until.timestamp() * 1000),
                release=True,
            )
        await self._finish(finish)

    async def wait_for_children(self, memo: bytes = b"null") -> State:
        """Park the task until its children end; it is claimed again in phase finalize."""
        self._check_open()
        app = self._claimer.app
        try:
            state = await app.store.task_wait_children(
                TaskWaitChildren(self.task_id, self.lease_epoch, memo, app.clock.store_now())
            )
        except LeaseLost:
            self._close()
            raise
        self._close()
        return state

    async def _finish(self, finish: Finish) -> State:
        self._check_open()
        self._lease.ending = True
        app = self._claimer.app
        [out] = await app.store.tasks_finish(TasksFinish([finish], app.clock.store_now()))
        if out.status is FinishStatus.LEASE_LOST:
            self._close()
            raise LeaseLost(self.task_id, self.lease_epoch)
        # APPLIED, or ALREADY: the same call after a lost reply gets the recorded outcome.
        self._close()
        assert out.state is not None
        return out.state

    def _check_open(self) -> None:
        if self._done:
            raise TaskAlreadyFinished(
                f"task {self.task_id}: this attempt (epoch {self.lease_epoch}) already ended"
            )

    def _close(self) -> None:
        self._done = True
        self._claimer._held.pop(self.task_id, None)


class Claimer:
    """Claims tasks for a loop of your own and keeps their leases alive."""

    def __init__(
        self,
        app: Runtime,
        *,
        worker_id: str,
        queues: Sequence[str] = ("default",),
        kinds: Sequence[str] | None = None,
        lease_ttl: timedelta = timedelta(seconds=30),
    ) -> None:
        if lease_ttl <= timedelta(0):
            raise ConfigurationError(f"lease_ttl must be > 0, got {lease_ttl}")
        if not worker_id:
            raise ConfigurationError("worker_id must not be empty")
        self.app = app
        self.worker_id = worker_id
        self.queues = [check_queue(q) for q in queues]
        self.kinds = list(kinds) if kinds is not None else app.task_names()
        if not self.kinds:
            raise ConfigurationError("a claimer needs task kinds: pass kinds=[...]")
        self.lease_ttl_ms = int(lease_ttl.total_seconds() * 1000)
        self._limits = app.claim_limits(self.queues).of(self.kinds)
        self._held: dict[str, ClaimedTask] = {}
        self._keeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Claimer:
        await self.app.open()
        self._keeper = asyncio.get_running_loop().create_task(self._keep_leases())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        # Tasks still held go back to ready without spending their attempt.
        held = list(self._held.values())
        if held:
            app = self.app
            with contextlib.suppress(StoreError):
                await app.store.tasks_finish(
                    TasksFinish(
                        [Finish(t.task_id, t.lease_epoch, State.READY, release=True) for t in held],
                        app.clock.store_now(),
                    )
                )
            for t in held:
                t._close()

    async def claim(self, wait: timedelta | None = None) -> ClaimedTask | None:
        """One task, or None if none became ready within `wait` (woken, not polling)."""
        got = await self.claim_many(1, wait=wait)
        return got[0] if got else None

    async def claim_many(self, n: int, wait: timedelta | None = None) -> list[ClaimedTask]:
        """Up to `n` tasks; waits up to `wait` for the first one to become ready."""
        if self._keeper is None:
            raise ConfigurationError("use the claimer as `async with app.claimer(...) as c`")
        if n < 1:
            raise ConfigurationError(f"n must be >= 1, got {n}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (wait.total_seconds() if wait else 0.0)
        while True:
            rows = await self.app.store.tasks_claim(
                TasksClaim(
                    self.worker_id,
                    self.queues,
                    self.kinds,
                    n,
                    self.lease_ttl_ms,
                    self.app.clock.store_now(),
                    self._limits,
                )
            )
            rows = await self._drop_false_conditions(rows)
            if rows:
                tasks = [ClaimedTask(self, r) for r in rows]
                for t in tasks:
                    self._held[t.task_id] = t
                return tasks
            left = deadline - loop.time()
            if left <= 0:
                return []
            pause = min(left, 1.0)
            if isinstance(rows, ClaimedRows) and rows.retry_in_ms is not None:
                pause = min(pause, rows.retry_in_ms / 1000)  # a rate limit's next token
            await self.app.store.wait_for_work(pause)

    async def _drop_false_conditions(self, rows: list[ClaimedRow]) -> list[ClaimedRow]:
        """Workflow nodes whose `when=` is false end skipped here, never handed out."""
        if all(r.condition is None for r in rows):
            return rows
        keep, ends = [], []
        for r in rows:
            end = await check_condition(self.app, r) if r.condition is not None else None
            if end is None:
                keep.append(r)
            else:
                ends.append(end)
        if ends:
            await self.app.store.tasks_finish(TasksFinish(ends, self.app.clock.store_now()))
        return keep

    async def _keep_leases(self) -> None:
        while True:
            await self.app.clock.sleep(self.lease_ttl_ms / 3000)
            if self._held:
                await self._renew(list(self._held.values()))

    async def _renew(self, tasks: list[ClaimedTask]) -> None:
        app = self.app
        await renew(
            app.store,
            [t._lease for t in tasks],
            self.lease_ttl_ms,
            app.clock.store_now(),
        )
