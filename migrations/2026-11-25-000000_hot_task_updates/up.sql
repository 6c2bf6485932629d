-- Updates of a task (status, lease, dates, results) touch no indexed column, and each page
-- keeps room for new row versions, so PostgreSQL makes them HOT: the new version goes in the
-- same page, and no index gets a new entry (BENCHMARKS.md: a tasks UPDATE was the largest
-- share of PostgreSQL's time per task).

-- No query reads leases from the database: the event applier watches them in memory.
DROP INDEX tasks_by_lease_expiry;

-- Tasks of a plan or of a function, whatever their status: listings filter on status row by
-- row, and status no longer changes an index.
DROP INDEX tasks_by_plan_and_status;
DROP INDEX tasks_by_function_and_status;
CREATE INDEX tasks_by_plan ON tasks (compute_plan_key);
CREATE INDEX tasks_by_function ON tasks (function_key);

-- Tasks waiting for their function's build (`waits_on_ended_builds`, every tick). Only the end
-- of a wait for a build changes `waiting_reason` from 'BUILD'; the updates of a running task
-- leave it NULL, so this index does not stop them being HOT.
CREATE INDEX tasks_waiting_for_build ON tasks (function_key) WHERE waiting_reason = 'BUILD';

-- Room in each page for the versions of its tasks' next updates (applies to pages written
-- from now on).
ALTER TABLE tasks SET (fillfactor = 70);
