"""Task handles and the one loop per app that waits for many results at once."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

from ._runtime import Runtime
from ._states import State
from .errors import TaskFailed, TaskTimeout
from .store.contract.tasks import InsertStatus, ResultRow

R = TypeVar("R")

_POLL_S = 1.0  # fallback when a wake-up is lost


class ResultWaiter:
    """Waits for the results of every awaited task of one app with one query per wake-up."""

    def __init__(self, app: Runtime) -> None:
        self._app = app
        self._waiting: dict[str, list[asyncio.Future[ResultRow]]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    async def wait(self, task_id: str, timeout_s: float | None) -> ResultRow:
        fut: asyncio.Future[ResultRow] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(fut)
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: see store._wake.Pulse.wait
                return await fut
        finally:
            waiters = self._waiting.get(task_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    del self._waiting[task_id]

    async def _run(self) -> None:
        store = self._app.store
        # A task's first wait for a wake-up returns at once (it cannot know what it
        # missed): take it before the first read, so that a result committed after that
        # read wakes the wait below, and no second read is needed to start listening.
        with contextlib.suppress(Exception):  # failing, it costs one more read below
            await store.wait_for_finish(0)
        while self._waiting:
            ids = list(self._waiting)
            try:
                rows = await store.results_get(ids)
            except Exception as exc:
                for futs in list(self._waiting.values()):
                    for f in futs:
                        if not f.done():
                            f.set_exception(exc)
                return
            for row in rows:
                for f in self._waiting.pop(row.task_id, []):
                    if not f.done():
                        f.set_result(row)
            if self._waiting:
                await store.wait_for_finish(_POLL_S)

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()


@dataclass(frozen=True, slots=True)
class TaskHandle(Generic[R]):
    """A submitted task: `await handle.result()` returns its typed result."""

    id: str
    app: Runtime
    kind: str
    status: InsertStatus = InsertStatus.INSERTED

    @property
    def deduplicated(self) -> bool:
        """True when the submit matched an active task with the same key."""
        return self.status is not InsertStatus.INSERTED

    async def result(self, timeout: timedelta | None = None) -> R:
        """Wait for the end: the typed result, `TaskFailed`, or `TaskTimeout` past `timeout`.

        A stored result that does not decode (written by another tool, or by an older
        result type) raises `PayloadError` saying what was wrong."""
        await self.app.open()
        timeout_s = None if timeout is None else timeout.total_seconds()
        try:
            row = await self.app.results.wait(self.id, timeout_s)
        except TimeoutError:
            raise TaskTimeout(f"task {self.id} did not end within {timeout}") from None
        if row.state is not State.COMPLETED:
            err = row.error
            raise TaskFailed(
                self.id,
                row.state.value,
                err.type if err else None,
                err.message if err else None,
                err.traceback if err else None,
                err.category if err else None,
            )
        value: R = self.app.decode_result(self.kind, row.result)
        return value

    async def cancel(self) -> State:
        return await self.app.cancel(self.id)
