-- What the dispatcher's service loops need beyond the data model.

-- A retried task is published no earlier than its backoff allows.
ALTER TABLE outbox ADD COLUMN available_at TIMESTAMPTZ;
CREATE INDEX outbox_by_availability ON outbox (available_at) WHERE available_at IS NOT NULL;

-- Every answered submission, so that a resubmitted request (same message id, or the same plan
-- key with the same content) gets the same answer and stores nothing twice.
CREATE TABLE submissions (
    message_id        TEXT PRIMARY KEY CHECK (message_id <> ''),
    compute_plan_key  UUID,
    digest            TEXT NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    reply             JSONB NOT NULL,
    creation_date     TIMESTAMPTZ NOT NULL
);
CREATE INDEX submissions_by_plan ON submissions (compute_plan_key, digest);
