"""The `Store` protocol: every operation a backend provides, grouped as the params modules are.

Each operation takes one frozen params dataclass (a few reads take plain ids). The engine
decides (retry, backoff, next state); the store applies, as a compare-and-set on
`(state, lease_epoch)`. Times are integer milliseconds since the Unix epoch; a `now_ms` of
`None` means "the store's own clock" (the database's, for a server backend), which is what
production code passes. Tests pass a fixed `now_ms` to drive time without sleeping.
`flowmill.testing.StoreConformance` checks a backend against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..._states import State
from .admin import (
    QueueRow,
    QueueSetPaused,
    QueuesList,
    TasksPurge,
    WorkerHeartbeat,
    WorkersList,
    WorkersPage,
    WorkersPrune,
)
from .budgets import BudgetDefine, BudgetReset, BudgetRow, BudgetUsage, UsageReport
from .capabilities import Capabilities, MigrateResult
from .dag import (
    DepsReconcile,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)
from .schedules import (
    FireOutcome,
    ScheduleFire,
    SchedulePause,
    ScheduleRow,
    SchedulesList,
    SchedulesUpsert,
)
from .signals import (
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
from .tasks import (
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


class BudgetsStore(Protocol):
    """Budgets and the database side of rate limits (`ClaimLimit` rides on `TasksClaim`)."""

    async def budget_define(self, p: BudgetDefine) -> BudgetRow: ...

    async def budget_reset(self, p: BudgetReset) -> BudgetRow:
        """`UnknownBudget` when there is no such budget."""

    async def budget_report_usage(self, p: BudgetUsage) -> UsageReport: ...

    async def budgets_get(
        self, budget_ids: Sequence[str], now_ms: int | None = None
    ) -> list[BudgetRow]:
        """The budgets named (all of them when `budget_ids` is empty), by id; unknown ids
        are left out."""


class DagStore(Protocol):
    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        """The upstream tasks of `task_id` with their states and results."""

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None: ...

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        """The newest runs first, counts only."""

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        """Returns how many nodes were cancelled or asked to stop."""

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        """Resolve dependencies whose upstream ended without being counted; returns how
        many dependency edges it resolved (0 when the push did its job)."""


class SignalsStore(Protocol):
    """Waitpoints, signals, suspensions, frames and the meta values the engine keeps."""

    async def waitpoint_create(self, p: WaitpointCreate) -> WaitpointRow: ...

    async def waitpoint_get(self, waitpoint_id: str) -> WaitpointRow | None: ...

    async def waitpoints_list(self, p: WaitpointsList) -> list[WaitpointInfo]:
        """A task's waitpoints, oldest first, with their state and signals (for operators)."""

    async def signal_deliver(self, p: SignalDeliver) -> DeliverOutcome: ...

    async def task_suspend(self, p: TaskSuspend) -> SuspendStatus: ...

    async def suspensions_expire(self, p: SuspensionsExpire) -> int: ...

    async def resume_signals(self, task_id: str) -> list[SignalRow]:
        """The signals consumed by the task's latest satisfied suspension, in order."""

    async def frames_append(self, p: FrameAppend) -> FrameRef: ...

    async def frames_read(self, p: FramesRead) -> FramesPage: ...

    async def wait_for_frames(self, timeout_s: float) -> None:
        """Return when frames may have been appended, or after `timeout_s`."""

    async def meta_get_or_set(self, key: str, value: str) -> str:
        """The stored value for `key`, storing `value` first if there is none (race-safe)."""


class SchedulesStore(Protocol):
    """Periodic tasks: one row per schedule; each firing is a compare-and-set that inserts
    its tasks in the same transaction (see `contract.schedules`)."""

    async def schedules_upsert(self, p: SchedulesUpsert) -> list[ScheduleRow]:
        """Every stored schedule after the upsert, by name."""

    async def schedules_list(self, p: SchedulesList) -> list[ScheduleRow]:
        """The stored schedules (those named, when `p.names` is not empty), by name."""

    async def schedules_fire(self, p: ScheduleFire) -> FireOutcome: ...

    async def schedules_set_paused(self, p: SchedulePause) -> ScheduleRow | None: ...


class AdminStore(Protocol):
    """The operator's operations: worker registry, queue pause, retention and gauges.
    Semantics are in each params class's docstring (`contract.admin`)."""

    async def worker_heartbeat(self, p: WorkerHeartbeat) -> None:
        """Upsert the worker's registry row; `last_seen` = now (see `WorkerHeartbeat`)."""

    async def workers_list(self, p: WorkersList) -> WorkersPage:
        """Every registry row by worker id, with the store clock's now to judge them by."""

    async def workers_prune(self, p: WorkersPrune) -> int:
        """Delete rows not seen for `older_than_ms`; returns how many."""

    async def queue_set_paused(self, p: QueueSetPaused) -> bool:
        """Store the pause flag that `tasks_claim` obeys; returns whether it changed."""

    async def queues_list(self, p: QueuesList) -> list[QueueRow]:
        """Every queue with tasks or a pause flag: counts by state, oldest ready age."""

    async def tasks_purge(self, p: TasksPurge) -> int:
        """Delete one batch of old finished tasks with everything they own; returns how many."""


@runtime_checkable
class Store(SignalsStore, DagStore, BudgetsStore, SchedulesStore, AdminStore, Protocol):
    """What every backend provides, the `SignalsStore`, `DagStore`, `BudgetsStore`,
    `SchedulesStore` and `AdminStore` operations.

    `flowmill.testing.StoreConformance` checks it."""

    url: str
    capabilities: Capabilities

    async def schema_version(self) -> int | None:
        """The stored schema version, or None where there is no store or no schema yet.

        Callable before `open()`; creates and changes nothing (a file backend opens its
        file read-only). Raises `SchemaError` for a store that is not flowmill's."""

    async def migrate(self) -> MigrateResult:
        """Create or upgrade the schema (refusing a newer one) and say what was done.

        Callable before `open()`, which migrates the same way."""

    async def open(self) -> None:
        """Connect, create or upgrade the schema (refusing a newer one)."""

    async def close(self) -> None: ...

    async def now_ms(self) -> int:
        """The store's clock: the clock lease expiry, due times and TTLs are judged by."""

    async def tasks_insert(self, p: TasksInsert) -> list[InsertOutcome]: ...

    async def tasks_claim(self, p: TasksClaim) -> list[ClaimedRow]: ...

    async def leases_renew(self, p: LeasesRenew) -> list[RenewOutcome]: ...

    async def tasks_finish(self, p: TasksFinish) -> list[FinishOutcome]: ...

    async def tasks_promote(self, p: TasksPromote) -> int: ...

    async def tasks_expire(self, p: TasksExpire) -> int: ...

    async def leases_expired(self, p: LeasesExpired) -> list[ExpiredLease]: ...

    async def task_cancel(self, p: TaskCancel) -> CancelOutcome: ...

    async def task_retry(self, p: TaskRetry) -> State: ...

    async def task_progress(self, p: TaskProgress) -> None: ...

    async def task_get(self, task_id: str) -> TaskRecord | None: ...

    async def tasks_list(self, p: TasksList) -> list[TaskRecord]: ...

    async def tasks_count(self) -> list[CountRow]: ...

    async def results_get(self, task_ids: Sequence[str]) -> list[ResultRow]:
        """Result rows of those tasks that have ended; tasks still active are left out."""

    async def events_read(self, p: EventsRead) -> list[Event]: ...

    async def task_wait_children(self, p: TaskWaitChildren) -> State:
        """Park a task whose execute returned; returns the state it moved to."""

    async def children_page(self, p: ChildrenPage) -> list[ChildRow]: ...

    async def children_summary(self, p: ChildrenSummaryQuery) -> ChildrenSummary: ...

    async def hooks_claim(self, p: HooksClaim) -> list[HookRow]: ...

    async def hook_done(self, p: HookDone) -> None: ...

    async def wait_for_work(self, timeout_s: float) -> None:
        """Return when new ready work may exist (a hint), or after `timeout_s`."""

    async def wait_for_finish(self, timeout_s: float) -> None:
        """Return when some task may have ended or been asked to cancel, or after `timeout_s`."""
