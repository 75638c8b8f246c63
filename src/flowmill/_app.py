"""The App: task registry, submission, inspection; the entry point of the public API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._budgets import Budgets, StatusReport
from ._clock import Clock, SystemClock
from ._codec import DEFAULT_MAX_BYTES, decode_json
from ._executor import Executor, make_executor_def
from ._handle import ResultWaiter, TaskHandle
from ._inspect import TaskInfo as TaskInfo
from ._inspect import task_info
from ._limits import QueueLimits, RateLimit
from ._operate import Operations, retention_ms
from ._retry import Retry
from ._rows import Opts
from ._schedules import Schedule, Scheduler
from ._signals import Frame, deliver_signal, tail_frames
from ._states import State
from ._submit import insert_tasks, upstream_ids
from ._sync import SyncBridge, SyncTaskHandle
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
from .worker._lifecycle import WorkerHook
from .worker._worker import Worker
from .workflows._builder import Workflow
from .workflows._runs import WorkflowRun
from .workflows._when import Conditions

if TYPE_CHECKING:
    from .testing._drain import DrainReport

F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", bound=WorkerHook)


class App(Budgets, Operations):
    """A flowmill application: `fm.App("sqlite:///jobs.db")` or `fm.App("postgresql://...")`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        max_payload_bytes: int = DEFAULT_MAX_BYTES,
        clock: Clock | None = None,
        store: Store | None = None,
        submit_unregistered: bool = True,
        retention: timedelta | None = None,
        **store_options: Any,
    ) -> None:
        """`submit_unregistered`: `submit("name", ...)` of a name no task is registered for
        here stores it as plain JSON for the worker that has it (False: `UnknownTask`).
        `retention`: how long finished tasks are kept (dead letters are kept until
        replayed or purged by name); the maintenance of this app's workers deletes older
        ones. None (the default) keeps them for good."""
        if not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise ConfigurationError(f"max_payload_bytes must be >= 1, got {max_payload_bytes!r}")
        self.url = url or os.environ.get("FLOWMILL_URL") or DEFAULT_URL
        backend = store if store is not None else open_store(self.url, **store_options)
        self.store: StoreFront = StoreFront(backend)  # every store call goes through this door
        self.max_payload_bytes = max_payload_bytes
        self.submit_unregistered = bool(submit_unregistered)
        retention_ms(retention)  # refuse a bad period here, not in a worker
        self.retention = retention
        self.clock: Clock = clock or SystemClock()
        self.registry: dict[str, TaskDef] = {}
        self._queue_limits: dict[str, QueueLimits] = {}
        self.results = ResultWaiter(self)
        self.conditions = Conditions()
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._sync = SyncBridge()  # blocking calls: the loop the store was opened on
        self.worker_start_hooks: list[WorkerHook] = []
        self.worker_stop_hooks: list[WorkerHook] = []
        self.schedules: dict[str, Schedule] = {}  # declared by `schedule`, by name

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
                self._sync.home = asyncio.get_running_loop()
        return self

    async def close(self) -> None:
        """Close the store, on the loop it was opened on (the sync API's own, if it did)."""
        home = self._sync.home
        if home is not None and home is not asyncio.get_running_loop() and home.is_running():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close_here(), home))
        else:
            await self._close_here()
        if self._sync.started and not self._sync.on_own_thread():
            await asyncio.to_thread(self._sync.stop)

    async def _close_here(self) -> None:
        self.results.close()
        if self._opened:
            await self.store.close()
            self._opened = False
        self._sync.home = None

    async def __aenter__(self) -> App:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- synchronous API (blocking; see _sync.py) ----------------------------------------

    def submit_sync(
        self, task: TaskDef | str, payload: Any = None, **opts: Any
    ) -> SyncTaskHandle[Any]:
        """`submit` for code without an event loop (or from another thread); its handle's
        `result(timeout=)` blocks. Safe from many threads at once; they share one store."""
        handle = self._sync.call(lambda: self.submit(task, payload, **opts), "submit_sync()")
        return SyncTaskHandle(handle, self._sync)

    def submit_many_sync(
        self, task: TaskDef | str, payloads: Iterable[Any], **opts: Any
    ) -> list[SyncTaskHandle[Any]]:
        """`submit_many`, blocking: all are stored in one transaction, or none."""
        items = list(payloads)
        handles = self._sync.call(
            lambda: self.submit_many(task, items, **opts), "submit_many_sync()"
        )
        return [SyncTaskHandle(h, self._sync) for h in handles]

    def get_sync(self, task_id: str) -> TaskInfo:
        """`get`, blocking: the task record; `TaskNotFound` when there is no such task."""
        return self._sync.call(lambda: self.get(task_id), "get_sync()")

    def handle_sync(self, task_id: str, task: TaskDef | str | None = None) -> SyncTaskHandle[Any]:
        """A blocking handle for a task submitted elsewhere."""
        return SyncTaskHandle(self.handle(task_id, task), self._sync)

    def close_sync(self) -> None:
        """`close`, blocking (stops the sync API's loop thread too)."""
        self._sync.close_with(self._close_here)

    async def drain(
        self, *, queues: Sequence[str] | None = None, max_tasks: int = 10_000
    ) -> DrainReport:
        """For tests: run every ready task in this process until nothing is ready, moving a
        `ManualClock` over delays and backoff; counts by outcome (`flowmill.testing.drain`)."""
        from .testing._drain import drain

        return await drain(self, queues=queues, max_tasks=max_tasks)

    def drain_sync(
        self, *, queues: Sequence[str] | None = None, max_tasks: int = 10_000
    ) -> DrainReport:
        """`drain`, blocking."""
        return self._sync.call(
            lambda: self.drain(queues=queues, max_tasks=max_tasks), "drain_sync()"
        )

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
        strict: bool = True,
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
        strict: bool = True,
    ) -> TaskDef | Callable[[F], TaskDef]:
        """Register a handler as a task: `@app.task` or `@app.task(retry=..., timeout=...)`.

        `max_concurrency` and `rate_limit` hold across every worker; `budget` is the
        default budget of its submits. A payload object with a field its class does not
        declare is refused (`PayloadError` naming it) unless `strict=False`, which ignores
        such fields (while senders and workers are deployed apart)."""

        options = TaskOptions(
            name, retry, timeout, queue, priority, max_concurrency, ttl, rate_limit, budget, strict
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
        strict: bool = True,
    ) -> Any:
        """Register an orchestrator class: `@app.executor` or `@app.executor(retry=...)`.

        Returns the class's TaskDef, which `submit` takes like a task function's.
        """
        options = TaskOptions(
            name, retry, timeout, queue, priority, max_concurrency, ttl, rate_limit, budget, strict
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

        `task` is a registered task (its payload type is checked here) or a task name: a
        name no task here is registered for is stored with a plain JSON payload and the
        default options, for the worker that registers it (see `submit_unregistered`).

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
            by_name=self.submit_unregistered,
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
        """Submit many tasks of one kind in one transaction: all are stored, or none.

        `task` is a registered task or a task name, as for `submit`."""
        return await insert_tasks(
            self,
            task,
            list(payloads),
            keys=keys,
            on_duplicate=on_duplicate,
            opts=Opts(delay, run_at, priority, queue, tags, ttl, parent, fail_fast, budget=budget),
            by_name=self.submit_unregistered,
        )

    def handle(self, task_id: str, task: TaskDef | str | None = None) -> TaskHandle[Any]:
        """A handle for a task submitted elsewhere (its result decodes by its registered kind,
        as plain JSON for a name not registered here)."""
        if task is None or (isinstance(task, str) and task not in self.registry):
            kind = task or ""
        else:
            kind = self.resolve_task(task).name
        return TaskHandle(task_id, self, kind)

    def decode_result(self, kind: str, data: bytes | None) -> Any:
        tdef = self.registry.get(kind)
        if tdef is None or data is None:
            return decode_json(data, task=kind, what="result")
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
        tag: str | None = None,
        tag_value: str | None = None,
        search: str | None = None,
    ) -> list[TaskInfo]:
        """Tasks in submission order, filtered; pass the last id as `after` for the next page.

        `tag` keeps tasks with that tag (with the value `tag_value`, when given); `search`
        those whose id or key starts with it. Every filter is served by an index on the
        SQL stores."""
        await self.open()
        recs = await self.store.tasks_list(
            TasksList(
                tuple(State(s) for s in states),
                queue,
                name,
                limit,
                after,
                tag_key=tag,
                tag_value=tag_value,
                text=search,
            )
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
        """A worker for this app's tasks (see `Worker` for the options), with its hooks."""
        options.setdefault("on_start", self.worker_start_hooks)
        options.setdefault("on_stop", self.worker_stop_hooks)
        options.setdefault("retention", self.retention)
        return Worker(self, **options)

    def on_worker_start(self, fn: H, /) -> H:
        """Run `fn` when a worker of this app starts, before it claims anything.

        Sync or async; it takes no argument or the worker's `resources` dict. Set keys on
        it or return a mapping to share a DB pool or an HTTP client with every handler as
        `ctx.resources[...]`. If it raises, the worker stops without claiming."""
        self.worker_start_hooks.append(fn)
        return fn

    def on_worker_stop(self, fn: H, /) -> H:
        """Run `fn` when a worker of this app stops, after its last attempt ended (also
        after an error), last registered first; it takes no argument or `resources`."""
        self.worker_stop_hooks.append(fn)
        return fn

    def schedule(
        self,
        name: str,
        task: TaskDef | str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        tz: str | None = None,
        misfire: str = "run_once",
        jitter: timedelta | None = None,
        paused: bool = False,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Schedule:
        """Declare a periodic task: `cron=` (in `tz`, UTC by default) or `every=`.

        Workers of this app store it at start (upsert by name) and fire each tick exactly
        once across the fleet. `misfire` says what ticks missed while no worker ran become:
        "run_once" (one task), "skip" (none) or "run_all" (one per tick, the latest 100).
        `jitter` delays each tick's task by a fixed amount in [0, jitter). See
        docs/howto/schedules.md. A bad `cron`, `tz` or option raises `ConfigurationError`."""
        if name in self.schedules:
            raise ConfigurationError(f"name: schedule {name!r} is declared twice")
        found = Schedule.build(
            name,
            self.resolve_task(task),
            payload,
            cron=cron,
            every=every,
            tz=tz,
            misfire=misfire,
            jitter=jitter,
            paused=paused,
            queue=queue,
            priority=priority,
        )
        self.schedules[name] = found
        return found

    async def fire_schedules(self) -> int:
        """What a worker does with this app's schedules, once, on the app's clock: store
        them (upsert by name), then fire those due. Returns how many tasks it submitted.
        For tests with a `ManualClock` (then `drain()`) and scripts without a worker."""
        await self.open()
        scheduler = Scheduler(self.store, self.clock, self.schedules, "fire_schedules")
        await scheduler.declare()
        return await scheduler.fire_due()

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
