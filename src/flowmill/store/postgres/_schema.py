"""The PostgreSQL schema, as numbered migrations applied under an advisory lock."""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg import AsyncConnection, sql

from ...errors import SchemaError
from .._common.migrations import load
from ..contract.capabilities import MigrateResult
from ._listen import channel_names

APP_ID = "flowmill"

# Each file upgrades the schema by one version: migrations/0001_initial.sql, ... Frozen once
# released (tests/store/test_migrations.py holds their checksums): never edit one, add one.
# `{s}` is replaced by the quoted schema name, `{work_channel}` and `{finish_channel}` by
# the schema's NOTIFY channels as string literals (see `render`). Text columns that are
# compared or ordered use the "C" collation: byte order, as on SQLite, and cheaper
# comparisons.
MIGRATIONS: tuple[str, ...] = tuple(m.sql for m in load(__name__.rpartition(".")[0]))

SCHEMA_VERSION = len(MIGRATIONS)


def quote_schema(schema: str) -> str:
    """The schema name as a safely quoted SQL identifier."""
    return sql.Identifier(schema).as_string(None)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render(script: str, schema: str) -> str:
    """A migration's SQL for this schema: its name and its channels filled in."""
    work, finish = channel_names(schema)
    return (
        script.replace("{s}", quote_schema(schema))
        .replace("{work_channel}", _literal(work))
        .replace("{finish_channel}", _literal(finish))
    )


def migration_lock_key(schema: str) -> int:
    """A signed 64-bit advisory lock key for migrating this schema (and only this one)."""
    digest = hashlib.sha256(f"flowmill:migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def schema_version(conn: AsyncConnection[Any], schema: str) -> int | None:
    """The stored version; None for a missing or empty schema; SchemaError for a foreign one."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        (schema,),
    )
    tables = {str(r[0]) for r in await cur.fetchall()}
    if "meta" not in tables:
        if tables:
            raise SchemaError(
                f"schema {schema!r} is not a flowmill schema "
                f"(it has tables {', '.join(sorted(tables)[:5])} and no meta table)"
            )
        return None
    cur = await conn.execute(f"SELECT key, value FROM {quote_schema(schema)}.meta")
    rows = {str(k): str(v) for k, v in await cur.fetchall()}
    if rows.get("app") != APP_ID or "schema_version" not in rows:
        raise SchemaError(f"schema {schema!r} is not a flowmill schema (its meta is not ours)")
    return int(rows["schema_version"])


def _refuse_newer(schema: str, current: int | None) -> None:
    if current is not None and current > SCHEMA_VERSION:
        raise SchemaError(
            f"the flowmill schema {schema!r} is version {current}, newer than this "
            f"flowmill (version {SCHEMA_VERSION}): upgrade flowmill to use it"
        )


async def migrate(conn: AsyncConnection[Any], schema: str) -> MigrateResult:
    """Create or upgrade the schema; refuse a newer one. `conn` must be in autocommit mode.

    The version is read first without any lock, so that opening an up-to-date schema
    needs no CREATE privilege; concurrent migrators serialise on a transaction-scoped
    advisory lock and re-read the version once they hold it.
    """
    current = await schema_version(conn, schema)
    _refuse_newer(schema, current)
    if current == SCHEMA_VERSION:
        return MigrateResult(current, SCHEMA_VERSION)
    quoted = quote_schema(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (migration_lock_key(schema),))
        current = await schema_version(conn, schema)
        _refuse_newer(schema, current)
        if current == SCHEMA_VERSION:
            return MigrateResult(current, SCHEMA_VERSION)
        if current is None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        for script in MIGRATIONS[current or 0 :]:
            await conn.execute(render(script, schema))
        if current is None:
            await conn.execute(
                f"INSERT INTO {quoted}.meta (key, value) VALUES ('app', %s)", (APP_ID,)
            )
        await conn.execute(
            f"INSERT INTO {quoted}.meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
    return MigrateResult(current, SCHEMA_VERSION)
