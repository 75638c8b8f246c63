"""The App: task registry, submission, inspection; the entry point of the public API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from ._budgets import Budgets, StatusReport
from ._clock import Clock, SystemClock
from ._codec import DEFAULT_MAX_BYTES
from ._executor import Executor, make_executor_def
from ._handle import ResultWaiter, TaskHandle, decode_json
from ._inspect import TaskInfo as TaskInfo
from ._inspect import task_info
from ._limits import QueueLimits, RateLimit
from ._operate import Operations, retention_ms
from ._retry import Retry
from ._rows import Opts
from ._signals import Frame, deliver_signal, tail_frames
from ._states import State
from ._submit import insert_tasks, upstream_ids
from ._task import Priority, TaskDef, TaskOptions, make_task_def
from .errors import (
    ConfigurationError,
    TaskNotFound,
    UnknownTask,
    WorkflowNotFound,
)
from .store import DEFAULT_URL, open_store
from .store._front import StoreFront
from .store.contract import Store
from .store.contract.dag import WorkflowGet, WorkflowRecord, WorkflowsList
from .store.contract.signals import DeliverOutcome
from .store.contract.tasks import (
    Event,
    EventsRead,
    OnDuplicate,
    TaskCancel,
    TaskRetry,
    TasksList,
)
from .worker._claimer import Claimer
from .worker._worker import Worker
from .workflows._builder import Workflow
from .workflows._runs import WorkflowRun
from .workflows._when import Conditions

F = TypeVar("F", bound=Callable[..., Any])


class App(Budgets, Operations):
    """A flowmill application: `fm.App("sqlite:///jobs.db")` or `fm.App("postgresql://...")`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        max_payload_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
        store: Store | None = None,
        retention: timedelta | None = None,
        **store_options: Any,
    ) -> None:
        """`retention`: how long finished tasks are kept (dead letters are kept until
        replayed or purged by name); the maintenance of this app's workers deletes older
        ones. None (the default) keeps them for good."""
        if not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise ConfigurationError(f"max_payload_bytes must be >= 1, got {max_payload_bytes!r}")
        self.url = url or os.environ.get("FLOWMILL_URL") or DEFAULT_URL
        backend = store if store is not None else open_store(self.url, **store_options)
        self.store: StoreFront = StoreFront(backend)  # every store call goes through this door
        self.max_payload_bytes = max_payload_bytes
        retention_ms(retention)  # refuse a bad period here, not in a worker
        self.retention = retention
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

    def resolve_task(self, task: TaskDef | str) -> TaskDef:
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
        [handle] = await insert_tasks(
            self,
            task,
            [payload],
            keys=[key],
            on_duplicate=on_duplicate,
            opts=Opts(
                delay,
                run_at,
                priority,
                queue,
                tags,
                ttl,
                parent,
                fail_fast,
                budget=budget,
                depends_on=upstream_ids(depends_on),
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
        return await insert_tasks(
            self,
            task,
            list(payloads),
            keys=keys,
            on_duplicate=on_duplicate,
            opts=Opts(delay, run_at, priority, queue, tags, ttl, parent, fail_fast, budget=budget),
        )

    def handle(self, task_id: str, task: TaskDef | str | None = None) -> TaskHandle[Any]:
        """A handle for a task submitted elsewhere (its result decodes by its registered kind)."""
        kind = self.resolve_task(task).name if task is not None else ""
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
        return task_info(self, rec)

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
        return [task_info(self, r) for r in recs]

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
        return Worker(self, **{"retention": self.retention, **options})

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
