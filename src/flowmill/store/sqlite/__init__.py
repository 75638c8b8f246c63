"""The embedded SQLite store: WAL, one group-committing writer thread, one reader thread."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Literal

from ..._states import TERMINAL, TRANSITIONS, Phase, State, can_transition, sources_of
from ...errors import (
    ConfigurationError,
    DuplicateTask,
    IllegalTransition,
    InvalidParent,
    LeaseLost,
    SchemaError,
    StoreError,
    TaskNotFound,
)
from .._common import wake as _wake
from .._common.serde import decode_error, encode_error, encode_tags, task_record
from ..contract.capabilities import Capabilities, MigrateResult
from ..contract.dag import (
    DepsReconcile,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
    check,
    has_links,
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
from . import _dag, _tree
from ._budgets import NOT_HELD_SQL, SQLiteBudgetsMixin, claim_limited
from ._schema import SCHEMA_VERSION, migrate, not_a_database, read_version
from ._signals import SQLiteSignalsMixin
from ._sql import IN_CHUNK, marks
from ._threads import ConnectionThread, Tx, translate

Synchronous = Literal["FULL", "NORMAL"]

_TASK_COLUMNS = (
    "id, kind, queue, priority, state, phase, attempts, max_attempts, payload, error, tags, "
    "dedup_key, parent_id, progress_pct, progress_message, lease_epoch, lease_owner, "
    "lease_expires_at, cancel_requested, timeout_ms, created_at, updated_at, run_at, "
    "expires_at, started_at, finished_at"
)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _now(now_ms: int | None) -> int:
    return now_ms if now_ms is not None else _wall_ms()


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


class SQLiteStore(SQLiteSignalsMixin, SQLiteBudgetsMixin):
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
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"cannot switch {self.path} to WAL mode (got {mode})")
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

    async def _write(self, job: Any) -> Any:
        if self._writer is None:
            raise StoreError("the store is not open")
        # Every write resolves the dependents of the tasks it ended, in its own savepoint.
        return await self._writer.run(self._ended.wrap(job))

    async def _read(self, job: Any) -> Any:
        if self._reader is None:
            raise StoreError("the store is not open")
        return await self._reader.run(job)

    async def now_ms(self) -> int:
        return _wall_ms()

    # -- wake-ups --------------------------------------------------------------------

    async def wait_for_work(self, timeout_s: float) -> None:
        self._bus.listen(asyncio.get_running_loop())
        await self._bus.work.wait(timeout_s)

    async def wait_for_finish(self, timeout_s: float) -> None:
        self._bus.listen(asyncio.get_running_loop())
        await self._bus.finish.wait(timeout_s)

    # -- submission ------------------------------------------------------------------

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]:
        result: list[InsertOutcome] = await self._write(lambda c, tx: _insert(c, tx, p))
        return result

    async def tasks_claim(self, p: TasksClaim) -> list[ClaimedRow]:
        if p.limit <= 0 or not p.kinds or not p.queues:
            return []
        result: list[ClaimedRow] = await self._write(lambda c, tx: _claim(c, tx, p))
        return result

    async def leases_renew(self, p: LeasesRenew) -> list[RenewOutcome]:
        if not p.leases:
            return []
        result: list[RenewOutcome] = await self._write(lambda c, tx: _renew(c, p))
        return result

    async def tasks_finish(self, p: TasksFinish) -> list[FinishOutcome]:
        result: list[FinishOutcome] = await self._write(lambda c, tx: _finish(c, tx, p))
        return result

    async def tasks_promote(self, p: TasksPromote) -> int:
        result: int = await self._write(lambda c, tx: _promote(c, tx, p))
        return result

    async def tasks_expire(self, p: TasksExpire) -> int:
        result: int = await self._write(lambda c, tx: _expire(c, tx, p))
        return result

    async def leases_expired(self, p: LeasesExpired) -> list[ExpiredLease]:
        result: list[ExpiredLease] = await self._read(lambda c, tx: _expired_leases(c, p))
        return result

    async def task_cancel(self, p: TaskCancel) -> CancelOutcome:
        result: CancelOutcome = await self._write(lambda c, tx: _cancel(c, tx, p))
        return result

    async def task_retry(self, p: TaskRetry) -> State:
        result: State = await self._write(lambda c, tx: _retry(c, tx, p))
        return result

    async def task_progress(self, p: TaskProgress) -> None:
        await self._write(lambda c, tx: _progress(c, p))

    # -- parents and children --------------------------------------------------------

    async def task_wait_children(self, p: TaskWaitChildren) -> State:
        def job(c: sqlite3.Connection, tx: Tx) -> State:
            return _tree.wait_children(c, tx, p, _now(p.now_ms))

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
            return _tree.hooks_claim(c, p, _now(p.now_ms))

        result: list[HookRow] = await self._write(job)
        return result

    async def hook_done(self, p: HookDone) -> None:
        await self._write(lambda c, tx: _tree.hook_done(c, p, _now(p.now_ms)))

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
        def job(c: sqlite3.Connection, tx: Tx) -> int:
            count = 0
            for task_id in _dag.active_nodes(c, p.workflow_id):
                # A node cancelled above may have skipped this one already.
                before = c.execute("SELECT state FROM fm_tasks WHERE id = ?", (task_id,))
                if State(before.fetchone()[0]).terminal:
                    continue
                out = _cancel(c, tx, TaskCancel(task_id, p.reason, p.now_ms))
                count += out.requested or out.state is State.CANCELLED
            return count

        result: int = await self._write(job)
        return result

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        now = p.now_ms if p.now_ms is not None else _wall_ms()
        result: int = await self._write(lambda c, tx: _dag.reconcile(c, tx, p.limit, now))
        return result

    async def task_get(self, task_id: str) -> TaskRecord | None:
        result: TaskRecord | None = await self._read(lambda c, tx: _get(c, task_id))
        return result

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]:
        result: list[TaskRecord] = await self._read(lambda c, tx: _list(c, p))
        return result

    async def tasks_count(self) -> list[CountRow]:
        def job(c: sqlite3.Connection, tx: Tx) -> list[CountRow]:
            rows = c.execute(
                "SELECT queue, state, count(*) FROM fm_tasks GROUP BY queue, state "
                "ORDER BY queue, state"
            )
            return [CountRow(q, State(s), n) for q, s, n in rows]

        result: list[CountRow] = await self._read(job)
        return result

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        ids = list(task_ids)

        def job(c: sqlite3.Connection, tx: Tx) -> list[ResultRow]:
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

        result: list[ResultRow] = await self._read(job)
        return result

    async def events_read(self, p: EventsRead) -> list[Event]:
        def job(c: sqlite3.Connection, tx: Tx) -> list[Event]:
            rows = c.execute(
                "SELECT id, task_id, kind, state, at, detail FROM fm_events WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (p.after, p.limit),
            )
            return [Event(i, t, k, State(s), a, d) for i, t, k, s, a, d in rows]

        result: list[Event] = await self._read(job)
        return result


# -- jobs: each runs on the writer (or reader) thread, inside the group transaction -----

_INSERT_SQL = (
    "INSERT INTO fm_tasks (id, kind, queue, priority, state, payload, dedup_key, parent_id, "
    "tags, max_attempts, retry_policy, timeout_ms, created_at, updated_at, run_at, expires_at, "
    "child_key, fail_fast, has_on_cancel, budget_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LINKED_INSERT_SQL = _dag.insert_sql(_INSERT_SQL)
_EVENT_SQL = "INSERT INTO fm_events (task_id, kind, state, at, detail) VALUES (?, ?, ?, ?, ?)"
_ACTIVE_LIST = tuple(s.value for s in State if not s.terminal)
_REPLACEABLE = (State.SCHEDULED.value, State.READY.value, State.BLOCKED.value)


def _key_holder(c: sqlite3.Connection, kind: str, key: str) -> tuple[str, str] | None:
    """(id, state) of the active task holding this dedup key, if any."""
    row: tuple[str, str] | None = c.execute(
        "SELECT id, state FROM fm_tasks WHERE kind = ? AND dedup_key = ? "
        f"AND state IN ({marks(len(_ACTIVE_LIST))})",
        (kind, key, *_ACTIVE_LIST),
    ).fetchone()
    return row


def _child_key_holder(c: sqlite3.Connection, parent_id: str, key: str) -> str | None:
    row = c.execute(
        "SELECT id FROM fm_tasks WHERE parent_id = ? AND child_key = ?", (parent_id, key)
    ).fetchone()
    return None if row is None else str(row[0])


def _task_row(
    t: NewTask, task_id: str, state: State, run_at: int | None, expires_at: int | None, now: int
) -> tuple[Any, ...]:
    return (
        task_id,
        t.kind,
        t.queue,
        t.priority,
        state.value,
        t.payload,
        t.dedup_key,
        t.parent_id,
        encode_tags(t.tags),
        t.max_attempts,
        t.retry_policy,
        t.timeout_ms,
        now,
        now,
        run_at,
        expires_at,
        t.child_key,
        t.fail_fast,
        t.has_on_cancel,
        t.budget_id,
    )


def _check_fence_and_parents(c: sqlite3.Connection, p: TasksInsert) -> None:
    if p.fence is not None:
        row = c.execute(
            "SELECT 1 FROM fm_tasks WHERE id = ? AND lease_epoch = ? AND state = 'running'",
            (p.fence.task_id, p.fence.epoch),
        ).fetchone()
        if row is None:
            raise LeaseLost(p.fence.task_id, p.fence.epoch)
    for parent_id in {t.parent_id for t in p.tasks if t.parent_id is not None}:
        row = c.execute("SELECT state FROM fm_tasks WHERE id = ?", (parent_id,)).fetchone()
        if row is None or State(row[0]).terminal:
            raise InvalidParent(parent_id, row[0] if row else None)


def _insert(c: sqlite3.Connection, tx: Tx, p: TasksInsert) -> list[InsertOutcome]:
    """Insert a batch as if its tasks were inserted one after another, in one transaction."""
    if p.on_duplicate not in ON_DUPLICATE_CHOICES:
        raise ConfigurationError(
            f"on_duplicate must be one of {', '.join(ON_DUPLICATE_CHOICES)}, got {p.on_duplicate!r}"
        )
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    _check_fence_and_parents(c, p)
    linked = p.workflow is not None or has_links(p.tasks)
    if linked:
        for t in p.tasks:
            check(t)
            if t.depends_on and t.dedup_key is not None and p.on_duplicate == "replace":
                raise ConfigurationError("a task with dependencies cannot replace a duplicate")
    outcomes: list[InsertOutcome] = []
    rows: list[tuple[Any, ...]] = []
    inserted: list[NewTask] = []  # the task of each row (used when the batch is linked)
    child_keys: dict[tuple[str, str], str] = {}  # (parent, child key) -> id, this batch
    grown: dict[str, int] = {}  # parent -> children inserted by this batch
    replaced: list[tuple[Any, ...]] = []  # events of tasks already stored, rewritten here
    batch_keys: dict[tuple[str, str], int] = {}  # (kind, key) -> index in rows
    any_ready = False
    for t in p.tasks:
        run_at = now + t.delay_ms if t.delay_ms is not None else t.run_at_ms
        state = State.SCHEDULED if run_at is not None and run_at > now else State.READY
        expires_at = now + t.ttl_ms if t.ttl_ms is not None else None
        if t.child_key is not None and t.parent_id is not None:
            # A spawn key names one child for the parent's whole life, ended or not.
            holder = child_keys.get((t.parent_id, t.child_key)) or _child_key_holder(
                c, t.parent_id, t.child_key
            )
            if holder is not None:
                outcomes.append(InsertOutcome(holder, InsertStatus.SKIPPED))
                continue
            child_keys[(t.parent_id, t.child_key)] = t.id
        if t.dedup_key is not None:
            index = batch_keys.get((t.kind, t.dedup_key))
            if index is not None:  # an earlier task of this batch holds the key
                first_id = rows[index][0]
                if p.on_duplicate == "reject":
                    raise DuplicateTask(t.dedup_key, first_id)
                if p.on_duplicate == "replace":
                    rows[index] = _task_row(t, first_id, state, run_at, expires_at, now)
                    any_ready = any_ready or state is State.READY
                    outcomes.append(InsertOutcome(first_id, InsertStatus.REPLACED))
                else:
                    outcomes.append(InsertOutcome(first_id, InsertStatus.SKIPPED))
                continue
            row = _key_holder(c, t.kind, t.dedup_key)
            if row is not None:
                existing, existing_state = row
                if p.on_duplicate == "reject":
                    raise DuplicateTask(t.dedup_key, existing)
                if p.on_duplicate == "replace" and existing_state in _REPLACEABLE:
                    c.execute(
                        # A blocked holder stays blocked: its dependencies still decide.
                        "UPDATE fm_tasks SET payload = ?, queue = ?, priority = ?, "
                        "state = CASE WHEN state = 'blocked' THEN 'blocked' ELSE ? END, "
                        "tags = ?, max_attempts = ?, retry_policy = ?, timeout_ms = ?, "
                        "run_at = ?, expires_at = ?, budget_id = ?, updated_at = ? WHERE id = ?",
                        (
                            t.payload,
                            t.queue,
                            t.priority,
                            state.value,
                            encode_tags(t.tags),
                            t.max_attempts,
                            t.retry_policy,
                            t.timeout_ms,
                            run_at,
                            expires_at,
                            t.budget_id,
                            now,
                            existing,
                        ),
                    )
                    if existing_state == State.BLOCKED.value:
                        state = State.BLOCKED
                    replaced.append((existing, t.kind, state.value, now, "replaced"))
                    any_ready = any_ready or state is State.READY
                    outcomes.append(InsertOutcome(existing, InsertStatus.REPLACED))
                else:
                    outcomes.append(InsertOutcome(existing, InsertStatus.SKIPPED))
                continue
            batch_keys[(t.kind, t.dedup_key)] = len(rows)
        rows.append(_task_row(t, t.id, state, run_at, expires_at, now))
        inserted.append(t)
        if t.parent_id is not None:
            grown[t.parent_id] = grown.get(t.parent_id, 0) + 1
        any_ready = any_ready or state is State.READY
        outcomes.append(InsertOutcome(t.id, InsertStatus.INSERTED))
    if rows:
        # Every row inserted here gets a seq above the current maximum (we hold the write
        # lock), so their creation events are copied by SQLite itself, not built in Python.
        last_seq = c.execute("SELECT coalesce(max(seq), 0) FROM fm_tasks").fetchone()[0]
        if linked:
            remap = {t.id: o.id for t, o in zip(p.tasks, outcomes, strict=True) if t.id != o.id}
            ups = {remap.get(u, u) for t in inserted for u in t.depends_on}
            rows = [_dag.extend_row(r, t, ups) for r, t in zip(rows, inserted, strict=True)]
            c.executemany(_LINKED_INSERT_SQL, rows)
        else:
            c.executemany(_INSERT_SQL, rows)
        c.execute(
            "INSERT INTO fm_events (task_id, kind, state, at) "
            "SELECT id, kind, state, created_at FROM fm_tasks WHERE seq > ? ORDER BY seq",
            (last_seq,),
        )
        if grown:
            _tree.grow_parents(c, grown, now)
        if linked:
            if p.workflow is not None:
                nodes = sum(1 for t in inserted if t.workflow_id == p.workflow.id)
                _dag.insert_workflow(c, p.workflow.id, p.workflow.name, nodes, now)
            _dag.link(c, tx, inserted, remap, now)
    if replaced:
        c.executemany(_EVENT_SQL, replaced)
    if any_ready:
        tx.wake(_wake.WORK)
    return outcomes


def _claim(c: sqlite3.Connection, tx: Tx, p: TasksClaim) -> list[ClaimedRow]:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    if p.limits:

        def take(seqs: list[int]) -> list[ClaimedRow]:
            return _claim_rows(c, p, now, f"({marks(len(seqs))})", seqs)

        return claim_limited(c, p, now, take)
    queues, kinds = list(p.queues), list(p.kinds)
    picked = (
        "(SELECT seq FROM fm_tasks WHERE state = 'ready' "
        f"AND queue IN ({marks(len(queues))}) AND kind IN ({marks(len(kinds))}) "
        f"AND (expires_at IS NULL OR expires_at > ? OR started_at IS NOT NULL) AND {NOT_HELD_SQL} "
        "ORDER BY priority DESC, seq LIMIT ?)"
    )
    return _claim_rows(c, p, now, picked, (*queues, *kinds, now, now, p.limit))


def _claim_rows(
    c: sqlite3.Connection, p: TasksClaim, now: int, picked: str, args: Sequence[Any]
) -> list[ClaimedRow]:
    """Claim the ready tasks whose seq is `IN picked` (a subquery or a list, with `args`)."""
    expires = now + p.lease_ttl_ms
    rows = c.execute(
        "UPDATE fm_tasks SET state = 'running', attempts = attempts + 1, "
        "lease_epoch = lease_epoch + 1, lease_owner = ?, lease_expires_at = ?, "
        "cancel_requested = 0, last_finish = NULL, started_at = ?, updated_at = ? "
        f"WHERE seq IN {picked} "
        "RETURNING seq, id, kind, queue, priority, payload, phase, memo, attempts, "
        "max_attempts, retry_policy, timeout_ms, lease_epoch, parent_id, condition, workflow_id",
        (p.worker_id, expires, now, now, *args),
    ).fetchall()
    rows.sort(key=lambda r: (-r[4], r[0]))
    c.executemany(_EVENT_SQL, [(r[1], r[2], "running", now, p.worker_id) for r in rows])
    return [
        ClaimedRow(
            id=r[1],
            kind=r[2],
            queue=r[3],
            priority=r[4],
            payload=r[5],
            phase=Phase(r[6]),
            memo=r[7],
            attempt=r[8],
            max_attempts=r[9],
            retry_policy=r[10],
            timeout_ms=r[11],
            lease_epoch=r[12],
            lease_expires_at_ms=expires,
            parent_id=r[13],
            condition=r[14],
            workflow_id=r[15],
        )
        for r in rows
    ]


def _renew(c: sqlite3.Connection, p: LeasesRenew) -> list[RenewOutcome]:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    expires = now + p.lease_ttl_ms
    out: list[RenewOutcome] = []
    for lease in p.leases:
        row = c.execute(
            "UPDATE fm_tasks SET lease_expires_at = ? WHERE id = ? AND lease_epoch = ? "
            "AND state = 'running' RETURNING cancel_requested",
            (expires, lease.task_id, lease.epoch),
        ).fetchone()
        if row is None:
            out.append(RenewOutcome(lease.task_id, False, False, None))
        else:
            out.append(RenewOutcome(lease.task_id, True, bool(row[0]), expires))
    return out


_FINISH_TARGETS = frozenset(t for (s, t) in TRANSITIONS if s is State.RUNNING)
_TTL_ERROR = ErrorInfo("Expired", "the task was not started before its ttl ran out", "ttl")
_CANCELLED_ON_RETRY = ErrorInfo(
    "Cancelled",
    "cancel was requested while the attempt ran; it ended asking for a retry",
    "cancelled",
)


def _finish_mark(f: Finish) -> str:
    return f"{f.target.value}:reaped" if f.expired_lease else f.target.value


def _finish(c: sqlite3.Connection, tx: Tx, p: TasksFinish) -> list[FinishOutcome]:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    ended: list[_tree.Ended] = []
    cancelled: list[str] = []
    out: list[FinishOutcome] = []
    events: list[tuple[Any, ...]] = []
    results: list[tuple[Any, ...]] = []
    for f in p.items:
        if f.target not in _FINISH_TARGETS:
            raise StoreError(f"a running task cannot be finished as {f.target}")
        target = f.target
        run_at = None
        if target is State.SCHEDULED:
            run_at = now + f.delay_ms if f.delay_ms is not None else f.run_at_ms
            if run_at is None:
                raise StoreError("a finish to scheduled needs delay_ms or run_at_ms")
        err = encode_error(f.error)
        # `last_finish` keeps the requested target (marked when the reaper made it): a repeat
        # of this same call is then ALREADY, and a worker's late finish is not mistaken for it.
        mark = _finish_mark(f)
        row = c.execute(
            "UPDATE fm_tasks SET state = ?, last_finish = ?, lease_owner = NULL, "
            "lease_expires_at = NULL, error = CASE WHEN ? THEN NULL ELSE coalesce(?, error) END, "
            "run_at = ?, updated_at = ?, finished_at = ?, attempts = attempts - ? "
            "WHERE id = ? AND lease_epoch = ? AND state = 'running' "
            + ("AND lease_expires_at < ? " if f.expired_lease else "AND ? IS NULL ")
            + "RETURNING kind, cancel_requested, parent_id",
            (
                target.value,
                mark,
                target is State.COMPLETED,
                err,
                run_at,
                now,
                now if target in TERMINAL else None,
                1 if f.release else 0,
                f.task_id,
                f.epoch,
                now if f.expired_lease else None,
            ),
        ).fetchone()
        if row is None:
            out.append(_finish_refused(c, f))
            continue
        kind, cancel_requested, parent_id = row
        detail = f.error.category if f.error else None
        if cancel_requested and target not in TERMINAL:
            # Cancelled while running, and the attempt asked for another: the cancel wins,
            # or the next claim would clear the request and run the task again.
            target, err = State.CANCELLED, encode_error(_CANCELLED_ON_RETRY)
            c.execute(
                "UPDATE fm_tasks SET state = 'cancelled', error = ?, run_at = NULL, "
                "finished_at = ? WHERE id = ?",
                (err, now, f.task_id),
            )
            detail = "cancel requested"
        events.append((f.task_id, kind, target.value, now, detail))
        if target in TERMINAL:
            results.append((f.task_id, target.value, f.result, err, now))
            tx.wake(_wake.FINISH)
            if parent_id is not None:
                ended.append((parent_id, f.task_id, target))
            if target is State.CANCELLED:
                cancelled.append(f.task_id)
        elif target is State.READY:
            tx.wake(_wake.WORK)
        out.append(FinishOutcome(f.task_id, FinishStatus.APPLIED, target))
    if results:
        c.executemany(
            "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
            "VALUES (?, ?, ?, ?, ?)",
            results,
        )
    if events:
        c.executemany(_EVENT_SQL, events)
    if cancelled:
        _cancelled_tasks(c, tx, cancelled, "parent cancelled", now)
    if ended:
        _tree.children_ended(c, tx, ended, now)
    return out


def _cancelled_tasks(
    c: sqlite3.Connection, tx: Tx, ids: Sequence[str], reason: str, now: int
) -> None:
    """What follows a cancel: on_cancel hooks are due and the descendants are cancelled."""
    for i in range(0, len(ids), IN_CHUNK):
        chunk = list(ids[i : i + IN_CHUNK])
        c.execute(
            f"UPDATE fm_tasks SET hook = '{_tree.ON_CANCEL}' WHERE has_on_cancel = 1 "
            f"AND id IN ({marks(len(chunk))})",
            chunk,
        )
    _tree.cancel_descendants(c, tx, ids, reason, now)


def _finish_refused(c: sqlite3.Connection, f: Finish) -> FinishOutcome:
    row = c.execute(
        "SELECT state, lease_epoch, last_finish FROM fm_tasks WHERE id = ?", (f.task_id,)
    ).fetchone()
    if row is not None and row[1] == f.epoch and row[2] == _finish_mark(f):
        return FinishOutcome(f.task_id, FinishStatus.ALREADY, State(row[0]))
    return FinishOutcome(f.task_id, FinishStatus.LEASE_LOST, State(row[0]) if row else None)


def _promote(c: sqlite3.Connection, tx: Tx, p: TasksPromote) -> int:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    rows = c.execute(
        "UPDATE fm_tasks SET state = 'ready', updated_at = ? WHERE seq IN (SELECT seq FROM "
        "fm_tasks WHERE state = 'scheduled' AND run_at <= ? ORDER BY run_at LIMIT ?) "
        "RETURNING id, kind",
        (now, now, p.limit),
    ).fetchall()
    if rows:
        c.executemany(_EVENT_SQL, [(i, k, "ready", now, "promoted") for i, k in rows])
        tx.wake(_wake.WORK)
    return len(rows)


def _expire(c: sqlite3.Connection, tx: Tx, p: TasksExpire) -> int:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    err = encode_error(_TTL_ERROR)
    rows = c.execute(
        "UPDATE fm_tasks SET state = 'expired', error = ?, updated_at = ?, finished_at = ? "
        # INDEXED BY: left alone, the planner scans every ready task via fm_tasks_state.
        "WHERE seq IN (SELECT seq FROM fm_tasks INDEXED BY fm_tasks_ttl "
        "WHERE state = 'ready' AND expires_at <= ? "
        "AND started_at IS NULL ORDER BY expires_at LIMIT ?) RETURNING id, kind, parent_id",
        (err, now, now, now, p.limit),
    ).fetchall()
    if rows:
        c.executemany(_EVENT_SQL, [(i, k, "expired", now, "ttl") for i, k, _ in rows])
        c.executemany(
            "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
            "VALUES (?, 'expired', NULL, ?, ?)",
            [(i, err, now) for i, _, _ in rows],
        )
        tx.wake(_wake.FINISH)
        _tree.children_ended(c, tx, [(pid, i, State.EXPIRED) for i, _, pid in rows if pid], now)
    return len(rows)


def _expired_leases(c: sqlite3.Connection, p: LeasesExpired) -> list[ExpiredLease]:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    rows = c.execute(
        "SELECT id, kind, lease_epoch, attempts, max_attempts, retry_policy, lease_owner, "
        "cancel_requested FROM fm_tasks WHERE state = 'running' AND lease_expires_at < ? "
        "ORDER BY lease_expires_at LIMIT ?",
        (now, p.limit),
    )
    return [ExpiredLease(i, k, e, a, m, r, o, bool(cr)) for i, k, e, a, m, r, o, cr in rows]


def _cancel(c: sqlite3.Connection, tx: Tx, p: TaskCancel) -> CancelOutcome:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    row = c.execute(
        "SELECT state, kind, parent_id FROM fm_tasks WHERE id = ?", (p.task_id,)
    ).fetchone()
    if row is None:
        raise TaskNotFound(p.task_id)
    state, kind, parent_id = State(row[0]), row[1], row[2]
    if state is State.RUNNING:
        c.execute(
            "UPDATE fm_tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?",
            (now, p.task_id),
        )
        tx.wake(_wake.FINISH)
        return CancelOutcome(p.task_id, state, True)
    if not can_transition(state, State.CANCELLED):
        return CancelOutcome(p.task_id, state, False)
    err = encode_error(ErrorInfo("Cancelled", p.reason, "cancelled"))
    sources = sources_of(State.CANCELLED)
    updated = c.execute(
        "UPDATE fm_tasks SET state = 'cancelled', error = ?, updated_at = ?, finished_at = ? "
        f"WHERE id = ? AND state IN ({marks(len(sources))})",
        (err, now, now, p.task_id, *sources),
    ).rowcount
    if updated:
        c.execute(_EVENT_SQL, (p.task_id, kind, "cancelled", now, p.reason))
        c.execute(
            "INSERT OR REPLACE INTO fm_results (task_id, state, result, error, finished_at) "
            "VALUES (?, 'cancelled', NULL, ?, ?)",
            (p.task_id, err, now),
        )
        tx.wake(_wake.FINISH)
        _cancelled_tasks(c, tx, [p.task_id], p.reason, now)
        if parent_id is not None:
            _tree.children_ended(c, tx, [(parent_id, p.task_id, State.CANCELLED)], now)
    return CancelOutcome(p.task_id, State.CANCELLED, False)


def _retry(c: sqlite3.Connection, tx: Tx, p: TaskRetry) -> State:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    row = c.execute(
        "SELECT state, kind, dedup_key FROM fm_tasks WHERE id = ?", (p.task_id,)
    ).fetchone()
    if row is None:
        raise TaskNotFound(p.task_id)
    state, kind, key = State(row[0]), row[1], row[2]
    if not can_transition(state, State.READY) or state not in (State.FAILED, State.DEAD_LETTERED):
        raise IllegalTransition(state.value, State.READY.value)
    if key is not None:
        # The key was freed when this task ended; a newer task may hold it now.
        holder = _key_holder(c, kind, key)
        if holder is not None:
            raise DuplicateTask(key, holder[0])
    c.execute(
        "UPDATE fm_tasks SET state = 'ready', attempts = 0, error = NULL, finished_at = NULL, "
        "run_at = NULL, last_finish = NULL, cancel_requested = 0, progress_pct = NULL, "
        "progress_message = NULL, updated_at = ? WHERE id = ?",
        (now, p.task_id),
    )
    c.execute("DELETE FROM fm_results WHERE task_id = ?", (p.task_id,))
    c.execute(_EVENT_SQL, (p.task_id, kind, "ready", now, "operator retry"))
    tx.wake(_wake.WORK)
    return State.READY


def _progress(c: sqlite3.Connection, p: TaskProgress) -> None:
    now = p.now_ms if p.now_ms is not None else _wall_ms()
    row = c.execute(
        "UPDATE fm_tasks SET progress_pct = ?, progress_message = ?, updated_at = ? "
        "WHERE id = ? AND lease_epoch = ? AND state = 'running' RETURNING kind",
        (p.pct, p.message, now, p.task_id, p.epoch),
    ).fetchone()
    if row is None:
        raise LeaseLost(p.task_id, p.epoch)
    c.execute(_EVENT_SQL, (p.task_id, row[0], "running", now, progress_detail(p.pct, p.message)))


def progress_detail(pct: float, message: str | None) -> str:
    """The detail of a progress event: `progress 40%: loading`."""
    return f"progress {pct:g}%" + (f": {message}" if message else "")


def _result_of(c: sqlite3.Connection, task_id: str) -> bytes | None:
    row = c.execute("SELECT result FROM fm_results WHERE task_id = ?", (task_id,)).fetchone()
    return None if row is None else row[0]


def _get(c: sqlite3.Connection, task_id: str) -> TaskRecord | None:
    row = c.execute(f"SELECT {_TASK_COLUMNS} FROM fm_tasks WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else task_record(row, _result_of(c, task_id))


def _list(c: sqlite3.Connection, p: TasksList) -> list[TaskRecord]:
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
    return [task_record(r, _result_of(c, r[0])) for r in rows]
