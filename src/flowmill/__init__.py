"""flowmill: durable task execution for Python, embedded on SQLite or across machines.

The names in `__all__` are the public API a user needs; every exception is in
`flowmill.errors` (the most caught are here too). The other names imported here stay
importable as before. Everything in a module whose name starts with an underscore may
change without notice.
"""

from . import errors
from ._app import App, TaskInfo
from ._budgets import BudgetStatus, StatusReport
from ._children import ChildrenReport, ChildResult
from ._clock import Clock, ManualClock, SystemClock
from ._conditions import Condition, Count, Signal
from ._context import Context
from ._executor import Executor
from ._handle import TaskHandle
from ._inspect import Undecodable
from ._limits import RateLimit
from ._operate import MetricsSnapshot, QueueInfo, WorkerInfo
from ._retry import Exponential, Fixed, Linear, Retry, RetryAction, RetryDecision, decide_retry
from ._signals import Frame, ResumeSignal, Waitpoint
from ._states import TERMINAL, TRANSITIONS, Phase, State
from ._sync import SyncTaskHandle
from ._task import Priority, TaskDef
from ._version import __version__ as __version__
from .errors import (
    Cancelled,
    ConfigurationError,
    DuplicateTask,
    Fail,
    FlowmillError,
    InvalidUsage,
    InvalidWorkflow,
    LeaseLost,
    PayloadError,
    RetryLater,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    UnknownBudget,
    UpstreamFailed,
    WorkflowFailed,
)
from .errors import FrameTooLarge as FrameTooLarge
from .errors import IllegalTransition as IllegalTransition
from .errors import InvalidParent as InvalidParent
from .errors import PayloadTooLarge as PayloadTooLarge
from .errors import RetryCapExceeded as RetryCapExceeded
from .errors import SchemaError as SchemaError
from .errors import StoreError as StoreError
from .errors import StoreUnavailable as StoreUnavailable
from .errors import TaskAlreadyFinished as TaskAlreadyFinished
from .errors import UnknownTask as UnknownTask
from .errors import WorkflowNotFound as WorkflowNotFound
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
    "InvalidUsage",
    "InvalidWorkflow",
    "LeaseLost",
    "Linear",
    "ManualClock",
    "MetricsSnapshot",
    "Node",
    "NodeStatus",
    "OnTimeout",
    "PayloadError",
    "Phase",
    "Priority",
    "QueueInfo",
    "RateLimit",
    "ResumeSignal",
    "Retry",
    "RetryAction",
    "RetryDecision",
    "RetryLater",
    "RunState",
    "Signal",
    "State",
    "StatusReport",
    "SuspendStatus",
    "SyncTaskHandle",
    "SystemClock",
    "TaskDef",
    "TaskFailed",
    "TaskHandle",
    "TaskInfo",
    "TaskNotFound",
    "TaskTimeout",
    "TimeoutClass",
    "Undecodable",
    "UnknownBudget",
    "Upstream",
    "UpstreamFailed",
    "UsageReport",
    "UsageStatus",
    "Waitpoint",
    "Worker",
    "WorkerInfo",
    "WorkerStats",
    "Workflow",
    "WorkflowFailed",
    "WorkflowResult",
    "WorkflowRun",
    "WorkflowStatus",
    "__version__",
    "decide_retry",
    "errors",
    "fan_out_in",
    "pipeline",
]
