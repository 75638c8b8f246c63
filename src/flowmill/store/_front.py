"""StoreFront: the one door to a store. Every store call from the engine, the CLI and the
web layer goes through it; it wraps whichever backend `open_store(url)` built.

In one place it does what every operation needs, whatever the backend:
- argument guards: input no backend can honour fails here with the same typed error on
  every backend, and calls that ask for nothing (an empty batch, a limit of 0) answer
  without a round trip;
- one telemetry event per operation (`StoreEvent`) for the subscribers registered with
  `subscribe()`; while nobody subscribes there is no timing and no event, only a check;
- the last-resort translation of an unexpected backend exception (anything not a
  `FlowmillError`) into `StoreError`, naming the operation, with the original as cause;
- an operation the backend does not provide fails with `StoreError` naming it, instead
  of an `AttributeError` deep in the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from time import perf_counter
from types import TracebackType
from typing import Literal

from .._states import TERMINAL, TRANSITIONS, State
from ..errors import ConfigurationError, FlowmillError, FrameTooLarge, StoreError
from ._common.budget_rules import check_claim_limit, check_dimensions, check_limits
from ._common.dag_rules import check, has_links
from .contract.admin import (
    QueueRow,
    QueueSetPaused,
    QueuesList,
    TasksPurge,
    WorkerHeartbeat,
    WorkersList,
    WorkersPage,
    WorkersPrune,
)
from .contract.budgets import BudgetDefine, BudgetReset, BudgetRow, BudgetUsage, UsageReport
from .contract.capabilities import Capabilities, MigrateResult
from .contract.dag import (
    DepsReconcile,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)
from .contract.protocol import Store
from .contract.schedules import (
    MISFIRE_POLICIES,
    FireOutcome,
    ScheduleFire,
    SchedulePause,
    ScheduleRow,
    SchedulesList,
    SchedulesUpsert,
)
from .contract.signals import (
    MAX_FRAME_BYTES,
    DeliverOutcome,
    FrameAppend,
    FrameRef,
    FramesPage,
    FramesRead,
    SignalDeliver,
    SignalRow,
    SuspendStatus,
    SuspensionsExpire,
    TaskSuspend,
    WaitpointCreate,
    WaitpointInfo,
    WaitpointRow,
    WaitpointsList,
)
from .contract.tasks import (
    ON_DUPLICATE_CHOICES,
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

log = logging.getLogger("flowmill.store")

# Every operation of the `Store` contract, by the name the events carry.
OPERATIONS: tuple[str, ...] = (
    "open", "close", "now_ms", "schema_version", "migrate",
    "tasks_insert", "tasks_claim", "leases_renew", "tasks_finish", "tasks_promote",
    "tasks_expire", "leases_expired", "task_cancel", "task_retry", "task_progress",
    "task_get", "tasks_list", "tasks_count", "results_get", "events_read",
    "task_wait_children", "children_page", "children_summary", "hooks_claim", "hook_done",
    "wait_for_work", "wait_for_finish",
    "waitpoint_create", "waitpoint_get", "waitpoints_list", "signal_deliver", "task_suspend",
    "suspensions_expire", "resume_signals", "frames_append", "frames_read",
    "wait_for_frames", "meta_get_or_set",
    "upstream_get", "workflow_get", "workflows_list", "workflow_cancel", "deps_reconcile",
    "budget_define", "budget_reset", "budget_report_usage", "budgets_get",
    "schedules_upsert", "schedules_list", "schedules_fire", "schedules_set_paused",
    "worker_heartbeat", "workers_list", "workers_prune", "queue_set_paused", "queues_list",
    "tasks_purge",
)  # fmt: skip

# The targets a running attempt may be finished as (the state machine's edges out of running).
FINISH_TARGETS = frozenset(t for (s, t) in TRANSITIONS if s is State.RUNNING)


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """One store operation, as telemetry subscribers see it.

    `operation` is the contract's name (`tasks_claim`); `duration_s` the wall time the call
    took, in seconds; `outcome` "ok" or "error"; `error_type` the class name of the
    exception the caller received (`StoreError` for a translated one), None when ok."""

    operation: str
    duration_s: float
    outcome: Literal["ok", "error"]
    error_type: str | None = None


Subscriber = Callable[[StoreEvent], None]


def _translated(op: str, exc: BaseException) -> StoreError | None:
    """The `StoreError` an unexpected backend exception becomes; None for one that passes:
    flowmill's own errors, and cancellation or exit (not `Exception`s)."""
    if isinstance(exc, FlowmillError) or not isinstance(exc, Exception):
        return None
    return StoreError(f"store operation {op} failed: {type(exc).__name__}: {exc}")


class _Quiet:
    """The door while nobody subscribes: translation only; shared, as it holds no state."""

    __slots__ = ("op",)

    def __init__(self, op: str) -> None:
        self.op = op

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and (err := _translated(self.op, exc)) is not None:
            raise err from exc


class _Observed:
    """The door while someone subscribes: times the call and sends its event."""

    __slots__ = ("front", "op", "started")

    def __init__(self, front: StoreFront, op: str) -> None:
        self.front = front
        self.op = op
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = perf_counter()

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        took = perf_counter() - self.started
        if exc is None:
            self.front._emit(StoreEvent(self.op, took, "ok"))
            return
        err = _translated(self.op, exc)
        self.front._emit(StoreEvent(self.op, took, "error", type(err or exc).__name__))
        if err is not None:
            raise err from exc


_QUIET = {op: _Quiet(op) for op in OPERATIONS}  # immutable: one per operation, shared


class StoreFront:
    """The one door to a store: guards, one telemetry event per operation, and translation
    of unexpected errors, around whichever backend `open_store(url)` built.

    `front.subscribe(callback)` registers a callback that receives a `StoreEvent` after
    every operation (synchronously, on the caller's task: keep it quick, never block);
    it returns the function that unsubscribes it. A callback that raises is logged and
    kept; the operation is not affected."""

    def __init__(self, backend: Store) -> None:
        if isinstance(backend, StoreFront):  # never two doors: unwrap
            backend = backend.backend
        self.backend: Store = backend
        self.url: str = backend.url
        # What the backend is and can do: callers branch on these flags, never on a class.
        self.capabilities: Capabilities = backend.capabilities
        self._subscribers: tuple[Subscriber, ...] = ()
        self._absent = frozenset(
            op for op in OPERATIONS if not callable(getattr(backend, op, None))
        )

    def __repr__(self) -> str:
        return f"StoreFront({self.backend!r})"

    # -- telemetry ---------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Send `callback` a `StoreEvent` after each operation; returns the unsubscriber."""
        self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            subs = list(self._subscribers)
            if callback in subs:
                subs.remove(callback)
                self._subscribers = tuple(subs)

        return unsubscribe

    def _emit(self, event: StoreEvent) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("flowmill: a store telemetry subscriber failed on %s", event)

    def _door(self, op: str) -> _Quiet | _Observed:
        if self._absent and op in self._absent:
            self._refuse(op)
        return _Observed(self, op) if self._subscribers else _QUIET[op]

    def _refuse(self, op: str) -> None:
        kind = type(self.backend).__name__  # not the URL: it may hold a password
        err = StoreError(f"this store ({kind}) cannot do {op}: its backend lacks it")
        if self._subscribers:
            self._emit(StoreEvent(op, 0.0, "error", type(err).__name__))
        raise err

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        with self._door("open"):
            await self.backend.open()

    async def close(self) -> None:
        with self._door("close"):
            await self.backend.close()

    async def now_ms(self) -> int:
        with self._door("now_ms"):
            return await self.backend.now_ms()

    async def schema_version(self) -> int | None:
        with self._door("schema_version"):
            return await self.backend.schema_version()

    async def migrate(self) -> MigrateResult:
        with self._door("migrate"):
            return await self.backend.migrate()

    # -- tasks -------------------------------------------------------------------------

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]:
        with self._door("tasks_insert"):
            if p.on_duplicate not in ON_DUPLICATE_CHOICES:
                raise ConfigurationError(
                    f"on_duplicate must be one of {', '.join(ON_DUPLICATE_CHOICES)}, "
                    f"got {p.on_duplicate!r}"
                )
            if not p.tasks and p.fence is None:
                return []  # (an empty spawn still goes in: a stale fence is refused)
            if p.workflow is not None or has_links(p.tasks):
                for t in p.tasks:
                    check(t)
                    if t.depends_on and t.dedup_key is not None and p.on_duplicate == "replace":
                        raise ConfigurationError(
                            "a task with dependencies cannot replace a duplicate"
                        )
            return await self.backend.tasks_insert(p)

    async def tasks_claim(self, p: TasksClaim) -> list[ClaimedRow]:
        with self._door("tasks_claim"):
            if p.limit <= 0 or not p.kinds or not p.queues:
                return []
            for limit in p.limits:
                check_claim_limit(limit)
            return await self.backend.tasks_claim(p)

    async def leases_renew(self, p: LeasesRenew) -> list[RenewOutcome]:
        with self._door("leases_renew"):
            if not p.leases:
                return []
            return await self.backend.leases_renew(p)

    async def tasks_finish(self, p: TasksFinish) -> list[FinishOutcome]:
        with self._door("tasks_finish"):
            for f in p.items:
                if f.target not in FINISH_TARGETS:
                    raise StoreError(f"a running task cannot be finished as {f.target}")
                if f.target is State.SCHEDULED and f.delay_ms is None and f.run_at_ms is None:
                    raise StoreError("a finish to scheduled needs delay_ms or run_at_ms")
            if not p.items:
                return []
            return await self.backend.tasks_finish(p)

    async def tasks_promote(self, p: TasksPromote) -> int:
        with self._door("tasks_promote"):
            if p.limit <= 0:
                return 0
            return await self.backend.tasks_promote(p)

    async def tasks_expire(self, p: TasksExpire) -> int:
        with self._door("tasks_expire"):
            if p.limit <= 0:
                return 0
            return await self.backend.tasks_expire(p)

    async def leases_expired(self, p: LeasesExpired) -> list[ExpiredLease]:
        with self._door("leases_expired"):
            if p.limit <= 0:
                return []
            return await self.backend.leases_expired(p)

    async def task_cancel(self, p: TaskCancel) -> CancelOutcome:
        with self._door("task_cancel"):
            return await self.backend.task_cancel(p)

    async def task_retry(self, p: TaskRetry) -> State:
        with self._door("task_retry"):
            return await self.backend.task_retry(p)

    async def task_progress(self, p: TaskProgress) -> None:
        with self._door("task_progress"):
            await self.backend.task_progress(p)

    async def task_get(self, task_id: str) -> TaskRecord | None:
        with self._door("task_get"):
            return await self.backend.task_get(task_id)

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]:
        with self._door("tasks_list"):
            if p.tag_value is not None and p.tag_key is None:
                raise ConfigurationError("tasks_list: tag_value needs tag_key")
            if p.limit <= 0:
                return []
            if p.text == "":  # every id starts with it: no filter
                p = replace(p, text=None)
            return await self.backend.tasks_list(p)

    async def tasks_count(self) -> list[CountRow]:
        with self._door("tasks_count"):
            return await self.backend.tasks_count()

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        with self._door("results_get"):
            if not task_ids:
                return []
            return await self.backend.results_get(task_ids)

    async def events_read(self, p: EventsRead) -> list[Event]:
        with self._door("events_read"):
            if p.limit <= 0:
                return []
            return await self.backend.events_read(p)

    async def task_wait_children(self, p: TaskWaitChildren) -> State:
        with self._door("task_wait_children"):
            return await self.backend.task_wait_children(p)

    async def children_page(self, p: ChildrenPage) -> list[ChildRow]:
        with self._door("children_page"):
            if p.limit <= 0:
                return []
            return await self.backend.children_page(p)

    async def children_summary(self, p: ChildrenSummaryQuery) -> ChildrenSummary:
        with self._door("children_summary"):
            return await self.backend.children_summary(p)

    async def hooks_claim(self, p: HooksClaim) -> list[HookRow]:
        with self._door("hooks_claim"):
            if not p.kinds or p.limit <= 0:
                return []
            return await self.backend.hooks_claim(p)

    async def hook_done(self, p: HookDone) -> None:
        with self._door("hook_done"):
            await self.backend.hook_done(p)

    async def wait_for_work(self, timeout_s: float) -> None:
        with self._door("wait_for_work"):
            await self.backend.wait_for_work(timeout_s)

    async def wait_for_finish(self, timeout_s: float) -> None:
        with self._door("wait_for_finish"):
            await self.backend.wait_for_finish(timeout_s)

    # -- waitpoints, signals, suspensions, frames ----------------------------------------

    async def waitpoint_create(self, p: WaitpointCreate) -> WaitpointRow:
        with self._door("waitpoint_create"):
            return await self.backend.waitpoint_create(p)

    async def waitpoint_get(self, waitpoint_id: str) -> WaitpointRow | None:
        with self._door("waitpoint_get"):
            return await self.backend.waitpoint_get(waitpoint_id)

    async def waitpoints_list(self, p: WaitpointsList) -> list[WaitpointInfo]:
        with self._door("waitpoints_list"):
            if p.limit <= 0:
                return []
            return await self.backend.waitpoints_list(p)

    async def signal_deliver(self, p: SignalDeliver) -> DeliverOutcome:
        with self._door("signal_deliver"):
            return await self.backend.signal_deliver(p)

    async def task_suspend(self, p: TaskSuspend) -> SuspendStatus:
        with self._door("task_suspend"):
            return await self.backend.task_suspend(p)

    async def suspensions_expire(self, p: SuspensionsExpire) -> int:
        with self._door("suspensions_expire"):
            if p.limit <= 0:
                return 0
            return await self.backend.suspensions_expire(p)

    async def resume_signals(self, task_id: str) -> list[SignalRow]:
        with self._door("resume_signals"):
            return await self.backend.resume_signals(task_id)

    async def frames_append(self, p: FrameAppend) -> FrameRef:
        with self._door("frames_append"):
            if len(p.payload) > MAX_FRAME_BYTES:
                raise FrameTooLarge("an output frame", len(p.payload), MAX_FRAME_BYTES)
            return await self.backend.frames_append(p)

    async def frames_read(self, p: FramesRead) -> FramesPage:
        with self._door("frames_read"):
            return await self.backend.frames_read(p)

    async def wait_for_frames(self, timeout_s: float) -> None:
        with self._door("wait_for_frames"):
            await self.backend.wait_for_frames(timeout_s)

    async def meta_get_or_set(self, key: str, value: str) -> str:
        with self._door("meta_get_or_set"):
            return await self.backend.meta_get_or_set(key, value)

    # -- dependencies and workflows ------------------------------------------------------

    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        with self._door("upstream_get"):
            return await self.backend.upstream_get(task_id)

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None:
        with self._door("workflow_get"):
            return await self.backend.workflow_get(p)

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        with self._door("workflows_list"):
            if p.limit <= 0:
                return []
            return await self.backend.workflows_list(p)

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        with self._door("workflow_cancel"):
            return await self.backend.workflow_cancel(p)

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        with self._door("deps_reconcile"):
            if p.limit <= 0:
                return 0
            return await self.backend.deps_reconcile(p)

    # -- budgets -------------------------------------------------------------------------

    async def budget_define(self, p: BudgetDefine) -> BudgetRow:
        with self._door("budget_define"):
            check_limits(p.hard, p.soft)
            return await self.backend.budget_define(p)

    async def budget_reset(self, p: BudgetReset) -> BudgetRow:
        with self._door("budget_reset"):
            return await self.backend.budget_reset(p)

    async def budget_report_usage(self, p: BudgetUsage) -> UsageReport:
        with self._door("budget_report_usage"):
            check_dimensions(p.dimensions)  # bad input fails before any write
            return await self.backend.budget_report_usage(p)

    async def budgets_get(
        self, budget_ids: Sequence[str], now_ms: int | None = None
    ) -> list[BudgetRow]:
        with self._door("budgets_get"):
            return await self.backend.budgets_get(budget_ids, now_ms)

    # -- schedules ---------------------------------------------------------------------

    async def schedules_upsert(self, p: SchedulesUpsert) -> list[ScheduleRow]:
        with self._door("schedules_upsert"):
            names = [d.name for d in p.schedules]
            if len(set(names)) != len(names):
                raise ConfigurationError(f"schedule names must be unique, got {sorted(names)}")
            for d in p.schedules:
                if d.misfire not in MISFIRE_POLICIES:
                    raise ConfigurationError(
                        f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, got {d.misfire!r}"
                    )
            return await self.backend.schedules_upsert(p)

    async def schedules_list(self, p: SchedulesList) -> list[ScheduleRow]:
        with self._door("schedules_list"):
            return await self.backend.schedules_list(p)

    async def schedules_fire(self, p: ScheduleFire) -> FireOutcome:
        with self._door("schedules_fire"):
            return await self.backend.schedules_fire(p)

    async def schedules_set_paused(self, p: SchedulePause) -> ScheduleRow | None:
        with self._door("schedules_set_paused"):
            return await self.backend.schedules_set_paused(p)

    # -- operators: workers, queues, retention, gauges ------------------------------------

    async def worker_heartbeat(self, p: WorkerHeartbeat) -> None:
        with self._door("worker_heartbeat"):
            if p.heartbeat_ms <= 0:
                raise ConfigurationError(f"heartbeat_ms must be > 0, got {p.heartbeat_ms}")
            await self.backend.worker_heartbeat(p)

    async def workers_list(self, p: WorkersList) -> WorkersPage:
        with self._door("workers_list"):
            return await self.backend.workers_list(p)

    async def workers_prune(self, p: WorkersPrune) -> int:
        with self._door("workers_prune"):
            if p.older_than_ms < 0:
                raise ConfigurationError(f"older_than_ms must be >= 0, got {p.older_than_ms}")
            return await self.backend.workers_prune(p)

    async def queue_set_paused(self, p: QueueSetPaused) -> bool:
        with self._door("queue_set_paused"):
            if not p.queue:
                raise ConfigurationError("a queue name must not be empty")
            return await self.backend.queue_set_paused(p)

    async def queues_list(self, p: QueuesList) -> list[QueueRow]:
        with self._door("queues_list"):
            return await self.backend.queues_list(p)

    async def tasks_purge(self, p: TasksPurge) -> int:
        with self._door("tasks_purge"):
            active = [State(s).value for s in p.states if State(s) not in TERMINAL]
            if active:
                raise ConfigurationError(
                    "only finished tasks can be purged; not terminal: " + ", ".join(active)
                )
            if p.limit <= 0 or not p.states:
                return 0
            return await self.backend.tasks_purge(p)


__all__ = ["OPERATIONS", "StoreEvent", "StoreFront", "Subscriber"]
