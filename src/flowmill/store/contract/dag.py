"""The store contract for dependencies between tasks: DAG workflows.

A task inserted with `depends_on` starts `blocked` and counts its unresolved upstream
tasks. The store operation that ends an upstream task (any terminal move: complete, fail,
cancel, expire, skip...) resolves its dependents in the same transaction (push): each
dependent counts the end, and one whose last upstream ended is decided by its policy:

- `run`: `ready`, whatever the upstream outcomes;
- `skip` (the default): `skipped` if any upstream did not complete, else `ready`;
- `fail`: `failed` if any upstream failed (failed, dead-lettered, cancelled, expired),
  `skipped` if upstreams were only skipped, else `ready`.

A skipped or failed dependent ends too, so its own dependents are resolved in turn (the
skip-cascade). `deps_reconcile` is the backstop a maintenance loop runs: it resolves any
dependency whose upstream is terminal but was not counted. Same rules as `protocol`: frozen
params, int ms times, `now_ms=None` is the store's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..._states import State
from .records import ErrorInfo


class UpstreamPolicy(StrEnum):
    """What a node does when an upstream task did not complete."""

    SKIP = "skip"
    RUN = "run"
    FAIL = "fail"


# Upstream ends that count as failures for the `fail` policy (skipped ones do not).
UPSTREAM_FAILURES = frozenset({State.FAILED, State.DEAD_LETTERED, State.CANCELLED, State.EXPIRED})


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A workflow run, inserted with its nodes (the tasks naming it) in one transaction."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    """One upstream task of a task, in the order its dependencies were given."""

    task_id: str
    kind: str
    node: str | None
    state: State
    result: bytes | None
    error: ErrorInfo | None


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node of a workflow run, with the names of the nodes it depends on."""

    node: str
    task_id: str
    kind: str
    state: State
    attempts: int
    upstream: tuple[str, ...]
    result: bytes | None
    error: ErrorInfo | None
    created_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None


@dataclass(frozen=True, slots=True)
class WorkflowGet:
    """A run's counts by state; with `nodes`, every node too (in insertion order)."""

    workflow_id: str
    nodes: bool = False


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    id: str
    name: str
    created_at_ms: int
    total: int
    by_state: dict[State, int]
    nodes: tuple[NodeRow, ...] = ()

    @property
    def active(self) -> int:
        """Nodes not yet in a terminal state."""
        return sum(n for s, n in self.by_state.items() if not s.terminal)


@dataclass(frozen=True, slots=True)
class WorkflowsList:
    limit: int = 50
    name: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowCancel:
    """Cancel every active node of a run (running ones are asked to stop)."""

    workflow_id: str
    reason: str = "workflow cancelled"
    now_ms: int | None = None


@dataclass(frozen=True, slots=True)
class DepsReconcile:
    limit: int = 1000
    now_ms: int | None = None
