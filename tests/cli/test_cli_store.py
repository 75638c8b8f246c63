"""`flowmill migrate` and the missing-database check, through the store contract (no
backend class, no sqlite3 in the CLI): SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowmill.store.sqlite._schema import SCHEMA_VERSION  # same on every backend

from ..conftest import CI
from .test_cli import one_line_error, run


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store with no schema yet: a SQLite path with no file, or an unused PG schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    from flowmill.testing._pg import (
        drop_pg_schema,
        pg_test_url,
        pg_unreachable,
        unique_schema_name,
    )

    base = pg_test_url()
    why = pg_unreachable(base)
    if why is not None:
        if CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {why}")
        pytest.skip(f"PostgreSQL unreachable: {why}")
    schema = unique_schema_name("fm_cli")
    try:
        yield f"{base}?schema={schema}"
    finally:
        asyncio.run(drop_pg_schema(base, schema))


def test_migrate_says_created_then_up_to_date_on_every_backend(store_url: str) -> None:
    code, out, _ = run("migrate", "--url", store_url)
    assert code == 0
    assert out.strip() == f"{store_url}: created schema version {SCHEMA_VERSION}"
    code, out, _ = run("migrate", "--url", store_url)
    assert code == 0
    assert out.strip() == f"{store_url}: schema version {SCHEMA_VERSION} is up to date"
    code, out, _ = run("status", "--url", store_url)
    assert code == 0
    assert out.strip() == f"no tasks in {store_url}"


@pytest.mark.parametrize("content", ["empty", "foreign"])
def test_a_file_without_a_flowmill_schema_is_refused_and_left_alone(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "other.db"
    if content == "empty":
        path.touch()
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
        conn.close()
    before = path.read_bytes()
    url = f"sqlite:///{path}"
    code, _, err = run("tasks", "list", "--url", url)
    assert code == 1
    if content == "empty":
        assert one_line_error(err) == (
            f"error: no flowmill database at {url} (check --url, or create it with "
            f"`flowmill migrate --url {url}`)"
        )
    else:
        assert "is not a flowmill database (it has tables notes" in one_line_error(err)
    assert path.read_bytes() == before
