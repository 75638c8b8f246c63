"""flowmill: durable task execution for Python, embedded on SQLite or across machines.

The names exported here are the public API; everything in a module whose name starts with
an underscore may change without notice.
"""

from ._app import App, TaskInfo
from ._budgets import BudgetStatus, StatusReport
from ._children import ChildrenReport, ChildResult
from ._clock import Clock, ManualClock, SystemClock
from ._conditions import Condition, Count, Signal
from ._context import Context
from ._executor import Executor
from ._handle import TaskHandle
from ._limits import RateLimit
from ._retry import Exponential, Fixed, Linear, Retry, RetryAction, RetryDecision, decide_retry
from ._signals import Frame, ResumeSignal, Waitpoint
from ._states import TERMINAL, TRANSITIONS, Phase, State
from ._task import Priority, TaskDef
from .errors import (
    Cancelled,
    ConfigurationError,
    DuplicateTask,
    Fail,
    FlowmillError,
    FrameTooLarge,
    IllegalTransition,
    InvalidParent,
    InvalidUsage,
    InvalidWorkflow,
    LeaseLost,
    PayloadError,
    PayloadTooLarge,
    RetryCapExceeded,
    RetryLater,
    SchemaError,
    StoreError,
    StoreUnavailable,
    TaskAlreadyFinished,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    UnknownBudget,
    UnknownTask,
    UpstreamFailed,
    WorkflowFailed,
    WorkflowNotFound,
)
from .store.contract.budgets import UsageReport, UsageStatus
from .store.contract.signals import DeliverOutcome, DeliverStatus, OnTimeout, SuspendStatus
from .store.contract.tasks import ErrorGroup, ErrorInfo, Event
from .worker import Category, ClaimedTask, Claimer, FailOutcome, TimeoutClass, Worker, WorkerStats
from .workflows import (
    Node,
    NodeStatus,
    RunState,
    Upstream,
    Workflow,
    WorkflowResult,
    WorkflowRun,
    WorkflowStatus,
    fan_out_in,
    pipeline,
)

__version__ = "0.1.0"

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "App",
    "BudgetStatus",
    "Cancelled",
    "Category",
    "ChildResult",
    "ChildrenReport",
    "ClaimedTask",
    "Claimer",
    "Clock",
    "Condition",
    "ConfigurationError",
    "Context",
    "Count",
    "DeliverOutcome",
    "DeliverStatus",
    "DuplicateTask",
    "ErrorGroup",
    "ErrorInfo",
    "Event",
    "Executor",
    "Exponential",
    "Fail",
    "FailOutcome",
    "Fixed",
    "FlowmillError",
    "Frame",
    "FrameTooLarge",
    "IllegalTransition",
    "InvalidParent",
    "InvalidUsage",
    "InvalidWorkflow",
    "LeaseLost",
    "Linear",
    "ManualClock",
    "Node",
    "NodeStatus",
    "OnTimeout",
    "PayloadError",
    "PayloadTooLarge",
    "Phase",
    "Priority",
    "RateLimit",
    "ResumeSignal",
    "Retry",
    "RetryAction",
    "RetryCapExceeded",
    "RetryDecision",
    "RetryLater",
    "RunState",
    "SchemaError",
    "Signal",
    "State",
    "StatusReport",
    "StoreError",
    "StoreUnavailable",
    "SuspendStatus",
    "SystemClock",
    "TaskAlreadyFinished",
    "TaskDef",
    "TaskFailed",
    "TaskHandle",
    "TaskInfo",
    "TaskNotFound",
    "TaskTimeout",
    "TimeoutClass",
    "UnknownBudget",
    "UnknownTask",
    "Upstream",
    "UpstreamFailed",
    "UsageReport",
    "UsageStatus",
    "Waitpoint",
    "Worker",
    "WorkerStats",
    "Workflow",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowResult",
    "WorkflowRun",
    "WorkflowStatus",
    "__version__",
    "decide_retry",
    "fan_out_in",
    "pipeline",
]
