-- Back to two looks per named task, and log lines' foreign key.
DROP TRIGGER log_lines_updated_references_exist ON log_lines;
DROP TRIGGER log_lines_references_exist ON log_lines;
ALTER TABLE log_lines ADD CONSTRAINT log_lines_task_key_fkey
    FOREIGN KEY (task_key) REFERENCES tasks (key) ON DELETE CASCADE;

CREATE OR REPLACE FUNCTION tasks_delete_edges_and_history() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_edges WHERE parent_key IN (SELECT key FROM deleted);
    DELETE FROM task_edges WHERE child_key IN (SELECT key FROM deleted);
    DELETE FROM task_state_changes WHERE task_key IN (SELECT key FROM deleted);
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION task_edges_check_inserted_references() RETURNS TRIGGER
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    missing UUID;
BEGIN
    PERFORM FROM tasks
        WHERE key IN (SELECT parent_key FROM inserted UNION SELECT child_key FROM inserted)
          AND xmin <> pg_current_xact_id()::xid
        FOR KEY SHARE;
    SELECT parent_key INTO missing FROM inserted i
        WHERE NOT EXISTS (SELECT FROM tasks WHERE key = i.parent_key) LIMIT 1;
    IF FOUND THEN
        PERFORM baton_refuse_missing(missing::text,
            'task_edges', 'task_edges_parent_key_fkey', 'parent_key', 'tasks');
    END IF;
    SELECT child_key INTO missing FROM inserted i
        WHERE NOT EXISTS (SELECT FROM tasks WHERE key = i.child_key) LIMIT 1;
    IF FOUND THEN
        PERFORM baton_refuse_missing(missing::text,
            'task_edges', 'task_edges_child_key_fkey', 'child_key', 'tasks');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER task_state_changes_references_exist ON task_state_changes;
DROP TRIGGER task_state_changes_updated_references_exist ON task_state_changes;
CREATE FUNCTION task_state_changes_check_inserted_references() RETURNS TRIGGER
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    missing UUID;
BEGIN
    PERFORM FROM tasks
        WHERE key IN (SELECT task_key FROM inserted) AND xmin <> pg_current_xact_id()::xid
        FOR KEY SHARE;
    SELECT task_key INTO missing FROM inserted i
        WHERE NOT EXISTS (SELECT FROM tasks WHERE key = i.task_key) LIMIT 1;
    IF FOUND THEN
        PERFORM baton_refuse_missing(missing::text,
            'task_state_changes', 'task_state_changes_task_key_fkey', 'task_key', 'tasks');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_state_changes_references_exist AFTER INSERT ON task_state_changes
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION task_state_changes_check_inserted_references();
CREATE TRIGGER task_state_changes_updated_references_exist AFTER UPDATE ON task_state_changes
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION task_state_changes_check_inserted_references();

DROP FUNCTION baton_check_task_key_references();
DROP FUNCTION baton_missing_task(UUID[]);
