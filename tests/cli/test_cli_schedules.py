"""`flowmill schedules list|pause|resume|run-now NAME`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import flowmill as fm
from flowmill.store.contract.schedules import SchedulesList
from flowmill.store.contract.tasks import TasksList

from .test_cli import one_line_error, run


def declare(url: str, *names: str) -> None:
    """Start (and stop) a worker whose code declares `names`: it stores them."""
    app = fm.App(url)

    @app.task(name="report")
    async def report(day: str) -> None:
        return None

    for name in names:
        app.schedule(name, report, "d", cron="0 3 * * *", tz="Europe/Paris", misfire="skip")

    async def start() -> None:
        async with app:
            await app.worker().scheduler.declare()

    asyncio.run(start())


def stored(url: str) -> tuple[int, bool]:
    async def read() -> tuple[int, bool]:
        async with fm.App(url) as app:
            tasks = await app.store.tasks_list(TasksList((), None, None, 100))
            [row] = await app.store.schedules_list(SchedulesList(["nightly"]))
            return len(tasks), row.paused

    return asyncio.run(read())


def test_list_pause_resume_run_now(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    declare(url, "nightly", "weekly")
    declare(url, "nightly")  # the next release dropped "weekly"

    code, out, _ = run("schedules", "list", "--url", url)
    assert code == 0, out
    nightly = next(line for line in out.splitlines() if line.startswith("nightly"))
    assert "report" in nightly and "cron 0 3 * * * Europe/Paris" in nightly
    assert "skip" in nightly and nightly.rstrip().endswith("yes")
    weekly = next(line for line in out.splitlines() if line.startswith("weekly"))
    assert "not declared by any worker since" in weekly

    code, out, _ = run("schedules", "pause", "nightly", "--url", url)
    assert (code, out.strip()) == (0, "schedule nightly paused")
    assert stored(url) == (0, True)
    code, out, _ = run("schedules", "list", "--url", url)
    assert "paused" in next(line for line in out.splitlines() if line.startswith("nightly"))

    code, out, _ = run("schedules", "resume", "nightly", "--url", url)
    assert code == 0 and out.startswith("schedule nightly resumed; next fire")
    assert stored(url) == (0, False)

    code, out, _ = run("schedules", "run-now", "nightly", "--url", url)
    assert code == 0 and "submitted task" in out
    assert stored(url) == (1, False)


def test_an_unknown_name_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    declare(url)
    for command in ("pause", "resume", "run-now"):
        code, _, err = run("schedules", command, "nope", "--url", url)
        assert code == 1
        assert one_line_error(err) == "error: no schedule named 'nope'"
    code, out, _ = run("schedules", "list", "--url", url)
    assert (code, out.strip()) == (0, "no schedules")


def test_every_shows_its_interval(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    app = fm.App(url)

    @app.task(name="ping")
    async def ping(_: None) -> None:
        return None

    app.schedule("pings", ping, every=timedelta(minutes=5))

    async def start() -> None:
        async with app:
            await app.worker().scheduler.declare()

    asyncio.run(start())
    code, out, _ = run("schedules", "list", "--url", url)
    assert code == 0 and "every 0:05:00" in out
