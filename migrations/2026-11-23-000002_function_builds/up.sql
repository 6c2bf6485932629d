-- Function builds (SPEC.md §4): a function with build steps is built once, on a worker that
-- satisfies its requirements, under a lease its worker renews by heartbeat, like a task's.
ALTER TABLE functions
    ADD COLUMN build_attempt          INTEGER NOT NULL DEFAULT 0 CHECK (build_attempt >= 0),
    ADD COLUMN build_token            UUID,
    ADD COLUMN build_worker           TEXT,
    ADD COLUMN build_lease_expires_at TIMESTAMPTZ,
    -- When the build was last published to a task queue; NULL: (re)publish it.
    ADD COLUMN build_published_at     TIMESTAMPTZ,
    ADD CONSTRAINT functions_build_lease_only_when_building CHECK (
        (build_token IS NULL) = (build_lease_expires_at IS NULL)
        AND (build_token IS NULL OR status = 'BUILDING')
    );

-- The dispatcher looks for builds to publish and build leases to lapse.
CREATE INDEX functions_unbuilt ON functions (status) WHERE status IN ('WAITING', 'BUILDING');
