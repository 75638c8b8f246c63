"""Waiting for a result: how many reads one wait costs."""

from __future__ import annotations

import asyncio

import pytest

import flowmill as fm
from flowmill import _handle
from flowmill.store._front import StoreEvent

from ..conftest import eventually


async def test_a_wait_reads_once_before_and_once_after_the_finish(
    app: fm.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No fallback poll within the test: every read counted is one the wait itself chose.
    monkeypatch.setattr(_handle, "_POLL_S", 60.0)

    @app.task(name="rw.noop")
    async def noop(n: int) -> int:
        return n

    handle = await app.submit(noop, 7)
    ops: list[str] = []

    def seen(event: StoreEvent) -> None:
        ops.append(event.operation)

    app.store.subscribe(seen)
    waiting = asyncio.create_task(handle.result())

    async def read_once() -> bool:
        return "results_get" in ops

    await eventually(read_once, what="the first read")
    async with app.claimer(worker_id="w", kinds=["rw.noop"]) as claimer:
        claimed = await claimer.claim()
        assert claimed is not None
        await claimed.complete(7)
    assert await asyncio.wait_for(waiting, 10) == 7
    # Once before the task ended (it might have ended already), once when woken by its end:
    # not a second read just to start listening.
    assert ops.count("results_get") == 2
