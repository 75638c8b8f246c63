"""Schedules end to end on every backend, driven by a manual clock: exactly one task per
tick across workers, DST in a cron's time zone, misfire policies after an outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import flowmill as fm
from flowmill._schedules import MISFIRE_GRACE_MS, RUN_ALL_CAP, SCHEDULE_TAG, run_now, set_paused
from flowmill.store.contract.schedules import SchedulesList
from flowmill.store.contract.tasks import TaskRecord, TasksList
from flowmill.worker._worker import Worker

PARIS = ZoneInfo("Europe/Paris")
START = datetime(2030, 1, 1, tzinfo=UTC)


def make_app(db_url: str, clock: fm.ManualClock, **schedule: object) -> fm.App:
    app = fm.App(db_url, clock=clock)

    @app.task
    async def report(day: str) -> None:
        return None

    if schedule:
        app.schedule("nightly", report, "d", **schedule)  # type: ignore[arg-type]
    return app


@pytest.fixture
async def apps(db_url: str) -> AsyncIterator[list[fm.App]]:
    made: list[fm.App] = []
    yield made
    for app in made:
        await app.close()


async def started(app: fm.App) -> Worker:
    """A worker whose start-up declared the app's schedules (its loops are driven by hand)."""
    await app.open()
    worker = app.worker(worker_id=f"w{id(app)}")
    await worker.scheduler.declare()
    return worker


async def scheduled_tasks(app: fm.App) -> list[TaskRecord]:
    rows = await app.store.tasks_list(TasksList((), None, None, 100_000))
    return sorted(
        (r for r in rows if r.tags.get(SCHEDULE_TAG) == "nightly"), key=lambda r: r.dedup_key or ""
    )


def ticks_of(rows: list[TaskRecord]) -> list[int]:
    return sorted(int((r.dedup_key or "").rsplit(":", 1)[1]) for r in rows)


async def test_three_workers_fire_each_of_a_thousand_ticks_once(
    db_url: str, apps: list[fm.App]
) -> None:
    clock = fm.ManualClock(START)
    apps += [make_app(db_url, clock, every=timedelta(minutes=1)) for _ in range(3)]
    workers = [await started(app) for app in apps]
    for i in range(1000):
        await clock.advance(timedelta(minutes=1))
        await asyncio.gather(*(w.maintenance.maintain(full=i % 97 == 0) for w in workers))
    rows = await scheduled_tasks(apps[0])
    first = int(START.timestamp() * 1000) + 60_000
    assert ticks_of(rows) == [first + 60_000 * k for k in range(1000)]
    [stored] = await apps[0].store.schedules_list(SchedulesList())
    assert stored.fired == 1000 and stored.last_tick_ms == first + 999 * 60_000
    assert sum(w.scheduler.fired for w in workers) == 1000


async def test_a_restarted_worker_does_not_fire_a_tick_again(
    db_url: str, apps: list[fm.App]
) -> None:
    clock = fm.ManualClock(START)
    apps.append(make_app(db_url, clock, every=timedelta(minutes=5)))
    worker = await started(apps[0])
    await clock.advance(timedelta(minutes=5))
    await worker.maintenance.maintain()
    apps.append(make_app(db_url, clock, every=timedelta(minutes=5)))  # the same code, restarted
    again = await started(apps[1])
    await again.maintenance.maintain()
    await worker.maintenance.maintain()
    assert len(await scheduled_tasks(apps[0])) == 1


async def cron_ticks_over(
    db_url: str, apps: list[fm.App], start: datetime, days: int, cron: str
) -> list[datetime]:
    clock = fm.ManualClock(start)
    apps.append(make_app(db_url, clock, cron=cron, tz="Europe/Paris"))
    worker = await started(apps[-1])
    for _ in range(days * 24 * 4):
        await clock.advance(timedelta(minutes=15))
        await worker.maintenance.maintain(full=False)
    ticks = ticks_of(await scheduled_tasks(apps[-1]))
    return [datetime.fromtimestamp(t / 1000, PARIS) for t in ticks]


async def test_dst_spring_forward_fires_at_the_end_of_the_gap(
    db_url: str, apps: list[fm.App]
) -> None:
    # 2026-03-29 in Paris: 02:00 jumps to 03:00, so 02:30 does not exist that day.
    fired = await cron_ticks_over(
        db_url, apps, datetime(2026, 3, 28, 12, tzinfo=UTC), 3, "30 2 * * *"
    )
    assert [f.isoformat() for f in fired] == [
        "2026-03-29T03:00:00+02:00",  # once, right after the gap (cronsim, as Debian cron)
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


async def test_dst_fall_back_fires_once(db_url: str, apps: list[fm.App]) -> None:
    # 2026-10-25 in Paris: 03:00 goes back to 02:00, so 02:30 happens twice.
    fired = await cron_ticks_over(
        db_url, apps, datetime(2026, 10, 24, 12, tzinfo=UTC), 3, "30 2 * * *"
    )
    assert [f.isoformat() for f in fired] == [
        "2026-10-25T02:30:00+02:00",  # the first 02:30 only
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


async def outage(
    db_url: str, apps: list[fm.App], misfire: str, every: timedelta, late: timedelta
) -> tuple[list[int], int, int]:
    """Fire once on time, stop every worker for 3 hours (+ `late`), start one again: the
    ticks fired after the outage, the time it came back, and the next fire time."""
    clock = fm.ManualClock(START)
    apps.append(make_app(db_url, clock, every=every, misfire=misfire))
    worker = await started(apps[-1])
    await clock.advance(every)
    await worker.maintenance.maintain()
    before = set(ticks_of(await scheduled_tasks(apps[-1])))
    assert len(before) == 1
    await clock.advance(timedelta(hours=3) + late)  # no worker runs meanwhile
    apps.append(make_app(db_url, clock, every=every, misfire=misfire))
    back = await started(apps[-1])
    await back.maintenance.maintain()
    after = [t for t in ticks_of(await scheduled_tasks(apps[-1])) if t not in before]
    [row] = await apps[-1].store.schedules_list(SchedulesList())
    return after, clock.wall_ms(), row.next_fire_ms


async def test_run_once_after_an_outage_fires_one_task(db_url: str, apps: list[fm.App]) -> None:
    after, now, nxt = await outage(
        db_url, apps, "run_once", timedelta(minutes=5), timedelta(minutes=2)
    )
    assert after == [now - 2 * 60_000]  # the latest missed tick
    assert nxt == now + 3 * 60_000


async def test_skip_after_an_outage_fires_nothing(db_url: str, apps: list[fm.App]) -> None:
    after, now, nxt = await outage(db_url, apps, "skip", timedelta(minutes=5), timedelta(minutes=2))
    assert after == [] and nxt == now + 3 * 60_000


async def test_skip_still_fires_a_tick_that_is_on_time(db_url: str, apps: list[fm.App]) -> None:
    late = timedelta(milliseconds=MISFIRE_GRACE_MS // 2)
    after, now, _ = await outage(db_url, apps, "skip", timedelta(minutes=5), late)
    assert after == [now - MISFIRE_GRACE_MS // 2]


async def test_run_all_after_an_outage_fires_every_missed_tick(
    db_url: str, apps: list[fm.App]
) -> None:
    after, now, _ = await outage(
        db_url, apps, "run_all", timedelta(minutes=5), timedelta(minutes=2)
    )
    assert len(after) == 36  # 3 hours of 5-minute ticks
    assert after == [now - 2 * 60_000 - 5 * 60_000 * k for k in range(35, -1, -1)]


async def test_run_all_is_capped_at_the_latest_ticks(db_url: str, apps: list[fm.App]) -> None:
    after, now, _ = await outage(db_url, apps, "run_all", timedelta(minutes=1), timedelta(0))
    assert len(after) == RUN_ALL_CAP  # of 180 missed
    assert after[-1] == now


async def test_a_schedule_removed_from_code_is_reported_and_not_fired(
    db_url: str, apps: list[fm.App], caplog: pytest.LogCaptureFixture
) -> None:
    clock = fm.ManualClock(START)
    apps.append(make_app(db_url, clock, every=timedelta(minutes=1)))
    await started(apps[0])
    apps.append(make_app(db_url, clock))  # the next release: no schedule
    with caplog.at_level(logging.WARNING, logger="flowmill.schedules"):
        worker = await started(apps[1])
    assert "schedule nightly is stored but not declared" in caplog.text
    await clock.advance(timedelta(minutes=10))
    await worker.maintenance.maintain()
    assert await scheduled_tasks(apps[1]) == []
    [row] = await apps[1].store.schedules_list(SchedulesList())
    assert row.undeclared_since_ms == int(START.timestamp() * 1000)


async def test_pause_resume_and_run_now(db_url: str, apps: list[fm.App]) -> None:
    clock = fm.ManualClock(START)
    apps.append(make_app(db_url, clock, every=timedelta(minutes=1)))
    worker = await started(apps[0])
    store = apps[0].store
    paused = await set_paused(store, "nightly", True, clock.store_now())
    assert paused is not None and paused.paused
    await worker.maintenance.maintain()  # the worker reads the pause on its full pass
    await clock.advance(timedelta(minutes=10))
    await worker.maintenance.maintain()
    assert await scheduled_tasks(apps[0]) == []
    resumed = await set_paused(store, "nightly", False, clock.store_now())
    assert resumed is not None and resumed.next_fire_ms == clock.wall_ms() + 60_000
    out = await run_now(store, "nightly", clock.store_now())
    assert out is not None
    assert len(await scheduled_tasks(apps[0])) == 1
    assert await run_now(store, "nope", clock.store_now()) is None
    await worker.maintenance.maintain()
    await clock.advance(timedelta(minutes=1))
    await worker.maintenance.maintain(full=False)
    assert len(await scheduled_tasks(apps[0])) == 2


async def test_jitter_delays_each_tick_by_a_fixed_amount(db_url: str, apps: list[fm.App]) -> None:
    clock = fm.ManualClock(START)
    apps.append(make_app(db_url, clock, every=timedelta(minutes=1), jitter=timedelta(seconds=30)))
    worker = await started(apps[0])
    await clock.advance(timedelta(minutes=1))
    await worker.maintenance.maintain()
    [row] = await scheduled_tasks(apps[0])
    assert row.state is fm.State.SCHEDULED
    assert row.run_at_ms is not None
    tick = ticks_of([row])[0]
    assert tick < row.run_at_ms < tick + 30_000


async def test_scheduled_tasks_run_under_drain(db_url: str, apps: list[fm.App]) -> None:
    clock = fm.ManualClock(START)
    app = fm.App(db_url, clock=clock)
    apps.append(app)
    seen: list[str] = []

    @app.task
    async def report(day: str) -> None:
        seen.append(day)

    app.schedule("nightly", report, "today", cron="0 3 * * *", tz="Europe/Paris", queue="reports")
    worker = await started(app)
    await clock.advance(timedelta(days=1))
    await worker.maintenance.maintain()
    counts = await app.drain(queues=["reports"])
    assert seen == ["today"] and counts
    [row] = await scheduled_tasks(app)
    assert row.queue == "reports"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"cron": "61 * * * *"}, "cron:"),
        ({"cron": "not a cron"}, "cron:"),
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "tz:"),
        ({"every": timedelta(minutes=1), "tz": "Europe/Paris"}, "tz:"),
        ({"every": timedelta(0)}, "every"),
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": timedelta(minutes=1)}, "exactly one of cron= or every="),
        ({"every": timedelta(minutes=1), "misfire": "sometimes"}, "misfire:"),
        ({"every": timedelta(minutes=1), "jitter": timedelta(seconds=-1)}, "jitter"),
        ({"every": timedelta(minutes=1), "priority": "high"}, "priority:"),
    ],
)
def test_a_bad_declaration_names_its_field(options: dict[str, object], field: str) -> None:
    app = fm.App("sqlite://:memory:")

    @app.task
    async def report(day: str) -> None:
        return None

    with pytest.raises(fm.ConfigurationError, match=field):
        app.schedule("nightly", report, "d", **options)  # type: ignore[arg-type]


def test_a_name_is_declared_once() -> None:
    app = fm.App("sqlite://:memory:")

    @app.task
    async def report(day: str) -> None:
        return None

    app.schedule("nightly", report, "d", every=timedelta(minutes=1))
    with pytest.raises(fm.ConfigurationError, match="declared twice"):
        app.schedule("nightly", report, "d", every=timedelta(minutes=2))
