ALTER TABLE tasks RESET (fillfactor);
DROP INDEX tasks_waiting_for_build;
DROP INDEX tasks_by_function;
DROP INDEX tasks_by_plan;
CREATE INDEX tasks_by_function_and_status ON tasks (function_key, status);
CREATE INDEX tasks_by_plan_and_status ON tasks (compute_plan_key, status);
CREATE INDEX tasks_by_lease_expiry ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
