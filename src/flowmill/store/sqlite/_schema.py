"""The SQLite schema: its numbered migration files, applied in order, and the checks made
when a file is opened."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ...errors import SchemaError
from .._common.migrations import load
from ..contract.capabilities import MigrateResult

APP_ID = "flowmill"

# Each file upgrades the schema by one version: migrations/0001_initial.sql, ... Frozen once
# released (tests/store/test_migrations.py holds their checksums): never edit one, add one.
MIGRATIONS: tuple[str, ...] = tuple(m.sql for m in load(__name__.rpartition(".")[0]))

SCHEMA_VERSION = len(MIGRATIONS)


def not_a_database(exc: BaseException) -> bool:
    """Whether SQLite says the file is not a database, or not a readable one."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.DatabaseError) or code is None:
        return False
    return code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def _version(conn: sqlite3.Connection) -> int | None:
    """The stored schema version; None for an empty file; SchemaError for a foreign one."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "fm_meta" not in tables:
        if tables:
            raise SchemaError(
                "this database is not a flowmill database "
                f"(it has tables {', '.join(sorted(tables)[:5])} and no fm_meta)"
            )
        return None
    rows = dict(conn.execute("SELECT key, value FROM fm_meta").fetchall())
    if rows.get("app") != APP_ID or "schema_version" not in rows:
        raise SchemaError("this database is not a flowmill database (fm_meta is not ours)")
    try:
        return int(rows["schema_version"])
    except ValueError:
        raise SchemaError(
            f"fm_meta holds an invalid schema version {rows['schema_version']!r}"
        ) from None


def _statements(script: str) -> list[str]:
    """The statements of a script, split at semicolons (not those inside a trigger body)."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                out.append(pending)
            pending = ""
    if pending.strip(" \t\n;"):
        raise SchemaError(f"incomplete statement in a migration: {pending.strip()[:80]}")
    return out


def read_version(path: str) -> int | None:
    """The schema version of the file at `path`, opened read-only: None when the file or its
    schema is absent (or it is not a database at all); SchemaError for a foreign schema."""
    if not os.path.isfile(path):
        return None
    try:
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return _version(conn)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def migrate(conn: sqlite3.Connection) -> MigrateResult:
    """Create or upgrade the schema in one transaction; refuse a newer schema. Autocommit conn."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        if not_a_database(exc):
            raise SchemaError(f"cannot open the database: {exc}") from exc
        raise  # locked, busy, I/O: not a schema problem (translated by the caller)
    try:
        current = _version(conn)
        if current is not None and current > SCHEMA_VERSION:
            raise SchemaError(
                f"the database schema is version {current}, newer than this flowmill "
                f"(version {SCHEMA_VERSION}): upgrade flowmill to use it"
            )
        start = current or 0
        for script in MIGRATIONS[start:]:
            for statement in _statements(script):
                conn.execute(statement)
        if current is None:
            conn.execute("INSERT INTO fm_meta (key, value) VALUES ('app', ?)", (APP_ID,))
        conn.execute(
            "INSERT INTO fm_meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return MigrateResult(current, SCHEMA_VERSION)
