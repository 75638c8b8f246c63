"""The PostgreSQL store: psycopg 3 (async) with a pool, SKIP LOCKED claims, LISTEN/NOTIFY.

Every hot operation is one statement in autocommit mode (one transaction, one round
trip), including the join of a batch of finished children with their parents and a batch
of concurrent spawns. Operator calls, keyed inserts and the rarer tree work (fail-fast,
cascades, wait_children, TTL expiry of children; `_pg_tree`) lock what they read inside an
explicit transaction. Times are judged on the database clock unless `now_ms` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..._states import TERMINAL, TRANSITIONS, State, can_transition, sources_of
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
from .._common.serde import decode_error, encode_error
from .._common.wake import Pulse
from ..contract.capabilities import Capabilities, MigrateResult
from ..contract.dag import (
    DepsReconcile,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)
from ..contract.tasks import (
    ON_DUPLICATE_CHOICES,
    CancelOutcome,
    ChildrenPage,
    ChildrenSummary,
    ChildrenSummaryQuery,
    ChildRow,
    ClaimedRow,
    CountRow,
    ErrorInfo,
    Event,
    EventsRead,
    ExpiredLease,
    Finish,
    FinishOutcome,
    FinishStatus,
    HookDone,
    HookRow,
    HooksClaim,
    InsertOutcome,
    InsertStatus,
    LeasesExpired,
    LeasesRenew,
    NewTask,
    RenewOutcome,
    ResultRow,
    TaskCancel,
    TaskProgress,
    TaskRecord,
    TaskRetry,
    TasksClaim,
    TasksExpire,
    TasksFinish,
    TasksInsert,
    TasksList,
    TasksPromote,
    TaskWaitChildren,
)
from . import _schema as _pg_schema
from ._batch import Combiner
from ._budgets import BudgetQueries, PostgresBudgetsMixin
from ._dag import Dag, has_links
from ._errors import (
    connect_error,
    conninfo_for,
    is_connection_error,
    is_retryable,
    one_line,
    split_schema,
    translate,
)
from ._insert import insert_keyed, insert_params
from ._listen import Listener, channel_names, frames_channel_name
from ._rows import claimed_row, record
from ._signals import PostgresSignalsMixin, SignalQueries, progress_detail
from ._sql import Queries
from ._text import dec, enc, enc_all
from ._tree import Tree

_ANALYZE_AFTER_LINKED = 1000  # tasks in one linked insert

T = TypeVar("T")
Conn = AsyncConnection[Any]

log = logging.getLogger("flowmill.store.postgres")

_FINISH_TARGETS = frozenset(t for (s, t) in TRANSITIONS if s is State.RUNNING)
_TTL_ERROR = ErrorInfo("Expired", "the task was not started before its ttl ran out", "ttl")
_CANCELLED_ON_RETRY = ErrorInfo(
    "Cancelled",
    "cancel was requested while the attempt ran; it ended asking for a retry",
    "cancelled",
)
_CANCEL_SOURCES = [s.value for s in sources_of(State.CANCELLED)]
_PARENT_CANCELLED = "parent cancelled"


def _finish_mark(f: Finish) -> str:
    """What `last_finish` records: the target, marked when the reaper made the finish, so
    that a worker's late finish with the same epoch is not mistaken for a repeat of it."""
    return f"{f.target.value}:reaped" if f.expired_lease else f.target.value


# Calls larger than this run on their own rather than being merged with others.
_COMBINE_MAX_ITEMS = 5000
# Spawn calls merged into one statement (each call up to this many tasks).
_SPAWN_COMBINE_MAX_CALLS = 200
_SPAWN_COMBINE_MAX_TASKS = 100
_CONNECTION_TRIES = 3
_ROLLBACK_TRIES = 5
_FIRST_LISTEN_S = 5.0
_RETRY_WAIT_S = 1.0
DEFAULT_SCHEMA = "flowmill"


class PostgresStore(PostgresSignalsMixin, PostgresBudgetsMixin):
    """Tasks in one PostgreSQL schema, shared by any number of worker processes."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout_s: float = 10.0,
        max_inflight_batches: int = 2,
    ) -> None:
        """`schema`: where the tables live; else the URL's `?schema=`, else "flowmill"."""
        libpq_url, url_schema = split_schema(url)
        schema = schema if schema is not None else url_schema or DEFAULT_SCHEMA
        if not schema or len(schema.encode()) > 63:
            raise StoreError(f"schema name must be 1 to 63 bytes long, got {schema!r}")
        if min_size < 0 or max_size < max(1, min_size):
            raise StoreError(f"invalid pool size: min_size={min_size}, max_size={max_size}")
        self.url = url
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.timeout_s = timeout_s
        self._conninfo, self._display = conninfo_for(libpq_url)
        self.capabilities = Capabilities(durable=True, local_file=False)
        self._q = Queries(schema)
        self.work_channel, self.finish_channel = channel_names(schema)
        self.frames_channel = frames_channel_name(schema)
        self._sq = SignalQueries(schema)
        self._bq = BudgetQueries(schema, self._q)
        self._tree = Tree(schema, self._q, self.work_channel, self.finish_channel)
        self._dag = Dag(schema, self._q, self._tree, self.work_channel, self.finish_channel)
        self._work = Pulse()
        self._finish = Pulse()
        self._frames = Pulse()
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: Listener | None = None
        self._checking: asyncio.Task[None] | None = None
        self._finisher: Combiner[Finish, FinishOutcome] = Combiner(
            lambda items: self._finish_items(items, None),
            max_items=_COMBINE_MAX_ITEMS,
            max_inflight=max_inflight_batches,
        )
        self._spawner: Combiner[TasksInsert, list[InsertOutcome] | FlowmillError] = Combiner(
            lambda calls: self._spawn_calls(calls, None),
            max_items=_SPAWN_COMBINE_MAX_CALLS,
            max_inflight=max_inflight_batches,
            split_on=lambda exc: not isinstance(exc, StoreUnavailable),
        )
        self._inserter: Combiner[NewTask, InsertOutcome] = Combiner(
            lambda tasks: self._insert_plain(tasks, None),
            max_items=_COMBINE_MAX_ITEMS,
            max_inflight=max_inflight_batches,
            # A merged insert that fails for a reason of its own (a duplicate id) is run
            # again call by call, so that only the guilty call sees the error.
            split_on=lambda exc: not isinstance(exc, StoreUnavailable),
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self._display!r}, schema={self.schema!r})"

    # -- lifecycle -------------------------------------------------------------------

    async def schema_version(self) -> int | None:
        """The schema's version, read on a connection of its own; None when it has no
        flowmill tables (or does not exist). Creates and changes nothing."""
        return await self._on_own_connection(
            lambda conn: _pg_schema.schema_version(conn, self.schema)
        )

    async def migrate(self) -> MigrateResult:
        """Create or upgrade the schema (refusing a newer one); say what was done."""
        return await self._on_own_connection(lambda conn: _pg_schema.migrate(conn, self.schema))

    async def _on_own_connection(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `work` on a fresh autocommit connection (usable before `open()`)."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except (psycopg.Error, OSError) as exc:
            raise connect_error(exc, self._display) from exc
        try:
            async with conn:
                return await work(conn)
        except FlowmillError:
            raise
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StoreError(
                f"permission denied creating or reading the flowmill schema {self.schema!r} "
                f"at {self._display}: {one_line(str(exc))}"
            ) from exc
        except psycopg.Error as exc:
            raise translate(exc, self._display) from exc

    async def open(self) -> None:
        if self._pool is not None:
            return
        await self.migrate()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._conninfo,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs={"autocommit": True},
            timeout=self.timeout_s,
            name=f"flowmill:{self.schema}",
            open=False,
        )
        await pool.open(wait=False)
        self._pool = pool
        self._listener = Listener(
            self._conninfo,
            self._display,
            {
                self.work_channel: self._work,
                self.finish_channel: self._finish,
                self.frames_channel: self._frames,
            },
        )

    async def close(self) -> None:
        await self._finisher.close()
        await self._inserter.close()
        await self._spawner.close()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        checking, self._checking = self._checking, None
        if checking is not None:
            checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checking
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _run(self, job: Callable[[Conn], Awaitable[T]], *, idempotent: bool) -> T:
        """Run `job` on a pooled connection, translating driver errors at this boundary.

        A job the server rolled back (deadlock, serialization failure) runs again. After a
        broken connection (server restart, `pg_terminate_backend`) the pool is checked and
        an idempotent job runs again on a fresh connection; others fail with
        `StoreUnavailable`, since their first run may have committed before the reply was lost.
        """
        tries = 0
        wait_s = self.timeout_s
        while True:
            pool = self._pool
            if pool is None:
                raise StoreError("the store is not open")
            tries += 1
            try:
                async with pool.connection(timeout=wait_s) as conn:
                    return await job(conn)
            except FlowmillError:
                raise
            except (psycopg.Error, PoolTimeout) as exc:
                if is_connection_error(exc):
                    checking = self._check_pool(exc)
                    if idempotent and tries < _CONNECTION_TRIES:
                        # A restarted server answers at once; a server that is down should
                        # not hold a lease renewal for long: fail fast, callers back off.
                        wait_s = min(self.timeout_s, _RETRY_WAIT_S)
                        with contextlib.suppress(Exception):
                            async with asyncio.timeout(wait_s):  # see _wake.Pulse.wait
                                await asyncio.shield(checking)
                        continue
                elif is_retryable(exc) and tries < _ROLLBACK_TRIES:
                    continue
                raise translate(exc, self._display) from exc

    def _check_pool(self, exc: BaseException) -> asyncio.Future[None]:
        """Test every idle pooled connection (once at a time) after one was found broken."""
        if self._checking is None or self._checking.done():
            log.warning(
                "flowmill: lost a connection to PostgreSQL at %s (%s); reconnecting",
                self._display,
                one_line(str(exc)),
            )
            self._checking = asyncio.get_running_loop().create_task(self._check_pool_now())
        return self._checking

    async def _check_pool_now(self) -> None:
        pool = self._pool
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.check()

    async def now_ms(self) -> int:
        async def job(conn: Conn) -> int:
            row = await (await conn.execute(self._q.now)).fetchone()
            assert row is not None
            return int(row[0])

        return await self._run(job, idempotent=True)

    # -- wake-ups --------------------------------------------------------------------

    async def _wait(self, pulse: Pulse, timeout_s: float) -> None:
        """Wait for a pulse, once the LISTEN connection is up.

        The first wait of a store starts LISTEN and gives it up to `_FIRST_LISTEN_S` (even
        past `timeout_s`) so that a caller that polls, waits and then expects a wake-up is
        not left with a notification sent before anyone listened. While the connection is
        lost later, waits simply time out: callers poll the store before they wait and
        again when a wait times out, so a missed notification only delays work.
        """
        listener = self._listener
        if listener is None:
            raise StoreError("the store is not open")
        listener.start()
        if not listener.connected.is_set():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            grace = timeout_s if listener.was_connected else max(timeout_s, _FIRST_LISTEN_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):  # not wait_for: see _wake.Pulse.wait
                    await listener.connected.wait()
            timeout_s = max(0.0, deadline - loop.time())
        await pulse.wait(timeout_s)

    async def wait_for_work(self, timeout_s: float) -> None:
        await self._wait(self._work, timeout_s)

    async def wait_for_finish(self, timeout_s: float) -> None:
        await self._wait(self._finish, timeout_s)

    # -- submission ------------------------------------------------------------------

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
        if p.now_ms is None and len(tasks) < _COMBINE_MAX_ITEMS:
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
        if p.now_ms is None and len(items) < _COMBINE_MAX_ITEMS:
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
                ExpiredLease(i, dec(k), e, a, m, r, o, bool(cr))
                for i, k, e, a, m, r, o, cr in await cur.fetchall()
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

    # -- parents and children --------------------------------------------------------

    async def task_wait_children(self, p: TaskWaitChildren) -> State:
        job = functools.partial(self._tree.task_wait_children, p=p, cancel=self._q.task_cancel)
        return await self._run(job, idempotent=False)

    async def children_page(self, p: ChildrenPage) -> list[ChildRow]:
        if p.limit <= 0:
            return []
        return await self._run(functools.partial(self._tree.children_page, p=p), idempotent=True)

    async def children_summary(self, p: ChildrenSummaryQuery) -> ChildrenSummary:
        job = functools.partial(self._tree.children_summary, p=p)
        return await self._run(job, idempotent=True)

    async def hooks_claim(self, p: HooksClaim) -> list[HookRow]:
        if not p.kinds or p.limit <= 0:
            return []
        # Run again after a lost connection: hooks whose claim was lost are claimed again
        # once their short lease has expired.
        return await self._run(functools.partial(self._tree.hooks_claim, p=p), idempotent=True)

    async def hook_done(self, p: HookDone) -> None:
        await self._run(functools.partial(self._tree.hook_done, p=p), idempotent=False)

    # -- dependencies and workflows ---------------------------------------------------

    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        job = functools.partial(self._dag.upstream_get, task_id=task_id)
        return await self._run(job, idempotent=True)

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None:
        return await self._run(functools.partial(self._dag.workflow_get, p=p), idempotent=True)

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        if p.limit <= 0:
            return []
        return await self._run(functools.partial(self._dag.workflows_list, p=p), idempotent=True)

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        async def job(conn: Conn) -> int:
            count = 0
            async with conn.transaction():
                now = await self._tree.now(conn, p.now_ms)
                for task_id in await self._dag.active_nodes(conn, p.workflow_id):
                    got = await self._cancel_locked(conn, TaskCancel(task_id, p.reason, now))
                    # A node cancelled above may have skipped this one already (or a
                    # parent's cascade cancelled it): only nodes still active count.
                    if got is None or got[0].terminal:
                        continue
                    out = got[1]
                    count += out.requested or out.state is State.CANCELLED
            return count

        # Running it twice cancels nothing more: the nodes are cancelled or asked to stop.
        return await self._run(job, idempotent=True)

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        if p.limit <= 0:
            return 0

        async def job(conn: Conn) -> int:
            return await self._dag.deps_reconcile(conn, p.limit, p.now_ms)

        return await self._run(job, idempotent=True)

    # -- inspection ------------------------------------------------------------------

    async def _fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Any]:
        async def job(conn: Conn) -> list[Any]:
            return await (await conn.execute(query, params)).fetchall()

        return await self._run(job, idempotent=True)

    async def task_get(self, task_id: str) -> TaskRecord | None:
        rows = await self._fetch(self._q.task_get, {"id": task_id})
        return record(rows[0]) if rows else None

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]:
        where = ["true"]
        params: dict[str, Any] = {"limit": p.limit}
        if p.states:
            where.append("t.state = ANY(%(states)s::text[])")
            params["states"] = [State(s).value for s in p.states]
        if p.queue is not None:
            where.append("t.queue = %(queue)s")
            params["queue"] = enc(p.queue)
        if p.kind is not None:
            where.append("t.kind = %(kind)s")
            params["kind"] = enc(p.kind)
        if p.after_id is not None:
            where.append(self._q.tasks_list_after)
            params["after_id"] = p.after_id
        query = self._q.tasks_list_head + " AND ".join(where) + " ORDER BY t.seq LIMIT %(limit)s"
        return [record(r) for r in await self._fetch(query, params)]

    async def tasks_count(self) -> list[CountRow]:
        rows = await self._fetch(self._q.tasks_count)
        return [CountRow(dec(q), State(s), int(n)) for q, s, n in rows]

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        ids = list(task_ids)
        if not ids:
            return []
        rows = await self._fetch(self._q.results_get, {"ids": ids})
        return [ResultRow(t, State(s), r, decode_error(e)) for t, s, r, e in rows]

    async def events_read(self, p: EventsRead) -> list[Event]:
        rows = await self._fetch(self._q.events_read, {"after": p.after, "limit": p.limit})
        return [Event(i, t, dec(k), State(s), a, d) for i, t, k, s, a, d in rows]
