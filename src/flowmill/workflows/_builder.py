"""The workflow builder: a DAG of task nodes, validated before anything is stored.

```python
wf = app.workflow("nightly-etl")
raw = wf.add(extract, Source("s3://..."))
clean = wf.add(transform, Params(...), after=[raw])
b = wf.add(load_b, ..., after=[clean], when=lambda up: up[clean].rows > 0)
run = await wf.submit()          # validated, inserted in one transaction
await run.result()               # {node: result}, or raises WorkflowFailed naming the node
```

The store resolves dependencies when an upstream ends. `when=` conditions are Python
callables, evaluated by the worker that claims the node (see `_when.py`): a worker process
must build the same workflow (define it in a module the worker imports) to use lambdas.
Stored runs are in `_runs.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._rows import Common, Opts, check_policy, new_task_ids
from .._runtime import Runtime
from .._task import TaskDef
from ..errors import ConfigurationError, InvalidWorkflow
from ..store.contract.dag import NewWorkflow
from ..store.contract.tasks import NewTask, TasksInsert
from ._runs import WorkflowRun
from ._runs import WorkflowStatus as WorkflowStatus  # `flowmill.cli` imports it from here
from ._when import Condition, NodeKey


class Node(NodeKey):
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

    def __init__(self, app: Runtime, name: str) -> None:
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
        tdef = self.app.resolve_task(task)
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
        base = name if name is not None else self.app.resolve_task(task).name.rsplit(".", 1)[-1]
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
        order = self.validate()
        app = self.app
        run_id = new_task_ids(1)[0]
        # the nodes next to their run (a partitioned store keeps them in its partition)
        nodes = new_task_ids(len(order), near=run_id)
        ids = dict(zip((n.name for n in order), nodes, strict=True))
        news: list[NewTask] = []
        for node in order:
            tdef = node.task
            common = Common.build(tdef, Opts())
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
