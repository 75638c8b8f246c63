-- flowmill PostgreSQL schema, migration 5: indexed tag and text filters of `tasks_list`.
--
-- `task_tags` holds one row per tag of a task (by the task's seq), kept by row triggers
-- (which fire only for tasks that have tags) in the transaction that inserts, re-tags (a
-- dedup `replace`) or deletes the task, and filled here for the tasks already stored. A
-- tag filter walks it in seq order. A text filter is a prefix range on the id (its unique
-- index) or on the dedup key (the index below).
--
-- `text` cannot hold NUL and jsonb refuses the escape \u0000, so the stored JSON has each
-- \u0000 replaced by \u0001 followed by 0 before it is split: `task_tags` holds that
-- image of each key and value, the store searches for the same image of the wanted tag,
-- and drops the rare row that only matched through the replacement. A tags value that is
-- not a JSON object (a row corrupted outside flowmill) indexes no tag, so it never blocks
-- the write, the purge or this migration that meets it.

    CREATE TABLE {s}.task_tags (
        key text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        value text COLLATE "C" NOT NULL,
        PRIMARY KEY (key, seq)
    );
    CREATE INDEX task_tags_value ON {s}.task_tags (key, value, seq);
    CREATE FUNCTION {s}.task_tags_split(tags text) RETURNS TABLE (key text, value text)
        LANGUAGE plpgsql IMMUTABLE AS $fn$
        DECLARE
            j jsonb;
        BEGIN
            BEGIN
                j := replace(tags, E'\\u0000', E'\\u00010')::jsonb;
            EXCEPTION WHEN others THEN
                RETURN;
            END;
            IF jsonb_typeof(j) = 'object' THEN
                RETURN QUERY SELECT e.key, e.value FROM jsonb_each_text(j) e;
            END IF;
        END
    $fn$;
    CREATE FUNCTION {s}.task_tags_keep() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF TG_OP <> 'INSERT' AND OLD.tags IS NOT NULL THEN
            DELETE FROM {s}.task_tags WHERE seq = OLD.seq
                AND key IN (SELECT x.key FROM {s}.task_tags_split(OLD.tags) x);
        END IF;
        IF TG_OP <> 'DELETE' AND NEW.tags IS NOT NULL THEN
            INSERT INTO {s}.task_tags (key, seq, value)
            SELECT x.key, NEW.seq, x.value FROM {s}.task_tags_split(NEW.tags) x;
        END IF;
        RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER task_tags_insert AFTER INSERT ON {s}.tasks
        FOR EACH ROW WHEN (NEW.tags IS NOT NULL) EXECUTE FUNCTION {s}.task_tags_keep();
    CREATE TRIGGER task_tags_update AFTER UPDATE OF tags ON {s}.tasks
        FOR EACH ROW WHEN (OLD.tags IS DISTINCT FROM NEW.tags)
        EXECUTE FUNCTION {s}.task_tags_keep();
    CREATE TRIGGER task_tags_delete AFTER DELETE ON {s}.tasks
        FOR EACH ROW WHEN (OLD.tags IS NOT NULL) EXECUTE FUNCTION {s}.task_tags_keep();
    INSERT INTO {s}.task_tags (key, seq, value)
    SELECT x.key, t.seq, x.value FROM {s}.tasks t, {s}.task_tags_split(t.tags) x
    WHERE t.tags IS NOT NULL;
    CREATE INDEX tasks_key ON {s}.tasks (dedup_key) WHERE dedup_key IS NOT NULL;
