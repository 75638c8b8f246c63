"""Decoding PostgreSQL rows into the store contract's records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._states import Phase, State
from ._base import ClaimedRow, TaskRecord
from ._pg_text import dec, dec_opt
from ._serde import decode_error, decode_tags


def claimed_row(r: Sequence[Any]) -> ClaimedRow:
    """A row of `Queries.claim_one` / `claim_many`."""
    return ClaimedRow(
        id=r[0],
        kind=dec(r[1]),
        queue=dec(r[2]),
        priority=r[3],
        payload=r[4],
        phase=Phase(r[5]),
        memo=r[6],
        attempt=r[7],
        max_attempts=r[8],
        retry_policy=r[9],
        timeout_ms=r[10],
        lease_epoch=r[11],
        lease_expires_at_ms=r[12],
        parent_id=r[13],
    )


def record(r: Sequence[Any]) -> TaskRecord:
    """A row of `TASK_COLUMNS`: the task joined with its result."""
    return TaskRecord(
        id=r[0],
        kind=dec(r[1]),
        queue=dec(r[2]),
        priority=r[3],
        state=State(r[4]),
        phase=Phase(r[5]),
        attempts=r[6],
        max_attempts=r[7],
        payload=r[8],
        result=r[26],
        error=decode_error(r[9]),
        tags=decode_tags(r[10]),
        dedup_key=dec_opt(r[11]),
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
