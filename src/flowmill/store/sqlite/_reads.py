"""SQLite jobs of the reads: `task_get`, `tasks_list`, `tasks_count`, `results_get`,
`events_read`, `waitpoints_list`."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..._states import State
from .._common.list_filters import has_tag, prefix_end, tag_image
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


# Tasks a filtered list looks at in seq order before it asks an index (see `_list_page`).
LIST_WINDOW = 4000
_T_COLUMNS = ", ".join("t." + c.strip() for c in _TASK_COLUMNS.split(","))


def tasks_list(c: sqlite3.Connection, p: TasksList) -> list[TaskRecord]:
    if p.tag_key is None:
        return _list_page(c, p)
    # The tag index holds an image of each tag (`tag_image`) that two tags can share: drop
    # a row that matched only through it, and read on to fill the page.
    out: list[TaskRecord] = []
    while True:
        rows = _list_page(c, p)
        out.extend(r for r in rows if has_tag(r, p.tag_key, p.tag_value))
        if len(rows) < p.limit or len(out) >= p.limit:
            return out[: p.limit]
        p = replace(p, after_id=rows[-1].id)


def _list_page(c: sqlite3.Connection, p: TasksList) -> list[TaskRecord]:
    after = 0
    if p.after_id is not None:
        row = c.execute("SELECT seq FROM fm_tasks WHERE id = ?", (p.after_id,)).fetchone()
        if row is None:
            return []
        after = row[0]
    where, args = _filters(p)
    if p.tag_key is not None:
        # Walk the tag's index in seq order: the first page is found without a sort.
        source = "fm_task_tags g JOIN fm_tasks t ON t.seq = g.seq"
        return _select(c, source, [*where, "g.seq > ?"], [*args, after], "g.seq", p.limit)
    if len(where) == 0:
        return _select(c, "fm_tasks t", ["t.seq > ?"], [after], "t.seq", p.limit)
    if len(p.states) == 1 and p.queue is not None and p.kind is None and p.text is None:
        # fm_tasks_state (state, queue) holds these in seq order already (the maintenance
        # loop's question): no window needed.
        return _select(c, "fm_tasks t", [*where, "t.seq > ?"], [*args, after], "t.seq", p.limit)
    # A filter that many tasks match is answered fastest in seq order, one that few match
    # by its index and a sort. Look at the next LIST_WINDOW tasks in order first; only if
    # they hold less than a page, ask the index for the rest (which it then finds few of).
    end = c.execute(
        "SELECT seq FROM fm_tasks WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
        (after, LIST_WINDOW - 1),
    ).fetchone()
    window = [*where, "t.seq > ?"] + ([] if end is None else ["t.seq <= ?"])
    bounds = [after] if end is None else [after, end[0]]
    rows = _select(c, "fm_tasks t NOT INDEXED", window, [*args, *bounds], "t.seq", p.limit)
    if len(rows) == p.limit or end is None:
        return rows
    rest = p.limit - len(rows)
    # `+t.seq`: the cursor must not steer the plan to a walk in seq order (what the window
    # just did); the filters' own indexes are what finds the few matches left.
    return rows + _select(c, "fm_tasks t", [*where, "+t.seq > ?"], [*args, end[0]], "t.seq", rest)


def _filters(p: TasksList) -> tuple[list[str], list[Any]]:
    """The WHERE terms of `p`'s filters (all but the page cursor) and their arguments."""
    where: list[str] = []
    args: list[Any] = []
    if p.tag_key is not None:
        where.append("g.key = ?")
        args.append(tag_image(p.tag_key))
        if p.tag_value is not None:
            where.append("g.value = ?")
            args.append(tag_image(p.tag_value))
    if p.states:
        where.append(f"t.state IN ({marks(len(p.states))})")
        args.extend(s.value for s in p.states)
    if p.queue is not None:
        where.append("t.queue = ?")
        args.append(p.queue)
    if p.kind is not None:
        where.append("t.kind = ?")
        args.append(p.kind)
    if p.text is not None:
        ranges = []
        end = prefix_end(p.text)
        for column in ("t.id", "t.dedup_key"):
            ranges.append(f"{column} >= ?" + ("" if end is None else f" AND {column} < ?"))
            args.extend((p.text,) if end is None else (p.text, end))
        where.append("(" + " OR ".join(ranges) + ")")
    return where, args


def _select(
    c: sqlite3.Connection, source: str, where: list[str], args: list[Any], order: str, limit: int
) -> list[TaskRecord]:
    rows = c.execute(
        f"SELECT {_T_COLUMNS} FROM {source} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",
        (*args, limit),
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
    # A task's creation event is its row (migration 0007: `created_state`, id = its seq);
    # the two id-ordered streams are merged. Rows stored before that migration have no
    # `created_state`: their creation events are rows of fm_events.
    rows = c.execute(
        "SELECT id, task_id, kind, state, at, detail FROM fm_events WHERE id > ?1 "
        "UNION ALL "
        "SELECT seq, id, kind, created_state, created_at, NULL FROM fm_tasks "
        "WHERE seq > ?1 AND created_state IS NOT NULL "
        "ORDER BY 1 LIMIT ?2",
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
