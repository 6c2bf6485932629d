-- Task references of edges, history rows and log lines: one look at each task, and the lock
-- only for tasks this transaction did not write.
--
-- The checks of `2026-11-24-000000_set_based_task_references` looked each named task up twice:
-- once to lock it (skipping the tasks this transaction wrote), once to find it. The event
-- applier's history rows and log lines name tasks its batch has just updated, and a submission's
-- edges and history name tasks it has just inserted, so the first look locked nothing and cost
-- as much as the second (about 7 µs a history row, a tenth of PostgreSQL's time per task in
-- `baton bench throughput`). Now one look finds every named task and tells which ones another
-- transaction wrote; only if there are any are those locked and looked for again, as before.
--
-- Log lines get the same statement-level check in place of their foreign key, which locked
-- each line's task (a write of the task's row) and looked it up once per line.

-- The first of `keys` missing from `tasks`, looking once at each, if every task found was
-- written by this transaction (no other can delete it before this one ends: an insert is
-- invisible to it, an update holds a stronger lock). Otherwise the tasks written by others
-- are locked against deletion, as a foreign key's check does, and the first key missing once
-- they are locked is returned: a task whose delete committed before the lock was taken is
-- missed by the lock and not found by the look that follows. NULL if none is missing.
--
-- The lookups go through the key index (`enable_seqscan = off`): a table that has just grown
-- by a large plan still has the statistics of a small one.
CREATE FUNCTION baton_missing_task(keys UUID[]) RETURNS UUID
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    missing UUID;
    others BIGINT;
BEGIN
    SELECT (array_agg(k.key) FILTER (WHERE t.key IS NULL))[1],
           count(*) FILTER (WHERE t.xmin <> pg_current_xact_id()::xid)
        INTO missing, others
        FROM unnest(keys) AS k(key)
        LEFT JOIN tasks t ON t.key = k.key;
    IF others > 0 THEN
        PERFORM FROM tasks
            WHERE key = ANY(keys) AND xmin <> pg_current_xact_id()::xid
            FOR KEY SHARE;
        SELECT k.key INTO missing FROM unnest(keys) AS k(key)
            WHERE NOT EXISTS (SELECT FROM tasks WHERE key = k.key) LIMIT 1;
    END IF;
    RETURN missing;
END $$;

-- The check of a statement's `task_key`s, for history rows and log lines: refused with the
-- error of foreign key `TG_ARGV[0]` if one is missing.
CREATE FUNCTION baton_check_task_key_references() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM baton_refuse_missing(
        baton_missing_task(ARRAY(SELECT DISTINCT task_key FROM inserted))::text,
        TG_TABLE_NAME, TG_ARGV[0], 'task_key', 'tasks');
    RETURN NULL;
END $$;

DROP TRIGGER task_state_changes_references_exist ON task_state_changes;
DROP TRIGGER task_state_changes_updated_references_exist ON task_state_changes;
DROP FUNCTION task_state_changes_check_inserted_references();
CREATE TRIGGER task_state_changes_references_exist AFTER INSERT ON task_state_changes
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT
    EXECUTE FUNCTION baton_check_task_key_references('task_state_changes_task_key_fkey');
CREATE TRIGGER task_state_changes_updated_references_exist AFTER UPDATE ON task_state_changes
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT
    EXECUTE FUNCTION baton_check_task_key_references('task_state_changes_task_key_fkey');

-- An edge names two tasks; the error names the first column with a missing one.
CREATE OR REPLACE FUNCTION task_edges_check_inserted_references() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
DECLARE
    missing UUID;
BEGIN
    missing := baton_missing_task(
        ARRAY(SELECT parent_key FROM inserted UNION SELECT child_key FROM inserted));
    IF missing IS NOT NULL THEN
        IF EXISTS (SELECT FROM inserted WHERE parent_key = missing) THEN
            PERFORM baton_refuse_missing(missing::text,
                'task_edges', 'task_edges_parent_key_fkey', 'parent_key', 'tasks');
        END IF;
        PERFORM baton_refuse_missing(missing::text,
            'task_edges', 'task_edges_child_key_fkey', 'child_key', 'tasks');
    END IF;
    RETURN NULL;
END $$;

ALTER TABLE log_lines DROP CONSTRAINT log_lines_task_key_fkey;

CREATE TRIGGER log_lines_references_exist AFTER INSERT ON log_lines
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION baton_check_task_key_references('log_lines_task_key_fkey');
CREATE TRIGGER log_lines_updated_references_exist AFTER UPDATE ON log_lines
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION baton_check_task_key_references('log_lines_task_key_fkey');

-- A deleted task takes its log along, as the foreign key's ON DELETE CASCADE did.
CREATE OR REPLACE FUNCTION tasks_delete_edges_and_history() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_edges WHERE parent_key IN (SELECT key FROM deleted);
    DELETE FROM task_edges WHERE child_key IN (SELECT key FROM deleted);
    DELETE FROM task_state_changes WHERE task_key IN (SELECT key FROM deleted);
    DELETE FROM log_lines WHERE task_key IN (SELECT key FROM deleted);
    RETURN NULL;
END $$;
