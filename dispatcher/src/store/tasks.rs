//! Queries on tasks: batch insert with their DAG edges, reads by key, plan and status, children
//! and parents, the state-change history, and the outbox of ready tasks.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use models::{
    FunctionKey, OrganizationId, PlanKey, RequirementSet, Task, TaskKey, TaskStateChange,
    TaskStatus, WorkerId,
};

use super::rows::{
    NewOutboxRow, NewStateChangeRow, OutboxRow, StateChangeRow, TaskEdgeRow, TaskRow, TaskState,
    TaskStateRow,
};
use super::schema::{outbox, task_edges, task_state_changes, tasks};
use super::{Cached, Page, StoreError, StoreResult, insert_unnested};

/// Stores `tasks` and the DAG edges their parent-output inputs name, in chunks that fit
/// PostgreSQL's bind-parameter limit. Parents must be stored already or be among `tasks`.
pub async fn insert_tasks(conn: &AsyncPgConnection, tasks: &[Task]) -> StoreResult<()> {
    use diesel::sql_types::{Bool, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
    let rows = tasks
        .iter()
        .map(TaskRow::from_model)
        .collect::<StoreResult<Vec<_>>>()?;
    insert_unnested!(conn, "tasks", rows, [
        key: SqlUuid,
        compute_plan_key: SqlUuid,
        function_key: SqlUuid,
        name: Nullable<Text>,
        owner: Text,
        worker: Text,
        creator: Nullable<Text>,
        rank: Integer,
        tag: Text,
        status: Text,
        waiting_reason: Nullable<Text>,
        error_type: Nullable<Text>,
        error_message: Nullable<Text>,
        logs_address: Nullable<Text>,
        cancel_requested: Bool,
        abort_requested: Bool,
        attempt_count: Integer,
        lease_attempt: Nullable<Integer>,
        lease_token: Nullable<SqlUuid>,
        lease_expires_at: Nullable<Timestamptz>,
        not_before: Nullable<Timestamptz>,
        worker_id: Nullable<Text>,
        device_id: Nullable<Text>,
        input_type: Nullable<Text>,
        creation_date: Timestamptz,
        update_date: Timestamptz,
        start_date: Nullable<Timestamptz>,
        end_date: Nullable<Timestamptz>,
    ], json [
        source,
        metadata,
        inputs,
        outputs,
        parameters,
        requirements,
        logs_permission,
        input,
        output,
        data,
        steps,
    ])?;
    let edges: Vec<TaskEdgeRow> = tasks
        .iter()
        .flat_map(|task| {
            task.parent_keys().into_iter().map(|parent| TaskEdgeRow {
                parent_key: parent.0,
                child_key: task.key.0,
            })
        })
        .collect();
    insert_unnested!(conn, "task_edges", edges, [
        parent_key: SqlUuid,
        child_key: SqlUuid,
    ])?;
    Ok(())
}

/// The task `key`.
pub async fn find_task(conn: &mut AsyncPgConnection, key: TaskKey) -> StoreResult<Option<Task>> {
    tasks::table
        .find(key.0)
        .select(TaskRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(TaskRow::into_model)
        .transpose()
}

/// The tasks among `keys` that exist, in no particular order.
pub async fn find_tasks(mut conn: &AsyncPgConnection, keys: &[TaskKey]) -> StoreResult<Vec<Task>> {
    let keys: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    tasks::table
        .filter(tasks::key.eq_any(keys))
        .select(TaskRow::as_select())
        .load(&mut conn)
        .await?
        .into_iter()
        .map(TaskRow::into_model)
        .collect()
}

/// Replaces every field of the stored task `task.key` with `task`'s.
pub async fn update_task(conn: &mut AsyncPgConnection, task: &Task) -> StoreResult<()> {
    let row = TaskRow::from_model(task)?;
    diesel::update(tasks::table.find(task.key.0))
        .set((
            tasks::status.eq(row.status),
            tasks::waiting_reason.eq(row.waiting_reason),
            tasks::error_type.eq(row.error_type),
            tasks::error_message.eq(row.error_message),
            tasks::logs_address.eq(row.logs_address),
            tasks::cancel_requested.eq(row.cancel_requested),
            tasks::abort_requested.eq(row.abort_requested),
            tasks::attempt_count.eq(row.attempt_count),
            tasks::lease_attempt.eq(row.lease_attempt),
            tasks::lease_token.eq(row.lease_token),
            tasks::lease_expires_at.eq(row.lease_expires_at),
            tasks::not_before.eq(row.not_before),
            tasks::worker_id.eq(row.worker_id),
            tasks::device_id.eq(row.device_id),
            tasks::output.eq(row.output),
            tasks::data.eq(row.data),
            tasks::steps.eq(row.steps),
            tasks::update_date.eq(row.update_date),
            tasks::start_date.eq(row.start_date),
            tasks::end_date.eq(row.end_date),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The fields of a task that change as it runs: what the dispatcher's core decides.
#[derive(Clone, Debug)]
pub struct TaskStateUpdate<'a> {
    /// The task.
    pub key: TaskKey,
    /// Its status.
    pub status: TaskStatus,
    /// Why it waits.
    pub waiting_reason: Option<models::WaitingReason>,
    /// Why it failed.
    pub error_type: Option<models::TaskErrorType>,
    /// The failure's message.
    pub error_message: Option<&'a str>,
    /// A cancel was ordered.
    pub cancel_requested: bool,
    /// An abort was ordered.
    pub abort_requested: bool,
    /// Attempts granted.
    pub attempt_count: u32,
    /// The running attempt's lease.
    pub lease: Option<&'a models::Lease>,
    /// Not to be claimed before.
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// The worker process running it.
    pub worker_id: Option<&'a models::WorkerId>,
    /// First start.
    pub start_date: Option<chrono::DateTime<chrono::Utc>>,
    /// First end.
    pub end_date: Option<chrono::DateTime<chrono::Utc>>,
    /// When this change happens.
    pub update_date: chrono::DateTime<chrono::Utc>,
    /// What the worker reported with the end of the attempt, if it just ended: its step
    /// statuses and output data. `None` keeps the stored ones.
    pub result: Option<(&'a [models::StepState], &'a serde_json::Value)>,
}

fn count(what: &'static str, value: u32) -> StoreResult<i32> {
    i32::try_from(value).map_err(|_| super::StoreError::Encode {
        what,
        reason: format!("{value} is too large"),
    })
}

/// Saves the running state of many tasks in one statement (see [`TaskStateUpdate`]): the
/// dispatcher writes every task a batch of events changed at once, each in one new row version
/// (with its result, if it has one, rather than in a second update).
pub async fn update_task_states(
    mut conn: &AsyncPgConnection,
    updates: &[TaskStateUpdate<'_>],
) -> StoreResult<()> {
    use diesel::sql_types::{Array, Bool, Integer, Jsonb, Nullable, Text, Timestamptz};
    type Stamp = chrono::DateTime<chrono::Utc>;
    if updates.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(updates.len());
    let mut statuses = Vec::with_capacity(updates.len());
    let mut waiting_reasons = Vec::with_capacity(updates.len());
    let mut error_types = Vec::with_capacity(updates.len());
    let mut error_messages = Vec::with_capacity(updates.len());
    let mut cancels = Vec::with_capacity(updates.len());
    let mut aborts = Vec::with_capacity(updates.len());
    let mut attempt_counts = Vec::with_capacity(updates.len());
    let mut lease_attempts = Vec::with_capacity(updates.len());
    let mut lease_tokens = Vec::with_capacity(updates.len());
    let mut lease_expiries: Vec<Option<Stamp>> = Vec::with_capacity(updates.len());
    let mut not_befores = Vec::with_capacity(updates.len());
    let mut workers = Vec::with_capacity(updates.len());
    let mut start_dates = Vec::with_capacity(updates.len());
    let mut end_dates = Vec::with_capacity(updates.len());
    let mut update_dates = Vec::with_capacity(updates.len());
    let mut steps = Vec::with_capacity(updates.len());
    let mut outputs = Vec::with_capacity(updates.len());
    for update in updates {
        keys.push(update.key.0);
        statuses.push(update.status.as_str());
        waiting_reasons.push(update.waiting_reason.map(|r| r.as_str()));
        error_types.push(update.error_type.map(|e| e.as_str()));
        error_messages.push(update.error_message);
        cancels.push(update.cancel_requested);
        aborts.push(update.abort_requested);
        attempt_counts.push(count("attempt count", update.attempt_count)?);
        lease_attempts.push(
            update
                .lease
                .map(|lease| count("lease attempt", lease.attempt.get()))
                .transpose()?,
        );
        lease_tokens.push(update.lease.map(|lease| lease.token));
        lease_expiries.push(update.lease.map(|lease| lease.expires_at));
        not_befores.push(update.not_before);
        workers.push(update.worker_id.map(|w| w.as_str()));
        start_dates.push(update.start_date);
        end_dates.push(update.end_date);
        update_dates.push(update.update_date);
        let (step_states, output) = match update.result {
            Some((states, output)) => (Some(encode_steps(states)?), Some(output)),
            None => (None, None),
        };
        steps.push(step_states);
        outputs.push(output);
    }
    Cached(
        diesel::sql_query(
            "UPDATE tasks SET status = u.status, waiting_reason = u.waiting_reason, \
         error_type = u.error_type, error_message = u.error_message, \
         cancel_requested = u.cancel_requested, abort_requested = u.abort_requested, \
         attempt_count = u.attempt_count, lease_attempt = u.lease_attempt, \
         lease_token = u.lease_token, lease_expires_at = u.lease_expires_at, \
         not_before = u.not_before, worker_id = u.worker_id, start_date = u.start_date, \
         end_date = u.end_date, update_date = u.update_date, \
         steps = COALESCE(u.steps, tasks.steps), output = COALESCE(u.output, tasks.output) \
         FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
         $17, $18) \
         AS u(key, status, waiting_reason, error_type, error_message, cancel_requested, \
         abort_requested, attempt_count, lease_attempt, lease_token, lease_expires_at, \
         not_before, worker_id, start_date, end_date, update_date, steps, output) \
         WHERE tasks.key = u.key",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(keys)
        .bind::<Array<Text>, _>(statuses)
        .bind::<Array<Nullable<Text>>, _>(waiting_reasons)
        .bind::<Array<Nullable<Text>>, _>(error_types)
        .bind::<Array<Nullable<Text>>, _>(error_messages)
        .bind::<Array<Bool>, _>(cancels)
        .bind::<Array<Bool>, _>(aborts)
        .bind::<Array<Integer>, _>(attempt_counts)
        .bind::<Array<Nullable<Integer>>, _>(lease_attempts)
        .bind::<Array<Nullable<diesel::sql_types::Uuid>>, _>(lease_tokens)
        .bind::<Array<Nullable<Timestamptz>>, _>(lease_expiries)
        .bind::<Array<Nullable<Timestamptz>>, _>(not_befores)
        .bind::<Array<Nullable<Text>>, _>(workers)
        .bind::<Array<Nullable<Timestamptz>>, _>(start_dates)
        .bind::<Array<Nullable<Timestamptz>>, _>(end_dates)
        .bind::<Array<Timestamptz>, _>(update_dates)
        .bind::<Array<Nullable<Jsonb>>, _>(steps)
        .bind::<Array<Nullable<Jsonb>>, _>(outputs),
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Saves what workers reported with the end of attempts: each task's step statuses and
/// output data, in one statement.
pub async fn set_task_results(
    mut conn: &AsyncPgConnection,
    results: &[(TaskKey, Vec<models::StepState>, serde_json::Value)],
) -> StoreResult<()> {
    use diesel::sql_types::{Array, Jsonb};
    if results.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(results.len());
    let mut steps = Vec::with_capacity(results.len());
    let mut outputs = Vec::with_capacity(results.len());
    for (key, states, output) in results {
        keys.push(key.0);
        steps.push(encode_steps(states)?);
        outputs.push(output.clone());
    }
    Cached(
        diesel::sql_query(
            "UPDATE tasks SET steps = u.steps, output = u.output \
             FROM unnest($1, $2, $3) AS u(key, steps, output) WHERE tasks.key = u.key",
        )
        .bind::<Array<diesel::sql_types::Uuid>, _>(keys)
        .bind::<Array<Jsonb>, _>(steps)
        .bind::<Array<Jsonb>, _>(outputs),
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Step statuses as stored in `tasks.steps`.
fn encode_steps(states: &[models::StepState]) -> StoreResult<serde_json::Value> {
    serde_json::to_value(states).map_err(|error| super::StoreError::Encode {
        what: "step states",
        reason: error.to_string(),
    })
}

/// The plans that have a running (DOING) task: their leases must be watched.
pub async fn plans_with_running_tasks(conn: &mut AsyncPgConnection) -> StoreResult<Vec<PlanKey>> {
    let keys: Vec<Uuid> = tasks::table
        .filter(tasks::status.eq(TaskStatus::Doing.as_str()))
        .select(tasks::compute_plan_key)
        .distinct()
        .load(conn)
        .await?;
    Ok(keys.into_iter().map(PlanKey).collect())
}

/// The distinct requirement sets of tasks waiting or ready to run: the task queues a newly
/// registered worker may have to consume.
pub async fn pending_requirement_sets(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Vec<RequirementSet>> {
    requirement_sets_of(conn, &[TaskStatus::Todo, TaskStatus::Waiting]).await
}

/// The distinct requirement sets of ready (TODO) tasks: the task queues that hold messages.
pub async fn ready_requirement_sets(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Vec<RequirementSet>> {
    requirement_sets_of(conn, &[TaskStatus::Todo]).await
}

/// The distinct requirement sets of the tasks in one of `statuses`.
async fn requirement_sets_of(
    conn: &mut AsyncPgConnection,
    statuses: &[TaskStatus],
) -> StoreResult<Vec<RequirementSet>> {
    let statuses: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
    let sets: Vec<serde_json::Value> = tasks::table
        .filter(tasks::status.eq_any(statuses))
        .select(tasks::requirements)
        .distinct()
        .load(conn)
        .await?;
    sets.into_iter()
        .map(|set| {
            serde_json::from_value(set).map_err(|error| StoreError::Corrupt {
                table: "tasks",
                key: "(requirements)".to_owned(),
                reason: error.to_string(),
            })
        })
        .collect()
}

/// What the dispatcher's core holds of each task of plan `plan`, by rank then key, with the
/// parents of each (from the DAG edges, parents in other plans included).
pub async fn load_task_states(
    conn: &mut AsyncPgConnection,
    plan: PlanKey,
) -> StoreResult<Vec<(TaskState, Vec<TaskKey>)>> {
    let rows: Vec<TaskStateRow> = tasks::table
        .filter(tasks::compute_plan_key.eq(plan.0))
        .order((tasks::rank, tasks::key))
        .select(TaskStateRow::as_select())
        .load(conn)
        .await?;
    let edges: Vec<(Uuid, Uuid)> = task_edges::table
        .inner_join(tasks::table.on(tasks::key.eq(task_edges::child_key)))
        .filter(tasks::compute_plan_key.eq(plan.0))
        .select((task_edges::child_key, task_edges::parent_key))
        .load(conn)
        .await?;
    let mut parents: std::collections::HashMap<Uuid, Vec<TaskKey>> =
        std::collections::HashMap::new();
    for (child, parent) in edges {
        parents.entry(child).or_default().push(TaskKey(parent));
    }
    rows.into_iter()
        .map(|row| {
            let parents = parents.remove(&row.key).unwrap_or_default();
            row.into_state().map(|state| (state, parents))
        })
        .collect()
}

/// The tasks of plan `plan`, optionally only those in `status`, by rank then key.
pub async fn list_plan_tasks(
    conn: &mut AsyncPgConnection,
    plan: PlanKey,
    status: Option<TaskStatus>,
) -> StoreResult<Vec<Task>> {
    let mut query = tasks::table
        .filter(tasks::compute_plan_key.eq(plan.0))
        .order((tasks::rank, tasks::key))
        .select(TaskRow::as_select())
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(tasks::status.eq(status.as_str()));
    }
    query
        .load(conn)
        .await?
        .into_iter()
        .map(TaskRow::into_model)
        .collect()
}

/// Which tasks a listing shows: those matching every filter given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks of this plan.
    pub compute_plan_key: Option<PlanKey>,
    /// Only tasks in one of these statuses; every status when empty.
    pub statuses: Vec<TaskStatus>,
    /// Only tasks run by workers of this organization.
    pub worker: Option<OrganizationId>,
    /// Only tasks run (or last run) by this worker process.
    pub worker_id: Option<WorkerId>,
    /// Only tasks of this function.
    pub function_key: Option<FunctionKey>,
    /// Only tasks owned by this organization (the owner of their plan).
    pub owner: Option<OrganizationId>,
}

fn filtered_tasks(filter: &TaskFilter) -> tasks::BoxedQuery<'_, Pg> {
    let mut query = tasks::table.into_boxed();
    if let Some(plan) = filter.compute_plan_key {
        query = query.filter(tasks::compute_plan_key.eq(plan.0));
    }
    if !filter.statuses.is_empty() {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        query = query.filter(tasks::status.eq_any(statuses));
    }
    if let Some(worker) = &filter.worker {
        query = query.filter(tasks::worker.eq(worker.as_str()));
    }
    if let Some(owner) = &filter.owner {
        query = query.filter(tasks::owner.eq(owner.as_str()));
    }
    if let Some(worker_id) = &filter.worker_id {
        query = query.filter(tasks::worker_id.eq(worker_id.as_str()));
    }
    if let Some(function) = filter.function_key {
        query = query.filter(tasks::function_key.eq(function.0));
    }
    query
}

/// The tasks matching `filter`, newest plans first and by rank then key within a plan: `limit`
/// rows after skipping `offset`, with how many match in all.
pub async fn list_tasks_page(
    conn: &mut AsyncPgConnection,
    filter: &TaskFilter,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Task>> {
    let total = filtered_tasks(filter).count().get_result(conn).await?;
    let rows = filtered_tasks(filter)
        .select(TaskRow::as_select())
        .order((
            tasks::creation_date.desc(),
            tasks::compute_plan_key,
            tasks::rank,
            tasks::key,
        ))
        .limit(limit)
        .offset(offset)
        .load(conn)
        .await?
        .into_iter()
        .map(TaskRow::into_model)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { rows, total })
}

/// The keys of the tasks that take an input from `parent`.
pub async fn find_children(
    conn: &mut AsyncPgConnection,
    parent: TaskKey,
) -> StoreResult<Vec<TaskKey>> {
    let keys: Vec<Uuid> = task_edges::table
        .filter(task_edges::parent_key.eq(parent.0))
        .order(task_edges::child_key)
        .select(task_edges::child_key)
        .load(conn)
        .await?;
    Ok(keys.into_iter().map(TaskKey).collect())
}

/// The edges from `parents` to their children, `(parent, child)`, in no particular order.
///
/// One table, so PostgreSQL plans it in microseconds: the event applier runs it for the tasks
/// every batch ends, to find their children in other plans (the children in the same plan are
/// in its memory), and a join of the children's tasks took a tenth of a millisecond to plan each
/// time.
pub async fn edges_from(
    mut conn: &AsyncPgConnection,
    parents: &[TaskKey],
) -> StoreResult<Vec<(TaskKey, TaskKey)>> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Uuid> = parents.iter().map(|k| k.0).collect();
    let rows: Vec<(Uuid, Uuid)> = task_edges::table
        .filter(task_edges::parent_key.eq_any(keys))
        .select((task_edges::parent_key, task_edges::child_key))
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(parent, child)| (TaskKey(parent), TaskKey(child)))
        .collect())
}

/// How a transaction holds the end locks of tasks (see [`lock_task_ends`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndLock {
    /// Held by the event applier while it commits tasks' ends and reads their children.
    Exclusive,
    /// Held by a submission while it reads its parents' statuses and stores their children.
    Shared,
}

impl EndLock {
    /// More tasks than this in one transaction take the lock over all ends, exclusive, rather
    /// than one lock each. PostgreSQL's lock table is shared and small (64 locks a connection
    /// by default), and a plan canceled whole ends all its tasks at once: the applier, which
    /// commits often, keeps to a few. A submission may take more, since the lock over all ends
    /// would make the applier wait for the whole of its storing.
    pub fn most_locks(self) -> usize {
        match self {
            EndLock::Exclusive => 32,
            EndLock::Shared => 256,
        }
    }
}

/// The advisory lock class of every task's end lock.
const TASK_END_LOCK_CLASS: i32 = 0x6261_7401;
/// The advisory lock class of the lock over all tasks' ends, taken before any task's.
const ALL_ENDS_LOCK_CLASS: i32 = 0x6261_7400;

/// The advisory lock `(class, key)` of `task`'s end. Tasks may share one (a key has 2^32
/// values): that only makes one wait for the other, never a wrong answer.
pub fn task_end_lock(task: TaskKey) -> (i32, i32) {
    let bytes = task.0.as_bytes();
    let key = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        ^ i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    (TASK_END_LOCK_CLASS, key)
}

/// Takes the end locks of `tasks` in `mode` until the transaction ends.
///
/// They order two things that would otherwise race: the event applier ending a task, and a
/// plan of another submission storing a child of it. The applier takes them exclusive before
/// it commits an end, and reads the ended tasks' children once it holds them; a submission
/// takes them shared before it reads the statuses of its parents in other plans, and holds them
/// until its children of those are stored. So either the submission reads the end, or the
/// applier reads the new children.
///
/// Every holder takes the lock over all ends first (shared, or exclusive for more than
/// [`EndLock::most_locks`] tasks, which then need no lock each), then the tasks' locks in
/// ascending order, and holds no other lock the others wait for: no deadlock is possible.
pub async fn lock_task_ends(
    mut conn: &AsyncPgConnection,
    tasks: &[TaskKey],
    mode: EndLock,
) -> StoreResult<()> {
    use diesel::sql_types::{Array, Bool, Integer};
    if tasks.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<i32> = tasks.iter().map(|task| task_end_lock(*task).1).collect();
    keys.sort_unstable();
    keys.dedup();
    let shared = mode == EndLock::Shared;
    // The lock over all ends is shared by every holder of tasks' locks.
    let (mut classes, mut shares) = (vec![ALL_ENDS_LOCK_CLASS], vec![true]);
    if keys.len() > mode.most_locks() {
        shares[0] = false;
        keys = vec![0];
    } else {
        keys.insert(0, 0);
        classes.extend(std::iter::repeat_n(TASK_END_LOCK_CLASS, keys.len() - 1));
        shares.extend(std::iter::repeat_n(shared, keys.len() - 1));
    }
    // In the arrays' order: a function scan yields them so, and the locks are taken row by row.
    Cached(
        diesel::sql_query(
            "SELECT CASE WHEN u.shared THEN pg_advisory_xact_lock_shared(u.class, u.key) \
             ELSE pg_advisory_xact_lock(u.class, u.key) END \
             FROM unnest($1, $2, $3) WITH ORDINALITY AS u(class, key, shared, n) ORDER BY u.n",
        )
        .bind::<Array<Integer>, _>(classes)
        .bind::<Array<Integer>, _>(keys)
        .bind::<Array<Bool>, _>(shares),
    )
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// The plan of each of `tasks` that exists, in no particular order.
pub async fn plans_of_tasks(
    mut conn: &AsyncPgConnection,
    tasks: &[TaskKey],
) -> StoreResult<Vec<(TaskKey, PlanKey)>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<Uuid> = tasks.iter().map(|k| k.0).collect();
    let rows: Vec<(Uuid, Uuid)> = tasks::table
        .filter(tasks::key.eq_any(keys))
        .select((tasks::key, tasks::compute_plan_key))
        .load(&mut conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(task, plan)| (TaskKey(task), PlanKey(plan)))
        .collect())
}

/// The keys of the tasks `child` takes inputs from.
pub async fn find_parents(
    conn: &mut AsyncPgConnection,
    child: TaskKey,
) -> StoreResult<Vec<TaskKey>> {
    let keys: Vec<Uuid> = task_edges::table
        .filter(task_edges::child_key.eq(child.0))
        .order(task_edges::parent_key)
        .select(task_edges::parent_key)
        .load(conn)
        .await?;
    Ok(keys.into_iter().map(TaskKey).collect())
}

/// Appends `changes` to the tasks' state-change histories.
pub async fn insert_state_changes(
    conn: &AsyncPgConnection,
    changes: &[TaskStateChange],
) -> StoreResult<()> {
    let rows = changes
        .iter()
        .map(NewStateChangeRow::from_model)
        .collect::<StoreResult<Vec<_>>>()?;
    insert_unnested!(conn, "task_state_changes", rows, [
        task_key: diesel::sql_types::Uuid,
        timestamp: diesel::sql_types::Timestamptz,
        status: diesel::sql_types::Text,
        reason: diesel::sql_types::Text,
        attempt: diesel::sql_types::Nullable<diesel::sql_types::Integer>,
    ])?;
    Ok(())
}

/// The state-change history of `task`, oldest first.
pub async fn list_state_changes(
    conn: &mut AsyncPgConnection,
    task: TaskKey,
) -> StoreResult<Vec<TaskStateChange>> {
    task_state_changes::table
        .filter(task_state_changes::task_key.eq(task.0))
        .order(task_state_changes::id)
        .select(StateChangeRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(StateChangeRow::into_model)
        .collect()
}

/// Adds ready tasks to the outbox, to be published in the order given; returns the rows as
/// stored (with their ids), so a writer can hand them to the relay.
pub async fn insert_outbox_rows(
    mut conn: &AsyncPgConnection,
    rows: &[NewOutboxRow],
) -> StoreResult<Vec<OutboxRow>> {
    use diesel::sql_types::{Array, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
    let mut stored = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(super::ROWS_PER_UNNEST) {
        let mut task_keys = Vec::with_capacity(chunk.len());
        let mut routing_keys = Vec::with_capacity(chunk.len());
        let mut payloads = Vec::with_capacity(chunk.len());
        let mut created = Vec::with_capacity(chunk.len());
        let mut available = Vec::with_capacity(chunk.len());
        let mut held = Vec::with_capacity(chunk.len());
        for row in chunk {
            task_keys.push(row.task_key);
            routing_keys.push(row.routing_key.as_str());
            payloads.push(&row.payload);
            created.push(row.created_at);
            available.push(row.available_at.filter(|_| !row.held));
            held.push(row.held);
        }
        // `WITH ORDINALITY … ORDER BY`: ids follow the order given.
        let mut inserted: Vec<OutboxRow> = Cached(
            diesel::sql_query(
                "INSERT INTO outbox \
                 (task_key, routing_key, payload, created_at, available_at, held) \
                 SELECT u.task_key, u.routing_key, u.payload, u.created_at, u.available_at, u.held \
                 FROM unnest($1, $2, $3, $4, $5, $6) WITH ORDINALITY \
                 AS u(task_key, routing_key, payload, created_at, available_at, held, n) \
                 ORDER BY u.n \
                 RETURNING id, task_key, routing_key, payload, created_at, available_at, held",
            )
            .bind::<Array<SqlUuid>, _>(task_keys)
            .bind::<Array<Text>, _>(routing_keys)
            .bind::<Array<Jsonb>, _>(payloads)
            .bind::<Array<Timestamptz>, _>(created)
            .bind::<Array<Nullable<Timestamptz>>, _>(available)
            .bind::<Array<Bool>, _>(held),
        )
        .load(&mut conn)
        .await?;
        // Publishing order is id order.
        inserted.sort_unstable_by_key(|row| row.id);
        stored.extend(inserted);
    }
    Ok(stored)
}

/// The oldest `limit` outbox rows available at `now` and not held, in publishing order.
pub async fn next_outbox_rows(
    conn: &mut AsyncPgConnection,
    now: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> StoreResult<Vec<OutboxRow>> {
    // `NOT held`, not `held = $1`: a prepared statement's generic plan can then use the index
    // of rows not held, and does not walk the held ones.
    Ok(outbox::table
        .filter(diesel::dsl::not(outbox::held))
        .filter(
            outbox::available_at
                .is_null()
                .or(outbox::available_at.le(now)),
        )
        .order(outbox::id)
        .limit(limit)
        .select(OutboxRow::as_select())
        .load(conn)
        .await?)
}

/// When the next outbox row that is not available yet (and not held) becomes available.
pub async fn next_outbox_availability(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Option<chrono::DateTime<chrono::Utc>>> {
    Ok(outbox::table
        .filter(diesel::dsl::not(outbox::held))
        .filter(outbox::available_at.is_not_null())
        .select(diesel::dsl::min(outbox::available_at))
        .first::<Option<chrono::DateTime<chrono::Utc>>>(conn)
        .await?)
}

/// Deletes the outbox rows `ids`, once RabbitMQ confirmed them; returns how many were deleted.
pub async fn delete_outbox_rows(conn: &mut AsyncPgConnection, ids: &[i64]) -> StoreResult<usize> {
    Ok(diesel::delete(outbox::table.filter(outbox::id.eq_any(ids)))
        .execute(conn)
        .await?)
}

/// Holds the outbox rows `ids` back from their queue (see the relay's `publish_ahead`): polling
/// no longer finds them, [`release_outbox_rows`] does. Returns how many were still there.
pub async fn hold_outbox_rows(conn: &mut AsyncPgConnection, ids: &[i64]) -> StoreResult<usize> {
    Ok(diesel::update(outbox::table.filter(outbox::id.eq_any(ids)))
        .set((
            outbox::held.eq(true),
            outbox::available_at.eq(None::<chrono::DateTime<chrono::Utc>>),
        ))
        .execute(conn)
        .await?)
}

/// The routing keys that have held outbox rows, each with its oldest held row's payload (a
/// `task.ready` message, which names the queue's requirement set).
///
/// It skips from one routing key to the next through the index of held rows, so it reads one
/// row a queue however many are held (a `DISTINCT ON` read them all: 8 ms for 20,000).
pub async fn held_outbox_queues(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Vec<(String, serde_json::Value)>> {
    #[derive(QueryableByName)]
    struct HeldQueue {
        #[diesel(sql_type = diesel::sql_types::Text)]
        routing_key: String,
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        payload: serde_json::Value,
    }
    let queues: Vec<HeldQueue> = Cached(diesel::sql_query(
        "WITH RECURSIVE keys(routing_key) AS ( \
             (SELECT routing_key FROM outbox WHERE held ORDER BY routing_key LIMIT 1) \
             UNION ALL \
             SELECT (SELECT o.routing_key FROM outbox o \
                     WHERE o.held AND o.routing_key > k.routing_key \
                     ORDER BY o.routing_key LIMIT 1) \
             FROM keys k WHERE k.routing_key IS NOT NULL) \
         SELECT k.routing_key, (SELECT o.payload FROM outbox o \
                                WHERE o.held AND o.routing_key = k.routing_key \
                                ORDER BY o.id LIMIT 1) AS payload \
         FROM keys k WHERE k.routing_key IS NOT NULL",
    ))
    .load(conn)
    .await?;
    Ok(queues
        .into_iter()
        .map(|queue| (queue.routing_key, queue.payload))
        .collect())
}

/// Releases the oldest `limit` held outbox rows of `routing_key`, to be published now: they
/// are stored as available `hidden_until` (the caller publishes them itself meanwhile, as with
/// a hand-over). Rows another relay is releasing at the same time are skipped. Returns them in
/// publishing order.
pub async fn release_outbox_rows(
    conn: &mut AsyncPgConnection,
    routing_key: &str,
    limit: i64,
    hidden_until: chrono::DateTime<chrono::Utc>,
) -> StoreResult<Vec<OutboxRow>> {
    use diesel::sql_types::{BigInt, Text, Timestamptz};
    let mut released: Vec<OutboxRow> = Cached(
        diesel::sql_query(
            "UPDATE outbox SET held = false, available_at = $3 WHERE id IN \
             (SELECT id FROM outbox WHERE held AND routing_key = $1 ORDER BY id LIMIT $2 \
              FOR UPDATE SKIP LOCKED) \
             RETURNING id, task_key, routing_key, payload, created_at, available_at, held",
        )
        .bind::<Text, _>(routing_key)
        .bind::<BigInt, _>(limit)
        .bind::<Timestamptz, _>(hidden_until),
    )
    .load(conn)
    .await?;
    released.sort_unstable_by_key(|row| row.id);
    Ok(released)
}

/// Deletes the held outbox rows of `tasks`, which were granted without their queue: their
/// messages are never published. Rows not held are left to the relay, which may be publishing
/// them already.
pub async fn delete_held_outbox_rows(
    mut conn: &AsyncPgConnection,
    tasks: &[TaskKey],
) -> StoreResult<usize> {
    use diesel::sql_types::{Array, Uuid as SqlUuid};
    if tasks.is_empty() {
        return Ok(0);
    }
    let keys: Vec<Uuid> = tasks.iter().map(|task| task.0).collect();
    Ok(Cached(
        diesel::sql_query("DELETE FROM outbox WHERE held AND task_key = ANY($1)")
            .bind::<Array<SqlUuid>, _>(keys),
    )
    .execute(&mut conn)
    .await?)
}
