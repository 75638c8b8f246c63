"""Test helpers for the PostgreSQL store: the server to use and a throwaway schema per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import sql

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL_ENV = "FLOWMILL_TEST_PG_URL"


def pg_test_url() -> str:
    """The server tests run against: `$FLOWMILL_TEST_PG_URL`, else a local default."""
    return os.environ.get(PG_URL_ENV, DEFAULT_PG_URL)


def pg_unreachable(url: str) -> str | None:
    """Why the server cannot be used (one line), or None when it can. Blocking."""
    try:
        conn = psycopg.connect(url, connect_timeout=3, autocommit=True)
    except (psycopg.Error, OSError) as exc:
        return " ".join(str(exc).split())
    conn.close()
    return None


def unique_schema_name(prefix: str = "fm_test") -> str:
    return f"{prefix}_{os.urandom(6).hex()}"


async def drop_pg_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


@asynccontextmanager
async def fresh_pg_schema(url: str, prefix: str = "fm_test") -> AsyncIterator[str]:
    """A schema name no other test uses; the store creates it, this drops it afterwards."""
    schema = unique_schema_name(prefix)
    try:
        yield schema
    finally:
        await drop_pg_schema(url, schema)
