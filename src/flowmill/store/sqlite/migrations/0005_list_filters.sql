-- flowmill SQLite schema, migration 5: indexed tag and text filters of `tasks_list`.
--
-- `fm_task_tags` holds one row per tag of a task (by the task's seq), kept by triggers in
-- the transaction that inserts, re-tags (a dedup `replace`) or deletes the task, and
-- filled here for the tasks already stored. A tag filter walks it in seq order. A text
-- filter is a prefix range on the id (its unique index) or on the dedup key (the index
-- below).
--
-- SQLite's JSON functions cut a string at an escaped NUL, so the stored JSON has each
-- \u0000 replaced by \u0001 followed by 0 before it is split: `fm_task_tags` holds that
-- image of each key and value, the store searches for the same image of the wanted tag,
-- and drops the rare row that only matched through the replacement. A tags value that is
-- not a JSON object (a row corrupted outside flowmill) indexes no tag, so it never blocks
-- the write, the purge or this migration that meets it.
--
-- Frozen once released. Statements are split at semicolons, so comments here hold none.

CREATE TABLE fm_task_tags (
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE INDEX fm_task_tags_value ON fm_task_tags (key, value, seq);
CREATE TRIGGER fm_task_tags_insert AFTER INSERT ON fm_tasks WHEN NEW.tags IS NOT NULL
BEGIN
    INSERT INTO fm_task_tags (key, seq, value)
    SELECT j.key, NEW.seq, j.value FROM json_each(CASE WHEN json_valid(NEW.tags) AND json_type(NEW.tags) = 'object' THEN replace(NEW.tags, '\u0000', '\u00010') ELSE '{}' END) j;
END;
CREATE TRIGGER fm_task_tags_update AFTER UPDATE OF tags ON fm_tasks
    WHEN OLD.tags IS NOT NEW.tags
BEGIN
    DELETE FROM fm_task_tags WHERE seq = OLD.seq
        AND key IN (SELECT j.key FROM json_each(CASE WHEN json_valid(OLD.tags) AND json_type(OLD.tags) = 'object' THEN replace(OLD.tags, '\u0000', '\u00010') ELSE '{}' END) j);
    INSERT INTO fm_task_tags (key, seq, value)
    SELECT j.key, NEW.seq, j.value FROM json_each(CASE WHEN json_valid(NEW.tags) AND json_type(NEW.tags) = 'object' THEN replace(NEW.tags, '\u0000', '\u00010') ELSE '{}' END) j;
END;
CREATE TRIGGER fm_task_tags_delete AFTER DELETE ON fm_tasks WHEN OLD.tags IS NOT NULL
BEGIN
    DELETE FROM fm_task_tags WHERE seq = OLD.seq
        AND key IN (SELECT j.key FROM json_each(CASE WHEN json_valid(OLD.tags) AND json_type(OLD.tags) = 'object' THEN replace(OLD.tags, '\u0000', '\u00010') ELSE '{}' END) j);
END;
INSERT INTO fm_task_tags (key, seq, value)
SELECT j.key, t.seq, j.value FROM fm_tasks t, json_each(CASE WHEN json_valid(t.tags) AND json_type(t.tags) = 'object' THEN replace(t.tags, '\u0000', '\u00010') ELSE '{}' END) j WHERE t.tags IS NOT NULL;
CREATE INDEX fm_tasks_key ON fm_tasks (dedup_key) WHERE dedup_key IS NOT NULL;
