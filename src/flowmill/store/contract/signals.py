"""The store contract for waiting on the outside world: waitpoints, signals, suspensions,
and for what a running attempt shows it: output frames. Same rules as `protocol`: frozen
params, int ms times, `now_ms=None` is the store's clock, every worker write is fenced."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

MAX_FRAME_BYTES = 64 * 1024


class OnTimeout(StrEnum):
    """What a suspension's timeout does to the task."""

    FAIL = "fail"  # -> failed, category suspend_timeout
    CANCEL = "cancel"  # -> cancelled (hooks and cascade as for any cancel)
    EXPIRE = "expire"  # -> expired
    RESUME = "resume"  # -> ready: the task runs again with no resume signals


@dataclass(frozen=True, slots=True)
class WaitpointCreate:
    """A waitpoint of a running task (fenced). Creating the same `key` again for the same
    task returns the existing waitpoint: code before a suspend may run more than once."""

    task_id: str
    epoch: int
    waitpoint_id: str
    key: str
    expires_in_ms: int
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class WaitpointRow:
    id: str
    task_id: str
    key: str
    expires_at_ms: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class SignalDeliver:
    """Record a signal (the token was checked by the engine). Idempotent per waitpoint by
    `idempotency_key` (a repeat is DUPLICATE, even once the waitpoint closed). If the task
    is suspended and its unconsumed signals now satisfy its condition, it is resumed
    (-> ready) in the same transaction.

    A waitpoint is one-shot: it belongs to the suspension whose condition names it (a
    condition with a `Signal` on any waitpoint owns every open waitpoint of the task), and
    it closes when that suspension resolves: satisfied (resumed, or already satisfied at
    `task_suspend`) or timed out (`suspensions_expire`). A delivery to a closed waitpoint
    records nothing and is CLOSED, reason `waitpoint closed: its suspension resumed` (or
    `timed out`). Once the task has ended (cancelled included) every delivery is REJECTED,
    `task already ended (<state>)`, checked before CLOSED. A resume consumes every signal
    received up to it (its `resume_signals`); when a suspension resolves, the signals of
    its waitpoints that nothing consumed are given to it too (never resumed with), so
    none leaks into a later suspension."""

    waitpoint_id: str
    name: str
    payload: bytes
    idempotency_key: str | None = None
    now_ms: int | None = None


class DeliverStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    # The waitpoint is one-shot and has closed: its suspension resumed, timed out or was
    # cancelled. Nothing was recorded (the HTTP endpoint answers 409).
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class DeliverOutcome:
    status: DeliverStatus
    reason: str | None = None  # for REJECTED: unknown waitpoint, expired, task ended, ...
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class TaskSuspend:
    """Suspend a running task until `condition` (JSON from `_conditions`) holds (fenced).

    If the unconsumed signals already satisfy it, nothing changes but the signals are
    consumed: ALREADY_SATISFIED, and the caller keeps its lease. Otherwise running ->
    suspended, the lease is released and the attempt is given back (not spent)."""

    task_id: str
    epoch: int
    condition: bytes
    timeout_ms: int | None = None
    on_timeout: OnTimeout = OnTimeout.FAIL
    now_ms: int | None = None


class SuspendStatus(StrEnum):
    SUSPENDED = "suspended"
    ALREADY_SATISFIED = "already_satisfied"
    # The task was asked to cancel while it ran: it is not suspended (nothing was written),
    # so the cancel is not lost; the caller ends the attempt as cancelled.
    CANCEL_REQUESTED = "cancel_requested"


@dataclass(frozen=True, slots=True)
class SuspensionsExpire:
    """Apply the timeout behaviour of suspensions whose timeout has passed."""

    limit: int = 1000
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SignalRow:
    waitpoint_id: str
    name: str
    payload: bytes
    at_ms: int


WaitpointState = Literal["pending", "delivered", "expired", "closed"]


@dataclass(frozen=True, slots=True)
class WaitpointsList:
    """`waitpoints_list`: the waitpoints of task `task_id`, oldest first (by creation time,
    then id), at most `limit`, each with the signals delivered to it that the store holds.
    An unknown task has none."""

    task_id: str
    limit: int = 100


@dataclass(frozen=True, slots=True)
class WaitpointInfo:
    """One waitpoint as an operator sees it: when it was made and is due, whether and why
    it closed, and its signals in delivery order.

    `closed_reason` is `resumed` or `timed out` (see `SignalDeliver`); `closed_at_ms` is
    None where the backend does not record the instant (Redis). `signals` holds what the
    store keeps: on SQL backends every signal ever delivered to the waitpoint; on Redis
    those not yet consumed and those the task's latest satisfied suspension consumed."""

    id: str
    task_id: str
    key: str
    created_at_ms: int
    expires_at_ms: int
    closed_reason: str | None
    closed_at_ms: int | None
    signals: tuple[SignalRow, ...]

    def state(self, now_ms: int) -> WaitpointState:
        """`delivered` once a signal is held for it, else `closed` (its suspension ended
        without one), `expired` (past `expires_at_ms`), or `pending`."""
        if self.signals:
            return "delivered"
        if self.closed_reason is not None:
            return "closed"
        return "expired" if self.expires_at_ms <= now_ms else "pending"


@dataclass(frozen=True, slots=True)
class FrameAppend:
    """Append to the output stream of the attempt holding this lease (fenced)."""

    task_id: str
    epoch: int
    frame_type: str
    payload: bytes
    metadata: bytes | None = None  # JSON
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class FrameRef:
    attempt: int
    seq: int  # 1, 2, 3... per attempt, in append order


@dataclass(frozen=True, slots=True)
class FramesRead:
    """Frames of one attempt after `after` (a seq); `attempt=None` means the latest one."""

    task_id: str
    attempt: int | None = None
    after: int = 0
    limit: int = 500


@dataclass(frozen=True, slots=True)
class FrameRow:
    seq: int
    frame_type: str
    payload: bytes
    metadata: bytes | None
    at_ms: int


@dataclass(frozen=True, slots=True)
class FramesPage:
    attempt: int | None  # None: the task has no attempt yet
    frames: list[FrameRow]
    live: bool  # the attempt is still running: more frames may come
