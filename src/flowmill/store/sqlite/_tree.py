"""Parents and children in the SQLite store: the join, fail-fast, cascades, paging, hooks.

Every function runs on the writer (or reader) thread inside the caller's transaction, so a
child's end and its parent's move happen atomically: the one transaction that takes a
parent's `children_active` to zero is the one that readies it for finalize.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from ..._states import CHILD_FAILURES, State
from ...errors import LeaseLost
from .._common import wake as _wake
from .._common.serde import decode_error, encode_error
from ..contract.tasks import (
    ChildrenPage,
    ChildrenSummary,
    ChildrenSummaryQuery,
    ChildRow,
    ErrorGroup,
    ErrorInfo,
    HookDone,
    HookRow,
    HooksClaim,
    TaskWaitChildren,
)
from ._clock import lease_now
from ._sql import EVENT_SQL, marks
from ._threads import Tx

_STOPPABLE = (
    State.SCHEDULED.value,
    State.BLOCKED.value,
    State.READY.value,
    State.WAITING_CHILDREN.value,
    State.SUSPENDED.value,
)
_RESULT_SQL = (
    "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
    "VALUES (?, ?, NULL, ?, ?)"
)
_PAGE = 1000
ON_CANCEL = "on_cancel"
_CANCEL_ON_WAIT = ErrorInfo(
    "Cancelled",
    "cancel was requested while execute ran; its children are cancelled",
    "cancelled",
)


Ended = tuple[str, str, State]  # (parent_id, child_id, terminal state)


def children_ended(c: sqlite3.Connection, tx: Tx, ended: Iterable[Ended], now: int) -> None:
    """Count ended children against their parents; move parents whose children are done.

    A parent that fails here ends too, so its own parent is counted in the next round:
    the loop climbs the tree as far as ends propagate.
    """
    pending = list(ended)
    while pending:
        per_parent: dict[str, list[tuple[str, State]]] = defaultdict(list)
        for parent_id, child_id, state in pending:
            per_parent[parent_id].append((child_id, state))
        pending = []
        for parent_id, children in per_parent.items():
            failed = [(cid, st) for cid, st in children if st in CHILD_FAILURES]
            row = c.execute(
                "UPDATE fm_tasks SET children_active = children_active - ?, "
                "children_failed = children_failed + ?, updated_at = ? WHERE id = ? "
                "RETURNING state, children_active, fail_fast, kind, parent_id",
                (len(children), len(failed), now, parent_id),
            ).fetchone()
            if row is None or row[0] != State.WAITING_CHILDREN.value:
                continue  # still in execute (task_wait_children decides), or already ended
            _, active, fail_fast, kind, grandparent = row
            if failed and fail_fast:
                first_id, first_state = failed[0]
                error = ErrorInfo(
                    "ChildFailed",
                    f"child {first_id} ended {first_state.value}{_child_message(c, first_id)}",
                    "child_failed",
                )
                fail_parent(c, tx, parent_id, kind, error, now)
                if grandparent is not None:
                    pending.append((grandparent, parent_id, State.FAILED))
            elif active <= 0:
                _ready_for_finalize(c, tx, parent_id, kind, now)


def _first_failure(c: sqlite3.Connection, parent_id: str) -> ErrorInfo:
    """The error of a parent failed by a child that failed before the parent waited: it
    names the first child to fail and that child's error, as a failure while waiting does."""
    row = c.execute(
        "SELECT id, state, error FROM fm_tasks WHERE parent_id = ? "
        f"AND state IN ({marks(len(CHILD_FAILURES))}) ORDER BY finished_at, seq LIMIT 1",
        (parent_id, *sorted(CHILD_FAILURES)),
    ).fetchone()
    if row is None:  # pragma: no cover - children_failed counts only such children
        return ErrorInfo("ChildFailed", "a child task failed", "child_failed")
    err = decode_error(row[2]) if row[2] else None
    message = f": {err.message}" if err else ""
    return ErrorInfo("ChildFailed", f"child {row[0]} ended {row[1]}{message}", "child_failed")


def _child_message(c: sqlite3.Connection, child_id: str) -> str:
    row = c.execute("SELECT error FROM fm_tasks WHERE id = ?", (child_id,)).fetchone()
    err = decode_error(row[0]) if row and row[0] else None
    return f": {err.message}" if err else ""


def _ready_for_finalize(c: sqlite3.Connection, tx: Tx, task_id: str, kind: str, now: int) -> None:
    # Finalize gets an attempt budget of its own: execute's attempts are spent already.
    c.execute(
        "UPDATE fm_tasks SET state = 'ready', phase = 'finalize', attempts = 0, "
        "updated_at = ? WHERE id = ?",
        (now, task_id),
    )
    c.execute(EVENT_SQL, (task_id, kind, "ready", now, "children done: finalize"))
    tx.wake(_wake.WORK)


def fail_parent(
    c: sqlite3.Connection, tx: Tx, task_id: str, kind: str, error: ErrorInfo, now: int
) -> None:
    """fail_fast: the parent fails, its outstanding descendants are cancelled, on_cancel due."""
    err = encode_error(error)
    c.execute(
        "UPDATE fm_tasks SET state = 'failed', error = ?, finished_at = ?, updated_at = ?, "
        "lease_owner = NULL, lease_expires_at = NULL, "
        "hook = CASE WHEN has_on_cancel = 1 THEN ? ELSE hook END WHERE id = ?",
        (err, now, now, ON_CANCEL, task_id),
    )
    c.execute(EVENT_SQL, (task_id, kind, "failed", now, error.category))
    c.execute(_RESULT_SQL, (task_id, "failed", err, now))
    tx.wake(_wake.FINISH)
    cancel_descendants(c, tx, [task_id], f"parent {task_id} failed", now)


def cancel_descendants(
    c: sqlite3.Connection, tx: Tx, roots: Sequence[str], reason: str, now: int
) -> None:
    """Cancel every non-terminal descendant of `roots`, page by page (bounded memory).

    Only children that have children of their own are descended into, so the stack holds
    orchestrators, not the (possibly hundreds of thousands of) leaves.
    """
    err = encode_error(ErrorInfo("Cancelled", reason, "cancelled"))
    stack = list(roots)
    while stack:
        parent_id = stack.pop()
        after = 0
        while True:
            rows = c.execute(
                "SELECT seq, id, kind, state, children_active FROM fm_tasks "
                "WHERE parent_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (parent_id, after, _PAGE),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            stop = [(i, k) for _, i, k, s, _ in rows if s in _STOPPABLE]
            running = [i for _, i, _, s, _ in rows if s == State.RUNNING.value]
            stack.extend(i for _, i, _, _, active in rows if active > 0)
            if stop:
                ids = [i for i, _ in stop]
                c.execute(
                    "UPDATE fm_tasks SET state = 'cancelled', error = ?, finished_at = ?, "
                    "updated_at = ?, hook = CASE WHEN has_on_cancel = 1 THEN ? ELSE hook END "
                    f"WHERE id IN ({marks(len(ids))})",
                    (err, now, now, ON_CANCEL, *ids),
                )
                c.executemany(EVENT_SQL, [(i, k, "cancelled", now, reason) for i, k in stop])
                c.executemany(_RESULT_SQL, [(i, "cancelled", err, now) for i in ids])
                c.execute(
                    "UPDATE fm_tasks SET children_active = children_active - ? WHERE id = ?",
                    (len(ids), parent_id),
                )
                tx.wake(_wake.FINISH)
            if running:
                c.execute(
                    "UPDATE fm_tasks SET cancel_requested = 1, updated_at = ? "
                    f"WHERE id IN ({marks(len(running))})",
                    (now, *running),
                )
                tx.wake(_wake.FINISH)


def task_wait_children(c: sqlite3.Connection, tx: Tx, p: TaskWaitChildren, now: int) -> State:
    row = c.execute(
        "SELECT kind, children_active, children_failed, fail_fast, parent_id, cancel_requested "
        "FROM fm_tasks WHERE id = ? AND lease_epoch = ? AND state = 'running'",
        (p.task_id, p.epoch),
    ).fetchone()
    if row is None:
        raise LeaseLost(p.task_id, p.epoch)
    kind, active, failed, fail_fast, parent_id, cancel_requested = row
    c.execute(
        "UPDATE fm_tasks SET memo = ?, lease_owner = NULL, lease_expires_at = NULL, "
        "last_finish = 'waiting_children', updated_at = ? WHERE id = ?",
        (p.memo, now, p.task_id),
    )
    if cancel_requested:
        # Cancelled while execute ran, and execute returned without noticing: parking the
        # task would lose the request (the finalize claim clears it), so the cancel wins.
        _cancel_parked(c, tx, p.task_id, kind, now)
        if parent_id is not None:
            children_ended(c, tx, [(parent_id, p.task_id, State.CANCELLED)], now)
        return State.CANCELLED
    if failed and fail_fast:
        fail_parent(c, tx, p.task_id, kind, _first_failure(c, p.task_id), now)
        if parent_id is not None:
            children_ended(c, tx, [(parent_id, p.task_id, State.FAILED)], now)
        return State.FAILED
    if active <= 0:
        _ready_for_finalize(c, tx, p.task_id, kind, now)
        return State.READY
    c.execute(
        "UPDATE fm_tasks SET state = 'waiting_children', phase = 'finalize' WHERE id = ?",
        (p.task_id,),
    )
    c.execute(EVENT_SQL, (p.task_id, kind, "waiting_children", now, f"{active} children"))
    return State.WAITING_CHILDREN


def _cancel_parked(c: sqlite3.Connection, tx: Tx, task_id: str, kind: str, now: int) -> None:
    error = _CANCEL_ON_WAIT
    err = encode_error(error)
    c.execute(
        "UPDATE fm_tasks SET state = 'cancelled', error = ?, finished_at = ?, updated_at = ?, "
        "hook = CASE WHEN has_on_cancel = 1 THEN ? ELSE hook END WHERE id = ?",
        (err, now, now, ON_CANCEL, task_id),
    )
    c.execute(EVENT_SQL, (task_id, kind, "cancelled", now, error.message))
    c.execute(_RESULT_SQL, (task_id, "cancelled", err, now))
    tx.wake(_wake.FINISH)
    cancel_descendants(c, tx, [task_id], error.message, now)


def children_page(c: sqlite3.Connection, p: ChildrenPage) -> list[ChildRow]:
    where, args = ["t.parent_id = ?", "t.seq > ?"], [p.parent_id, p.after_seq]
    if p.kinds:
        where.append(f"t.kind IN ({marks(len(p.kinds))})")
        args.extend(p.kinds)
    if p.states:
        where.append(f"t.state IN ({marks(len(p.states))})")
        args.extend(s.value for s in p.states)
    rows = c.execute(
        "SELECT t.seq, t.id, t.kind, t.state, r.result, t.error, t.attempts FROM fm_tasks t "
        "LEFT JOIN fm_results r ON r.task_id = t.id "
        f"WHERE {' AND '.join(where)} ORDER BY t.seq LIMIT ?",
        (*args, p.limit),
    ).fetchall()
    return [
        ChildRow(seq, i, k, State(s), res, decode_error(e), a) for seq, i, k, s, res, e, a in rows
    ]


def children_summary(c: sqlite3.Connection, p: ChildrenSummaryQuery) -> ChildrenSummary:
    # One pass of conditional sums: a GROUP BY would sort every child in a temp B-tree,
    # memory growing with the number of children.
    states = list(State)
    sums = ", ".join("sum(state = ?)" for _ in states)
    row = c.execute(
        f"SELECT {sums} FROM fm_tasks WHERE parent_id = ?", (*states, p.parent_id)
    ).fetchone()
    by_state = {s: int(n) for s, n in zip(states, row, strict=True) if n}
    groups = c.execute(
        "SELECT json_extract(error, '$.message') AS m, count(*) FROM fm_tasks "
        f"WHERE parent_id = ? AND state IN ({marks(len(CHILD_FAILURES))}) "
        "AND error IS NOT NULL GROUP BY m ORDER BY count(*) DESC, m LIMIT ?",
        (p.parent_id, *sorted(CHILD_FAILURES), p.top_errors),
    ).fetchall()
    top: list[ErrorGroup] = []
    for message, count in groups:
        examples = c.execute(
            "SELECT id FROM fm_tasks WHERE parent_id = ? "
            f"AND state IN ({marks(len(CHILD_FAILURES))}) "
            "AND json_extract(error, '$.message') = ? ORDER BY seq LIMIT ?",
            (p.parent_id, *sorted(CHILD_FAILURES), message, p.examples),
        ).fetchall()
        top.append(ErrorGroup(str(message), count, tuple(r[0] for r in examples)))
    return ChildrenSummary(p.parent_id, sum(by_state.values()), by_state, tuple(top))


def hooks_claim(c: sqlite3.Connection, p: HooksClaim, now: int) -> list[HookRow]:
    if not p.kinds or p.limit <= 0:
        return []
    kinds = list(p.kinds)
    tag, lease_ms = lease_now(p.now_ms)  # hook leases are judged on the lease clock too
    rows = c.execute(
        "UPDATE fm_tasks SET lease_epoch = lease_epoch + 1, lease_owner = ?, "
        "lease_expires_at = ?, lease_boot = ?, hook_attempts = hook_attempts + 1 "
        "WHERE seq IN (SELECT seq FROM fm_tasks WHERE hook IS NOT NULL "
        f"AND kind IN ({marks(len(kinds))}) "
        "AND (lease_expires_at IS NULL OR lease_expires_at < ? OR lease_boot IS NOT ?) "
        "ORDER BY seq LIMIT ?) "
        "RETURNING id, kind, hook, payload, memo, state, lease_epoch, hook_attempts",
        (p.worker_id, lease_ms + p.lease_ttl_ms, tag, *kinds, lease_ms, tag, p.limit),
    ).fetchall()
    return [HookRow(i, k, h, pl, m, State(s), e, a) for i, k, h, pl, m, s, e, a in rows]


def hook_done(c: sqlite3.Connection, p: HookDone, now: int) -> None:
    row = c.execute(
        "SELECT hook_attempts FROM fm_tasks WHERE id = ? AND lease_epoch = ? AND hook IS NOT NULL",
        (p.task_id, p.epoch),
    ).fetchone()
    if row is None:
        raise LeaseLost(p.task_id, p.epoch)
    finished = p.ok or row[0] >= p.max_attempts
    c.execute(
        "UPDATE fm_tasks SET lease_owner = NULL, lease_expires_at = NULL, updated_at = ?, "
        "hook = CASE WHEN ? THEN NULL ELSE hook END WHERE id = ?",
        (now, finished, p.task_id),
    )


def parents_of(c: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
    """The parent of each of these tasks that has one."""
    out: dict[str, str] = {}
    for i in range(0, len(ids), 500):
        chunk = list(ids[i : i + 500])
        for task_id, parent_id in c.execute(
            f"SELECT id, parent_id FROM fm_tasks WHERE id IN ({marks(len(chunk))}) "
            "AND parent_id IS NOT NULL",
            chunk,
        ):
            out[task_id] = parent_id
    return out


def grow_parents(c: sqlite3.Connection, counts: dict[str, int], now: int) -> None:
    """New children: each parent's total and active counts grow in the same transaction."""
    rows: list[tuple[Any, ...]] = [(n, n, now, pid) for pid, n in counts.items()]
    c.executemany(
        "UPDATE fm_tasks SET children_total = children_total + ?, "
        "children_active = children_active + ?, updated_at = ? WHERE id = ?",
        rows,
    )
