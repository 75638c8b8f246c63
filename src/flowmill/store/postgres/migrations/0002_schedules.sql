-- flowmill PostgreSQL schema, migration 5 (numbered 0002 on the schedules branch until
-- merged): schedules, one row per periodic task declared in code (see
-- flowmill.store.contract.schedules). `{s}` is the quoted schema name.
--
-- Frozen once released: a change to the schema is a new file.

    CREATE TABLE {s}.schedules (
        name text COLLATE "C" PRIMARY KEY,
        kind text COLLATE "C" NOT NULL,
        trigger text NOT NULL,
        tz text,
        misfire text NOT NULL,
        jitter_ms bigint NOT NULL,
        payload bytea NOT NULL,
        queue text COLLATE "C" NOT NULL,
        priority integer NOT NULL,
        max_attempts integer NOT NULL,
        retry_policy bytea NOT NULL,
        timeout_ms bigint,
        definition text NOT NULL,
        version bigint NOT NULL,
        paused boolean NOT NULL,
        declared_paused boolean NOT NULL,
        next_fire_ms bigint NOT NULL,
        last_tick_ms bigint,
        last_fired_at_ms bigint,
        fired bigint NOT NULL DEFAULT 0,
        declared_at_ms bigint NOT NULL,
        undeclared_since_ms bigint,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL
    );
