"""When a freed slot makes the worker claim again: only when its last claim was cut short by
room (slots, a kind's max_concurrency), not when it found fewer ready tasks than it could
take. A claim then would find nothing, and on SQLite it holds the write lock that the next
submit needs."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import flowmill as fm

from ..conftest import eventually

# So long that a test passes only through wake-ups, never through the fallback poll.
_NO_POLL = timedelta(hours=1)


def _count_claims(app: fm.App, taken: dict[str, int] | None = None) -> list[int | None]:
    """Each claim made, in order: the number of rows it returned (None until it has).

    `taken`, when given, maps each claimed task id to the position of the claim that took it.
    """
    got: list[int | None] = []
    real = app.store.tasks_claim

    async def counting(p: Any) -> Any:
        got.append(None)
        at = len(got) - 1
        rows = await real(p)
        got[at] = len(rows)
        if taken is not None:
            for row in rows:
                taken[row.id] = at
        return rows

    app.store.tasks_claim = counting  # type: ignore[method-assign]
    return got


async def test_a_freed_slot_does_not_claim_again_after_a_claim_that_found_all_there_was(
    app: fm.App,
) -> None:
    taken: dict[str, int] = {}
    claims = _count_claims(app, taken)
    at_start: list[int] = []

    @app.task(name="echo")
    async def echo(x: int) -> int:
        at_start.append(len(claims))  # the claims made up to the one that took this task
        return x

    worker = app.worker(concurrency=4, poll_interval=_NO_POLL)
    run = asyncio.ensure_future(worker.run())
    try:
        # The first task lets the worker settle (its start-up wake-ups are spent).
        assert await (await app.submit(echo, 1)).result(timedelta(seconds=10)) == 1
        await asyncio.wait_for(worker._idle.wait(), 10)
        second = await app.submit(echo, 2)
        assert await second.result(timedelta(seconds=10)) == 2
        await asyncio.wait_for(worker._idle.wait(), 10)  # its slot is free again
        for _ in range(200):  # a claim woken by the freed slot would start meanwhile
            await asyncio.sleep(0)
        # No claim began after the second handler started. (A wake-up that arrived between
        # the claim that took the task and its handler's start, such as PostgreSQL's NOTIFY
        # of the same submit, may have made an empty claim before it: that one is counted.)
        assert len(claims) == at_start[1]
        assert claims[taken[second.id]] == 1  # the claim that took it came back short
        # The next task is still claimed at once: its submit wakes the worker.
        assert await (await app.submit(echo, 3)).result(timedelta(seconds=10)) == 3
    finally:
        worker.stop()
        await asyncio.wait_for(run, 10)


async def test_a_freed_slot_claims_again_after_a_kind_reached_its_max_concurrency(
    app: fm.App,
) -> None:
    order: list[str] = []
    release = asyncio.Event()

    @app.task(name="one_at_a_time", max_concurrency=1)
    async def one_at_a_time(x: int) -> int:
        order.append(f"start {x}")
        await release.wait()
        return x

    @app.task(name="other")  # an unlimited kind with nothing ready: its claim comes back short
    async def other(x: int) -> int:
        return x

    worker = app.worker(concurrency=4, poll_interval=_NO_POLL)
    run = asyncio.ensure_future(worker.run())
    try:
        first = await app.submit(one_at_a_time, 1)
        second = await app.submit(one_at_a_time, 2)

        async def started() -> bool:
            return bool(order)

        await eventually(started, what="the first handler to start")
        release.set()
        # Only the first ran; the second is claimed when the first's slot frees, not after
        # the fallback poll.
        assert await first.result(timedelta(seconds=10)) == 1
        assert await second.result(timedelta(seconds=10)) == 2
        assert order == ["start 1", "start 2"]
    finally:
        worker.stop()
        await asyncio.wait_for(run, 10)
