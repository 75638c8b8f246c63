-- flowmill SQLite schema, migration 2: fm_events numbers its rows without AUTOINCREMENT.
--
-- Every submit writes one event row; with AUTOINCREMENT each such commit also rewrote a
-- page of sqlite_sequence (about 4 KB more WAL and fsync per submit). Events are never
-- deleted, so the largest id is never removed and a plain INTEGER PRIMARY KEY hands out
-- the same strictly increasing ids (max + 1). A future pruning of events must keep the
-- newest row, or readers that page by id could see an id twice.

CREATE TABLE fm_events_v2 (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    at INTEGER NOT NULL,
    detail TEXT
);
INSERT INTO fm_events_v2 (id, task_id, kind, state, at, detail)
    SELECT id, task_id, kind, state, at, detail FROM fm_events ORDER BY id;
DROP TABLE fm_events;
ALTER TABLE fm_events_v2 RENAME TO fm_events;
