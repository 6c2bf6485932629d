//! The event applier: consumes `baton.dispatcher` (a single active consumer, so one dispatcher
//! applies events at a time while standbys wait), feeds claims, reports, heartbeats, logs and
//! measurements to the pure `core` in batches, writes every batch's effects in one transaction,
//! and only after the commit answers claims, sends orders and acks the batch.
//!
//! Plans live in memory while they are active, rebuilt from PostgreSQL when first needed (and,
//! on start, every plan with a running task, so that leases keep being watched after a
//! restart). A failed commit forgets the plans it touched, which are rebuilt from the database,
//! and requeues the batch: the database, not memory, is the truth.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::queued::QueuedTasks;
use broker::consumer::MessageSet;
use broker::envelope::{DecodeError, Envelope};
use broker::topology::{self, CONTROL_EXCHANGE, DISPATCHER_QUEUE};
use broker::{Consumer, Delivery, Meta, Publisher};
use models::wire::{
    AddTasks, BuildClaim, BuildClaimReply, BuildReport, CancelReply, CancelRequest, ClaimBatch,
    ClaimBatchReply, ClaimReply, ClaimRequest, ControlOrder, DispatcherPing, ErrorDetail, Grant,
    LogBatch, LogRecord, MeasurementBatch, RegistrationReply, ReportedOutcome, StatusBatch,
    SubmissionReply, TaskAssigned, TaskAssignedBatch, TaskReady, TaskStatusReport, WireMessage,
    WorkerHeartbeat, WorkerRegistration,
};
use models::{
    Attempt, LogLine, Measurement, PlanKey, RequirementSet, RetryPolicy, Task, TaskErrorType,
    TaskKey, TaskStateChange, TaskStatus, Timestamp, WaitingReason, WorkerId,
};

use models::access::{Action, Principal};

use super::assignment::{self, Functions, Registered};
use super::builds;
use super::outbox_relay;
use super::{Context, StartedPlan};
use crate::auth;
use crate::core::{self, ClaimDecision, Effect, Event, Order, Outcome, PlanState, TaskNode};
use crate::store::rows::{NewOutboxRow, OutboxRow, TaskState};
use crate::store::tasks::{EndLock, TaskStateUpdate};
use crate::store::{self, StoreError, catalog, execution, leadership, plans, tasks, workers};

/// Deliveries applied in one transaction at most.
const BATCH: usize = 256;

/// Unacked deliveries RabbitMQ hands over at once: two batches.
const PREFETCH: u16 = 512;

/// How often leases and retry backoffs are checked.
const TICK: Duration = Duration::from_millis(500);

/// How often builds are looked after: published, lapsed, their end propagated.
const BUILD_SWEEP: Duration = Duration::from_secs(1);

/// How long to wait after a failed commit before taking the requeued batch again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How often a dispatcher that does not lead asks for the lead (`DispatcherPing`): the longest a
/// standby given `baton.dispatcher` waits to take the lead when no other event arrives.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// What arrives on `baton.dispatcher`.
#[derive(Debug)]
pub enum Incoming {
    /// A worker asks to run a task.
    Claim(ClaimRequest),
    /// A worker asks to run several tasks.
    Claims(ClaimBatch),
    /// A worker reports the end of an attempt.
    Status(TaskStatusReport),
    /// A worker reports the end of several attempts.
    Statuses(StatusBatch),
    /// A worker is alive and renews its leases.
    Heartbeat(WorkerHeartbeat),
    /// Log lines of a running attempt.
    Logs(LogBatch),
    /// Measurements of a running attempt.
    Measurements(MeasurementBatch),
    /// A worker registers.
    Register(WorkerRegistration),
    /// An owner or operator cancels a plan or a task.
    Cancel(CancelRequest),
    /// An owner adds tasks to a stored plan.
    AddTasks(AddTasks),
    /// A worker asks to build a function.
    BuildClaim(BuildClaim),
    /// A worker reports the end of a build.
    BuildReport(BuildReport),
    /// A dispatcher not leading asks for the lead.
    Ping(DispatcherPing),
}

impl MessageSet for Incoming {
    fn kinds() -> Vec<&'static str> {
        vec![
            ClaimRequest::KIND,
            ClaimBatch::KIND,
            TaskStatusReport::KIND,
            StatusBatch::KIND,
            WorkerHeartbeat::KIND,
            LogBatch::KIND,
            MeasurementBatch::KIND,
            WorkerRegistration::KIND,
            CancelRequest::KIND,
            AddTasks::KIND,
            BuildClaim::KIND,
            BuildReport::KIND,
            DispatcherPing::KIND,
        ]
    }

    fn decode(envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        Ok(match envelope.kind.as_str() {
            ClaimRequest::KIND => Incoming::Claim(envelope.decode()?),
            ClaimBatch::KIND => Incoming::Claims(envelope.decode()?),
            TaskStatusReport::KIND => Incoming::Status(envelope.decode()?),
            StatusBatch::KIND => Incoming::Statuses(envelope.decode()?),
            WorkerHeartbeat::KIND => Incoming::Heartbeat(envelope.decode()?),
            LogBatch::KIND => Incoming::Logs(envelope.decode()?),
            MeasurementBatch::KIND => Incoming::Measurements(envelope.decode()?),
            WorkerRegistration::KIND => Incoming::Register(envelope.decode()?),
            CancelRequest::KIND => Incoming::Cancel(envelope.decode()?),
            AddTasks::KIND => Incoming::AddTasks(envelope.decode()?),
            BuildClaim::KIND => Incoming::BuildClaim(envelope.decode()?),
            BuildReport::KIND => Incoming::BuildReport(envelope.decode()?),
            DispatcherPing::KIND => Incoming::Ping(envelope.decode()?),
            other => {
                return Err(DecodeError::UnexpectedKind {
                    found: other.to_owned(),
                    expected: Self::kinds().join(", "),
                });
            }
        })
    }
}

/// The active plans, by key, and which plan each of their tasks belongs to; and the workers
/// known to be registered.
#[derive(Default)]
struct Plans {
    states: HashMap<PlanKey, PlanState>,
    plan_of: HashMap<TaskKey, PlanKey>,
    requirements: HashMap<TaskKey, RequirementSet>,
    /// The registered workers' properties.
    registered: HashMap<WorkerId, models::Properties>,
    /// When `registered` was last emptied, so that a worker disabled or asked to disconnect by
    /// an operator is seen within the configured registration cache time.
    registered_since: Option<std::time::Instant>,
    /// When silent workers were last looked for.
    silence_checked: Option<std::time::Instant>,
    /// Functions, for assignments and output checks.
    functions: Functions,
    /// When builds were last looked after (published, lapsed, their end propagated).
    builds_checked: Option<std::time::Instant>,
    /// The lead's epoch this dispatcher holds (`store::leadership`): none before it first
    /// received an event, and after it found that another dispatcher took the lead. Without
    /// it, nothing is held in memory and nothing is written.
    epoch: Option<i64>,
    /// When this dispatcher, not leading, last asked for the lead (`DispatcherPing`).
    pinged: Option<std::time::Instant>,
    /// The tasks granted ahead (`TaskAssigned::speculative`), by the task each runs after.
    ahead: HashMap<TaskKey, Ahead>,
    /// The held plans' tasks waiting in their queues, oldest first: what a slot kept by a
    /// report may be given.
    queued: QueuedTasks,
}

/// A task granted ahead to a worker, to start there once the task it runs after ends DONE
/// there; granted (as a claim would be, with this attempt and token) when that task's report
/// says the worker started it.
struct Ahead {
    /// The task.
    task: TaskKey,
    /// Its plan.
    plan: PlanKey,
    /// The worker it was sent to.
    worker: WorkerId,
    /// The attempt it was sent as.
    attempt: Attempt,
    /// The attempt's lease token.
    token: Uuid,
}

/// Whether `worker` is registered (and enabled), asking the database the first time.
async fn is_registered(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    worker: &WorkerId,
) -> Result<bool, StoreError> {
    let fresh = plans
        .registered_since
        .is_some_and(|since| since.elapsed() < context.config.registration_cache);
    if !fresh {
        plans.registered.clear();
        plans.registered_since = Some(std::time::Instant::now());
    }
    if plans.registered.contains_key(worker) {
        return Ok(true);
    }
    let registered = workers::find_worker(conn, worker)
        .await?
        .filter(|stored| stored.is_enabled && !stored.should_disconnect);
    let found = registered.is_some();
    if let Some(stored) = registered {
        plans.registered.insert(worker.clone(), stored.properties);
    }
    Ok(found)
}

impl Plans {
    fn forget(&mut self, plan: PlanKey) {
        if let Some(state) = self.states.remove(&plan) {
            for task in state.tasks() {
                self.plan_of.remove(&task.key);
                self.requirements.remove(&task.key);
                self.queued.remove(task.key);
            }
        }
        // A worker that starts one of them is told to abort it.
        self.ahead.retain(|_, ahead| ahead.plan != plan);
    }

    /// Whether `task` waits in its queue: TODO, and not held back by a retry's backoff.
    fn waits_in_queue(&self, task: TaskKey) -> bool {
        waits_in_queue(&self.states, &self.plan_of, task)
    }

    /// Adds the tasks of `plan` that wait in their queues to [`Plans::queued`].
    fn queue_waiting(&mut self, plan: PlanKey) {
        let Some(state) = self.states.get(&plan) else {
            return;
        };
        for node in state.tasks() {
            if waits(node)
                && let Some(requirements) = self.requirements.get(&node.key)
            {
                self.queued.add(node.key, &node.routing_key, requirements);
            }
        }
    }

    /// Adds the tasks `effects` published at once to [`Plans::queued`], once they are stored.
    fn queue_enqueued(&mut self, effects: &[Effect]) {
        for effect in effects {
            if let Effect::Enqueue {
                task,
                routing_key,
                not_before: None,
            } = effect
                && self.waits_in_queue(*task)
                && let Some(requirements) = self.requirements.get(task)
            {
                self.queued.add(*task, routing_key, requirements);
            }
        }
    }

    /// The core's node of `task`, if its plan is held.
    fn node(&self, task: TaskKey) -> Option<&TaskNode> {
        self.plan_of
            .get(&task)
            .and_then(|plan| self.states.get(plan))
            .and_then(|state| state.task(task))
    }

    /// Drops what was granted ahead to `worker` after `task`, and after those in turn.
    fn drop_ahead(&mut self, task: TaskKey, worker: &WorkerId) {
        let mut after = task;
        while self
            .ahead
            .get(&after)
            .is_some_and(|ahead| ahead.worker == *worker)
        {
            let Some(dropped) = self.ahead.remove(&after) else {
                break;
            };
            after = dropped.task;
        }
    }
}

/// [`Plans::waits_in_queue`], on the fields it reads, so that [`Plans::queued`] can change
/// meanwhile.
fn waits_in_queue(
    states: &HashMap<PlanKey, PlanState>,
    plan_of: &HashMap<TaskKey, PlanKey>,
    task: TaskKey,
) -> bool {
    plan_of
        .get(&task)
        .and_then(|plan| states.get(plan))
        .and_then(|state| state.task(task))
        .is_some_and(waits)
}

/// Whether `node` waits in its queue: TODO, and not held back by a retry's backoff.
fn waits(node: &TaskNode) -> bool {
    node.status == TaskStatus::Todo && node.not_before.is_none()
}

/// The core's view of a stored task with its `parents`, run under `retry`.
pub(crate) fn to_node(task: TaskState, parents: Vec<TaskKey>, retry: RetryPolicy) -> TaskNode {
    TaskNode {
        key: task.key,
        function_key: task.function_key,
        status: task.status,
        waiting_reason: task.waiting_reason,
        rank: task.rank,
        worker: task.worker,
        routing_key: task.requirements.routing_key(),
        retry,
        attempt_count: task.attempt_count,
        lease: task.lease,
        worker_id: task.worker_id,
        not_before: task.not_before,
        cancel_requested: task.cancel_requested,
        abort_requested: task.abort_requested,
        error_type: task.error_type,
        error_message: task.error_message,
        start_date: task.start_date,
        end_date: task.end_date,
        parents,
    }
}

/// Rebuilds plan `key` from the database into `plans`; returns whether it exists. Only the
/// columns the core holds are read (`tasks::load_task_states`).
async fn load_plan(
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    key: PlanKey,
) -> Result<bool, StoreError> {
    let Some(plan) = plans::find_plan(conn, key).await? else {
        return Ok(false);
    };
    let stored = tasks::load_task_states(conn, key).await?;
    let function_keys: Vec<_> = stored
        .iter()
        .map(|(task, _)| task.function_key)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let retry: HashMap<_, _> = catalog::find_functions(conn, &function_keys)
        .await?
        .into_iter()
        .map(|function| (function.key, function.retry))
        .collect();
    let in_plan: HashSet<TaskKey> = stored.iter().map(|(task, _)| task.key).collect();
    let external: Vec<TaskKey> = stored
        .iter()
        .flat_map(|(_, parents)| parents.iter().copied())
        .filter(|parent| !in_plan.contains(parent))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let external_done: HashSet<TaskKey> = tasks::find_tasks(conn, &external)
        .await?
        .into_iter()
        .filter(|task| task.status == TaskStatus::Done)
        .map(|task| task.key)
        .collect();
    let mut nodes = Vec::with_capacity(stored.len());
    for (task, parents) in stored {
        let policy = retry.get(&task.function_key).cloned().unwrap_or_default();
        plans.plan_of.insert(task.key, key);
        plans
            .requirements
            .insert(task.key, task.requirements.clone());
        nodes.push(to_node(task, parents, policy));
    }
    plans
        .states
        .insert(key, PlanState::new(plan, nodes, external_done));
    plans.queue_waiting(key);
    Ok(true)
}

/// Builds the in-memory state of plan `key` from the database, as the event applier does when
/// it first needs the plan (used by `baton bench` to measure it).
pub async fn load_plan_state(
    conn: &mut AsyncPgConnection,
    key: PlanKey,
) -> Result<Option<PlanState>, StoreError> {
    let mut plans = Plans::default();
    if !load_plan(conn, &mut plans, key).await? {
        return Ok(None);
    }
    Ok(plans.states.remove(&key))
}

/// The plan of `task`, loading it when needed; `None` for an unknown task.
async fn plan_of(
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    task: TaskKey,
) -> Result<Option<PlanKey>, StoreError> {
    if let Some(plan) = plans.plan_of.get(&task) {
        return Ok(Some(*plan));
    }
    let Some(stored) = tasks::find_task(conn, task).await? else {
        return Ok(None);
    };
    let plan = stored.compute_plan_key;
    if load_plan(conn, plans, plan).await? {
        Ok(Some(plan))
    } else {
        Ok(None)
    }
}

/// A fresh jitter in [0, 1) for retry backoff.
fn jitter() -> f64 {
    // The low 53 bits of a random UUID: uniform, and exact in an f64.
    let bits = Uuid::new_v4().as_u128() & ((1u128 << 53) - 1);
    bits as f64 / (1u128 << 53) as f64
}

/// Everything a batch must write and send.
#[derive(Default)]
struct Work {
    effects: Vec<Effect>,
    touched: HashSet<PlanKey>,
    replies: Vec<(Meta, ClaimReply)>,
    /// Answers to claim batches, each to its batch's sender.
    batch_replies: Vec<(Meta, ClaimBatchReply)>,
    /// The core's answers to claims, before the shell completes them into replies (only a
    /// claim's event yields one).
    decisions: Vec<ClaimDecision>,
    /// Models and performances registered by DONE reports.
    registered: Registered,
    log_lines: Vec<LogLine>,
    samples: Vec<Measurement>,
    results: Vec<(TaskKey, Vec<models::StepState>, serde_json::Value)>,
    heartbeats: Vec<WorkerId>,
    registrations: Vec<(models::Worker, Vec<models::Device>)>,
    /// Device lists a worker's scanner reported.
    device_updates: Vec<(WorkerId, Vec<models::Device>)>,
    registration_replies: Vec<(Meta, RegistrationReply)>,
    cancel_replies: Vec<(Meta, CancelReply)>,
    added_tasks: Vec<Task>,
    submission_rows: Vec<crate::store::rows::SubmissionRow>,
    submission_replies: Vec<(Meta, SubmissionReply)>,
    build_replies: Vec<(Meta, BuildClaimReply)>,
    /// The stored tasks the batch's claims and DONE reports name, read in one query before the
    /// batch.
    stored_tasks: HashMap<TaskKey, Task>,
    /// DONE reports that offered their worker for a follow-up, with the tasks they made ready.
    follow_ups: Vec<FollowUp>,
    /// Tasks granted without a claim, to send to their workers.
    assigned: Vec<(WorkerId, TaskAssigned)>,
    /// Tasks granted in slots kept by reports (with what is granted ahead after them), to send
    /// to their workers, several to a worker in one message.
    refilled: Vec<(WorkerId, TaskAssigned)>,
    /// Reports whose worker kept the attempt's slot for a task (`awaits_work`) or takes tasks
    /// on its deck (`on_deck`), in order.
    awaiting: Vec<Awaiting>,
    /// Reported tasks whose kept slot or deck gets fewer tasks than asked, by worker:
    /// `released` orders.
    released: Vec<(WorkerId, TaskKey)>,
    /// Tasks granted ahead that their worker started and that are now granted, by worker:
    /// the chains to grant further ahead.
    started_ahead: Vec<(WorkerId, TaskKey)>,
    /// Attempts a worker started ahead that could not be granted, with why: it is told to
    /// abort them.
    void_ahead: Vec<(WorkerId, TaskKey, String)>,
    /// Tasks this batch made DONE: every model they registered is in `registered`.
    done: HashSet<TaskKey>,
    /// Attempts handed back by their workers.
    hand_backs: usize,
    /// Tasks the batch ended, whose children were read before the commit.
    ended: Vec<TaskKey>,
    /// The edges from `ended` to their children, as read before the commit (with the children
    /// the batch adds): the commit reads them again under the tasks' end locks.
    edges_read: HashSet<(TaskKey, TaskKey)>,
    /// The stored children of the tasks the batch's reports name, read with the batch's
    /// tasks: the tasks a batch ends are mostly these, whose edges then need no query of
    /// their own.
    children_read: HashMap<TaskKey, Vec<TaskKey>>,
}

/// A report whose worker keeps the attempt's slot for the dispatcher's answer
/// (`TaskStatusReport::awaits_work`), or takes tasks on its deck (`on_deck`).
struct Awaiting {
    /// The reported task.
    after: TaskKey,
    /// The worker that ran it.
    worker: WorkerId,
    /// The report was applied as DONE: the worker, which held the lease, may be given a task.
    done: bool,
    /// The worker kept the attempt's slot (`awaits_work`).
    kept: bool,
    /// How many tasks the worker takes on its deck (`on_deck`), at most [`MAX_ON_DECK`].
    deck: u32,
}

/// The most tasks one report is granted for its worker's deck, whatever it asks.
const MAX_ON_DECK: u32 = 8;

/// A DONE report whose worker can start a child at once (`TaskStatusReport::follow_up`).
struct FollowUp {
    /// The reported task.
    after: TaskKey,
    /// The worker that ran it.
    worker: WorkerId,
    /// The tasks the report made ready, in the core's order.
    ready: Vec<TaskKey>,
}

impl Work {
    /// Keeps `lines` of attempt `attempt` of `task` for the batch's transaction.
    fn keep_log_lines(&mut self, task: TaskKey, attempt: Attempt, lines: &[LogRecord]) {
        self.log_lines.extend(lines.iter().map(|line| LogLine {
            task_key: task,
            attempt,
            seq: line.seq,
            step: line.step,
            stream: line.stream,
            timestamp: line.timestamp,
            text: line.text.clone(),
            truncated: line.truncated,
        }));
    }

    /// Applies `event` to plan `plan` and keeps its effects.
    fn apply(&mut self, plans: &mut Plans, plan: PlanKey, event: Event, now: Timestamp) -> bool {
        self.apply_or_refusal(plans, plan, event, now).is_none()
    }

    /// Like [`Work::apply`], returning the core's refusal, if any.
    fn apply_or_refusal(
        &mut self,
        plans: &mut Plans,
        plan: PlanKey,
        event: Event,
        now: Timestamp,
    ) -> Option<String> {
        let Some(state) = plans.states.get_mut(&plan) else {
            return Some(format!("plan {plan} is not loaded"));
        };
        let effects = core::apply(state, event, now, jitter());
        let mut refusal = None;
        for effect in effects {
            match effect {
                Effect::ReplyClaim { reply } => self.decisions.push(reply),
                Effect::Refused { task, reason } => {
                    tracing::debug!(
                        "refused for task {}: {reason}",
                        task.map(|t| t.to_string()).unwrap_or_default()
                    );
                    refusal = Some(reason);
                }
                other => {
                    self.touched.insert(plan);
                    self.effects.push(other);
                }
            }
        }
        refusal
    }
}

/// Whether `task` of `plans` is running `attempt` under `token`.
fn holds_lease(plans: &Plans, task: TaskKey, attempt: Attempt, token: Uuid) -> bool {
    plans.node(task).is_some_and(|node| {
        node.status == TaskStatus::Doing
            && node
                .lease
                .as_ref()
                .is_some_and(|lease| lease.attempt == attempt && lease.token == token)
    })
}

/// Feeds one delivery to the core.
async fn take(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    delivery: &Delivery<Incoming>,
    now: Timestamp,
) -> Result<(), StoreError> {
    match &delivery.message {
        Incoming::Claim(request) => {
            // As for a batch: RabbitMQ lets a worker's user publish only under its own
            // `worker.<id>.` keys, so a claim on its worker's key comes from that worker.
            let key = topology::worker_event_key(&request.worker_id, "claim");
            let reply = if delivery.routing_key != key {
                ClaimReply::Refused {
                    task_key: request.task_key,
                    reason: wrong_claim_key(&request.worker_id, &key, &delivery.routing_key),
                }
            } else if is_registered(context, conn, plans, &request.worker_id).await? {
                claim_task(context, conn, plans, work, request, now).await?
            } else {
                unregistered(request.task_key, &request.worker_id)
            };
            work.replies.push((delivery.meta.clone(), reply));
        }
        Incoming::Claims(batch) => {
            // RabbitMQ lets a worker's user publish only under its own `worker.<id>.` keys, so
            // a batch on its worker's key comes from that worker (docs/security.md).
            let key = topology::worker_event_key(&batch.worker_id, "claim");
            let refusal = if delivery.routing_key != key {
                Some(wrong_claim_key(
                    &batch.worker_id,
                    &key,
                    &delivery.routing_key,
                ))
            } else if !is_registered(context, conn, plans, &batch.worker_id).await? {
                Some(unregistered_reason(&batch.worker_id))
            } else {
                None
            };
            let mut replies = Vec::with_capacity(batch.task_keys.len());
            for task in &batch.task_keys {
                let request = ClaimRequest {
                    task_key: *task,
                    worker_id: batch.worker_id.clone(),
                };
                replies.push(match &refusal {
                    None => claim_task(context, conn, plans, work, &request, now).await?,
                    Some(reason) => ClaimReply::Refused {
                        task_key: *task,
                        reason: reason.clone(),
                    },
                });
            }
            work.batch_replies
                .push((delivery.meta.clone(), ClaimBatchReply { replies }));
        }
        Incoming::Status(report) => take_report(context, conn, plans, work, report, now).await?,
        Incoming::Statuses(batch) => {
            for report in &batch.reports {
                take_report(context, conn, plans, work, report, now).await?;
            }
        }
        Incoming::BuildClaim(request) => {
            let reply = if is_registered(context, conn, plans, &request.worker_id).await? {
                builds::claim(context, conn, request, now).await?
            } else {
                BuildClaimReply::Refused {
                    function_key: request.function_key,
                    reason: format!(
                        "worker {} is not registered, or is disabled or leaving",
                        request.worker_id
                    ),
                }
            };
            work.build_replies.push((delivery.meta.clone(), reply));
        }
        // Received, it did its work: this dispatcher leads.
        Incoming::Ping(_) => {}
        Incoming::BuildReport(report) => {
            if builds::finish(conn, report, now).await? {
                // Its tasks follow at once (and the tick catches up after a failure).
                apply_ended_builds(conn, plans, work, now).await?;
            }
        }
        Incoming::Heartbeat(heartbeat) => {
            // RabbitMQ lets a worker's user publish only under its own `worker.<id>.` keys.
            let own = delivery.routing_key
                == topology::worker_event_key(&heartbeat.worker_id, "heartbeat");
            if own {
                offer(
                    context,
                    conn,
                    plans,
                    &heartbeat.worker_id,
                    heartbeat.idle_slots,
                )
                .await?;
            }
            builds::renew(context, conn, &heartbeat.builds, now).await?;
            work.heartbeats.push(heartbeat.worker_id.clone());
            if let Some(devices) = &heartbeat.devices {
                let devices = devices
                    .iter()
                    .map(|device| models::Device {
                        worker: heartbeat.worker_id.clone(),
                        id: device.id.clone(),
                        device_type: device.device_type.clone(),
                        input_type: device.input_type.clone(),
                        parameter_schema: device.parameter_schema.clone(),
                        is_active: true,
                        last_seen: Some(now),
                    })
                    .collect();
                work.device_updates
                    .push((heartbeat.worker_id.clone(), devices));
            }
            for lease in &heartbeat.leases {
                if let Some(plan) = plan_of(conn, plans, lease.task_key).await? {
                    let event = Event::LeaseRenewed {
                        task: lease.task_key,
                        attempt: lease.attempt,
                        lease_token: lease.lease_token,
                        lease_duration: context.config.lease_duration,
                    };
                    work.apply(plans, plan, event, now);
                }
            }
        }
        Incoming::Logs(batch) => {
            plan_of(conn, plans, batch.task_key).await?;
            if holds_lease(plans, batch.task_key, batch.attempt, batch.lease_token) {
                work.keep_log_lines(batch.task_key, batch.attempt, &batch.lines);
            } else {
                tracing::debug!(
                    "log lines of task {} from a stale attempt refused",
                    batch.task_key
                );
            }
        }
        Incoming::AddTasks(message) => {
            let reply = add_tasks(context, conn, plans, work, message, &delivery.meta, now).await?;
            work.submission_replies.push((delivery.meta.clone(), reply));
        }
        Incoming::Cancel(request) => {
            let reply = cancel(context, conn, plans, work, request, &delivery.meta, now).await?;
            work.cancel_replies.push((delivery.meta.clone(), reply));
        }
        Incoming::Register(registration) => {
            let reply = register(
                context,
                conn,
                plans,
                work,
                registration,
                &delivery.meta,
                now,
            )
            .await?;
            work.registration_replies
                .push((delivery.meta.clone(), reply));
        }
        Incoming::Measurements(batch) => {
            plan_of(conn, plans, batch.task_key).await?;
            if holds_lease(plans, batch.task_key, batch.attempt, batch.lease_token) {
                work.samples
                    .extend(batch.samples.iter().map(|sample| Measurement {
                        task_key: batch.task_key,
                        attempt: batch.attempt,
                        channel: sample.channel.clone(),
                        t: sample.t,
                        value: sample.value,
                        timestamp: sample.timestamp,
                    }));
            }
        }
    }
    Ok(())
}

/// Feeds the end of an attempt, as its worker reported it, to the core.
async fn take_report(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    report: &TaskStatusReport,
    now: Timestamp,
) -> Result<(), StoreError> {
    let Some(plan) = plan_of(conn, plans, report.task_key).await? else {
        tracing::warn!("report for unknown task {}", report.task_key);
        if report.awaits_work || report.on_deck > 0 {
            work.released
                .push((report.worker_id.clone(), report.task_key));
        }
        return Ok(());
    };
    // The log's last lines come with the report: kept if the attempt still holds its
    // lease, as a `task.log` batch would be, whatever the core makes of the report.
    if !report.logs.is_empty()
        && holds_lease(plans, report.task_key, report.attempt, report.lease_token)
    {
        work.keep_log_lines(report.task_key, report.attempt, &report.logs);
    }
    let mut registered = Registered::default();
    let outcome = match &report.outcome {
        ReportedOutcome::Done => {
            let stored = work.stored_tasks.remove(&report.task_key);
            match check_outputs(conn, plans, report, stored, now, &mut registered).await? {
                Ok(()) => Outcome::Done,
                Err(problem) => Outcome::Failed {
                    error_type: TaskErrorType::Execution,
                    message: format!("invalid outputs: {problem}"),
                    retryable: false,
                },
            }
        }
        ReportedOutcome::Failed {
            error_type,
            message,
            retryable,
        } => Outcome::Failed {
            error_type: *error_type,
            message: message.clone(),
            retryable: *retryable,
        },
        ReportedOutcome::Canceled => Outcome::Canceled,
    };
    let done = outcome == Outcome::Done;
    let handed_back = matches!(
        &outcome,
        Outcome::Failed {
            error_type: TaskErrorType::CanceledByWorker,
            ..
        }
    );
    let event = Event::Finished {
        task: report.task_key,
        attempt: report.attempt,
        lease_token: report.lease_token,
        outcome,
    };
    let first_effect = work.effects.len();
    let applied = work.apply(plans, plan, event, now);
    settle_ahead(context, plans, work, report, applied && done, now);
    if report.awaits_work || report.on_deck > 0 {
        work.awaiting.push(Awaiting {
            after: report.task_key,
            worker: report.worker_id.clone(),
            done: applied && done && (report.follow_up || report.on_deck > 0) && !handed_back,
            kept: report.awaits_work,
            deck: report.on_deck.min(MAX_ON_DECK),
        });
    }
    if applied {
        work.results
            .push((report.task_key, report.steps.clone(), report.output.clone()));
        work.registered.models.extend(registered.models);
        work.registered.performances.extend(registered.performances);
        if done {
            work.done.insert(report.task_key);
        }
        if handed_back {
            work.hand_backs += 1;
        }
        // The report's token was the lease holder's: it speaks for its worker. Idle after a
        // DONE, it offers its slots; otherwise (busy, or handing back a task it had no slot
        // for) it offers none.
        let idle = if done && report.follow_up && !handed_back {
            report.idle_slots
        } else {
            0
        };
        offer(context, conn, plans, &report.worker_id, idle).await?;
        if done && report.follow_up && context.config.follow_ups {
            let ready: Vec<TaskKey> = work.effects[first_effect..]
                .iter()
                .filter_map(|effect| match effect {
                    Effect::Enqueue {
                        task,
                        not_before: None,
                        ..
                    } => Some(*task),
                    _ => None,
                })
                .collect();
            if !ready.is_empty() {
                work.follow_ups.push(FollowUp {
                    after: report.task_key,
                    worker: report.worker_id.clone(),
                    ready,
                });
            }
        }
    }
    Ok(())
}

/// Grants the task that `report`'s worker started ahead after the reported one
/// (`started_next`), with the attempt and token it was sent with, now that the report (DONE,
/// and `done` when the core accepted it as such) made it ready; or, when it cannot be granted
/// (the report was refused or did not end in DONE, nothing was granted ahead after the task,
/// or the core refuses the claim), has the worker told to abort that attempt. Whatever was
/// granted ahead after the reported task and not started is dropped.
fn settle_ahead(
    context: &Context,
    plans: &mut Plans,
    work: &mut Work,
    report: &TaskStatusReport,
    done: bool,
    now: Timestamp,
) {
    // What was granted ahead after the task to another worker (the task granted again since,
    // this report's attempt lost its lease) is not this report's to settle.
    let reserved = match plans.ahead.get(&report.task_key) {
        Some(reserved) if reserved.worker == report.worker_id => {
            plans.ahead.remove(&report.task_key)
        }
        _ => None,
    };
    let Some(next) = report.started_next else {
        if let Some(reserved) = reserved {
            plans.drop_ahead(reserved.task, &reserved.worker);
        }
        return;
    };
    let granted = match reserved {
        Some(reserved) if done && reserved.task == next => {
            grant_ahead(context, plans, work, &reserved, now)
        }
        Some(reserved) => {
            plans.drop_ahead(reserved.task, &reserved.worker);
            Err(format!(
                "task {}'s report did not make it ready",
                report.task_key
            ))
        }
        None => Err(format!(
            "it was not granted ahead after task {}, or no longer is",
            report.task_key
        )),
    };
    match granted {
        Ok(()) => {
            context.offers.took(&report.worker_id);
            work.started_ahead.push((report.worker_id.clone(), next));
        }
        // A report delivered again (its ack lost) finds the task granted by its first delivery.
        Err(_) if runs(plans, next, &report.worker_id) => {}
        Err(why) => {
            tracing::info!(task.key = %next, "task {next}, started ahead by worker {}, is not granted: {why}", report.worker_id);
            plans.drop_ahead(next, &report.worker_id);
            work.void_ahead.push((report.worker_id.clone(), next, why));
        }
    }
}

/// Whether `worker` holds the lease of `task`.
fn runs(plans: &Plans, task: TaskKey, worker: &WorkerId) -> bool {
    plans.node(task).is_some_and(|node| {
        node.status == TaskStatus::Doing && node.worker_id.as_ref() == Some(worker)
    })
}

/// Feeds the core the claim of `reserved`'s task by its worker, with the attempt and token it
/// was granted ahead with; the reason if it is refused.
fn grant_ahead(
    context: &Context,
    plans: &mut Plans,
    work: &mut Work,
    reserved: &Ahead,
    now: Timestamp,
) -> Result<(), String> {
    let attempt_now = plans
        .node(reserved.task)
        .and_then(|node| node.attempt_count.checked_add(1));
    if attempt_now != Some(reserved.attempt.0) {
        return Err(format!(
            "its next attempt is no longer {}",
            reserved.attempt
        ));
    }
    let event = Event::ClaimRequested {
        task: reserved.task,
        worker: reserved.worker.clone(),
        lease_token: reserved.token,
        lease_duration: context.config.lease_duration,
    };
    work.apply(plans, reserved.plan, event, now);
    match work.decisions.pop() {
        Some(ClaimDecision::Granted(_)) => Ok(()),
        Some(ClaimDecision::Refused { reason, .. }) => Err(reason),
        None => Err("the claim was not answered".to_owned()),
    }
}

/// Grants `worker`, which runs `head`, the next links of `head`'s chain ahead, up to the
/// configured `run_ahead` beyond it: each the one child of the link before that would be ready
/// once that link is DONE (its other parents DONE already), that the worker can run, to send
/// as a speculative `task.assigned` whose inputs from the link before the worker fills in; the
/// new ones are returned, in chain order. Nothing is stored: the grant is made when the report
/// of the link before says the worker started it (`settle_ahead`).
async fn grant_chain_ahead(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    (worker, head): (&WorkerId, TaskKey),
    pending: &assignment::Pending,
    now: Timestamp,
) -> Result<Vec<TaskAssigned>, StoreError> {
    let mut granted = Vec::new();
    // Most tasks granted head no chain (no child, or one waiting for other parents): nothing
    // to look up for them.
    let chained = plans
        .plan_of
        .get(&head)
        .and_then(|plan| plans.states.get(plan))
        .is_some_and(|state| {
            plans.ahead.contains_key(&head)
                || !state
                    .children_ready_after(head, &HashSet::from([head]))
                    .is_empty()
        });
    if context.config.run_ahead == 0
        || !context.config.follow_ups
        || !chained
        || !runs(plans, head, worker)
        || !is_registered(context, conn, plans, worker).await?
    {
        return Ok(granted);
    }
    let Some(properties) = plans.registered.get(worker).cloned() else {
        return Ok(granted);
    };
    // The links' stored tasks, read in one query rather than one a link.
    let unread: Vec<TaskKey> = links_ahead(context, plans, worker, head, &properties)
        .into_iter()
        .filter(|task| !work.stored_tasks.contains_key(task))
        .collect();
    if !unread.is_empty() {
        for task in tasks::find_tasks(conn, &unread).await? {
            work.stored_tasks.insert(task.key, task);
        }
    }
    let mut after = head;
    let mut chain = HashSet::from([head]);
    for _ in 0..context.config.run_ahead {
        match plans.ahead.get(&after) {
            Some(reserved) if reserved.worker == *worker => {
                after = reserved.task;
                chain.insert(after);
                continue;
            }
            // Granted ahead to a worker that no longer runs the link before: void.
            Some(stale) => {
                let stale = stale.worker.clone();
                plans.drop_ahead(after, &stale);
            }
            None => {}
        }
        let Some(&plan) = plans.plan_of.get(&after) else {
            break;
        };
        let Some(state) = plans.states.get(&plan) else {
            break;
        };
        let Some(next) = next_link(plans, state, after, &chain, &properties) else {
            break;
        };
        let Some(attempt) = state
            .task(next)
            .and_then(|node| node.attempt_count.checked_add(1))
        else {
            break;
        };
        let stored = work.stored_tasks.remove(&next);
        let prepared = assignment::prepare(
            conn,
            &mut plans.functions,
            next,
            stored,
            pending,
            Some(after),
        )
        .await?;
        let Ok(assignment) = prepared else {
            break;
        };
        let token = Uuid::new_v4();
        let grant = Grant {
            task_key: next,
            attempt: Attempt(attempt),
            lease_token: token,
            lease_expires_at: now + context.config.lease_duration,
        };
        granted.push(TaskAssigned {
            after: Some(after),
            speculative: true,
            grant,
            assignment: Box::new(assignment),
        });
        plans.ahead.insert(
            after,
            Ahead {
                task: next,
                plan,
                worker: worker.clone(),
                attempt: Attempt(attempt),
                token,
            },
        );
        chain.insert(next);
        after = next;
    }
    Ok(granted)
}

/// The child of `after` that a worker with `properties` may run next in a chain whose links
/// `chain` are DONE or granted: ready once they are, not waiting for a build, and not granted
/// ahead already.
fn next_link(
    plans: &Plans,
    state: &PlanState,
    after: TaskKey,
    chain: &HashSet<TaskKey>,
    properties: &models::Properties,
) -> Option<TaskKey> {
    state
        .children_ready_after(after, chain)
        .into_iter()
        .find(|child| {
            state
                .task(*child)
                .is_some_and(|node| node.waiting_reason != Some(WaitingReason::Build))
                && plans
                    .requirements
                    .get(child)
                    .is_some_and(|requirements| requirements.is_satisfied_by(properties))
                && !plans.ahead.values().any(|reserved| reserved.task == *child)
        })
}

/// The links [`grant_chain_ahead`] is about to grant `worker` after `head`, as far as memory
/// tells: those already granted ahead are followed, not returned. A guess, to read their
/// stored tasks at once: the grant decides link by link.
fn links_ahead(
    context: &Context,
    plans: &Plans,
    worker: &WorkerId,
    head: TaskKey,
    properties: &models::Properties,
) -> Vec<TaskKey> {
    let mut links = Vec::new();
    let mut after = head;
    let mut chain = HashSet::from([head]);
    for _ in 0..context.config.run_ahead {
        if let Some(reserved) = plans.ahead.get(&after)
            && reserved.worker == *worker
        {
            after = reserved.task;
            chain.insert(after);
            continue;
        }
        let Some(state) = plans
            .plan_of
            .get(&after)
            .and_then(|plan| plans.states.get(plan))
        else {
            break;
        };
        let Some(next) = next_link(plans, state, after, &chain, properties) else {
            break;
        };
        links.push(next);
        chain.insert(next);
        after = next;
    }
    links
}

/// Records that `worker` is idle with `slots` free slots (0: not idle) for eager starts, if
/// they are on and the worker is registered.
async fn offer(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    worker: &WorkerId,
    slots: u32,
) -> Result<(), StoreError> {
    if slots == 0 || !context.config.eager_starts {
        context.offers.withdraw(worker);
        return Ok(());
    }
    if is_registered(context, conn, plans, worker).await?
        && let Some(properties) = plans.registered.get(worker)
    {
        let now = std::time::Instant::now();
        context.offers.idle(worker, properties, slots, now);
    }
    Ok(())
}

/// Takes the plans the submission consumer started tasks of (`Context::started`), so that
/// their leases are watched and their reports need not read them.
fn hold_started(context: &Context, plans: &mut Plans) {
    let started = std::mem::take(
        &mut *context
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for StartedPlan {
        state,
        requirements,
    } in started
    {
        let key = state.plan().key;
        // Read from the store already (a claim of another of its tasks came first).
        if plans.states.contains_key(&key) {
            continue;
        }
        for (task, requirements) in requirements {
            plans.plan_of.insert(task, key);
            plans.requirements.insert(task, requirements);
        }
        plans.states.insert(key, state);
        plans.queue_waiting(key);
    }
}

/// The DONE reports of `batch`, single or in status batches.
fn done_reports(batch: &[Delivery<Incoming>]) -> impl Iterator<Item = &TaskStatusReport> {
    batch
        .iter()
        .flat_map(|delivery| match &delivery.message {
            Incoming::Status(report) => std::slice::from_ref(report),
            Incoming::Statuses(batch) => batch.reports.as_slice(),
            _ => &[],
        })
        .filter(|report| report.outcome == ReportedOutcome::Done)
}

/// The tasks the batch's DONE reports offering a follow-up will likely make ready: read with
/// the batch's other tasks, so that granting one costs no query of its own.
fn follow_up_candidates(
    context: &Context,
    plans: &Plans,
    batch: &[Delivery<Incoming>],
) -> Vec<TaskKey> {
    if !context.config.follow_ups {
        return Vec::new();
    }
    let done: HashSet<TaskKey> = done_reports(batch).map(|report| report.task_key).collect();
    let mut candidates = Vec::new();
    for report in done_reports(batch).filter(|report| report.follow_up) {
        let state = plans
            .plan_of
            .get(&report.task_key)
            .and_then(|plan| plans.states.get(plan));
        if let Some(state) = state {
            candidates.extend(state.children_ready_after(report.task_key, &done));
        }
    }
    candidates.sort_unstable();
    candidates.dedup();
    candidates
}

/// Grants each follow-up offer one task it made ready, if its worker is registered and
/// satisfies the task's requirements: the task goes to that worker at once (`task.assigned`)
/// instead of through its queue, where the worker would take and claim it one round trip
/// and one batch later. The grant is the core's, as for a claim.
async fn grant_follow_ups(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    now: Timestamp,
) -> Result<(), StoreError> {
    // The batch's models are not stored yet: a ready task's parents may have made them.
    let pending = assignment::Pending {
        models: std::mem::take(&mut work.registered.models),
        complete: std::mem::take(&mut work.done),
    };
    let offers = std::mem::take(&mut work.follow_ups);
    let mut granted = grant_each_follow_up(context, conn, plans, work, offers, &pending, now).await;
    if granted.is_ok() {
        // The chains whose next link was granted in this batch, one way or the other.
        let mut heads: Vec<(WorkerId, TaskKey)> = work.started_ahead.clone();
        heads.extend(
            work.assigned
                .iter()
                .filter(|(_, assigned)| !assigned.speculative && assigned.after.is_some())
                .map(|(worker, assigned)| (worker.clone(), assigned.grant.task_key)),
        );
        for (worker, head) in heads {
            match grant_chain_ahead(context, conn, plans, work, (&worker, head), &pending, now)
                .await
            {
                Ok(ahead) => work
                    .assigned
                    .extend(ahead.into_iter().map(|assigned| (worker.clone(), assigned))),
                Err(error) => {
                    granted = Err(error);
                    break;
                }
            }
        }
    }
    work.registered.models = pending.models;
    work.done = pending.complete;
    granted
}

/// [`grant_follow_ups`] for `offers`, with the batch's models `pending`.
async fn grant_each_follow_up(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    offers: Vec<FollowUp>,
    pending: &assignment::Pending,
    now: Timestamp,
) -> Result<(), StoreError> {
    for offer in offers {
        // The lease was the worker's: the core accepted the report with its token.
        let ran_it = plans
            .node(offer.after)
            .is_some_and(|node| node.worker_id.as_ref() == Some(&offer.worker));
        if !ran_it || !is_registered(context, conn, plans, &offer.worker).await? {
            continue;
        }
        let Some(properties) = plans.registered.get(&offer.worker).cloned() else {
            continue;
        };
        for task in offer.ready {
            let Some(&plan) = plans.plan_of.get(&task) else {
                continue;
            };
            let runnable = plans
                .states
                .get(&plan)
                .and_then(|state| state.task(task))
                .is_some_and(|node| node.status == TaskStatus::Todo)
                && plans
                    .requirements
                    .get(&task)
                    .is_some_and(|requirements| requirements.is_satisfied_by(&properties));
            if !runnable {
                continue;
            }
            let request = ClaimRequest {
                task_key: task,
                worker_id: offer.worker.clone(),
            };
            match claim(context, conn, plans, work, &request, plan, pending, now).await? {
                ClaimReply::Granted {
                    grant, assignment, ..
                } => {
                    work.assigned.push((
                        offer.worker.clone(),
                        TaskAssigned {
                            after: Some(offer.after),
                            speculative: false,
                            grant,
                            assignment,
                        },
                    ));
                    break;
                }
                ClaimReply::Refused { .. } => {}
            }
        }
    }
    Ok(())
}

/// Answers every report of the batch whose worker kept its slot (`awaits_work`): a follow-up
/// granted already fills it; otherwise, if the report was applied as DONE, the oldest task
/// waiting in a queue the worker consumes is granted in it, as a claim would be, and sent as
/// `task.assigned` after the reported task (with the chain after it granted ahead); otherwise
/// the worker is told the slot is free (`released`). A report taking tasks on its worker's
/// deck (`on_deck`) is granted that many more oldest waiting tasks the same way, sent after
/// the one for its kept slot; `released` tells its worker when it got fewer than it takes in
/// all. A task so granted skips its worker's
/// claim and a batch of this applier; its message, still in the queue, is acked without a
/// claim by the worker it was given to (`TaskReady::attempt`), or claimed and refused
/// elsewhere.
async fn refill_kept_slots(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    now: Timestamp,
) -> Result<(), StoreError> {
    let awaiting = std::mem::take(&mut work.awaiting);
    let nothing = assignment::Pending::default();
    for waiting in awaiting {
        let followed = work.assigned.iter().any(|(worker, assigned)| {
            !assigned.speculative
                && assigned.after == Some(waiting.after)
                && *worker == waiting.worker
        });
        // A follow-up granted already fills the kept slot.
        let wanted = u32::from(waiting.kept && !followed) + waiting.deck;
        if wanted == 0 {
            continue;
        }
        let mut granted = 0;
        if waiting.done
            && context.config.follow_ups
            && is_registered(context, conn, plans, &waiting.worker).await?
            && let Some(properties) = plans.registered.get(&waiting.worker).cloned()
        {
            while granted < wanted
                && let Some(task) =
                    plans
                        .queued
                        .take_oldest(&properties, context.config.publish_ahead, |task| {
                            waits_in_queue(&plans.states, &plans.plan_of, task)
                        })
            {
                let Some(&plan) = plans.plan_of.get(&task) else {
                    continue;
                };
                let request = ClaimRequest {
                    task_key: task,
                    worker_id: waiting.worker.clone(),
                };
                let ClaimReply::Granted {
                    grant, assignment, ..
                } = claim(context, conn, plans, work, &request, plan, &nothing, now).await?
                else {
                    continue;
                };
                granted += 1;
                let assigned = TaskAssigned {
                    after: Some(waiting.after),
                    speculative: false,
                    grant,
                    assignment,
                };
                // The chain after a task that starts at once, in the kept slot; a task on the
                // deck does not run yet, and its worker would drop what follows it.
                let ahead = if granted == 1 && waiting.kept && !followed {
                    let head = (&waiting.worker, assigned.grant.task_key);
                    grant_chain_ahead(context, conn, plans, work, head, &nothing, now).await?
                } else {
                    Vec::new()
                };
                // What is granted ahead after it travels with it, so it comes after it.
                work.refilled.push((waiting.worker.clone(), assigned));
                work.refilled.extend(
                    ahead
                        .into_iter()
                        .map(|ahead| (waiting.worker.clone(), ahead)),
                );
            }
        }
        if granted < wanted {
            work.released.push((waiting.worker, waiting.after));
        }
    }
    Ok(())
}

/// The tasks [`refill_kept_slots`] would likely grant for the batch's reports that kept their
/// slots: read with the batch's other tasks, so that granting one costs no query of its own.
fn refill_candidates(
    context: &Context,
    plans: &Plans,
    batch: &[Delivery<Incoming>],
) -> Vec<TaskKey> {
    if !context.config.follow_ups {
        return Vec::new();
    }
    let wanted = done_reports(batch)
        .map(|report| usize::from(report.awaits_work) + report.on_deck.min(MAX_ON_DECK) as usize)
        .sum();
    plans
        .queued
        .first(wanted, context.config.publish_ahead, |task| {
            plans.waits_in_queue(task)
        })
}

/// Why a claim for `worker`, whose claims go under `key`, is refused under `routing_key`.
fn wrong_claim_key(worker: &WorkerId, key: &str, routing_key: &str) -> String {
    format!("claims for worker {worker} must be published as `{key}`, not `{routing_key}`")
}

/// The refusal of a claim by a worker that is not registered (or disabled, or leaving).
fn unregistered(task: TaskKey, worker: &WorkerId) -> ClaimReply {
    ClaimReply::Refused {
        task_key: task,
        reason: unregistered_reason(worker),
    }
}

/// Why a claim by `worker`, not registered (or disabled, or leaving), is refused.
fn unregistered_reason(worker: &WorkerId) -> String {
    format!("worker {worker} is not registered, or is disabled or leaving")
}

/// Answers the claim `request` of a registered worker (see [`claim`]).
async fn claim_task(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    request: &ClaimRequest,
    now: Timestamp,
) -> Result<ClaimReply, StoreError> {
    match plan_of(conn, plans, request.task_key).await? {
        None => Ok(ClaimReply::Refused {
            task_key: request.task_key,
            reason: format!("task {} does not exist", request.task_key),
        }),
        Some(plan) => {
            let nothing = assignment::Pending::default();
            let mut reply = claim(context, conn, plans, work, request, plan, &nothing, now).await?;
            if let ClaimReply::Granted { grant, ahead, .. } = &mut reply {
                let head = (&request.worker_id, grant.task_key);
                *ahead = grant_chain_ahead(context, conn, plans, work, head, &nothing, now).await?;
            }
            Ok(reply)
        }
    }
}

/// Feeds a claim to the core with the assignment it would run: a grant is answered with the
/// assignment; a task whose inputs are gone is granted and failed at once, so it does not wait
/// forever, and the worker is refused. `pending`: what this batch registered, not stored yet.
#[allow(clippy::too_many_arguments)]
async fn claim(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    request: &ClaimRequest,
    plan: PlanKey,
    pending: &assignment::Pending,
    now: Timestamp,
) -> Result<ClaimReply, StoreError> {
    let claimable = plans
        .states
        .get(&plan)
        .and_then(|state| state.task(request.task_key))
        .is_some_and(|task| task.status == TaskStatus::Todo);
    // Only a claim the core may grant is worth reading the store for.
    let prepared = if claimable {
        let stored = work.stored_tasks.remove(&request.task_key);
        Some(
            assignment::prepare(
                conn,
                &mut plans.functions,
                request.task_key,
                stored,
                pending,
                None,
            )
            .await?,
        )
    } else {
        None
    };
    let event = Event::ClaimRequested {
        task: request.task_key,
        worker: request.worker_id.clone(),
        lease_token: Uuid::new_v4(),
        lease_duration: context.config.lease_duration,
    };
    work.apply(plans, plan, event, now);
    let Some(decision) = work.decisions.pop() else {
        return Ok(ClaimReply::Refused {
            task_key: request.task_key,
            reason: "the claim was not answered".to_owned(),
        });
    };
    let reply = match (decision, prepared) {
        (ClaimDecision::Refused { task_key, reason }, _) => {
            ClaimReply::Refused { task_key, reason }
        }
        (ClaimDecision::Granted(grant), Some(Ok(assignment))) => {
            plans.queued.remove(grant.task_key);
            // Granted otherwise than at a submission: one slot fewer to start tasks on.
            context.offers.took(&request.worker_id);
            ClaimReply::Granted {
                grant,
                assignment: Box::new(assignment),
                ahead: Vec::new(),
            }
        }
        (ClaimDecision::Granted(grant), prepared) => {
            let problem = match prepared {
                Some(Err(problem)) => problem,
                _ => "the task was not ready when its claim was read".to_owned(),
            };
            tracing::error!(task.key = %grant.task_key, "task {} cannot run: {problem}", grant.task_key);
            let failed = Event::Finished {
                task: grant.task_key,
                attempt: grant.attempt,
                lease_token: grant.lease_token,
                outcome: Outcome::Failed {
                    error_type: TaskErrorType::Internal,
                    message: problem.clone(),
                    retryable: false,
                },
            };
            work.apply(plans, plan, failed, now);
            ClaimReply::Refused {
                task_key: grant.task_key,
                reason: problem,
            }
        }
    };
    Ok(reply)
}

/// Checks the outputs of a DONE report against its function (`stored`: its task, when already
/// read); the models and performances go to `registered`, or the problems come back, all of them.
async fn check_outputs(
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    report: &TaskStatusReport,
    stored: Option<Task>,
    now: Timestamp,
    registered: &mut Registered,
) -> Result<Result<(), String>, StoreError> {
    // A report the core will refuse changes nothing: no need to read the task.
    if !holds_lease(plans, report.task_key, report.attempt, report.lease_token) {
        return Ok(Ok(()));
    }
    let task = match stored {
        Some(task) => Some(task),
        None => tasks::find_task(conn, report.task_key).await?,
    };
    let Some(task) = task else {
        return Ok(Err(format!("task {} does not exist", report.task_key)));
    };
    let Some(function) = plans.functions.get(conn, task.function_key).await? else {
        return Ok(Err(format!(
            "function {} does not exist",
            task.function_key
        )));
    };
    Ok(assignment::register_outputs(
        &task,
        &function,
        &report.outputs,
        now,
        registered,
    ))
}

/// Tells the plans whose tasks wait for a build that has ended how it ended.
async fn apply_ended_builds(
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    now: Timestamp,
) -> Result<(), StoreError> {
    for (plan, function, status) in store::builds::waits_on_ended_builds(conn).await? {
        if !plans.states.contains_key(&plan) && !load_plan(conn, plans, plan).await? {
            continue;
        }
        plans.functions.forget(function);
        work.apply(
            plans,
            plan,
            Event::FunctionChanged { function, status },
            now,
        );
    }
    Ok(())
}

/// Adds tasks to a stored plan: validated against what is stored, then fed to the core, which
/// decides their statuses from the plan's current state; the plan runs again if it had ended.
/// A resubmitted message gets the same answer.
async fn add_tasks(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    message: &AddTasks,
    meta: &Meta,
    now: Timestamp,
) -> Result<SubmissionReply, StoreError> {
    let plan_key = message.compute_plan_key;
    let rejected = |error: &str, details: Vec<ErrorDetail>| SubmissionReply::Rejected {
        compute_plan_key: Some(plan_key),
        error: error.to_owned(),
        details,
    };
    let principal = sender(context, conn, meta).await?;
    if let Some((error, message)) = auth::refusal(&principal, Action::SubmitPlans, None) {
        return Ok(rejected(
            error,
            vec![ErrorDetail {
                path: String::new(),
                message,
            }],
        ));
    }
    let record = crate::submission::SubmissionRecord::of(message, &meta.message_id)?;
    // The same message, or the same tasks for the same plan again: the same answer.
    let earlier = match crate::store::submissions::find_by_message(conn, &record.message_id).await?
    {
        Some(row) => Some(row),
        None => crate::store::submissions::find_by_content(conn, plan_key, &record.digest).await?,
    };
    if let Some(row) = earlier {
        if let Some(detail) = crate::submission::reused_message_id(&row, &record) {
            return Ok(rejected(crate::submission::MESSAGE_ID_REUSED, vec![detail]));
        }
        return crate::submission::recorded_reply(row);
    }
    let loaded = plans.states.contains_key(&plan_key) || load_plan(conn, plans, plan_key).await?;
    let reply = 'reply: {
        if !loaded {
            break 'reply rejected(
                "not_found",
                vec![ErrorDetail {
                    path: "compute_plan_key".into(),
                    message: format!("compute plan {plan_key} does not exist"),
                }],
            );
        }
        let Some(plan) = plans
            .states
            .get(&plan_key)
            .map(|state| state.plan().clone())
        else {
            break 'reply rejected("internal", Vec::new());
        };
        if let Some((error, message)) =
            auth::refusal(&principal, Action::SubmitPlans, Some(&plan.owner))
        {
            // Not recorded: the same message may succeed once its sender has the right.
            return Ok(rejected(
                error,
                vec![ErrorDetail {
                    path: "compute_plan_key".into(),
                    message,
                }],
            ));
        }
        let known = crate::submission::load_known_assets(conn, &message.tasks).await?;
        let limits = models::validation::plan::Limits::DEFAULT;
        let validated = match models::validation::plan::validate_tasks(
            &message.tasks,
            &known.context(&plan.owner, &limits),
        ) {
            Ok(validated) => validated,
            Err(errors) => {
                break 'reply rejected(
                    "invalid_submission",
                    errors.iter().map(ErrorDetail::from).collect(),
                );
            }
        };
        let new_tasks: Vec<Task> = validated
            .into_iter()
            .map(|task| crate::submission::new_task(task, &plan, None, now))
            .collect();
        let nodes: Vec<TaskNode> = new_tasks
            .iter()
            .map(|task| {
                let retry = known
                    .functions
                    .get(&task.function_key)
                    .map(|function| function.retry.clone())
                    .unwrap_or_default();
                to_node(TaskState::from(task), task.parent_keys(), retry)
            })
            .collect();
        let event = Event::TasksAdded { tasks: nodes };
        if let Some(reason) = work.apply_or_refusal(plans, plan_key, event, now) {
            break 'reply rejected(
                "invalid_submission",
                vec![ErrorDetail {
                    path: "tasks".into(),
                    message: reason,
                }],
            );
        }
        for task in &new_tasks {
            plans.plan_of.insert(task.key, plan_key);
            plans
                .requirements
                .insert(task.key, task.requirements.clone());
        }
        work.added_tasks.extend(new_tasks);
        let counters = plans
            .states
            .get(&plan_key)
            .map(|state| (state.plan().counters.task_count, state.plan().status));
        match counters {
            Some((task_count, status)) => SubmissionReply::Accepted {
                compute_plan_key: plan_key,
                task_count,
                status,
            },
            None => rejected("internal", Vec::new()),
        }
    };
    work.submission_rows
        .push(record.row(Some(plan_key), &reply, now)?);
    Ok(reply)
}

/// Applies a cancel request from a sender allowed to cancel the plan's tasks (its owner's
/// producers, operators, administrators).
async fn cancel(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    request: &CancelRequest,
    meta: &Meta,
    now: Timestamp,
) -> Result<CancelReply, StoreError> {
    let (plan, event) = match request {
        CancelRequest::Plan {
            compute_plan_key,
            reason,
        } => {
            let loaded = plans.states.contains_key(compute_plan_key)
                || load_plan(conn, plans, *compute_plan_key).await?;
            if !loaded {
                return Ok(CancelReply::Refused {
                    reason: format!("compute plan {compute_plan_key} does not exist"),
                });
            }
            let event = Event::CancelPlan {
                reason: reason.clone(),
            };
            (*compute_plan_key, event)
        }
        CancelRequest::Task { task_key, reason } | CancelRequest::Abort { task_key, reason } => {
            let Some(plan) = plan_of(conn, plans, *task_key).await? else {
                return Ok(CancelReply::Refused {
                    reason: format!("task {task_key} does not exist"),
                });
            };
            let event = if matches!(request, CancelRequest::Abort { .. }) {
                Event::AbortTask {
                    task: *task_key,
                    reason: reason.clone(),
                }
            } else {
                Event::CancelTask {
                    task: *task_key,
                    reason: reason.clone(),
                }
            };
            (plan, event)
        }
    };
    let principal = sender(context, conn, meta).await?;
    let owner = plans
        .states
        .get(&plan)
        .map(|state| state.plan().owner.clone());
    if let Some((error, message)) = auth::refusal(&principal, Action::CancelPlans, owner.as_ref()) {
        return Ok(CancelReply::Refused {
            reason: format!("{error}: {message}"),
        });
    }
    // A request sent again under its message id (a redelivery after a crash between the
    // commit and the ack, or a producer's retry) gets the answer the first one got.
    let record = if meta.message_id.is_empty() {
        None
    } else {
        Some(crate::submission::SubmissionRecord::of(
            request,
            &meta.message_id,
        )?)
    };
    if let Some(record) = &record
        && let Some(row) =
            crate::store::submissions::find_by_message(conn, &record.message_id).await?
    {
        if let Some(detail) = crate::submission::reused_message_id(&row, record) {
            return Ok(CancelReply::Refused {
                reason: format!(
                    "{}: {}",
                    crate::submission::MESSAGE_ID_REUSED,
                    detail.message
                ),
            });
        }
        return crate::submission::recorded_reply(row);
    }
    tracing::info!("cancel requested by {}: {request:?}", principal.name());
    let reply = match work.apply_or_refusal(plans, plan, event, now) {
        None => CancelReply::Accepted,
        Some(reason) => CancelReply::Refused { reason },
    };
    if let Some(record) = record {
        work.submission_rows
            .push(record.row(Some(plan), &reply, now)?);
    }
    Ok(reply)
}

/// Who sent `meta`'s message (see [`auth::principal_of_message`]).
async fn sender(
    context: &Context,
    conn: &mut AsyncPgConnection,
    meta: &Meta,
) -> Result<Principal, StoreError> {
    auth::principal_of_message(
        conn,
        meta,
        context.broker.user(),
        &context.config.anonymous_roles,
    )
    .await
}

/// Decides a worker's registration (SPEC.md §8): its owner is the RabbitMQ user it connects
/// as, which RabbitMQ vouches for, and must be an enabled baton user with the `worker` role,
/// acting for the organization the worker registers for; a worker still active under the
/// same identifier, or one that belongs to another owner, is refused.
async fn register(
    context: &Context,
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    registration: &WorkerRegistration,
    meta: &Meta,
    now: Timestamp,
) -> Result<RegistrationReply, StoreError> {
    let worker_id = registration.worker_id.clone();
    let refuse = |reason: String| RegistrationReply::Refused {
        worker_id: worker_id.clone(),
        reason,
    };
    let principal = sender(context, conn, meta).await?;
    if let Some((_, message)) = auth::refusal(&principal, Action::ConnectWorker, None) {
        return Ok(refuse(message));
    }
    let Some(owner) = principal.user.clone() else {
        return Ok(refuse(
            "a worker's owner must be a baton user: connect as one".to_owned(),
        ));
    };
    if principal.organization.as_ref() != Some(&registration.organization)
        && !principal.has_role(models::Role::Administrator)
    {
        return Ok(refuse(format!(
            "user {owner} acts for organization {}, not {}",
            principal
                .organization
                .as_ref()
                .map_or("none", |org| org.as_str()),
            registration.organization
        )));
    }
    if catalog::find_organization(conn, &registration.organization, None)
        .await?
        .is_none()
    {
        return Ok(refuse(format!(
            "organization {} is not registered",
            registration.organization
        )));
    }
    if registration.executor_limit == 0 {
        return Ok(refuse("executor_limit must be at least 1".to_owned()));
    }
    let existing = workers::find_worker(conn, &worker_id).await?;
    let silent_after = chrono::Duration::from_std(context.config.heartbeat_interval * 3)
        .unwrap_or_else(|_| chrono::Duration::seconds(30));
    if let Some(existing) = &existing {
        if existing.owner != owner {
            return Ok(refuse(format!(
                "worker {worker_id} belongs to another owner"
            )));
        }
        let alive = existing.is_active
            && existing
                .last_heartbeat
                .is_some_and(|beat| now - beat < silent_after);
        if alive {
            return Ok(refuse(format!(
                "worker {worker_id} is already active; retry once it has been silent for {}s",
                silent_after.num_seconds()
            )));
        }
    }
    let mut properties = registration.properties.clone();
    for device in &registration.devices {
        properties
            .entry("device".to_owned())
            .or_insert_with(|| device.device_type.clone());
    }
    let worker = models::Worker {
        identifier: worker_id.clone(),
        owner,
        organization: registration.organization.clone(),
        version: registration.version.clone(),
        display_name: if registration.display_name.is_empty() {
            worker_id.to_string()
        } else {
            registration.display_name.clone()
        },
        properties,
        executor_limit: registration.executor_limit,
        is_enabled: existing.as_ref().is_none_or(|w| w.is_enabled),
        is_active: true,
        should_disconnect: false,
        last_heartbeat: Some(now),
        creation_date: existing.as_ref().map_or(now, |w| w.creation_date),
        update_date: now,
    };
    let devices = registration
        .devices
        .iter()
        .map(|device| models::Device {
            worker: worker_id.clone(),
            id: device.id.clone(),
            device_type: device.device_type.clone(),
            input_type: device.input_type.clone(),
            parameter_schema: device.parameter_schema.clone(),
            is_active: true,
            last_seen: Some(now),
        })
        .collect();
    if !worker.is_enabled {
        return Ok(refuse(format!("worker {worker_id} is disabled")));
    }
    let queues = tasks::pending_requirement_sets(conn)
        .await?
        .into_iter()
        .filter(|set| set.is_satisfied_by(&worker.properties))
        .collect();
    plans.registered.remove(&worker_id);
    work.registrations.push((worker, devices));
    Ok(RegistrationReply::Registered {
        queues,
        worker_id,
        heartbeat_interval_secs: u32::try_from(context.config.heartbeat_interval.as_secs())
            .unwrap_or(u32::MAX),
        lease_secs: u32::try_from(context.config.lease_duration.num_seconds()).unwrap_or(u32::MAX),
        refills: context.config.follow_ups,
    })
}

/// Tells plans whose tasks have a parent in another plan that the parent ended, until nothing
/// more ends: a DONE parent promotes its children, a FAILED or CANCELED one cancels them.
async fn propagate_to_other_plans(
    conn: &mut AsyncPgConnection,
    plans: &mut Plans,
    work: &mut Work,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut seen = 0;
    loop {
        let ended: HashMap<TaskKey, TaskStatus> = work.effects[seen..]
            .iter()
            .filter_map(|effect| match effect {
                Effect::TaskChanged {
                    task,
                    status_changed: true,
                    ..
                } if task.status.is_terminal() => Some((task.key, task.status)),
                _ => None,
            })
            .collect();
        seen = work.effects.len();
        if ended.is_empty() {
            return Ok(());
        }
        let keys: Vec<TaskKey> = ended.keys().copied().collect();
        work.ended.extend(&keys);
        let edges = edges_from(conn, work, &keys).await?;
        for (parent, plan) in children_in_other_plans(conn, plans, edges).await? {
            if !plans.states.contains_key(&plan) && !load_plan(conn, plans, plan).await? {
                continue;
            }
            let status = ended[&parent];
            work.apply(
                plans,
                plan,
                Event::ExternalParentEnded {
                    task: parent,
                    status,
                },
                now,
            );
        }
    }
}

/// The edges from `parents` to their children, `(parent, child)`: those stored and those of
/// the tasks the batch adds, which are stored with its commit. Kept in `work`, for the commit
/// to check that no other child was stored meanwhile.
async fn edges_from(
    conn: &AsyncPgConnection,
    work: &mut Work,
    parents: &[TaskKey],
) -> Result<Vec<(TaskKey, TaskKey)>, StoreError> {
    // Those read with the batch's tasks are not read again.
    let (read, unread): (Vec<TaskKey>, Vec<TaskKey>) = parents
        .iter()
        .partition(|parent| work.children_read.contains_key(parent));
    let mut edges = tasks::edges_from(conn, &unread).await?;
    for parent in read {
        edges.extend(
            work.children_read[&parent]
                .iter()
                .map(|&child| (parent, child)),
        );
    }
    if !work.added_tasks.is_empty() {
        let parents: HashSet<TaskKey> = parents.iter().copied().collect();
        for task in &work.added_tasks {
            for parent in task.parent_keys() {
                if parents.contains(&parent) {
                    edges.push((parent, task.key));
                }
            }
        }
    }
    work.edges_read.extend(edges.iter().copied());
    Ok(edges)
}

/// The tasks `batch`'s attempt reports name, whatever their outcome.
fn reported_tasks(batch: &[Delivery<Incoming>]) -> Vec<TaskKey> {
    let mut reported: Vec<TaskKey> = batch
        .iter()
        .flat_map(|delivery| match &delivery.message {
            Incoming::Status(report) => vec![report.task_key],
            Incoming::Statuses(batch) => batch.reports.iter().map(|r| r.task_key).collect(),
            _ => Vec::new(),
        })
        .collect();
    reported.sort_unstable();
    reported.dedup();
    reported
}

/// The plans, other than their own, that the children of `edges` belong to: `(parent, plan)`,
/// once per child. The parents are tasks of plans in memory, whose children in the same plan
/// are there too; the plans of the other children are read from memory or, for plans not
/// loaded, from the store.
async fn children_in_other_plans(
    conn: &AsyncPgConnection,
    plans: &Plans,
    edges: Vec<(TaskKey, TaskKey)>,
) -> Result<Vec<(TaskKey, PlanKey)>, StoreError> {
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    for (parent, child) in edges {
        let own = plans.plan_of.get(&parent).copied();
        match plans.plan_of.get(&child).copied() {
            Some(plan) if Some(plan) == own => {}
            Some(plan) => found.push((parent, plan)),
            None => unknown.push((parent, child, own)),
        }
    }
    if !unknown.is_empty() {
        let children: Vec<TaskKey> = unknown.iter().map(|(_, child, _)| *child).collect();
        let stored: HashMap<TaskKey, PlanKey> = tasks::plans_of_tasks(conn, &children)
            .await?
            .into_iter()
            .collect();
        for (parent, child, own) in unknown {
            if let Some(&plan) = stored.get(&child)
                && Some(plan) != own
            {
                found.push((parent, plan));
            }
        }
    }
    Ok(found)
}

/// Writes a batch's effects in one transaction; returns the outbox rows to hand to the relay.
async fn commit(
    conn: &mut AsyncPgConnection,
    plans: &Plans,
    work: &Work,
    now: Timestamp,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut history = Vec::new();
    let mut outbox = Vec::new();
    // A task or plan changed by several events of the batch is written once, in its last state.
    let mut last_task: HashMap<TaskKey, &TaskNode> = HashMap::new();
    let mut last_plan: HashMap<PlanKey, &models::ComputePlan> = HashMap::new();
    for effect in &work.effects {
        match effect {
            Effect::TaskChanged { task, .. } => {
                last_task.insert(task.key, task);
            }
            Effect::PlanChanged { plan } => {
                last_plan.insert(plan.key, plan);
            }
            _ => {}
        }
    }
    // Tasks the batch started: a held outbox row of theirs is deleted unpublished.
    let mut started: Vec<TaskKey> = Vec::new();
    for effect in &work.effects {
        match effect {
            Effect::TaskChanged {
                task,
                reason,
                status_changed,
            } if *status_changed => {
                if task.status == TaskStatus::Doing
                    && last_task
                        .get(&task.key)
                        .is_some_and(|last| last.status == TaskStatus::Doing)
                {
                    started.push(task.key);
                }
                history.push(state_change(task, reason, now));
            }
            // A task no longer ready by the end of the batch (granted as a follow-up, or
            // failed when its assignment could not be read) does not go through its queue.
            Effect::Enqueue { task, .. }
                if last_task
                    .get(task)
                    .is_some_and(|node| node.status != TaskStatus::Todo) => {}
            Effect::Enqueue {
                task,
                routing_key,
                not_before,
            } => {
                let Some(plan_key) = plans.plan_of.get(task) else {
                    continue;
                };
                let Some(node) = plans
                    .states
                    .get(plan_key)
                    .and_then(|state| state.task(*task))
                else {
                    continue;
                };
                let message = TaskReady {
                    task_key: *task,
                    compute_plan_key: *plan_key,
                    function_key: node.function_key,
                    requirements: plans.requirements.get(task).cloned().unwrap_or_default(),
                    attempt: node.attempt_count.checked_add(1).map(Attempt),
                };
                outbox.push(NewOutboxRow {
                    task_key: task.0,
                    routing_key: routing_key.clone(),
                    payload: serde_json::to_value(&message).map_err(|error| {
                        StoreError::Encode {
                            what: "task.ready message",
                            reason: error.to_string(),
                        }
                    })?,
                    created_at: now,
                    available_at: *not_before,
                    // The relay holds what its window does not take (`publish_ahead`).
                    held: false,
                });
            }
            _ => {}
        }
    }
    // Added tasks are stored first, with their registration in the history; the core's
    // changes to them follow.
    let added_history: Vec<TaskStateChange> = work
        .added_tasks
        .iter()
        .map(|task| TaskStateChange {
            task_key: task.key,
            timestamp: now,
            status: task.status,
            reason: "registered".to_owned(),
            attempt: None,
        })
        .collect();
    // Rows ready now are handed to the relay after the commit, hidden from its polling
    // meanwhile; a retry's backoff waits for polling.
    let (mut ready, later): (Vec<NewOutboxRow>, Vec<NewOutboxRow>) = outbox
        .into_iter()
        .partition(|row| row.available_at.is_none_or(|at| at <= now));
    for row in &mut ready {
        row.available_at = Some(now + outbox_relay::HANDOVER_GRACE);
    }
    let Some(epoch) = plans.epoch else {
        return Err(StoreError::NotLeading(
            "this dispatcher has not taken the lead".to_owned(),
        ));
    };
    conn.transaction(async |conn| {
        // First the fences: the lead (`store::leadership`), and the ended tasks' end locks
        // (`tasks::lock_task_ends`). Sent with the batch's writes when there are no added tasks
        // to store before them; their answers are checked before the commit all the same.
        let shared: &AsyncPgConnection = conn;
        let fences = async || {
            futures::try_join!(
                leadership::hold(shared, epoch),
                tasks::lock_task_ends(shared, &work.ended, EndLock::Exclusive),
            )
            .map(|_| ())
        };
        let adding = !work.added_tasks.is_empty() || !work.submission_rows.is_empty();
        if adding {
            fences().await?;
            tasks::insert_tasks(shared, &work.added_tasks).await?;
            tasks::insert_state_changes(shared, &added_history).await?;
            for row in &work.submission_rows {
                crate::store::submissions::insert_submission(shared, row).await?;
            }
        }
        // A task's result goes with its state, in the same row version.
        let mut results: HashMap<TaskKey, (&[models::StepState], &serde_json::Value)> = work
            .results
            .iter()
            .map(|(task, steps, output)| (*task, (steps.as_slice(), output)))
            .collect();
        let updates: Vec<TaskStateUpdate<'_>> = last_task
            .values()
            .map(|task| TaskStateUpdate {
                result: results.remove(&task.key),
                key: task.key,
                status: task.status,
                waiting_reason: task.waiting_reason,
                error_type: task.error_type,
                error_message: task.error_message.as_deref(),
                cancel_requested: task.cancel_requested,
                abort_requested: task.abort_requested,
                attempt_count: task.attempt_count,
                lease: task.lease.as_ref(),
                not_before: task.not_before,
                worker_id: task.worker_id.as_ref(),
                start_date: task.start_date,
                end_date: task.end_date,
                update_date: now,
            })
            .collect();
        // Results of tasks the batch did not otherwise change, if any.
        let unchanged: Vec<_> = work
            .results
            .iter()
            .filter(|(task, _, _)| results.contains_key(task))
            .cloned()
            .collect();
        // Pipelined: the statements below do not depend on each other's results, so they are
        // all sent before the first answer is awaited (PostgreSQL still runs them one after
        // the other, in this order), instead of a round trip each.
        let plan_updates = futures::future::try_join_all(
            last_plan
                .values()
                .map(|plan| plans::update_plan(shared, plan)),
        );
        started.sort_unstable();
        started.dedup();
        let (_, _, _, _, _, handed, _, _, _, _, _, edges, _) = futures::try_join!(
            async {
                match adding {
                    true => Ok(()),
                    false => fences().await,
                }
            },
            tasks::update_task_states(shared, &updates),
            plan_updates,
            tasks::insert_state_changes(shared, &history),
            tasks::insert_outbox_rows(shared, &later),
            tasks::insert_outbox_rows(shared, &ready),
            tasks::set_task_results(shared, &unchanged),
            execution::insert_models(shared, &work.registered.models),
            execution::insert_performances(shared, &work.registered.performances),
            execution::insert_log_lines(shared, &work.log_lines),
            execution::insert_measurements(shared, &work.samples),
            // Under the end locks: children stored since they were read before the commit.
            tasks::edges_from(shared, &work.ended),
            tasks::delete_held_outbox_rows(shared, &started),
        )?;
        if let Some((parent, child)) = edges
            .into_iter()
            .find(|edge| !work.edges_read.contains(edge))
        {
            return Err(StoreError::Conflict(format!(
                "task {child} was stored as a child of task {parent} while the batch ended it"
            )));
        }
        for (worker, devices) in &work.registrations {
            workers::upsert_worker(conn, worker).await?;
            workers::upsert_devices(conn, devices).await?;
        }
        for worker in &work.heartbeats {
            workers::record_heartbeat(conn, worker, now).await?;
        }
        for (worker, devices) in &work.device_updates {
            workers::upsert_devices(conn, devices).await?;
            let ids: Vec<String> = devices.iter().map(|d| d.id.to_string()).collect();
            workers::deactivate_other_devices(conn, worker, &ids).await?;
        }
        Ok::<_, StoreError>(handed)
    })
    .await
}

/// The history row of `task`'s change of status at `now`, for `reason`.
pub(crate) fn state_change(task: &TaskNode, reason: &str, now: Timestamp) -> TaskStateChange {
    TaskStateChange {
        task_key: task.key,
        timestamp: now,
        status: task.status,
        reason: reason.to_owned(),
        attempt: task
            .lease
            .as_ref()
            .map(|lease| lease.attempt)
            .or((task.attempt_count > 0).then_some(Attempt(task.attempt_count))),
    }
}

/// After a commit: hands the ready tasks to the outbox relay, answers claims and registrations,
/// sends orders.
async fn announce(context: &Context, publisher: &Publisher, work: &Work, handed: Vec<OutboxRow>) {
    // Ready tasks first: the relay publishes them while the replies go out.
    context.hand_over(handed);
    for (meta, reply) in &work.submission_replies {
        if meta.reply_to.is_some()
            && let Err(error) = broker::rpc::reply(publisher, meta, reply).await
        {
            tracing::warn!("answering submission {}: {error}", meta.message_id);
        }
    }
    for (meta, reply) in &work.cancel_replies {
        if meta.reply_to.is_some()
            && let Err(error) = broker::rpc::reply(publisher, meta, reply).await
        {
            tracing::warn!("answering cancel request {}: {error}", meta.message_id);
        }
    }
    for (meta, reply) in &work.registration_replies {
        if let Err(error) = broker::rpc::reply(publisher, meta, reply).await {
            tracing::warn!("answering registration {}: {error}", meta.message_id);
        }
        if let RegistrationReply::Registered { worker_id, .. } = reply {
            tracing::info!(worker.id = %worker_id, "worker {worker_id} registered");
        }
    }
    for (meta, reply) in &work.build_replies {
        if let Err(error) = broker::rpc::reply(publisher, meta, reply).await {
            // The worker went away; a granted build lapses with its lease.
            tracing::warn!("answering build claim {}: {error}", meta.message_id);
        }
    }
    // Claim replies are many: handed to the connection all at once (one write, not one
    // wake-up of lapin's I/O loop per reply), their confirms awaited off the loop, which goes
    // on with the next batch meanwhile.
    let single = work
        .replies
        .iter()
        .map(|(meta, reply)| broker::rpc::send_reply(publisher, meta, reply).boxed());
    let batches = work
        .batch_replies
        .iter()
        .map(|(meta, reply)| broker::rpc::send_reply(publisher, meta, reply).boxed());
    // Follow-ups go to their workers' control queues, with the replies.
    let assigned = work.assigned.iter().map(|(worker, assigned)| {
        let key = topology::worker_control_key(worker);
        async move {
            publisher
                .send(CONTROL_EXCHANGE, &key, assigned, Meta::default())
                .await
        }
        .boxed()
    });
    // Tasks granted in kept slots, one message per worker.
    let mut refilled: HashMap<&WorkerId, Vec<TaskAssigned>> = HashMap::new();
    for (worker, assigned) in &work.refilled {
        refilled.entry(worker).or_default().push(assigned.clone());
    }
    let refilled_workers: Vec<String> = refilled
        .keys()
        .map(|worker| format!("tasks refilled on worker {worker}"))
        .collect();
    let refilled = refilled.into_iter().map(|(worker, mut assignments)| {
        let key = topology::worker_control_key(worker);
        async move {
            if assignments.len() == 1
                && let Some(assigned) = assignments.pop()
            {
                publisher
                    .send(CONTROL_EXCHANGE, &key, &assigned, Meta::default())
                    .await
            } else {
                let batch = TaskAssignedBatch { assignments };
                publisher
                    .send(CONTROL_EXCHANGE, &key, &batch, Meta::default())
                    .await
            }
        }
        .boxed()
    });
    // Kept slots that get nothing are freed, one order per worker.
    let mut released: HashMap<&WorkerId, Vec<TaskKey>> = HashMap::new();
    for (worker, task) in &work.released {
        released.entry(worker).or_default().push(*task);
    }
    let released_workers: Vec<String> = released
        .keys()
        .map(|worker| format!("released slots of worker {worker}"))
        .collect();
    let released = released.into_iter().map(|(worker, task_keys)| {
        let key = topology::worker_control_key(worker);
        let order = ControlOrder::Released { task_keys };
        async move {
            publisher
                .send(CONTROL_EXCHANGE, &key, &order, Meta::default())
                .await
        }
        .boxed()
    });
    let sent = futures::future::join_all(
        single
            .chain(batches)
            .chain(assigned)
            .chain(refilled)
            .chain(released),
    )
    .await;
    let metas = work.replies.iter().map(|(meta, _)| meta.message_id.clone());
    let batch_metas = work
        .batch_replies
        .iter()
        .map(|(meta, _)| meta.message_id.clone());
    let assigned_tasks = work
        .assigned
        .iter()
        .map(|(_, assigned)| format!("assignment of task {}", assigned.grant.task_key));
    let mut confirms = Vec::with_capacity(sent.len());
    for (what, sent) in metas
        .chain(batch_metas)
        .chain(assigned_tasks)
        .chain(refilled_workers)
        .chain(released_workers)
        .zip(sent)
    {
        match sent {
            Ok(confirm) => confirms.push((what, confirm)),
            // The worker went away; its claim, if granted, lapses with its lease.
            Err(error) => tracing::warn!("answering claim {what}: {error}"),
        }
    }
    if !confirms.is_empty() {
        tokio::spawn(async move {
            for (message_id, confirm) in confirms {
                if let Err(error) = confirm.confirmed().await {
                    tracing::warn!("answering claim {message_id}: {error}");
                }
            }
        });
    }
    for effect in &work.effects {
        if let Effect::SendOrder {
            task,
            worker,
            order,
        } = effect
        {
            // A DOING task always has a holder; its orders go to that worker's queue.
            let Some(worker) = worker else {
                tracing::warn!("order for task {task} not sent: no worker holds it");
                continue;
            };
            let message = match order {
                Order::Cancel => ControlOrder::Cancel {
                    task_key: *task,
                    reason: "canceled".to_owned(),
                },
                Order::Abort => ControlOrder::Abort {
                    task_key: *task,
                    reason: "aborted".to_owned(),
                },
            };
            let key = topology::worker_control_key(worker);
            if let Err(error) = publisher
                .publish(CONTROL_EXCHANGE, &key, &message, Meta::default())
                .await
            {
                // The lease lapses and the task ends then.
                tracing::warn!("order for task {task} (worker {worker}) not delivered: {error}");
            }
        }
    }
    for (worker, task, why) in &work.void_ahead {
        let message = ControlOrder::Abort {
            task_key: *task,
            reason: format!("started ahead, not granted: {why}"),
        };
        let key = topology::worker_control_key(worker);
        if let Err(error) = publisher
            .publish(CONTROL_EXCHANGE, &key, &message, Meta::default())
            .await
        {
            // Its report is refused: no lease holds it.
            tracing::warn!("abort of task {task} (worker {worker}) not delivered: {error}");
        }
    }
}

/// Applies a batch of deliveries: core, one transaction, announcements, acks.
async fn apply_batch(
    context: &Context,
    publisher: &Publisher,
    plans: &mut Plans,
    batch: Vec<Delivery<Incoming>>,
    received: std::time::Instant,
) -> anyhow::Result<()> {
    // Whoever receives events was given `baton.dispatcher`: it leads.
    if plans.epoch.is_none()
        && let Err(error) = lead(context, plans).await
    {
        tracing::warn!("taking the lead failed, retrying: {error}");
        tokio::time::sleep(RETRY_DELAY).await;
        for delivery in batch {
            delivery.requeue().await?;
        }
        return Ok(());
    }
    hold_started(context, plans);
    let now = Utc::now();
    let started = std::time::Instant::now();
    let mut conn = store::connection(&context.pool).await?;
    let mut work = Work::default();
    let mut failure = None;
    // Claims and DONE reports read their stored task: all of them in one query.
    let mut named: Vec<TaskKey> = batch
        .iter()
        .flat_map(|delivery| match &delivery.message {
            Incoming::Claim(request) => vec![request.task_key],
            Incoming::Claims(batch) => batch.task_keys.clone(),
            Incoming::Status(report) if report.outcome == ReportedOutcome::Done => {
                vec![report.task_key]
            }
            Incoming::Statuses(batch) => batch
                .reports
                .iter()
                .filter(|report| report.outcome == ReportedOutcome::Done)
                .map(|report| report.task_key)
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    named.extend(follow_up_candidates(context, plans, &batch));
    named.extend(refill_candidates(context, plans, &batch));
    named.sort_unstable();
    named.dedup();
    // The reported tasks' children, in the same round trip (pipelined): the batch ends most
    // of them, and reads their edges before it commits.
    let reported = reported_tasks(&batch);
    if !named.is_empty() || !reported.is_empty() {
        let found = async {
            match named.is_empty() {
                true => Ok(Vec::new()),
                false => tasks::find_tasks(&conn, &named).await,
            }
        };
        match futures::try_join!(found, tasks::edges_from(&conn, &reported)) {
            Ok((found, edges)) => {
                work.stored_tasks = found.into_iter().map(|t| (t.key, t)).collect();
                work.children_read = reported.iter().map(|&task| (task, Vec::new())).collect();
                for (parent, child) in edges {
                    work.children_read.entry(parent).or_default().push(child);
                }
            }
            Err(error) => failure = Some(error),
        }
    }
    let found_at = started.elapsed();
    for delivery in &batch {
        if failure.is_some() {
            break;
        }
        if let Err(error) = take(context, &mut conn, plans, &mut work, delivery, now).await {
            failure = Some(error);
            break;
        }
    }
    let taken_at = started.elapsed();
    if failure.is_none()
        && let Err(error) = grant_follow_ups(context, &mut conn, plans, &mut work, now).await
    {
        failure = Some(error);
    }
    let followed_at = started.elapsed();
    if failure.is_none()
        && let Err(error) = refill_kept_slots(context, &mut conn, plans, &mut work, now).await
    {
        failure = Some(error);
    }
    let refilled_at = started.elapsed();
    if failure.is_none()
        && let Err(error) = propagate_to_other_plans(&mut conn, plans, &mut work, now).await
    {
        failure = Some(error);
    }
    let read = started.elapsed();
    let mut handed = Vec::new();
    if failure.is_none() {
        match commit(&mut conn, plans, &work, now).await {
            Ok(rows) => handed = rows,
            Err(error) => failure = Some(error),
        }
    }
    if let Some(error) = failure {
        // Memory may be ahead of the database: forget, rebuild later, and retry the batch.
        tracing::warn!("applying {} events failed, retrying: {error}", batch.len());
        context.config.metrics.count_batch_retry();
        if let StoreError::NotLeading(_) = error {
            context.config.metrics.set_leading(false);
            step_down(plans);
        }
        for plan in &work.touched {
            plans.forget(*plan);
        }
        tokio::time::sleep(RETRY_DELAY).await;
        for delivery in batch {
            delivery.requeue().await?;
        }
        return Ok(());
    }
    let committed = started.elapsed();
    plans.queue_enqueued(&work.effects);
    announce(context, publisher, &work, handed).await;
    tracing::debug!(
        "applied {} events ({} tasks read): read at {found_at:?}, events taken at {taken_at:?}, follow-ups granted at {followed_at:?}, refills at {refilled_at:?}, read and decided in {read:?}, committed at {committed:?}, answered at {:?}",
        batch.len(),
        named.len(),
        started.elapsed()
    );
    let metrics = &context.config.metrics;
    metrics.observe_event_batch(batch.len());
    metrics.count_follow_ups(
        work.assigned
            .iter()
            .filter(|(_, assigned)| !assigned.speculative)
            .count(),
    );
    metrics.count_started_ahead(work.started_ahead.len());
    metrics.count_refills(
        work.refilled
            .iter()
            .filter(|(_, assigned)| !assigned.speculative)
            .count(),
    );
    metrics.count_hand_backs(work.hand_backs);
    let claims = work.replies.len()
        + work
            .batch_replies
            .iter()
            .map(|(_, reply)| reply.replies.len())
            .sum::<usize>();
    for _ in 0..claims {
        metrics.observe_claim_latency(received.elapsed());
    }
    // All at once, so lapin writes them together rather than one wake-up and write per ack.
    // An ack lost with a connection means a redelivery, which the core refuses harmlessly.
    for acked in futures::future::join_all(batch.into_iter().map(Delivery::ack)).await {
        if let Err(error) = acked {
            tracing::debug!("ack lost: {error}");
        }
    }
    let finished: Vec<PlanKey> = work
        .touched
        .iter()
        .filter(|plan| {
            plans
                .states
                .get(plan)
                .is_some_and(|state| !state.is_active())
        })
        .copied()
        .collect();
    for plan in finished {
        plans.forget(plan);
    }
    Ok(())
}

/// Lapses expired leases in every cached plan.
async fn tick(context: &Context, publisher: &Publisher, plans: &mut Plans) -> anyhow::Result<()> {
    if plans.epoch.is_none() {
        ask_for_the_lead(context, publisher, plans).await;
        return Ok(());
    }
    hold_started(context, plans);
    let now = Utc::now();
    let silent_after = chrono::Duration::from_std(context.config.heartbeat_interval * 3)
        .unwrap_or_else(|_| chrono::Duration::seconds(30));
    let mut conn = store::connection(&context.pool).await?;
    // Silence is measured in heartbeat intervals: checking more often than one finds nothing new.
    let sweep_due = plans
        .silence_checked
        .is_none_or(|at| at.elapsed() >= context.config.heartbeat_interval);
    if sweep_due {
        plans.silence_checked = Some(std::time::Instant::now());
        for worker in workers::mark_silent_workers_inactive(&mut conn, now - silent_after).await? {
            tracing::warn!(worker.id = %worker, "worker {worker} is silent: marked inactive");
            context.offers.withdraw(&worker);
            plans.registered.remove(&worker);
        }
    }
    let builds_due = plans
        .builds_checked
        .is_none_or(|at| at.elapsed() >= BUILD_SWEEP);
    let mut work = Work::default();
    if builds_due {
        plans.builds_checked = Some(std::time::Instant::now());
        if let Err(error) = builds::publish_pending(context, &mut conn, publisher, now).await {
            tracing::warn!("publishing builds: {error:#}");
        }
        apply_ended_builds(&mut conn, plans, &mut work, now).await?;
    }
    let due: Vec<PlanKey> = plans
        .states
        .iter()
        // Only lease expiries need a tick: a retry's backoff is its outbox row's availability.
        .filter(|(_, state)| {
            state
                .next_lease_expiry()
                .is_some_and(|deadline| deadline <= now)
        })
        .map(|(key, _)| *key)
        .collect();
    if due.is_empty() && work.touched.is_empty() {
        return Ok(());
    }
    for plan in due {
        work.apply(plans, plan, Event::Tick, now);
    }
    let outcome = match propagate_to_other_plans(&mut conn, plans, &mut work, now).await {
        Ok(()) => commit(&mut conn, plans, &work, now).await,
        Err(error) => Err(error),
    };
    let handed = match outcome {
        Ok(handed) => handed,
        Err(error) => {
            tracing::warn!("applying lease expiries failed, retrying: {error}");
            context.config.metrics.count_batch_retry();
            if let StoreError::NotLeading(_) = error {
                context.config.metrics.set_leading(false);
                step_down(plans);
            }
            for plan in &work.touched {
                plans.forget(*plan);
            }
            return Ok(());
        }
    };
    plans.queue_enqueued(&work.effects);
    announce(context, publisher, &work, handed).await;
    Ok(())
}

/// Takes the lead (`store::leadership`) and loads every plan with a running task, so their
/// leases are watched from the start. Whatever was held before is forgotten: another
/// dispatcher may have changed it since.
async fn lead(context: &Context, plans: &mut Plans) -> Result<(), StoreError> {
    let mut conn = store::connection(&context.pool).await?;
    let app_id = &context.config.broker.app_id;
    let epoch = leadership::take(&mut conn, app_id, Utc::now()).await?;
    step_down(plans);
    // Plans the submission consumer started before may have changed under another leader:
    // they are read from the store when needed.
    forget_started(context);
    let running = tasks::plans_with_running_tasks(&mut conn).await?;
    for plan in &running {
        load_plan(&mut conn, plans, *plan).await?;
    }
    plans.epoch = Some(epoch);
    context.config.metrics.set_leading(true);
    tracing::info!(
        "{app_id} leads the event applier (epoch {epoch}), watching the leases of {} plan(s) \
         with running tasks",
        running.len()
    );
    Ok(())
}

/// Forgets everything held in memory and the lead: another dispatcher leads, or this one is
/// about to take the lead again.
fn step_down(plans: &mut Plans) {
    if let Some(epoch) = plans.epoch {
        tracing::warn!(
            "another dispatcher took the lead of the event applier (this one's epoch was {epoch}): forgetting the plans held"
        );
    }
    *plans = Plans::default();
}

/// Drops the plans the submission consumer started tasks of (`Context::started`): they are
/// stored, and a leader reads them when needed.
fn forget_started(context: &Context) {
    context
        .started
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}

/// Asks for the lead, every [`PING_INTERVAL`]: a ping to `baton.dispatcher`, which RabbitMQ
/// delivers to its active consumer. That is this dispatcher if it was given the queue, which
/// then leads; otherwise the leader drops it.
async fn ask_for_the_lead(context: &Context, publisher: &Publisher, plans: &mut Plans) {
    forget_started(context);
    if plans.pinged.is_some_and(|at| at.elapsed() < PING_INTERVAL) {
        return;
    }
    plans.pinged = Some(std::time::Instant::now());
    let ping = DispatcherPing {
        dispatcher: context.config.broker.app_id.clone(),
    };
    // Through the default exchange, which only the dispatcher's user may publish to.
    let sent = match publisher
        .send("", DISPATCHER_QUEUE, &ping, Meta::default())
        .await
    {
        Ok(confirm) => confirm.confirmed().await,
        Err(error) => Err(error),
    };
    if let Err(error) = sent {
        tracing::warn!("asking for the lead of the event applier: {error}");
    }
}

/// Applies events until `shutdown`.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Not leading until an event arrives: the first tick asks for one.
    let mut plans = Plans::default();
    let mut consumer =
        Consumer::<Incoming>::new(&context.broker, DISPATCHER_QUEUE, PREFETCH).await?;
    let publisher = Publisher::new(&context.broker).await?;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {
                tick(&context, &publisher, &mut plans).await?;
                continue;
            }
            next = consumer.next() => next,
        };
        let received = std::time::Instant::now();
        let mut batch = match first {
            None => anyhow::bail!("the event consumer was canceled by RabbitMQ"),
            Some(delivery) => vec![delivery?],
        };
        // Take what is already there, up to a batch, without waiting for more: what arrives
        // while this batch commits makes the next one (group commit), so a lone event is
        // applied at once and a busy queue still gets large batches.
        while batch.len() < BATCH {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => batch.push(delivery?),
                Some(None) => anyhow::bail!("the event consumer was canceled by RabbitMQ"),
                None => break,
            }
        }
        apply_batch(&context, &publisher, &mut plans, batch, received).await?;
    }
}
