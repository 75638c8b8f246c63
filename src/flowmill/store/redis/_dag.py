"""Dependencies between tasks and workflow runs in the Redis store.

Linking happens in the insert's FCALL; the call that ends an upstream task resolves its
dependents in the same FCALL (see `dag_ended` in flowmill.lua), so `deps_reconcile`, the
backstop for a missed push, never finds anything to do here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..._states import State
from .._common.serde import decode_error, encode_error
from ..contract.dag import (
    DepsReconcile,
    NodeRow,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)
from ..contract.tasks import ErrorInfo


def _text(v: bytes | None) -> str | None:
    return None if v is None else v.decode()


def _record(head: Sequence[Any], nodes: tuple[NodeRow, ...] = ()) -> WorkflowRecord:
    wf_id, name, created, total, states = head
    by_state: dict[State, int] = {}
    for st in states:
        s = State(st.decode())
        by_state[s] = by_state.get(s, 0) + 1
    return WorkflowRecord(wf_id.decode(), name.decode(), int(created), int(total), by_state, nodes)


class RedisDagMixin:
    """The `DagStore` operations of `RedisStore`."""

    if TYPE_CHECKING:

        async def _call(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

        async def _fcall(
            self, fn: str, params: dict[str, Any], blobs: Sequence[bytes] = ()
        ) -> Any: ...

    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        rows = await self._fcall("fm_upstream_get", {"id": task_id})
        return [
            UpstreamRow(i.decode(), k.decode(), _text(n), State(s.decode()), res, decode_error(e))
            for i, k, n, s, res, e in rows
        ]

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None:
        got = await self._fcall("fm_workflow_get", {"id": p.workflow_id, "nodes": p.nodes})
        if not got:
            return None
        head, raw_nodes = got
        nodes = tuple(
            NodeRow(
                node=node.decode(),
                task_id=i.decode(),
                kind=k.decode(),
                state=State(s.decode()),
                attempts=int(a),
                upstream=tuple(u.decode() for u in ups),
                result=res,
                error=decode_error(e),
                created_at_ms=int(cr),
                started_at_ms=None if st is None else int(st),
                finished_at_ms=None if fi is None else int(fi),
            )
            for i, node, k, s, a, ups, res, e, cr, st, fi in raw_nodes
        )
        return _record(head, nodes)

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        if p.limit <= 0:
            return []
        params: dict[str, Any] = {"limit": p.limit}
        if p.name is not None:
            params["name"] = p.name
        return [_record(r) for r in await self._fcall("fm_workflows_list", params)]

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        params: dict[str, Any] = {
            "id": p.workflow_id,
            "reason": p.reason,
            "error": encode_error(ErrorInfo("Cancelled", p.reason, "cancelled")),
        }
        if p.now_ms is not None:
            params["now"] = p.now_ms
        return int((await self._call("fm_workflow_cancel", params))["n"])

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        return 0  # every end resolves its dependents in its own FCALL: nothing is missed
