-- Back to PostgreSQL's choice between a plan per call and one per session.
ALTER FUNCTION baton_missing_task(UUID[]) RESET plan_cache_mode;
