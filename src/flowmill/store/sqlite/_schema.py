"""The SQLite schema, as numbered migrations, and the checks made when a file is opened."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..._states import ACTIVE
from ...errors import SchemaError
from ..contract.capabilities import MigrateResult
from ._budgets import BUDGETS_DDL
from ._dag import DDL as DAG_DDL
from ._signals import SIGNALS_DDL

APP_ID = "flowmill"

_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))

# Each entry upgrades the schema by one version; never edit a released entry, add one.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE fm_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE fm_tasks (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        phase TEXT NOT NULL DEFAULT 'execute',
        payload BLOB NOT NULL,
        memo BLOB,
        dedup_key TEXT,
        parent_id TEXT,
        tags TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        retry_policy BLOB NOT NULL,
        timeout_ms INTEGER,
        lease_epoch INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        last_finish TEXT,
        progress_pct REAL,
        progress_message TEXT,
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        run_at INTEGER,
        expires_at INTEGER,
        started_at INTEGER,
        finished_at INTEGER,
        children_total INTEGER NOT NULL DEFAULT 0,
        children_active INTEGER NOT NULL DEFAULT 0,
        children_failed INTEGER NOT NULL DEFAULT 0,
        fail_fast INTEGER NOT NULL DEFAULT 1,
        child_key TEXT,
        has_on_cancel INTEGER NOT NULL DEFAULT 0,
        hook TEXT,
        hook_attempts INTEGER NOT NULL DEFAULT 0,
        deps_pending INTEGER NOT NULL DEFAULT 0,
        deps_failed INTEGER NOT NULL DEFAULT 0,
        deps_skipped INTEGER NOT NULL DEFAULT 0,
        upstream_policy TEXT,
        condition TEXT,
        workflow_id TEXT,
        node TEXT,
        has_dependents INTEGER NOT NULL DEFAULT 0,
        budget_id TEXT
    );
    CREATE INDEX fm_tasks_ready ON fm_tasks (queue, priority DESC, seq) WHERE state = 'ready';
    CREATE INDEX fm_tasks_due ON fm_tasks (run_at) WHERE state = 'scheduled';
    CREATE INDEX fm_tasks_leases ON fm_tasks (lease_expires_at) WHERE state = 'running';
    CREATE INDEX fm_tasks_ttl ON fm_tasks (expires_at)
        WHERE state = 'ready' AND expires_at IS NOT NULL;
    CREATE INDEX fm_tasks_state ON fm_tasks (state, queue);
    CREATE INDEX fm_tasks_parent ON fm_tasks (parent_id, seq) WHERE parent_id IS NOT NULL;
    CREATE UNIQUE INDEX fm_tasks_child_key ON fm_tasks (parent_id, child_key)
        WHERE child_key IS NOT NULL;
    CREATE INDEX fm_tasks_hooks ON fm_tasks (seq) WHERE hook IS NOT NULL;
    CREATE UNIQUE INDEX fm_tasks_dedup ON fm_tasks (kind, dedup_key)
        WHERE dedup_key IS NOT NULL AND state IN ({_ACTIVE_SQL});
    CREATE TABLE fm_results (
        task_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        result BLOB,
        error TEXT,
        finished_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE fm_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        at INTEGER NOT NULL,
        detail TEXT
    );
    """
    + SIGNALS_DDL
    + DAG_DDL
    + BUDGETS_DDL,
)

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
