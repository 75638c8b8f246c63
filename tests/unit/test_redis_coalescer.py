"""The Redis store's Coalescer: requests that wait while a call is in flight go out together."""

from __future__ import annotations

import asyncio

import pytest

from flowmill.errors import StoreError
from flowmill.store.redis import _batch
from flowmill.store.redis._batch import Coalescer


class Sender:
    """Records each batch; each call waits until the test releases it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, batch: list[int]) -> list[int]:
        self.batches.append(batch)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [r * 10 for r in batch]


def _coalescer(sender: Sender) -> tuple[Coalescer[int], set[asyncio.Task[None]]]:
    tasks: set[asyncio.Task[None]] = set()
    return Coalescer(sender, lambda r: r, tasks.add), tasks


async def test_requests_behind_a_call_in_flight_go_out_in_one() -> None:
    sender = Sender()
    c, _ = _coalescer(sender)
    first = asyncio.ensure_future(c.call(1))
    while not sender.batches:
        await asyncio.sleep(0)
    rest = [asyncio.ensure_future(c.call(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    sender.release.set()
    assert await first == 10
    assert await asyncio.gather(*rest) == [20, 30, 40]
    assert sender.batches == [[1], [2, 3, 4]]


async def test_weight_splits_batches_and_a_failure_is_each_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_batch, "MAX_WEIGHT", 5)
    sender = Sender()
    sender.fail = ValueError("down")
    sender.release.set()
    c, _ = _coalescer(sender)
    calls = [asyncio.ensure_future(c.call(w)) for w in (3, 2, 4, 9)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert sender.batches == [[3, 2], [4], [9]]  # a heavy request still goes, alone


async def test_cancelled_sender_fails_what_waits() -> None:
    sender = Sender()
    c, tasks = _coalescer(sender)
    calls = [asyncio.ensure_future(c.call(i)) for i in (1, 2)]
    while not sender.batches:
        await asyncio.sleep(0)
    late = asyncio.ensure_future(c.call(3))
    await asyncio.sleep(0)
    for t in tasks:  # what the store's close() does
        t.cancel()
    results = await asyncio.gather(*calls, late, return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results), results
