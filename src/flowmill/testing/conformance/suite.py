"""The store conformance suite: the tests every backend must pass to be done.

A backend's test module subclasses `StoreConformance` (as `TestMyStore`) and provides an
async fixture `store` that yields an open, empty store, isolated from every other test,
and closes it afterwards. Tests drive time through `now_ms=`; none sleeps for a timer.

Each class tests one operation and carries its name (`tasks_claim`:
`TasksClaimConformance`; a facet of it: `TasksClaimLimitsConformance`). A few test what
no single operation owns: `TerminalConformance` (the state machine), `WakeConformance`
(the wake-up hints) and `WalkConformance` (random interleavings of every operation).

A test of something only some backends do starts with `require(store, "<capability>")`
(from `._util`): on a store whose `Capabilities` lack it, the test is skipped with a reason
naming the capability, never silently passed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ...store.contract import Store
from ._util import assert_history_legal
from .admin import (
    QueueSetPausedConformance,
    QueuesListConformance,
    TasksPurgeConformance,
    WorkerHeartbeatConformance,
    WorkersListConformance,
    WorkersPruneConformance,
)
from .budgets import (
    BudgetDefineConformance,
    BudgetReportUsageConformance,
    BudgetResetConformance,
    TasksClaimBudgetConformance,
    TasksClaimLimitsConformance,
)
from .children import (
    TaskCancelCascadeConformance,
    TasksFinishFailFastConformance,
    TasksFinishReapedConformance,
    TaskWaitChildrenConformance,
)
from .children_reads import ChildrenPageConformance, ChildrenSummaryConformance
from .claim import LeasesRenewConformance, TaskProgressConformance, TasksClaimConformance
from .dag import (
    DepsReconcileConformance,
    TasksInsertDepsConformance,
    WorkflowCancelConformance,
    WorkflowGetConformance,
)
from .finish import TasksFinishConformance, TerminalConformance
from .frames import FramesAppendConformance, FramesReadConformance, WaitForFramesConformance
from .hooks import HookDoneConformance, HooksClaimConformance
from .insert import TasksInsertConformance, TasksInsertDedupConformance
from .leases import (
    LeasesExpiredClockConformance,
    LeasesRenewStartConformance,
    ResumeSignalsConformance,
    SignalDeliverClosedConformance,
    TasksClaimStartConformance,
    TasksFinishReapedUnstartedConformance,
)
from .list_filters import TasksListFiltersConformance
from .meta import MetaGetOrSetConformance, TaskProgressEventConformance
from .ops import (
    EventsReadConformance,
    LeasesExpiredConformance,
    ResultsGetConformance,
    TaskCancelConformance,
    TaskGetConformance,
    TaskRetryConformance,
    TasksCountConformance,
    TasksExpireConformance,
    TasksListConformance,
    TasksPromoteConformance,
)
from .schedules import (
    SchedulesFireConformance,
    SchedulesListConformance,
    SchedulesSetPausedConformance,
    SchedulesUpsertConformance,
)
from .schema import MigrateConformance, SchemaVersionConformance
from .signals import (
    SignalDeliverConformance,
    WaitpointCreateConformance,
    WaitpointsListConformance,
)
from .spawn import TasksInsertSpawnConformance
from .suspend import SuspensionsExpireConformance, TaskSuspendConformance
from .wake import NowMsConformance, WakeConformance
from .walk import WalkConformance


class StoreConformance(
    # tasks
    TasksInsertConformance,
    TasksInsertDedupConformance,
    TasksInsertSpawnConformance,
    TasksInsertDepsConformance,
    TasksClaimConformance,
    TasksClaimBudgetConformance,
    TasksClaimLimitsConformance,
    TasksClaimStartConformance,
    LeasesRenewConformance,
    LeasesRenewStartConformance,
    TaskProgressConformance,
    TaskProgressEventConformance,
    TasksFinishConformance,
    TasksFinishFailFastConformance,
    TasksFinishReapedConformance,
    TasksFinishReapedUnstartedConformance,
    TasksPromoteConformance,
    TasksExpireConformance,
    LeasesExpiredConformance,
    LeasesExpiredClockConformance,
    TaskCancelConformance,
    TaskCancelCascadeConformance,
    TaskRetryConformance,
    TaskGetConformance,
    TasksListConformance,
    TasksListFiltersConformance,
    TasksCountConformance,
    ResultsGetConformance,
    EventsReadConformance,
    # parents and children
    TaskWaitChildrenConformance,
    ChildrenPageConformance,
    ChildrenSummaryConformance,
    HooksClaimConformance,
    HookDoneConformance,
    # dependencies and workflows
    WorkflowGetConformance,
    WorkflowCancelConformance,
    DepsReconcileConformance,
    # waiting on the outside world
    WaitpointCreateConformance,
    WaitpointsListConformance,
    SignalDeliverConformance,
    SignalDeliverClosedConformance,
    ResumeSignalsConformance,
    TaskSuspendConformance,
    SuspensionsExpireConformance,
    FramesAppendConformance,
    FramesReadConformance,
    WaitForFramesConformance,
    MetaGetOrSetConformance,
    # budgets
    BudgetDefineConformance,
    BudgetReportUsageConformance,
    BudgetResetConformance,
    # schedules
    SchedulesUpsertConformance,
    SchedulesListConformance,
    SchedulesFireConformance,
    SchedulesSetPausedConformance,
    # operators: workers, queues, retention, gauges
    WorkerHeartbeatConformance,
    WorkersListConformance,
    WorkersPruneConformance,
    QueueSetPausedConformance,
    QueuesListConformance,
    TasksPurgeConformance,
    # lifecycle and clock
    SchemaVersionConformance,
    MigrateConformance,
    NowMsConformance,
    # what no single operation owns
    TerminalConformance,
    WakeConformance,
    WalkConformance,
):
    """Every behaviour of the `Store` contract. Subclass it as `Test...` with a `store` fixture."""

    @pytest.fixture(autouse=True)
    async def _history_is_legal(self, store: Store) -> AsyncIterator[None]:
        """After every test: each move the store recorded is in TRANSITIONS."""
        yield
        await assert_history_legal(store)
