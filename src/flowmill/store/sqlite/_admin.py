"""SQLite jobs of the operator's operations: `worker_heartbeat`, `workers_list`,
`workers_prune`, `queue_set_paused`, `queues_list`, `tasks_purge`."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ..._states import ACTIVE, State
from .._common import wake as _wake
from ..contract.admin import (
    QueueRow,
    QueueSetPaused,
    QueuesList,
    TasksPurge,
    WorkerHeartbeat,
    WorkerRow,
    WorkersList,
    WorkersPage,
    WorkersPrune,
)
from ._clock import now_or_wall
from ._sql import NEXT_ID, marks
from ._threads import Tx

# What every claim adds to its WHERE clause: a paused queue's tasks are not claimable.
NOT_PAUSED_SQL = "queue NOT IN (SELECT name FROM fm_queues WHERE paused = 1)"

_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))

_WORKER_COLUMNS = (
    "id, host, pid, version, queues, kinds, concurrency, started_at, last_seen_at, "
    "heartbeat_ms, in_flight, stopped_at"
)


def worker_heartbeat(c: sqlite3.Connection, p: WorkerHeartbeat) -> None:
    now = now_or_wall(p.now_ms)
    c.execute(
        f"INSERT INTO fm_workers ({_WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
        "version = excluded.version, queues = excluded.queues, kinds = excluded.kinds, "
        "concurrency = excluded.concurrency, started_at = excluded.started_at, "
        "last_seen_at = excluded.last_seen_at, heartbeat_ms = excluded.heartbeat_ms, "
        "in_flight = excluded.in_flight, stopped_at = excluded.stopped_at",
        (
            p.worker_id,
            p.host,
            p.pid,
            p.version,
            json.dumps(list(p.queues)),
            json.dumps(list(p.kinds)),
            p.concurrency,
            p.started_at_ms,
            now,
            p.heartbeat_ms,
            p.in_flight,
            now if p.stopped else None,
        ),
    )


def worker_row(r: Any) -> WorkerRow:
    """A registry row (columns as `_WORKER_COLUMNS`) as a record."""
    return WorkerRow(
        worker_id=r[0],
        host=r[1],
        pid=int(r[2]),
        version=r[3],
        queues=tuple(json.loads(r[4])),
        kinds=tuple(json.loads(r[5])),
        concurrency=int(r[6]),
        started_at_ms=int(r[7]),
        last_seen_ms=int(r[8]),
        heartbeat_ms=int(r[9]),
        in_flight=int(r[10]),
        stopped_at_ms=None if r[11] is None else int(r[11]),
    )


def workers_list(c: sqlite3.Connection, p: WorkersList) -> WorkersPage:
    rows = c.execute(f"SELECT {_WORKER_COLUMNS} FROM fm_workers ORDER BY id").fetchall()
    return WorkersPage(now_or_wall(p.now_ms), [worker_row(r) for r in rows])


def workers_prune(c: sqlite3.Connection, p: WorkersPrune) -> int:
    cutoff = now_or_wall(p.now_ms) - p.older_than_ms
    return c.execute("DELETE FROM fm_workers WHERE last_seen_at < ?", (cutoff,)).rowcount


def queue_set_paused(c: sqlite3.Connection, tx: Tx, p: QueueSetPaused) -> bool:
    now = now_or_wall(p.now_ms)
    row = c.execute("SELECT paused FROM fm_queues WHERE name = ?", (p.queue,)).fetchone()
    before = bool(row[0]) if row is not None else False
    c.execute(
        "INSERT INTO fm_queues (name, paused, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, "
        "updated_at = excluded.updated_at",
        (p.queue, int(p.paused), now),
    )
    if not p.paused:
        tx.wake(_wake.WORK)  # its ready tasks are claimable again
    return before != p.paused


def queues_list(c: sqlite3.Connection, p: QueuesList) -> list[QueueRow]:
    now = now_or_wall(p.now_ms)
    counts: dict[str, dict[State, int]] = defaultdict(dict)
    for queue, state, n in c.execute(
        "SELECT queue, state, count(*) FROM fm_tasks GROUP BY queue, state"
    ):
        counts[queue][State(state)] = n
    # The ready index holds only ready rows: this walks them, never the whole table.
    oldest = dict(
        c.execute(
            "SELECT queue, min(updated_at) FROM fm_tasks WHERE state = 'ready' GROUP BY queue"
        ).fetchall()
    )
    paused = {name: bool(v) for name, v in c.execute("SELECT name, paused FROM fm_queues")}
    return [
        QueueRow(
            name=name,
            paused=paused.get(name, False),
            counts=counts.get(name, {}),
            oldest_ready_age_ms=None if oldest.get(name) is None else max(0, now - oldest[name]),
        )
        for name in sorted(set(counts) | set(paused))
    ]


# Finished tasks no live tree needs: their parent, workflow run, children and dependents
# are all finished (or gone). `t` is the candidate.
PURGE_GUARDS = (
    f"(t.parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM fm_tasks p "
    f"WHERE p.id = t.parent_id AND p.state IN ({_ACTIVE_SQL}))) "
    f"AND (t.workflow_id IS NULL OR NOT EXISTS (SELECT 1 FROM fm_tasks w "
    f"WHERE w.workflow_id = t.workflow_id AND w.state IN ({_ACTIVE_SQL}))) "
    f"AND (t.children_total = 0 OR NOT EXISTS (SELECT 1 FROM fm_tasks k "
    f"WHERE k.parent_id = t.id AND k.state IN ({_ACTIVE_SQL}))) "
    f"AND (t.has_dependents = 0 OR NOT EXISTS (SELECT 1 FROM fm_deps d "
    f"JOIN fm_tasks x ON x.id = d.task_id WHERE d.upstream_id = t.id "
    f"AND x.state IN ({_ACTIVE_SQL})))"
)


def tasks_purge(c: sqlite3.Connection, p: TasksPurge) -> int:
    states = [State(s).value for s in p.states]
    # Walk the finish-time index from the oldest: the state index would visit every
    # finished task of those states (a million completed rows) on each maintenance pass.
    picked = c.execute(
        "SELECT t.id, t.workflow_id, t.seq FROM fm_tasks t INDEXED BY fm_tasks_finished "
        f"WHERE t.finished_at IS NOT NULL AND t.finished_at < ? "
        f"AND t.state IN ({marks(len(states))}) AND {PURGE_GUARDS} "
        "ORDER BY t.finished_at LIMIT ?",
        (p.before_ms, *states, p.limit),
    ).fetchall()
    if not picked:
        return 0
    ids = [r[0] for r in picked]
    # Ids are one above the highest seq or event id (`NEXT_ID`): deleting the newest task
    # or event would hand its id out again, and a reader of the event log past it would
    # never see the new one. The floor keeps the counter where it was.
    top = c.execute(f"SELECT {NEXT_ID} - 1").fetchone()[0]
    workflows = sorted({r[1] for r in picked if r[1] is not None})
    where = f"IN ({marks(len(ids))})"
    # A task's events are found by its seq (fm_events_task_seq): an event row's task_seq
    # is its task's, and a seq is reused only after this deletes the events that had it.
    c.execute(f"DELETE FROM fm_events WHERE task_seq {where}", [r[2] for r in picked])
    c.execute(
        f"DELETE FROM fm_signals WHERE suspension_id IN "
        f"(SELECT id FROM fm_suspensions WHERE task_id {where})",
        ids,
    )
    for statement in (
        f"DELETE FROM fm_signals WHERE task_id {where}",
        f"DELETE FROM fm_suspensions WHERE task_id {where}",
        f"DELETE FROM fm_waitpoints WHERE task_id {where}",
        f"DELETE FROM fm_frames WHERE task_id {where}",
        f"DELETE FROM fm_results WHERE task_id {where}",
        f"DELETE FROM fm_deps WHERE task_id {where}",
        f"DELETE FROM fm_deps WHERE upstream_id {where}",
        f"DELETE FROM fm_tasks WHERE id {where}",
    ):
        c.execute(statement, ids)
    if workflows:
        c.execute(
            f"DELETE FROM fm_workflows WHERE id IN ({marks(len(workflows))}) "
            "AND NOT EXISTS (SELECT 1 FROM fm_tasks x WHERE x.workflow_id = fm_workflows.id)",
            workflows,
        )
    if c.execute(f"SELECT {NEXT_ID} - 1").fetchone()[0] < top:
        c.execute(
            "INSERT INTO fm_meta (key, value) VALUES ('id_floor', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(top),),
        )
    return len(ids)


class SQLiteAdminMixin:
    """The `AdminStore` operations of `SQLiteStore`."""

    if TYPE_CHECKING:

        async def _write(self, job: Any) -> Any: ...

        async def _read(self, job: Any) -> Any: ...

    async def worker_heartbeat(self, p: WorkerHeartbeat) -> None:
        await self._write(lambda c, tx: worker_heartbeat(c, p))

    async def workers_list(self, p: WorkersList) -> WorkersPage:
        result: WorkersPage = await self._read(lambda c, tx: workers_list(c, p))
        return result

    async def workers_prune(self, p: WorkersPrune) -> int:
        result: int = await self._write(lambda c, tx: workers_prune(c, p))
        return result

    async def queue_set_paused(self, p: QueueSetPaused) -> bool:
        result: bool = await self._write(lambda c, tx: queue_set_paused(c, tx, p))
        return result

    async def queues_list(self, p: QueuesList) -> list[QueueRow]:
        result: list[QueueRow] = await self._read(lambda c, tx: queues_list(c, p))
        return result

    async def tasks_purge(self, p: TasksPurge) -> int:
        result: int = await self._write(lambda c, tx: tasks_purge(c, p))
        return result
