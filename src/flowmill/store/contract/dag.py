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
dependency whose upstream is terminal but was not counted. Same rules as `_base`: frozen
params, int ms times, `now_ms=None` is the store's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from ..._states import State
from ...errors import ConfigurationError

if TYPE_CHECKING:  # _base imports this module
    from collections.abc import Sequence

    from .tasks import ErrorInfo, NewTask


class UpstreamPolicy(StrEnum):
    """What a node does when an upstream task did not complete."""

    SKIP = "skip"
    RUN = "run"
    FAIL = "fail"


# Upstream ends that count as failures for the `fail` policy (skipped ones do not).
UPSTREAM_FAILURES = frozenset({State.FAILED, State.DEAD_LETTERED, State.CANCELLED, State.EXPIRED})


POLICIES = frozenset(p.value for p in UpstreamPolicy)


def has_links(tasks: Sequence[NewTask]) -> bool:
    """Whether an insert batch needs the dependency work (edges, a workflow row)."""
    return any(t.depends_on or t.workflow_id is not None for t in tasks)


def check(t: NewTask) -> None:
    """Refuse a dependent task no store can honour (`ConfigurationError`)."""
    if t.upstream_policy not in POLICIES:
        raise ConfigurationError(
            f"upstream policy must be one of {', '.join(sorted(POLICIES))}, "
            f"got {t.upstream_policy!r}"
        )
    if t.depends_on:
        if t.parent_id is not None:
            raise ConfigurationError("a child task cannot have dependencies")
        if t.delay_ms is not None or t.run_at_ms is not None:
            raise ConfigurationError("a task with dependencies cannot also be delayed")
        if len(set(t.depends_on)) != len(t.depends_on):
            raise ConfigurationError(f"task {t.id} names an upstream task twice")
        if t.id in t.depends_on:
            raise ConfigurationError(f"task {t.id} depends on itself")


def edges_of(
    inserted: Sequence[NewTask], remap: dict[str, str]
) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """The (upstream, task, pos) edges of the inserted tasks, upstream ids of tasks the
    batch skipped (dedup) sent to the task standing for them (`remap`); and, per task, how
    many upstreams that made one with another (each counted once: deps_pending drops)."""
    edges: list[tuple[str, str, int]] = []
    doubled: dict[str, int] = {}
    for t in inserted:
        seen: set[str] = set()
        for pos, up in enumerate(t.depends_on):
            up = remap.get(up, up)
            if up in seen:
                doubled[t.id] = doubled.get(t.id, 0) + 1
                continue
            seen.add(up)
            edges.append((up, t.id, pos))
    return edges, doubled


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


class DagStore(Protocol):
    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        """The upstream tasks of `task_id` with their states and results."""

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None: ...

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        """The newest runs first, counts only."""

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        """Returns how many nodes were cancelled or asked to stop."""

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        """Resolve dependencies whose upstream ended without being counted; returns how
        many dependency edges it resolved (0 when the push did its job)."""
