-- `baton_missing_task` plans its lookup once per session, not once per call.
--
-- Its lookup takes the array of keys as a parameter. PostgreSQL plans such a statement afresh
-- for each call ("custom plans") as long as a plan for the actual array looks cheaper than one
-- for any array, and for the one or two keys of an event applier's batch in a chain it always
-- does: the history, edge and log line checks each spent about 0.25 ms planning a lookup that
-- then ran in 0.02 ms. The plan is the same whatever the keys (`enable_seqscan = off` already
-- makes it a key index lookup per key), so the generic plan is kept.
ALTER FUNCTION baton_missing_task(UUID[]) SET plan_cache_mode = force_generic_plan;
