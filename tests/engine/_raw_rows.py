"""Rows written behind the store's back, as another tool would write them (raw SQL).

Only for tests that check how flowmill copes with values it did not write itself: a
payload of the wrong column type, invalid UTF-8, invalid JSON, a JSON of another shape.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AsText:
    """Bytes stored as SQLite TEXT, as they are (valid UTF-8 or not): `CAST(? AS TEXT)`."""

    data: bytes


def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgres"


def _sqlite_write(path: str, table: str, column: str, value: Any, key: str, task_id: str) -> None:
    cast = "CAST(? AS TEXT)" if isinstance(value, AsText) else "?"
    raw = value.data if isinstance(value, AsText) else value
    conn = sqlite3.connect(path, timeout=30)
    try:
        cur = conn.execute(
            f"UPDATE fm_{table} SET {column} = {cast} WHERE {key} = ?", (raw, task_id)
        )
        assert cur.rowcount == 1, f"no {table} row for {task_id}"
        conn.commit()
    finally:
        conn.close()


def _pg_write(db_url: str, table: str, column: str, value: Any, key: str, task_id: str) -> None:
    import psycopg
    from psycopg import sql

    base, _, schema = db_url.partition("?schema=")
    with psycopg.connect(base, autocommit=True) as conn:
        cur = conn.execute(
            sql.SQL("UPDATE {}.{} SET {} = %s WHERE {} = %s").format(
                sql.Identifier(schema),
                sql.Identifier(table),
                sql.Identifier(column),
                sql.Identifier(key),
            ),
            (value, task_id),
        )
        assert cur.rowcount == 1, f"no {table} row for {task_id}"


async def write(db_url: str, table: str, column: str, value: Any, task_id: str) -> None:
    """Set `column` of the `table` ("tasks" or "results") row of `task_id` to `value`."""
    key = "id" if table == "tasks" else "task_id"
    if backend(db_url) == "sqlite":
        path = db_url.split(":///", 1)[1]
        await asyncio.to_thread(_sqlite_write, path, table, column, value, key, task_id)
    else:
        await asyncio.to_thread(_pg_write, db_url, table, column, value, key, task_id)
