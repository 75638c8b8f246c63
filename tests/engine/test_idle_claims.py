"""An idle worker claims when woken by new work, not again after each of its finishes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import flowmill as fm


async def test_an_idle_worker_does_not_claim_after_each_finish(
    app: fm.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(name="ic.noop")
    async def noop(n: int) -> int:
        return n

    claims = [0]
    claim = app.store.tasks_claim

    async def counted(p: Any) -> Any:
        claims[0] += 1
        return await claim(p)

    monkeypatch.setattr(app.store, "tasks_claim", counted)
    worker = app.worker(concurrency=4)
    run = asyncio.create_task(worker.run())
    try:
        for n in range(2):  # warm up: the worker's first wake-ups answer at once
            assert await (await app.submit(noop, n)).result(timedelta(seconds=10)) == n
        before = claims[0]
        rounds = 6
        for n in range(rounds):
            assert await (await app.submit(noop, n)).result(timedelta(seconds=10)) == n
        # One claim per task, woken by its submit (one more allowed for a stray wake-up);
        # not a second one after each finish that would find the store empty.
        assert claims[0] - before <= rounds + 1
    finally:
        worker.stop()
        await asyncio.wait_for(run, 10)
