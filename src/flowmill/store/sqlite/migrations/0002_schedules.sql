-- flowmill SQLite schema, migration 5 (numbered 0002 on the schedules branch until merged):
-- schedules, one row per periodic task declared in code (see flowmill.store.contract.schedules).
--
-- Frozen once released: a change to the schema is a new file.

    CREATE TABLE fm_schedules (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        trigger TEXT NOT NULL,
        tz TEXT,
        misfire TEXT NOT NULL,
        jitter_ms INTEGER NOT NULL,
        payload BLOB NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        retry_policy BLOB NOT NULL,
        timeout_ms INTEGER,
        definition TEXT NOT NULL,
        version INTEGER NOT NULL,
        paused INTEGER NOT NULL,
        declared_paused INTEGER NOT NULL,
        next_fire_ms INTEGER NOT NULL,
        last_tick_ms INTEGER,
        last_fired_at_ms INTEGER,
        fired INTEGER NOT NULL DEFAULT 0,
        declared_at_ms INTEGER NOT NULL,
        undeclared_since_ms INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
