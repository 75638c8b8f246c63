"""Store records as the JSON the dashboard reads (plain dicts of JSON types).

Payloads and results are shown as stored (JSON); bytes that are not JSON are shown as a
short note instead, so one odd row never breaks a page.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._states import State
from ..store.contract.dag import NodeRow, WorkflowRecord
from ..store.contract.records import ErrorInfo
from ..store.contract.signals import WaitpointInfo
from ..store.contract.tasks import ChildrenSummary, ChildRow, TaskRecord

JSON = dict[str, Any]


def stored_json(data: bytes | None) -> Any:
    """Stored JSON bytes as a value (None stays None)."""
    if data is None:
        return None
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {"undecodable": f"{len(data)} bytes that are not JSON"}


def error_json(e: ErrorInfo | None) -> JSON | None:
    if e is None:
        return None
    return {"type": e.type, "message": e.message, "category": e.category, "traceback": e.traceback}


def task_summary(r: TaskRecord) -> JSON:
    """One row of the task list: no payload or result."""
    return {
        "id": r.id,
        "kind": r.kind,
        "queue": r.queue,
        "state": r.state.value,
        "phase": r.phase.value,
        "attempts": r.attempts,
        "max_attempts": r.max_attempts,
        "priority": r.priority,
        "key": r.dedup_key,
        "tags": r.tags,
        "parent_id": r.parent_id,
        "progress": r.progress_pct,
        "created_at_ms": r.created_at_ms,
        "updated_at_ms": r.updated_at_ms,
        "finished_at_ms": r.finished_at_ms,
        "error": None if r.error is None else f"{r.error.type}: {r.error.message}",
    }


def task_detail(r: TaskRecord) -> JSON:
    """A task page: everything stored about the task."""
    return {
        **task_summary(r),
        "payload": stored_json(r.payload),
        "result": stored_json(r.result),
        "error": error_json(r.error),
        "progress_message": r.progress_message,
        "lease_owner": r.lease_owner,
        "lease_epoch": r.lease_epoch,
        "lease_expires_at_ms": r.lease_expires_at_ms,
        "cancel_requested": r.cancel_requested,
        "timeout_ms": r.timeout_ms,
        "run_at_ms": r.run_at_ms,
        "expires_at_ms": r.expires_at_ms,
        "started_at_ms": r.started_at_ms,
        "terminal": r.state.terminal,
        "can_cancel": not r.state.terminal,
        "can_retry": r.state in (State.FAILED, State.DEAD_LETTERED),
    }


def waitpoint_json(w: WaitpointInfo, now_ms: int) -> JSON:
    """One waitpoint of a task page: its state at `now_ms` and the signals it received."""
    return {
        "id": w.id,
        "key": w.key,
        "state": w.state(now_ms),
        "created_at_ms": w.created_at_ms,
        "expires_at_ms": w.expires_at_ms,
        "closed_reason": w.closed_reason,
        "closed_at_ms": w.closed_at_ms,
        "delivered_at_ms": w.signals[0].at_ms if w.signals else None,
        "signals": [
            {"name": s.name, "at_ms": s.at_ms, "payload": stored_json(s.payload)} for s in w.signals
        ],
    }


def child_json(c: ChildRow) -> JSON:
    return {
        "seq": c.seq,
        "id": c.id,
        "kind": c.kind,
        "state": c.state.value,
        "attempts": c.attempts,
        "error": None if c.error is None else f"{c.error.type}: {c.error.message}",
    }


def children_summary_json(s: ChildrenSummary) -> JSON:
    return {
        "total": s.total,
        "by_state": {k.value: n for k, n in s.by_state.items()},
        "top_errors": [
            {"message": g.message, "count": g.count, "example_ids": list(g.example_ids)}
            for g in s.top_errors
        ],
    }


def node_depths(nodes: tuple[NodeRow, ...]) -> dict[str, int]:
    """Each node's layer in the drawn graph: 0 for roots, else 1 + its deepest upstream.
    Nodes come in insertion order, where every upstream node precedes its dependents."""
    depth: dict[str, int] = {}
    for n in nodes:
        depth[n.node] = 1 + max((depth.get(u, 0) for u in n.upstream), default=-1)
    return depth


def workflow_json(w: WorkflowRecord) -> JSON:
    depths = node_depths(w.nodes)
    active = w.active
    failed = sum(
        n
        for s, n in w.by_state.items()
        if s in (State.FAILED, State.DEAD_LETTERED, State.CANCELLED, State.EXPIRED)
    )
    return {
        "id": w.id,
        "name": w.name,
        "created_at_ms": w.created_at_ms,
        "total": w.total,
        "by_state": {k.value: n for k, n in w.by_state.items()},
        "state": "running" if active else ("failed" if failed else "completed"),
        "nodes": [
            {
                "node": n.node,
                "task_id": n.task_id,
                "kind": n.kind,
                "state": n.state.value,
                "attempts": n.attempts,
                "upstream": list(n.upstream),
                "depth": depths.get(n.node, 0),
                "error": None if n.error is None else f"{n.error.type}: {n.error.message}",
            }
            for n in w.nodes
        ],
    }
