"""Parents and children in the PostgreSQL store: the join, fail-fast, cascades, spawns, hooks.

The common cases are single statements (see `Queries.tasks_finish` and `TreeQueries.spawn`):
a batch of finishes counts its ended children against their parents with one aggregated
`children_active - n` per parent, and the statement that takes a waiting parent to zero
readies it for finalize; concurrent spawns are merged into one statement that locks each
parent once. What is left (a failed child of a fail_fast parent, a cancelled task with
live children, operator cancels, wait_children, TTL expiry) runs here, inside one
transaction of the caller, so a child's end and its parent's move always commit together.

Row locks serialise every counter change; counters only move by `col = col ± n` in an
UPDATE, never by a value read and written back. Batched statements lock every row they
write up front, in id order (ids grow with time, so a parent usually sorts before its
children), and the operations here lock a parent before its children where they can;
the rare remaining cycle (a fail-fast end climbing into an ancestor that an operator is
cancelling at that moment) is broken by PostgreSQL's deadlock detector, and the store
runs the rolled-back transaction again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence, Set
from typing import Any

from psycopg import AsyncConnection

from ..._states import State, sources_of
from ...errors import FlowmillError, InvalidParent, LeaseLost, StoreError
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
    InsertOutcome,
    InsertStatus,
    NewTask,
    TasksInsert,
    TaskWaitChildren,
)
from ._insert import insert_keyed, insert_params
from ._sql import Queries
from ._text import dec, enc, enc_all
from ._tree_sql import CHILD_FAILURES, STOPPABLE, TreeQueries

Conn = AsyncConnection[Any]
Ended = tuple[str, str, State]  # (parent id, child id, the terminal state it reached)

_FAILURES = frozenset(CHILD_FAILURES)
_STOPPABLE = [s.value for s in STOPPABLE]
_PAGE = 1000
_CANCEL_SOURCES = [s.value for s in sources_of(State.CANCELLED)]
# A page of children is an index range scan on (parent_id, seq) that stops at the limit.
# While a parent's children are being added by the thousand, the statistics say it has a
# few: the planner then picks a bitmap scan that reads all the children left, and sorts
# them, for every page (quadratic over the pages). In the page's transaction, it may not.
_KEYSET_PLAN = "SET LOCAL enable_bitmapscan = off"
_CANCEL_ON_WAIT = ErrorInfo(
    "Cancelled",
    "cancel was requested while execute ran; its children are cancelled",
    "cancelled",
)


class Tree:
    """The parent/child operations of one PostgreSQL store (one schema, its channels)."""

    def __init__(self, schema: str, q: Queries, work_channel: str, finish_channel: str) -> None:
        self.tq = TreeQueries(schema)
        self.q = q
        self.work_channel = work_channel
        self.finish_channel = finish_channel

    async def now(self, conn: Conn, now_ms: int | None) -> int:
        """The instant a multi-statement transaction judges everything by."""
        if now_ms is not None:
            return now_ms
        row = await (await conn.execute(self.tq.clock)).fetchone()
        assert row is not None
        return int(row[0])

    # -- spawns ------------------------------------------------------------------------

    async def spawn_calls(
        self, conn: Conn, calls: Sequence[TasksInsert], now_ms: int | None
    ) -> list[list[InsertOutcome] | FlowmillError]:
        """Spawns (inserts with parents or fenced by a lease) without dedup keys: any number
        of calls in one statement, each checked apart; per call its outcomes, or the error
        that refused it (and then stored nothing of it)."""
        tasks = [t for c in calls for t in c.tasks]
        params = insert_params(tasks, now_ms, self.work_channel)
        params["grp"] = [k for k, c in enumerate(calls, 1) for _ in c.tasks]
        params["g_fence_id"] = [c.fence.task_id if c.fence else None for c in calls]
        params["g_fence_epoch"] = [c.fence.epoch if c.fence else None for c in calls]
        cur = await conn.execute(self.tq.spawn, params)
        row = await cur.fetchone()
        assert row is not None
        fence_ok, parents_ok, found, states, inserted_ids = row[0], row[1], row[2], row[3], row[4]
        state_of: dict[str, str] = dict(zip(found or (), states or (), strict=True))
        inserted = set(inserted_ids or ())
        refused = [_refusal(c, fence_ok[k], parents_ok[k], state_of) for k, c in enumerate(calls)]
        # Children skipped because their key names a child the parent already has.
        skipped = [
            t
            for c, err in zip(calls, refused, strict=True)
            if err is None
            for t in c.tasks
            if t.id not in inserted
        ]
        if any(t.child_key is None or t.parent_id is None for t in skipped):
            raise StoreError("a task without a child key was not inserted")
        holders = await self._holders(conn, skipped) if skipped else {}
        out: list[list[InsertOutcome] | FlowmillError] = []
        for c, err in zip(calls, refused, strict=True):
            if err is not None:
                out.append(err)
                continue
            outcomes: list[InsertOutcome] = []
            for t in c.tasks:
                if t.id in inserted:
                    outcomes.append(InsertOutcome(t.id, InsertStatus.INSERTED))
                else:
                    assert t.parent_id is not None and t.child_key is not None
                    holder = holders[(t.parent_id, enc(t.child_key))]
                    outcomes.append(InsertOutcome(holder, InsertStatus.SKIPPED))
            out.append(outcomes)
        return out

    async def spawn_keyed(
        self, conn: Conn, p: TasksInsert, dependents: Set[str] | None = None
    ) -> list[InsertOutcome]:
        """A spawn with dedup keys: one transaction that locks and checks the fence and the
        parents first, then decides child keys and dedup keys as SQLite does. (Also a linked
        spawn, keyed or not: see `insert_keyed` for `dependents`.)"""
        parents = sorted({t.parent_id for t in p.tasks if t.parent_id is not None})
        checks = {
            "fence_id": p.fence.task_id if p.fence is not None else None,
            "fence_epoch": p.fence.epoch if p.fence is not None else None,
            "parents": parents,
        }
        async with conn.transaction():
            cur = await conn.execute(self.tq.spawn_check, checks)
            row = await cur.fetchone()
            assert row is not None
            state_of = dict(zip(row[2] or (), row[3] or (), strict=True))
            err = _refusal(p, row[0], row[1], state_of)
            if err is not None:
                raise err
            return await self._insert_keyed(conn, p, list(p.tasks), dependents)

    async def _holders(self, conn: Conn, tasks: Sequence[NewTask]) -> dict[tuple[str, str], str]:
        """(parent id, encoded child key) -> the child holding that key, for these tasks."""
        cur = await conn.execute(
            self.tq.child_key_holders,
            {
                "parents": [t.parent_id for t in tasks],
                "keys": [enc(t.child_key) if t.child_key is not None else None for t in tasks],
            },
        )
        return {(pid, key): tid for pid, key, tid in await cur.fetchall()}

    async def _insert_keyed(
        self, conn: Conn, p: TasksInsert, tasks: list[NewTask], dependents: Set[str] | None
    ) -> list[InsertOutcome]:
        """Children with dedup keys too: child keys first (the parents are locked), then
        dedup keys as `insert_keyed` decides them, then the parents' counters."""
        keyed = [t for t in tasks if t.child_key is not None and t.parent_id is not None]
        holders = await self._holders(conn, keyed) if keyed else {}
        outcomes: list[InsertOutcome | None] = [None] * len(tasks)
        send: list[int] = []
        for idx, t in enumerate(tasks):
            if t.child_key is not None and t.parent_id is not None:
                k = (t.parent_id, enc(t.child_key))
                holder = holders.get(k)
                if holder is not None:
                    outcomes[idx] = InsertOutcome(holder, InsertStatus.SKIPPED)
                    continue
                holders[k] = t.id
            send.append(idx)
        if send:
            got = await insert_keyed(
                conn,
                q=self.q,
                work_channel=self.work_channel,
                tasks=[tasks[i] for i in send],
                p=p,
                dependents=dependents,
            )
            grown: dict[str, int] = defaultdict(int)
            for idx, o in zip(send, got, strict=True):
                outcomes[idx] = o
                t = tasks[idx]
                if o.status is InsertStatus.INSERTED and t.parent_id is not None:
                    grown[t.parent_id] += 1
            if grown:
                ids = sorted(grown)
                await conn.execute(
                    self.tq.grow,
                    {
                        "now": await self.now(conn, p.now_ms),
                        "ids": ids,
                        "counts": [grown[i] for i in ids],
                    },
                )
        return [o for o in outcomes if o is not None]

    # -- the join ----------------------------------------------------------------------

    async def children_ended(self, conn: Conn, ended: Iterable[Ended], now: int) -> None:
        """Count ended children against their parents; move parents whose children are done.

        One UPDATE per round for every parent concerned (aggregated: `- n`), so a batch of
        finishes costs one statement however many children it ends. A parent that fails
        here ends too, so its own parent is counted in the next round: the loop climbs the
        tree as far as ends propagate.
        """
        pending = list(ended)
        while pending:
            per_parent: dict[str, list[tuple[str, State]]] = defaultdict(list)
            for parent_id, child_id, state in pending:
                per_parent[parent_id].append((child_id, state))
            pending = []
            ids = sorted(per_parent)  # one lock order for everyone
            failed = {
                pid: [(cid, st) for cid, st in per_parent[pid] if st in _FAILURES] for pid in ids
            }
            cur = await conn.execute(
                self.tq.children_ended,
                {
                    "now": now,
                    "ids": ids,
                    "counts": [len(per_parent[pid]) for pid in ids],
                    "failed": [len(failed[pid]) for pid in ids],
                },
            )
            ready: list[str] = []
            for pid, state, active, fail_fast, _kind, grandparent in await cur.fetchall():
                if state != State.WAITING_CHILDREN.value:
                    continue  # still in execute (wait_children decides), or already ended
                if failed[pid] and fail_fast:
                    first_id, first_state = failed[pid][0]
                    message = await self._child_message(conn, first_id)
                    error = ErrorInfo(
                        "ChildFailed",
                        f"child {first_id} ended {first_state.value}{message}",
                        "child_failed",
                    )
                    await self.fail_parent(conn, pid, error, now)
                    if grandparent is not None:
                        pending.append((grandparent, pid, State.FAILED))
                elif active <= 0:
                    ready.append(pid)
            if ready:
                await self.ready_for_finalize(conn, ready, now)

    async def _first_failure(self, conn: Conn, parent_id: str) -> ErrorInfo:
        """A parent failed by a child that failed before it waited: the error names the
        first child to fail and that child's error, as a failure while waiting does."""
        cur = await conn.execute(self.tq.first_failure, {"parent": parent_id})
        row = await cur.fetchone()
        if row is None:  # pragma: no cover - children_failed counts only such children
            return ErrorInfo("ChildFailed", "a child task failed", "child_failed")
        err = decode_error(row[2]) if row[2] else None
        message = f": {err.message}" if err else ""
        return ErrorInfo("ChildFailed", f"child {row[0]} ended {row[1]}{message}", "child_failed")

    async def _child_message(self, conn: Conn, child_id: str) -> str:
        row = await (await conn.execute(self.tq.error_of, {"id": child_id})).fetchone()
        err = decode_error(row[0]) if row and row[0] else None
        return f": {err.message}" if err else ""

    async def ready_for_finalize(self, conn: Conn, ids: list[str], now: int) -> None:
        await conn.execute(
            self.tq.ready_for_finalize,
            {"now": now, "ids": ids, "work_channel": self.work_channel},
        )

    async def fail_parent(self, conn: Conn, task_id: str, error: ErrorInfo, now: int) -> None:
        """fail_fast: the parent fails, its outstanding descendants are cancelled, on_cancel due."""
        await conn.execute(
            self.tq.fail_parent,
            {
                "now": now,
                "id": task_id,
                "error": encode_error(error),
                "category": error.category,
                "finish_channel": self.finish_channel,
            },
        )
        await self.cancel_descendants(conn, [task_id], f"parent {task_id} failed", now)

    async def cancel_descendants(
        self, conn: Conn, roots: Sequence[str], reason: str, now: int
    ) -> None:
        """Cancel every non-terminal descendant of `roots`, a page per statement.

        Only children with live children of their own are descended into, so the stack
        holds orchestrators, never the (possibly hundreds of thousands of) leaves.
        """
        err = encode_error(ErrorInfo("Cancelled", reason, "cancelled"))
        await conn.execute(_KEYSET_PLAN)
        stack = list(roots)
        while stack:
            parent_id = stack.pop()
            after = 0
            while True:
                cur = await conn.execute(
                    self.tq.cascade_page,
                    {
                        "parent": parent_id,
                        "after": after,
                        "limit": _PAGE,
                        "error": err,
                        "reason": reason,
                        "now": now,
                        "stoppable": _STOPPABLE,
                        "finish_channel": self.finish_channel,
                    },
                )
                row = await cur.fetchone()
                assert row is not None
                count, last_seq, descend = int(row[0]), row[1], row[2]
                stack.extend(descend or ())
                if count < _PAGE:
                    break
                after = int(last_seq)

    # -- wait_children -----------------------------------------------------------------

    async def task_wait_children(self, conn: Conn, p: TaskWaitChildren, cancel: str) -> State:
        """Store the memo and park the task (fenced); see `TaskWaitChildren`.

        `cancel` is the store's cancel statement: a task asked to cancel while its execute
        ran is cancelled here (with its children) rather than parked, or the request would
        be lost when finalize is claimed.
        """
        async with conn.transaction():
            now = await self.now(conn, p.now_ms)
            await conn.execute(self.q.lock_parent, {"id": p.task_id})  # parent first
            cur = await conn.execute(
                self.tq.task_wait_children_memo,
                {"now": now, "memo": p.memo, "id": p.task_id, "epoch": p.epoch},
            )
            row = await cur.fetchone()
            if row is None:
                raise LeaseLost(p.task_id, p.epoch)
            _, active, failed, fail_fast, parent_id, cancel_requested = row
            if cancel_requested:
                await self.cancel_task(conn, cancel, p.task_id, _CANCEL_ON_WAIT, now)
                return State.CANCELLED
            if failed and fail_fast:
                error = await self._first_failure(conn, p.task_id)
                await self.fail_parent(conn, p.task_id, error, now)
                if parent_id is not None:
                    await self.children_ended(conn, [(parent_id, p.task_id, State.FAILED)], now)
                return State.FAILED
            if active <= 0:
                await self.ready_for_finalize(conn, [p.task_id], now)
                return State.READY
            await conn.execute(
                self.tq.task_wait_children,
                {"now": now, "id": p.task_id, "detail": f"{active} children"},
            )
            return State.WAITING_CHILDREN

    async def cancel_task(
        self, conn: Conn, cancel: str, task_id: str, error: ErrorInfo, now: int
    ) -> bool:
        """Cancel one task (its row locked by the caller) and what follows from it."""
        cur = await conn.execute(
            cancel,
            {
                "now": now,
                "id": task_id,
                "error": encode_error(error),
                "reason": error.message,
                "sources": _CANCEL_SOURCES,
                "finish_channel": self.finish_channel,
            },
        )
        row = await cur.fetchone()
        if row is None:
            return False
        _, parent_id, has_children, _ = row
        if has_children:
            await self.cancel_descendants(conn, [task_id], error.message, now)
        if parent_id is not None:
            await self.children_ended(conn, [(parent_id, task_id, State.CANCELLED)], now)
        return True

    # -- reading children --------------------------------------------------------------

    async def children_page(self, conn: Conn, p: ChildrenPage) -> list[ChildRow]:
        query = self.tq.children_page_head
        params: dict[str, Any] = {"parent": p.parent_id, "after": p.after_seq, "limit": p.limit}
        if p.kinds:
            query += " AND t.kind = ANY(%(kinds)s::text[])"
            params["kinds"] = enc_all(list(p.kinds))
        if p.states:
            query += " AND t.state = ANY(%(states)s::text[])"
            params["states"] = [State(s).value for s in p.states]
        async with conn.transaction():
            await conn.execute(_KEYSET_PLAN)
            cur = await conn.execute(query + self.tq.children_page_tail, params)
            rows = await cur.fetchall()
        return [
            ChildRow(seq, i, dec(k), State(s), res, decode_error(e), a)
            for seq, i, k, s, res, e, a in rows
        ]

    async def children_summary(self, conn: Conn, p: ChildrenSummaryQuery) -> ChildrenSummary:
        cur = await conn.execute(self.tq.children_by_state, {"parent": p.parent_id})
        by_state = {State(s): int(n) for s, n in await cur.fetchall()}
        top: list[ErrorGroup] = []
        if p.top_errors > 0 and any(s in _FAILURES for s in by_state):
            cur = await conn.execute(
                self.tq.children_errors,
                {"parent": p.parent_id, "top": p.top_errors, "examples": max(0, p.examples)},
            )
            top = [ErrorGroup(str(m), int(n), tuple(ex)) for m, n, ex in await cur.fetchall()]
        return ChildrenSummary(p.parent_id, sum(by_state.values()), by_state, tuple(top))

    # -- on_cancel hooks ---------------------------------------------------------------

    async def hooks_claim(self, conn: Conn, p: HooksClaim) -> list[HookRow]:
        cur = await conn.execute(
            self.tq.hooks_claim,
            {
                "now": p.now_ms,
                "kinds": enc_all(list(dict.fromkeys(p.kinds))),
                "limit": p.limit,
                "worker": p.worker_id,
                "ttl": p.lease_ttl_ms,
            },
        )
        rows = sorted(await cur.fetchall())
        return [HookRow(i, dec(k), h, pl, m, State(s), e, a) for _, i, k, h, pl, m, s, e, a in rows]

    async def hook_done(self, conn: Conn, p: HookDone) -> None:
        cur = await conn.execute(
            self.tq.hook_done,
            {
                "now": p.now_ms,
                "ok": p.ok,
                "max_attempts": p.max_attempts,
                "id": p.task_id,
                "epoch": p.epoch,
            },
        )
        if cur.rowcount == 0:
            raise LeaseLost(p.task_id, p.epoch)


def _refusal(
    p: TasksInsert, fence_ok: bool, parents_ok: bool, state_of: dict[str, str]
) -> FlowmillError | None:
    """What SQLite raises when the fence or a parent does not allow the insert, if anything."""
    if not fence_ok:
        assert p.fence is not None
        return LeaseLost(p.fence.task_id, p.fence.epoch)
    if not parents_ok:
        for parent_id in sorted({t.parent_id for t in p.tasks if t.parent_id is not None}):
            state = state_of.get(parent_id)
            if state is None or State(state).terminal:
                return InvalidParent(parent_id, state)
        return StoreError("a parent changed state during the insert")  # pragma: no cover
    return None
