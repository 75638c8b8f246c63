"""Shared fixtures: a fresh app per test on its own SQLite file, driven by a manual clock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import flowmill as fm

CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flowmill.db'}"


@pytest.fixture
def clock() -> fm.ManualClock:
    return fm.ManualClock()


@pytest.fixture
async def app(db_url: str, clock: fm.ManualClock) -> AsyncIterator[fm.App]:
    application = fm.App(db_url, clock=clock)
    await application.open()
    yield application
    await application.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait for something that another coroutine or process makes true (not for a timer)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
