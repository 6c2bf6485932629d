-- Back to foreign keys on outbox rows and models.
CREATE OR REPLACE FUNCTION organizations_refuse_delete_in_use() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM baton_refuse_referenced(
        (SELECT owner FROM tasks WHERE owner IN (SELECT id FROM deleted) LIMIT 1),
        'organizations', 'id', 'tasks', 'tasks_owner_fkey');
    PERFORM baton_refuse_referenced(
        (SELECT worker FROM tasks WHERE worker IN (SELECT id FROM deleted) LIMIT 1),
        'organizations', 'id', 'tasks', 'tasks_worker_fkey');
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tasks_delete_edges_and_history() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_edges WHERE parent_key IN (SELECT key FROM deleted);
    DELETE FROM task_edges WHERE child_key IN (SELECT key FROM deleted);
    DELETE FROM task_state_changes WHERE task_key IN (SELECT key FROM deleted);
    DELETE FROM log_lines WHERE task_key IN (SELECT key FROM deleted);
    RETURN NULL;
END $$;

DROP TRIGGER models_updated_references_exist ON models;
DROP TRIGGER models_references_exist ON models;
DROP FUNCTION models_check_references();
DROP TRIGGER outbox_updated_references_exist ON outbox;
DROP FUNCTION baton_check_changed_task_key();
DROP TRIGGER outbox_references_exist ON outbox;

ALTER TABLE models
    ADD CONSTRAINT models_compute_task_key_fkey
        FOREIGN KEY (compute_task_key) REFERENCES tasks (key) ON DELETE CASCADE,
    ADD CONSTRAINT models_owner_fkey FOREIGN KEY (owner) REFERENCES organizations (id);
ALTER TABLE outbox ADD CONSTRAINT outbox_task_key_fkey
    FOREIGN KEY (task_key) REFERENCES tasks (key) ON DELETE CASCADE;
