"""Shared fixtures: a fresh app per test on its own SQLite file, driven by a manual clock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import flowmill as fm

CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh store per test: a SQLite file, a schema of its own on PostgreSQL, or a key
    prefix of its own on Redis.

    Server tests skip when the server is unreachable, except in CI, where they fail.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'flowmill.db'}"
        return
    if request.param == "redis":
        async for url in _redis_url():
            yield url
        return
    from flowmill.testing._pg import drop_pg_schema, pg_test_url, pg_unreachable

    base = pg_test_url()
    why = await asyncio.to_thread(pg_unreachable, base)
    if why is not None:
        if CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {why}")
        pytest.skip(f"PostgreSQL unreachable: {why}")
    schema = f"fm_t_{os.urandom(6).hex()}"
    try:
        yield f"{base}?schema={schema}"
    finally:
        await drop_pg_schema(base, schema)


async def _redis_url() -> AsyncIterator[str]:
    """A key prefix of its own on the local Redis; skipped when absent (failed in CI)."""
    from redis.asyncio import Redis

    base = os.environ.get("FLOWMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = Redis.from_url(base)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        if CI:
            pytest.fail(f"Redis is required in CI but unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    prefix = f"fmt{os.urandom(6).hex()}:"
    try:
        yield f"{base}?prefix={prefix}"
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
        await client.aclose()


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
