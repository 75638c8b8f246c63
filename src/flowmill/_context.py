"""What a running handler sees of its attempt: identity, cancellation and progress."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from ._budgets import report_usage
from ._children import ChildrenReport, ChildResult
from ._conditions import Condition
from ._handle import TaskHandle
from ._rows import kind_names, spawn_options
from ._runtime import Runtime
from ._signals import Fenced, ResumeSignal, Waitpoint
from ._states import Phase, State
from ._stops import STOP_OPERATOR, CancelToken, Suspended
from ._submit import insert_tasks
from ._task import TaskDef
from .errors import Cancelled, ConfigurationError
from .store.contract.budgets import UsageReport
from .store.contract.signals import FrameRef, OnTimeout, SuspendStatus
from .store.contract.tasks import (
    ChildrenPage,
    ChildrenSummaryQuery,
    ChildRow,
    LeaseRef,
    TaskProgress,
)
from .workflows._when import Upstream

SPAWN_CHUNK = 1000  # children per transaction in spawn_many


def check_progress(pct: float) -> float:
    """A progress value: a finite number from 0 to 100 (`ValueError` otherwise)."""
    if isinstance(pct, bool) or not isinstance(pct, int | float) or not math.isfinite(pct):
        raise ValueError(f"progress must be a number from 0 to 100, got {pct!r}")
    if not 0 <= pct <= 100:
        raise ValueError(f"progress must be from 0 to 100, got {pct}")
    return float(pct)


class Context:
    """Passed to handlers that take a second parameter: `async def h(p: P, ctx: fm.Context)`."""

    def __init__(
        self,
        *,
        task_id: str,
        kind: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        lease_epoch: int,
        worker_id: str,
        app: Runtime,
        token: CancelToken,
        loop: asyncio.AbstractEventLoop,
        parent_id: str | None = None,
        phase: Phase = Phase.EXECUTE,
        now_ms: int | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.lease_epoch = lease_epoch
        self.worker_id = worker_id
        self.parent_id = parent_id
        self.phase = phase
        self._app = app
        self._token = token
        self._loop = loop
        self._now_ms = now_ms
        self._upstreams: Upstream | None = None
        self._resources: Mapping[str, Any] = resources if resources is not None else {}

    @property
    def resources(self) -> Mapping[str, Any]:
        """What the worker's `@app.on_worker_start` hooks shared (a DB pool, an HTTP
        client...): `ctx.resources["http"]`. Empty outside a worker with such hooks."""
        return self._resources

    @property
    def cancelled(self) -> bool:
        """True once the attempt has been asked to stop (timeout, cancel, lost lease, shutdown)."""
        return self._token.is_set

    @property
    def cancel_reason(self) -> str | None:
        return self._token.reason

    def check_cancelled(self) -> None:
        """Raise `fm.Cancelled` if the attempt has been asked to stop; call it between steps."""
        if self._token.is_set:
            raise Cancelled(self._token.reason or "cancelled")

    async def wait_cancelled(self) -> None:
        """Wait until the attempt is asked to stop (for use in `asyncio.wait` races)."""
        await self._token.wait()

    async def upstreams(self) -> Upstream:
        """This node's upstream nodes and their typed results (`up[node]`), read once."""
        if self._upstreams is None:
            rows = await self._app.store.upstream_get(self.task_id)
            self._upstreams = Upstream(self._app, rows)
        return self._upstreams

    async def upstream(self, node: Any) -> Any:
        """The typed result of one upstream node: pass the `Node`, its name, or its task
        (when only one upstream runs it). `fm.UpstreamFailed` if it did not complete."""
        return (await self.upstreams())[node]

    async def progress(self, pct: float, message: str | None = None) -> None:
        """Record progress (0..100) on the task, fenced by this attempt's lease."""
        await self._app.store.task_progress(
            TaskProgress(self.task_id, self.lease_epoch, check_progress(pct), message, self._now_ms)
        )

    def progress_blocking(self, pct: float, message: str | None = None) -> None:
        """`progress` for sync handlers running in a worker thread."""
        fut = asyncio.run_coroutine_threadsafe(self.progress(pct, message), self._loop)
        fut.result()

    async def report_usage(
        self, budget_id: str, dimensions: Mapping[str, int], dedup_key: str | None = None
    ) -> UsageReport:
        """Count usage against a budget (fenced by this attempt's lease), atomically.

        HARD_BREACH applies nothing; ALREADY_APPLIED answers a `dedup_key` seen before
        (build it from `task_id` and `attempt`, so that a re-run step is not counted twice).
        """
        app = self._app
        lease = LeaseRef(self.task_id, self.lease_epoch)
        return await report_usage(app.store, app.clock, lease, budget_id, dimensions, dedup_key)

    def report_usage_blocking(
        self, budget_id: str, dimensions: Mapping[str, int], dedup_key: str | None = None
    ) -> UsageReport:
        """`report_usage` for sync handlers running in a worker thread."""
        coro = self.report_usage(budget_id, dimensions, dedup_key)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- waiting on the outside world, and output frames ---------------------------

    def _fenced(self) -> Fenced:
        return Fenced(self._app, self.task_id, self.lease_epoch)

    async def create_waitpoint(self, key: str, expires_in: timedelta) -> Waitpoint:
        """A waitpoint (id + HMAC token) that `app.deliver_signal` can signal."""
        return await self._fenced().create_waitpoint(key, expires_in)

    async def suspend(
        self,
        condition: Condition,
        *,
        timeout: timedelta | None = None,
        on_timeout: OnTimeout = OnTimeout.FAIL,
    ) -> list[ResumeSignal]:
        """Wait until signals satisfy `condition`: this attempt ends here, and the task runs
        again from the top once they do (read them with `resume_signals()`). If signals
        received earlier already satisfy it, returns them at once and the attempt goes on.
        """
        status = await self._fenced().suspend_status(condition, timeout, on_timeout)
        if status is SuspendStatus.SUSPENDED:
            raise Suspended(self.task_id)
        if status is SuspendStatus.CANCEL_REQUESTED:
            # Cancelled while running: the cancel wins, the attempt ends cancelled.
            self._token.fire(STOP_OPERATOR)
            raise Cancelled(STOP_OPERATOR)
        return await self.resume_signals()

    async def resume_signals(self) -> list[ResumeSignal]:
        """The signals that resumed this task (empty when it was not resumed by signals)."""
        return await self._fenced().resume_signals()

    async def append_frame(
        self, frame_type: str, payload: bytes, metadata: Mapping[str, Any] | None = None
    ) -> FrameRef:
        """Append to this attempt's output stream (`app.frames()` tails it live)."""
        return await self._fenced().append_frame(frame_type, payload, metadata)

    # -- children ------------------------------------------------------------------

    def _fence(self, what: str) -> LeaseRef:
        if self.phase is Phase.FINALIZE:
            raise ConfigurationError(
                f"{what} in finalize: children must be spawned by execute (or by siblings), "
                "finalize runs once they have all ended"
            )
        return LeaseRef(self.task_id, self.lease_epoch)

    async def spawn(
        self, task: TaskDef | str, payload: Any = None, *, key: str | None = None, **opts: Any
    ) -> TaskHandle[Any]:
        """Start a child of this task. With `key`, a re-run execute does not spawn it twice."""
        [handle] = await self.spawn_many(task, [payload], keys=[key], **opts)
        return handle

    async def spawn_many(
        self,
        task: TaskDef | str,
        payloads: Iterable[Any],
        *,
        keys: Sequence[str | None] | None = None,
        **opts: Any,
    ) -> list[TaskHandle[Any]]:
        """Start many children, `SPAWN_CHUNK` per transaction (each chunk fenced by our lease)."""
        return await self._spawn(task, list(payloads), keys, self.task_id, "spawn", opts)

    async def spawn_sibling(
        self, task: TaskDef | str, payload: Any = None, *, key: str | None = None, **opts: Any
    ) -> TaskHandle[Any]:
        """Start a child of this task's parent (a BFS step); its finalize waits for it too."""
        if self.parent_id is None:
            raise ConfigurationError(
                f"spawn_sibling: task {self.task_id} is a root task; it has no parent to share"
            )
        [handle] = await self._spawn(task, [payload], [key], self.parent_id, "spawn_sibling", opts)
        return handle

    async def spawn_siblings(
        self,
        task: TaskDef | str,
        payloads: Iterable[Any],
        *,
        keys: Sequence[str | None] | None = None,
        **opts: Any,
    ) -> list[TaskHandle[Any]]:
        """`spawn_sibling` for many at once: one transaction per chunk instead of one each."""
        if self.parent_id is None:
            raise ConfigurationError(
                f"spawn_siblings: task {self.task_id} is a root task; it has no parent to share"
            )
        return await self._spawn(task, list(payloads), keys, self.parent_id, "spawn_siblings", opts)

    async def _spawn(
        self,
        task: TaskDef | str,
        payloads: list[Any],
        keys: Sequence[str | None] | None,
        parent_id: str,
        what: str,
        opts: dict[str, Any],
    ) -> list[TaskHandle[Any]]:
        fence = self._fence(what)
        options = spawn_options(parent_id, opts)
        handles: list[TaskHandle[Any]] = []
        for i in range(0, len(payloads), SPAWN_CHUNK):
            chunk_keys = None if keys is None else keys[i : i + SPAWN_CHUNK]
            handles += await insert_tasks(
                self._app,
                task,
                payloads[i : i + SPAWN_CHUNK],
                child_keys=chunk_keys,
                opts=options,
                fence=fence,
            )
        return handles

    async def children(
        self,
        kind: TaskDef | str | Iterable[TaskDef | str] | None = None,
        state: State | str | Iterable[State | str] | None = None,
        *,
        page_size: int = 500,
    ) -> AsyncGenerator[ChildResult[Any], None]:
        """This task's children in spawn order, read page by page (memory stays bounded).

        `kind` keeps only children of those tasks; results are decoded with each child's
        own result type.
        """
        kinds = kind_names(kind)
        states = _states(state)
        after = 0
        while True:
            rows = await self._app.store.children_page(
                ChildrenPage(self.task_id, kinds, states, after, page_size)
            )
            for row in rows:
                yield _child_result(self._app, row)
            if len(rows) < page_size:
                return
            after = rows[-1].seq

    async def children_summary(self, *, top_errors: int = 5, examples: int = 3) -> ChildrenReport:
        """Counts of the children by state, and the most common errors with example ids."""
        summary = await self._app.store.children_summary(
            ChildrenSummaryQuery(self.task_id, top_errors, examples)
        )
        return ChildrenReport.of(summary)


def _states(state: State | str | Iterable[State | str] | None) -> tuple[State, ...]:
    if state is None:
        return ()
    if isinstance(state, State | str):
        return (State(state),)
    return tuple(State(s) for s in state)


def _child_result(rt: Runtime, row: ChildRow) -> ChildResult[Any]:
    ok = row.state is State.COMPLETED
    result = rt.decode_result(row.kind, row.result) if ok else None
    return ChildResult(row.id, row.kind, row.state, ok, result, row.error, row.attempts)
