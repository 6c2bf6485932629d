-- Outbox rows' and models' references checked once per statement instead of once per row.
--
-- Their foreign keys still ran a check for every row: a 20,000-task plan's outbox rows cost
-- 110-150 ms more per 10,000 rows with the key than without (half of their insert), and every
-- event applier pass inserts its tasks' models, each checked against its task and its owner.
-- As for edges, history rows and log lines (migrations `2026-11-24-000000` and
-- `2026-11-26-000000`), statement-level triggers check each distinct task and organization
-- once, locking them against deletion as a foreign key does, with the foreign keys' SQLSTATE
-- (23503), constraint names and messages; triggers on `tasks` and `organizations` keep the
-- ON DELETE behaviour. Baton never changes a model, nor an outbox row's task; those are
-- checked, per row, should anyone else.

ALTER TABLE outbox DROP CONSTRAINT outbox_task_key_fkey;
ALTER TABLE models
    DROP CONSTRAINT models_compute_task_key_fkey,
    DROP CONSTRAINT models_owner_fkey;

CREATE TRIGGER outbox_references_exist AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION baton_check_task_key_references('outbox_task_key_fkey');

-- The check of one row's changed `task_key`: refused with the error of foreign key
-- `TG_ARGV[0]` if its task is missing. The relay's own updates (holding, releasing) leave the
-- task alone and fire nothing.
CREATE FUNCTION baton_check_changed_task_key() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM baton_refuse_missing(baton_missing_task(ARRAY[NEW.task_key])::text,
        TG_TABLE_NAME, TG_ARGV[0], 'task_key', 'tasks');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_updated_references_exist AFTER UPDATE OF task_key ON outbox
    FOR EACH ROW WHEN (OLD.task_key IS DISTINCT FROM NEW.task_key)
    EXECUTE FUNCTION baton_check_changed_task_key('outbox_task_key_fkey');

-- Models' task and owner, each distinct one once a statement. The owners are few (a plan's
-- tasks share theirs) and locked whether or not this transaction wrote them; an owner whose
-- row a transaction that committed meanwhile deleted is missed by the lock and reported.
CREATE FUNCTION models_check_references() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    owner_ids TEXT[];
    locked BIGINT;
BEGIN
    PERFORM baton_refuse_missing(
        baton_missing_task(ARRAY(SELECT DISTINCT compute_task_key FROM inserted))::text,
        'models', 'models_compute_task_key_fkey', 'compute_task_key', 'tasks');
    owner_ids := ARRAY(SELECT DISTINCT owner FROM inserted);
    SELECT count(*) INTO locked
        FROM (SELECT FROM organizations WHERE id = ANY(owner_ids) FOR KEY SHARE) l;
    IF locked < cardinality(owner_ids) THEN
        PERFORM baton_refuse_missing(
            (SELECT coalesce(min(k), owner_ids[1]) FROM unnest(owner_ids) k
             WHERE NOT EXISTS (SELECT FROM organizations WHERE id = k)),
            'models', 'models_owner_fkey', 'owner', 'organizations');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER models_references_exist AFTER INSERT ON models
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION models_check_references();
CREATE TRIGGER models_updated_references_exist AFTER UPDATE ON models
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION models_check_references();

-- A deleted task takes its outbox rows and models along, as the foreign keys' ON DELETE
-- CASCADE did.
CREATE OR REPLACE FUNCTION tasks_delete_edges_and_history() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_edges WHERE parent_key IN (SELECT key FROM deleted);
    DELETE FROM task_edges WHERE child_key IN (SELECT key FROM deleted);
    DELETE FROM task_state_changes WHERE task_key IN (SELECT key FROM deleted);
    DELETE FROM log_lines WHERE task_key IN (SELECT key FROM deleted);
    DELETE FROM outbox WHERE task_key IN (SELECT key FROM deleted);
    DELETE FROM models WHERE compute_task_key IN (SELECT key FROM deleted);
    RETURN NULL;
END $$;

-- An organization that owns models cannot be deleted, as with the foreign key.
CREATE OR REPLACE FUNCTION organizations_refuse_delete_in_use() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM baton_refuse_referenced(
        (SELECT owner FROM tasks WHERE owner IN (SELECT id FROM deleted) LIMIT 1),
        'organizations', 'id', 'tasks', 'tasks_owner_fkey');
    PERFORM baton_refuse_referenced(
        (SELECT worker FROM tasks WHERE worker IN (SELECT id FROM deleted) LIMIT 1),
        'organizations', 'id', 'tasks', 'tasks_worker_fkey');
    PERFORM baton_refuse_referenced(
        (SELECT owner FROM models WHERE owner IN (SELECT id FROM deleted) LIMIT 1),
        'organizations', 'id', 'models', 'models_owner_fkey');
    RETURN NULL;
END $$;
