"""The task state machine: one table that every store transition is checked against."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from .errors import IllegalTransition


class State(StrEnum):
    """Where a task is in its life. The docstring of each table row says who moves it."""

    SCHEDULED = "scheduled"
    BLOCKED = "blocked"
    READY = "ready"
    RUNNING = "running"
    WAITING_CHILDREN = "waiting_children"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class Phase(StrEnum):
    """Which half of an executor a claim runs: `execute`, or `finalize` after the children."""

    EXECUTE = "execute"
    FINALIZE = "finalize"


S = State

TERMINAL: Final = frozenset(
    {S.COMPLETED, S.FAILED, S.DEAD_LETTERED, S.CANCELLED, S.SKIPPED, S.EXPIRED}
)
ACTIVE: Final = frozenset(set(State) - TERMINAL)
# How a child may end that counts as a failure for its parent (fail_fast, summaries); a
# cancelled or skipped child does not.
CHILD_FAILURES: Final = frozenset({S.FAILED, S.DEAD_LETTERED, S.EXPIRED})

# (source, target) -> who makes the move. This is the whole state machine: stores build
# their compare-and-set clauses from it and docs/states.md draws it.
TRANSITIONS: Final[dict[tuple[State, State], str]] = {
    (S.SCHEDULED, S.READY): "promoter: run_at reached",
    (S.SCHEDULED, S.CANCELLED): "cancel",
    (S.BLOCKED, S.READY): "dependency resolver: all dependencies done",
    (S.BLOCKED, S.SKIPPED): "dependency resolver: an upstream did not complete (policy skip)",
    (S.BLOCKED, S.FAILED): "dependency resolver: an upstream failed (policy fail)",
    (S.BLOCKED, S.CANCELLED): "cancel",
    (S.READY, S.RUNNING): "claim",
    (S.READY, S.SCHEDULED): "dedup replace with a later run_at",
    (S.READY, S.CANCELLED): "cancel",
    (S.READY, S.EXPIRED): "ttl reached before any claim",
    (S.RUNNING, S.COMPLETED): "complete",
    (S.RUNNING, S.FAILED): "fail: non-retryable error",
    (S.RUNNING, S.DEAD_LETTERED): "fail: retryable error, attempts exhausted",
    (S.RUNNING, S.SCHEDULED): "retry with backoff, or delay",
    (S.RUNNING, S.READY): "retry without delay, or release on shutdown",
    (S.RUNNING, S.SUSPENDED): "suspend",
    (S.RUNNING, S.WAITING_CHILDREN): "execute returned its memo with children outstanding",
    (S.RUNNING, S.CANCELLED): "cancel",
    (S.RUNNING, S.SKIPPED): "workflow condition false when claimed",
    (S.WAITING_CHILDREN, S.READY): "last child terminal: phase finalize",
    (S.WAITING_CHILDREN, S.FAILED): "fail_fast: a child failed terminally",
    (S.WAITING_CHILDREN, S.CANCELLED): "cancel",
    (S.SUSPENDED, S.READY): "resume condition met, or timeout with RESUME",
    (S.SUSPENDED, S.FAILED): "suspend timeout with FAIL",
    (S.SUSPENDED, S.CANCELLED): "cancel, or suspend timeout with CANCEL",
    (S.SUSPENDED, S.EXPIRED): "suspend timeout with EXPIRE",
    (S.FAILED, S.READY): "operator retry",
    (S.DEAD_LETTERED, S.READY): "operator replay",
}


def can_transition(source: State, target: State) -> bool:
    """Whether the state machine allows moving a task from `source` to `target`."""
    return (source, target) in TRANSITIONS


def check_transition(source: State | str, target: State | str) -> None:
    """Raise `IllegalTransition` unless `source -> target` is in the table."""
    if (State(source), State(target)) not in TRANSITIONS:
        raise IllegalTransition(str(source), str(target))


def sources_of(target: State, *, among: frozenset[State] | None = None) -> tuple[State, ...]:
    """Every state that may move to `target` (optionally only those in `among`), sorted."""
    found = {s for (s, t) in TRANSITIONS if t == target and (among is None or s in among)}
    return tuple(sorted(found))
