"""flowmill: durable task execution for Python, embedded on SQLite or across machines.

The names exported here are the public API; everything in a module whose name starts with
an underscore may change without notice.
"""

from ._app import App, TaskInfo
from ._children import ChildrenReport, ChildResult
from ._claimer import ClaimedTask, Claimer, FailOutcome
from ._clock import Clock, ManualClock, SystemClock
from ._context import Context
from ._errors import (
    Cancelled,
    ConfigurationError,
    DuplicateTask,
    Fail,
    FlowmillError,
    IllegalTransition,
    InvalidParent,
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
    UnknownTask,
)
from ._executor import Executor
from ._handle import TaskHandle
from ._outcome import Category
from ._retry import Exponential, Fixed, Linear, Retry, RetryAction, RetryDecision, decide_retry
from ._runner import TimeoutClass
from ._states import TERMINAL, TRANSITIONS, Phase, State
from ._task import Priority, TaskDef
from ._worker import Worker, WorkerStats
from .store._base import ErrorGroup, ErrorInfo, Event

__version__ = "0.1.0"

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "App",
    "Cancelled",
    "Category",
    "ChildResult",
    "ChildrenReport",
    "ClaimedTask",
    "Claimer",
    "Clock",
    "ConfigurationError",
    "Context",
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
    "IllegalTransition",
    "InvalidParent",
    "LeaseLost",
    "Linear",
    "ManualClock",
    "PayloadError",
    "PayloadTooLarge",
    "Phase",
    "Priority",
    "Retry",
    "RetryAction",
    "RetryCapExceeded",
    "RetryDecision",
    "RetryLater",
    "SchemaError",
    "State",
    "StoreError",
    "StoreUnavailable",
    "SystemClock",
    "TaskAlreadyFinished",
    "TaskDef",
    "TaskFailed",
    "TaskHandle",
    "TaskInfo",
    "TaskNotFound",
    "TaskTimeout",
    "TimeoutClass",
    "UnknownTask",
    "Worker",
    "WorkerStats",
    "__version__",
    "decide_retry",
]
