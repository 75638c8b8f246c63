"""The PostgreSQL store's task lifecycle: `tasks_insert` (plain, keyed, spawned, linked),
`tasks_claim`, `leases_renew`, `tasks_finish` (group-committed), `tasks_promote`,
`tasks_expire`, `leases_expired`, `task_cancel`, `task_retry` and `task_progress`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from ..._states import TERMINAL, TRANSITIONS, State, can_transition
from ...errors import (
    ConfigurationError,
    DuplicateTask,
    FlowmillError,
    IllegalTransition,
    LeaseLost,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
)
from .._common.serde import encode_error, progress_detail
from ..contract.budgets import ClaimedRows
from ..contract.tasks import (
    ON_DUPLICATE_CHOICES,
    CancelOutcome,
    ClaimedRow,
    ErrorInfo,
    ExpiredLease,
    Finish,
    FinishOutcome,
    FinishStatus,
    InsertOutcome,
    InsertStatus,
    LeasesExpired,
    LeasesRenew,
    NewTask,
    RenewOutcome,
    TaskCancel,
    TaskProgress,
    TaskRetry,
    TasksClaim,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TasksPromote,
)
from ._batch import Combiner
from ._dag import Dag, has_links
from ._errors import (
    is_connection_error,
)
from ._insert import insert_keyed, insert_params
from ._rows import claimed_row
from ._sql import Queries
from ._text import dec, enc, enc_all
from ._tree import Tree

T = TypeVar("T")
Conn = AsyncConnection[Any]

log = logging.getLogger("flowmill.store.postgres")

_ANALYZE_AFTER_LINKED = 1000  # tasks in one linked insert

_FINISH_TARGETS = frozenset(t for (s, t) in TRANSITIONS if s is State.RUNNING)

_TTL_ERROR = ErrorInfo("Expired", "the task was not started before its ttl ran out", "ttl")

_CANCELLED_ON_RETRY = ErrorInfo(
    "Cancelled",
    "cancel was requested while the attempt ran; it ended asking for a retry",
    "cancelled",
)

_PARENT_CANCELLED = "parent cancelled"


def _finish_mark(f: Finish) -> str:
    """What `last_finish` records: the target, marked when the reaper made the finish, so
    that a worker's late finish with the same epoch is not mistaken for a repeat of it."""
    return f"{f.target.value}:reaped" if f.expired_lease else f.target.value


# Calls larger than this run on their own rather than being merged with others.
COMBINE_MAX_ITEMS = 5000

# Spawn calls merged into one statement: each call up to this many tasks.
_SPAWN_COMBINE_MAX_TASKS = 100


class PostgresTasksMixin:
    """The task lifecycle operations of `PostgresStore`."""

    if TYPE_CHECKING:
        _q: Queries
        _tree: Tree
        _dag: Dag
        work_channel: str
        finish_channel: str
        _finisher: Combiner[Finish, FinishOutcome]
        _spawner: Combiner[TasksInsert, list[InsertOutcome] | FlowmillError]
        _inserter: Combiner[NewTask, InsertOutcome]

        async def _run(self, job: Callable[[Conn], Awaitable[T]], *, idempotent: bool) -> T: ...

        async def _claim_limited(self, p: TasksClaim) -> ClaimedRows: ...

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]:
        if p.on_duplicate not in ON_DUPLICATE_CHOICES:
            raise ConfigurationError(
                f"on_duplicate must be one of {', '.join(ON_DUPLICATE_CHOICES)}, "
                f"got {p.on_duplicate!r}"
            )
        tasks = list(p.tasks)
        if not tasks and p.fence is None:
            return []
        if p.workflow is not None or has_links(tasks):
            # Dependencies or a workflow run: rows, edges and the run in one transaction.
            outs = await self._run(functools.partial(self._dag.tasks_insert, p=p), idempotent=False)
            if len(tasks) >= _ANALYZE_AFTER_LINKED:
                # A big DAG can make the tables many times larger than their statistics
                # say; the resolution's plans then scan instead of probing (measured: 10x
                # slower to run a 6,000-node DAG on fresh tables). Refresh them now.
                await self._run(self._dag.analyze, idempotent=True)
            return outs
        # (Even an empty spawn is refused with a stale lease, as on SQLite.)
        if p.fence is not None or any(t.parent_id is not None for t in tasks):
            return await self._spawn(p, tasks)
        if any(t.dedup_key is not None for t in tasks):
            keyed = functools.partial(
                insert_keyed, q=self._q, work_channel=self.work_channel, tasks=tasks, p=p
            )
            return await self._run(keyed, idempotent=False)
        if p.now_ms is None and len(tasks) < COMBINE_MAX_ITEMS:
            return await self._inserter.call(tasks)
        return await self._insert_plain(tasks, p.now_ms)

    async def _spawn(self, p: TasksInsert, tasks: list[NewTask]) -> list[InsertOutcome]:
        """Spawns: the fence, the parents and their counters go with the rows."""
        if any(t.dedup_key is not None for t in tasks):
            keyed = functools.partial(self._tree.spawn_keyed, p=p)
            return await self._run(keyed, idempotent=False)
        if p.now_ms is None and len(tasks) <= _SPAWN_COMBINE_MAX_TASKS:
            # Concurrent spawns under one parent all lock it: merged, they lock it once.
            (got,) = await self._spawner.call([p])
        else:
            (got,) = await self._spawn_calls([p], p.now_ms)
        if isinstance(got, FlowmillError):
            raise got
        return got

    async def _spawn_calls(
        self, calls: list[TasksInsert], now_ms: int | None
    ) -> list[list[InsertOutcome] | FlowmillError]:
        job = functools.partial(self._tree.spawn_calls, calls=calls, now_ms=now_ms)
        return await self._run(job, idempotent=False)

    async def _insert_plain(self, tasks: list[NewTask], now_ms: int | None) -> list[InsertOutcome]:
        """Tasks without dedup keys: one INSERT ... SELECT FROM unnest(...) statement."""
        params = insert_params(tasks, now_ms, self.work_channel)

        async def job(conn: Conn) -> None:
            await conn.execute(self._q.tasks_insert_unkeyed, params)

        async def again(conn: Conn) -> None:
            # The statement is atomic: the first run committed all of these rows or none.
            async with conn.transaction():
                cur = await conn.execute(self._q.tasks_insert_unkeyed_again, params)
                row = await cur.fetchone()
                inserted = 0 if row is None else int(row[2])
                if 0 < inserted < len(tasks):
                    raise StoreError(
                        f"{len(tasks) - inserted} of {len(tasks)} task ids already exist"
                    )

        try:
            await self._run(job, idempotent=False)
        except StoreUnavailable as exc:
            if exc.__cause__ is None or not is_connection_error(exc.__cause__):
                raise
            # The connection failed under the insert (a server restart): whether it
            # committed is unknown, so run it once more in a form that cannot insert twice.
            log.warning("flowmill: %s; running the insert again", exc)
            await self._run(again, idempotent=True)
        return [InsertOutcome(t.id, InsertStatus.INSERTED) for t in tasks]

    async def tasks_claim(self, p: TasksClaim) -> list[ClaimedRow]:
        queues = list(dict.fromkeys(p.queues))
        kinds = list(dict.fromkeys(p.kinds))
        if p.limit <= 0 or not kinds or not queues:
            return []
        if p.limits:
            return await self._claim_limited(p)
        params: dict[str, Any] = {
            "now": p.now_ms,
            "kinds": enc_all(kinds),
            "limit": p.limit,
            "worker": p.worker_id,
            "ttl": p.lease_ttl_ms,
            "start": p.start,
        }
        if len(queues) == 1:
            query, params["queue"] = self._q.tasks_claim_one, enc(queues[0])
        else:
            query, params["queues"] = self._q.tasks_claim_many, enc_all(queues)

        async def job(conn: Conn) -> list[ClaimedRow]:
            cur = await conn.execute(query, params)
            return [claimed_row(r) for r in await cur.fetchall()]

        # Run again after a lost connection: a claim whose reply was lost is reclaimed
        # when its lease expires whether or not we ask again.
        return await self._run(job, idempotent=True)

    async def leases_renew(self, p: LeasesRenew) -> list[RenewOutcome]:
        if not p.leases:
            return []
        leases = sorted(p.leases, key=lambda lease: lease.task_id)  # one lock order
        params = {
            "now": p.now_ms,
            "ttl": p.lease_ttl_ms,
            "start": p.start,
            "ids": [lease.task_id for lease in leases],
            "epochs": [lease.epoch for lease in leases],
        }

        async def job(conn: Conn) -> dict[tuple[str, int], tuple[bool, int]]:
            cur = await conn.execute(self._q.leases_renew, params)
            return {(r[0], r[1]): (bool(r[2]), int(r[3])) for r in await cur.fetchall()}

        held = await self._run(job, idempotent=True)
        out: list[RenewOutcome] = []
        for lease in p.leases:
            got = held.get((lease.task_id, lease.epoch))
            if got is None:
                out.append(RenewOutcome(lease.task_id, False, False, None))
            else:
                out.append(RenewOutcome(lease.task_id, True, got[0], got[1]))
        return out

    async def tasks_finish(self, p: TasksFinish) -> list[FinishOutcome]:
        items = list(p.items)
        for f in items:
            if f.target not in _FINISH_TARGETS:
                raise StoreError(f"a running task cannot be finished as {f.target}")
            if f.target is State.SCHEDULED and f.delay_ms is None and f.run_at_ms is None:
                raise StoreError("a finish to scheduled needs delay_ms or run_at_ms")
        if not items:
            return []
        if p.now_ms is None and len(items) < COMBINE_MAX_ITEMS:
            return await self._finisher.call(items)
        return await self._finish_items(items, p.now_ms)

    async def _finish_items(self, items: list[Finish], now_ms: int | None) -> list[FinishOutcome]:
        """Apply finishes in order: a task named twice goes in a later round, as on SQLite."""
        rounds: list[list[int]] = []
        seen_in: dict[str, int] = {}
        for idx, f in enumerate(items):
            r = seen_in.get(f.task_id, -1) + 1
            seen_in[f.task_id] = r
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(idx)
        out: list[FinishOutcome | None] = [None] * len(items)
        for round_ in rounds:
            # Rows are locked in array order: one order for everyone avoids deadlocks
            # between overlapping batches (a worker's finish, the reaper's, a renewal).
            round_.sort(key=lambda i: items[i].task_id)
            batch = [items[i] for i in round_]
            got = await self._run(
                functools.partial(self._finish_round, items=batch, now_ms=now_ms),
                idempotent=True,  # a repeat of an applied finish answers ALREADY
            )
            deferred = [k for k, o in enumerate(got) if o is None]
            if deferred:
                # Children and cancelled parents: applied with their tree work, atomically.
                tree = await self._run(
                    functools.partial(
                        self._finish_tree, items=[batch[k] for k in deferred], now_ms=now_ms
                    ),
                    idempotent=True,
                )
                for k, t in zip(deferred, tree, strict=True):
                    got[k] = t
            for i, o in zip(round_, got, strict=True):
                out[i] = o
        return [o for o in out if o is not None]

    def _finish_params(
        self, items: list[Finish], now_ms: int | None, *, simple: bool
    ) -> dict[str, Any]:
        return {
            "now": now_ms,
            "simple": simple,
            "work_channel": self.work_channel,
            "finish_channel": self.finish_channel,
            "ids": [f.task_id for f in items],
            "epochs": [f.epoch for f in items],
            "targets": [f.target.value for f in items],
            "errors": [encode_error(f.error) for f in items],
            "details": [f.error.category if f.error else None for f in items],
            "delays": [f.delay_ms for f in items],
            "run_ats": [f.run_at_ms for f in items],
            "releases": [1 if f.release else 0 for f in items],
            "expired": [f.expired_lease for f in items],
            "terminal": [f.target in TERMINAL for f in items],
            "results": [f.result for f in items],
            "cancel_error": encode_error(_CANCELLED_ON_RETRY),
        }

    async def _finish_round(
        self, conn: Conn, items: list[Finish], now_ms: int | None
    ) -> list[FinishOutcome | None]:
        """One statement in autocommit: the finishes and the join of the children among
        them (see `Queries.tasks_finish`); None for those left to `_finish_tree`."""
        cur = await conn.execute(
            self._q.tasks_finish, self._finish_params(items, now_ms, simple=True)
        )
        applied: dict[int, State] = {}
        deferred: set[int] = set()
        for tag, k, state, *_ in await cur.fetchall():
            if tag == "a":
                applied[k] = State(state)
            elif tag == "d":
                deferred.add(k)
        return await self._finish_outcomes(conn, items, applied, deferred, defer_running=True)

    async def _finish_outcomes(
        self,
        conn: Conn,
        items: list[Finish],
        applied: dict[int, State],
        deferred: set[int],
        *,
        defer_running: bool,
    ) -> list[FinishOutcome | None]:
        """APPLIED, or (for the refused) ALREADY when this very finish was applied before.

        None for the deferred ones and, with `defer_running`, for a refused finish whose
        task still runs at its epoch (a parent or children that the statement saw only as
        it ran, or a reaper's finish of a lease not yet expired): `_finish_tree` decides.
        """
        refused = [f for k, f in enumerate(items, 1) if k not in applied and k not in deferred]
        now_rows: dict[str, tuple[str, int, str | None]] = {}
        if refused:
            cur = await conn.execute(
                self._q.tasks_finish_refused, {"ids": [f.task_id for f in refused]}
            )
            now_rows = {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}
        out: list[FinishOutcome | None] = []
        for k, f in enumerate(items, 1):
            if k in applied:
                out.append(FinishOutcome(f.task_id, FinishStatus.APPLIED, applied[k]))
                continue
            if k in deferred:
                out.append(None)
                continue
            row = now_rows.get(f.task_id)
            if defer_running and row is not None and row[0] == "running" and row[1] == f.epoch:
                out.append(None)
            elif row is not None and row[1] == f.epoch and row[2] == _finish_mark(f):
                out.append(FinishOutcome(f.task_id, FinishStatus.ALREADY, State(row[0])))
            else:
                state = State(row[0]) if row is not None else None
                out.append(FinishOutcome(f.task_id, FinishStatus.LEASE_LOST, state))
        return out

    async def _finish_tree(
        self, conn: Conn, items: list[Finish], now_ms: int | None
    ) -> list[FinishOutcome]:
        """Finishes with tree work: one transaction ends the tasks, cancels what hangs
        below the cancelled ones and counts the ended ones against their parents."""
        async with conn.transaction():
            now = await self._tree.now(conn, now_ms)
            cur = await conn.execute(
                self._q.tasks_finish, self._finish_params(items, now, simple=False)
            )
            applied: dict[int, State] = {}
            cancelled: list[str] = []
            ended: list[tuple[str, str, State]] = []
            for tag, k, state, is_ended, parent_id, has_children in await cur.fetchall():
                if tag != "a":
                    continue
                f, st = items[k - 1], State(state)
                applied[k] = st
                if st is State.CANCELLED and has_children:
                    cancelled.append(f.task_id)
                if is_ended and parent_id is not None:
                    ended.append((parent_id, f.task_id, st))
            got = await self._finish_outcomes(conn, items, applied, set(), defer_running=False)
            out = [o for o in got if o is not None]
            if cancelled:
                await self._tree.cancel_descendants(conn, cancelled, _PARENT_CANCELLED, now)
            if ended:
                await self._tree.children_ended(conn, ended, now)
        return out

    async def _count_and_notify(self, query: str, params: dict[str, Any]) -> int:
        async def job(conn: Conn) -> int:
            row = await (await conn.execute(query, params)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(job, idempotent=True)

    async def tasks_promote(self, p: TasksPromote) -> int:
        return await self._count_and_notify(
            self._q.tasks_promote,
            {"now": p.now_ms, "limit": p.limit, "work_channel": self.work_channel},
        )

    async def tasks_expire(self, p: TasksExpire) -> int:
        params = {
            "now": p.now_ms,
            "limit": p.limit,
            "error": encode_error(_TTL_ERROR),
            "finish_channel": self.finish_channel,
        }

        async def job(conn: Conn) -> int:
            async with conn.transaction():
                row = await (await conn.execute(self._q.tasks_expire, params)).fetchone()
                assert row is not None
                count, _, children, parents, now = row
                if children:
                    # Expired children count as child ends (failures, for fail_fast).
                    ended = [
                        (pid, cid, State.EXPIRED)
                        for cid, pid in zip(children, parents, strict=True)
                    ]
                    await self._tree.children_ended(conn, ended, int(now))
                return int(count)

        return await self._run(job, idempotent=True)

    async def leases_expired(self, p: LeasesExpired) -> list[ExpiredLease]:
        async def job(conn: Conn) -> list[ExpiredLease]:
            cur = await conn.execute(self._q.leases_expired, {"now": p.now_ms, "limit": p.limit})
            return [
                ExpiredLease(i, dec(k), e, a, m, r, o, bool(cr), bool(st))
                for i, k, e, a, m, r, o, cr, st in await cur.fetchall()
            ]

        return await self._run(job, idempotent=True)

    async def task_cancel(self, p: TaskCancel) -> CancelOutcome:
        async def job(conn: Conn) -> CancelOutcome:
            async with conn.transaction():
                got = await self._cancel_locked(conn, p)
                if got is None:
                    raise TaskNotFound(p.task_id)
                return got[1]

        # Running it twice answers the same: cancelled, or (still) requested.
        return await self._run(job, idempotent=True)

    async def _cancel_locked(self, conn: Conn, p: TaskCancel) -> tuple[State, CancelOutcome] | None:
        """`task_cancel` inside the caller's transaction: the state the task was found in
        and the outcome; None when there is no such task."""
        # Parent before child: the lock order of every tree write.
        await conn.execute(self._q.lock_parent, {"id": p.task_id})
        row = await (await conn.execute(self._q.lock_task, {"id": p.task_id})).fetchone()
        if row is None:
            return None
        state = State(row[0])
        if state is State.RUNNING:
            await conn.execute(
                self._q.task_cancel_request,
                {"now": p.now_ms, "id": p.task_id, "finish_channel": self.finish_channel},
            )
            return state, CancelOutcome(p.task_id, state, True)
        if not can_transition(state, State.CANCELLED):
            return state, CancelOutcome(p.task_id, state, False)
        now = await self._tree.now(conn, p.now_ms)
        error = ErrorInfo("Cancelled", p.reason, "cancelled")
        await self._tree.cancel_task(conn, self._q.task_cancel, p.task_id, error, now)
        return state, CancelOutcome(p.task_id, State.CANCELLED, False)

    async def task_retry(self, p: TaskRetry) -> State:
        async def job(conn: Conn) -> State:
            async with conn.transaction():
                row = await (await conn.execute(self._q.lock_task, {"id": p.task_id})).fetchone()
                if row is None:
                    raise TaskNotFound(p.task_id)
                state = State(row[0])
                if not can_transition(state, State.READY) or state not in (
                    State.FAILED,
                    State.DEAD_LETTERED,
                ):
                    raise IllegalTransition(state.value, State.READY.value)
                kind, key = row[1], row[2]
                try:
                    async with conn.transaction():
                        await conn.execute(
                            self._q.task_retry,
                            {"now": p.now_ms, "id": p.task_id, "work_channel": self.work_channel},
                        )
                except psycopg.errors.UniqueViolation:
                    # The key was freed when this task ended; a newer task holds it now.
                    if key is None:
                        raise
                    cur = await conn.execute(self._q.key_holder, {"kind": kind, "key": key})
                    holder = await cur.fetchone()
                    raise DuplicateTask(dec(key), holder[0] if holder else "?") from None
                return State.READY

        return await self._run(job, idempotent=False)

    async def task_progress(self, p: TaskProgress) -> None:
        params = {
            "now": p.now_ms,
            "pct": p.pct,
            "message": p.message,
            "id": p.task_id,
            "epoch": p.epoch,
            "detail": progress_detail(p.pct, p.message),
        }

        async def job(conn: Conn) -> int:
            return (await conn.execute(self._q.task_progress, params)).rowcount

        if await self._run(job, idempotent=True) == 0:
            raise LeaseLost(p.task_id, p.epoch)
