DROP TRIGGER tasks_key_is_fixed ON tasks;
DROP TRIGGER users_identifier_is_fixed ON users;
DROP TRIGGER organizations_id_is_fixed ON organizations;
DROP TRIGGER functions_key_is_fixed ON functions;
DROP TRIGGER compute_plans_key_is_fixed ON compute_plans;
DROP FUNCTION baton_refuse_key_change();
DROP TRIGGER users_set_null_task_creators ON users;
DROP FUNCTION users_unset_task_creators();
DROP TRIGGER organizations_in_use_by_tasks ON organizations;
DROP FUNCTION organizations_refuse_delete_in_use();
DROP TRIGGER functions_in_use_by_tasks ON functions;
DROP FUNCTION functions_refuse_delete_in_use();
DROP TRIGGER tasks_cascade_to_edges_and_history ON tasks;
DROP FUNCTION tasks_delete_edges_and_history();
DROP TRIGGER compute_plans_cascade_to_tasks ON compute_plans;
DROP FUNCTION compute_plans_delete_tasks();
DROP TRIGGER task_state_changes_updated_references_exist ON task_state_changes;
DROP TRIGGER task_state_changes_references_exist ON task_state_changes;
DROP FUNCTION task_state_changes_check_inserted_references();
DROP TRIGGER task_edges_updated_references_exist ON task_edges;
DROP TRIGGER task_edges_references_exist ON task_edges;
DROP FUNCTION task_edges_check_inserted_references();
DROP TRIGGER tasks_updated_references_exist ON tasks;
DROP FUNCTION tasks_check_updated_references();
DROP TRIGGER tasks_references_exist ON tasks;
DROP FUNCTION tasks_check_inserted_references();
DROP FUNCTION baton_check_task_references(UUID[], UUID[], TEXT[], TEXT[], TEXT[]);
DROP FUNCTION baton_refuse_referenced(TEXT, TEXT, TEXT, TEXT, TEXT);
DROP FUNCTION baton_refuse_missing(TEXT, TEXT, TEXT, TEXT, TEXT);

ALTER TABLE task_state_changes
    ADD CONSTRAINT task_state_changes_task_key_fkey
    FOREIGN KEY (task_key) REFERENCES tasks (key) ON DELETE CASCADE;
ALTER TABLE task_edges
    ADD CONSTRAINT task_edges_parent_key_fkey
    FOREIGN KEY (parent_key) REFERENCES tasks (key) ON DELETE CASCADE,
    ADD CONSTRAINT task_edges_child_key_fkey
    FOREIGN KEY (child_key) REFERENCES tasks (key) ON DELETE CASCADE;
ALTER TABLE tasks
    ADD CONSTRAINT tasks_compute_plan_key_fkey
    FOREIGN KEY (compute_plan_key) REFERENCES compute_plans (key) ON DELETE CASCADE,
    ADD CONSTRAINT tasks_function_key_fkey FOREIGN KEY (function_key) REFERENCES functions (key),
    ADD CONSTRAINT tasks_owner_fkey FOREIGN KEY (owner) REFERENCES organizations (id),
    ADD CONSTRAINT tasks_worker_fkey FOREIGN KEY (worker) REFERENCES organizations (id),
    ADD CONSTRAINT tasks_creator_fkey
    FOREIGN KEY (creator) REFERENCES users (identifier) ON DELETE SET NULL;
