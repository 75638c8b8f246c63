"""What a parent sees of its children: typed results, and a summary of how they ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from ._states import CHILD_FAILURES, State
from .store.contract.tasks import ChildrenSummary, ErrorGroup, ErrorInfo

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ChildResult(Generic[R]):
    """One child: `ok` when it completed, then `result` is typed by the child's task."""

    id: str
    kind: str
    state: State
    ok: bool
    result: R | None
    error: ErrorInfo | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ChildrenReport:
    """How a parent's children ended: `str(report)` reads "3 of 238,000 failed: ..."."""

    total: int
    by_state: dict[State, int]
    top_errors: tuple[ErrorGroup, ...]

    @classmethod
    def of(cls, s: ChildrenSummary) -> ChildrenReport:
        return cls(s.total, dict(s.by_state), s.top_errors)

    @property
    def failed(self) -> int:
        return sum(n for st, n in self.by_state.items() if st in CHILD_FAILURES)

    @property
    def completed(self) -> int:
        return self.by_state.get(State.COMPLETED, 0)

    def __str__(self) -> str:
        head = f"{self.failed:,} of {self.total:,} failed"
        if not self.top_errors:
            return head
        parts = [f"{g.message} on {', '.join(g.example_ids)}" for g in self.top_errors]
        return f"{head}: {'; '.join(parts)}"
