-- flowmill PostgreSQL schema, migration 7: the number of SQLite's migration 7, which reads
-- a task's creation event from its task row instead of writing it to the event table too
-- (on SQLite that row, its index entry and the AUTOINCREMENT counter were three 4 KiB
-- pages more per submit's commit). PostgreSQL keeps its creation events in `events`;
-- this migration only says so.

    COMMENT ON TABLE {s}.events IS 'state changes of tasks, creation included, in id order (events_read)';
