"""Submitting by name: a service that does not import the worker's code submits plain JSON."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

import flowmill as fm

WAIT = timedelta(seconds=20)


@dataclass
class Resize:
    w: int
    h: int = 1


@contextlib.asynccontextmanager
async def worker_app(
    url: str, clock: fm.ManualClock, *, strict: bool = True
) -> AsyncIterator[fm.App]:
    """Another App on the same store, as a worker process would have: it registers "resize"."""
    other = fm.App(url, clock=clock)

    @other.task(name="resize", strict=strict)
    async def resize(r: Resize) -> dict[str, int]:
        return {"area": r.w * r.h}

    worker = other.worker()
    run = asyncio.create_task(worker.run())
    try:
        yield other
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)
        await other.close()


async def test_a_name_no_task_is_registered_for_is_stored_as_json(app: fm.App) -> None:
    h = await app.submit("resize", {"w": 10, "h": 2}, queue="images")
    info = await app.get(h.id)
    assert (info.name, info.queue, info.state) == ("resize", "images", fm.State.READY)
    assert info.payload == {"w": 10, "h": 2}
    assert (info.max_attempts, info.priority) == (fm.Retry().max_attempts, fm.Priority.NORMAL)
    assert (await app.get((await app.submit("resize", [1])).id)).queue == "default"


async def test_a_worker_that_registers_the_name_runs_it_and_the_result_is_json(
    app: fm.App, clock: fm.ManualClock
) -> None:
    h = await app.submit("resize", {"w": 10, "h": 2})
    async with worker_app(app.url, clock):
        assert await h.result(timeout=WAIT) == {"area": 20}
        # A handle made from the id alone, by name, decodes the same way.
        assert await app.handle(h.id, "resize").result(timeout=WAIT) == {"area": 20}


async def test_a_payload_that_does_not_fit_fails_that_task_naming_the_field(
    app: fm.App, clock: fm.ManualClock
) -> None:
    wrong_type = await app.submit("resize", {"w": "ten"})
    unknown = await app.submit("resize", {"w": 1, "depth": 3})
    good = await app.submit("resize", {"w": 3})
    async with worker_app(app.url, clock):
        assert await good.result(timeout=WAIT) == {"area": 3}
        for h, needle in ((wrong_type, "$.w"), (unknown, "unknown field `depth`")):
            with pytest.raises(fm.TaskFailed) as err:
                await h.result(timeout=WAIT)
            assert (err.value.state, err.value.category) == ("failed", "decode_error")
            assert err.value.error_type == "PayloadError"
            assert needle in (err.value.message or "")


async def test_strict_false_ignores_unknown_fields(app: fm.App, clock: fm.ManualClock) -> None:
    h = await app.submit("resize", {"w": 2, "h": 2, "added_in_v2": True})
    async with worker_app(app.url, clock, strict=False):
        assert await h.result(timeout=WAIT) == {"area": 4}


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"when": datetime(2026, 1, 1, tzinfo=UTC)}, "`$.when` is a datetime"),
        ({"tags": {"a", "b"}}, "`$.tags` is a set"),
        ({"x": [1, math.nan]}, "`$.x[1]` is nan"),
        ({1: "one"}, "has a int key 1"),
        (object(), "`$` is a object"),
    ],
)
async def test_a_payload_that_is_not_json_is_refused_and_nothing_is_stored(
    app: fm.App, payload: object, needle: str
) -> None:
    with pytest.raises(fm.PayloadError, match="submitted by name must be JSON") as err:
        await app.submit("resize", payload)
    assert needle in str(err.value)
    assert "'resize'" in str(err.value)
    assert await app.list_tasks() == []


async def test_structured_values_are_sent_as_json_objects(
    app: fm.App, clock: fm.ManualClock
) -> None:
    # A service may share the payload classes (not the handlers): they encode as objects.
    h = await app.submit("resize", Resize(4, 5))
    assert (await app.get(h.id)).payload == {"w": 4, "h": 5}
    async with worker_app(app.url, clock):
        assert await h.result(timeout=WAIT) == {"area": 20}


async def test_submit_many_by_name_is_one_transaction(app: fm.App, clock: fm.ManualClock) -> None:
    with pytest.raises(fm.PayloadError, match=r"\$\[0\]"):
        await app.submit_many("resize", [{"w": 1}, [b"bytes"]])
    assert await app.list_tasks() == []
    hs = await app.submit_many("resize", [{"w": n} for n in range(1, 4)], queue="default")
    assert [h.kind for h in hs] == ["resize"] * 3
    async with worker_app(app.url, clock):
        assert [await h.result(timeout=WAIT) for h in hs] == [{"area": n} for n in (1, 2, 3)]


async def test_a_registered_name_is_checked_against_its_type_at_submit(app: fm.App) -> None:
    @app.task(name="resize")
    async def resize(r: Resize) -> int:
        return r.w

    with pytest.raises(fm.PayloadError, match="must be Resize"):
        await app.submit("resize", {"w": 1})
    with pytest.raises(fm.PayloadError, match="must be Resize"):
        await app.submit_many("resize", [{"w": 1}])
    h = await app.submit("resize", Resize(1))
    assert (await app.get(h.id)).payload == Resize(1)


async def test_unknown_names_can_be_refused(db_url: str) -> None:
    app = fm.App(db_url, submit_unregistered=False)
    try:
        with pytest.raises(fm.UnknownTask, match="'resize'"):
            await app.submit("resize", {"w": 1})
        with pytest.raises(fm.UnknownTask):
            await app.submit_many("resize", [{"w": 1}])
        assert await app.list_tasks() == []
    finally:
        await app.close()


async def test_a_task_object_of_another_app_is_still_refused(app: fm.App) -> None:
    other = fm.App("sqlite://:memory:")

    @other.task(name="resize")
    async def resize(r: Resize) -> int:
        return r.w

    with pytest.raises(fm.UnknownTask):
        await app.submit(resize, Resize(1))
