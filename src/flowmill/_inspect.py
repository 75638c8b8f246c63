"""What inspection shows of a task: `TaskInfo`, built from a stored record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._clock import from_ms, from_ms_opt
from ._handle import decode_json
from ._runtime import Runtime
from ._states import Phase, State
from .errors import PayloadError
from .store.contract.tasks import ErrorInfo, TaskRecord


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as `app.get` shows it: state, attempts, timestamps, error, result, progress."""

    id: str
    name: str
    queue: str
    priority: int
    state: State
    phase: Phase
    attempts: int
    max_attempts: int
    payload: Any
    result: Any
    error: ErrorInfo | None
    tags: dict[str, str]
    key: str | None
    parent_id: str | None
    progress: float | None
    progress_message: str | None
    lease_owner: str | None
    lease_epoch: int
    lease_expires_at: datetime | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    run_at: datetime | None
    expires_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


def task_info(rt: Runtime, r: TaskRecord) -> TaskInfo:
    """The `TaskInfo` of a stored record, payload and result decoded by their task's codecs."""
    tdef = rt.registry.get(r.kind)
    try:
        payload = tdef.payload.decode(r.payload) if tdef else decode_json(r.payload)
    except PayloadError:
        payload = decode_json(r.payload)
    try:
        result = rt.decode_result(r.kind, r.result)
    except PayloadError:
        result = decode_json(r.result)
    return TaskInfo(
        id=r.id,
        name=r.kind,
        queue=r.queue,
        priority=r.priority,
        state=r.state,
        phase=r.phase,
        attempts=r.attempts,
        max_attempts=r.max_attempts,
        payload=payload,
        result=result,
        error=r.error,
        tags=r.tags,
        key=r.dedup_key,
        parent_id=r.parent_id,
        progress=r.progress_pct,
        progress_message=r.progress_message,
        lease_owner=r.lease_owner,
        lease_epoch=r.lease_epoch,
        lease_expires_at=from_ms_opt(r.lease_expires_at_ms),
        cancel_requested=r.cancel_requested,
        created_at=from_ms(r.created_at_ms),
        updated_at=from_ms(r.updated_at_ms),
        run_at=from_ms_opt(r.run_at_ms),
        expires_at=from_ms_opt(r.expires_at_ms),
        started_at=from_ms_opt(r.started_at_ms),
        finished_at=from_ms_opt(r.finished_at_ms),
    )
