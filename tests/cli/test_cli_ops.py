"""`flowmill workers`, `queues list|pause|resume`, `purge` and `top`, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

import flowmill as fm
from flowmill.cli._ops import ago, parse_duration

from .test_cli import one_line_error, run
from .test_cli_store import store_url

__all__ = ["store_url"]  # a fixture, used by name

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


async def populate(url: str) -> str:
    """Three completed tasks and a dead letter from 2020, one ready task; returns the
    worker's id."""
    app = fm.App(url, clock=fm.ManualClock(LONG_AGO))

    @app.task(queue="mail")
    async def send(n: int) -> int:
        return n

    @app.task(queue="mail", retry=fm.Retry(max_attempts=1))
    async def bounce(n: int) -> None:
        raise RuntimeError("mailbox full")

    try:
        await app.submit_many(send, [1, 2, 3])
        await app.submit(bounce, 1)
        worker = app.worker(queues=["mail"])
        await asyncio.wait_for(worker.run(stop_when_idle=True), 30)
        await app.submit(send, 4)
        return worker.worker_id
    finally:
        await app.close()


@pytest.fixture
def populated(store_url: str) -> tuple[str, str]:
    return store_url, asyncio.run(populate(store_url))


def test_queues_list_pause_resume(populated: tuple[str, str]) -> None:
    url, _ = populated
    code, out, _ = run("queues", "list", "--url", url)
    assert code == 0
    (line,) = [ln for ln in out.splitlines() if ln.strip().startswith("mail")]
    # queue, paused, ready, running, scheduled, blocked, waiting, suspended, done, failed, dead
    assert line.split()[:11] == ["mail", "-", "1", "0", "0", "0", "0", "0", "3", "0", "1"]
    code, out, _ = run("queues", "pause", "mail", "--url", url)
    assert (code, out.strip()) == (0, f"queue mail paused in {url}")
    code, out, _ = run("queues", "pause", "mail", "--url", url)
    assert out.strip() == "queue mail was already paused"
    code, out, _ = run("queues", "list", "--url", url)
    assert "PAUSED" in out
    code, out, _ = run("queues", "resume", "mail", "--url", url)
    assert (code, out.strip()) == (0, f"queue mail resumed in {url}")
    code, out, _ = run("queues", "list", "--url", url)
    assert "PAUSED" not in out


def test_workers_lists_the_registry(populated: tuple[str, str]) -> None:
    url, worker_id = populated
    code, out, _ = run("workers", "--url", url)
    assert code == 0
    assert f"workers in {url} (0 alive)" in out
    (line,) = [ln for ln in out.splitlines() if worker_id in ln]
    assert "stopped" in line
    code, out, _ = run("workers", "--url", url, "--alive")
    assert out.strip() == f"no live workers in {url}"


def test_purge_by_state_keeps_dead_letters_until_named(populated: tuple[str, str]) -> None:
    url, _ = populated
    code, out, _ = run("purge", "--older-than", "7d", "--state", "completed", "--url", url)
    assert code == 0
    assert out.strip().startswith("purged 3 task(s) (completed) finished more than 7d ago")
    code, out, _ = run("purge", "--older-than", "7d", "--no-progress", "--url", url)
    assert out.strip().startswith("purged 0 task(s)")
    code, out, _ = run("purge", "--older-than", "7d", "--state", "dead_lettered", "--url", url)
    assert out.strip().startswith("purged 1 task(s) (dead_lettered)")
    code, out, _ = run("queues", "list", "--url", url)
    (line,) = [ln for ln in out.splitlines() if ln.strip().startswith("mail")]
    assert line.split()[2] == "1"  # the ready task is untouched


def test_purge_refuses_bad_input(populated: tuple[str, str]) -> None:
    url, _ = populated
    code, _, err = run("purge", "--older-than", "7x", "--url", url)
    assert code == 2
    assert "bad duration '7x'" in one_line_error(err)
    code, _, err = run("purge", "--older-than", "7d", "--state", "running", "--url", url)
    assert code == 2
    assert "not terminal: running" in one_line_error(err)


def test_top_once_shows_queues_and_workers(populated: tuple[str, str]) -> None:
    url, worker_id = populated
    code, out, _ = run("top", "--once", "--url", url)
    assert code == 0
    assert "flowmill top" in out
    assert "0 worker(s) alive" in out
    assert "1 dead letter(s)" in out
    assert any(ln.strip().startswith("mail") for ln in out.splitlines())
    assert worker_id in out


def test_durations_and_ages() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "7", "d", "7dd", "-1d", "1y"):
        with pytest.raises(ValueError, match="bad duration"):
            parse_duration(bad)
    assert [ago(timedelta(seconds=s)) for s in (5, 245, 7_800, 270_000)] == [
        "5s",
        "4m05s",
        "2h10m",
        "3d3h",
    ]
    assert ago(None) == "-"


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)  # a URL with a password
def test_printed_store_urls_hide_the_password(populated: tuple[str, str]) -> None:
    url, _ = populated
    # Trust auth on the test server ignores the password, so the URL still connects.
    secret = url.replace("postgresql://postgres@", "postgresql://postgres:s3cret-pw@", 1)
    assert "s3cret-pw" in secret
    for args in (["top", "--once"], ["queues", "list"], ["tasks", "list"]):
        code, out, err = run(*args, "--url", secret)
        assert code == 0, err
        assert "s3cret-pw" not in out + err
        assert "***" in out
