-- flowmill SQLite schema, migration 7: a task's creation event is its row in fm_tasks.
--
-- A submit used to write its creation event as a row of fm_events too: the events table,
-- its task index and the AUTOINCREMENT counter in sqlite_sequence are three 4 KiB pages
-- more in the WAL per commit, on top of the task's four (row, id, ready and state
-- indexes). The creation event is now read from the task row: `created_state` holds the
-- state the task was inserted in, and its event id is the task's `seq`. Task seqs and
-- event ids are drawn from one counter, one above the highest seq, event id and
-- `id_floor` (fm_meta), so the event log stays in commit order. Retention raises
-- `id_floor` when it deletes the newest task or event, so no id is handed out twice.
-- Tasks stored before this migration keep `created_state` NULL: their creation events are
-- rows of fm_events already. The floor starts at the AUTOINCREMENT counter of fm_events,
-- which is above any event id retention deleted.
--
-- Frozen once released. Statements are split at semicolons, so comments here hold none.

ALTER TABLE fm_tasks ADD COLUMN created_state TEXT;
INSERT INTO fm_meta (key, value)
SELECT 'id_floor', CAST(seq AS TEXT) FROM sqlite_sequence WHERE name = 'fm_events';
