"""The PostgreSQL store's parents, children, hooks, dependencies and workflows:
`task_wait_children`, `children_page`, `children_summary`, `hooks_claim`, `hook_done`,
`upstream_get`, `workflow_get`, `workflows_list`, `workflow_cancel`, `deps_reconcile`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from psycopg import AsyncConnection

from ..._states import State
from ..contract.dag import (
    DepsReconcile,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)
from ..contract.tasks import (
    CancelOutcome,
    ChildrenPage,
    ChildrenSummary,
    ChildrenSummaryQuery,
    ChildRow,
    HookDone,
    HookRow,
    HooksClaim,
    TaskCancel,
    TaskWaitChildren,
)
from ._dag import Dag
from ._sql import Queries
from ._tree import Tree

T = TypeVar("T")
Conn = AsyncConnection[Any]


class PostgresLinksMixin:
    """The parent/child, hook and dependency operations of `PostgresStore`."""

    if TYPE_CHECKING:
        _q: Queries
        _tree: Tree
        _dag: Dag

        async def _run(self, job: Callable[[Conn], Awaitable[T]], *, idempotent: bool) -> T: ...

        async def _cancel_locked(
            self, conn: Conn, p: TaskCancel
        ) -> tuple[State, CancelOutcome] | None: ...

    async def task_wait_children(self, p: TaskWaitChildren) -> State:
        job = functools.partial(self._tree.task_wait_children, p=p, cancel=self._q.task_cancel)
        return await self._run(job, idempotent=False)

    async def children_page(self, p: ChildrenPage) -> list[ChildRow]:
        if p.limit <= 0:
            return []
        return await self._run(functools.partial(self._tree.children_page, p=p), idempotent=True)

    async def children_summary(self, p: ChildrenSummaryQuery) -> ChildrenSummary:
        job = functools.partial(self._tree.children_summary, p=p)
        return await self._run(job, idempotent=True)

    async def hooks_claim(self, p: HooksClaim) -> list[HookRow]:
        if not p.kinds or p.limit <= 0:
            return []
        # Run again after a lost connection: hooks whose claim was lost are claimed again
        # once their short lease has expired.
        return await self._run(functools.partial(self._tree.hooks_claim, p=p), idempotent=True)

    async def hook_done(self, p: HookDone) -> None:
        await self._run(functools.partial(self._tree.hook_done, p=p), idempotent=False)

    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        job = functools.partial(self._dag.upstream_get, task_id=task_id)
        return await self._run(job, idempotent=True)

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None:
        return await self._run(functools.partial(self._dag.workflow_get, p=p), idempotent=True)

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        if p.limit <= 0:
            return []
        return await self._run(functools.partial(self._dag.workflows_list, p=p), idempotent=True)

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        async def job(conn: Conn) -> int:
            count = 0
            async with conn.transaction():
                now = await self._tree.now(conn, p.now_ms)
                for task_id in await self._dag.active_nodes(conn, p.workflow_id):
                    got = await self._cancel_locked(conn, TaskCancel(task_id, p.reason, now))
                    # A node cancelled above may have skipped this one already (or a
                    # parent's cascade cancelled it): only nodes still active count.
                    if got is None or got[0].terminal:
                        continue
                    out = got[1]
                    count += out.requested or out.state is State.CANCELLED
            return count

        # Running it twice cancels nothing more: the nodes are cancelled or asked to stop.
        return await self._run(job, idempotent=True)

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        if p.limit <= 0:
            return 0

        async def job(conn: Conn) -> int:
            return await self._dag.deps_reconcile(conn, p.limit, p.now_ms)

        return await self._run(job, idempotent=True)
