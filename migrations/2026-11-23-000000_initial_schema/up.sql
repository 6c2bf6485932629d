-- baton's schema: the whole data model (SPEC.md §1-9) in one migration.
-- Statuses and kinds are TEXT with CHECK constraints (readable in psql and from any language);
-- structured values that are read and written whole are JSONB; times are timestamptz.

CREATE TABLE organizations (
    id             TEXT PRIMARY KEY CHECK (id <> '' AND length(id) <= 100),
    address        TEXT,
    creation_date  TIMESTAMPTZ NOT NULL
);

CREATE TABLE users (
    identifier     TEXT PRIMARY KEY CHECK (identifier ~ '^[a-zA-Z0-9_.-]{3,32}$'),
    display_name   TEXT NOT NULL,
    organization   TEXT NOT NULL REFERENCES organizations (id),
    roles          TEXT[] NOT NULL DEFAULT '{}' CHECK (
        roles <@ ARRAY['administrator', 'operator', 'producer', 'auditor', 'viewer', 'worker']
        AND array_position(roles, NULL) IS NULL
    ),
    is_enabled     BOOLEAN NOT NULL,
    creation_date  TIMESTAMPTZ NOT NULL,
    update_date    TIMESTAMPTZ NOT NULL
);

CREATE TABLE credentials (
    identifier               UUID PRIMARY KEY,
    user_identifier          TEXT NOT NULL REFERENCES users (identifier) ON DELETE CASCADE,
    type                     TEXT NOT NULL CHECK (type IN ('password', 'token')),
    hash_function            TEXT NOT NULL,
    hash_function_parameters JSONB NOT NULL,
    hash_function_salt       TEXT CHECK (hash_function_salt ~ '^[0-9a-f]*$'),
    secret                   TEXT NOT NULL,
    description              TEXT,
    expiration_date          TIMESTAMPTZ,
    revocation_date          TIMESTAMPTZ,
    creation_date            TIMESTAMPTZ NOT NULL,
    update_date              TIMESTAMPTZ NOT NULL
);
-- At most one password per user.
CREATE UNIQUE INDEX credentials_one_password_per_user ON credentials (user_identifier)
    WHERE type = 'password';
CREATE INDEX credentials_by_user ON credentials (user_identifier);

CREATE TABLE projects (
    identifier     TEXT PRIMARY KEY CHECK (identifier <> '' AND length(identifier) <= 100),
    display_name   TEXT NOT NULL,
    services       JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(services) = 'object'),
    creation_date  TIMESTAMPTZ NOT NULL,
    update_date    TIMESTAMPTZ NOT NULL
);

CREATE TABLE functions (
    key              UUID PRIMARY KEY,
    name             TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    display_name     TEXT,
    summary          TEXT,
    owner            TEXT NOT NULL REFERENCES organizations (id),
    creator          TEXT REFERENCES users (identifier) ON DELETE SET NULL,
    project          TEXT REFERENCES projects (identifier),
    permissions      JSONB NOT NULL,
    metadata         JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    description      JSONB,
    archive          JSONB,
    image            JSONB,
    inputs           JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(inputs) = 'array'),
    outputs          JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(outputs) = 'array'),
    steps            JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(steps) = 'array'),
    build_steps      JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(build_steps) = 'array'),
    parameters       JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(parameters) = 'array'),
    parameter_schema JSONB,
    workspace        TEXT,
    kind             TEXT,
    requirements     JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(requirements) = 'object'),
    retry            JSONB NOT NULL,
    timeout_secs     BIGINT CHECK (timeout_secs > 0),
    is_enabled       BOOLEAN NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('WAITING', 'BUILDING', 'READY', 'FAILED', 'CANCELED')),
    data             JSONB NOT NULL DEFAULT '{}',
    creation_date    TIMESTAMPTZ NOT NULL,
    update_date      TIMESTAMPTZ NOT NULL
);
CREATE INDEX functions_by_project ON functions (project);

CREATE TABLE datasets (
    key              UUID PRIMARY KEY,
    name             TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    owner            TEXT NOT NULL REFERENCES organizations (id),
    permissions      JSONB NOT NULL,
    data_type        TEXT NOT NULL,
    opener           JSONB NOT NULL,
    description      JSONB NOT NULL,
    metadata         JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    logs_permission  JSONB NOT NULL,
    creation_date    TIMESTAMPTZ NOT NULL
);

CREATE TABLE data_samples (
    key            UUID PRIMARY KEY,
    owner          TEXT NOT NULL REFERENCES organizations (id),
    path           TEXT,
    creation_date  TIMESTAMPTZ NOT NULL
);

-- Which samples belong to which data manager, in attachment order.
CREATE TABLE dataset_samples (
    dataset_key      UUID NOT NULL REFERENCES datasets (key) ON DELETE CASCADE,
    data_sample_key  UUID NOT NULL REFERENCES data_samples (key) ON DELETE CASCADE,
    position         BIGSERIAL NOT NULL,
    PRIMARY KEY (dataset_key, data_sample_key)
);
CREATE INDEX dataset_samples_by_sample ON dataset_samples (data_sample_key);

CREATE TABLE compute_plans (
    key               UUID PRIMARY KEY,
    project           TEXT REFERENCES projects (identifier),
    name              TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    tag               TEXT NOT NULL DEFAULT '' CHECK (char_length(tag) <= 100),
    owner             TEXT NOT NULL REFERENCES organizations (id),
    creator           TEXT REFERENCES users (identifier) ON DELETE SET NULL,
    metadata          JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    task_count        INTEGER NOT NULL DEFAULT 0,
    waiting_count     INTEGER NOT NULL DEFAULT 0 CHECK (waiting_count >= 0),
    todo_count        INTEGER NOT NULL DEFAULT 0 CHECK (todo_count >= 0),
    doing_count       INTEGER NOT NULL DEFAULT 0 CHECK (doing_count >= 0),
    done_count        INTEGER NOT NULL DEFAULT 0 CHECK (done_count >= 0),
    failed_count      INTEGER NOT NULL DEFAULT 0 CHECK (failed_count >= 0),
    canceled_count    INTEGER NOT NULL DEFAULT 0 CHECK (canceled_count >= 0),
    status            TEXT NOT NULL CHECK (status IN ('EMPTY', 'WAITING', 'TODO', 'DOING', 'DONE', 'FAILED', 'CANCELED')),
    failed_task_key   UUID,
    creation_date     TIMESTAMPTZ NOT NULL,
    start_date        TIMESTAMPTZ,
    end_date          TIMESTAMPTZ,
    failure_date      TIMESTAMPTZ,
    cancelation_date  TIMESTAMPTZ,
    CONSTRAINT compute_plans_counts_add_up
        CHECK (task_count = waiting_count + todo_count + doing_count + done_count + failed_count + canceled_count)
);
CREATE INDEX compute_plans_by_status ON compute_plans (status, creation_date);
CREATE INDEX compute_plans_by_project ON compute_plans (project, creation_date);

CREATE TABLE workers (
    identifier         TEXT PRIMARY KEY CHECK (identifier <> '' AND length(identifier) <= 100),
    owner              TEXT NOT NULL REFERENCES users (identifier),
    organization       TEXT NOT NULL REFERENCES organizations (id),
    version            TEXT NOT NULL,
    display_name       TEXT NOT NULL,
    properties         JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(properties) = 'object'),
    executor_limit     INTEGER NOT NULL CHECK (executor_limit > 0),
    is_enabled         BOOLEAN NOT NULL,
    is_active          BOOLEAN NOT NULL,
    should_disconnect  BOOLEAN NOT NULL,
    last_heartbeat     TIMESTAMPTZ,
    creation_date      TIMESTAMPTZ NOT NULL,
    update_date        TIMESTAMPTZ NOT NULL
);

CREATE TABLE devices (
    worker            TEXT NOT NULL REFERENCES workers (identifier) ON DELETE CASCADE,
    id                TEXT NOT NULL CHECK (id <> ''),
    device_type       TEXT NOT NULL CHECK (device_type <> ''),
    input_type        TEXT,
    parameter_schema  JSONB,
    is_active         BOOLEAN NOT NULL,
    last_seen         TIMESTAMPTZ,
    PRIMARY KEY (worker, id)
);

CREATE TABLE tasks (
    key               UUID PRIMARY KEY,
    compute_plan_key  UUID NOT NULL REFERENCES compute_plans (key) ON DELETE CASCADE,
    function_key      UUID NOT NULL REFERENCES functions (key),
    name              TEXT CHECK (char_length(name) <= 100),
    owner             TEXT NOT NULL REFERENCES organizations (id),
    worker            TEXT NOT NULL REFERENCES organizations (id),
    creator           TEXT REFERENCES users (identifier) ON DELETE SET NULL,
    source            JSONB NOT NULL,
    rank              INTEGER NOT NULL CHECK (rank >= 0),
    tag               TEXT NOT NULL DEFAULT '' CHECK (char_length(tag) <= 100),
    metadata          JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    inputs            JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(inputs) = 'array'),
    outputs           JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(outputs) = 'object'),
    parameters        JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(parameters) = 'object'),
    requirements      JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(requirements) = 'object'),
    status            TEXT NOT NULL CHECK (status IN ('WAITING', 'TODO', 'DOING', 'DONE', 'FAILED', 'CANCELED')),
    waiting_reason    TEXT CHECK (waiting_reason IN ('BUILD', 'PARENTS')),
    error_type        TEXT CHECK (error_type IN ('BUILD', 'EXECUTION', 'TIMEOUT', 'INTERNAL', 'CANCELED_BY_WORKER')),
    error_message     TEXT,
    logs_address      TEXT,
    logs_permission   JSONB NOT NULL,
    cancel_requested  BOOLEAN NOT NULL DEFAULT FALSE,
    abort_requested   BOOLEAN NOT NULL DEFAULT FALSE,
    attempt_count     INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    lease_attempt     INTEGER,
    lease_token       UUID,
    lease_expires_at  TIMESTAMPTZ,
    not_before        TIMESTAMPTZ,
    worker_id         TEXT REFERENCES workers (identifier) ON DELETE SET NULL,
    device_id         TEXT,
    input_type        TEXT,
    input             JSONB NOT NULL DEFAULT 'null',
    output            JSONB NOT NULL DEFAULT 'null',
    data              JSONB NOT NULL DEFAULT '{}',
    steps             JSONB NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(steps) = 'array'),
    creation_date     TIMESTAMPTZ NOT NULL,
    update_date       TIMESTAMPTZ NOT NULL,
    start_date        TIMESTAMPTZ,
    end_date          TIMESTAMPTZ,
    -- A WAITING task always says why, and only a WAITING task does.
    CONSTRAINT tasks_waiting_reason_iff_waiting CHECK ((status = 'WAITING') = (waiting_reason IS NOT NULL)),
    -- Only a FAILED task has an error type.
    CONSTRAINT tasks_error_type_only_when_failed CHECK (error_type IS NULL OR status = 'FAILED'),
    -- A lease is whole or absent, and only a DOING task holds one.
    CONSTRAINT tasks_lease_whole_or_absent CHECK ((lease_attempt IS NULL) = (lease_token IS NULL) AND (lease_token IS NULL) = (lease_expires_at IS NULL)),
    CONSTRAINT tasks_lease_only_when_doing CHECK (lease_token IS NULL OR status = 'DOING'),
    CONSTRAINT tasks_lease_is_current_attempt CHECK (lease_attempt IS NULL OR lease_attempt = attempt_count)
);
-- The dispatcher's queries: tasks of a plan by status; leases that lapse; tasks of a function
-- waiting for its build.
CREATE INDEX tasks_by_plan_and_status ON tasks (compute_plan_key, status);
CREATE INDEX tasks_by_lease_expiry ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX tasks_by_function_and_status ON tasks (function_key, status);

ALTER TABLE compute_plans
    ADD CONSTRAINT compute_plans_failed_task_key_fkey
    FOREIGN KEY (failed_task_key) REFERENCES tasks (key) DEFERRABLE INITIALLY DEFERRED;

-- The DAG: one row per (parent, child) pair. The primary key serves "children of a task".
CREATE TABLE task_edges (
    parent_key  UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    child_key   UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    PRIMARY KEY (parent_key, child_key),
    CONSTRAINT task_edges_no_self_loop CHECK (parent_key <> child_key)
);
CREATE INDEX task_edges_by_child ON task_edges (child_key);

-- Append-only history of every status change.
CREATE TABLE task_state_changes (
    id         BIGSERIAL PRIMARY KEY,
    task_key   UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    timestamp  TIMESTAMPTZ NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('WAITING', 'TODO', 'DOING', 'DONE', 'FAILED', 'CANCELED')),
    reason     TEXT NOT NULL,
    attempt    INTEGER CHECK (attempt >= 1)
);
CREATE INDEX task_state_changes_by_task ON task_state_changes (task_key, id);

-- Ready tasks waiting to be published, in order; a row is deleted once RabbitMQ confirmed it.
CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    task_key     UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    routing_key  TEXT NOT NULL CHECK (routing_key <> '' AND octet_length(routing_key) <= 255),
    payload      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE models (
    key                UUID PRIMARY KEY,
    compute_task_key   UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    output_identifier  TEXT NOT NULL,
    checksum           TEXT CHECK (checksum ~ '^[0-9a-f]{64}$'),
    storage_address    TEXT,
    permissions        JSONB NOT NULL,
    owner              TEXT NOT NULL REFERENCES organizations (id),
    creation_date      TIMESTAMPTZ NOT NULL,
    -- A disabled model has neither; an available one has both.
    CONSTRAINT models_address_whole_or_absent CHECK ((checksum IS NULL) = (storage_address IS NULL))
);
CREATE INDEX models_by_task ON models (compute_task_key, output_identifier);

CREATE TABLE performances (
    compute_task_key   UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    output_identifier  TEXT NOT NULL,
    value              DOUBLE PRECISION NOT NULL
        CHECK (value <> 'NaN' AND value <> 'Infinity' AND value <> '-Infinity'),
    creation_date      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (compute_task_key, output_identifier)
);

CREATE TABLE log_lines (
    task_key   UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL CHECK (attempt >= 1),
    seq        BIGINT NOT NULL CHECK (seq >= 0),
    step       INTEGER CHECK (step >= 0),
    stream     TEXT NOT NULL CHECK (stream IN ('STDOUT', 'STDERR', 'SYSTEM')),
    timestamp  TIMESTAMPTZ NOT NULL,
    text       TEXT NOT NULL,
    truncated  BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (task_key, attempt, seq)
);
CREATE INDEX log_lines_by_task_and_time ON log_lines (task_key, timestamp);

CREATE TABLE measurements (
    id         BIGSERIAL PRIMARY KEY,
    task_key   UUID NOT NULL REFERENCES tasks (key) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL CHECK (attempt >= 1),
    channel    TEXT NOT NULL CHECK (channel <> ''),
    t          DOUBLE PRECISION NOT NULL,
    value      DOUBLE PRECISION NOT NULL,
    timestamp  TIMESTAMPTZ NOT NULL
);
CREATE INDEX measurements_by_task_and_time ON measurements (task_key, channel, timestamp);

CREATE TABLE schedules (
    project         TEXT NOT NULL REFERENCES projects (identifier) ON DELETE CASCADE,
    identifier      TEXT NOT NULL CHECK (identifier <> '' AND length(identifier) <= 100),
    display_name    TEXT NOT NULL,
    function_key    UUID NOT NULL REFERENCES functions (key),
    parameters      JSONB NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(parameters) = 'object'),
    expression      TEXT NOT NULL CHECK (expression <> ''),
    timezone        TEXT NOT NULL,
    is_enabled      BOOLEAN NOT NULL DEFAULT FALSE,
    last_run        UUID REFERENCES tasks (key) ON DELETE SET NULL,
    last_fire_date  TIMESTAMPTZ,
    creation_date   TIMESTAMPTZ NOT NULL,
    update_date     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project, identifier)
);
