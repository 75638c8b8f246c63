"""The PostgreSQL schema, as numbered migrations applied under an advisory lock."""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg import AsyncConnection, sql

from ..._states import ACTIVE, State
from ...errors import SchemaError
from ..contract.capabilities import MigrateResult
from ._budgets_ddl import BUDGETS_DDL
from ._dag_sql import DAG_DDL
from ._listen import channel_names

APP_ID = "flowmill"

# Constant SQL fragments built from the state enum, never from user input.
ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))
_ALL_STATES_SQL = ", ".join(f"'{s.value}'" for s in State)

# Each entry upgrades the schema by one version; never edit a released entry, add one.
# `{s}` is replaced by the quoted schema name, `{work_channel}` and `{finish_channel}` by
# the schema's NOTIFY channels as string literals (see `render`). Text columns that are
# compared or ordered use the "C" collation: byte order, as on SQLite, and cheaper
# comparisons.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE {{s}}.meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE {{s}}.tasks (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text COLLATE "C" NOT NULL UNIQUE,
        kind text COLLATE "C" NOT NULL,
        queue text COLLATE "C" NOT NULL,
        priority integer NOT NULL DEFAULT 0,
        state text COLLATE "C" NOT NULL CHECK (state IN ({_ALL_STATES_SQL})),
        phase text COLLATE "C" NOT NULL DEFAULT 'execute',
        payload bytea NOT NULL,
        memo bytea,
        dedup_key text COLLATE "C",
        parent_id text COLLATE "C",
        tags text,
        attempts integer NOT NULL DEFAULT 0,
        max_attempts integer NOT NULL,
        retry_policy bytea NOT NULL,
        timeout_ms bigint,
        lease_epoch bigint NOT NULL DEFAULT 0,
        lease_owner text,
        lease_expires_at bigint,
        cancel_requested boolean NOT NULL DEFAULT false,
        last_finish text COLLATE "C",
        progress_pct double precision,
        progress_message text,
        error text,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        run_at bigint,
        expires_at bigint,
        started_at bigint,
        finished_at bigint,
        -- As a parent: children spawned, not yet ended, and ended badly (fail_fast).
        children_total integer NOT NULL DEFAULT 0,
        children_active integer NOT NULL DEFAULT 0,
        children_failed integer NOT NULL DEFAULT 0,
        fail_fast boolean NOT NULL DEFAULT true,
        child_key text COLLATE "C",
        has_on_cancel boolean NOT NULL DEFAULT false,
        hook text COLLATE "C",
        hook_attempts integer NOT NULL DEFAULT 0,
        budget_id text COLLATE "C",
        -- Dependencies (see _pg_dag): upstream tasks not yet ended, and ended badly.
        deps_pending integer NOT NULL DEFAULT 0,
        deps_failed integer NOT NULL DEFAULT 0,
        deps_skipped integer NOT NULL DEFAULT 0,
        upstream_policy text COLLATE "C",
        condition text,
        workflow_id text COLLATE "C",
        node text COLLATE "C",
        has_dependents boolean NOT NULL DEFAULT false
    ) WITH (
        -- A queue table churns: room on each page for in-place (HOT) updates such as
        -- progress, and vacuum soon enough that claims do not wade through dead rows.
        fillfactor = 90,
        autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_analyze_scale_factor = 0.02
    );
    CREATE INDEX tasks_ready ON {{s}}.tasks (queue, priority DESC, seq) WHERE state = 'ready';
    CREATE INDEX tasks_due ON {{s}}.tasks (run_at) WHERE state = 'scheduled';
    CREATE INDEX tasks_leases ON {{s}}.tasks (lease_expires_at) WHERE state = 'running';
    CREATE INDEX tasks_ttl ON {{s}}.tasks (expires_at)
        WHERE state = 'ready' AND expires_at IS NOT NULL;
    CREATE INDEX tasks_state ON {{s}}.tasks (state, queue);
    CREATE INDEX tasks_parent ON {{s}}.tasks (parent_id, seq) WHERE parent_id IS NOT NULL;
    CREATE UNIQUE INDEX tasks_child_key ON {{s}}.tasks (parent_id, child_key)
        WHERE child_key IS NOT NULL;
    CREATE INDEX tasks_hooks ON {{s}}.tasks (seq) WHERE hook IS NOT NULL;
    CREATE UNIQUE INDEX tasks_dedup ON {{s}}.tasks (kind, dedup_key)
        WHERE dedup_key IS NOT NULL AND state IN ({ACTIVE_SQL});
    CREATE TABLE {{s}}.results (
        task_id text COLLATE "C" PRIMARY KEY,
        state text COLLATE "C" NOT NULL,
        result bytea,
        error text,
        finished_at bigint NOT NULL
    );
    CREATE TABLE {{s}}.events (
        id bigserial PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        state text COLLATE "C" NOT NULL,
        at bigint NOT NULL,
        detail text
    );
    CREATE TABLE {{s}}.waitpoints (
        id text COLLATE "C" PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        expires_at bigint NOT NULL,
        created_at bigint NOT NULL,
        UNIQUE (task_id, key)
    );
    CREATE TABLE {{s}}.signals (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        waitpoint_id text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        payload bytea NOT NULL,
        idempotency_key text COLLATE "C",
        at bigint NOT NULL,
        suspension_id bigint
    );
    CREATE INDEX signals_unconsumed ON {{s}}.signals (task_id, seq)
        WHERE suspension_id IS NULL;
    CREATE INDEX signals_consumed ON {{s}}.signals (suspension_id, seq)
        WHERE suspension_id IS NOT NULL;
    CREATE UNIQUE INDEX signals_idempotency ON {{s}}.signals (waitpoint_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE TABLE {{s}}.suspensions (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id text COLLATE "C" NOT NULL,
        condition text NOT NULL,
        timeout_at bigint,
        on_timeout text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        created_at bigint NOT NULL,
        resolved_at bigint,
        resolution text COLLATE "C"
    );
    CREATE INDEX suspensions_task ON {{s}}.suspensions (task_id, id);
    CREATE UNIQUE INDEX suspensions_open ON {{s}}.suspensions (task_id)
        WHERE resolved_at IS NULL;
    CREATE INDEX suspensions_due ON {{s}}.suspensions (timeout_at)
        WHERE resolved_at IS NULL AND timeout_at IS NOT NULL;
    CREATE FUNCTION {{s}}.suspension_left() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        UPDATE {{s}}.suspensions SET resolved_at = NEW.updated_at, resolution = NEW.state
        WHERE task_id = NEW.id AND resolved_at IS NULL;
        RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER suspension_left AFTER UPDATE OF state ON {{s}}.tasks
        FOR EACH ROW WHEN (OLD.state = 'suspended' AND NEW.state <> 'suspended')
        EXECUTE FUNCTION {{s}}.suspension_left();
    CREATE TABLE {{s}}.frame_seqs (
        task_id text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        seq integer NOT NULL,
        PRIMARY KEY (task_id, attempt)
    );
    CREATE TABLE {{s}}.frames (
        task_id text COLLATE "C" NOT NULL,
        attempt integer NOT NULL,
        seq integer NOT NULL,
        frame_type text COLLATE "C" NOT NULL,
        payload bytea NOT NULL,
        metadata bytea,
        at bigint NOT NULL,
        PRIMARY KEY (task_id, attempt, seq)
    );
    """
    + BUDGETS_DDL
    + DAG_DDL,
)

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
