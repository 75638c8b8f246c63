"""Concurrent calls of one kind, sent together: one FCALL carries many callers' requests.

While a call is in flight, the requests that arrive wait; when it returns, every waiting
request goes out in one call. A lone request goes out at once (no added latency), and a
busy store sends fewer, larger calls (a worker spawning children from 64 handlers sends
one insert per round trip instead of 64).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from ...errors import StoreError

Req = TypeVar("Req")

# Limits of one call: requests, and their weight (tasks inserted, say) once past the first.
MAX_REQUESTS = 256
MAX_WEIGHT = 2000


class Coalescer(Generic[Req]):
    """Queue `Req`s; one sender task sends them in batches with `send` (one reply each).

    `send(batch)` returns one reply per request, in order; an exception it raises is
    every request's. `weigh(req)` is a request's share of `MAX_WEIGHT`.
    """

    def __init__(
        self,
        send: Callable[[list[Req]], Awaitable[list[Any]]],
        weigh: Callable[[Req], int],
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._send = send
        self._weigh = weigh
        self._track = track
        self._pending: list[tuple[Req, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, req: Req) -> Any:
        """Send `req` (with whatever else is waiting) and return its reply."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((req, fut))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._run())
            self._track(self._sender)
        return await fut

    def _take(self) -> list[tuple[Req, asyncio.Future[Any]]]:
        batch: list[tuple[Req, asyncio.Future[Any]]] = []
        weight = 0
        while self._pending and len(batch) < MAX_REQUESTS:
            req, fut = self._pending[0]
            w = self._weigh(req)
            if batch and weight + w > MAX_WEIGHT:
                break
            self._pending.pop(0)
            if fut.done():  # its caller was cancelled before it went out
                continue
            batch.append((req, fut))
            weight += w
        return batch

    async def _run(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                if not batch:
                    continue
                try:
                    replies = await self._send([req for req, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                except BaseException:
                    self._pending[:0] = batch  # failed below, in `finally`
                    raise
                for (_, fut), reply in zip(batch, replies, strict=True):
                    if not fut.done():
                        fut.set_result(reply)
        finally:
            self._sender = None
            pending, self._pending = self._pending, []
            for _, fut in pending:  # only when the sender itself was cancelled (close)
                if not fut.done():
                    fut.set_exception(StoreError("the store was closed"))
