"""Records every group of operations shares: why a task failed, a fenced lease, a claimed row.

A leaf: the params modules import it, it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass

from ..._states import Phase


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why an attempt or a task ended badly: kept on the task and in its result row."""

    type: str
    message: str
    category: str
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class LeaseRef:
    task_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    id: str
    kind: str
    queue: str
    priority: int
    payload: bytes
    phase: Phase
    memo: bytes | None
    attempt: int
    max_attempts: int
    retry_policy: bytes
    timeout_ms: int | None
    lease_epoch: int
    lease_expires_at_ms: int
    parent_id: str | None
    condition: str | None = None
    workflow_id: str | None = None
