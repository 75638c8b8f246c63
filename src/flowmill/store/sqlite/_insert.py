"""SQLite jobs of `tasks_insert`: plain, keyed (dedup), spawned (fenced) and linked inserts."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..._states import State
from ...errors import (
    ConfigurationError,
    DuplicateTask,
    InvalidParent,
    LeaseLost,
)
from .._common import wake as _wake
from .._common.dag_rules import check, has_links
from .._common.serde import encode_tags
from ..contract.tasks import (
    ON_DUPLICATE_CHOICES,
    InsertOutcome,
    InsertStatus,
    NewTask,
    TasksInsert,
)
from . import _dag, _tree
from ._clock import wall_ms
from ._sql import EVENT_SQL, NEXT_ID, marks
from ._threads import Tx

_INSERT_SQL = (
    "INSERT INTO fm_tasks (id, kind, queue, priority, state, payload, dedup_key, parent_id, "
    "tags, max_attempts, retry_policy, timeout_ms, created_at, updated_at, run_at, expires_at, "
    "child_key, fail_fast, has_on_cancel, budget_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _with_creation(sql: str) -> str:
    """An INSERT of tasks that also numbers each row and keeps the state it was created in.

    The row is the task's creation event (migration 0007): its seq, drawn from the counter
    the event log shares, is the event's id, and `created_state` its state (the last value
    of each row, a copy of its state as inserted).
    """
    head, values = sql.split(") VALUES (")
    return f"{head}, seq, created_state) VALUES ({values[:-1]}, {NEXT_ID}, ?)"


_PLAIN_INSERT_SQL = _with_creation(_INSERT_SQL)
_LINKED_INSERT_SQL = _with_creation(_dag.insert_sql(_INSERT_SQL))


_ACTIVE_LIST = tuple(s.value for s in State if not s.terminal)

_REPLACEABLE = (State.SCHEDULED.value, State.READY.value, State.BLOCKED.value)


def key_holder(c: sqlite3.Connection, kind: str, key: str) -> tuple[str, str] | None:
    """(id, state) of the active task holding this dedup key, if any."""
    row: tuple[str, str] | None = c.execute(
        "SELECT id, state FROM fm_tasks WHERE kind = ? AND dedup_key = ? "
        f"AND state IN ({marks(len(_ACTIVE_LIST))})",
        (kind, key, *_ACTIVE_LIST),
    ).fetchone()
    return row


def _child_key_holder(c: sqlite3.Connection, parent_id: str, key: str) -> str | None:
    row = c.execute(
        "SELECT id FROM fm_tasks WHERE parent_id = ? AND child_key = ?", (parent_id, key)
    ).fetchone()
    return None if row is None else str(row[0])


def _task_row(
    t: NewTask, task_id: str, state: State, run_at: int | None, expires_at: int | None, now: int
) -> tuple[Any, ...]:
    return (
        task_id,
        t.kind,
        t.queue,
        t.priority,
        state.value,
        t.payload,
        t.dedup_key,
        t.parent_id,
        encode_tags(t.tags),
        t.max_attempts,
        t.retry_policy,
        t.timeout_ms,
        now,
        now,
        run_at,
        expires_at,
        t.child_key,
        t.fail_fast,
        t.has_on_cancel,
        t.budget_id,
    )


def _check_fence_and_parents(c: sqlite3.Connection, p: TasksInsert) -> None:
    if p.fence is not None:
        row = c.execute(
            "SELECT 1 FROM fm_tasks WHERE id = ? AND lease_epoch = ? AND state = 'running'",
            (p.fence.task_id, p.fence.epoch),
        ).fetchone()
        if row is None:
            raise LeaseLost(p.fence.task_id, p.fence.epoch)
    for parent_id in {t.parent_id for t in p.tasks if t.parent_id is not None}:
        row = c.execute("SELECT state FROM fm_tasks WHERE id = ?", (parent_id,)).fetchone()
        if row is None or State(row[0]).terminal:
            raise InvalidParent(parent_id, row[0] if row else None)


def tasks_insert(c: sqlite3.Connection, tx: Tx, p: TasksInsert) -> list[InsertOutcome]:
    """Insert a batch as if its tasks were inserted one after another, in one transaction."""
    if p.on_duplicate not in ON_DUPLICATE_CHOICES:
        raise ConfigurationError(
            f"on_duplicate must be one of {', '.join(ON_DUPLICATE_CHOICES)}, got {p.on_duplicate!r}"
        )
    now = p.now_ms if p.now_ms is not None else wall_ms()
    _check_fence_and_parents(c, p)
    linked = p.workflow is not None or has_links(p.tasks)
    if linked:
        for t in p.tasks:
            check(t)
            if t.depends_on and t.dedup_key is not None and p.on_duplicate == "replace":
                raise ConfigurationError("a task with dependencies cannot replace a duplicate")
    outcomes: list[InsertOutcome] = []
    rows: list[tuple[Any, ...]] = []
    inserted: list[NewTask] = []  # the task of each row (used when the batch is linked)
    child_keys: dict[tuple[str, str], str] = {}  # (parent, child key) -> id, this batch
    grown: dict[str, int] = {}  # parent -> children inserted by this batch
    replaced: list[tuple[Any, ...]] = []  # events of tasks already stored, rewritten here
    batch_keys: dict[tuple[str, str], int] = {}  # (kind, key) -> index in rows
    any_ready = False
    for t in p.tasks:
        run_at = now + t.delay_ms if t.delay_ms is not None else t.run_at_ms
        state = State.SCHEDULED if run_at is not None and run_at > now else State.READY
        expires_at = now + t.ttl_ms if t.ttl_ms is not None else None
        if t.child_key is not None and t.parent_id is not None:
            # A spawn key names one child for the parent's whole life, ended or not.
            holder = child_keys.get((t.parent_id, t.child_key)) or _child_key_holder(
                c, t.parent_id, t.child_key
            )
            if holder is not None:
                outcomes.append(InsertOutcome(holder, InsertStatus.SKIPPED))
                continue
            child_keys[(t.parent_id, t.child_key)] = t.id
        if t.dedup_key is not None:
            index = batch_keys.get((t.kind, t.dedup_key))
            if index is not None:  # an earlier task of this batch holds the key
                first_id = rows[index][0]
                if p.on_duplicate == "reject":
                    raise DuplicateTask(t.dedup_key, first_id)
                if p.on_duplicate == "replace":
                    rows[index] = _task_row(t, first_id, state, run_at, expires_at, now)
                    any_ready = any_ready or state is State.READY
                    outcomes.append(InsertOutcome(first_id, InsertStatus.REPLACED))
                else:
                    outcomes.append(InsertOutcome(first_id, InsertStatus.SKIPPED))
                continue
            row = key_holder(c, t.kind, t.dedup_key)
            if row is not None:
                existing, existing_state = row
                if p.on_duplicate == "reject":
                    raise DuplicateTask(t.dedup_key, existing)
                if p.on_duplicate == "replace" and existing_state in _REPLACEABLE:
                    c.execute(
                        # A blocked holder stays blocked: its dependencies still decide.
                        "UPDATE fm_tasks SET payload = ?, queue = ?, priority = ?, "
                        "state = CASE WHEN state = 'blocked' THEN 'blocked' ELSE ? END, "
                        "tags = ?, max_attempts = ?, retry_policy = ?, timeout_ms = ?, "
                        "run_at = ?, expires_at = ?, budget_id = ?, updated_at = ? WHERE id = ?",
                        (
                            t.payload,
                            t.queue,
                            t.priority,
                            state.value,
                            encode_tags(t.tags),
                            t.max_attempts,
                            t.retry_policy,
                            t.timeout_ms,
                            run_at,
                            expires_at,
                            t.budget_id,
                            now,
                            existing,
                        ),
                    )
                    if existing_state == State.BLOCKED.value:
                        state = State.BLOCKED
                    replaced.append((existing, t.kind, state.value, now, "replaced"))
                    any_ready = any_ready or state is State.READY
                    outcomes.append(InsertOutcome(existing, InsertStatus.REPLACED))
                else:
                    outcomes.append(InsertOutcome(existing, InsertStatus.SKIPPED))
                continue
            batch_keys[(t.kind, t.dedup_key)] = len(rows)
        rows.append(_task_row(t, t.id, state, run_at, expires_at, now))
        inserted.append(t)
        if t.parent_id is not None:
            grown[t.parent_id] = grown.get(t.parent_id, 0) + 1
        any_ready = any_ready or state is State.READY
        outcomes.append(InsertOutcome(t.id, InsertStatus.INSERTED))
    if rows:
        # No fm_events row: each task row is its own creation event (`_with_creation`).
        if linked:
            remap = {t.id: o.id for t, o in zip(p.tasks, outcomes, strict=True) if t.id != o.id}
            ups = {remap.get(u, u) for t in inserted for u in t.depends_on}
            rows = [_dag.extend_row(r, t, ups) for r, t in zip(rows, inserted, strict=True)]
            c.executemany(_LINKED_INSERT_SQL, [(*r, r[4]) for r in rows])
        else:
            c.executemany(_PLAIN_INSERT_SQL, [(*r, r[4]) for r in rows])
        if grown:
            _tree.grow_parents(c, grown, now)
        if linked:
            if p.workflow is not None:
                nodes = sum(1 for t in inserted if t.workflow_id == p.workflow.id)
                _dag.insert_workflow(c, p.workflow.id, p.workflow.name, nodes, now)
            _dag.link(c, tx, inserted, remap, now)
    if replaced:
        c.executemany(EVENT_SQL, replaced)
    if any_ready:
        tx.wake(_wake.WORK)
    return outcomes
