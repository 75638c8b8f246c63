"""Shared fixtures: a fresh app per test on a store of its own, driven by a manual clock.

`BACKENDS` is the one list of backends the suite runs on. Every fixture that runs a test on
each backend (`db_url`, and through it `app`) takes its parameters from it, so a new
backend joins the whole suite by adding one `Backend` entry here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import flowmill as fm

CI = os.environ.get("CI", "").lower() == "true"


@dataclass(frozen=True)
class Backend:
    """One backend the suite runs on.

    `unavailable()` says why the backend cannot be used here (a server that does not
    answer, a client library that is not installed), or None when it can; it is asked once
    per session. `fresh_url(tmp_path)` gives a store URL no other test uses and cleans up
    after the test.
    """

    name: str
    fresh_url: Callable[[Path], AbstractAsyncContextManager[str]]
    unavailable: Callable[[], str | None] = lambda: None
    marks: tuple[pytest.MarkDecorator, ...] = ()


@asynccontextmanager
async def _sqlite_url(tmp_path: Path) -> AsyncIterator[str]:
    yield f"sqlite:///{tmp_path / 'flowmill.db'}"


def _postgres_unavailable() -> str | None:
    try:
        from flowmill.testing._pg import pg_test_url, pg_unreachable
    except ImportError as exc:  # psycopg is an extra
        return f"psycopg is not installed ({exc}): pip install 'flowmill[postgres]'"
    return pg_unreachable(pg_test_url())


@asynccontextmanager
async def _postgres_url(tmp_path: Path) -> AsyncIterator[str]:
    from flowmill.testing._pg import drop_pg_schema, pg_test_url, unique_schema_name

    base = pg_test_url()
    schema = unique_schema_name("fm_t")
    try:
        yield f"{base}?schema={schema}"
    finally:
        await drop_pg_schema(base, schema)


def _redis_base() -> str:
    return os.environ.get("FLOWMILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_unavailable() -> str | None:
    try:
        import redis
    except ImportError as exc:  # redis-py is an extra
        return f"redis-py is not installed ({exc}): pip install 'flowmill[redis]'"
    client = redis.Redis.from_url(_redis_base(), socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{_redis_base()} does not answer: {exc}"
    finally:
        client.close()
    return None


@asynccontextmanager
async def _redis_url(tmp_path: Path) -> AsyncIterator[str]:
    """A key prefix of its own on the test Redis; its keys are deleted afterwards."""
    from redis.asyncio import Redis

    base = _redis_base()
    prefix = f"fmt{os.urandom(6).hex()}:"
    try:
        yield f"{base}?prefix={prefix}"
    finally:
        client = Redis.from_url(base)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
            for i in range(0, len(keys), 500):
                await client.delete(*keys[i : i + 500])
        finally:
            await client.aclose()


BACKENDS: tuple[Backend, ...] = (
    Backend("sqlite", _sqlite_url),
    Backend(
        "postgres",
        _postgres_url,
        unavailable=_postgres_unavailable,
        marks=(pytest.mark.postgres,),
    ),
    Backend("redis", _redis_url, unavailable=_redis_unavailable, marks=(pytest.mark.redis,)),
)

_why_unavailable: dict[str, str | None] = {}


def require_backend(backend: Backend) -> None:
    """Skip the test when the backend cannot be used here; in CI (`CI=true`), fail it."""
    if backend.name not in _why_unavailable:
        _why_unavailable[backend.name] = backend.unavailable()
    why = _why_unavailable[backend.name]
    if why is None:
        return
    if CI:
        pytest.fail(f"{backend.name} is required in CI but unavailable: {why}")
    pytest.skip(f"{backend.name} unavailable: {why}")


def backend_params() -> list[object]:
    """`pytest.param`s for a fixture that runs each test once per backend."""
    return [pytest.param(b, id=b.name, marks=b.marks) for b in BACKENDS]


@pytest.fixture(params=backend_params())
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh store per test on each backend of `BACKENDS`: a SQLite file in the test's
    temporary folder, a schema of its own on PostgreSQL, a key prefix of its own on Redis.

    A backend that is unavailable skips the test, except in CI, where it fails.
    """
    backend: Backend = request.param
    await asyncio.to_thread(require_backend, backend)
    async with backend.fresh_url(tmp_path) as url:
        yield url


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
