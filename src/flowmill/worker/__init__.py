"""The worker runtime: the worker loop, the claimer for loops of your own, their records,
and the worker's lifecycle (hooks, exit codes)."""

from ._claimer import ClaimedTask, Claimer, FailOutcome
from ._lifecycle import ExitCode, StartHookFailed
from ._maintenance import Maintenance
from ._outcome import Category
from ._runner import TimeoutClass
from ._stats import WorkerStats
from ._worker import Worker

__all__ = [
    "Category",
    "ClaimedTask",
    "Claimer",
    "ExitCode",
    "FailOutcome",
    "Maintenance",
    "StartHookFailed",
    "TimeoutClass",
    "Worker",
    "WorkerStats",
]
