"""The `--json` output of `status`, `tasks list|show` and `dead-letters`: one document on
stdout, whose shape docs/howto/cli-json.md describes. Fields may be added, never renamed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .._budgets import BudgetStatus, StatusReport
from .._inspect import TaskInfo
from ._common import to_json


def iso(value: datetime | None) -> str | None:
    """A time as ISO 8601 in UTC with milliseconds: `2026-12-07T13:47:28.123+00:00`."""
    return None if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds")


def task_json(i: TaskInfo) -> dict[str, Any]:
    """One task as `tasks show --json` prints it (and each item of `tasks list --json`)."""
    return {
        "id": i.id,
        "name": i.name,
        "queue": i.queue,
        "state": i.state.value,
        "phase": i.phase.value,
        "priority": i.priority,
        "attempts": i.attempts,
        "max_attempts": i.max_attempts,
        "key": i.key,
        "tags": i.tags,
        "parent_id": i.parent_id,
        "progress": i.progress,
        "progress_message": i.progress_message,
        "lease_owner": i.lease_owner,
        "lease_expires_at": iso(i.lease_expires_at),
        "cancel_requested": i.cancel_requested,
        "created_at": iso(i.created_at),
        "updated_at": iso(i.updated_at),
        "run_at": iso(i.run_at),
        "expires_at": iso(i.expires_at),
        "started_at": iso(i.started_at),
        "finished_at": iso(i.finished_at),
        "payload": i.payload,
        "result": i.result,
        "error": None
        if i.error is None
        else {
            "type": i.error.type,
            "category": i.error.category,
            "message": i.error.message,
            "traceback": i.error.traceback,
        },
    }


def budget_json(b: BudgetStatus) -> dict[str, Any]:
    return {
        "id": b.id,
        "hard": b.hard,
        "soft": b.soft,
        "usage": b.usage,
        "reset_every_s": None if b.reset_every is None else b.reset_every.total_seconds(),
        "window_ends_at": iso(b.window_ends_at),
        "hard_breached": b.hard_breached,
        "breached": list(b.breached),
        "tasks_held": b.tasks_held,
    }


def status_json(report: StatusReport) -> dict[str, Any]:
    """`status --json`: the non-zero counts by queue and state, and every budget."""
    return {
        "counts": [
            {"queue": r.queue, "state": r.state.value, "count": r.count}
            for r in sorted(report, key=lambda r: (r.queue, r.state.value))
        ],
        "budgets": [budget_json(b) for b in report.budgets],
    }


def print_json(value: Any) -> None:
    print(to_json(value, indent=2))
