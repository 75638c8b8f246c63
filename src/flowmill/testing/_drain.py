"""`app.drain()`: run every ready task in this process until nothing is ready, for tests.

It drives a `Worker`'s own parts (claim, run, record, maintenance) in rounds instead of
its background loops, so what runs is exactly what a worker runs: children, retries,
workflow nodes, an orchestrator's finalize, on_cancel hooks. Between rounds, with a
`ManualClock`, it moves the clock to the next due time (a delay, a retry's backoff, a rate
limit's next token), so a test of a whole pipeline neither sleeps nor waits.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from .._clock import ManualClock
from .._runtime import Runtime
from .._states import TERMINAL, State
from ..store.contract.budgets import ClaimedRows
from ..store.contract.tasks import TasksClaim, TasksList
from ..worker._worker import Worker

DEFAULT_MAX_TASKS = 10_000
_CONCURRENCY = 32
_PAGE = 500


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What one drain ran: its attempts by how they ended, and what it left.

    `retried` counts attempts that failed and were scheduled again; `waiting_children`
    executes of orchestrators that ended waiting for their children; `advanced` how far
    the drain moved the manual clock; `left` the tasks not ended when it stopped
    (suspended ones waiting for a signal, or delayed ones when the clock cannot move).
    """

    completed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    cancelled: int = 0
    skipped: int = 0
    retried: int = 0
    waiting_children: int = 0
    suspended: int = 0
    advanced: timedelta = timedelta(0)
    left: int = 0

    @property
    def attempts(self) -> int:
        """Every attempt the drain ran."""
        return (
            self.completed
            + self.failed
            + self.dead_lettered
            + self.cancelled
            + self.skipped
            + self.retried
            + self.waiting_children
            + self.suspended
        )


async def drain(
    app: Runtime,
    *,
    queues: Sequence[str] | None = None,
    max_tasks: int = DEFAULT_MAX_TASKS,
    advance_clock: bool = True,
) -> DrainReport:
    """Run the app's ready tasks in this process, round after round, until none is ready.

    With a `ManualClock` (and `advance_clock`), a round that finds nothing ready moves the
    clock to the earliest scheduled task and goes on. Fails with `AssertionError` after
    `max_tasks` claims (a task that submits itself forever).
    """
    await app.open()
    worker = Worker(
        app,
        queues=queues,
        concurrency=_CONCURRENCY,
        worker_id=f"flowmill-drain:{os.getpid()}:{os.urandom(2).hex()}",
    )
    clock = app.clock
    moved = timedelta(0)
    try:
        while True:
            await worker.maintain(full=True)
            claimed, retry_in_ms = await _run_ready(worker)
            if worker.stats.claimed > max_tasks:
                raise AssertionError(
                    f"drain ran {worker.stats.claimed} attempts (max_tasks={max_tasks}) and "
                    "tasks are still ready: does a task submit itself forever?"
                )
            if claimed:
                continue
            if not (advance_clock and isinstance(clock, ManualClock)):
                break
            step = await _next_due(app, clock, worker.queues, retry_in_ms)
            if step is None:
                break
            await clock.advance(step)
            moved += step
    finally:
        worker.pool.close()
    counts = await app.store.tasks_count()
    left = sum(c.count for c in counts if c.queue in worker.queues and c.state not in TERMINAL)
    return _report(worker.stats.outcomes, moved, left)


async def _run_ready(worker: Worker) -> tuple[int, int | None]:
    """Claim what is ready now and run it to its recorded end: (claimed, rate-limit wait)."""
    # The worker's private parts, on purpose: the same claim requests, attempt pipeline
    # and outcome recording as its loops, without their timers.
    app, clock = worker.app, worker.clock
    claimed = 0
    retry_in: int | None = None
    for kinds, limit in worker._claim_requests(worker.concurrency):
        rows = await app.store.tasks_claim(
            TasksClaim(
                worker.worker_id,
                worker.queues,
                kinds,
                limit,
                worker.lease_ttl_ms,
                clock.store_now(),
                worker._limits.of(kinds),
            )
        )
        if isinstance(rows, ClaimedRows) and rows.retry_in_ms is not None:
            retry_in = min(retry_in or rows.retry_in_ms, rows.retry_in_ms)
        for row in rows:
            worker._accept(row)
            claimed += 1
    worker._dispatch()
    while worker._tasks:
        await asyncio.gather(*list(worker._tasks), return_exceptions=True)
    return claimed, retry_in


async def _next_due(
    app: Runtime, clock: ManualClock, queues: Sequence[str], retry_in_ms: int | None
) -> timedelta | None:
    """How far to move the clock for the next task to become due; None when none will."""
    now_ms = clock.wall_ms()
    soonest: timedelta | None = None if retry_in_ms is None else timedelta(milliseconds=retry_in_ms)
    after: str | None = None
    while True:
        page = await app.store.tasks_list(TasksList((State.SCHEDULED,), None, None, _PAGE, after))
        for rec in page:
            if rec.queue not in queues or rec.run_at_ms is None:
                continue
            wait = timedelta(milliseconds=max(1, rec.run_at_ms - now_ms))
            soonest = wait if soonest is None else min(soonest, wait)
        if len(page) < _PAGE:
            return soonest
        after = page[-1].id


_RETRIED = ("scheduled", "ready")


def _report(outcomes: collections.Counter[str], moved: timedelta, left: int) -> DrainReport:
    return DrainReport(
        completed=outcomes["completed"],
        failed=outcomes["failed"],
        dead_lettered=outcomes["dead_lettered"],
        cancelled=outcomes["cancelled"],
        skipped=outcomes["skipped"],
        retried=sum(outcomes[s] for s in _RETRIED),
        waiting_children=outcomes["waiting_children"],
        suspended=outcomes["suspended"],
        advanced=moved,
        left=left,
    )
