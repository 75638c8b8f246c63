"""Group commit for a server store: concurrent small calls merged into one statement."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ...errors import StoreError

I = TypeVar("I")  # noqa: E741 - an item of a call
O = TypeVar("O")  # noqa: E741 - its outcome

Runner = Callable[[list[I]], Awaitable[list[O]]]


class Combiner(Generic[I, O]):
    """Runs calls at once while fewer than `max_inflight` run; merges the ones that queue.

    A lone call pays no extra latency. Under load, the calls that arrive while statements
    are in flight go together in the next one, so N coroutines finishing one task each cost
    about one transaction, not N. When a merged run fails with an error that belongs to
    one call (`split_on` says so), every call is run again on its own so that only the
    guilty one sees the error.
    """

    def __init__(
        self,
        run: Runner[I, O],
        *,
        max_items: int = 5000,
        max_inflight: int = 2,
        split_on: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self._run = run
        self._max_items = max_items
        self._max_inflight = max_inflight
        self._split_on = split_on
        self._pending: deque[tuple[list[I], asyncio.Future[list[O]]]] = deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, items: Sequence[I]) -> list[O]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[O]] = loop.create_future()
        self._pending.append((list(items), fut))
        if self._inflight < self._max_inflight:
            self._inflight += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def close(self) -> None:
        """Let every queued call finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _take(self) -> list[tuple[list[I], asyncio.Future[list[O]]]]:
        group = [self._pending.popleft()]
        n = len(group[0][0])
        while self._pending and n + len(self._pending[0][0]) <= self._max_items:
            items, fut = self._pending.popleft()
            group.append((items, fut))
            n += len(items)
        return group

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._run_group(self._take())
        finally:
            self._inflight -= 1

    async def _run_group(self, group: list[tuple[list[I], asyncio.Future[list[O]]]]) -> None:
        flat = [item for items, _ in group for item in items]
        try:
            out = await self._run(flat)
        except asyncio.CancelledError:
            _fail_all(group, StoreError("the store was closed before the call ran"))
            raise
        except Exception as exc:
            if len(group) > 1 and self._split_on(exc):
                for items, fut in group:
                    await self._run_group([(items, fut)])
            else:
                _fail_all(group, exc)
            return
        offset = 0
        for items, fut in group:
            if not fut.done():
                fut.set_result(out[offset : offset + len(items)])
            offset += len(items)


def _fail_all(group: list[tuple[list[I], asyncio.Future[list[O]]]], exc: BaseException) -> None:
    for _, fut in group:
        if not fut.done():
            fut.set_exception(exc)
