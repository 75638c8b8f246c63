"""The engine's decisions: how an attempt's end becomes the store write that records it."""

from __future__ import annotations

import asyncio
import traceback
from datetime import timedelta
from typing import Any

from .._retry import RetryAction, backoff_from_json, decide_retry
from .._states import State
from .._stops import (
    STOP_LEASE_LOST,
    STOP_LEASE_UNHEALTHY,
    STOP_OPERATOR,
    STOP_SHUTDOWN,
    Suspended,
)
from .._task import TaskDef
from ..errors import Cancelled, Fail, PayloadError, RetryCapExceeded, RetryLater
from ..store.contract.tasks import ClaimedRow, ErrorInfo, ExpiredLease, Finish
from ._runner import Ended


class Category:
    """Error categories recorded with every failed attempt."""

    HANDLER = "handler_error"
    TIMEOUT = "timeout"
    LEASE_EXPIRED = "lease_expired"
    LEASE_UNHEALTHY = "lease_unhealthy"
    DECODE = "decode_error"
    RESULT = "result_error"
    CANCELLED = "cancelled"
    RETRY_LATER = "retry_later"
    ATTEMPT_CAP = "attempt_cap"


def error_info(exc: BaseException, category: str, *, with_traceback: bool = True) -> ErrorInfo:
    tb = "".join(traceback.format_exception(exc)) if with_traceback else None
    message = str(exc) or type(exc).__name__
    return ErrorInfo(type(exc).__name__, message, category, tb)


def retry_or_give_up(
    task_id: str,
    epoch: int,
    *,
    attempt: int,
    max_attempts: int,
    retry_policy: bytes,
    error: ErrorInfo,
    retryable: bool = True,
    requested_delay: timedelta | None = None,
    expired_lease: bool = False,
) -> Finish:
    """Apply the pure retry decision; an attempt beyond the cap is dead-lettered, never re-run."""
    try:
        decision = decide_retry(
            attempt=attempt,
            max_attempts=max_attempts,
            retryable=retryable,
            backoff=backoff_from_json(retry_policy),
            requested_delay=requested_delay,
        )
    except RetryCapExceeded as exc:
        capped = ErrorInfo(
            "RetryCapExceeded",
            f"{exc}; last error: {error.message}",
            Category.ATTEMPT_CAP,
            error.traceback,
        )
        return Finish(
            task_id, epoch, State.DEAD_LETTERED, error=capped, expired_lease=expired_lease
        )
    if decision.action is RetryAction.FAIL:
        return Finish(task_id, epoch, State.FAILED, error=error, expired_lease=expired_lease)
    if decision.action is RetryAction.DEAD_LETTER:
        return Finish(task_id, epoch, State.DEAD_LETTERED, error=error, expired_lease=expired_lease)
    delay_ms = int((decision.delay or timedelta()).total_seconds() * 1000)
    if delay_ms <= 0:
        return Finish(task_id, epoch, State.READY, error=error, expired_lease=expired_lease)
    return Finish(
        task_id, epoch, State.SCHEDULED, error=error, delay_ms=delay_ms, expired_lease=expired_lease
    )


def retry_finish(row: ClaimedRow, error: ErrorInfo, **kw: Any) -> Finish:
    """`retry_or_give_up` for a claimed attempt."""
    return retry_or_give_up(
        row.id,
        row.lease_epoch,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        retry_policy=row.retry_policy,
        error=error,
        **kw,
    )


def decide_finish(row: ClaimedRow, tdef: TaskDef, ended: Ended) -> Finish | None:
    """The write that records `ended`; None when nothing may be written (lease lost)."""
    if isinstance(ended.error, Suspended):
        return None  # the store parked the task already; nothing to record
    reason = ended.stop_reason
    if reason == STOP_LEASE_LOST:
        return None  # another claim owns the task now; any write would be refused anyway
    if not ended.finished or (
        reason is not None and isinstance(ended.error, Cancelled | asyncio.CancelledError)
    ):
        return _stopped(row, reason or "cancelled", ended)
    if ended.timed_out:
        return _stopped(row, reason or "timeout", ended)
    exc = ended.error
    if exc is None:
        try:
            data = tdef.result.encode(ended.value)
        except PayloadError as err:
            return encode_failure(row, err)
        return Finish(row.id, row.lease_epoch, State.COMPLETED, result=data)
    if isinstance(exc, Fail):
        return Finish(
            row.id,
            row.lease_epoch,
            State.FAILED,
            error=ErrorInfo("Fail", exc.message, exc.category, None),
        )
    if isinstance(exc, RetryLater):
        delay = exc.delay if isinstance(exc.delay, timedelta) else None
        return retry_finish(
            row,
            ErrorInfo("RetryLater", exc.message, Category.RETRY_LATER, None),
            requested_delay=delay,
        )
    if reason == STOP_OPERATOR:
        return _stopped(row, reason, ended)
    return retry_finish(row, error_info(exc, Category.HANDLER))


def before_start(row: ClaimedRow, reason: str | None) -> Finish | None:
    """The write for an attempt stopped before its handler ran (no attempt is spent on a
    shutdown); None when nothing may be written (lease lost)."""
    if reason == STOP_OPERATOR:
        return operator_cancel(row)
    if reason == STOP_LEASE_LOST:
        return None
    return Finish(row.id, row.lease_epoch, State.READY, release=True)


def operator_cancel(row: ClaimedRow) -> Finish:
    """The attempt stopped because an operator cancelled the task."""
    error = ErrorInfo("Cancelled", STOP_OPERATOR, Category.CANCELLED, None)
    return Finish(row.id, row.lease_epoch, State.CANCELLED, error=error)


def _stopped(row: ClaimedRow, reason: str, ended: Ended) -> Finish:
    """The handler was asked to stop and did (or was abandoned): record why it stopped."""
    cls = f" ({ended.classification})" if ended.classification else ""
    if reason == STOP_OPERATOR:
        return operator_cancel(row)
    if reason == STOP_SHUTDOWN:
        return Finish(row.id, row.lease_epoch, State.READY, release=True)
    if reason == STOP_LEASE_UNHEALTHY:
        return retry_finish(
            row, ErrorInfo("LeaseUnhealthy", reason, Category.LEASE_UNHEALTHY, None)
        )
    timeout_s = (row.timeout_ms or 0) / 1000
    return retry_finish(
        row,
        ErrorInfo(
            "Timeout",
            f"attempt exceeded its timeout of {timeout_s:g}s{cls}",
            Category.TIMEOUT,
            None,
        ),
    )


def encode_failure(row: ClaimedRow, err: PayloadError) -> Finish:
    """A result (or memo) that does not encode fails the task: a retry would not fix it."""
    return Finish(
        row.id,
        row.lease_epoch,
        State.FAILED,
        error=error_info(err, Category.RESULT, with_traceback=False),
    )


def decode_failure(row: ClaimedRow, err: PayloadError) -> Finish:
    """A payload that does not decode fails the task at once: retrying cannot fix it."""
    return Finish(
        row.id,
        row.lease_epoch,
        State.FAILED,
        error=error_info(err, Category.DECODE, with_traceback=False),
    )


def beyond_cap(row: ClaimedRow) -> Finish:
    """A claim whose attempt number exceeds the cap is recorded, never run."""
    return Finish(
        row.id,
        row.lease_epoch,
        State.DEAD_LETTERED,
        error=ErrorInfo(
            "RetryCapExceeded",
            f"attempt {row.attempt} exceeds max_attempts {row.max_attempts}",
            Category.ATTEMPT_CAP,
            None,
        ),
    )


def reap(lease: ExpiredLease) -> Finish:
    """An expired lease whose handler started ends its attempt as a retryable
    `lease_expired` failure (it counts toward max_attempts); one whose handler never started
    (a prefetched task of a worker that died) goes back to ready uncharged."""
    if lease.cancel_requested:
        return Finish(
            lease.task_id,
            lease.epoch,
            State.CANCELLED,
            expired_lease=True,
            error=ErrorInfo("Cancelled", STOP_OPERATOR, Category.CANCELLED, None),
        )
    if not lease.started:
        return Finish(lease.task_id, lease.epoch, State.READY, release=True, expired_lease=True)
    owner = f" held by {lease.lease_owner}" if lease.lease_owner else ""
    error = ErrorInfo(
        "LeaseExpired",
        f"the lease{owner} expired before the attempt ended",
        Category.LEASE_EXPIRED,
        None,
    )
    return retry_or_give_up(
        lease.task_id,
        lease.epoch,
        attempt=lease.attempt,
        max_attempts=lease.max_attempts,
        retry_policy=lease.retry_policy,
        error=error,
        expired_lease=True,
    )
