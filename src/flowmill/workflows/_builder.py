"""DAG workflows: a builder validated before anything is stored, runs, and upstream results.

```python
wf = app.workflow("nightly-etl")
raw = wf.add(extract, Source("s3://..."))
clean = wf.add(transform, Params(...), after=[raw])
b = wf.add(load_b, ..., after=[clean], when=lambda up: up[clean].rows > 0)
run = await wf.submit()          # validated, inserted in one transaction
await run.result()               # {node: result}, or raises WorkflowFailed naming the node
```

The store resolves dependencies when an upstream ends (see `store/_base_dag.py`). `when=`
conditions are Python callables, so they are evaluated by the worker that claims the node,
right after its dependencies resolved and before its handler runs; a false condition ends
the node `skipped`, and that cascades like any skip. A condition is found again in the
worker by reference: a module-level function by its import path; a lambda or closure by
(workflow name, node name) in the app that built the workflow - so a worker process must
build the same workflow (define it in a module the worker imports) to use lambdas.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .._clock import from_ms, from_ms_opt
from .._states import Phase, State
from ..errors import (
    ConfigurationError,
    InvalidWorkflow,
    TaskTimeout,
    UpstreamFailed,
    WorkflowFailed,
    WorkflowNotFound,
)
from ..store.contract.dag import (
    NewWorkflow,
    NodeRow,
    UpstreamPolicy,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
)
from ..store.contract.tasks import ClaimedRow, ErrorInfo, Finish, NewTask, TasksInsert

if TYPE_CHECKING:
    from .._app import App
    from .._task import TaskDef

Condition = Callable[["Upstream"], object]
_POLICIES = tuple(p.value for p in UpstreamPolicy)


def check_policy(value: str) -> str:
    """An `on_upstream_failure` value (`ConfigurationError` otherwise)."""
    if value not in _POLICIES:
        raise ConfigurationError(
            f"on_upstream_failure must be one of {', '.join(_POLICIES)}, got {value!r}"
        )
    return value


_FAILED_STATES = frozenset({State.FAILED, State.DEAD_LETTERED, State.CANCELLED, State.EXPIRED})


class Node:
    """One node of a workflow being built: a task, its payload and what it runs after."""

    __slots__ = ("after", "name", "payload", "policy", "task", "when", "workflow")

    def __init__(
        self,
        workflow: Workflow,
        name: str,
        task: TaskDef,
        payload: Any,
        after: tuple[Node | str, ...],
        when: Condition | None,
        policy: str,
    ) -> None:
        self.workflow = workflow
        self.name = name
        self.task = task
        self.payload = payload
        self.after = after
        self.when = when
        self.policy = policy

    def __repr__(self) -> str:
        return f"Node({self.name!r}, task={self.task.name!r})"


class Workflow:
    """A DAG of task nodes, built with `add` (and `map`), stored by `submit`."""

    def __init__(self, app: App, name: str) -> None:
        if not isinstance(name, str) or not name or len(name) > 255:
            raise ConfigurationError(f"bad workflow name {name!r}")
        self.app = app
        self.name = name
        self.nodes: list[Node] = []
        self._names: dict[str, int] = {}

    def add(
        self,
        task: TaskDef | str,
        payload: Any = None,
        *,
        name: str | None = None,
        after: Iterable[Node | str] = (),
        when: Condition | None = None,
        on_upstream_failure: str = "skip",
    ) -> Node:
        """Add a node that runs `task(payload)` once every node in `after` has ended.

        `on_upstream_failure`: `skip` (default: skipped, with its descendants, unless every
        upstream completed), `run` (runs anyway; `ctx.upstreams()` shows what failed) or
        `fail`. `when(up)` is called with the upstream results once they are in; a false
        value skips the node and its descendants."""
        tdef = self.app._resolve(task)
        if when is not None and not callable(when):
            raise ConfigurationError(f"when must be a callable, got {when!r}")
        check_policy(on_upstream_failure)
        if isinstance(after, Node | str):
            after = (after,)
        node_name = name if name is not None else self._default_name(tdef.name)
        if not isinstance(node_name, str) or not node_name or len(node_name) > 255:
            raise ConfigurationError(f"bad node name {node_name!r}")
        node = Node(self, node_name, tdef, payload, tuple(after), when, on_upstream_failure)
        self.nodes.append(node)
        self._names[node_name] = self._names.get(node_name, 0) + 1
        return node

    def map(
        self,
        task: TaskDef | str,
        payloads: Iterable[Any],
        *,
        name: str | None = None,
        after: Iterable[Node | str] = (),
        on_upstream_failure: str = "skip",
    ) -> list[Node]:
        """One node per payload, named `name[i]`; join them with `add(..., after=nodes)`."""
        base = name if name is not None else self.app._resolve(task).name.rsplit(".", 1)[-1]
        ups = tuple(after)
        return [
            self.add(
                task, p, name=f"{base}[{i}]", after=ups, on_upstream_failure=on_upstream_failure
            )
            for i, p in enumerate(payloads)
        ]

    def _default_name(self, task_name: str) -> str:
        base = task_name.rsplit(".", 1)[-1]
        if base not in self._names:
            return base
        n = 2
        while f"{base}-{n}" in self._names:
            n += 1
        return f"{base}-{n}"

    def validate(self) -> list[Node]:
        """The nodes in an order where each comes after its upstreams; `InvalidWorkflow`
        listing every problem (cycles named node by node) if it is not a valid DAG."""
        problems: list[str] = []
        if not self.nodes:
            problems.append("it has no nodes")
        by_name: dict[str, Node] = {}
        for node in self.nodes:
            if node.name in by_name:
                if f"duplicate node {node.name!r}" not in problems:
                    problems.append(f"duplicate node {node.name!r}")
                continue
            by_name[node.name] = node
        ups: dict[str, list[str]] = {}
        for node in self.nodes:
            names: list[str] = []
            refs: tuple[object, ...] = node.after  # checked: callers may pass anything
            for ref in refs:
                if isinstance(ref, Node):
                    target = by_name.get(ref.name)
                    if ref.workflow is not self or target is not ref:
                        problems.append(
                            f"node {node.name!r} runs after {ref.name!r}, "
                            "which is not a node of this workflow"
                        )
                        continue
                    up = ref.name
                elif isinstance(ref, str):
                    if ref not in by_name:
                        problems.append(
                            f"node {node.name!r} runs after {ref!r}, which is not a node"
                        )
                        continue
                    up = ref
                else:
                    problems.append(f"node {node.name!r}: after holds {ref!r}, not a node")
                    continue
                if up == node.name:
                    problems.append(f"node {node.name!r} depends on itself")
                elif up in names:
                    problems.append(f"node {node.name!r} names {up!r} twice in after")
                else:
                    names.append(up)
            ups[node.name] = names
        if problems:
            raise InvalidWorkflow(self.name, problems)
        order, cycle = _topological(list(by_name), ups)
        if cycle:
            raise InvalidWorkflow(self.name, ["cycle " + " -> ".join(cycle)])
        return [by_name[n] for n in order]

    async def submit(self) -> WorkflowRun:
        """Validate, then store the run and all its nodes in one transaction."""
        from .._app import _Common, _Opts, new_task_ids

        order = self.validate()
        app = self.app
        run_id = new_task_ids(1)[0]
        ids = dict(zip((n.name for n in order), new_task_ids(len(order)), strict=True))
        news: list[NewTask] = []
        for node in order:
            tdef = node.task
            common = _Common.build(tdef, _Opts())
            [new] = common.tasks(tdef, [tdef.payload.encode(node.payload)], None, None)
            new.id = ids[node.name]
            new.depends_on = [ids[_ref_name(r)] for r in node.after]
            new.upstream_policy = node.policy
            new.workflow_id = run_id
            new.node = node.name
            if node.when is not None:
                new.condition = app.conditions.register(self.name, node.name, node.when)
            news.append(new)
        await app.open()
        await app.store.tasks_insert(
            TasksInsert(news, now_ms=app.clock.store_now(), workflow=NewWorkflow(run_id, self.name))
        )
        return WorkflowRun(app, run_id, self.name)


def _ref_name(ref: Node | str) -> str:
    return ref.name if isinstance(ref, Node) else ref


def _topological(names: list[str], ups: Mapping[str, list[str]]) -> tuple[list[str], list[str]]:
    """Kahn's order of `names`; if there is a cycle, ([], the cycle as a closed path)."""
    indegree = {n: len(ups[n]) for n in names}
    downs: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for u in ups[n]:
            downs[u].append(n)
    ready = [n for n in names if indegree[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop()
        order.append(n)
        for d in downs[n]:
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
    if len(order) == len(names):
        # Kahn's pops give a valid order; keep the user's order where it already is one.
        position = {n: i for i, n in enumerate(names)}
        return _stable_order(names, ups, position), []
    # Walk upstream from a node left in the cycle until a node repeats.
    left = {n for n in names if indegree[n] > 0}
    start = min(left, key=names.index)
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(u for u in ups[node] if u in left)
    cycle = [*path[seen[node] :], node]
    return [], cycle[::-1]


def _stable_order(
    names: list[str], ups: Mapping[str, list[str]], position: Mapping[str, int]
) -> list[str]:
    """Depth-first order: each node after its upstreams, otherwise in the order added."""
    done: set[str] = set()
    out: list[str] = []
    for root in names:
        if root in done:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if node in done:
                continue
            deps = sorted(ups[node], key=position.__getitem__)
            if i < len(deps):
                stack.append((node, i + 1))
                if deps[i] not in done:
                    stack.append((deps[i], 0))
                continue
            done.add(node)
            out.append(node)
    return out


class Conditions:
    """`when=` callables by reference, for the worker that claims the node."""

    def __init__(self) -> None:
        self._by_ref: dict[str, Condition] = {}

    def register(self, workflow: str, node: str, fn: Condition) -> str:
        module = getattr(fn, "__module__", None)
        qualname = getattr(fn, "__qualname__", "")
        if module and module != "__main__" and "<" not in qualname:
            ref = f"fn:{module}:{qualname}"
        else:
            ref = f"wf:{workflow}:{node}"
        self._by_ref[ref] = fn
        return ref

    def find(self, ref: str) -> Condition | None:
        fn = self._by_ref.get(ref)
        if fn is not None or not ref.startswith("fn:"):
            return fn
        _, module, qualname = ref.split(":", 2)
        try:
            found: Any = importlib.import_module(module)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            return None
        if callable(found):
            self._by_ref[ref] = found
            return found  # type: ignore[no-any-return]
        return None


class Upstream(Mapping[str, Any]):
    """The upstream nodes of a node: `up[node]` is that node's typed result.

    Keys are node names; a `Node` or a task (if only one upstream runs it) works too.
    Asking for the result of an upstream that did not complete raises `UpstreamFailed`;
    `state(...)`, `error(...)` and `ok(...)` tell what happened to it."""

    def __init__(self, app: App, rows: Sequence[UpstreamRow]) -> None:
        self._app = app
        self._rows = list(rows)
        self._by_key = {r.node if r.node is not None else r.task_id: r for r in self._rows}

    def _row(self, key: object) -> UpstreamRow:
        if isinstance(key, Node):
            key = key.name
        if isinstance(key, str):
            row = self._by_key.get(key)
            if row is None:
                row = next((r for r in self._rows if r.task_id == key), None)
            if row is None:
                raise KeyError(key)
            return row
        name = getattr(key, "name", None)
        matches = [r for r in self._rows if r.kind == name]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise KeyError(key)
        raise KeyError(f"{len(matches)} upstream nodes run {name!r}: ask by node")

    def __getitem__(self, key: object) -> Any:
        row = self._row(key)
        if row.state is not State.COMPLETED:
            name = row.node or row.task_id
            raise UpstreamFailed(name, row.state.value, row.error.message if row.error else None)
        return self._app.decode_result(row.kind, row.result)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        try:
            self._row(key)
        except KeyError:
            return False
        return True

    def state(self, key: object) -> State:
        return self._row(key).state

    def error(self, key: object) -> ErrorInfo | None:
        return self._row(key).error

    def ok(self, key: object) -> bool:
        return self._row(key).state is State.COMPLETED

    def results(self, task: TaskDef | str | None = None) -> list[Any]:
        """The results of the completed upstreams (of `task` only, if given), in order."""
        name = task if isinstance(task, str) or task is None else task.name
        return [
            self._app.decode_result(r.kind, r.result)
            for r in self._rows
            if r.state is State.COMPLETED and (name is None or r.kind == name)
        ]


async def check_condition(
    app: App, row: ClaimedRow, upstreams: Callable[[], Awaitable[Upstream]] | None = None
) -> Finish | None:
    """The finish of a claimed node whose `when=` is false (skipped) or cannot be
    evaluated (failed); None when the node should run. `upstreams` reads the upstream
    results (a handler's `ctx.upstreams`, so that the handler does not read them again)."""
    if row.condition is None or row.phase is not Phase.EXECUTE:
        return None
    fn = app.conditions.find(row.condition)
    if fn is None:
        return Finish(
            row.id,
            row.lease_epoch,
            State.FAILED,
            error=ErrorInfo(
                "ConditionUnavailable",
                f"the when= condition {row.condition!r} is not known to this worker: pass a "
                "module-level function, or build the workflow in a module the worker imports",
                "configuration",
            ),
        )
    if upstreams is not None:
        up = await upstreams()
    else:
        up = Upstream(app, await app.store.upstream_get(row.id))
    try:
        verdict = fn(up)
        if asyncio.iscoroutine(verdict):
            verdict = await verdict
    except Exception as exc:  # a condition that raises fails its node, not the worker
        return Finish(
            row.id,
            row.lease_epoch,
            State.FAILED,
            error=ErrorInfo(type(exc).__name__, f"the when= condition raised: {exc}", "condition"),
        )
    if verdict:
        return None
    return Finish(
        row.id,
        row.lease_epoch,
        State.SKIPPED,
        error=ErrorInfo("Skipped", "skipped: its when= condition was false", "condition_false"),
    )


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
        return self._results[key.name if isinstance(key, Node) else key]  # type: ignore[index]

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

    def __init__(self, app: App, run_id: str, name: str) -> None:
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


def pipeline(
    wf: Workflow, steps: Sequence[tuple[TaskDef | str, Any]], *, after: Iterable[Node | str] = ()
) -> list[Node]:
    """Nodes that run one after another: each step after the one before it."""
    nodes: list[Node] = []
    prev: tuple[Node | str, ...] = tuple(after)
    for task, payload in steps:
        node = wf.add(task, payload, after=prev)
        nodes.append(node)
        prev = (node,)
    return nodes


def fan_out_in(
    wf: Workflow,
    task: TaskDef | str,
    payloads: Iterable[Any],
    join: TaskDef | str,
    join_payload: Any = None,
    *,
    after: Iterable[Node | str] = (),
    name: str | None = None,
    on_upstream_failure: str = "skip",
) -> Node:
    """`task` over every payload in parallel, then `join` once they have all ended (it reads
    their results with `(await ctx.upstreams()).results()`). Returns the join node."""
    parts = wf.map(task, payloads, name=name, after=after)
    return wf.add(join, join_payload, after=parts, on_upstream_failure=on_upstream_failure)
