"""What inspection shows of a task: `TaskInfo`, built from a stored record.

Inspection never fails on one bad row: a payload or result that does not decode shows as
an `Undecodable` in its place, and `TaskInfo.decode_errors` names every field that did not
decode (payload, result, error, tags) with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._clock import from_ms, from_ms_opt
from ._codec import decode_json, stored_bytes
from ._runtime import Runtime
from ._states import Phase, State
from .errors import PayloadError
from .store._common.serde import UNDECODABLE, UNDECODABLE_TAGS
from .store.contract.tasks import ErrorInfo, TaskRecord

_SHOWN = 200  # characters of an undecodable value that str() shows


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A stored payload or result that does not decode, shown in its place by inspection."""

    raw: object
    """The value as stored: bytes, or whatever another tool wrote (an int, a float)."""
    error: str
    """What was wrong: the type found, or the decode error and its byte position."""

    def __str__(self) -> str:
        held = repr(self.raw)
        held = held if len(held) <= _SHOWN else f"{held[: _SHOWN - 3]}..."
        return f"<undecodable: {self.error}> {held}"


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
    decode_errors: dict[str, str] = field(default_factory=dict)
    """Fields that did not decode ("payload", "result", "error", "tags") and why; such a
    payload or result is an `Undecodable`, such an error has category "undecodable", and
    such tags are empty."""


def _decoded(decode: Callable[[], Any], raw: object, what: str, errors: dict[str, str]) -> Any:
    try:
        return decode()
    except PayloadError as err:
        errors[what] = str(err)
        try:
            stored = stored_bytes(raw)
        except UnicodeEncodeError:
            stored = None
        return Undecodable(raw if stored is None else stored, str(err))


def task_info(rt: Runtime, r: TaskRecord) -> TaskInfo:
    """The `TaskInfo` of a stored record, payload and result decoded by their task's codecs."""
    tdef = rt.registry.get(r.kind)

    def decode_payload() -> Any:
        if tdef is None:  # a reader without the task's types: any JSON will do
            return decode_json(r.payload, task=r.kind, what="payload")
        return tdef.payload.decode(r.payload)

    errors: dict[str, str] = {}
    payload = _decoded(decode_payload, r.payload, "payload", errors)
    result = _decoded(lambda: rt.decode_result(r.kind, r.result), r.result, "result", errors)
    if r.error is not None and r.error.category == UNDECODABLE:
        errors["error"] = r.error.message
    tags = r.tags
    if UNDECODABLE_TAGS in tags:
        errors["tags"] = tags[UNDECODABLE_TAGS]
        tags = {}
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
        tags=tags,
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
        decode_errors=errors,
    )
