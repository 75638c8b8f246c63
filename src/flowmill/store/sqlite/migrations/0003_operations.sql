-- flowmill SQLite schema, migration 3 (numbered 0002 on this branch until the leases
-- migration lands; renumbered at merge): the worker registry, queue pause flags, and the
-- indexes retention needs (finished tasks by finish time, events by task).
--
-- Frozen once released. Statements are split at semicolons, so comments here hold none.

CREATE TABLE fm_workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    queues TEXT NOT NULL,
    kinds TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL,
    in_flight INTEGER NOT NULL DEFAULT 0,
    stopped_at INTEGER
) WITHOUT ROWID;
CREATE INDEX fm_workers_seen ON fm_workers (last_seen_at);
CREATE TABLE fm_queues (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX fm_tasks_finished ON fm_tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX fm_events_task ON fm_events (task_id);
