"""JSON forms of the small structured columns every backend stores (errors, tags), and the
text of the events every backend records alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from ..._states import Phase, State
from ..contract.tasks import ErrorInfo, TaskRecord

_enc = msgspec.json.Encoder()
_error_dec = msgspec.json.Decoder(ErrorInfo)
_tags_dec = msgspec.json.Decoder(dict[str, str])

# A row another tool corrupted must not make every read of it fail: an error column that
# does not decode reads as this marker error, a tags column as one marker key.
UNDECODABLE = "undecodable"
"""`ErrorInfo.category` (its type: "Undecodable") of a stored error that does not decode."""
UNDECODABLE_TAGS = "\x00undecodable"
"""The one key of the tags of a row whose tags do not decode; its value says why."""
_BAD_VALUE = (msgspec.DecodeError, TypeError, ValueError)  # UnicodeEncodeError is a ValueError


def _why(exc: Exception, data: object) -> str:
    held = repr(data)
    held = held if len(held) <= 60 else f"{held[:57]}..."
    return f"{exc}; it holds {type(data).__name__} {held}"


def encode_error(error: ErrorInfo | None) -> str | None:
    return None if error is None else _enc.encode(error).decode()


def decode_error(data: str | bytes | None) -> ErrorInfo | None:
    if data is None:
        return None
    try:
        return _error_dec.decode(data)
    except _BAD_VALUE as exc:
        why = _why(exc, data)
        return ErrorInfo("Undecodable", f"the stored error does not decode: {why}", UNDECODABLE)


def encode_tags(tags: Mapping[str, str]) -> str | None:
    return _enc.encode(dict(tags)).decode() if tags else None


def decode_tags(data: str | bytes | None) -> dict[str, str]:
    if data is None:
        return {}
    try:
        return _tags_dec.decode(data)
    except _BAD_VALUE as exc:
        return {UNDECODABLE_TAGS: f"the stored tags do not decode: {_why(exc, data)}"}


def _same(text: Any) -> Any:
    return text


def task_record(
    r: Sequence[Any], result: bytes | None, text: Callable[[Any], Any] = _same
) -> TaskRecord:
    """A task row in the column order every backend selects (see `TASK_COLUMNS`).

    `text` decodes the free-text columns a backend had to escape (PostgreSQL: NUL).
    """
    return TaskRecord(
        id=r[0],
        kind=text(r[1]),
        queue=text(r[2]),
        priority=r[3],
        state=State(r[4]),
        phase=Phase(r[5]),
        attempts=r[6],
        max_attempts=r[7],
        payload=r[8],
        result=result,
        error=decode_error(r[9]),
        tags=decode_tags(r[10]),
        dedup_key=None if r[11] is None else text(r[11]),
        parent_id=r[12],
        progress_pct=r[13],
        progress_message=r[14],
        lease_epoch=r[15],
        lease_owner=r[16],
        lease_expires_at_ms=r[17],
        cancel_requested=bool(r[18]),
        timeout_ms=r[19],
        created_at_ms=r[20],
        updated_at_ms=r[21],
        run_at_ms=r[22],
        expires_at_ms=r[23],
        started_at_ms=r[24],
        finished_at_ms=r[25],
    )


def progress_detail(pct: float, message: str | None) -> str:
    """The detail of a progress event: `progress 40%: loading`."""
    return f"progress {pct:g}%" + (f": {message}" if message else "")
