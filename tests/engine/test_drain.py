"""`app.drain()`: a whole pipeline in one test, with no worker process and no sleeping."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill.testing import DrainReport

WAIT = timedelta(seconds=10)


@dataclass
class Order:
    id: int
    lines: int


async def test_retries_with_backoff_move_the_manual_clock(
    app: fm.App, clock: fm.ManualClock
) -> None:
    tries: list[int] = []
    start = clock.now

    @app.task(retry=fm.Retry(max_attempts=3, backoff=fm.Fixed(timedelta(minutes=5))))
    async def flaky(order: Order, ctx: fm.Context) -> int:
        tries.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return order.lines

    h = await app.submit(flaky, Order(1, 4))
    report = await app.drain()
    assert report == DrainReport(completed=1, retried=2, advanced=timedelta(minutes=10))
    assert report.attempts == 3
    assert tries == [1, 2, 3]
    assert clock.now - start == timedelta(minutes=10)
    assert await h.result(timeout=WAIT) == 4


async def test_delays_dead_letters_and_what_is_left(app: fm.App, clock: fm.ManualClock) -> None:
    @app.task(retry=fm.Retry(max_attempts=2, backoff=fm.Fixed(timedelta(seconds=30))))
    async def always_fails(n: int) -> None:
        raise ValueError(f"bad {n}")

    @app.task
    def later(n: int) -> int:
        return n + 1

    dead = await app.submit(always_fails, 1)
    delayed = await app.submit(later, 1, delay=timedelta(hours=2))
    report = await app.drain()
    assert (report.dead_lettered, report.retried, report.completed) == (1, 1, 1)
    assert report.advanced == timedelta(hours=2)
    assert report.left == 0
    assert (await app.get(dead.id)).state is fm.State.DEAD_LETTERED
    assert await delayed.result(timeout=WAIT) == 2
    assert await app.drain() == DrainReport()  # nothing ready: nothing runs, the clock stays


async def test_children_finalize_and_workflow_nodes(app: fm.App) -> None:
    @app.task
    async def pack(line: int) -> int:
        return line * 10

    @app.executor
    class Fulfil(fm.Executor[Order, int, int]):
        async def execute(self, order: Order, ctx: fm.Context) -> int:
            await ctx.spawn_many(pack, range(order.lines))
            return order.id

        async def finalize(self, order: Order, memo: int, ctx: fm.Context) -> int:
            return memo * 1000 + sum([c.result async for c in ctx.children(pack)])

    @app.task
    async def invoice(_: None, ctx: fm.Context) -> str:
        return f"invoice for {await ctx.upstream('Fulfil')}"

    wf = app.workflow("order")
    first = wf.add(Fulfil, Order(7, 3))
    wf.add(invoice, None, after=[first])
    run = await wf.submit()
    report = await app.drain()
    # execute, 3 children, finalize, then the downstream node
    assert (report.waiting_children, report.completed) == (1, 5)
    res = await run.result(timeout=WAIT)
    assert res["Fulfil"] == 7030
    assert res["invoice"] == "invoice for 7030"


async def test_a_task_that_resubmits_itself_forever_is_stopped(app: fm.App) -> None:
    @app.task
    async def again(n: int) -> None:
        await app.submit(again, n + 1)

    await app.submit(again, 0)
    with pytest.raises(AssertionError, match="max_tasks=20"):
        await app.drain(max_tasks=20)


async def test_with_the_system_clock_delayed_tasks_are_left(db_url: str) -> None:
    async with fm.App(db_url) as app:

        @app.task
        async def later(n: int) -> int:
            return n

        await app.submit(later, 1, delay=timedelta(hours=1))
        await app.submit(later, 2)
        report = await app.drain()
        assert (report.completed, report.left, report.advanced) == (1, 1, timedelta(0))


def test_drain_sync_from_a_plain_function(db_url: str) -> None:
    app = fm.App(db_url, clock=fm.ManualClock())

    @app.task
    def shout(word: str) -> str:
        return word.upper()

    h = app.submit_sync(shout, "hi", delay=timedelta(minutes=1))
    report = app.drain_sync()
    assert (report.completed, report.advanced) == (1, timedelta(minutes=1))
    assert h.result(timeout=WAIT) == "HI"
    app.close_sync()
