"""The operation groups the Redis store does not have yet: each says so with a typed error.

Reads that can only find what the missing writes would have made answer truthfully (no
workflows exist on this backend), so the worker's maintenance
loop runs unchanged; every write of those groups raises `StoreError` naming the feature.
"""

from __future__ import annotations

from typing import NoReturn

from ...errors import StoreError
from ..contract.dag import (
    DepsReconcile,
    UpstreamRow,
    WorkflowCancel,
    WorkflowGet,
    WorkflowRecord,
    WorkflowsList,
)

UNSUPPORTED = ("task dependencies and workflows",)


class UnsupportedMixin:
    """DAG operations: not in the Redis store yet."""

    def _unsupported(self, feature: str) -> NoReturn:
        raise StoreError(
            f"the Redis/Valkey store does not support {feature} yet; "
            "use SQLite or PostgreSQL for tasks that need them"
        )

    # -- dependencies and workflows ----------------------------------------------------------

    async def upstream_get(self, task_id: str) -> list[UpstreamRow]:
        return []  # no task can have dependencies here

    async def workflow_get(self, p: WorkflowGet) -> WorkflowRecord | None:
        return None

    async def workflows_list(self, p: WorkflowsList) -> list[WorkflowRecord]:
        return []

    async def workflow_cancel(self, p: WorkflowCancel) -> int:
        return 0  # no run has nodes here

    async def deps_reconcile(self, p: DepsReconcile) -> int:
        return 0
