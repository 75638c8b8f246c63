"""SQLite jobs of the reads: `task_get`, `tasks_list`, `tasks_count`, `results_get`,
`events_read`, `waitpoints_list`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ..._states import State
from .._common.serde import decode_error, task_record
from ..contract.signals import SignalRow, WaitpointInfo, WaitpointsList
from ..contract.tasks import (
    CountRow,
    Event,
    EventsRead,
    ResultRow,
    TaskRecord,
    TasksList,
)
from ._clock import lease_to_wall
from ._sql import IN_CHUNK, marks

_TASK_COLUMNS = (
    "id, kind, queue, priority, state, phase, attempts, max_attempts, payload, error, tags, "
    "dedup_key, parent_id, progress_pct, progress_message, lease_epoch, lease_owner, "
    "lease_expires_at, cancel_requested, timeout_ms, created_at, updated_at, run_at, "
    "expires_at, started_at, finished_at, lease_boot"
)


def _shown(row: Sequence[Any]) -> list[Any]:
    """A task row for `task_record`: its lease expiry on the lease clock as wall-clock ms."""
    out = list(row[:26])
    out[17] = lease_to_wall(row[17], row[26])
    return out


def _result_of(c: sqlite3.Connection, task_id: str) -> bytes | None:
    row = c.execute("SELECT result FROM fm_results WHERE task_id = ?", (task_id,)).fetchone()
    return None if row is None else row[0]


def task_get(c: sqlite3.Connection, task_id: str) -> TaskRecord | None:
    row = c.execute(f"SELECT {_TASK_COLUMNS} FROM fm_tasks WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else task_record(_shown(row), _result_of(c, task_id))


def tasks_list(c: sqlite3.Connection, p: TasksList) -> list[TaskRecord]:
    where: list[str] = ["1 = 1"]
    args: list[Any] = []
    if p.states:
        where.append(f"state IN ({marks(len(p.states))})")
        args.extend(s.value for s in p.states)
    if p.queue is not None:
        where.append("queue = ?")
        args.append(p.queue)
    if p.kind is not None:
        where.append("kind = ?")
        args.append(p.kind)
    if p.after_id is not None:
        where.append("seq > (SELECT seq FROM fm_tasks WHERE id = ?)")
        args.append(p.after_id)
    rows = c.execute(
        f"SELECT {_TASK_COLUMNS} FROM fm_tasks WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
        (*args, p.limit),
    ).fetchall()
    return [task_record(_shown(r), _result_of(c, r[0])) for r in rows]


def tasks_count(c: sqlite3.Connection) -> list[CountRow]:
    rows = c.execute(
        "SELECT queue, state, count(*) FROM fm_tasks GROUP BY queue, state ORDER BY queue, state"
    )
    return [CountRow(q, State(s), n) for q, s, n in rows]


def results_get(c: sqlite3.Connection, ids: list[str]) -> list[ResultRow]:
    out: list[ResultRow] = []
    for i in range(0, len(ids), IN_CHUNK):
        chunk = ids[i : i + IN_CHUNK]
        rows = c.execute(
            "SELECT task_id, state, result, error FROM fm_results "
            f"WHERE task_id IN ({marks(len(chunk))})",
            chunk,
        )
        out.extend(ResultRow(t, State(s), r, decode_error(e)) for t, s, r, e in rows)
    return out


def events_read(c: sqlite3.Connection, p: EventsRead) -> list[Event]:
    rows = c.execute(
        "SELECT id, task_id, kind, state, at, detail FROM fm_events WHERE id > ? "
        "ORDER BY id LIMIT ?",
        (p.after, p.limit),
    )
    return [Event(i, t, k, State(s), a, d) for i, t, k, s, a, d in rows]


def waitpoints_list(c: sqlite3.Connection, p: WaitpointsList) -> list[WaitpointInfo]:
    wps = c.execute(
        "SELECT id, task_id, key, created_at, expires_at, closed_reason, closed_at "
        "FROM fm_waitpoints WHERE task_id = ? ORDER BY created_at, id LIMIT ?",
        (p.task_id, p.limit),
    ).fetchall()
    if not wps:
        return []
    # A signal is unconsumed (indexed by task) or names the suspension that consumed it
    # (indexed by suspension, found by task): two indexed reads, no scan of fm_signals.
    rows = c.execute(
        "SELECT seq, waitpoint_id, name, payload, at FROM fm_signals "
        "WHERE task_id = ? AND suspension_id IS NULL "
        "UNION ALL "
        "SELECT g.seq, g.waitpoint_id, g.name, g.payload, g.at FROM fm_suspensions s "
        "JOIN fm_signals g ON g.suspension_id = s.id WHERE s.task_id = ? "
        "ORDER BY 1",
        (p.task_id, p.task_id),
    )
    signals: dict[str, list[SignalRow]] = {}
    for _seq, wp, name, payload, at in rows:
        signals.setdefault(wp, []).append(SignalRow(wp, name, payload, at))
    return [
        WaitpointInfo(i, t, k, created, expires, why, closed, tuple(signals.get(i, ())))
        for i, t, k, created, expires, why, closed in wps
    ]
