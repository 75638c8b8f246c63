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

    @app.task(name="echo")
    async def echo(x: int) -> int:
        return x

    worker = app.worker(concurrency=4, poll_interval=_NO_POLL)
    # for each freed slot, in order: whether it woke the claim loop, and whether a claim
    # was in flight then (that claim's outcome is not known yet, so the slot must wake)
    woke: list[tuple[bool, bool]] = []
    release = worker._release_slot

    def releasing(a: Any) -> None:
        woke.append((worker._claim_on_release, None in claims))
        release(a)

    worker._release_slot = releasing  # type: ignore[method-assign]
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
        assert claims[taken[second.id]] == 1  # the claim that took it came back short
        # So its freed slot did not wake the claim loop, unless a claim started by one of
        # the store's own wake-ups (PostgreSQL's NOTIFY of the same submit, a Redis marker
        # popped late on a loaded machine) was still in flight when it was freed.
        # (Counting claims cannot tell: such a wake-up can start one at any time.)
        woke_loop, claim_in_flight = woke[-1]
        assert not woke_loop or claim_in_flight
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
