"""The embedded SQLite store: WAL, one group-committing writer thread, one reader thread.

`SQLiteStore` opens the file, migrates it and runs each operation as a job on the writer
(or reader) thread; the jobs live in modules by operation group: `_insert`, `_tasks`,
`_reads`, `_tree`, `_dag`, `_signals`, `_budgets`, `_schedules`, `_admin`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Literal

from ..._states import State
from ...errors import (
    SchemaError,
    StoreError,
)
from .._common import wake as _wake
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
    CancelOutcome,
    ChildrenPage,
    ChildrenSummary,
    ChildrenSummaryQuery,
    ChildRow,
    ClaimedRow,
    CountRow,
    Event,
    EventsRead,
    ExpiredLease,
    FinishOutcome,
    HookDone,
    HookRow,
    HooksClaim,
    InsertOutcome,
    LeasesExpired,
    LeasesRenew,
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
from . import _dag, _tree
from ._admin import SQLiteAdminMixin
from ._budgets import SQLiteBudgetsMixin
from ._clock import now_or_wall, wall_ms
from ._insert import tasks_insert
from ._reads import events_read, results_get, task_get, tasks_count, tasks_list
from ._schedules import SQLiteSchedulesMixin
from ._schema import SCHEMA_VERSION, migrate, not_a_database, read_version
from ._signals import SQLiteSignalsMixin
from ._tasks import (
    leases_expired,
    leases_renew,
    task_cancel,
    task_progress,
    task_retry,
    tasks_claim,
    tasks_expire,
    tasks_finish,
    tasks_promote,
    workflow_cancel,
)
from ._threads import ConnectionThread, Tx, is_busy, translate

Synchronous = Literal["FULL", "NORMAL"]

# Inserts of up to this many tasks may run on the caller's thread (`run_inline`): a short
# commit there is cheaper than two thread hops, a long one would stall the event loop.
_INLINE_MAX = 16


def _check_path(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise StoreError(f"cannot open {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise StoreError(f"cannot open {path}: it is a directory, not a database file")


def _read_text(data: bytes) -> str:
    """TEXT as str. Invalid UTF-8 that another tool stored keeps its bytes (as surrogates)
    instead of making every read of its row fail; the codecs report it as undecodable."""
    return data.decode("utf-8", "surrogateescape")


class SQLiteStore(SQLiteSignalsMixin, SQLiteBudgetsMixin, SQLiteSchedulesMixin, SQLiteAdminMixin):
    """Tasks in one SQLite file (or in memory), shared safely by processes on one machine."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 10_000,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.path = path
        self.memory = path == ":memory:"
        self.url = "sqlite://:memory:" if self.memory else f"sqlite:///{path}"
        self.synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self._uri = f"file:flowmill-{os.urandom(6).hex()}?mode=memory" if self.memory else None
        self._bus = _wake.WakeBus(None if self.memory else _wake.wake_dir_for(path))
        self._writer: ConnectionThread | None = None
        self._reader: ConnectionThread | None = None
        self._ended = _dag.EndedTracker()
        self.capabilities = Capabilities(durable=not self.memory, local_file=not self.memory)

    # -- lifecycle -------------------------------------------------------------------

    async def schema_version(self) -> int | None:
        """The file's schema version, read through a read-only connection (nothing created).

        An in-memory store has a schema only while it is open."""
        if self.memory:
            return SCHEMA_VERSION if self._writer is not None else None
        return await asyncio.to_thread(read_version, self.path)

    async def migrate(self) -> MigrateResult:
        """Create or upgrade the file's schema, on a connection of its own."""
        if self.memory:
            # The database lives in the open store's connection: open() migrated it.
            return MigrateResult(SCHEMA_VERSION if self._writer else None, SCHEMA_VERSION)
        _check_path(self.path)
        return await asyncio.to_thread(self._migrate_once)

    def _migrate_once(self) -> MigrateResult:
        conn = self._connect()
        try:
            return migrate(conn)
        except sqlite3.Error as exc:
            raise translate(exc) from exc
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.memory:
                assert self._uri is not None
                conn = sqlite3.connect(
                    self._uri, uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=self.busy_timeout_ms / 1000,
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        conn.text_factory = _read_text
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            if not self.memory:
                _ensure_wal(conn, self.path, self.busy_timeout_ms)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA cache_size = -32000")
        except BaseException as exc:
            conn.close()
            if not_a_database(exc):
                raise SchemaError(f"{self.path} is not a usable SQLite database: {exc}") from exc
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open {self.path}: {exc}") from exc
            raise
        return conn

    async def open(self) -> None:
        if self._writer is not None:
            return
        if not self.memory:
            _check_path(self.path)
        # Thread start-up (connect + migrate) blocks briefly; keep it off the event loop.
        writer = await asyncio.to_thread(
            ConnectionThread,
            "flowmill-sqlite-writer",
            self._connect,
            writer=True,
            after_commit=self._bus.notify,
            init=self._init_writer,
        )
        # An in-memory database lives in one connection: reads go through the writer.
        try:
            reader = (
                writer
                if self.memory
                else await asyncio.to_thread(
                    ConnectionThread,
                    "flowmill-sqlite-reader",
                    self._connect,
                    writer=False,
                    after_commit=self._bus.notify,
                )
            )
        except BaseException:
            writer.stop()
            raise
        self._writer, self._reader = writer, reader

    def _init_writer(self, conn: sqlite3.Connection) -> MigrateResult:
        done = migrate(conn)
        self._ended.install(conn)
        return done

    async def close(self) -> None:
        if self._reader is not None and self._reader is not self._writer:
            self._reader.stop()
        if self._writer is not None:
            self._writer.stop()
        self._reader = self._writer = None
        self._bus.close()

    async def _write(self, job: Any, *, idle_loop: bool = False) -> Any:
        """Run a write job on the writer. With `idle_loop` (a worker's claim or finish), it
        commits on the caller's loop when both that loop and the writer thread are idle:
        no thread hops on the round trip of a lone task, and no stalled handlers."""
        if self._writer is None:
            raise StoreError("the store is not open")
        # Every write resolves the dependents of the tasks it ended, in its own savepoint.
        wrapped = self._ended.wrap(job)
        if idle_loop:
            return await self._writer.run_inline(wrapped, idle_loop=True)
        return await self._writer.run(wrapped)

    async def _read(self, job: Any) -> Any:
        if self._reader is None:
            raise StoreError("the store is not open")
        return await self._reader.run(job)

    async def now_ms(self) -> int:
        return wall_ms()

    # -- wake-ups --------------------------------------------------------------------

    async def wait_for_work(self, timeout_s: float) -> None:
        self._bus.listen(asyncio.get_running_loop())
        await self._bus.work.wait(timeout_s)

    async def wait_for_finish(self, timeout_s: float) -> None:
        self._bus.listen(asyncio.get_running_loop())
        await self._bus.finish.wait(timeout_s)

    # -- submission ------------------------------------------------------------------

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]:
        if self._writer is None:
            raise StoreError("the store is not open")
        job = self._ended.wrap(lambda c, tx: tasks_insert(c, tx, p))
        # A small insert commits on this loop's thread when the writer is idle (no hop).
        if len(p.tasks) <= _INLINE_MAX:
            result: list[InsertOutcome] = await self._writer.run_inline(job)
        else:
            result = await self._writer.run(job)
        return result

    async def tasks_claim(self, p: TasksClaim) -> list[ClaimedRow]:
        if p.limit <= 0 or not p.kinds or not p.queues:
            return []
        result: list[ClaimedRow] = await self._write(
            lambda c, tx: tasks_claim(c, tx, p), idle_loop=True
        )
        return result

    async def leases_renew(self, p: LeasesRenew) -> list[RenewOutcome]:
        if not p.leases:
            return []
        result: list[RenewOutcome] = await self._write(lambda c, tx: leases_renew(c, p))
        return result

    async def tasks_finish(self, p: TasksFinish) -> list[FinishOutcome]:
        result: list[FinishOutcome] = await self._write(
            lambda c, tx: tasks_finish(c, tx, p), idle_loop=True
        )
        return result

    async def tasks_promote(self, p: TasksPromote) -> int:
        result: int = await self._write(lambda c, tx: tasks_promote(c, tx, p))
        return result

    async def tasks_expire(self, p: TasksExpire) -> int:
        result: int = await self._write(lambda c, tx: tasks_expire(c, tx, p))
        return result

    async def leases_expired(self, p: LeasesExpired) -> list[ExpiredLease]:
        result: list[ExpiredLease] = await self._read(lambda c, tx: leases_expired(c, p))
        return result

    async def task_cancel(self, p: TaskCancel) -> CancelOutcome:
        result: CancelOutcome = await self._write(lambda c, tx: task_cancel(c, tx, p))
        return result

    async def task_retry(self, p: TaskRetry) -> State:
        result: State = await self._write(lambda c, tx: task_retry(c, tx, p))
        return result

    async def task_progress(self, p: TaskProgress) -> None:
        await self._write(lambda c, tx: task_progress(c, p))

    # -- parents and children --------------------------------------------------------

    async def task_wait_children(self, p: TaskWaitChildren) -> State:
        def job(c: sqlite3.Connection, tx: Tx) -> State:
            return _tree.task_wait_children(c, tx, p, now_or_wall(p.now_ms))

        result: State = await self._write(job)
        return result

    async def children_page(self, p: ChildrenPage) -> list[ChildRow]:
        result: list[ChildRow] = await self._read(lambda c, tx: _tree.children_page(c, p))
        return result

    async def children_summary(self, p: ChildrenSummaryQuery) -> ChildrenSummary:
        result: ChildrenSummary = await self._read(lambda c, tx: _tree.children_summary(c, p))
        return result

    async def hooks_claim(self, p: HooksClaim) -> list[HookRow]:
        def job(c: sqlite3.Connection, tx: Tx) -> list[HookRow]:
            return _tree.hooks_claim(c, p, now_or_wall(p.now_ms))

        result: list[HookRow] = await self._write(job)
        return result

    async def hook_done(self, p: HookDone) -> None:
        await self._write(lambda c, tx: _tree.hook_done(c, p, now_or_wall(p.now_ms)))

    # -- inspection ------------------------------------------------------------------

    # -- dependencies and workflows -------------------------------------------------

    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        result: list[UpstreamRow] = await self._read(lambda c, tx: _dag.upstream_get(c, task_id))
        return result

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None:
        result: WorkflowRecord | None = await self._read(lambda c, tx: _dag.workflow_get(c, p))
        return result

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        result: list[WorkflowRecord] = await self._read(lambda c, tx: _dag.workflows_list(c, p))
        return result

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        result: int = await self._write(lambda c, tx: workflow_cancel(c, tx, p))
        return result

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        now = p.now_ms if p.now_ms is not None else wall_ms()
        result: int = await self._write(lambda c, tx: _dag.deps_reconcile(c, tx, p.limit, now))
        return result

    async def task_get(self, task_id: str) -> TaskRecord | None:
        result: TaskRecord | None = await self._read(lambda c, tx: task_get(c, task_id))
        return result

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]:
        result: list[TaskRecord] = await self._read(lambda c, tx: tasks_list(c, p))
        return result

    async def tasks_count(self) -> list[CountRow]:
        result: list[CountRow] = await self._read(lambda c, tx: tasks_count(c))
        return result

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        """The results of those of `task_ids` that have ended.

        It also arms this task's finish wake-ups (see `Pulse.arm`): a result waiter's next
        `wait_for_finish` then blocks at once, without a second read, and still wakes for a
        finish committed after this read (the socket is bound before the read).
        """
        if self._reader is None:
            raise StoreError("the store is not open")
        self._bus.listen(asyncio.get_running_loop())
        self._bus.finish.arm()
        ids = list(task_ids)
        job = lambda c, tx: results_get(c, ids)  # noqa: E731
        # A few primary-key lookups: read on this loop's thread when the reader is idle.
        if len(ids) <= _INLINE_MAX:
            result: list[ResultRow] = await self._reader.run_inline(job)
        else:
            result = await self._reader.run(job)
        return result

    async def events_read(self, p: EventsRead) -> list[Event]:
        result: list[Event] = await self._read(lambda c, tx: events_read(c, p))
        return result


def _ensure_wal(conn: sqlite3.Connection, path: str, busy_timeout_ms: int) -> None:
    """Put the file in WAL mode, unless it is already.

    Only a file not yet in WAL is switched: the switch needs a lock that SQLite refuses at
    once, without its busy wait, while another connection holds the file (a busy writer's
    checkpoint, or a second process opening the same fresh file at the same moment). So a
    refusal is retried here, up to the busy timeout, re-reading the mode each time: the
    other opener has usually just switched it.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    pause = 0.002
    while True:
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode == "wal":
            return
        try:
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            continue
        if mode != "wal":
            raise StoreError(f"cannot switch {path} to WAL mode (got {mode})")
        return
