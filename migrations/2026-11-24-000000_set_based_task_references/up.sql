-- Task references checked once per statement instead of once per row.
--
-- A plan of 100,000 tasks stores 100,000 task rows, 200,000 edges and 100,000 history rows in
-- one transaction. As foreign keys, their references cost a trigger call each (about 800,000 at
-- 5 µs: half the plan's storing time), although a plan's tasks share their plan, function and
-- organizations, and their edges join tasks stored by the same transaction.
--
-- These foreign keys become statement-level triggers that check, and lock against deletion as
-- a foreign key does, each distinct referenced row once per statement; triggers on the
-- referenced tables keep the foreign keys' ON DELETE behaviour. Errors keep the foreign keys'
-- SQLSTATE (23503), constraint names and messages. `tasks.worker_id` keeps its foreign key: it
-- is set by claims, a task at a time. The referenced keys cannot change (baton never changes
-- one; a foreign key would refuse the change only while the row is referenced).

ALTER TABLE tasks
    DROP CONSTRAINT tasks_compute_plan_key_fkey,
    DROP CONSTRAINT tasks_function_key_fkey,
    DROP CONSTRAINT tasks_owner_fkey,
    DROP CONSTRAINT tasks_worker_fkey,
    DROP CONSTRAINT tasks_creator_fkey;
ALTER TABLE task_edges
    DROP CONSTRAINT task_edges_parent_key_fkey,
    DROP CONSTRAINT task_edges_child_key_fkey;
ALTER TABLE task_state_changes
    DROP CONSTRAINT task_state_changes_task_key_fkey;

-- Raises the error of foreign key `constraint_name` on `child_table`.`column_name` for a `key`
-- missing from `parent_table`, if `key` is not NULL.
CREATE FUNCTION baton_refuse_missing(
    key TEXT, child_table TEXT, constraint_name TEXT, column_name TEXT, parent_table TEXT
) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    IF key IS NOT NULL THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('insert or update on table "%s" violates foreign key constraint "%s"',
                             child_table, constraint_name),
            DETAIL = format('Key (%s)=(%s) is not present in table "%s".',
                            column_name, key, parent_table),
            TABLE = child_table,
            CONSTRAINT = constraint_name;
    END IF;
END $$;

-- Raises the error of foreign key `constraint_name` on `child_table` for a deleted `key` of
-- `parent_table` that is still referenced, if `key` is not NULL.
CREATE FUNCTION baton_refuse_referenced(
    key TEXT, parent_table TEXT, key_column TEXT, child_table TEXT, constraint_name TEXT
) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    IF key IS NOT NULL THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('update or delete on table "%s" violates foreign key constraint "%s" on table "%s"',
                             parent_table, constraint_name, child_table),
            DETAIL = format('Key (%s)=(%s) is still referenced from table "%s".',
                            key_column, key, child_table),
            TABLE = child_table,
            CONSTRAINT = constraint_name;
    END IF;
END $$;

-- Tasks' references: their plan, function, owner and worker organizations and creator, each
-- array distinct. They are few rows (a plan's tasks share them), locked whether or not this
-- transaction wrote them; a key whose row a transaction that committed meanwhile deleted is
-- missed by the lock and reported.
CREATE FUNCTION baton_check_task_references(
    plan_keys UUID[], function_keys UUID[], owner_ids TEXT[], worker_ids TEXT[], creator_ids TEXT[]
) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    locked BIGINT;
BEGIN
    SELECT count(*) INTO locked
        FROM (SELECT FROM compute_plans WHERE key = ANY(plan_keys) FOR KEY SHARE) l;
    IF locked < cardinality(plan_keys) THEN
        PERFORM baton_refuse_missing(
            (SELECT coalesce(min(k::text), plan_keys[1]::text) FROM unnest(plan_keys) k
             WHERE NOT EXISTS (SELECT FROM compute_plans WHERE key = k)),
            'tasks', 'tasks_compute_plan_key_fkey', 'compute_plan_key', 'compute_plans');
    END IF;
    SELECT count(*) INTO locked
        FROM (SELECT FROM functions WHERE key = ANY(function_keys) FOR KEY SHARE) l;
    IF locked < cardinality(function_keys) THEN
        PERFORM baton_refuse_missing(
            (SELECT coalesce(min(k::text), function_keys[1]::text) FROM unnest(function_keys) k
             WHERE NOT EXISTS (SELECT FROM functions WHERE key = k)),
            'tasks', 'tasks_function_key_fkey', 'function_key', 'functions');
    END IF;
    SELECT count(*) INTO locked
        FROM (SELECT FROM organizations WHERE id = ANY(owner_ids) FOR KEY SHARE) l;
    IF locked < cardinality(owner_ids) THEN
        PERFORM baton_refuse_missing(
            (SELECT coalesce(min(k), owner_ids[1]) FROM unnest(owner_ids) k
             WHERE NOT EXISTS (SELECT FROM organizations WHERE id = k)),
            'tasks', 'tasks_owner_fkey', 'owner', 'organizations');
    END IF;
    SELECT count(*) INTO locked
        FROM (SELECT FROM organizations WHERE id = ANY(worker_ids) FOR KEY SHARE) l;
    IF locked < cardinality(worker_ids) THEN
        PERFORM baton_refuse_missing(
            (SELECT coalesce(min(k), worker_ids[1]) FROM unnest(worker_ids) k
             WHERE NOT EXISTS (SELECT FROM organizations WHERE id = k)),
            'tasks', 'tasks_worker_fkey', 'worker', 'organizations');
    END IF;
    SELECT count(*) INTO locked
        FROM (SELECT FROM users WHERE identifier = ANY(creator_ids) FOR KEY SHARE) l;
    IF locked < cardinality(creator_ids) THEN
        PERFORM baton_refuse_missing(
            (SELECT coalesce(min(k), creator_ids[1]) FROM unnest(creator_ids) k
             WHERE NOT EXISTS (SELECT FROM users WHERE identifier = k)),
            'tasks', 'tasks_creator_fkey', 'creator', 'users');
    END IF;
END $$;

CREATE FUNCTION tasks_check_inserted_references() RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    plan_keys UUID[];
    function_keys UUID[];
    owner_ids TEXT[];
    worker_ids TEXT[];
    creator_ids TEXT[];
BEGIN
    SELECT array_agg(DISTINCT compute_plan_key), array_agg(DISTINCT function_key),
           array_agg(DISTINCT owner), array_agg(DISTINCT worker),
           array_agg(DISTINCT creator) FILTER (WHERE creator IS NOT NULL)
        INTO plan_keys, function_keys, owner_ids, worker_ids, creator_ids
        FROM inserted;
    PERFORM baton_check_task_references(plan_keys, function_keys, owner_ids, worker_ids, creator_ids);
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_references_exist AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_check_inserted_references();

CREATE FUNCTION tasks_check_updated_references() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM baton_check_task_references(
        ARRAY[NEW.compute_plan_key], ARRAY[NEW.function_key], ARRAY[NEW.owner],
        ARRAY[NEW.worker], array_remove(ARRAY[NEW.creator], NULL));
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_updated_references_exist
    AFTER UPDATE OF compute_plan_key, function_key, owner, worker, creator ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_check_updated_references();

-- Edges' and history rows' tasks: the tasks they name are locked against deletion, as a
-- foreign key check does, then looked for. Tasks this transaction wrote are not locked: no
-- other transaction can delete them before it ends (an insert is invisible to them; an update
-- holds a stronger lock). A task deleted by a transaction that committed after this one's lock
-- was tried is not locked, and not found by the look that follows.
--
-- A batch of state changes runs this with every dispatcher transaction: two static statements
-- (PL/pgSQL keeps their plans) cost 0.10 ms for 3 rows, where an array of the keys, a count and
-- `EXECUTE`d statements cost 0.20 to 0.26 ms. Their lookups go through the key index
-- (`enable_seqscan = off`): a table that has just grown by a large plan still has the
-- statistics of a small one, for which the planner would scan it whole, once per statement of
-- 10,000 rows.
CREATE FUNCTION task_edges_check_inserted_references() RETURNS TRIGGER
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    missing UUID;
BEGIN
    PERFORM FROM tasks
        WHERE key IN (SELECT parent_key FROM inserted UNION SELECT child_key FROM inserted)
          AND xmin <> pg_current_xact_id()::xid
        FOR KEY SHARE;
    SELECT parent_key INTO missing FROM inserted i
        WHERE NOT EXISTS (SELECT FROM tasks WHERE key = i.parent_key) LIMIT 1;
    IF FOUND THEN
        PERFORM baton_refuse_missing(missing::text,
            'task_edges', 'task_edges_parent_key_fkey', 'parent_key', 'tasks');
    END IF;
    SELECT child_key INTO missing FROM inserted i
        WHERE NOT EXISTS (SELECT FROM tasks WHERE key = i.child_key) LIMIT 1;
    IF FOUND THEN
        PERFORM baton_refuse_missing(missing::text,
            'task_edges', 'task_edges_child_key_fkey', 'child_key', 'tasks');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_edges_references_exist AFTER INSERT ON task_edges
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION task_edges_check_inserted_references();
CREATE TRIGGER task_edges_updated_references_exist AFTER UPDATE ON task_edges
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION task_edges_check_inserted_references();

CREATE FUNCTION task_state_changes_check_inserted_references() RETURNS TRIGGER
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    missing UUID;
BEGIN
    PERFORM FROM tasks
        WHERE key IN (SELECT task_key FROM inserted) AND xmin <> pg_current_xact_id()::xid
        FOR KEY SHARE;
    SELECT task_key INTO missing FROM inserted i
        WHERE NOT EXISTS (SELECT FROM tasks WHERE key = i.task_key) LIMIT 1;
    IF FOUND THEN
        PERFORM baton_refuse_missing(missing::text,
            'task_state_changes', 'task_state_changes_task_key_fkey', 'task_key', 'tasks');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER task_state_changes_references_exist AFTER INSERT ON task_state_changes
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION task_state_changes_check_inserted_references();
CREATE TRIGGER task_state_changes_updated_references_exist AFTER UPDATE ON task_state_changes
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION task_state_changes_check_inserted_references();

-- The referenced side: ON DELETE CASCADE, ON DELETE SET NULL and NO ACTION, per statement.
CREATE FUNCTION compute_plans_delete_tasks() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tasks WHERE compute_plan_key IN (SELECT key FROM deleted);
    RETURN NULL;
END $$;
CREATE TRIGGER compute_plans_cascade_to_tasks AFTER DELETE ON compute_plans
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION compute_plans_delete_tasks();

CREATE FUNCTION tasks_delete_edges_and_history() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_edges WHERE parent_key IN (SELECT key FROM deleted);
    DELETE FROM task_edges WHERE child_key IN (SELECT key FROM deleted);
    DELETE FROM task_state_changes WHERE task_key IN (SELECT key FROM deleted);
    RETURN NULL;
END $$;
CREATE TRIGGER tasks_cascade_to_edges_and_history AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_delete_edges_and_history();

CREATE FUNCTION functions_refuse_delete_in_use() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM baton_refuse_referenced(
        (SELECT function_key::text FROM tasks WHERE function_key IN (SELECT key FROM deleted) LIMIT 1),
        'functions', 'key', 'tasks', 'tasks_function_key_fkey');
    RETURN NULL;
END $$;
CREATE TRIGGER functions_in_use_by_tasks AFTER DELETE ON functions
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION functions_refuse_delete_in_use();

CREATE FUNCTION organizations_refuse_delete_in_use() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM baton_refuse_referenced(
        (SELECT owner FROM tasks WHERE owner IN (SELECT id FROM deleted) LIMIT 1),
        'organizations', 'id', 'tasks', 'tasks_owner_fkey');
    PERFORM baton_refuse_referenced(
        (SELECT worker FROM tasks WHERE worker IN (SELECT id FROM deleted) LIMIT 1),
        'organizations', 'id', 'tasks', 'tasks_worker_fkey');
    RETURN NULL;
END $$;
CREATE TRIGGER organizations_in_use_by_tasks AFTER DELETE ON organizations
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION organizations_refuse_delete_in_use();

CREATE FUNCTION users_unset_task_creators() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tasks SET creator = NULL WHERE creator IN (SELECT identifier FROM deleted);
    RETURN NULL;
END $$;
CREATE TRIGGER users_set_null_task_creators AFTER DELETE ON users
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION users_unset_task_creators();

-- The referenced keys never change.
CREATE FUNCTION baton_refuse_key_change() RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    IF to_jsonb(OLD) -> TG_ARGV[0] IS DISTINCT FROM to_jsonb(NEW) -> TG_ARGV[0] THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('the %s of a row of "%s" cannot change: tasks refer to it',
                             TG_ARGV[0], TG_TABLE_NAME),
            TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER compute_plans_key_is_fixed BEFORE UPDATE OF key ON compute_plans
    FOR EACH ROW EXECUTE FUNCTION baton_refuse_key_change('key');
CREATE TRIGGER functions_key_is_fixed BEFORE UPDATE OF key ON functions
    FOR EACH ROW EXECUTE FUNCTION baton_refuse_key_change('key');
CREATE TRIGGER organizations_id_is_fixed BEFORE UPDATE OF id ON organizations
    FOR EACH ROW EXECUTE FUNCTION baton_refuse_key_change('id');
CREATE TRIGGER users_identifier_is_fixed BEFORE UPDATE OF identifier ON users
    FOR EACH ROW EXECUTE FUNCTION baton_refuse_key_change('identifier');
CREATE TRIGGER tasks_key_is_fixed BEFORE UPDATE OF key ON tasks
    FOR EACH ROW EXECUTE FUNCTION baton_refuse_key_change('key');
