"""Writing attempts' outcomes: finishes batched into one store call, kept through a
passing outage, and an orchestrator's memo stored while it waits for its children."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .._clock import Clock
from .._codec import Codec
from .._runtime import Runtime
from .._stops import STOP_LEASE_LOST, CancelToken
from ..errors import LeaseLost, PayloadError, StoreError, StoreUnavailable
from ..store.contract.tasks import (
    ClaimedRow,
    Finish,
    FinishOutcome,
    FinishStatus,
    LeaseRef,
    LeasesRenew,
    RenewOutcome,
    TasksFinish,
    TaskWaitChildren,
)
from . import _log
from ._batch import Batcher
from ._outcome import encode_failure
from ._stats import WorkerStats

log = logging.getLogger("flowmill.worker")


class Recorder:
    """Records what the engine decided about each attempt, and counts it in `stats`."""

    def __init__(self, rt: Runtime, clock: Clock, stats: WorkerStats, lease_ttl_ms: int) -> None:
        self.rt = rt
        self.clock = clock
        self.stats = stats
        self.lease_ttl_ms = lease_ttl_ms
        # Finishes and starts (prefetched leases marked started) are batched apart: a start
        # is on the path of the handler that waits for it, and must not queue behind a
        # batch of finishes in flight. Both are sent as soon as the batch before them has
        # come back, so a finish and the start of the attempt that takes its slot leave in
        # the same loop iteration (on SQLite they then share a group commit).
        self._finishes: Batcher[Finish, FinishOutcome] = Batcher(self._finish_batch)
        self._starts: Batcher[LeaseRef, RenewOutcome] = Batcher(self._start_batch)

    async def mark_started(self, lease: LeaseRef) -> bool:
        """Record that a prefetched lease's handler is about to start (from then on a
        reclaim counts the attempt); False when the lease is no longer held."""
        out = await self._starts.submit(lease)
        return out.held

    async def record(self, row: ClaimedRow, token: CancelToken, finish: Finish) -> str | None:
        """Record `finish`; None once the store applied it, else the outcome to log."""
        delay = 0.05
        while True:
            try:
                outcome = await self._finishes.submit(finish)
                break
            except StoreUnavailable as exc:
                # Keep the outcome until the store takes it or the lease is gone: a result
                # that was computed must not be dropped because of a passing outage.
                if token.reason == STOP_LEASE_LOST:
                    log.warning("dropping outcome of %s: lease lost (%s)", row.id, exc)
                    return _log.LEASE_LOST
                log.warning("recording %s failed (%s); retrying in %.2fs", row.id, exc, delay)
                # Real time: retry pacing is not task time (a ManualClock would stall it).
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except StoreError:
                # Not an outage: retrying cannot help. The lease will expire and the reaper
                # retries the task, so the attempt is not lost, only repeated.
                log.exception("recording the outcome of %s failed", row.id)
                return _log.NOT_RECORDED
        if outcome.status is FinishStatus.LEASE_LOST:
            self.stats.lease_lost += 1
            return _log.LEASE_LOST
        self.stats.outcomes[str(outcome.state)] += 1
        return None

    async def wait_children(self, row: ClaimedRow, codec: Codec[Any], memo: Any) -> Finish | str:
        """Execute returned: store its memo and park the task until its children end;
        returns the state it now waits in (or "lease_lost"), or the Finish of a bad memo."""
        try:
            data = codec.encode(memo)
        except PayloadError as err:
            return encode_failure(row, err)
        try:
            state = await self.rt.store.task_wait_children(
                TaskWaitChildren(row.id, row.lease_epoch, data, self.clock.store_now())
            )
        except LeaseLost:
            self.stats.lease_lost += 1
            return _log.LEASE_LOST
        self.stats.outcomes[str(state)] += 1
        return str(state)

    async def _finish_batch(self, items: list[Finish]) -> list[FinishOutcome]:
        return await self.rt.store.tasks_finish(TasksFinish(items, self.clock.store_now()))

    async def _start_batch(self, items: list[LeaseRef]) -> list[RenewOutcome]:
        """Mark prefetched leases started: their handlers run once this returns."""
        return await self.rt.store.leases_renew(
            LeasesRenew(items, self.lease_ttl_ms, self.clock.store_now(), start=True)
        )
