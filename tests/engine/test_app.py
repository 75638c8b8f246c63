"""Submission, validation and inspection through the public App API."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

import flowmill as fm

from .test_worker import Job, running


@dataclass
class AddArgs:
    a: int
    b: int


class Point(msgspec.Struct):
    x: float
    y: float


async def test_readme_example(app: fm.App) -> None:
    @app.task(retry=fm.Retry(max_attempts=3), timeout=timedelta(seconds=5))
    async def add(args: AddArgs) -> int:
        return args.a + args.b

    h = await app.submit(add, AddArgs(a=1, b=2))
    async with running(app.worker()):
        assert await h.result(timeout=timedelta(seconds=10)) == 3


async def test_struct_and_json_types_round_trip(app: fm.App) -> None:
    @app.task
    async def flip(p: Point) -> Point:
        return Point(p.y, p.x)

    @app.task
    async def total(xs: list[int]) -> dict[str, int]:
        return {"sum": sum(xs)}

    async with running(app.worker()):
        assert await (await app.submit(flip, Point(1, 2))).result() == Point(2, 1)
        assert await (await app.submit(total, [1, 2, 3])).result() == {"sum": 6}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delay": timedelta(seconds=-1)}, "delay"),
        ({"on_duplicate": "overwrite"}, "on_duplicate"),
        ({"queue": "bad queue;"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"run_at": datetime(2030, 1, 1)}, "timezone"),
        ({"delay": timedelta(1), "run_at": datetime.now(UTC)}, "not both"),
        ({"key": ""}, "key"),
        ({"tags": {"a": 1}}, "tags"),
        ({"ttl": timedelta(0)}, "ttl"),
        ({"priority": "high"}, "priority"),
    ],
)
async def test_bad_submit_options_raise_and_store_nothing(
    app: fm.App, kwargs: dict[str, object], match: str
) -> None:
    @app.task
    async def noop(n: int) -> None:
        return None

    with pytest.raises(fm.ConfigurationError, match=match):
        await app.submit(noop, 1, **kwargs)  # type: ignore[arg-type]
    assert await app.list_tasks() == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"retry": fm.Retry}, "retry"),
        ({"queue": "no spaces"}, "queue"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout": timedelta(seconds=-5)}, "timeout"),
    ],
)
def test_bad_task_definitions_raise(options: dict[str, object], match: str) -> None:
    app = fm.App("sqlite://:memory:")
    with pytest.raises(fm.ConfigurationError, match=match):
        app.task(**options)(_noop)  # type: ignore[call-overload]


async def _noop(n: int) -> None:
    return None


def test_retry_cap_must_be_at_least_one() -> None:
    with pytest.raises(fm.ConfigurationError, match="max_attempts"):
        fm.Retry(max_attempts=0)


async def test_typed_submit_errors_store_nothing(app: fm.App) -> None:
    @app.task
    async def add(args: AddArgs) -> int:
        return args.a + args.b

    with pytest.raises(fm.PayloadError, match="AddArgs"):
        await app.submit(add, {"a": 1, "b": 2})
    app.submit_unregistered = False  # by default an unregistered name is submitted by name
    with pytest.raises(fm.UnknownTask):
        await app.submit("nobody.registered.this", 1)
    other = fm.App("sqlite://:memory:")
    stranger = other.task(_noop)
    with pytest.raises(fm.UnknownTask):
        await app.submit(stranger, 1)
    assert await app.list_tasks() == []


async def test_payload_too_large_is_refused_at_submit(db_url: str) -> None:
    app = fm.App(db_url, max_payload_bytes=1024)

    @app.task
    async def blob(s: str) -> None:
        return None

    try:
        with pytest.raises(fm.PayloadTooLarge) as err:
            await app.submit(blob, "x" * 2000)
        assert err.value.limit == 1024
        with pytest.raises(fm.PayloadTooLarge):
            await app.submit_many(blob, ["ok", "x" * 2000])
        assert await app.list_tasks() == []  # the batch is refused whole
        await app.submit(blob, "x" * 1000)
    finally:
        await app.close()


async def test_dedup_modes(app: fm.App) -> None:
    @app.task
    async def send(n: int) -> None:
        return None

    first = await app.submit(send, 1, key="mail-1", delay=timedelta(hours=1))
    skipped = await app.submit(send, 2, key="mail-1")
    assert (skipped.id, skipped.deduplicated) == (first.id, True)
    assert (await app.get(first.id)).payload == 1
    replaced = await app.submit(send, 3, key="mail-1", on_duplicate="replace")
    assert replaced.id == first.id
    info = await app.get(first.id)
    assert (info.payload, info.state) == (3, fm.State.READY)
    with pytest.raises(fm.DuplicateTask) as err:
        await app.submit(send, 4, key="mail-1", on_duplicate="reject")
    assert err.value.existing_id == first.id
    assert len(await app.list_tasks()) == 1


async def test_concurrent_submitters_with_one_key_make_one_task(app: fm.App) -> None:
    @app.task
    async def once(n: int) -> None:
        return None

    handles = await asyncio.gather(*(app.submit(once, i, key="same") for i in range(50)))
    assert len({h.id for h in handles}) == 1
    assert sum(not h.deduplicated for h in handles) == 1


async def test_submit_many_ten_thousand_in_one_call(app: fm.App) -> None:
    @app.task
    async def noop(n: int) -> None:
        return None

    handles = await app.submit_many(noop, range(10_000), tags={"batch": "b1"})
    assert len({h.id for h in handles}) == 10_000
    counts = {(c.queue, c.state): c.count for c in await app.status()}
    assert counts[("default", fm.State.READY)] == 10_000


async def test_priority_then_fifo(app: fm.App) -> None:
    order: list[int] = []

    @app.task
    async def record(n: int) -> None:
        order.append(n)

    await app.submit_many(record, [1, 2, 3])
    await app.submit(record, 10, priority=fm.Priority.HIGH)
    await app.submit(record, 0, priority=fm.Priority.LOW)
    await app.submit(record, 11, priority=fm.Priority.HIGH)
    worker = app.worker(concurrency=1, prefetch=0, claim_batch=1)
    await asyncio.wait_for(worker.run(stop_when_idle=True), 30)
    assert order == [10, 11, 1, 2, 3, 0]


async def test_ttl_expires_unstarted_tasks(app: fm.App, clock: fm.ManualClock) -> None:
    @app.task(queue="slow-lane")
    async def stale(n: int) -> None:
        return None

    h = await app.submit(stale, 1, ttl=timedelta(minutes=5))
    worker = app.worker(queues=["other"])
    await clock.advance(timedelta(minutes=6))
    await worker.maintain()
    with pytest.raises(fm.TaskFailed) as err:
        await h.result(timeout=timedelta(seconds=5))
    assert err.value.state == "expired"


async def test_tags_queue_and_unicode_round_trip(app: fm.App) -> None:
    @app.task(queue="q:1")
    async def noop(n: int) -> None:
        return None

    tags = {"owner": "zoë'; DROP TABLE fm_tasks; --", "emoji": "🚀"}
    h = await app.submit(noop, 1, tags=tags, key='ключ "quoted"')
    info = await app.get(h.id)
    assert (info.tags, info.key, info.queue) == (tags, 'ключ "quoted"', "q:1")


async def test_progress_and_events(app: fm.App) -> None:
    seen: list[float | None] = []

    @app.task
    async def long(n: int, ctx: fm.Context) -> int:
        await ctx.progress(40, "halfway-ish")
        seen.append((await app.get(ctx.task_id)).progress)
        with pytest.raises(ValueError, match="0 to 100"):
            await ctx.progress(140)
        return n

    async with running(app.worker()):
        h = await app.submit(long, 5)
        assert await h.result(timeout=timedelta(seconds=10)) == 5
    assert seen == [40.0]
    info = await app.get(h.id)
    assert (info.progress, info.progress_message) == (40.0, "halfway-ish")
    events = [e async for e in app.events(follow=False) if e.task_id == h.id]
    assert [e.state for e in events] == [
        fm.State.READY,
        fm.State.RUNNING,
        fm.State.RUNNING,
        fm.State.COMPLETED,
    ]
    assert "40" in (events[2].detail or "")  # progress shows in the event stream
    assert "halfway-ish" in (events[2].detail or "")


async def test_get_unknown_task(app: fm.App) -> None:
    with pytest.raises(fm.TaskNotFound):
        await app.get("no-such-id")
    with pytest.raises(fm.TaskNotFound):
        await app.cancel("no-such-id")


async def test_result_timeout(app: fm.App) -> None:
    @app.task
    async def never(n: int) -> None:
        return None

    h = await app.submit(never, 1)  # no worker runs
    with pytest.raises(fm.TaskTimeout):
        await h.result(timeout=timedelta(milliseconds=50))


async def test_open_refuses_foreign_and_newer_databases(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(fm.SchemaError, match="not a flowmill database"):
        await fm.App(f"sqlite:///{foreign}").open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(fm.SchemaError):
        await fm.App(f"sqlite:///{garbage}").open()
    newer = tmp_path / "newer.db"
    app = fm.App(f"sqlite:///{newer}")
    await app.open()
    await app.close()
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE fm_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(fm.SchemaError, match="newer"):
        await fm.App(f"sqlite:///{newer}").open()


def test_bad_urls() -> None:
    with pytest.raises(fm.ConfigurationError, match="URL"):
        fm.App("not a url")
    with pytest.raises(fm.ConfigurationError, match="scheme"):
        fm.App("mysql://localhost/db")


async def test_flowmill_url_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMILL_URL", f"sqlite:///{tmp_path / 'env.db'}")
    app = fm.App()
    await app.open()
    await app.close()
    assert (tmp_path / "env.db").exists()


async def test_job_helper_is_importable() -> None:
    assert Job(1).n == 1
