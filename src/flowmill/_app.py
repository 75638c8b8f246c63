"""The App: task registry, submission, inspection; the entry point of the public API."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from ._budgets import Budgets, StatusReport
from ._children import ChildResult
from ._clock import Clock, SystemClock, from_ms, from_ms_opt
from ._codec import DEFAULT_MAX_BYTES
from ._executor import Executor, make_executor_def
from ._handle import ResultWaiter, TaskHandle, decode_json
from ._limits import QueueLimits, RateLimit, check_budget_id
from ._retry import Retry
from ._signals import Frame, deliver_signal, tail_frames
from ._states import Phase, State
from ._task import Priority, TaskDef, TaskOptions, check_queue, make_task_def, positive_ms
from .errors import (
    ConfigurationError,
    PayloadError,
    TaskNotFound,
    UnknownTask,
    WorkflowNotFound,
)
from .store import DEFAULT_URL, open_store
from .store.contract import Store
from .store.contract.dag import WorkflowGet, WorkflowRecord, WorkflowsList
from .store.contract.signals import DeliverOutcome
from .store.contract.tasks import (
    ON_DUPLICATE_CHOICES,
    ChildRow,
    ErrorInfo,
    Event,
    EventsRead,
    LeaseRef,
    NewTask,
    OnDuplicate,
    TaskCancel,
    TaskRecord,
    TaskRetry,
    TasksInsert,
    TasksList,
)
from .worker._claimer import Claimer
from .worker._worker import Worker
from .workflows._builder import Conditions, Workflow, WorkflowRun, check_policy

F = TypeVar("F", bound=Callable[..., Any])
MAX_KEY_LEN = 512


def new_task_id(_urandom: Callable[[int], bytes] = os.urandom) -> str:
    """A time-ordered UUID (version 7 layout): sortable, unique across processes."""
    return new_task_ids(1, _urandom)[0]


def new_task_ids(n: int, _urandom: Callable[[int], bytes] = os.urandom) -> list[str]:
    """`n` time-ordered UUIDs (version 7 layout) from one call for randomness.

    Built from hex strings rather than `uuid.UUID`: it is on the submit hot path.
    """
    stamp = (time.time_ns() // 1_000_000).to_bytes(6, "big").hex()
    rand = _urandom(10 * n).hex()
    ids = []
    for i in range(0, 20 * n, 20):
        r = rand[i : i + 20]
        variant = "89ab"[int(r[0], 16) & 3]
        ids.append(f"{stamp[:8]}-{stamp[8:12]}-7{r[1:4]}-{variant}{r[5:8]}-{r[8:20]}")
    return ids


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as `app.get` shows it: state, attempts, timestamps, error, result, progress."""

    id: str
    name: str
    queue: str
    priority: int
    state: State
    phase: Phase
    attempts: int
    max_attempts: int
    payload: Any
    result: Any
    error: ErrorInfo | None
    tags: dict[str, str]
    key: str | None
    parent_id: str | None
    progress: float | None
    progress_message: str | None
    lease_owner: str | None
    lease_epoch: int
    lease_expires_at: datetime | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    run_at: datetime | None
    expires_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class App(Budgets):
    """A flowmill application: `fm.App("sqlite:///jobs.db")` or `fm.App("postgresql://...")`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        max_payload_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
        store: Store | None = None,
        **store_options: Any,
    ) -> None:
        if not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise ConfigurationError(f"max_payload_bytes must be >= 1, got {max_payload_bytes!r}")
        self.url = url or os.environ.get("FLOWMILL_URL") or DEFAULT_URL
        self.store: Store = store if store is not None else open_store(self.url, **store_options)
        self.max_payload_bytes = max_payload_bytes
        self.clock: Clock = clock or SystemClock()
        self.registry: dict[str, TaskDef] = {}
        self._queue_limits: dict[str, QueueLimits] = {}
        self.results = ResultWaiter(self)
        self.conditions = Conditions()
        self._opened = False
        self._open_lock: asyncio.Lock | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> App:
        """Open the store (creating or upgrading its schema). Called on first use."""
        if self._opened:
            return self
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self.store.open()
                self._opened = True
        return self

    async def close(self) -> None:
        self.results.close()
        if self._opened:
            await self.store.close()
            self._opened = False

    async def __aenter__(self) -> App:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- registry --------------------------------------------------------------------

    @overload
    def task(self, fn: F, /) -> TaskDef: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        queue: str = "default",
        priority: int = Priority.NORMAL,
        max_concurrency: int | None = None,
        ttl: timedelta | None = None,
        rate_limit: RateLimit | None = None,
        budget: str | None = None,
    ) -> Callable[[F], TaskDef]: ...

    def task(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        queue: str = "default",
        priority: int = Priority.NORMAL,
        max_concurrency: int | None = None,
        ttl: timedelta | None = None,
        rate_limit: RateLimit | None = None,
        budget: str | None = None,
    ) -> TaskDef | Callable[[F], TaskDef]:
        """Register a handler as a task: `@app.task` or `@app.task(retry=..., timeout=...)`.

        `max_concurrency` and `rate_limit` hold across every worker; `budget` is the
        default budget of its submits."""

        options = TaskOptions(
            name, retry, timeout, queue, priority, max_concurrency, ttl, rate_limit, budget
        )

        def register(f: F) -> TaskDef:
            # A TaskDef of another app (stacked decorators) registers the same function here.
            handler = f.fn if isinstance(f, TaskDef) else f
            return self._register(make_task_def(handler, options, self.max_payload_bytes))

        return register(fn) if fn is not None else register

    def _register(self, tdef: TaskDef) -> TaskDef:
        if tdef.name in self.registry:
            raise ConfigurationError(f"a task named {tdef.name!r} is already registered")
        self.registry[tdef.name] = tdef
        return tdef

    def executor(
        self,
        cls: type[Executor[Any, Any, Any]] | None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: timedelta | None = None,
        queue: str = "default",
        priority: int = Priority.NORMAL,
        max_concurrency: int | None = None,
        ttl: timedelta | None = None,
        rate_limit: RateLimit | None = None,
        budget: str | None = None,
    ) -> Any:
        """Register an orchestrator class: `@app.executor` or `@app.executor(retry=...)`.

        Returns the class's TaskDef, which `submit` takes like a task function's.
        """
        options = TaskOptions(
            name, retry, timeout, queue, priority, max_concurrency, ttl, rate_limit, budget
        )

        def register(c: type[Executor[Any, Any, Any]]) -> TaskDef:
            return self._register(make_executor_def(c, options, self.max_payload_bytes))

        return register(cls) if cls is not None else register

    def task_names(self) -> list[str]:
        return sorted(self.registry)

    def queues(self) -> set[str]:
        return {t.queue for t in self.registry.values()} or {"default"}

    def _resolve(self, task: TaskDef | str) -> TaskDef:
        name = task.name if isinstance(task, TaskDef) else task
        tdef = self.registry.get(name) if isinstance(name, str) else None
        if tdef is None or (isinstance(task, TaskDef) and tdef is not task):
            raise UnknownTask(f"task {name!r} is not registered on this app")
        return tdef

    # -- submission ------------------------------------------------------------------

    async def submit(
        self,
        task: TaskDef | str,
        payload: Any = None,
        *,
        key: str | None = None,
        on_duplicate: OnDuplicate = "skip",
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        tags: Mapping[str, str] | None = None,
        ttl: timedelta | None = None,
        parent: str | None = None,
        fail_fast: bool | None = None,
        depends_on: Sequence[TaskHandle[Any] | str] = (),
        on_upstream_failure: str = "skip",
        budget: str | None = None,
    ) -> TaskHandle[Any]:
        """Submit one task; durable when this returns. A duplicate `key` follows `on_duplicate`.

        `parent` makes it a child of that (active) task; `fail_fast` overrides the task's
        default for its own children. With `depends_on` (handles or ids) it starts `blocked`
        and runs once they have ended, as `on_upstream_failure` says (see `app.workflow`).
        With `budget` (a defined one, else `UnknownBudget`), the task is not claimed while
        that budget is hard-breached.
        """
        [handle] = await self._insert(
            task,
            [payload],
            keys=[key],
            on_duplicate=on_duplicate,
            opts=_Opts(
                delay,
                run_at,
                priority,
                queue,
                tags,
                ttl,
                parent,
                fail_fast,
                budget=budget,
                depends_on=_upstream_ids(depends_on),
                upstream_policy=on_upstream_failure,
            ),
        )
        return handle

    async def submit_many(
        self,
        task: TaskDef | str,
        payloads: Iterable[Any],
        *,
        keys: Sequence[str | None] | None = None,
        on_duplicate: OnDuplicate = "skip",
        delay: timedelta | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        tags: Mapping[str, str] | None = None,
        ttl: timedelta | None = None,
        parent: str | None = None,
        fail_fast: bool | None = None,
        budget: str | None = None,
    ) -> list[TaskHandle[Any]]:
        """Submit many tasks of one kind in one transaction: all are stored, or none."""
        return await self._insert(
            task,
            list(payloads),
            keys=keys,
            on_duplicate=on_duplicate,
            opts=_Opts(delay, run_at, priority, queue, tags, ttl, parent, fail_fast, budget=budget),
        )

    async def _insert(
        self,
        task: TaskDef | str,
        payloads: Sequence[Any],
        *,
        keys: Sequence[str | None] | None = None,
        child_keys: Sequence[str | None] | None = None,
        on_duplicate: OnDuplicate = "skip",
        opts: _Opts,
        fence: LeaseRef | None = None,
    ) -> list[TaskHandle[Any]]:
        """The one way tasks get in: submits and spawns. Validates everything before storing."""
        tdef = self._resolve(task)
        _check_on_duplicate(on_duplicate)
        common = _Common.build(tdef, opts)
        for what, given in (("keys", keys), ("child keys", child_keys)):
            if given is not None and len(given) != len(payloads):
                raise ConfigurationError(f"{len(given)} {what} for {len(payloads)} payloads")
        encode = tdef.payload.encode
        news = common.tasks(
            tdef,
            [encode(p) for p in payloads],
            None if keys is None else [_check_key(k) for k in keys],
            None if child_keys is None else [_check_key(k) for k in child_keys],
        )
        if common.budget_id is not None:
            await self.require_budget(common.budget_id)
        await self.open()
        outs = await self.store.tasks_insert(
            TasksInsert(news, on_duplicate, self.clock.store_now(), fence)
        )
        return [TaskHandle(o.id, self, tdef.name, o.status) for o in outs]

    def spawn_options(self, parent_id: str, given: Mapping[str, Any]) -> _Opts:
        """Submit options for children spawned from a handler (`ctx.spawn(..., delay=...)`)."""
        unknown = set(given) - _SPAWN_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"spawn does not take {', '.join(sorted(unknown))}; it takes "
                f"{', '.join(sorted(_SPAWN_OPTIONS))}"
            )
        return _Opts(parent=parent_id, **given)

    def kind_names(self, kind: TaskDef | str | Iterable[TaskDef | str] | None) -> tuple[str, ...]:
        """Task names for a filter given as task objects or names (None: every kind)."""
        if kind is None:
            return ()
        if isinstance(kind, TaskDef | str):
            kind = [kind]
        return tuple(k.name if isinstance(k, TaskDef) else str(k) for k in kind)

    def child_result(self, row: ChildRow) -> ChildResult[Any]:
        ok = row.state is State.COMPLETED
        result = self.decode_result(row.kind, row.result) if ok else None
        return ChildResult(row.id, row.kind, row.state, ok, result, row.error, row.attempts)

    def handle(self, task_id: str, task: TaskDef | str | None = None) -> TaskHandle[Any]:
        """A handle for a task submitted elsewhere (its result decodes by its registered kind)."""
        kind = self._resolve(task).name if task is not None else ""
        return TaskHandle(task_id, self, kind)

    def decode_result(self, kind: str, data: bytes | None) -> Any:
        tdef = self.registry.get(kind)
        if tdef is None or data is None:
            return decode_json(data)
        return tdef.result.decode(data)

    # -- inspection and operations ---------------------------------------------------

    async def get(self, task_id: str) -> TaskInfo:
        """The task record; `TaskNotFound` when there is no such task."""
        await self.open()
        rec = await self.store.task_get(task_id)
        if rec is None:
            raise TaskNotFound(task_id)
        return self._info(rec)

    def _info(self, r: TaskRecord) -> TaskInfo:
        tdef = self.registry.get(r.kind)
        try:
            payload = tdef.payload.decode(r.payload) if tdef else decode_json(r.payload)
        except PayloadError:
            payload = decode_json(r.payload)
        try:
            result = self.decode_result(r.kind, r.result)
        except PayloadError:
            result = decode_json(r.result)
        return TaskInfo(
            id=r.id,
            name=r.kind,
            queue=r.queue,
            priority=r.priority,
            state=r.state,
            phase=r.phase,
            attempts=r.attempts,
            max_attempts=r.max_attempts,
            payload=payload,
            result=result,
            error=r.error,
            tags=r.tags,
            key=r.dedup_key,
            parent_id=r.parent_id,
            progress=r.progress_pct,
            progress_message=r.progress_message,
            lease_owner=r.lease_owner,
            lease_epoch=r.lease_epoch,
            lease_expires_at=from_ms_opt(r.lease_expires_at_ms),
            cancel_requested=r.cancel_requested,
            created_at=from_ms(r.created_at_ms),
            updated_at=from_ms(r.updated_at_ms),
            run_at=from_ms_opt(r.run_at_ms),
            expires_at=from_ms_opt(r.expires_at_ms),
            started_at=from_ms_opt(r.started_at_ms),
            finished_at=from_ms_opt(r.finished_at_ms),
        )

    async def list_tasks(
        self,
        *,
        states: Sequence[State | str] = (),
        queue: str | None = None,
        name: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[TaskInfo]:
        """Tasks in submission order, filtered; pass the last id as `after` for the next page."""
        await self.open()
        recs = await self.store.tasks_list(
            TasksList(tuple(State(s) for s in states), queue, name, limit, after)
        )
        return [self._info(r) for r in recs]

    async def cancel(self, task_id: str, reason: str = "cancelled by operator") -> State:
        """Cancel a queued task now, or ask a running one to stop; returns the state after."""
        await self.open()
        out = await self.store.task_cancel(TaskCancel(task_id, reason, self.clock.store_now()))
        return out.state

    async def retry(self, task_id: str) -> State:
        """Run a failed or dead-lettered task again, with a fresh attempt budget."""
        await self.open()
        return await self.store.task_retry(TaskRetry(task_id, self.clock.store_now()))

    replay = retry

    async def dead_letters(self, *, limit: int = 100, after: str | None = None) -> list[TaskInfo]:
        """Tasks whose retries ran out (the dead-letter queue), oldest first."""
        return await self.list_tasks(states=[State.DEAD_LETTERED], limit=limit, after=after)

    async def status(self) -> StatusReport:
        """Task counts by queue and state (a list of `CountRow`), and `.budgets`."""
        await self.open()
        return StatusReport(await self.store.tasks_count(), await self.budgets())

    async def events(
        self, *, after: int = 0, follow: bool = True, batch: int = 500
    ) -> AsyncGenerator[Event, None]:
        """State changes in order; with `follow`, waits for new ones (pass `after` to resume)."""
        await self.open()
        cursor = after
        while True:
            evs = await self.store.events_read(EventsRead(cursor, batch))
            for ev in evs:
                cursor = ev.id
                yield ev
            if len(evs) < batch:
                if not follow:
                    return
                await self.store.wait_for_finish(0.25)

    async def deliver_signal(
        self,
        waitpoint_id: str,
        token: str,
        name: str,
        payload: Any = None,
        idempotency_key: str | None = None,
    ) -> DeliverOutcome:
        """Signal a waitpoint: accepted / duplicate / rejected(reason); may resume its task.

        The token is checked (HMAC, constant time) before anything is stored.
        """
        return await deliver_signal(self, waitpoint_id, token, name, payload, idempotency_key)

    def frames(
        self, task_id: str, *, attempt: int | None = None, after: int = 0, follow: bool = True
    ) -> AsyncGenerator[Frame, None]:
        """An attempt's output frames in order (the latest attempt by default); with `follow`,
        waits for new ones and ends when the attempt ends. Pass the last seq as `after`."""
        return tail_frames(self, task_id, attempt=attempt, after=after, follow=follow)

    def claimer(
        self,
        *,
        worker_id: str,
        queues: Sequence[str] = ("default",),
        kinds: Sequence[str] | None = None,
        lease_ttl: timedelta = timedelta(seconds=30),
    ) -> Claimer:
        """Claim tasks for a loop of your own: `async with app.claimer(worker_id=...) as c`."""
        return Claimer(self, worker_id=worker_id, queues=queues, kinds=kinds, lease_ttl=lease_ttl)

    def worker(self, **options: Any) -> Worker:
        """A worker for this app's tasks (see `Worker` for the options)."""
        return Worker(self, **options)

    # -- workflows -------------------------------------------------------------------

    def workflow(self, name: str) -> Workflow:
        """A new DAG workflow: `wf.add(task, payload, after=[...])`, then `await wf.submit()`."""
        return Workflow(self, name)

    async def workflow_run(self, run_id: str) -> WorkflowRun:
        """A stored run by id (`WorkflowNotFound` if there is none)."""
        await self.open()
        rec = await self.store.workflow_get(WorkflowGet(run_id))
        if rec is None:
            raise WorkflowNotFound(run_id)
        return WorkflowRun(self, rec.id, rec.name)

    async def workflow_runs(
        self, *, name: str | None = None, limit: int = 50
    ) -> list[WorkflowRecord]:
        """The newest workflow runs (counts of their nodes by state)."""
        await self.open()
        return await self.store.workflows_list(WorkflowsList(limit, name))


def _check_on_duplicate(value: str) -> None:
    if value not in ON_DUPLICATE_CHOICES:
        raise ConfigurationError(
            f"on_duplicate must be one of {', '.join(ON_DUPLICATE_CHOICES)}, got {value!r}"
        )


def _check_key(key: str | None) -> str | None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN):
        raise ConfigurationError(
            f"key must be a non-empty string of at most {MAX_KEY_LEN} characters, got {key!r}"
        )
    return key


_SPAWN_OPTIONS = frozenset(
    {"delay", "run_at", "priority", "queue", "tags", "ttl", "fail_fast", "budget"}
)


@dataclass(frozen=True, slots=True)
class _Opts:
    """Submit options as the caller gave them (None: the task's default)."""

    delay: timedelta | None = None
    run_at: datetime | None = None
    priority: int | None = None
    queue: str | None = None
    tags: Mapping[str, str] | None = None
    ttl: timedelta | None = None
    parent: str | None = None
    fail_fast: bool | None = None
    budget: str | None = None
    depends_on: tuple[str, ...] = ()
    upstream_policy: str = "skip"


def _upstream_ids(given: Sequence[TaskHandle[Any] | str]) -> tuple[str, ...]:
    if isinstance(given, str | TaskHandle):
        given = [given]
    out = []
    for g in given:
        task_id = g.id if isinstance(g, TaskHandle) else g
        if not isinstance(task_id, str) or not task_id:
            raise ConfigurationError(f"depends_on takes task handles or ids, got {g!r}")
        out.append(task_id)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Common:
    """The options shared by every task of one submit call, validated once."""

    queue: str
    priority: int
    delay_ms: int | None
    run_at_ms: int | None
    ttl_ms: int | None
    tags: Mapping[str, str]
    parent_id: str | None
    fail_fast: bool
    budget_id: str | None
    depends_on: tuple[str, ...] = ()
    upstream_policy: str = "skip"

    @staticmethod
    def build(tdef: TaskDef, o: _Opts) -> _Common:
        if o.delay is not None and o.run_at is not None:
            raise ConfigurationError("pass delay or run_at, not both")
        run_at_ms = None
        if o.run_at is not None:
            if not isinstance(o.run_at, datetime) or o.run_at.tzinfo is None:
                raise ConfigurationError(
                    f"run_at must be a timezone-aware datetime, got {o.run_at!r}"
                )
            run_at_ms = int(o.run_at.timestamp() * 1000)
        if o.priority is not None and (
            not isinstance(o.priority, int) or isinstance(o.priority, bool)
        ):
            raise ConfigurationError(f"priority must be an int, got {o.priority!r}")
        tags = dict(o.tags or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise ConfigurationError("tags must map strings to strings")
        if o.parent is not None and (not isinstance(o.parent, str) or not o.parent):
            raise ConfigurationError(f"parent must be a task id, got {o.parent!r}")
        if o.depends_on:
            if o.parent is not None or o.delay is not None or o.run_at is not None:
                raise ConfigurationError(
                    "a task with depends_on cannot also be a child or be delayed"
                )
            check_policy(o.upstream_policy)
        return _Common(
            queue=check_queue(o.queue) if o.queue is not None else tdef.queue,
            priority=int(o.priority) if o.priority is not None else tdef.priority,
            delay_ms=positive_ms("delay", o.delay, allow_zero=True),
            run_at_ms=run_at_ms,
            ttl_ms=positive_ms("ttl", o.ttl) if o.ttl is not None else tdef.ttl_ms,
            tags=tags,
            parent_id=o.parent,
            fail_fast=tdef.fail_fast if o.fail_fast is None else bool(o.fail_fast),
            depends_on=o.depends_on,
            upstream_policy=o.upstream_policy,
            budget_id=tdef.budget if o.budget is None else check_budget_id(o.budget),
        )

    def tasks(
        self,
        tdef: TaskDef,
        payloads: list[bytes],
        keys: list[str | None] | None,
        child_keys: list[str | None] | None,
    ) -> list[NewTask]:
        """One NewTask per payload; locals rather than attribute lookups: a hot loop."""
        n = len(payloads)
        ids = new_task_ids(n)
        none: list[str | None] = [None] * n
        kind, queue, priority = tdef.name, self.queue, self.priority
        delay_ms, run_at_ms, ttl_ms, tags = self.delay_ms, self.run_at_ms, self.ttl_ms, self.tags
        max_attempts, policy, timeout_ms = (
            tdef.retry.max_attempts,
            tdef.retry_policy,
            tdef.timeout_ms,
        )
        parent_id, fail_fast, budget_id = self.parent_id, self.fail_fast, self.budget_id
        on_cancel = tdef.executor is not None and tdef.executor.has_on_cancel
        news = [
            NewTask(
                id=id,
                kind=kind,
                payload=payload,
                queue=queue,
                priority=priority,
                delay_ms=delay_ms,
                run_at_ms=run_at_ms,
                ttl_ms=ttl_ms,
                dedup_key=key,
                max_attempts=max_attempts,
                retry_policy=policy,
                timeout_ms=timeout_ms,
                tags=tags,
                parent_id=parent_id,
                child_key=child_key,
                fail_fast=fail_fast,
                has_on_cancel=on_cancel,
                budget_id=budget_id,
            )
            for id, payload, key, child_key in zip(
                ids, payloads, keys or none, child_keys or none, strict=True
            )
        ]
        if self.depends_on:  # never with a delay or a parent (refused in `build`)
            deps, up_policy = list(self.depends_on), self.upstream_policy
            for t in news:
                t.depends_on, t.upstream_policy = deps, up_policy
        return news
