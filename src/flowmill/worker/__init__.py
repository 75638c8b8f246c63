"""The worker runtime: the worker loop, the claimer for loops of your own, and their records."""

from ._claimer import ClaimedTask, Claimer, FailOutcome
from ._maintenance import Maintenance
from ._outcome import Category
from ._runner import TimeoutClass
from ._stats import WorkerStats
from ._worker import Worker

__all__ = [
    "Category",
    "ClaimedTask",
    "Claimer",
    "FailOutcome",
    "Maintenance",
    "TimeoutClass",
    "Worker",
    "WorkerStats",
]
