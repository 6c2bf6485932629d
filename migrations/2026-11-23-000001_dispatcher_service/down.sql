DROP TABLE submissions;
DROP INDEX outbox_by_availability;
ALTER TABLE outbox DROP COLUMN available_at;
