DROP INDEX outbox_not_held;
