"""Fixtures of the PostgreSQL store tests: the server (skipped locally when it is down,
required in CI), a fresh schema per test and an open store on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from flowmill.store.postgres import PostgresStore
from flowmill.testing._pg import fresh_pg_schema, pg_test_url, pg_unreachable

from ..conftest import CI


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = pg_test_url()
    why = pg_unreachable(url)
    if why is not None:
        if CI:
            raise RuntimeError(f"PostgreSQL is required in CI and unreachable: {why}")
        pytest.skip(f"PostgreSQL unreachable at {url}: {why}")
    return url


@pytest.fixture
async def schema(pg_url: str) -> AsyncIterator[str]:
    async with fresh_pg_schema(pg_url) as name:
        yield name


@pytest.fixture
async def store(pg_url: str, schema: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url, schema=schema)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
