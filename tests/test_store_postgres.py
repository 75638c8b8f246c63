"""The PostgreSQL store: the conformance suite, and what only a server backend has to show."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from flowmill.store.postgres import PostgresStore
from flowmill.testing import StoreConformance
from flowmill.testing._pg import fresh_pg_schema, pg_test_url, pg_unreachable

from .conftest import CI

pytestmark = pytest.mark.postgres


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


async def open_store(url: str, schema: str, **kw: object) -> PostgresStore:
    store = PostgresStore(url, schema=schema, **kw)  # type: ignore[arg-type]
    await store.open()
    return store


class TestPostgresStore(StoreConformance):
    @pytest.fixture
    async def store(self, pg_url: str, schema: str) -> AsyncIterator[PostgresStore]:
        s = await open_store(pg_url, schema)
        try:
            yield s
        finally:
            await s.close()
