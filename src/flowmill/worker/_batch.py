"""Natural batching: calls made while one store call is in flight go out together next."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    """Turns many single-item awaits into few list calls, one in flight at a time."""

    def __init__(
        self, call: Callable[[list[In]], Awaitable[Sequence[Out]]], *, max_batch: int = 500
    ) -> None:
        self._call = call
        self._max = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._running = False

    async def submit(self, item: In) -> Out:
        fut: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max]
                del self._pending[: self._max]
                try:
                    outs = await self._call([item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), out in zip(batch, outs, strict=True):
                    if not fut.done():
                        fut.set_result(out)
        finally:
            self._running = False
