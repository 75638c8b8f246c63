"""The PostgreSQL store: psycopg 3 (async) with a pool, SKIP LOCKED claims, LISTEN/NOTIFY.

Every hot operation is one statement in autocommit mode (one transaction, one round
trip), including the join of a batch of finished children with their parents and a batch
of concurrent spawns. Operator calls, keyed inserts and the rarer tree work (fail-fast,
cascades, wait_children, TTL expiry of children; `_tree`) lock what they read inside an
explicit transaction. Times are judged on the database clock unless `now_ms` is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ...errors import (
    FlowmillError,
    StoreError,
    StoreUnavailable,
)
from .._common.wake import Pulse
from ..contract.capabilities import Capabilities, MigrateResult
from ..contract.tasks import (
    Finish,
    FinishOutcome,
    InsertOutcome,
    NewTask,
    TasksInsert,
)
from . import _schema as _pg_schema
from ._admin import AdminQueries, PostgresAdminMixin
from ._batch import Combiner
from ._budgets import BudgetQueries, PostgresBudgetsMixin
from ._cursor import StoreCursor
from ._dag import Dag
from ._errors import (
    connect_error,
    conninfo_for,
    is_connection_error,
    is_retryable,
    one_line,
    split_schema,
    translate,
)
from ._links import PostgresLinksMixin
from ._listen import Listener, channel_names, frames_channel_name
from ._reads import PostgresReadsMixin
from ._schedules import PostgresSchedulesMixin, ScheduleQueries
from ._signals import PostgresSignalsMixin
from ._signals_sql import SignalQueries
from ._sql import Queries
from ._tasks import COMBINE_MAX_ITEMS, PostgresTasksMixin
from ._tree import Tree

T = TypeVar("T")
Conn = AsyncConnection[Any]

log = logging.getLogger("flowmill.store.postgres")

# Spawn calls merged into one statement (each call up to _SPAWN_COMBINE_MAX_TASKS tasks).
_SPAWN_COMBINE_MAX_CALLS = 200

_CONNECTION_TRIES = 3

_ROLLBACK_TRIES = 5

_FIRST_LISTEN_S = 5.0

_RETRY_WAIT_S = 1.0

DEFAULT_SCHEMA = "flowmill"


class PostgresStore(
    PostgresTasksMixin,
    PostgresLinksMixin,
    PostgresReadsMixin,
    PostgresSignalsMixin,
    PostgresBudgetsMixin,
    PostgresSchedulesMixin,
    PostgresAdminMixin,
):
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
        self._schq = ScheduleQueries(schema)
        self._aq = AdminQueries(schema)
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
            max_items=COMBINE_MAX_ITEMS,
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
            max_items=COMBINE_MAX_ITEMS,
            max_inflight=max_inflight_batches,
            # A merged insert that fails for a reason of its own (a duplicate id) is run
            # again call by call, so that only the guilty call sees the error.
            split_on=lambda exc: not isinstance(exc, StoreUnavailable),
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self._display!r}, schema={self.schema!r})"

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
            kwargs={"autocommit": True, "cursor_factory": StoreCursor},
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

    async def _fetch(self, query: str, params: dict[str, Any] | None = None) -> list[Any]:
        async def job(conn: Conn) -> list[Any]:
            return await (await conn.execute(query, params)).fetchall()

        return await self._run(job, idempotent=True)
