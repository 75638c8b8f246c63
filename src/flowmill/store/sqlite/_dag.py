"""Dependencies between tasks in the SQLite store: linking at insert, resolution on ends.

Resolution is pushed by the operation that ends an upstream task, whichever it is: a
temporary trigger on the writer's connection reports every task with dependents that
moves into a terminal state, and the writer resolves those dependents before the
operation's savepoint is released (see `EndedTracker`). A dependent skipped or failed by
its policy ends too, so the same loop carries the skip-cascade, iteratively: no depth limit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ..._states import TERMINAL, State
from ...errors import TaskNotFound
from .._common import wake as _wake
from .._common.dag_rules import edges_of
from .._common.serde import decode_error, encode_error
from ..contract.dag import (
    UPSTREAM_FAILURES,
    NodeRow,
    UpstreamPolicy,
    UpstreamRow,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)
from ..contract.tasks import ErrorInfo, NewTask
from ._sql import EVENT_SQL, IN_CHUNK, marks
from ._threads import Tx

_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))
_FAILURES = frozenset(s.value for s in UPSTREAM_FAILURES)
_RESULT_SQL = (
    "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
    "VALUES (?, ?, NULL, ?, ?)"
)

# Installed on the writer's connection only (TEMP: it is not part of the file's schema).
_TRIGGER = f"""
CREATE TEMP TRIGGER IF NOT EXISTS fm_dag_ended AFTER UPDATE OF state ON main.fm_tasks
WHEN NEW.has_dependents = 1 AND NEW.state IN ({_TERMINAL_SQL})
    AND OLD.state NOT IN ({_TERMINAL_SQL})
BEGIN
    SELECT fm_dag_ended(NEW.id, NEW.state, NEW.updated_at);
END
"""

_DAG_COLUMNS = (
    "deps_pending",
    "upstream_policy",
    "condition",
    "workflow_id",
    "node",
    "has_dependents",
)


def insert_sql(plain: str) -> str:
    """The store's plain task INSERT widened with the dependency columns (`extend_row`)."""
    head, values = plain.split(") VALUES (")
    marks = ", ".join("?" * len(_DAG_COLUMNS))
    return f"{head}, {', '.join(_DAG_COLUMNS)}) VALUES ({values[:-1]}, {marks})"


class EndedTracker:
    """Collects, on the writer thread, the tasks with dependents that just ended."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, str, int]] = []

    def install(self, conn: sqlite3.Connection) -> None:
        conn.create_function("fm_dag_ended", 3, self._note, deterministic=False)
        conn.execute(_TRIGGER)

    def _note(self, task_id: str, state: str, at: int) -> None:
        self.ended.append((task_id, state, at))

    def wrap(self, job: Callable[[sqlite3.Connection, Tx], Any]) -> Callable[..., Any]:
        """`job`, then the resolution of whatever it ended, in the job's savepoint."""

        def run(c: sqlite3.Connection, tx: Tx) -> Any:
            self.ended.clear()
            try:
                value = job(c, tx)
                while self.ended:
                    batch, self.ended = self.ended, []
                    resolve(c, tx, batch)
            finally:
                self.ended.clear()
            return value

        return run


def extend_row(row: tuple[Any, ...], t: NewTask, upstreams: set[str]) -> tuple[Any, ...]:
    """The insert row of the plain INSERT widened with the `_DAG_COLUMNS` (`insert_sql`)."""
    if t.depends_on:
        row = (*row[:4], State.BLOCKED.value, *row[5:])
    return (
        *row,
        len(t.depends_on),
        t.upstream_policy,
        t.condition,
        t.workflow_id,
        t.node,
        1 if row[0] in upstreams else 0,
    )


def link(
    c: sqlite3.Connection,
    tx: Tx,
    inserted: Sequence[NewTask],
    remap: dict[str, str],
    now: int,
) -> None:
    """Store the edges of the inserted tasks; resolve those whose upstream ended already.

    `remap` sends the id of a task the batch did not insert (a dedup skip) to the task
    that stands for it."""
    edges, doubled = edges_of(inserted, remap)
    inserted_ids = {t.id for t in inserted}
    outside = {up for up, _, _ in edges if up not in inserted_ids}
    if not edges:
        return
    if doubled:
        c.executemany(
            "UPDATE fm_tasks SET deps_pending = deps_pending - ? WHERE id = ?",
            [(n, down) for down, n in doubled.items()],
        )
    ended: list[tuple[str, str, int]] = []
    wanted = sorted(outside)
    found: set[str] = set()
    for i in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[i : i + IN_CHUNK]
        rows = c.execute(
            f"UPDATE fm_tasks SET has_dependents = 1 WHERE id IN ({marks(len(chunk))}) "
            "RETURNING id, state",
            chunk,
        ).fetchall()
        for up, state in rows:
            found.add(up)
            if State(state).terminal:
                ended.append((up, state, now))
    missing = outside - found
    if missing:
        raise TaskNotFound(sorted(missing)[0])
    c.executemany("INSERT INTO fm_deps (upstream_id, task_id, pos) VALUES (?, ?, ?)", edges)
    if ended:
        resolve(c, tx, ended)


def insert_workflow(c: sqlite3.Connection, wf_id: str, name: str, nodes: int, now: int) -> None:
    c.execute(
        "INSERT INTO fm_workflows (id, name, created_at, nodes) VALUES (?, ?, ?, ?)",
        (wf_id, name, now, nodes),
    )


def resolve(c: sqlite3.Connection, tx: Tx, ended: Sequence[tuple[str, str, int]]) -> int:
    """Count each ended upstream against its dependents; decide those with none left.

    Returns how many edges were resolved. Each edge is resolved once (`done`), so an
    upstream that ends again after an operator retry moves nothing twice."""
    resolved = 0
    for up, state, now in ended:
        downs = c.execute(
            "UPDATE fm_deps SET done = 1 WHERE upstream_id = ? AND done = 0 RETURNING task_id",
            (up,),
        ).fetchall()
        if not downs:
            continue
        resolved += len(downs)
        failed = 1 if state in _FAILURES else 0
        skipped = 1 if state != State.COMPLETED.value and not failed else 0
        for (down,) in downs:
            row = c.execute(
                "UPDATE fm_tasks SET deps_pending = deps_pending - 1, "
                "deps_failed = deps_failed + ?, deps_skipped = deps_skipped + ? "
                "WHERE id = ? AND state = 'blocked' "
                "RETURNING deps_pending, deps_failed, deps_skipped, upstream_policy, kind",
                (failed, skipped, down),
            ).fetchone()
            if row is not None and row[0] <= 0:
                _decide(c, tx, down, row[1], row[2], row[3], row[4], now)
    return resolved


def _decide(
    c: sqlite3.Connection,
    tx: Tx,
    task_id: str,
    failed: int,
    skipped: int,
    policy: str,
    kind: str,
    now: int,
) -> None:
    if policy == UpstreamPolicy.RUN or not (failed or skipped):
        c.execute(
            "UPDATE fm_tasks SET state = 'ready', updated_at = ? WHERE id = ?", (now, task_id)
        )
        c.execute(EVENT_SQL, (task_id, kind, "ready", now, "dependencies done"))
        tx.wake(_wake.WORK)
        return
    culprit = _first_bad_upstream(c, task_id, failures_only=bool(failed))
    if failed and policy == UpstreamPolicy.FAIL:
        target = State.FAILED
        error = ErrorInfo("UpstreamFailed", f"upstream {culprit}", "upstream_failed")
    else:
        target = State.SKIPPED
        error = ErrorInfo("Skipped", f"skipped: upstream {culprit}", "upstream_skipped")
    err = encode_error(error)
    c.execute(
        "UPDATE fm_tasks SET state = ?, error = ?, updated_at = ?, finished_at = ? WHERE id = ?",
        (target.value, err, now, now, task_id),
    )
    c.execute(EVENT_SQL, (task_id, kind, target.value, now, error.category))
    c.execute(_RESULT_SQL, (task_id, target.value, err, now))
    tx.wake(_wake.FINISH)


def _first_bad_upstream(c: sqlite3.Connection, task_id: str, *, failures_only: bool) -> str:
    """`'name' failed`, naming the first upstream (in the order given) that did not complete."""
    states = sorted(_FAILURES) if failures_only else sorted(s.value for s in TERMINAL)
    row = c.execute(
        "SELECT u.id, u.node, u.state FROM fm_deps d JOIN fm_tasks u ON u.id = d.upstream_id "
        f"WHERE d.task_id = ? AND u.state IN ({marks(len(states))}) "
        "AND u.state != 'completed' ORDER BY d.pos LIMIT 1",
        (task_id, *states),
    ).fetchone()
    if row is None:  # pragma: no cover - the counters say there is one
        return "did not complete"
    name = repr(row[1]) if row[1] is not None else row[0]
    return f"{name} {'ended ' + row[2] if row[2] != 'failed' else 'failed'}"


def deps_reconcile(c: sqlite3.Connection, tx: Tx, limit: int, now: int) -> int:
    """The backstop: resolve open edges whose upstream is terminal (a missed push)."""
    rows = c.execute(
        "SELECT DISTINCT d.upstream_id, u.state FROM fm_deps d INDEXED BY fm_deps_open "
        "JOIN fm_tasks u ON u.id = d.upstream_id "
        f"WHERE d.done = 0 AND u.state IN ({_TERMINAL_SQL}) LIMIT ?",
        (limit,),
    ).fetchall()
    return resolve(c, tx, [(up, state, now) for up, state in rows]) if rows else 0


def upstream_get(c: sqlite3.Connection, task_id: str) -> list[UpstreamRow]:
    rows = c.execute(
        "SELECT u.id, u.kind, u.node, u.state, r.result, u.error FROM fm_deps d "
        "JOIN fm_tasks u ON u.id = d.upstream_id LEFT JOIN fm_results r ON r.task_id = u.id "
        "WHERE d.task_id = ? ORDER BY d.pos",
        (task_id,),
    ).fetchall()
    return [
        UpstreamRow(i, k, n, State(s), res, decode_error(e) if e else None)
        for i, k, n, s, res, e in rows
    ]


def _counts(c: sqlite3.Connection, wf_id: str) -> dict[State, int]:
    return {
        State(s): n
        for s, n in c.execute(
            "SELECT state, count(*) FROM fm_tasks WHERE workflow_id = ? GROUP BY state", (wf_id,)
        )
    }


def workflow_get(c: sqlite3.Connection, p: WorkflowGet) -> WorkflowRecord | None:
    row = c.execute(
        "SELECT id, name, created_at, nodes FROM fm_workflows WHERE id = ?", (p.workflow_id,)
    ).fetchone()
    if row is None:
        return None
    nodes: tuple[NodeRow, ...] = ()
    if p.nodes:
        ups: dict[str, list[str]] = {}
        for down, up_node in c.execute(
            "SELECT d.task_id, coalesce(u.node, u.id) FROM fm_tasks t "
            "JOIN fm_deps d ON d.task_id = t.id JOIN fm_tasks u ON u.id = d.upstream_id "
            "WHERE t.workflow_id = ? ORDER BY d.task_id, d.pos",
            (p.workflow_id,),
        ):
            ups.setdefault(down, []).append(up_node)
        nodes = tuple(
            NodeRow(
                node=n,
                task_id=i,
                kind=k,
                state=State(s),
                attempts=a,
                upstream=tuple(ups.get(i, ())),
                result=res,
                error=decode_error(e) if e else None,
                created_at_ms=cr,
                started_at_ms=st,
                finished_at_ms=fi,
            )
            for i, n, k, s, a, res, e, cr, st, fi in c.execute(
                "SELECT t.id, coalesce(t.node, t.id), t.kind, t.state, t.attempts, r.result, "
                "t.error, t.created_at, t.started_at, t.finished_at FROM fm_tasks t "
                "LEFT JOIN fm_results r ON r.task_id = t.id WHERE t.workflow_id = ? "
                "ORDER BY t.seq",
                (p.workflow_id,),
            )
        )
    return WorkflowRecord(row[0], row[1], row[2], row[3], _counts(c, row[0]), nodes)


def workflows_list(c: sqlite3.Connection, p: WorkflowsList) -> list[WorkflowRecord]:
    where, args = ("WHERE name = ? ", [p.name]) if p.name is not None else ("", [])
    rows = c.execute(
        f"SELECT id, name, created_at, nodes FROM fm_workflows {where}"
        "ORDER BY created_at DESC, id DESC LIMIT ?",
        (*args, p.limit),
    ).fetchall()
    return [WorkflowRecord(i, n, cr, total, _counts(c, i)) for i, n, cr, total in rows]


def active_nodes(c: sqlite3.Connection, wf_id: str) -> list[str]:
    return [
        r[0]
        for r in c.execute(
            f"SELECT id FROM fm_tasks WHERE workflow_id = ? AND state NOT IN ({_TERMINAL_SQL}) "
            "ORDER BY seq DESC",
            (wf_id,),
        )
    ]
