-- flowmill SQLite schema, migration 6: events found by their task's seq, not its id.
--
-- Retention deletes a purged task's events with it. The index on fm_events (task_id) it
-- used (migration 3) took about a quarter of the write cost of a drained task: task ids
-- are random within a batch, so each event dirtied an index page of its own. Each event
-- row now also holds its task's seq (written with the row, looked up through the id's
-- unique index), and the index is on that: tasks are claimed and finished in about seq
-- order, so it grows at a few pages per commit. Events whose task is gone keep a NULL
-- seq (nothing purges them, as before). Readers page events by id, which is unchanged.
--
-- Frozen once released. Statements are split at semicolons, so comments here hold none.

ALTER TABLE fm_events ADD COLUMN task_seq INTEGER;
UPDATE fm_events SET task_seq = (SELECT t.seq FROM fm_tasks t WHERE t.id = fm_events.task_id);
CREATE INDEX fm_events_task_seq ON fm_events (task_seq);
DROP INDEX fm_events_task;
