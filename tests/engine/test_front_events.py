"""Every engine call to the store goes through the App's StoreFront: one telemetry event per
operation reaches a subscriber, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import pytest

import flowmill as fm
from flowmill.store import open_store
from flowmill.store._front import OPERATIONS, StoreEvent, StoreFront
from flowmill.store.contract import Store

TTL = timedelta(seconds=30)
ROUND_TRIP = {"tasks_insert", "tasks_claim", "tasks_finish"}


class Spy:
    """A backend proxy that counts each operation reaching it and can make one raise."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.raise_on: dict[str, BaseException] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in OPERATIONS:
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name in self.raise_on:
                raise self.raise_on[name]
            return await attr(*args, **kwargs)

        return call


@dataclass
class Job:
    n: int


def spied_app(db_url: str, clock: fm.ManualClock) -> tuple[fm.App, Spy]:
    spy = Spy(open_store(db_url))
    return fm.App(db_url, clock=clock, store=cast(Store, spy)), spy


async def test_the_app_talks_to_its_store_through_the_front(db_url: str) -> None:
    app = fm.App(db_url)
    assert isinstance(app.store, StoreFront)
    assert app.store.url == app.url
    assert app.store.capabilities.durable


async def test_a_claimer_round_trip_sends_one_event_per_operation(
    db_url: str, clock: fm.ManualClock
) -> None:
    app, spy = spied_app(db_url, clock)

    @app.task(name="double", queue="q")
    async def double(job: Job) -> int:
        raise AssertionError("run by a claimer")

    events: list[StoreEvent] = []
    async with app:
        unsubscribe = app.store.subscribe(events.append)
        spy.calls.clear()
        h = await app.submit(double, Job(2))
        async with app.claimer(worker_id="w", queues=["q"], lease_ttl=TTL) as c:
            task = await c.claim()
            assert task is not None
            await task.complete(4)
        assert await h.result(timeout=timedelta(seconds=10)) == 4
        unsubscribe()
        calls = Counter(spy.calls)
    assert Counter(e.operation for e in events) == calls  # one event per operation
    assert [e.operation for e in events if e.operation in ROUND_TRIP] == [
        "tasks_insert",
        "tasks_claim",
        "tasks_finish",
    ]
    assert all(e.outcome == "ok" and e.error_type is None for e in events)
    assert all(e.duration_s >= 0 for e in events)


async def test_a_failing_operation_sends_an_error_event(db_url: str, clock: fm.ManualClock) -> None:
    app, _ = spied_app(db_url, clock)

    @app.task(name="double")
    async def double(job: Job) -> int:
        return job.n * 2

    events: list[StoreEvent] = []
    async with app:
        h = await app.submit(double, Job(1))
        app.store.subscribe(events.append)
        with pytest.raises(fm.IllegalTransition):
            await app.retry(h.id)  # ready, not failed
    assert [(e.operation, e.outcome, e.error_type) for e in events] == [
        ("task_retry", "error", "IllegalTransition"),
        ("close", "ok", None),
    ]


async def test_a_worker_round_trip_sends_one_event_per_operation(
    db_url: str, clock: fm.ManualClock
) -> None:
    app, spy = spied_app(db_url, clock)

    @app.task(name="double")
    async def double(job: Job) -> int:
        return job.n * 2

    events: list[StoreEvent] = []
    async with app:
        unsubscribe = app.store.subscribe(events.append)
        spy.calls.clear()
        worker = app.worker(lease_ttl=TTL)
        run = asyncio.create_task(worker.run())
        try:
            h = await app.submit(double, Job(21))
            assert await h.result(timeout=timedelta(seconds=10)) == 42
        finally:
            worker.stop()
            await asyncio.wait_for(run, 30)
        unsubscribe()
        calls = Counter(spy.calls)
    assert Counter(e.operation for e in events) == calls
    done = [e for e in events if e.operation in ROUND_TRIP and e.outcome == "ok"]
    assert {e.operation for e in done} == ROUND_TRIP
    assert [e.operation for e in done if e.operation != "tasks_claim"] == [
        "tasks_insert",
        "tasks_finish",
    ]


async def test_an_unexpected_backend_error_becomes_a_store_error(
    db_url: str, clock: fm.ManualClock
) -> None:
    app, spy = spied_app(db_url, clock)

    @app.task(name="double")
    async def double(job: Job) -> int:
        return job.n * 2

    events: list[StoreEvent] = []
    async with app:
        h = await app.submit(double, Job(1))
        app.store.subscribe(events.append)
        boom = RuntimeError("the backend broke")
        spy.raise_on["task_get"] = boom
        with pytest.raises(fm.StoreError, match="task_get failed: RuntimeError") as got:
            await app.get(h.id)
        assert got.value.__cause__ is boom
        del spy.raise_on["task_get"]
        assert (await app.get(h.id)).state is fm.State.READY
    assert [(e.operation, e.outcome, e.error_type) for e in events][:2] == [
        ("task_get", "error", "StoreError"),
        ("task_get", "ok", None),
    ]
