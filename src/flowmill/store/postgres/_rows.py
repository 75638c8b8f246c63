"""Decoding PostgreSQL rows into the store contract's records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._states import Phase
from .._common.serde import task_record
from ..contract.tasks import ClaimedRow, TaskRecord
from ._text import dec, dec_opt


def claimed_row(r: Sequence[Any]) -> ClaimedRow:
    """A row of `Queries.tasks_claim_one` / `claim_many`."""
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
        condition=dec_opt(r[14]),
        workflow_id=r[15],
    )


def record(r: Sequence[Any]) -> TaskRecord:
    """A row of `TASK_COLUMNS`: the task joined with its result (column 26)."""
    return task_record(r, r[26], dec)
