"""The synchronous API: many threads, a thread with a running loop, and a sync handler."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

import flowmill as fm
from flowmill.store._front import StoreEvent

from .test_worker import running

THREADS = 32
WAIT = timedelta(seconds=20)


def _square_app(url: str) -> tuple[fm.App, fm.TaskDef]:
    app = fm.App(url, clock=fm.ManualClock())

    @app.task
    def square(n: int) -> int:
        return n * n

    return app, square


def _count_opens(app: fm.App) -> list[str]:
    opens: list[str] = []

    def on_event(ev: StoreEvent) -> None:
        if ev.operation == "open":
            opens.append(threading.current_thread().name)

    app.store.subscribe(on_event)
    return opens


def _submit_from_threads(app: fm.App, task: fm.TaskDef) -> list[str]:
    barrier = threading.Barrier(THREADS)

    def one(n: int) -> str:
        barrier.wait()  # all threads call at once, the first call included
        return app.submit_sync(task, n, key=f"job-{n}").id

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(one, range(THREADS)))


def test_32_threads_without_a_loop_share_one_store(db_url: str) -> None:
    app, square = _square_app(db_url)
    opens = _count_opens(app)
    ids = _submit_from_threads(app, square)
    assert len(set(ids)) == THREADS
    assert opens == ["flowmill-sync-loop"]  # one store (pool), opened once, on one loop
    again = app.submit_sync(square, 3, key="job-3")
    assert again.deduplicated and again.id == ids[3]
    report = app.drain_sync()
    assert report.completed == THREADS
    handles = [app.handle_sync(i, square) for i in ids]
    assert sorted(h.result(timeout=WAIT) for h in handles) == [n * n for n in range(THREADS)]
    app.close_sync()
    assert not any(t.name == "flowmill-sync-loop" for t in threading.enumerate())


async def test_32_threads_hop_to_the_loop_the_app_is_open_on(db_url: str) -> None:
    app, square = _square_app(db_url)
    opens = _count_opens(app)
    await app.open()
    ids = await asyncio.to_thread(_submit_from_threads, app, square)
    assert len(set(ids)) == THREADS
    assert opens == [threading.current_thread().name]
    assert not any(t.name == "flowmill-sync-loop" for t in threading.enumerate())
    assert (await app.drain()).completed == THREADS
    many = await asyncio.to_thread(app.submit_many_sync, square, [5, 6])
    await app.drain()
    results = await asyncio.gather(*(h.aio.result(timeout=WAIT) for h in many))
    assert results == [25, 36]
    info = await asyncio.to_thread(app.get_sync, many[0].id)
    assert (info.state, info.result) == (fm.State.COMPLETED, 25)
    await app.close()


async def test_from_a_thread_whose_loop_runs_like_a_jupyter_cell(db_url: str) -> None:
    # This coroutine's loop runs in this thread (as in a notebook cell); the app was never
    # opened on it, so the sync API opens it on a loop of its own and blocks only briefly.
    app, square = _square_app(db_url)
    h = app.submit_sync(square, 7)
    assert app.get_sync(h.id).state is fm.State.READY
    assert app.drain_sync().completed == 1
    assert h.result(timeout=WAIT) == 49
    assert h.info().result == 49
    app.close_sync()


async def test_a_blocking_call_on_the_apps_own_loop_is_refused(db_url: str) -> None:
    app, square = _square_app(db_url)
    await app.open()
    with pytest.raises(fm.ConfigurationError, match="await the async method"):
        app.submit_sync(square, 1)
    await app.close()


async def test_submit_sync_and_result_inside_a_sync_handler(db_url: str) -> None:
    app, square = _square_app(db_url)
    seen: list[str] = []

    @app.task
    def fan_out(n: int) -> list[str]:
        seen.append(threading.current_thread().name)
        return [app.submit_sync(square, i).id for i in range(n)]

    async with app:
        h = await app.submit(fan_out, 3)
        report = await app.drain()
        assert (report.completed, report.failed) == (4, 0)
        assert seen[0].startswith("flowmill-sync")  # a worker thread, not the loop
        child_ids = await h.result(timeout=WAIT)
        values = [await app.handle(i, square).result(timeout=WAIT) for i in child_ids]
        assert values == [0, 1, 4]


async def test_close_from_async_code_closes_an_app_the_sync_api_opened(db_url: str) -> None:
    app, square = _square_app(db_url)
    await asyncio.to_thread(app.submit_sync, square, 2)
    assert any(t.name == "flowmill-sync-loop" for t in threading.enumerate())
    await app.close()
    assert not any(t.name == "flowmill-sync-loop" for t in threading.enumerate())


async def test_result_timeout_and_failure_block_and_raise(db_url: str) -> None:
    app, _ = _square_app(db_url)

    @app.task(retry=fm.Retry(max_attempts=1))
    def broken(n: int) -> int:
        raise fm.Fail(f"no {n}")

    h = await asyncio.to_thread(app.submit_sync, broken, 4)
    with pytest.raises(fm.TaskTimeout):
        await asyncio.to_thread(h.result, timedelta(milliseconds=50))
    await asyncio.to_thread(app.drain_sync)
    with pytest.raises(fm.TaskFailed, match="no 4"):
        await asyncio.to_thread(h.result, WAIT)
    await asyncio.to_thread(app.close_sync)


async def test_a_sync_handler_under_a_worker_blocks_on_a_task_it_submitted(app: fm.App) -> None:
    @app.task
    def square(n: int) -> int:
        return n * n

    @app.task
    def square_plus_one(n: int) -> int:
        child = app.submit_sync(square, n)  # hops to the worker's loop from its thread
        return child.result(timeout=WAIT) + 1  # blocks this thread only; the loop runs on

    async with running(app.worker(concurrency=4)):
        h = await app.submit(square_plus_one, 5)
        assert await h.result(timeout=WAIT) == 26
