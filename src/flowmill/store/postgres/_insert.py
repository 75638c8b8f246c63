"""Inserting tasks into PostgreSQL: bulk arrays, and dedup keys decided as on SQLite."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence, Set
from typing import Any

from psycopg import AsyncConnection

from ..._states import State
from ...errors import DuplicateTask, StoreUnavailable
from .._common.serde import encode_tags
from ..contract.tasks import InsertOutcome, InsertStatus, NewTask, TasksInsert
from ._sql import Queries
from ._text import dec, enc, enc_all, enc_all_opt, enc_opt

Conn = AsyncConnection[Any]

_REPLACEABLE = frozenset({State.SCHEDULED, State.READY, State.BLOCKED})
_DEDUP_TRIES = 5


def task_columns(tasks: Sequence[NewTask]) -> dict[str, list[Any]]:
    """One array per `NEW_TASK_COLUMNS` column, encoded as the statements take them."""
    return {
        "kind": enc_all([t.kind for t in tasks]),
        "queue": enc_all([t.queue for t in tasks]),
        "priority": [t.priority for t in tasks],
        "payload": [t.payload for t in tasks],
        "dedup_key": enc_all_opt(t.dedup_key for t in tasks),
        "parent_id": [t.parent_id for t in tasks],
        "tags": [encode_tags(t.tags) if t.tags else None for t in tasks],
        "max_attempts": [t.max_attempts for t in tasks],
        "retry_policy": [t.retry_policy for t in tasks],
        "timeout_ms": [t.timeout_ms for t in tasks],
        "delay_ms": [t.delay_ms for t in tasks],
        "run_at_ms": [t.run_at_ms for t in tasks],
        "ttl_ms": [t.ttl_ms for t in tasks],
        "child_key": enc_all_opt(t.child_key for t in tasks),
        "fail_fast": [bool(t.fail_fast) for t in tasks],
        "has_on_cancel": [bool(t.has_on_cancel) for t in tasks],
        "budget_id": enc_all_opt(t.budget_id for t in tasks),
    }


def insert_one_params(t: NewTask, now_ms: int | None, work_channel: str) -> dict[str, Any]:
    """Parameters of `Queries.task_insert_one`: the columns of `task_columns`, as values."""
    return {
        "now": now_ms,
        "work_channel": work_channel,
        "id": t.id,
        "kind": enc(t.kind),
        "queue": enc(t.queue),
        "priority": t.priority,
        "payload": t.payload,
        "dedup_key": enc_opt(t.dedup_key),
        "parent_id": t.parent_id,
        "tags": encode_tags(t.tags) if t.tags else None,
        "max_attempts": t.max_attempts,
        "retry_policy": t.retry_policy,
        "timeout_ms": t.timeout_ms,
        "delay_ms": t.delay_ms,
        "run_at_ms": t.run_at_ms,
        "ttl_ms": t.ttl_ms,
        "child_key": enc_opt(t.child_key),
        "fail_fast": bool(t.fail_fast),
        "has_on_cancel": bool(t.has_on_cancel),
        "budget_id": enc_opt(t.budget_id),
    }


def insert_params(
    tasks: Sequence[NewTask],
    now_ms: int | None,
    work_channel: str,
    dependents: Set[str] | None = None,
) -> dict[str, Any]:
    """Parameters of `Queries.tasks_insert`: one array per column, or one value for all.

    With `dependents` (the ids some task of the batch depends on), those of
    `Queries.tasks_insert_linked`: the dependency and workflow columns too."""
    params: dict[str, Any] = {
        "now": now_ms,
        "work_channel": work_channel,
        "id": [t.id for t in tasks],
    }
    columns = task_columns(tasks)
    if dependents is not None:
        columns.update(
            {
                "deps_pending": [len(t.depends_on) for t in tasks],
                "upstream_policy": [t.upstream_policy for t in tasks],
                "condition": enc_all_opt(t.condition for t in tasks),
                "workflow_id": [t.workflow_id for t in tasks],
                "node": enc_all_opt(t.node for t in tasks),
                "has_dependents": [t.id in dependents for t in tasks],
            }
        )
    for name, values in columns.items():
        first = values[0] if values else None
        if values.count(first) == len(values):  # one value for the whole batch
            params[name], params[f"{name}_all"] = [], first
        else:
            params[name], params[f"{name}_all"] = values, None
    return params


async def insert_one_keyed(
    conn: Conn, q: Queries, work_channel: str, task: NewTask, p: TasksInsert
) -> list[InsertOutcome]:
    """One task with a dedup key, on an autocommit connection: its insert alone (one round
    trip, one commit) while the key is free, instead of BEGIN, insert, COMMIT. When the key
    is held nothing was written, and `insert_keyed` decides from its lookup on."""
    cur = await conn.execute(q.tasks_insert, insert_params([task], p.now_ms, work_channel))
    row = await cur.fetchone()
    if row is not None and task.id in (row[1] or ()):
        return [InsertOutcome(task.id, InsertStatus.INSERTED)]
    return await insert_keyed(conn, q, work_channel, [task], p, tried=True)


async def insert_keyed(
    conn: Conn,
    q: Queries,
    work_channel: str,
    tasks: list[NewTask],
    p: TasksInsert,
    dependents: Set[str] | None = None,
    *,
    tried: bool = False,
) -> list[InsertOutcome]:
    """Tasks with dedup keys, as SQLite decides them, in one transaction.

    The first task of each (kind, key) is inserted with ON CONFLICT DO NOTHING on the
    partial unique index; those that conflict are looked up (the winner may be another
    transaction's, committed meanwhile). A key whose holder ended between the two
    statements is tried again. A linked batch (dependencies, a workflow run: `dependents`
    names the ids its tasks depend on) goes through `Queries.tasks_insert_linked`.
    `tried`: every task has a key of its own and was just inserted in vain (see
    `insert_one_keyed`): start from the lookup.
    """
    first: dict[tuple[str, str], int] = {}
    send: list[int] = []
    # What a key's first task becomes if the key is free: with "replace", later tasks
    # of the batch rewrite it in place (keeping the first id), as if run one by one.
    rows = list(tasks)
    for idx, t in enumerate(tasks):
        if t.dedup_key is None:
            send.append(idx)
        elif (t.kind, t.dedup_key) not in first:
            first[(t.kind, t.dedup_key)] = idx
            send.append(idx)
        elif p.on_duplicate == "replace":
            head = first[(t.kind, t.dedup_key)]
            rows[head] = dataclasses.replace(t, id=tasks[head].id)
    existing: dict[tuple[str, str], tuple[str, State]] = {}
    async with conn.transaction():
        for attempt in range(_DEDUP_TRIES):
            batch = [rows[i] for i in send]
            inserted: set[str] = set()
            if not (tried and attempt == 0):
                cur = await conn.execute(
                    q.tasks_insert if dependents is None else q.tasks_insert_linked,
                    insert_params(batch, p.now_ms, work_channel, dependents),
                )
                row = await cur.fetchone()
                inserted = set(row[1] or ()) if row is not None else set()
            conflicted = [t for t in batch if t.dedup_key is not None and t.id not in inserted]
            if not conflicted:
                break
            cur = await conn.execute(
                q.dedup_lookup,
                {
                    "kind": enc_all([t.kind for t in conflicted]),
                    "key": enc_all_opt(t.dedup_key for t in conflicted),
                },
            )
            for kind, key, eid, state in await cur.fetchall():
                existing[(dec(kind), dec(key))] = (eid, State(state))
            send = [
                first[(t.kind, t.dedup_key)]
                for t in conflicted
                if t.dedup_key is not None and (t.kind, t.dedup_key) not in existing
            ]
            if not send:
                break
        else:
            raise StoreUnavailable("dedup keys kept changing hands; try the insert again")
        outcomes, replace = decide_duplicates(tasks, first, existing, p.on_duplicate)
        if replace:
            await _replace(conn, q, work_channel, replace, outcomes, tasks, p.now_ms)
    return outcomes


# What a dedup `replace` rewrites of the task holding the key (see `Queries.replace`).
_REPLACED_COLUMNS = frozenset(
    {
        "queue",
        "priority",
        "payload",
        "tags",
        "max_attempts",
        "retry_policy",
        "timeout_ms",
        "delay_ms",
        "run_at_ms",
        "ttl_ms",
        "budget_id",
    }
)


async def _replace(
    conn: Conn,
    q: Queries,
    work_channel: str,
    replace: dict[str, int],
    outcomes: list[InsertOutcome],
    tasks: list[NewTask],
    now_ms: int | None,
) -> None:
    targets = list(replace)
    news = [tasks[replace[t]] for t in targets]
    cur = await conn.execute(
        q.replace,
        {
            "now": now_ms,
            "work_channel": work_channel,
            "target": targets,
            **{k: v for k, v in task_columns(news).items() if k in _REPLACED_COLUMNS},
        },
    )
    done = {r[0] for r in await cur.fetchall() if r[0] is not None}
    # A holder claimed (or ended) since the lookup is no longer replaceable: skipped.
    for i, o in enumerate(outcomes):
        if o.status is InsertStatus.REPLACED and o.id not in done:
            outcomes[i] = InsertOutcome(o.id, InsertStatus.SKIPPED)


def decide_duplicates(
    tasks: list[NewTask],
    first: dict[tuple[str, str], int],
    existing: dict[tuple[str, str], tuple[str, State]],
    on_duplicate: str,
) -> tuple[list[InsertOutcome], dict[str, int]]:
    """Each task's outcome as SQLite decides it, and the replacements to apply.

    A key already held by an active task is answered from that task (every occurrence in
    the batch); a key first seen in this batch belongs to its first task, and later ones
    are duplicates of it (already folded into its row for "replace"). Replacements:
    holder id -> index of the last task replacing it.
    """
    outcomes: list[InsertOutcome] = []
    replace: dict[str, int] = {}
    for idx, t in enumerate(tasks):
        if t.dedup_key is None:
            outcomes.append(InsertOutcome(t.id, InsertStatus.INSERTED))
            continue
        key = (t.kind, t.dedup_key)
        held = existing.get(key)
        if held is not None:
            holder, state = held
            if on_duplicate == "reject":
                raise DuplicateTask(t.dedup_key, holder)
            if on_duplicate == "replace" and state in _REPLACEABLE:
                replace[holder] = idx
                outcomes.append(InsertOutcome(holder, InsertStatus.REPLACED))
            else:
                outcomes.append(InsertOutcome(holder, InsertStatus.SKIPPED))
            continue
        winner = tasks[first[key]].id
        if first[key] == idx:
            outcomes.append(InsertOutcome(t.id, InsertStatus.INSERTED))
        elif on_duplicate == "reject":
            raise DuplicateTask(t.dedup_key, winner)
        elif on_duplicate == "replace":
            outcomes.append(InsertOutcome(winner, InsertStatus.REPLACED))
        else:
            outcomes.append(InsertOutcome(winner, InsertStatus.SKIPPED))
    return outcomes, replace
