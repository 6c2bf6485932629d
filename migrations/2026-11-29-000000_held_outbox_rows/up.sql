-- Ready tasks held back from their task queue. The relay keeps at most the dispatcher's
-- `publish_ahead` ready messages in a queue; the rest of a large round wait here, held, and
-- are released, oldest first, as the queue's consumers take messages. A held task that the
-- event applier grants meanwhile (a refill of a worker's kept slot, a follow-up) has its row
-- deleted unpublished: its message is never sent, delivered and dropped.
ALTER TABLE outbox ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX outbox_held_by_queue ON outbox (routing_key, id) WHERE held;
CREATE INDEX outbox_held_by_task ON outbox (task_key) WHERE held;
