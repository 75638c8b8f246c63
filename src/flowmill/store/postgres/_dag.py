"""Dependencies between tasks in the PostgreSQL store: linking at insert, reads, reconcile.

Resolution itself is pushed by a trigger in the database (see `_dag_sql`), so every
store operation that ends a task with dependents resolves them in its own transaction.
Here: the insert of a linked batch (tasks with dependencies, or the nodes of a workflow
run) in one transaction (rows, edges, the run, and the resolution of upstream tasks that
had ended already), and the reads and the maintenance backstop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from ..._states import State
from ...errors import ConfigurationError, TaskNotFound

# The checks of a linked task are the contract's, shared with the SQLite store.
from .._common.dag_rules import check, edges_of, has_links
from .._common.serde import decode_error
from ..contract.dag import (
    NodeRow,
    UpstreamRow,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)
from ..contract.tasks import InsertOutcome, InsertStatus, NewTask, TasksInsert
from ._dag_sql import DagQueries
from ._insert import insert_keyed
from ._schema import quote_schema
from ._sql import Queries
from ._text import dec, dec_opt, enc, enc_opt
from ._tree import Tree

Conn = AsyncConnection[Any]

__all__ = ["Dag", "has_links"]


class Dag:
    """The dependency and workflow operations of one PostgreSQL store."""

    def __init__(
        self, schema: str, q: Queries, tree: Tree, work_channel: str, finish_channel: str
    ) -> None:
        self.dq = DagQueries(quote_schema(schema))
        self.q = q
        self.tree = tree
        self.work_channel = work_channel
        self.finish_channel = finish_channel

    # -- insert ------------------------------------------------------------------------

    async def analyze(self, conn: Conn) -> None:
        """Fresh planner statistics of the tables the resolution reads."""
        await conn.execute(self.dq.analyze)

    async def tasks_insert(self, conn: Conn, p: TasksInsert) -> list[InsertOutcome]:
        """A linked batch, in one transaction: the rows (dependents `blocked`), then the
        edges, with upstream ids of tasks the batch skipped (dedup, child keys) sent to
        the task standing for them. Upstream tasks outside the batch must exist
        (`TaskNotFound`, and nothing is stored); those that ended already are resolved."""
        tasks = list(p.tasks)
        for t in tasks:
            check(t)
            if t.depends_on and t.dedup_key is not None and p.on_duplicate == "replace":
                raise ConfigurationError("a task with dependencies cannot replace a duplicate")
        named = {u for t in tasks for u in t.depends_on}
        async with conn.transaction():
            now = await self.tree.now(conn, p.now_ms)  # one instant for rows and edges
            at_now = dataclasses.replace(p, now_ms=now)
            if p.fence is not None or any(t.parent_id is not None for t in tasks):
                outcomes = await self.tree.spawn_keyed(conn, at_now, named)
            else:
                outcomes = await insert_keyed(
                    conn,
                    q=self.q,
                    work_channel=self.work_channel,
                    tasks=tasks,
                    p=at_now,
                    dependents=named,
                )
            await self._link(conn, p, tasks, outcomes, now)
        return outcomes

    async def _link(
        self,
        conn: Conn,
        p: TasksInsert,
        tasks: Sequence[NewTask],
        outcomes: Sequence[InsertOutcome],
        now: int,
    ) -> None:
        remap = {t.id: o.id for t, o in zip(tasks, outcomes, strict=True) if t.id != o.id}
        inserted = [
            t
            for t, o in zip(tasks, outcomes, strict=True)
            if o.status is InsertStatus.INSERTED and o.id == t.id
        ]
        found: dict[str, State] = {}
        ups: list[str] = []
        downs: list[str] = []
        positions: list[int] = []
        edges, doubled = edges_of(inserted, remap)
        for up, down, pos in edges:
            ups.append(up)
            downs.append(down)
            positions.append(pos)
        if doubled:
            await conn.execute(
                self.dq.undouble,
                {"ids": list(doubled), "counts": list(doubled.values())},
            )
        if ups:
            wanted = sorted(set(ups))
            cur = await conn.execute(self.dq.link_lock, {"ups": wanted})
            found = {i: State(s) for i, s in await cur.fetchall()}
            missing = [u for u in wanted if u not in found]
            if missing:
                raise TaskNotFound(missing[0])
        wf = p.workflow
        if ups or wf is not None:
            await conn.execute(
                self.dq.link,
                {
                    "ups": ups,
                    "downs": downs,
                    "pos": positions,
                    "wf_id": wf.id if wf is not None else None,
                    "wf_name": enc(wf.name) if wf is not None else None,
                    "now": now,
                    "nodes": sum(1 for t in inserted if wf is not None and t.workflow_id == wf.id),
                },
            )
        ended = sorted((u, s.value) for u, s in found.items() if s.terminal)
        if ended:
            await conn.execute(
                self.dq.resolve,
                {
                    "ids": [u for u, _ in ended],
                    "states": [s for _, s in ended],
                    "now": now,
                    "work_channel": self.work_channel,
                    "finish_channel": self.finish_channel,
                },
            )

    # -- maintenance -------------------------------------------------------------------

    async def deps_reconcile(self, conn: Conn, limit: int, now_ms: int | None) -> int:
        cur = await conn.execute(
            self.dq.deps_reconcile,
            {
                "limit": limit,
                "now": now_ms,
                "work_channel": self.work_channel,
                "finish_channel": self.finish_channel,
            },
        )
        row = await cur.fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    async def active_nodes(self, conn: Conn, workflow_id: str) -> list[str]:
        cur = await conn.execute(self.dq.active_nodes, {"id": workflow_id})
        return [r[0] for r in await cur.fetchall()]

    # -- reads -------------------------------------------------------------------------

    async def upstream_get(self, conn: Conn, task_id: str) -> list[UpstreamRow]:
        cur = await conn.execute(self.dq.upstream_get, {"id": task_id})
        return [
            UpstreamRow(i, dec(k), dec_opt(n), State(s), res, decode_error(e))
            for i, k, n, s, res, e in await cur.fetchall()
        ]

    async def workflow_get(self, conn: Conn, p: WorkflowGet) -> WorkflowRecord | None:
        cur = await conn.execute(self.dq.workflow_get, {"id": p.workflow_id})
        row = await cur.fetchone()
        if row is None:
            return None
        nodes: tuple[NodeRow, ...] = ()
        if p.nodes:
            cur = await conn.execute(self.dq.workflow_get_nodes, {"id": p.workflow_id})
            nodes = tuple(
                NodeRow(
                    node=dec(n) if n is not None else i,
                    task_id=i,
                    kind=dec(k),
                    state=State(s),
                    attempts=a,
                    upstream=tuple(dec(u) for u in ups),
                    result=res,
                    error=decode_error(e),
                    created_at_ms=cr,
                    started_at_ms=st,
                    finished_at_ms=fi,
                )
                for i, n, k, s, a, res, e, cr, st, fi, ups in await cur.fetchall()
            )
        return _record(row, nodes)

    async def workflows_list(self, conn: Conn, p: WorkflowsList) -> list[WorkflowRecord]:
        cur = await conn.execute(
            self.dq.workflows_list,
            {"name": enc_opt(p.name), "limit": p.limit},
        )
        return [_record(r, ()) for r in await cur.fetchall()]


def _record(row: Sequence[Any], nodes: tuple[NodeRow, ...]) -> WorkflowRecord:
    wf_id, name, created_at, total, states, counts = row
    by_state = {State(s): int(n) for s, n in zip(states, counts, strict=True)}
    return WorkflowRecord(wf_id, dec(name), created_at, total, by_state, nodes)
