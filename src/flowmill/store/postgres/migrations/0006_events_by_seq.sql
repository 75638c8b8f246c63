-- flowmill PostgreSQL schema, migration 6: the number of SQLite's migration 6, which moves
-- the index that finds a purged task's events from the task id to the task's seq (on
-- SQLite each event dirtied a 4 KiB index page of its own per commit). PostgreSQL keeps
-- `events_task` (a random insert there costs a WAL record, not a page per commit); this
-- migration only says why it is there.

    COMMENT ON INDEX {s}.events_task IS 'finds a purged task''s events (tasks_purge)';
