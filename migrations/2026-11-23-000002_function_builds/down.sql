DROP INDEX functions_unbuilt;
ALTER TABLE functions
    DROP CONSTRAINT functions_build_lease_only_when_building,
    DROP COLUMN build_published_at,
    DROP COLUMN build_lease_expires_at,
    DROP COLUMN build_worker,
    DROP COLUMN build_token,
    DROP COLUMN build_attempt;
