"""The `Runtime` protocol: what the worker's parts and in-task code use of the application.

`App` implements it. Everything below `App` (the worker, the claimer, the context, handles,
signals, workflows) is given a `Runtime` and never imports `App`; tests may pass a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from ._clock import Clock
from ._limits import ClaimLimits
from ._states import State
from ._task import TaskDef
from .store.contract import Store
from .store.contract.tasks import ResultRow

ConditionFn = Callable[[Any], object]
"""A workflow node's `when=` callable (it is given the node's `Upstream`)."""


class ConditionRegistry(Protocol):
    """Finds `when=` callables by the reference stored with their node."""

    def register(self, workflow: str, node: str, fn: ConditionFn) -> str: ...

    def find(self, ref: str) -> ConditionFn | None: ...


class ResultWaiting(Protocol):
    """Waits for a task's stored result (one shared loop per runtime)."""

    async def wait(self, task_id: str, timeout_s: float | None) -> ResultRow: ...


class Runtime(Protocol):
    """The application as the engine below it sees it: store, clock, tasks, codecs."""

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def registry(self) -> Mapping[str, TaskDef]:
        """Registered tasks by name."""
        ...

    @property
    def max_payload_bytes(self) -> int: ...

    @property
    def conditions(self) -> ConditionRegistry: ...

    @property
    def results(self) -> ResultWaiting: ...

    async def open(self) -> object:
        """Open the store (first use); a no-op once open."""
        ...

    def resolve_task(self, task: TaskDef | str) -> TaskDef:
        """The registered definition of a task given by object or name (`UnknownTask`)."""
        ...

    def task_names(self) -> list[str]: ...

    def queues(self) -> set[str]: ...

    def claim_limits(self, queues: Iterable[str]) -> ClaimLimits: ...

    async def require_budget(self, budget_id: str) -> None:
        """`UnknownBudget` unless the budget exists."""
        ...

    def decode_result(self, kind: str, data: bytes | None) -> Any:
        """A stored result decoded by its task's registered codec (JSON if unknown)."""
        ...

    async def cancel(self, task_id: str, reason: str = ...) -> State: ...
