"""Stored workflow runs: status by node, the typed result, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from .._clock import from_ms, from_ms_opt
from .._runtime import Runtime
from .._states import State
from ..errors import TaskTimeout, WorkflowFailed, WorkflowNotFound
from ..store.contract.dag import NodeRow, WorkflowCancel, WorkflowGet
from ..store.contract.tasks import ErrorInfo
from ._when import NodeKey

_FAILED_STATES = frozenset({State.FAILED, State.DEAD_LETTERED, State.CANCELLED, State.EXPIRED})


class RunState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    task_id: str
    task: str
    state: State
    attempts: int
    upstream: tuple[str, ...]
    error: ErrorInfo | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    id: str
    name: str
    state: RunState
    created_at: datetime
    counts: dict[State, int]
    nodes: dict[str, NodeStatus]


class WorkflowResult(Mapping[str, Any]):
    """The typed results of a run's completed nodes, by node name (a `Node` works too).
    Nodes skipped by a false condition are in `skipped`, not in the mapping."""

    def __init__(self, results: dict[str, Any], skipped: frozenset[str]) -> None:
        self._results = results
        self.skipped = skipped

    def __getitem__(self, key: object) -> Any:
        return self._results[key.name if isinstance(key, NodeKey) else key]  # type: ignore[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def __repr__(self) -> str:
        return f"WorkflowResult({self._results!r}, skipped={sorted(self.skipped)!r})"


def run_state(by_state: Mapping[State, int]) -> RunState:
    if any(not s.terminal and n for s, n in by_state.items()):
        return RunState.RUNNING
    if any(n for s, n in by_state.items() if s in _FAILED_STATES):
        return RunState.FAILED
    return RunState.COMPLETED


class WorkflowRun:
    """A stored run of a workflow: status, result, cancel. `app.workflow_run(id)` finds one."""

    def __init__(self, app: Runtime, run_id: str, name: str) -> None:
        self.app = app
        self.id = run_id
        self.name = name

    def __repr__(self) -> str:
        return f"WorkflowRun({self.name!r}, id={self.id!r})"

    async def _nodes(self) -> tuple[NodeRow, ...]:
        rec = await self.app.store.workflow_get(WorkflowGet(self.id, nodes=True))
        assert rec is not None, f"workflow run {self.id} vanished"
        return rec.nodes

    async def status(self) -> WorkflowStatus:
        """The state of every node (with durations and errors) and of the run."""
        rec = await self.app.store.workflow_get(WorkflowGet(self.id, nodes=True))
        if rec is None:
            raise WorkflowNotFound(self.id)
        nodes = {
            n.node: NodeStatus(
                name=n.node,
                task_id=n.task_id,
                task=n.kind,
                state=n.state,
                attempts=n.attempts,
                upstream=n.upstream,
                error=n.error,
                created_at=from_ms(n.created_at_ms),
                started_at=from_ms_opt(n.started_at_ms),
                finished_at=from_ms_opt(n.finished_at_ms),
            )
            for n in rec.nodes
        }
        return WorkflowStatus(
            rec.id,
            rec.name,
            run_state(rec.by_state),
            from_ms(rec.created_at_ms),
            rec.by_state,
            nodes,
        )

    async def wait(self, timeout: timedelta | None = None) -> None:
        """Return once every node has ended (`TaskTimeout` after `timeout`)."""
        store = self.app.store
        try:
            async with asyncio.timeout(timeout.total_seconds() if timeout else None):
                while True:
                    rec = await store.workflow_get(WorkflowGet(self.id))
                    if rec is None:
                        raise WorkflowNotFound(self.id)
                    if rec.active == 0:
                        return
                    await store.wait_for_finish(1.0)
        except TimeoutError:
            raise TaskTimeout(f"workflow run {self.id} did not end within {timeout}") from None

    async def result(self, timeout: timedelta | None = None) -> WorkflowResult:
        """`{node: typed result}` once the run has ended, or `WorkflowFailed` naming the
        nodes that failed (and how many were skipped because of them)."""
        await self.wait(timeout)
        nodes = await self._nodes()
        failed = {
            n.node: f"{n.state.value}" + (f": {n.error.message}" if n.error else "")
            for n in nodes
            if n.state in _FAILED_STATES
        }
        skipped = [n.node for n in nodes if n.state is State.SKIPPED]
        if failed:
            raise WorkflowFailed(self.id, self.name, failed, skipped)
        return WorkflowResult(
            {
                n.node: self.app.decode_result(n.kind, n.result)
                for n in nodes
                if n.state is State.COMPLETED
            },
            frozenset(skipped),
        )

    async def cancel(self, reason: str = "workflow cancelled") -> int:
        """Cancel every node still to run; running nodes are asked to stop. Returns how many."""
        return await self.app.store.workflow_cancel(
            WorkflowCancel(self.id, reason, self.app.clock.store_now())
        )
