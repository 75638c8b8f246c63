"""SQLite jobs of the task lifecycle after insert: `tasks_claim`, `leases_renew`,
`tasks_finish`, `tasks_promote`, `tasks_expire`, `leases_expired`, `task_cancel`,
`task_retry`, `task_progress` and `workflow_cancel`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ..._states import TERMINAL, TRANSITIONS, Phase, State, can_transition, sources_of
from ...errors import (
    DuplicateTask,
    IllegalTransition,
    LeaseLost,
    StoreError,
    TaskNotFound,
)
from .._common import wake as _wake
from .._common.serde import encode_error, progress_detail
from ..contract.dag import (
    WorkflowCancel,
)
from ..contract.tasks import (
    CancelOutcome,
    ClaimedRow,
    ErrorInfo,
    ExpiredLease,
    Finish,
    FinishOutcome,
    FinishStatus,
    LeasesExpired,
    LeasesRenew,
    RenewOutcome,
    TaskCancel,
    TaskProgress,
    TaskRetry,
    TasksClaim,
    TasksExpire,
    TasksFinish,
    TasksPromote,
)
from . import _dag, _tree
from ._admin import NOT_PAUSED_SQL
from ._budgets import NOT_HELD_SQL, claim_limited
from ._clock import lease_now, wall_ms
from ._insert import key_holder
from ._sql import EVENT_SQL, IN_CHUNK, marks
from ._threads import Tx


def tasks_claim(c: sqlite3.Connection, tx: Tx, p: TasksClaim) -> list[ClaimedRow]:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    if p.limits:

        def take(seqs: list[int]) -> list[ClaimedRow]:
            return _claim_rows(c, p, now, f"({marks(len(seqs))})", seqs)

        return claim_limited(c, p, now, take)
    queues, kinds = list(p.queues), list(p.kinds)
    picked = (
        "(SELECT seq FROM fm_tasks WHERE state = 'ready' "
        f"AND queue IN ({marks(len(queues))}) AND kind IN ({marks(len(kinds))}) "
        f"AND (expires_at IS NULL OR expires_at > ? OR started_at IS NOT NULL) AND {NOT_HELD_SQL} "
        f"AND {NOT_PAUSED_SQL} ORDER BY priority DESC, seq LIMIT ?)"
    )
    return _claim_rows(c, p, now, picked, (*queues, *kinds, now, now, p.limit))


def _claim_rows(
    c: sqlite3.Connection, p: TasksClaim, now: int, picked: str, args: Sequence[Any]
) -> list[ClaimedRow]:
    """Claim the ready tasks whose seq is `IN picked` (a subquery or a list, with `args`)."""
    tag, lease_ms = lease_now(p.now_ms)
    expires = lease_ms + p.lease_ttl_ms
    rows = c.execute(
        "UPDATE fm_tasks SET state = 'running', attempts = attempts + 1, "
        "lease_epoch = lease_epoch + 1, lease_owner = ?, lease_expires_at = ?, "
        "lease_boot = ?, lease_started = ?, "
        "cancel_requested = 0, last_finish = NULL, started_at = ?, updated_at = ? "
        f"WHERE seq IN {picked} "
        "RETURNING seq, id, kind, queue, priority, payload, phase, memo, attempts, "
        "max_attempts, retry_policy, timeout_ms, lease_epoch, parent_id, condition, workflow_id",
        (p.worker_id, expires, tag, int(p.start), now, now, *args),
    ).fetchall()
    rows.sort(key=lambda r: (-r[4], r[0]))
    c.executemany(EVENT_SQL, [(r[1], r[2], "running", now, p.worker_id) for r in rows])
    return [
        ClaimedRow(
            id=r[1],
            kind=r[2],
            queue=r[3],
            priority=r[4],
            payload=r[5],
            phase=Phase(r[6]),
            memo=r[7],
            attempt=r[8],
            max_attempts=r[9],
            retry_policy=r[10],
            timeout_ms=r[11],
            lease_epoch=r[12],
            lease_expires_at_ms=now + p.lease_ttl_ms,
            parent_id=r[13],
            condition=r[14],
            workflow_id=r[15],
        )
        for r in rows
    ]


def leases_renew(c: sqlite3.Connection, p: LeasesRenew) -> list[RenewOutcome]:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    tag, lease_ms = lease_now(p.now_ms)
    held: dict[tuple[str, int], bool] = {}
    leases = list(p.leases)
    for i in range(0, len(leases), IN_CHUNK // 2):
        chunk = leases[i : i + IN_CHUNK // 2]
        # A lease is valid until it is reclaimed, expired or not: renewing one the reaper
        # has not taken yet keeps it (the epoch fences every write after a reclaim).
        rows = c.execute(
            "UPDATE fm_tasks SET lease_expires_at = ?, lease_boot = ?, "
            "lease_started = lease_started OR ? "
            f"FROM (VALUES {', '.join(['(?, ?)'] * len(chunk))}) AS v "
            "WHERE fm_tasks.id = v.column1 AND fm_tasks.lease_epoch = v.column2 "
            "AND fm_tasks.state = 'running' RETURNING fm_tasks.id, fm_tasks.lease_epoch, "
            "fm_tasks.cancel_requested",
            (
                lease_ms + p.lease_ttl_ms,
                tag,
                p.start,
                *(x for lease in chunk for x in (lease.task_id, lease.epoch)),
            ),
        ).fetchall()
        held.update(((i, e), bool(cr)) for i, e, cr in rows)
    expires = now + p.lease_ttl_ms
    out: list[RenewOutcome] = []
    for lease in leases:
        cancel = held.get((lease.task_id, lease.epoch))
        if cancel is None:
            out.append(RenewOutcome(lease.task_id, False, False, None))
        else:
            out.append(RenewOutcome(lease.task_id, True, cancel, expires))
    return out


_FINISH_TARGETS = frozenset(t for (s, t) in TRANSITIONS if s is State.RUNNING)

_TTL_ERROR = ErrorInfo("Expired", "the task was not started before its ttl ran out", "ttl")

_CANCELLED_ON_RETRY = ErrorInfo(
    "Cancelled",
    "cancel was requested while the attempt ran; it ended asking for a retry",
    "cancelled",
)


def _finish_mark(f: Finish) -> str:
    return f"{f.target.value}:reaped" if f.expired_lease else f.target.value


_FINISH_SET = (
    "UPDATE fm_tasks SET state = {target}, last_finish = {mark}, lease_owner = NULL, "
    "lease_expires_at = NULL, error = CASE WHEN {completed} THEN NULL "
    "ELSE coalesce({err}, error) END, run_at = {run_at}, updated_at = {now}, "
    "finished_at = {finished}, attempts = attempts - {release} "
)

# One finish, fenced by its epoch (and, for the reaper's, by the lease having expired).
_FINISH_ONE = (
    _FINISH_SET.format(
        target="?",
        mark="?",
        completed="?",
        err="?",
        run_at="?",
        now="?",
        finished="?",
        release="?",
    )
    + "WHERE id = ? AND lease_epoch = ? AND state = 'running' "
)

# Up to `_BULK_CHUNK` finishes of distinct tasks in one statement: the same fence per row.
_BULK_COLUMNS = 9  # id, epoch, target, mark, completed, err, run_at, finished, release
_BULK_CHUNK = IN_CHUNK // 2


def _finish_bulk_sql(n: int) -> str:
    rows = ", ".join([f"({marks(_BULK_COLUMNS)})"] * n)
    return (
        _FINISH_SET.format(
            target="v.column3",
            mark="v.column4",
            completed="v.column5",
            err="v.column6",
            run_at="v.column7",
            now="?",
            finished="v.column8",
            release="v.column9",
        )
        + f"FROM (VALUES {rows}) AS v WHERE fm_tasks.id = v.column1 "
        "AND fm_tasks.lease_epoch = v.column2 AND fm_tasks.state = 'running' "
        "RETURNING fm_tasks.id, fm_tasks.kind, fm_tasks.cancel_requested, fm_tasks.parent_id"
    )


def _finish_values(f: Finish, now: int) -> tuple[State, int | None, str | None]:
    """The target, the run_at and the encoded error a finish writes (checked first)."""
    if f.target not in _FINISH_TARGETS:
        raise StoreError(f"a running task cannot be finished as {f.target}")
    run_at = None
    if f.target is State.SCHEDULED:
        run_at = now + f.delay_ms if f.delay_ms is not None else f.run_at_ms
        if run_at is None:
            raise StoreError("a finish to scheduled needs delay_ms or run_at_ms")
    return f.target, run_at, encode_error(f.error)


def _update_finishes(
    c: sqlite3.Connection, items: Sequence[Finish], now: int, now_ms: int | None
) -> list[tuple[str, int, str | None] | None]:
    """Apply the fenced UPDATE of each finish; per item (kind, cancel_requested, parent_id)
    of its row, or None when its fence did not hold.

    The worker's finishes (fenced by epoch alone, each task once) go out a chunk per
    statement; the reaper's (fenced by an expired lease too) and a task named twice, one
    statement each, in order, so that the second of a pair sees the first applied.
    """
    values = [_finish_values(f, now) for f in items]
    out: list[tuple[str, int, str | None] | None] = [None] * len(items)
    bulk = len({f.task_id for f in items}) == len(items) and not any(f.expired_lease for f in items)
    if bulk and len(items) > 1:
        for start in range(0, len(items), _BULK_CHUNK):
            chunk = range(start, min(start + _BULK_CHUNK, len(items)))
            args: list[Any] = [now]
            for i in chunk:
                f, (target, run_at, err) = items[i], values[i]
                finished = now if target in TERMINAL else None
                args += (f.task_id, f.epoch, target.value, _finish_mark(f))
                args += (target is State.COMPLETED, err, run_at, finished, int(f.release))
            found = {
                r[0]: (r[1], r[2], r[3])
                for r in c.execute(_finish_bulk_sql(len(chunk)), args).fetchall()
            }
            for i in chunk:
                out[i] = found.get(items[i].task_id)
        return out
    tag, lease_ms = lease_now(now_ms)
    for i, (f, (target, run_at, err)) in enumerate(zip(items, values, strict=True)):
        row = c.execute(
            _FINISH_ONE
            + (f"AND {LEASE_EXPIRED_SQL} " if f.expired_lease else "")
            + "RETURNING kind, cancel_requested, parent_id",
            (
                target.value,
                _finish_mark(f),
                target is State.COMPLETED,
                err,
                run_at,
                now,
                now if target in TERMINAL else None,
                1 if f.release else 0,
                f.task_id,
                f.epoch,
                *((lease_ms, tag) if f.expired_lease else ()),
            ),
        ).fetchone()
        out[i] = (row[0], row[1], row[2]) if row is not None else None
    return out


def tasks_finish(c: sqlite3.Connection, tx: Tx, p: TasksFinish) -> list[FinishOutcome]:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    ended: list[_tree.Ended] = []
    cancelled: list[str] = []
    out: list[FinishOutcome] = []
    events: list[tuple[Any, ...]] = []
    results: list[tuple[Any, ...]] = []
    # `last_finish` keeps the requested target (marked when the reaper made it): a repeat
    # of this same call is then ALREADY, and a worker's late finish is not mistaken for it.
    rows = _update_finishes(c, p.items, now, p.now_ms)
    for f, row in zip(p.items, rows, strict=True):
        if row is None:
            out.append(_finish_refused(c, f))
            continue
        target, err = f.target, encode_error(f.error)
        kind, cancel_requested, parent_id = row
        detail = f.error.category if f.error else None
        if cancel_requested and target not in TERMINAL:
            # Cancelled while running, and the attempt asked for another: the cancel wins,
            # or the next claim would clear the request and run the task again.
            target, err = State.CANCELLED, encode_error(_CANCELLED_ON_RETRY)
            c.execute(
                "UPDATE fm_tasks SET state = 'cancelled', error = ?, run_at = NULL, "
                "finished_at = ? WHERE id = ?",
                (err, now, f.task_id),
            )
            detail = "cancel requested"
        events.append((f.task_id, kind, target.value, now, detail))
        if target in TERMINAL:
            results.append((f.task_id, target.value, f.result, err, now))
            tx.wake(_wake.FINISH)
            if parent_id is not None:
                ended.append((parent_id, f.task_id, target))
            if target is State.CANCELLED:
                cancelled.append(f.task_id)
        elif target is State.READY:
            tx.wake(_wake.WORK)
        out.append(FinishOutcome(f.task_id, FinishStatus.APPLIED, target))
    if results:
        c.executemany(
            "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
            "VALUES (?, ?, ?, ?, ?)",
            results,
        )
    if events:
        c.executemany(EVENT_SQL, events)
    if cancelled:
        cancelled_tasks(c, tx, cancelled, "parent cancelled", now)
    if ended:
        _tree.children_ended(c, tx, ended, now)
    return out


def cancelled_tasks(
    c: sqlite3.Connection, tx: Tx, ids: Sequence[str], reason: str, now: int
) -> None:
    """What follows a cancel: on_cancel hooks are due and the descendants are cancelled."""
    for i in range(0, len(ids), IN_CHUNK):
        chunk = list(ids[i : i + IN_CHUNK])
        c.execute(
            f"UPDATE fm_tasks SET hook = '{_tree.ON_CANCEL}' WHERE has_on_cancel = 1 "
            f"AND id IN ({marks(len(chunk))})",
            chunk,
        )
    _tree.cancel_descendants(c, tx, ids, reason, now)


def _finish_refused(c: sqlite3.Connection, f: Finish) -> FinishOutcome:
    row = c.execute(
        "SELECT state, lease_epoch, last_finish FROM fm_tasks WHERE id = ?", (f.task_id,)
    ).fetchone()
    if row is not None and row[1] == f.epoch and row[2] == _finish_mark(f):
        return FinishOutcome(f.task_id, FinishStatus.ALREADY, State(row[0]))
    return FinishOutcome(f.task_id, FinishStatus.LEASE_LOST, State(row[0]) if row else None)


def tasks_promote(c: sqlite3.Connection, tx: Tx, p: TasksPromote) -> int:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    rows = c.execute(
        "UPDATE fm_tasks SET state = 'ready', updated_at = ? WHERE seq IN (SELECT seq FROM "
        "fm_tasks WHERE state = 'scheduled' AND run_at <= ? ORDER BY run_at LIMIT ?) "
        "RETURNING id, kind",
        (now, now, p.limit),
    ).fetchall()
    if rows:
        c.executemany(EVENT_SQL, [(i, k, "ready", now, "promoted") for i, k in rows])
        tx.wake(_wake.WORK)
    return len(rows)


def tasks_expire(c: sqlite3.Connection, tx: Tx, p: TasksExpire) -> int:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    err = encode_error(_TTL_ERROR)
    rows = c.execute(
        "UPDATE fm_tasks SET state = 'expired', error = ?, updated_at = ?, finished_at = ? "
        # INDEXED BY: left alone, the planner scans every ready task via fm_tasks_state.
        "WHERE seq IN (SELECT seq FROM fm_tasks INDEXED BY fm_tasks_ttl "
        "WHERE state = 'ready' AND expires_at <= ? "
        "AND started_at IS NULL ORDER BY expires_at LIMIT ?) RETURNING id, kind, parent_id",
        (err, now, now, now, p.limit),
    ).fetchall()
    if rows:
        c.executemany(EVENT_SQL, [(i, k, "expired", now, "ttl") for i, k, _ in rows])
        c.executemany(
            "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
            "VALUES (?, 'expired', NULL, ?, ?)",
            [(i, err, now) for i, _, _ in rows],
        )
        tx.wake(_wake.FINISH)
        _tree.children_ended(c, tx, [(pid, i, State.EXPIRED) for i, _, pid in rows if pid], now)
    return len(rows)


# Expired on the lease clock (params: now, tag): past its time, or written on another
# clock (before a reboot of the host, or with an injected time when the store's is used).
LEASE_EXPIRED_SQL = "(lease_expires_at < ? OR lease_boot IS NOT ?)"


def leases_expired(c: sqlite3.Connection, p: LeasesExpired) -> list[ExpiredLease]:
    tag, lease_ms = lease_now(p.now_ms)
    rows = c.execute(
        "SELECT id, kind, lease_epoch, attempts, max_attempts, retry_policy, lease_owner, "
        "cancel_requested, lease_started FROM fm_tasks WHERE state = 'running' "
        f"AND {LEASE_EXPIRED_SQL} ORDER BY lease_expires_at LIMIT ?",
        (lease_ms, tag, p.limit),
    )
    return [
        ExpiredLease(i, k, e, a, m, r, o, bool(cr), bool(st))
        for i, k, e, a, m, r, o, cr, st in rows
    ]


def task_cancel(c: sqlite3.Connection, tx: Tx, p: TaskCancel) -> CancelOutcome:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    row = c.execute(
        "SELECT state, kind, parent_id FROM fm_tasks WHERE id = ?", (p.task_id,)
    ).fetchone()
    if row is None:
        raise TaskNotFound(p.task_id)
    state, kind, parent_id = State(row[0]), row[1], row[2]
    if state is State.RUNNING:
        c.execute(
            "UPDATE fm_tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?",
            (now, p.task_id),
        )
        tx.wake(_wake.FINISH)
        return CancelOutcome(p.task_id, state, True)
    if not can_transition(state, State.CANCELLED):
        return CancelOutcome(p.task_id, state, False)
    err = encode_error(ErrorInfo("Cancelled", p.reason, "cancelled"))
    sources = sources_of(State.CANCELLED)
    updated = c.execute(
        "UPDATE fm_tasks SET state = 'cancelled', error = ?, updated_at = ?, finished_at = ? "
        f"WHERE id = ? AND state IN ({marks(len(sources))})",
        (err, now, now, p.task_id, *sources),
    ).rowcount
    if updated:
        c.execute(EVENT_SQL, (p.task_id, kind, "cancelled", now, p.reason))
        c.execute(
            "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
            "VALUES (?, 'cancelled', NULL, ?, ?)",
            (p.task_id, err, now),
        )
        tx.wake(_wake.FINISH)
        cancelled_tasks(c, tx, [p.task_id], p.reason, now)
        if parent_id is not None:
            _tree.children_ended(c, tx, [(parent_id, p.task_id, State.CANCELLED)], now)
    return CancelOutcome(p.task_id, State.CANCELLED, False)


def task_retry(c: sqlite3.Connection, tx: Tx, p: TaskRetry) -> State:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    row = c.execute(
        "SELECT state, kind, dedup_key FROM fm_tasks WHERE id = ?", (p.task_id,)
    ).fetchone()
    if row is None:
        raise TaskNotFound(p.task_id)
    state, kind, key = State(row[0]), row[1], row[2]
    if not can_transition(state, State.READY) or state not in (State.FAILED, State.DEAD_LETTERED):
        raise IllegalTransition(state.value, State.READY.value)
    if key is not None:
        # The key was freed when this task ended; a newer task may hold it now.
        holder = key_holder(c, kind, key)
        if holder is not None:
            raise DuplicateTask(key, holder[0])
    c.execute(
        "UPDATE fm_tasks SET state = 'ready', attempts = 0, error = NULL, finished_at = NULL, "
        "run_at = NULL, last_finish = NULL, cancel_requested = 0, progress_pct = NULL, "
        "progress_message = NULL, updated_at = ? WHERE id = ?",
        (now, p.task_id),
    )
    c.execute("DELETE FROM fm_results WHERE task_id = ?", (p.task_id,))
    c.execute(EVENT_SQL, (p.task_id, kind, "ready", now, "operator retry"))
    tx.wake(_wake.WORK)
    return State.READY


def task_progress(c: sqlite3.Connection, p: TaskProgress) -> None:
    now = p.now_ms if p.now_ms is not None else wall_ms()
    row = c.execute(
        "UPDATE fm_tasks SET progress_pct = ?, progress_message = ?, updated_at = ? "
        "WHERE id = ? AND lease_epoch = ? AND state = 'running' RETURNING kind",
        (p.pct, p.message, now, p.task_id, p.epoch),
    ).fetchone()
    if row is None:
        raise LeaseLost(p.task_id, p.epoch)
    c.execute(EVENT_SQL, (p.task_id, row[0], "running", now, progress_detail(p.pct, p.message)))


def workflow_cancel(c: sqlite3.Connection, tx: Tx, p: WorkflowCancel) -> int:
    count = 0
    for task_id in _dag.active_nodes(c, p.workflow_id):
        # A node cancelled above may have skipped this one already.
        before = c.execute("SELECT state FROM fm_tasks WHERE id = ?", (task_id,))
        if State(before.fetchone()[0]).terminal:
            continue
        out = task_cancel(c, tx, TaskCancel(task_id, p.reason, p.now_ms))
        count += out.requested or out.state is State.CANCELLED
    return count
