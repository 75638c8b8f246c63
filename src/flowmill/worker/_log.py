"""What the worker logs about its attempts: one record per attempt end, with the
structured fields (`extra=`) a log shipper indexes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from .._logging import mask_url
from .._runtime import Runtime
from .._states import State
from ..store.contract.tasks import ClaimedRow, ExpiredLease, Finish, FinishOutcome, FinishStatus

log = logging.getLogger("flowmill.worker")

COMPLETED = "completed"
RETRY = "retry"  # failed, will run again (now or after a backoff)
FAILED = "failed"
DEAD_LETTERED = "dead_lettered"
HANDED_BACK = "handed_back"  # given back unfinished at shutdown; the attempt is not counted
LEASE_LOST = "lease_lost"
NOT_RECORDED = "not_recorded"  # the store refused the write; the lease expiry retries it

_ERROR_OUTCOMES = frozenset({FAILED, DEAD_LETTERED})


def worker_starting(rt: Runtime, worker_id: str, queues: list[str], concurrency: int) -> None:
    """The start-up summary: what this worker serves, how wide, on which store."""
    kinds = rt.task_names()
    url = mask_url(str(getattr(rt, "url", None) or type(rt.store).__name__))
    log.info(
        "worker %s starting: %d task kind(s) [%s] on queue(s) [%s], concurrency %d, store %s",
        worker_id,
        len(kinds),
        ", ".join(kinds),
        ", ".join(queues),
        concurrency,
        url,
        extra={
            "worker_id": worker_id,
            "kinds": kinds,
            "queues": queues,
            "concurrency": concurrency,
            "store": url,
        },
    )
    if not kinds:
        log.warning(
            "no task is registered on this app: this worker will claim nothing (does the app's "
            "module import the modules that define its tasks?)",
            extra={"worker_id": worker_id},
        )


def fields(row: ClaimedRow, worker_id: str, **more: Any) -> dict[str, Any]:
    """The `extra=` of a record about one attempt."""
    return {
        "worker_id": worker_id,
        "task_id": row.id,
        "kind": row.kind,
        "queue": row.queue,
        "attempt": row.attempt,
        **more,
    }


def outcome_of(finish: Finish) -> str:
    """The outcome a finish records, as the log names it."""
    if finish.release:
        return HANDED_BACK
    if finish.target in (State.READY, State.SCHEDULED):
        return RETRY
    return str(finish.target)


def attempt_ended(
    row: ClaimedRow,
    worker_id: str,
    outcome: str,
    duration_ms: int,
    error: BaseException | None,
    finish: Finish | None,
    ran: bool = True,
) -> None:
    """Log an attempt's end: INFO, or WARNING (will retry) / ERROR (failed for good) with the
    traceback of the exception the handler raised."""
    extra = fields(row, worker_id, outcome=outcome, duration_ms=duration_ms)
    if outcome in _ERROR_OUTCOMES:
        level = logging.ERROR
    elif outcome in (RETRY, LEASE_LOST, NOT_RECORDED) or (outcome == HANDED_BACK and ran):
        level = logging.WARNING  # an interrupted attempt's work is lost: it runs again
    else:
        level = logging.INFO
    if not log.isEnabledFor(level):
        return  # a busy worker ends thousands of attempts a second: build nothing
    message = f"task {row.id} {row.kind} attempt {row.attempt}: {outcome} after {duration_ms} ms"
    info = finish.error if finish is not None else None
    if info is not None and outcome != HANDED_BACK:
        message += f": {info.type}: {info.message}"
        if finish is not None and finish.target is State.SCHEDULED and finish.delay_ms:
            message += f" (next attempt in {finish.delay_ms / 1000:g}s)"
    exc_info = None
    if error is not None and level >= logging.WARNING and isinstance(error, Exception):
        exc_info = (type(error), error, error.__traceback__)
    log.log(level, message, exc_info=exc_info, extra=extra)


def reclaimed(
    worker_id: str, expired: Sequence[ExpiredLease], finishes: Sequence[Finish],
    outcomes: Iterable[FinishOutcome],
) -> None:  # fmt: skip
    """Log each expired lease the reaper ended (a worker died or stalled mid-attempt)."""
    for lease, finish, out in zip(expired, finishes, outcomes, strict=True):
        if out.status is not FinishStatus.APPLIED:
            continue
        outcome = outcome_of(finish)
        owner = lease.lease_owner or "an unknown worker"
        level = logging.ERROR if outcome in _ERROR_OUTCOMES else logging.WARNING
        log.log(
            level,
            "task %s %s attempt %d: reclaimed, the lease held by %s expired; %s",
            lease.task_id,
            lease.kind,
            lease.attempt,
            owner,
            outcome,
            extra={
                "worker_id": worker_id,
                "task_id": lease.task_id,
                "kind": lease.kind,
                "attempt": lease.attempt,
                "outcome": outcome,
                "lease_owner": lease.lease_owner,
            },
        )
