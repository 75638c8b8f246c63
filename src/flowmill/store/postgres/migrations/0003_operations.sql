-- flowmill PostgreSQL schema, migration 3 (numbered 0002 on this branch until the leases
-- migration lands; renumbered at merge): the worker registry, queue pause flags, and the
-- indexes retention needs (finished tasks by finish time, events by task).
--
-- Frozen once released. `{s}` is the quoted schema name (see `_schema.render`).

CREATE TABLE {s}.workers (
    id text COLLATE "C" PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    queues text NOT NULL,
    kinds text NOT NULL,
    concurrency integer NOT NULL,
    started_at bigint NOT NULL,
    last_seen_at bigint NOT NULL,
    heartbeat_ms bigint NOT NULL,
    in_flight integer NOT NULL DEFAULT 0,
    stopped_at bigint
);
CREATE INDEX workers_seen ON {s}.workers (last_seen_at);
CREATE TABLE {s}.queues (
    name text COLLATE "C" PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    updated_at bigint NOT NULL
);
CREATE INDEX tasks_finished ON {s}.tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX events_task ON {s}.events (task_id);
