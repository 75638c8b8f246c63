"""`when=` conditions of workflow nodes: found by reference, evaluated on the claiming worker.

A condition is found again in the worker by reference: a module-level function by its
import path; a lambda or closure by (workflow name, node name) in the app that built the
workflow. `check_condition` runs it right after the node's dependencies resolved and
before its handler: a false condition ends the node `skipped`.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from .._runtime import Runtime
from .._states import Phase, State
from .._task import TaskDef
from ..errors import UpstreamFailed
from ..store.contract.dag import UpstreamRow
from ..store.contract.tasks import ClaimedRow, ErrorInfo, Finish

Condition = Callable[["Upstream"], object]


class NodeKey:
    """The base of a workflow node: `Upstream` and results are looked up by its `name`."""

    __slots__ = ()
    name: str


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

    def __init__(self, app: Runtime, rows: Sequence[UpstreamRow]) -> None:
        self._app = app
        self._rows = list(rows)
        self._by_key = {r.node if r.node is not None else r.task_id: r for r in self._rows}

    def _row(self, key: object) -> UpstreamRow:
        if isinstance(key, NodeKey):
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
    app: Runtime, row: ClaimedRow, upstreams: Callable[[], Awaitable[Upstream]] | None = None
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
