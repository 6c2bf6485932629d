DROP INDEX outbox_held_by_task;
DROP INDEX outbox_held_by_queue;
ALTER TABLE outbox DROP COLUMN held;
