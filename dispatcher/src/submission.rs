//! Submissions: load what a plan references, validate it, and store it in one transaction:
//! the plan with its counters, its tasks with their initial statuses and ranks, one state-change
//! row per task, and an outbox row for every task that is ready (TODO).
//!
//! Invalid input is rejected whole with every problem found; nothing is half-stored.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::SubsecRound;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use models::submission::{NewTask, PlanSubmission};
use models::validation::ValidationError;
use models::validation::plan::{
    Limits, StoredTask, SubmissionContext, ValidatedTask, validate_plan,
};
use models::wire::{SubmissionReply, TaskAssigned, TaskReady};
use models::{
    ComputePlan, DataSample, DataSampleKey, Dataset, DatasetKey, Function, FunctionKey, InputRef,
    Model, ModelKey, OrganizationId, PlanCounters, Task, TaskKey, TaskSource, TaskStateChange,
    TaskStatus, Timestamp, UserId, WorkerId,
};

use crate::core::{self, ClaimDecision, Effect, Event, PlanState};
use crate::service::StartedPlan;
use crate::service::assignment::{self, Functions, Pending};
use crate::service::offers::Offers;
use crate::store::rows::{NewOutboxRow, OutboxRow, SubmissionRow, TaskState};
use crate::store::schema;
use crate::store::{StoreError, StoreResult, catalog, execution, plans, submissions, tasks};

/// Why a submission was not stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    /// The submission breaks the rules; every problem is listed, nothing was stored.
    #[error("invalid submission: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    /// A plan with this key exists already.
    #[error("compute plan {0} already exists")]
    PlanExists(models::PlanKey),
    /// The database failed; nothing was stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything stored that a batch of tasks may reference, loaded before validation.
#[derive(Debug, Default)]
pub struct KnownAssets {
    /// Registered organizations.
    pub organizations: BTreeSet<OrganizationId>,
    /// Functions the tasks (and their stored parents) run.
    pub functions: HashMap<FunctionKey, Function>,
    /// Data managers the tasks name.
    pub datasets: HashMap<DatasetKey, Dataset>,
    /// Data samples the tasks name.
    pub data_samples: HashMap<DataSampleKey, DataSample>,
    /// Models the tasks name.
    pub models: HashMap<ModelKey, Model>,
    /// Stored tasks the batch names as parents.
    pub stored_tasks: HashMap<TaskKey, StoredTask>,
}

impl KnownAssets {
    /// The validation context over these assets, for a submission by `owner`.
    pub fn context<'a>(
        &'a self,
        owner: &'a OrganizationId,
        limits: &'a Limits,
    ) -> SubmissionContext<'a> {
        SubmissionContext {
            owner,
            organizations: &self.organizations,
            functions: &self.functions,
            datasets: &self.datasets,
            data_samples: &self.data_samples,
            models: &self.models,
            stored_tasks: &self.stored_tasks,
            limits,
        }
    }
}

/// Loads what `batch` references: its functions, the assets its inputs name (looked up as data
/// managers, samples and models at once, since the kind comes from the function), and the
/// stored parents outside the batch with their functions.
pub async fn load_known_assets(
    conn: &AsyncPgConnection,
    batch: &[NewTask],
) -> StoreResult<KnownAssets> {
    let in_batch: BTreeSet<TaskKey> = batch.iter().map(|task| task.key).collect();
    let mut asset_keys: BTreeSet<Uuid> = BTreeSet::new();
    let mut parent_keys: BTreeSet<TaskKey> = BTreeSet::new();
    for task in batch {
        for input in &task.inputs {
            match &input.source {
                InputRef::Asset { asset_key } => {
                    asset_keys.insert(*asset_key);
                }
                InputRef::ParentOutput {
                    parent_task_key, ..
                } if !in_batch.contains(parent_task_key) => {
                    parent_keys.insert(*parent_task_key);
                }
                InputRef::ParentOutput { .. } => {}
            }
        }
    }
    let asset_keys: Vec<Uuid> = asset_keys.into_iter().collect();
    let parent_keys: Vec<TaskKey> = parent_keys.into_iter().collect();
    let mut function_keys: BTreeSet<FunctionKey> =
        batch.iter().map(|task| task.function_key).collect();
    let batch_functions: Vec<FunctionKey> = function_keys.iter().copied().collect();
    // One query per kind, whatever the number of assets: the kind comes from the function.
    let dataset_keys: Vec<DatasetKey> = asset_keys.iter().map(|k| DatasetKey(*k)).collect();
    let sample_keys: Vec<DataSampleKey> = asset_keys.iter().map(|k| DataSampleKey(*k)).collect();
    let model_keys: Vec<ModelKey> = asset_keys.iter().map(|k| ModelKey(*k)).collect();
    // Pipelined: the lookups are sent together, one round trip in all.
    let shared: &AsyncPgConnection = conn;
    let (parents, organizations, functions, datasets, samples, models) = futures::try_join!(
        unless_empty(&parent_keys, |keys| tasks::find_tasks(shared, keys)),
        catalog::list_organizations(shared, None),
        catalog::find_functions(shared, &batch_functions),
        unless_empty(&dataset_keys, |keys| catalog::find_datasets(shared, keys)),
        unless_empty(&sample_keys, |keys| catalog::find_data_samples(
            shared, keys
        )),
        unless_empty(&model_keys, |keys| execution::find_models(shared, keys)),
    )?;
    // Then what the stored parents need: their functions, and whether they have disabled
    // models.
    let parent_functions: Vec<FunctionKey> = parents
        .iter()
        .map(|task| task.function_key)
        .filter(|key| function_keys.insert(*key))
        .collect();
    let parent_uuids: Vec<Uuid> = parents.iter().map(|task| task.key.0).collect();
    let (parent_functions, disabled) = futures::try_join!(
        unless_empty(&parent_functions, |keys| catalog::find_functions(
            shared, keys
        )),
        unless_empty(&parent_uuids, |keys| async move {
            let mut conn = shared;
            Ok(schema::models::table
                .filter(schema::models::compute_task_key.eq_any(keys))
                .filter(schema::models::checksum.is_null())
                .select(schema::models::compute_task_key)
                .load::<Uuid>(&mut conn)
                .await?)
        }),
    )?;
    let disabled: BTreeSet<Uuid> = disabled.into_iter().collect();

    let mut known = KnownAssets {
        organizations: organizations
            .into_iter()
            .map(|organization| organization.id)
            .collect(),
        ..KnownAssets::default()
    };
    for function in functions.into_iter().chain(parent_functions) {
        known.functions.insert(function.key, function);
    }
    for dataset in datasets {
        known.datasets.insert(dataset.key, dataset);
    }
    for sample in samples {
        known.data_samples.insert(sample.key, sample);
    }
    for model in models {
        known.models.insert(model.key, model);
    }
    for parent in parents {
        known.stored_tasks.insert(
            parent.key,
            StoredTask {
                status: parent.status,
                function_key: parent.function_key,
                rank: parent.rank,
                worker: parent.worker,
                outputs: parent.outputs,
                logs_permission: parent.logs_permission,
                has_disabled_models: disabled.contains(&parent.key.0),
            },
        );
    }
    Ok(known)
}

/// `lookup(keys)`, or nothing without a query when there are no keys.
async fn unless_empty<'k, K, T, F>(
    keys: &'k [K],
    lookup: impl FnOnce(&'k [K]) -> F,
) -> StoreResult<Vec<T>>
where
    F: Future<Output = StoreResult<Vec<T>>>,
{
    if keys.is_empty() {
        Ok(Vec::new())
    } else {
        lookup(keys).await
    }
}

/// The body of the outbox row that announces a ready task: the `task.ready` wire message the
/// outbox relay publishes.
pub fn task_ready_payload(task: &Task) -> Result<serde_json::Value, StoreError> {
    let message = TaskReady {
        task_key: task.key,
        compute_plan_key: task.compute_plan_key,
        function_key: task.function_key,
        requirements: task.requirements.clone(),
        attempt: task.attempt_count.checked_add(1).map(models::Attempt),
    };
    serde_json::to_value(&message).map_err(|error| StoreError::Encode {
        what: "task.ready message",
        reason: error.to_string(),
    })
}

/// The task stored for `validated`, submitted by `owner` (and `creator`) into plan `plan` at
/// `now`.
pub(crate) fn new_task(
    validated: ValidatedTask<'_>,
    plan: &ComputePlan,
    creator: Option<&UserId>,
    now: Timestamp,
) -> Task {
    let submitted = validated.task;
    Task {
        key: submitted.key,
        compute_plan_key: plan.key,
        function_key: submitted.function_key,
        name: submitted.name.clone(),
        owner: plan.owner.clone(),
        worker: validated.worker.clone(),
        creator: creator.cloned(),
        source: TaskSource::User {
            user: creator.cloned(),
        },
        rank: validated.rank,
        tag: submitted.tag.clone(),
        metadata: submitted.metadata.clone(),
        inputs: submitted.inputs.clone(),
        outputs: validated.outputs,
        parameters: submitted.parameters.clone(),
        requirements: validated.requirements,
        status: validated.status,
        waiting_reason: validated.waiting_reason,
        error_type: None,
        error_message: None,
        logs_address: None,
        logs_permission: validated.logs_permission,
        cancel_requested: false,
        abort_requested: false,
        attempt_count: 0,
        lease: None,
        not_before: None,
        worker_id: None,
        device_id: None,
        input_type: submitted.input_type.clone(),
        input: submitted.input.clone(),
        output: serde_json::Value::Null,
        data: serde_json::json!({}),
        steps: Vec::new(),
        creation_date: now,
        update_date: now,
        start_date: None,
        end_date: (validated.status.is_terminal()).then_some(now),
    }
}

/// A submission message to remember with the answer it got, so that a resubmission is
/// recognised and gets the same answer.
#[derive(Clone, Debug)]
pub struct SubmissionRecord {
    /// The message's id; without one, the content identifies the request (`digest:<digest>`).
    pub message_id: String,
    /// SHA-256 of the submitted content, hex.
    pub digest: String,
}

impl SubmissionRecord {
    /// The record of `message`, sent with id `message_id` (possibly empty).
    pub fn of<T: serde::Serialize>(message: &T, message_id: &str) -> Result<Self, StoreError> {
        use sha2::Digest;
        let body = serde_json::to_vec(message).map_err(|error| StoreError::Encode {
            what: "submission digest",
            reason: error.to_string(),
        })?;
        let digest = hex::encode(sha2::Sha256::digest(&body));
        let message_id = if message_id.is_empty() {
            format!("digest:{digest}")
        } else {
            message_id.to_owned()
        };
        Ok(SubmissionRecord { message_id, digest })
    }

    /// The row recording `reply` to this request, about plan `plan` if it named one.
    pub fn row<R: serde::Serialize>(
        &self,
        plan: Option<models::PlanKey>,
        reply: &R,
        now: Timestamp,
    ) -> Result<SubmissionRow, StoreError> {
        Ok(SubmissionRow {
            message_id: self.message_id.clone(),
            compute_plan_key: plan.map(|key| key.0),
            digest: self.digest.clone(),
            reply: serde_json::to_value(reply).map_err(|error| StoreError::Encode {
                what: "submission reply",
                reason: error.to_string(),
            })?,
            creation_date: now,
        })
    }
}

/// The error word of a refusal for a message id already used by another request.
pub const MESSAGE_ID_REUSED: &str = "message_id_reused";

/// Why `record` cannot be answered with the reply recorded in `row`, found by its message
/// id: `None` when it is the same request again; otherwise the message id was reused for
/// another request (another kind, or another body), which is refused rather than answered
/// with someone else's reply.
pub fn reused_message_id(
    row: &SubmissionRow,
    record: &SubmissionRecord,
) -> Option<models::wire::ErrorDetail> {
    (row.digest != record.digest).then(|| models::wire::ErrorDetail {
        path: "message_id".to_owned(),
        message: format!(
            "message id `{}` was already used for a different request: send this one with a new id",
            record.message_id
        ),
    })
}

/// The reply recorded in `row`.
pub fn recorded_reply<R: serde::de::DeserializeOwned>(row: SubmissionRow) -> Result<R, StoreError> {
    serde_json::from_value(row.reply).map_err(|error| StoreError::Corrupt {
        table: "submissions",
        key: row.message_id,
        reason: error.to_string(),
    })
}

/// The reply that accepts `plan`.
pub fn accepted_reply(plan: &ComputePlan) -> SubmissionReply {
    SubmissionReply::Accepted {
        compute_plan_key: plan.key,
        task_count: plan.counters.task_count,
        status: plan.status,
    }
}

/// Validates `submission` by `owner` against what is stored and, if it is valid, stores it in
/// one transaction, with `record` of the message when given. Returns the stored plan and its
/// tasks in topological order. Its ready tasks' outbox rows are for a relay to find by polling.
pub async fn submit_plan(
    conn: &mut AsyncPgConnection,
    submission: &PlanSubmission,
    owner: &OrganizationId,
    creator: Option<&UserId>,
    now: Timestamp,
    record: Option<&SubmissionRecord>,
) -> Result<(ComputePlan, Vec<Task>), SubmissionError> {
    let (plan, tasks, _, _) =
        store_plan(conn, submission, owner, creator, now, record, None, None).await?;
    analyze_after(conn, &plan).await;
    Ok((plan, tasks))
}

/// Like [`submit_plan`], for a caller that hands the ready tasks' outbox rows, returned, to its
/// own relay once the plan is stored (`Context::hand_over`): they are stored hidden from polling
/// for [`crate::service::outbox_relay::HANDOVER_GRACE`]. Unlike [`submit_plan`], it leaves
/// refreshing the planner's statistics after a large plan to the caller ([`analyze_after`]),
/// so that the relay need not wait for it.
pub async fn submit_plan_handing_over(
    conn: &mut AsyncPgConnection,
    submission: &PlanSubmission,
    owner: &OrganizationId,
    creator: Option<&UserId>,
    now: Timestamp,
    record: Option<&SubmissionRecord>,
) -> Result<(ComputePlan, Vec<OutboxRow>), SubmissionError> {
    let (plan, _, rows, _) =
        store_plan(conn, submission, owner, creator, now, record, Some(0), None).await?;
    Ok((plan, rows))
}

/// Like [`submit_plan_handing_over`], starting ready tasks at once on the idle workers `starts`
/// offers (`DispatcherConfig::eager_starts`): each is granted, as a claim would be, in the
/// transaction that stores the plan, and gets no outbox row. The caller sends what
/// [`Started`] holds once the plan is stored. A queue's rows beyond the relay's
/// `publish_ahead` (0: none) are stored held, as the relay would hold them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn submit_plan_starting(
    conn: &mut AsyncPgConnection,
    submission: &PlanSubmission,
    owner: &OrganizationId,
    creator: Option<&UserId>,
    now: Timestamp,
    record: Option<&SubmissionRecord>,
    starts: &mut Starts<'_>,
    publish_ahead: usize,
) -> Result<(ComputePlan, Vec<OutboxRow>, Started), SubmissionError> {
    let (plan, _, rows, started) = store_plan(
        conn,
        submission,
        owner,
        creator,
        now,
        record,
        Some(publish_ahead),
        Some(starts),
    )
    .await?;
    Ok((plan, rows, started))
}

/// What starting a new plan's ready tasks at once takes (see [`submit_plan_starting`]).
pub(crate) struct Starts<'a> {
    /// The idle workers' free slots.
    pub(crate) offers: &'a Offers,
    /// The lease of a granted attempt.
    pub(crate) lease_duration: chrono::Duration,
    /// Functions read for assignments, kept by the caller across submissions.
    pub(crate) functions: &'a mut Functions,
}

/// The tasks a submission started at once.
#[derive(Default)]
pub(crate) struct Started {
    /// Each granted task, for its worker.
    pub(crate) assigned: Vec<(WorkerId, TaskAssigned)>,
    /// The plan as the core holds it after the grants, when there were any.
    pub(crate) plan: Option<StartedPlan>,
}

/// Grants ready tasks of the new `plan` to idle workers: updates `plan`, `new_tasks` and their
/// `history` as the grants change them. A task the core refuses, or whose assignment cannot be
/// read, is left ready, for its queue. A plan whose tasks have parents in other plans is left
/// to the usual path (the event applier reads what it needs of those).
async fn start_at_once(
    conn: &mut AsyncPgConnection,
    starts: &mut Starts<'_>,
    (plan, new_tasks, history): (&mut ComputePlan, &mut [Task], &mut Vec<TaskStateChange>),
    known_functions: &HashMap<FunctionKey, Function>,
    now: Timestamp,
) -> Result<Started, StoreError> {
    let position: HashMap<TaskKey, usize> = new_tasks
        .iter()
        .enumerate()
        .map(|(at, task)| (task.key, at))
        .collect();
    let parents: Vec<Vec<TaskKey>> = new_tasks.iter().map(Task::parent_keys).collect();
    if parents
        .iter()
        .flatten()
        .any(|parent| !position.contains_key(parent))
    {
        return Ok(Started::default());
    }
    let offered_at = std::time::Instant::now();
    let mut chosen = Vec::new();
    for task in new_tasks
        .iter()
        .filter(|task| task.status == TaskStatus::Todo)
    {
        if starts.offers.is_empty() {
            break;
        }
        if let Some(worker) = starts.offers.take(&task.requirements, offered_at) {
            chosen.push((task.key, worker));
        }
    }
    let mut prepared = Vec::with_capacity(chosen.len());
    for (key, worker) in chosen {
        let task = new_tasks[position[&key]].clone();
        let nothing = Pending::default();
        match assignment::prepare(conn, starts.functions, key, Some(task), &nothing, None).await? {
            Ok(assignment) => prepared.push((key, worker, assignment)),
            // Its claim will meet the same problem, and fail it as usual.
            Err(problem) => {
                tracing::debug!(task.key = %key, "task {key} not started at once: {problem}")
            }
        }
    }
    if prepared.is_empty() {
        return Ok(Started::default());
    }
    let nodes = new_tasks
        .iter()
        .zip(parents)
        .map(|(task, parents)| {
            let retry = known_functions
                .get(&task.function_key)
                .map(|function| function.retry.clone())
                .unwrap_or_default();
            crate::service::event_applier::to_node(TaskState::from(task), parents, retry)
        })
        .collect();
    let mut state = PlanState::new(plan.clone(), nodes, HashSet::new());
    let mut assigned = Vec::with_capacity(prepared.len());
    for (key, worker, assignment) in prepared {
        let event = Event::ClaimRequested {
            task: key,
            worker: worker.clone(),
            lease_token: Uuid::new_v4(),
            lease_duration: starts.lease_duration,
        };
        for effect in core::apply(&mut state, event, now, 0.0) {
            match effect {
                Effect::TaskChanged {
                    task: node,
                    reason,
                    status_changed,
                } => {
                    if status_changed {
                        history.push(crate::service::event_applier::state_change(
                            &node, &reason, now,
                        ));
                    }
                    node.write_to(&mut new_tasks[position[&node.key]]);
                }
                Effect::PlanChanged { plan: changed } => *plan = changed,
                Effect::ReplyClaim {
                    reply: ClaimDecision::Granted(grant),
                } => assigned.push((
                    worker.clone(),
                    TaskAssigned {
                        after: None,
                        speculative: false,
                        grant,
                        assignment: Box::new(assignment.clone()),
                    },
                )),
                _ => {}
            }
        }
    }
    let requirements = new_tasks
        .iter()
        .map(|task| (task.key, task.requirements.clone()))
        .collect();
    Ok(Started {
        assigned,
        plan: Some(StartedPlan {
            state,
            requirements,
        }),
    })
}

/// Refreshes the planner's statistics of the tasks tables after `plan` was stored, if it is
/// large enough to need it (`stats::refresh_task_statistics`). A failure is logged, not
/// returned: it is not the submission's business, and autovacuum analyzes later.
pub async fn analyze_after(conn: &mut AsyncPgConnection, plan: &ComputePlan) {
    let added = plan.counters.task_count as usize;
    match crate::store::stats::refresh_task_statistics(conn, added).await {
        Ok(true) => tracing::debug!("analyzed tasks after storing plan {}", plan.key),
        Ok(false) => {}
        Err(error) => tracing::warn!("analyzing tasks after plan {}: {error}", plan.key),
    }
}

/// How many times a submission is validated again because a parent in another plan changed
/// status between its read and its lock; each time, a parent has moved on.
const PARENT_READS: usize = 16;

/// A stored plan: the plan, its tasks, the outbox rows to hand over, and the tasks started at
/// once.
type Stored = (ComputePlan, Vec<Task>, Vec<OutboxRow>, Started);

/// [`submit_plan`], its outbox rows handed over to a relay publishing `handing_over` of a
/// queue's rows ahead (`Some`: see [`submit_plan_starting`]) or left to polling (`None`), its
/// ready tasks started at once on idle workers when `starts` is given.
#[allow(clippy::too_many_arguments)]
async fn store_plan(
    conn: &mut AsyncPgConnection,
    submission: &PlanSubmission,
    owner: &OrganizationId,
    creator: Option<&UserId>,
    now: Timestamp,
    record: Option<&SubmissionRecord>,
    handing_over: Option<usize>,
    mut starts: Option<&mut Starts<'_>>,
) -> Result<Stored, SubmissionError> {
    for _ in 0..PARENT_READS {
        let starts = starts.as_deref_mut();
        let args = (submission, owner, creator, now, record);
        if let Some(stored) = store_plan_once(conn, args, handing_over, starts).await? {
            return Ok(stored);
        }
    }
    Err(StoreError::Conflict(format!(
        "the parents of plan {} in other plans changed status {PARENT_READS} times while it \
         was being stored",
        submission.key
    ))
    .into())
}

/// One try of [`store_plan`]: `None` when a parent in another plan changed status since it was
/// read, and nothing was stored.
async fn store_plan_once(
    conn: &mut AsyncPgConnection,
    (submission, owner, creator, now, record): (
        &PlanSubmission,
        &OrganizationId,
        Option<&UserId>,
        Timestamp,
        Option<&SubmissionRecord>,
    ),
    handing_over: Option<usize>,
    starts: Option<&mut Starts<'_>>,
) -> Result<Option<Stored>, SubmissionError> {
    // PostgreSQL keeps microseconds: return exactly what is stored.
    let now = now.trunc_subsecs(6);
    let started = std::time::Instant::now();
    // Pipelined: whether the plan exists, and what it references.
    let (existing, known) = futures::try_join!(
        plans::find_plan(conn, submission.key),
        load_known_assets(conn, &submission.tasks),
    )?;
    if existing.is_some() {
        return Err(SubmissionError::PlanExists(submission.key));
    }
    let limits = Limits::DEFAULT;
    let validated = validate_plan(submission, &known.context(owner, &limits))
        .map_err(SubmissionError::Invalid)?;
    tracing::debug!(
        duration_ms = started.elapsed().as_millis() as u64,
        "validated {} tasks",
        validated.len()
    );

    let mut plan = ComputePlan {
        key: submission.key,
        project: submission.project.clone(),
        name: submission.name.clone(),
        tag: submission.tag.clone(),
        owner: owner.clone(),
        creator: creator.cloned(),
        metadata: submission.metadata.clone(),
        counters: PlanCounters::default(),
        status: PlanCounters::default().status(None, None),
        failed_task_key: None,
        creation_date: now,
        start_date: None,
        end_date: None,
        failure_date: None,
        cancelation_date: None,
    };
    let mut new_tasks: Vec<Task> = validated
        .into_iter()
        .map(|validated| new_task(validated, &plan, creator, now))
        .collect();
    for task in &new_tasks {
        plan.counters.add(task.status);
    }
    plan.status = plan.counters.status(None, None);
    if plan.counters.active_count() == 0 && plan.counters.task_count > 0 {
        plan.end_date = Some(now);
    }

    let mut history: Vec<TaskStateChange> = new_tasks
        .iter()
        .map(|task| TaskStateChange {
            task_key: task.key,
            timestamp: now,
            status: task.status,
            reason: match task.status {
                TaskStatus::Canceled => "registered with a failed or canceled parent".to_owned(),
                _ => "registered".to_owned(),
            },
            attempt: None,
        })
        .collect();
    // After the registration rows: a task started at once is registered, then DOING.
    let started = match starts {
        Some(starts) if !starts.offers.is_empty() => {
            let changed = (&mut plan, new_tasks.as_mut_slice(), &mut history);
            start_at_once(conn, starts, changed, &known.functions, now).await?
        }
        _ => Started::default(),
    };
    let mut outbox: Vec<NewOutboxRow> = new_tasks
        .iter()
        .filter(|task| task.status == TaskStatus::Todo)
        .map(|task| {
            Ok(NewOutboxRow {
                task_key: task.key.0,
                routing_key: task.requirements.routing_key(),
                payload: task_ready_payload(task)?,
                created_at: now,
                available_at: handing_over
                    .is_some()
                    .then(|| now + crate::service::outbox_relay::HANDOVER_GRACE),
                held: false,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    if let Some(publish_ahead) = handing_over {
        // Stored held rather than held by the relay once stored: one write of each row.
        crate::service::outbox_relay::hold_beyond_window(&mut outbox, publish_ahead);
    }

    let stored_plan = plan.clone();
    let submission_row = record
        .map(|record| record.row(Some(plan.key), &accepted_reply(&plan), now))
        .transpose()?;
    // Parents in other plans, with the statuses the tasks were validated against.
    let parents: Vec<(TaskKey, TaskStatus)> = known
        .stored_tasks
        .iter()
        .map(|(key, parent)| (*key, parent.status))
        .collect();
    let result = conn
        .transaction(async |conn| {
            // Before anything else: while these are held, the event applier cannot end the
            // parents, and once it has, it sees the children (`tasks::lock_task_ends`).
            if !parents.is_empty() {
                let keys: Vec<TaskKey> = parents.iter().map(|(key, _)| *key).collect();
                tasks::lock_task_ends(conn, &keys, tasks::EndLock::Shared).await?;
                let current: HashMap<TaskKey, TaskStatus> = tasks::find_tasks(conn, &keys)
                    .await?
                    .into_iter()
                    .map(|task| (task.key, task.status))
                    .collect();
                if let Some((key, _)) = parents
                    .iter()
                    .find(|(key, status)| current.get(key) != Some(status))
                {
                    tracing::debug!(
                        "parent task {key} of plan {} changed status: validating again",
                        plan.key
                    );
                    return Ok(None);
                }
            }
            let started = std::time::Instant::now();
            // Pipelined: PostgreSQL runs each statement after those sent before it, so the
            // tasks' checks find the plan, and the history's and the outbox's the tasks. A
            // large plan's tasks take several statements, the later ones sent as the earlier
            // ones finish: its history and outbox wait for all of them, in a second round.
            let shared: &AsyncPgConnection = conn;
            let rest = async {
                futures::try_join!(
                    tasks::insert_state_changes(shared, &history),
                    tasks::insert_outbox_rows(shared, &outbox),
                    async {
                        match &submission_row {
                            Some(row) => submissions::insert_submission(shared, row).await,
                            None => Ok(()),
                        }
                    },
                )
            };
            let first = futures::future::try_join(
                plans::insert_plan(shared, &stored_plan),
                tasks::insert_tasks(shared, &new_tasks),
            );
            let (_, outbox, _) = if new_tasks.len() <= crate::store::ROWS_PER_UNNEST {
                futures::try_join!(first, rest)?.1
            } else {
                first.await?;
                rest.await?
            };
            tracing::debug!(
                duration_ms = started.elapsed().as_millis() as u64,
                "stored {} tasks",
                new_tasks.len()
            );
            Ok::<_, StoreError>(Some((new_tasks, outbox)))
        })
        .await;
    match result {
        Ok(Some((stored_tasks, outbox))) => Ok(Some((plan, stored_tasks, outbox, started))),
        Ok(None) => Ok(None),
        // Another submission of the same plan won the race.
        Err(StoreError::Duplicate {
            constraint: Some(constraint),
            ..
        }) if constraint == "compute_plans_pkey" => Err(SubmissionError::PlanExists(plan.key)),
        Err(error) => Err(error.into()),
    }
}
