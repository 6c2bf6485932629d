//! The worker agent: registers with the dispatcher, heartbeats (renewing the leases of its
//! running attempts), consumes every task queue its properties satisfy (and new ones as the
//! dispatcher announces them), claims each task before running it, obeys cancel, abort and
//! disconnect orders, and shuts down gracefully: it stops taking work, lets running tasks
//! finish until a deadline, then hands the rest back.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use broker::consumer::MessageSet;
use broker::envelope::{DecodeError, Envelope};
use broker::topology::EVENTS_EXCHANGE;
use broker::{Broker, BrokerConfig, Consumer, Delivery, Publisher, RpcClient};
use models::wire::{
    AssignedInput, Assignment, BuildClaim, BuildClaimReply, BuildReady, BuildReport, ClaimReply,
    ControlOrder, Grant, HeldBuild, HeldLease, InputValue, QueueAnnouncement, RegistrationReply,
    ReportedOutcome, ReportedOutput, TaskAssigned, TaskAssignedBatch, TaskReady, TaskStatusReport,
    WireMessage, WorkerHeartbeat, WorkerRegistration,
};
use models::{
    FunctionKey, OrganizationId, Properties, RequirementSet, TaskErrorType, TaskKey, WorkerId,
};

use crate::artifacts::ArtifactStore;
use crate::claims::Claims;
use crate::deck::DeckSizing;
use crate::device::{Device, DeviceScanner, Handler, HandlerContext, Handlers, LocalDevice};
use crate::executor::{self, publish_until_confirmed};
use crate::logs::LogLimits;
use crate::process::Stop;
use crate::reports::Reports;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// RabbitMQ; the worker's owner is the RabbitMQ user it connects as.
    pub broker: BrokerConfig,
    /// Its identifier, unique among workers.
    pub worker_id: WorkerId,
    /// The organization whose tasks it runs.
    pub organization: OrganizationId,
    /// The name shown in user interfaces (the identifier when empty).
    pub display_name: String,
    /// Its properties; its devices add `device=<type>`.
    pub properties: Properties,
    /// How many tasks it runs at once.
    pub executor_limit: u32,
    /// Where attempt workspaces are made.
    pub work_root: PathBuf,
    /// Keep the workspace of a failed attempt for inspection.
    pub keep_failed_workspaces: bool,
    /// Time between SIGTERM and SIGKILL when a task is canceled.
    pub grace: Duration,
    /// How long a stopping worker lets running tasks finish before handing them back.
    pub shutdown_deadline: Duration,
    /// How long a claim waits for the dispatcher's answer.
    pub claim_timeout: Duration,
    /// Log bounds per attempt.
    pub log_limits: LogLimits,
    /// How often the device scanner, if any, is asked for the active devices.
    pub scan_interval: Duration,
}

impl WorkerConfig {
    /// A configuration with the defaults: one task at a time, a 10 s grace period, a 60 s
    /// shutdown deadline.
    pub fn new(broker: BrokerConfig, worker_id: WorkerId, organization: OrganizationId) -> Self {
        WorkerConfig {
            broker,
            worker_id,
            organization,
            display_name: String::new(),
            properties: Properties::new(),
            executor_limit: 1,
            work_root: std::env::temp_dir().join("baton-worker"),
            keep_failed_workspaces: false,
            grace: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(60),
            claim_timeout: Duration::from_secs(30),
            log_limits: LogLimits::default(),
            scan_interval: Duration::from_secs(30),
        }
    }
}

/// Builds a [`Worker`]: devices, in-process handlers, a device scanner.
pub struct WorkerBuilder {
    config: WorkerConfig,
    artifacts: Arc<dyn ArtifactStore>,
    devices: Vec<Arc<dyn Device>>,
    handlers: Handlers,
    scanner: Option<Arc<dyn DeviceScanner>>,
}

impl WorkerBuilder {
    /// Adds a device (the local device is there unless devices are added).
    pub fn device(mut self, device: Arc<dyn Device>) -> Self {
        self.devices.push(device);
        self
    }

    /// Runs tasks of the function named `name` in-process with `handler`, which gets the
    /// task's parameters, input and output paths, a log and a cancellation token.
    pub fn handler<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(HandlerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let handler: Handler =
            Arc::new(move |context| -> BoxFuture<'static, _> { Box::pin(handler(context)) });
        self.handlers.insert(name, handler);
        self
    }

    /// Refreshes the device list with `scanner` every scan interval.
    pub fn scanner(mut self, scanner: Arc<dyn DeviceScanner>) -> Self {
        self.scanner = Some(scanner);
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        let devices = if self.devices.is_empty() {
            vec![Arc::new(LocalDevice::default()) as Arc<dyn Device>]
        } else {
            self.devices
        };
        Worker {
            config: self.config,
            artifacts: self.artifacts,
            devices,
            handlers: self.handlers,
            scanner: self.scanner,
        }
    }
}

/// A worker, ready to [`Worker::run`].
pub struct Worker {
    config: WorkerConfig,
    artifacts: Arc<dyn ArtifactStore>,
    devices: Vec<Arc<dyn Device>>,
    handlers: Handlers,
    scanner: Option<Arc<dyn DeviceScanner>>,
}

/// What arrives on the worker's control queue.
#[derive(Debug)]
enum Control {
    Order(ControlOrder),
    Announce(QueueAnnouncement),
    Assigned(Box<TaskAssigned>),
    AssignedBatch(TaskAssignedBatch),
}

impl MessageSet for Control {
    fn kinds() -> Vec<&'static str> {
        vec![
            ControlOrder::KIND,
            QueueAnnouncement::KIND,
            TaskAssigned::KIND,
            TaskAssignedBatch::KIND,
        ]
    }

    fn decode(envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        Ok(match envelope.kind.as_str() {
            ControlOrder::KIND => Control::Order(envelope.decode()?),
            QueueAnnouncement::KIND => Control::Announce(envelope.decode()?),
            TaskAssigned::KIND => Control::Assigned(Box::new(envelope.decode()?)),
            TaskAssignedBatch::KIND => Control::AssignedBatch(envelope.decode()?),
            other => {
                return Err(DecodeError::UnexpectedKind {
                    found: other.to_owned(),
                    expected: Self::kinds().join(", "),
                });
            }
        })
    }
}

/// What arrives on a task queue: tasks, and builds of functions.
#[derive(Debug)]
enum Work {
    Task(TaskReady),
    Build(BuildReady),
}

impl MessageSet for Work {
    fn kinds() -> Vec<&'static str> {
        vec![TaskReady::KIND, BuildReady::KIND]
    }

    fn decode(envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        Ok(match envelope.kind.as_str() {
            TaskReady::KIND => Work::Task(envelope.decode()?),
            BuildReady::KIND => Work::Build(envelope.decode()?),
            other => {
                return Err(DecodeError::UnexpectedKind {
                    found: other.to_owned(),
                    expected: Self::kinds().join(", "),
                });
            }
        })
    }
}

/// A build this worker runs.
struct RunningBuild {
    token: uuid::Uuid,
    stop: Arc<watch::Sender<Option<Stop>>>,
    handing_back: bool,
    lease_deadline: Instant,
}

/// An attempt this worker runs.
struct Running {
    grant: Grant,
    stop: Arc<watch::Sender<Option<Stop>>>,
    /// Stopped by the worker's own shutdown: reported as handed back, not canceled.
    handing_back: bool,
    /// When the lease lapses unless a heartbeat renews it (this host's clock).
    lease_deadline: Instant,
}

/// What the worker's loops share.
struct Shared {
    config: WorkerConfig,
    broker: Broker,
    publisher: Publisher,
    rpc: RpcClient,
    /// Claims tasks, several in one message when they come together.
    claims: Claims,
    /// Sends status reports, several in one message when attempts end together.
    reports: Reports,
    artifacts: Arc<dyn ArtifactStore>,
    devices: Mutex<Vec<Arc<dyn Device>>>,
    handlers: Arc<Handlers>,
    properties: Properties,
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<TaskKey, Running>>,
    builds: Mutex<HashMap<FunctionKey, RunningBuild>>,
    /// Orders for tasks granted but not yet registered as running, with when they came.
    early_orders: Mutex<HashMap<TaskKey, (Stop, Instant)>>,
    /// Speculative assignments (`TaskAssigned::speculative`), by the task they run after: one
    /// running here, or another speculative assignment held here.
    ahead: Mutex<HashMap<TaskKey, TaskAssigned>>,
    /// Told whenever a slot is released.
    slot_freed: Arc<Notify>,
    /// Tasks assigned without a claim that found no free slot, waiting for one that a queue's
    /// consumer holds while it waits for a delivery (see [`Shared::give_idle_slot`]).
    slot_requests: Mutex<std::collections::VecDeque<tokio::sync::oneshot::Sender<Slot>>>,
    /// Told when a slot is requested.
    slot_wanted: Notify,
    /// The reports of attempts that ended DONE waiting for the dispatcher's answer, by
    /// reported task: the slot kept for it (`TaskStatusReport::awaits_work`) and how many
    /// tasks it takes on the deck (`on_deck`).
    kept: Mutex<Answers>,
    /// Tasks granted here that wait for a slot to free (`TaskStatusReport::on_deck`), oldest
    /// first, each with when it came: the next attempt to end passes its slot to the first.
    deck: Mutex<std::collections::VecDeque<(TaskAssigned, Instant)>>,
    /// Numbers the kept slots.
    kept_count: std::sync::atomic::AtomicU64,
    /// How long attempts and answers take, which sizes the deck ([`Shared::deck_size`]).
    deck_sizing: Mutex<DeckSizing>,
    /// The dispatcher answers reports that keep their slot (`RegistrationReply::refills`).
    refills: std::sync::atomic::AtomicBool,
    /// The tasks granted here without a claim, with their attempt: a queue's message offering
    /// one of these attempts (or an earlier one) is acked without a claim.
    given: Mutex<GivenTasks>,
    consumed: Mutex<HashSet<String>>,
    /// Cancelled when the worker stops taking work.
    taking: CancellationToken,
    lease: Mutex<Duration>,
    /// Every attempt's task, to wait for on shutdown.
    attempts: tokio_util::task::TaskTracker,
    /// Every queue consumer's task, to wait for once the worker stops taking work.
    consumers: tokio_util::task::TaskTracker,
    /// The device list changed since the last confirmed heartbeat: send it.
    devices_changed: std::sync::atomic::AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    /// A worker with `config` storing models in `artifacts`.
    pub fn builder(config: WorkerConfig, artifacts: Arc<dyn ArtifactStore>) -> WorkerBuilder {
        WorkerBuilder {
            config,
            artifacts,
            devices: Vec::new(),
            handlers: Handlers::default(),
            scanner: None,
        }
    }

    /// Runs until `shutdown` (then stops gracefully) or a disconnect order.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        anyhow::ensure!(
            config.executor_limit > 0,
            "executor_limit must be at least 1"
        );
        let broker = Broker::connect(config.broker.clone())
            .await
            .context("connecting to RabbitMQ")?;
        let publisher = Publisher::new(&broker).await?;
        let rpc = RpcClient::new(&broker).await?;
        // The control queue exists before registering, so no announcement is missed.
        let control_queue = broker.declare_worker_queue(&config.worker_id).await?;
        let mut control = Consumer::<Control>::new(&broker, &control_queue, 32).await?;

        let mut properties = config.properties.clone();
        for device in &self.devices {
            properties
                .entry("device".to_owned())
                .or_insert_with(|| device.info().device_type);
        }
        let claims = Claims::start(rpc.clone(), config.worker_id.clone(), config.claim_timeout);
        let reports = Reports::start(publisher.clone(), config.worker_id.clone());
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.executor_limit as usize)),
            config,
            broker,
            publisher,
            claims,
            reports,
            rpc,
            artifacts: self.artifacts,
            devices: Mutex::new(self.devices),
            handlers: Arc::new(self.handlers),
            properties,
            running: Mutex::default(),
            builds: Mutex::default(),
            early_orders: Mutex::default(),
            ahead: Mutex::default(),
            slot_freed: Arc::new(Notify::new()),
            slot_requests: Mutex::default(),
            kept: Mutex::default(),
            deck: Mutex::default(),
            kept_count: std::sync::atomic::AtomicU64::new(0),
            deck_sizing: Mutex::new(DeckSizing::default()),
            refills: std::sync::atomic::AtomicBool::new(false),
            given: Mutex::default(),
            slot_wanted: Notify::new(),
            consumed: Mutex::default(),
            taking: CancellationToken::new(),
            lease: Mutex::new(Duration::from_secs(30)),
            attempts: tokio_util::task::TaskTracker::new(),
            consumers: tokio_util::task::TaskTracker::new(),
            devices_changed: std::sync::atomic::AtomicBool::new(false),
        });
        let Some((heartbeat, queues)) = register(&shared, &shutdown).await? else {
            return Ok(());
        };
        tracing::info!(
            worker.id = %shared.config.worker_id,
            "worker {} registered with properties {:?}",
            shared.config.worker_id,
            shared.properties
        );
        let beating = CancellationToken::new();
        let heartbeats = tokio::spawn(heartbeat_loop(shared.clone(), heartbeat, beating.clone()));
        if let Some(scanner) = self.scanner {
            tokio::spawn(scan_loop(shared.clone(), scanner, beating.clone()));
        }
        consume(&shared, RequirementSet::any());
        for requirements in queues {
            consume(&shared, requirements);
        }

        // Orders until shutdown or a disconnect order.
        let deadline = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Some(shared.config.shutdown_deadline),
                next = control.next() => match next {
                    None => anyhow::bail!("the control consumer was canceled by RabbitMQ"),
                    Some(Err(error)) => {
                        tracing::warn!("reading a control message: {error}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Some(Ok(delivery)) => {
                        if obey(&shared, &delivery) {
                            let _ = delivery.ack().await;
                            tracing::info!("asked to disconnect: finishing running work");
                            break None;
                        }
                        let _ = delivery.ack().await;
                    }
                },
            }
        };
        // Stop taking work; let running tasks finish (until the deadline, on shutdown).
        shared.taking.cancel();
        // A consumer in the middle of a claim finishes it (and may start one more attempt).
        shared.consumers.close();
        shared.consumers.wait().await;
        shared.attempts.close();
        let finished = async {
            loop {
                tokio::select! {
                    () = shared.attempts.wait() => return,
                    next = control.next() => if let Some(Ok(delivery)) = next {
                        obey(&shared, &delivery);
                        let _ = delivery.ack().await;
                    },
                }
            }
        };
        let in_time = match deadline {
            Some(deadline) => tokio::time::timeout(deadline, finished).await.is_ok(),
            None => {
                finished.await;
                true
            }
        };
        if !in_time {
            let handing_back: Vec<TaskKey> = {
                let mut running = lock(&shared.running);
                running
                    .values_mut()
                    .map(|run| {
                        run.handing_back = true;
                        run.stop
                            .send_if_modified(|stop| set_stop(stop, Stop::Cancel));
                        run.grant.task_key
                    })
                    .collect()
            };
            for run in lock(&shared.builds).values_mut() {
                run.handing_back = true;
                run.stop
                    .send_if_modified(|stop| set_stop(stop, Stop::Cancel));
            }
            tracing::warn!(
                "shutdown deadline passed: handing back {} task(s)",
                handing_back.len()
            );
            shared.attempts.wait().await;
        }
        beating.cancel();
        let _ = heartbeats.await;
        control.close().await;
        if let Err(error) = shared.broker.close().await {
            tracing::debug!("closing the connection: {error}");
        }
        tracing::info!(worker.id = %shared.config.worker_id, "worker stopped");
        Ok(())
    }
}

/// Sets `stop` to `order` unless a harder order is there already; returns whether it changed.
fn set_stop(stop: &mut Option<Stop>, order: Stop) -> bool {
    let rank = |order: Stop| match order {
        Stop::Cancel | Stop::TaskTimeout => 0,
        Stop::Abort | Stop::LeaseLost => 1,
    };
    match stop {
        Some(current) if rank(*current) >= rank(order) => false,
        _ => {
            *stop = Some(order);
            true
        }
    }
}

/// Stops the attempt with [`Stop::TaskTimeout`] after `secs`, if it has a timeout.
fn timeout_timer(
    secs: Option<u64>,
    stop: &Arc<watch::Sender<Option<Stop>>>,
) -> Option<tokio::task::JoinHandle<()>> {
    secs.map(|secs| {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.send_if_modified(|order| set_stop(order, Stop::TaskTimeout));
        })
    })
}

/// The outcome to report: an attempt this worker stopped to shut down is handed back, not
/// canceled.
fn reported(shared: &Shared, outcome: ReportedOutcome, handing_back: bool) -> ReportedOutcome {
    match outcome {
        ReportedOutcome::Canceled if handing_back => ReportedOutcome::Failed {
            error_type: TaskErrorType::CanceledByWorker,
            message: format!("worker {} is shutting down", shared.config.worker_id),
            retryable: true,
        },
        outcome => outcome,
    }
}

/// Registers, retrying while the dispatcher still sees an earlier run of this worker as
/// active; returns the heartbeat interval and the queues to consume, or `None` on shutdown.
async fn register(
    shared: &Shared,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Duration, Vec<RequirementSet>)>> {
    let devices = lock(&shared.devices).iter().map(|d| d.info()).collect();
    let registration = WorkerRegistration {
        worker_id: shared.config.worker_id.clone(),
        organization: shared.config.organization.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        display_name: shared.config.display_name.clone(),
        properties: shared.config.properties.clone(),
        executor_limit: shared.config.executor_limit,
        devices,
    };
    let key = broker::topology::worker_event_key(&shared.config.worker_id, "register");
    loop {
        let reply = shared
            .rpc
            .call::<_, RegistrationReply>(
                EVENTS_EXCHANGE,
                &key,
                &registration,
                shared.config.claim_timeout,
            )
            .await;
        let retry_in = match reply {
            Ok(RegistrationReply::Registered {
                heartbeat_interval_secs,
                lease_secs,
                queues,
                refills,
                ..
            }) => {
                *lock(&shared.lease) = Duration::from_secs(u64::from(lease_secs));
                shared
                    .refills
                    .store(refills, std::sync::atomic::Ordering::Relaxed);
                let interval = Duration::from_secs(u64::from(heartbeat_interval_secs.max(1)));
                return Ok(Some((interval, queues)));
            }
            Ok(RegistrationReply::Refused { reason, .. }) if reason.contains("already active") => {
                tracing::warn!("registration refused, retrying: {reason}");
                Duration::from_secs(2)
            }
            Ok(RegistrationReply::Refused { reason, .. }) => {
                anyhow::bail!(
                    "the dispatcher refused worker {}: {reason}",
                    shared.config.worker_id
                )
            }
            Err(error) => {
                tracing::warn!("registration not answered, retrying: {error}");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(retry_in) => {}
        }
    }
}

/// Carries out a control message; returns whether it asks this worker to disconnect.
fn obey(shared: &Arc<Shared>, delivery: &Delivery<Control>) -> bool {
    match &delivery.message {
        Control::Announce(announcement) => {
            consume(shared, announcement.requirements.clone());
            false
        }
        Control::Assigned(assigned) => {
            take_assigned(shared, assigned);
            false
        }
        Control::AssignedBatch(batch) => {
            for assigned in &batch.assignments {
                take_assigned(shared, assigned);
            }
            false
        }
        Control::Order(ControlOrder::Released { task_keys }) => {
            for task in task_keys {
                release_kept(shared, *task);
            }
            false
        }
        Control::Order(ControlOrder::Disconnect { worker_id }) => {
            *worker_id == shared.config.worker_id
        }
        Control::Order(ControlOrder::Cancel { task_key, reason }) => {
            stop_task(shared, *task_key, Stop::Cancel, reason);
            false
        }
        Control::Order(ControlOrder::Abort { task_key, reason }) => {
            stop_task(shared, *task_key, Stop::Abort, reason);
            false
        }
    }
}

/// Keeps a speculative assignment for later, or runs one granted now: in the slot kept for
/// the report of its `after`, if that slot is still kept, else as [`run_assigned`] does.
fn take_assigned(shared: &Arc<Shared>, assigned: &TaskAssigned) {
    if assigned.speculative {
        hold_ahead(shared, assigned);
        return;
    }
    // Granted afresh: what was granted ahead of an earlier attempt of it is void.
    drop_ahead(shared, assigned.grant.task_key);
    lock(&shared.given).insert(assigned.grant.task_key, assigned.grant.attempt);
    let kept = assigned
        .after
        .filter(|_| !shared.taking.is_cancelled())
        .and_then(|after| {
            take_kept(shared, after).or_else(|| {
                // Its own report kept no slot (or it came late): a slot kept idle for another
                // report's answer runs it now, and that answer's task takes its place.
                let slot = (shared.free_slots() == 0)
                    .then(|| lock(&shared.kept).take_idle_slot())
                    .flatten();
                if slot.is_some() {
                    let task = assigned.grant.task_key;
                    tracing::debug!(task.key = %task, "task {task} takes a slot kept for another report's answer");
                }
                slot
            })
        });
    if let Some(slot) = kept {
        start_assigned(shared, assigned, slot, Instant::now());
        return;
    }
    // Granted after a report (for the deck, or late for its kept slot) and no slot free: the
    // deck holds it, up to its size (`Shared::deck_size`), when the worker keeps one.
    let on_deck = assigned.after.is_some()
        && !shared.taking.is_cancelled()
        && shared.refills.load(std::sync::atomic::Ordering::Relaxed)
        && lock(&shared.deck).len() < shared.deck_size();
    if on_deck && shared.free_slots() == 0 {
        put_on_deck(shared, assigned);
    } else {
        run_assigned(shared, assigned);
    }
}

fn stop_task(shared: &Shared, task: TaskKey, order: Stop, reason: &str) {
    tracing::info!(task.key = %task, "{order:?} ordered for task {task}: {reason}");
    let running = lock(&shared.running);
    match running.get(&task) {
        Some(run) => {
            run.stop.send_if_modified(|stop| set_stop(stop, order));
        }
        None => {
            // Granted, not started yet: it takes effect at the start. An order for a task
            // this worker no longer runs is dropped once no claim answer can be that late.
            let now = Instant::now();
            let mut early = lock(&shared.early_orders);
            early.retain(|_, (_, at)| now.duration_since(*at) < 2 * shared.config.claim_timeout);
            let entry = early.entry(task).or_insert((order, now));
            if matches!(order, Stop::Abort) {
                entry.0 = order;
            }
        }
    }
}

/// Starts consuming the queue of `requirements` if this worker satisfies it and does not
/// consume it already.
fn consume(shared: &Arc<Shared>, requirements: RequirementSet) {
    if shared.taking.is_cancelled() || !requirements.is_satisfied_by(&shared.properties) {
        return;
    }
    if !lock(&shared.consumed).insert(requirements.routing_key()) {
        return;
    }
    shared
        .consumers
        .spawn(consume_loop(shared.clone(), requirements));
}

/// Keeps a speculative assignment until the task it runs after ends here, if that task runs
/// here or is itself held ahead; drops it otherwise (it came after that task ended, or the
/// worker stops taking work), and the dispatcher, told nothing of it, does not grant it.
fn hold_ahead(shared: &Shared, assigned: &TaskAssigned) {
    let task = assigned.grant.task_key;
    let Some(after) = assigned.after else {
        tracing::warn!(task.key = %task, "speculative assignment of task {task} names no task to follow: dropped");
        return;
    };
    let mut ahead = lock(&shared.ahead);
    let follows = lock(&shared.running).contains_key(&after)
        || ahead.values().any(|held| held.grant.task_key == after);
    if follows && !shared.taking.is_cancelled() {
        tracing::debug!(task.key = %task, "task {task} assigned ahead, after task {after}");
        ahead.insert(after, assigned.clone());
    } else {
        tracing::debug!(task.key = %task, "task {task} assigned ahead after task {after}, which no longer runs here: dropped");
    }
}

/// Drops the speculative assignments held after `task`, and those after them.
fn drop_ahead(shared: &Shared, task: TaskKey) {
    let mut ahead = lock(&shared.ahead);
    let mut after = task;
    while let Some(dropped) = ahead.remove(&after) {
        after = dropped.grant.task_key;
    }
}

/// The speculative assignment held after `task`, which just ended DONE with `outputs`, with
/// the inputs it takes from `task` filled in, registered as running (in the same breath as it
/// leaves the held ones, so what is assigned after it finds it); none if there is none or an
/// output it needs is missing (then it is dropped, with those after it).
fn take_ahead(
    shared: &Shared,
    task: TaskKey,
    outputs: &[ReportedOutput],
) -> Option<(Grant, Assignment, StopChannel)> {
    if shared.taking.is_cancelled() {
        drop_ahead(shared, task);
        return None;
    }
    let mut ahead = lock(&shared.ahead);
    let next = ahead.remove(&task)?;
    let key = next.grant.task_key;
    match fill_parent_outputs(*next.assignment, task, outputs) {
        Ok(assignment) => {
            let stop = register_running(shared, &next.grant, Instant::now());
            Some((next.grant, assignment, stop))
        }
        Err(problem) => {
            tracing::warn!(task.key = %key, "task {key}, assigned ahead, not started: {problem}");
            drop(ahead);
            drop_ahead(shared, key);
            None
        }
    }
}

/// Fills in the inputs of `assignment` that take outputs of `parent` (`ParentOutput`) with the
/// files `parent`'s attempt reported, one input value per file.
fn fill_parent_outputs(
    mut assignment: Assignment,
    parent: TaskKey,
    outputs: &[ReportedOutput],
) -> Result<Assignment, String> {
    let mut inputs = Vec::with_capacity(assignment.inputs.len());
    for input in std::mem::take(&mut assignment.inputs) {
        let output = match &input.value {
            InputValue::ParentOutput {
                task_key,
                output,
                file: None,
            } if *task_key == parent => output.clone(),
            _ => {
                inputs.push(input);
                continue;
            }
        };
        let files: Vec<&models::File> = outputs
            .iter()
            .filter_map(|value| match value {
                ReportedOutput::Model { identifier, file } if *identifier == output => Some(file),
                _ => None,
            })
            .collect();
        if files.is_empty() {
            return Err(format!(
                "input `{}`: task {parent} left no model for its output `{output}`",
                input.identifier
            ));
        }
        inputs.extend(files.into_iter().map(|file| AssignedInput {
            identifier: input.identifier.clone(),
            multiple: input.multiple,
            value: InputValue::ParentOutput {
                task_key: parent,
                output: output.clone(),
                file: Some(file.clone()),
            },
        }));
    }
    assignment.inputs = inputs;
    Ok(assignment)
}

/// How many tasks granted without a claim a worker remembers ([`GivenTasks`]).
const GIVEN_REMEMBERED: usize = 4096;

/// The latest tasks granted to this worker without a claim, with their attempt, the oldest
/// forgotten first: their messages, still in their queues, need no claim. A message offering
/// a later attempt (the task was re-queued since) is claimed as any other.
#[derive(Default)]
struct GivenTasks {
    attempts: HashMap<TaskKey, models::Attempt>,
    order: std::collections::VecDeque<TaskKey>,
}

impl GivenTasks {
    /// Remembers that `attempt` of `task` was granted here.
    fn insert(&mut self, task: TaskKey, attempt: models::Attempt) {
        if self.attempts.insert(task, attempt).is_none() {
            self.order.push_back(task);
        }
        while self.order.len() > GIVEN_REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.attempts.remove(&oldest);
            }
        }
    }

    /// Whether the message `ready` offers an attempt of its task granted here already (so its
    /// claim would be refused).
    fn has(&self, ready: &TaskReady) -> bool {
        ready.attempt.is_some_and(|offered| {
            self.attempts
                .get(&ready.task_key)
                .is_some_and(|given| *given >= offered)
        })
    }
}

/// How long a slot is kept for the dispatcher's answer to a report
/// (`TaskStatusReport::awaits_work`) before the worker frees it by itself; also how long a task
/// waits on the deck for a slot before it is handed back.
const KEPT_SLOT_WAIT: Duration = Duration::from_secs(2);

/// What a report waits for from the dispatcher: a task in its kept slot, and tasks on the deck.
struct Answer {
    /// Tells the answer's timer it is still the one it was started for.
    number: u64,
    /// When the report was queued, until the answer's first task (or `released`) comes.
    asked: Option<Instant>,
    /// The slot kept for the first task granted after the report, if any.
    slot: Option<Slot>,
    /// How many more tasks the report takes on the deck.
    deck: u32,
}

/// The answers awaited for reports of attempts that ended DONE, by reported task.
#[derive(Default)]
struct Answers(HashMap<TaskKey, Answer>);

impl Answers {
    /// The slot kept for the answer to the report of `task`, if it is still kept; else, when a
    /// task on the deck was asked for with that report, counts it as come. Also how long the
    /// answer took, for its first task.
    fn take(&mut self, task: TaskKey) -> (Option<Slot>, Option<Duration>) {
        let Some(answer) = self.0.get_mut(&task) else {
            return (None, None);
        };
        let took = answer.asked.take().map(|asked| asked.elapsed());
        let slot = answer.slot.take();
        if slot.is_none() {
            answer.deck = answer.deck.saturating_sub(1);
        }
        if answer.slot.is_none() && answer.deck == 0 {
            self.0.remove(&task);
        }
        (slot, took)
    }

    /// A slot kept idle for the answer to some report, for a task granted now that found no
    /// other: that answer's task, when it comes, is counted as one for the deck instead.
    fn take_idle_slot(&mut self) -> Option<Slot> {
        let answer = self.0.values_mut().find(|answer| answer.slot.is_some())?;
        answer.deck += 1;
        answer.slot.take()
    }

    /// The answer to the report of `task`, removed if it is still the one numbered `number`.
    fn remove_numbered(&mut self, task: TaskKey, number: u64) -> Option<Answer> {
        if self.0.get(&task)?.number != number {
            return None;
        }
        self.0.remove(&task)
    }

    /// How many tasks the reports awaiting answers asked for the deck.
    fn deck_asked(&self) -> usize {
        self.0.values().map(|answer| answer.deck as usize).sum()
    }
}

/// Waits for the dispatcher's answer to the report of `task`, which ended DONE: a task
/// granted in `slot` (if kept) and `deck` more on the deck, or `released`; after
/// [`KEPT_SLOT_WAIT`] without one, the slot is freed and the deck no longer counted.
fn keep_slot(shared: &Arc<Shared>, task: TaskKey, slot: Option<Slot>, deck: u32) {
    let number = shared
        .kept_count
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = Answer {
        number,
        asked: Some(Instant::now()),
        slot,
        deck,
    };
    lock(&shared.kept).0.insert(task, answer);
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        tokio::time::sleep(KEPT_SLOT_WAIT).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let answer = lock(&shared.kept).remove_numbered(task, number);
        if let Some(answer) = answer {
            tracing::debug!(task.key = %task, "no answer to the report of task {task}: its slot is free");
            if let Some(slot) = answer.slot {
                pass_to_deck(&shared, slot);
            }
        }
    });
}

/// The slot kept for the answer to the report of `task`, if it is still kept; else, when a
/// task on the deck was asked for with that report, counts it as come.
fn take_kept(shared: &Shared, task: TaskKey) -> Option<Slot> {
    let (slot, took) = lock(&shared.kept).take(task);
    if let Some(took) = took {
        measure_deck(shared, |sizing| sizing.answered(took));
    }
    slot
}

/// Updates the running averages that size the deck with `measure`; logs a new size.
fn measure_deck(shared: &Shared, measure: impl FnOnce(&mut DeckSizing)) {
    let mut sizing = lock(&shared.deck_sizing);
    let before = sizing.per_slot();
    measure(&mut sizing);
    let after = sizing.per_slot();
    if after != before {
        tracing::debug!("the deck now holds {after} tasks a slot, {before} before");
    }
}

/// Ends the wait for the answer to the report of `task` (`released`): its kept slot, if it
/// still is, goes to the deck's first task or is freed.
fn release_kept(shared: &Arc<Shared>, task: TaskKey) {
    let Some(answer) = lock(&shared.kept).0.remove(&task) else {
        return;
    };
    if let Some(asked) = answer.asked {
        measure_deck(shared, |sizing| sizing.answered(asked.elapsed()));
    }
    if let Some(slot) = answer.slot {
        pass_to_deck(shared, slot);
    }
}

/// How many tasks the deck holds or has been asked for.
fn deck_count(shared: &Shared) -> usize {
    let asked = lock(&shared.kept).deck_asked();
    lock(&shared.deck).len() + asked
}

/// Starts the deck's first task in `slot`, or frees it if the deck is empty.
fn pass_to_deck(shared: &Arc<Shared>, slot: Slot) {
    drop(start_from_deck(shared, slot));
}

/// Starts the deck's first task in `slot`; gives the slot back if the deck is empty or the
/// worker stops taking work (the deck's timers then hand its tasks back).
fn start_from_deck(shared: &Arc<Shared>, slot: Slot) -> Option<Slot> {
    if shared.taking.is_cancelled() {
        return Some(slot);
    }
    let Some((assigned, came)) = lock(&shared.deck).pop_front() else {
        return Some(slot);
    };
    start_assigned(shared, &assigned, slot.pass_on(), came);
    None
}

/// Puts `assigned`, granted here with no slot free, on the deck, where the next slot to free
/// starts it; hands it back if none does within [`KEPT_SLOT_WAIT`] or the worker stops taking
/// work first. Tracked with the attempts, so a stopping worker waits for the hand-back.
fn put_on_deck(shared: &Arc<Shared>, assigned: &TaskAssigned) {
    let task = assigned.grant.task_key;
    tracing::debug!(task.key = %task, "task {task} waits on the deck for a slot");
    lock(&shared.deck).push_back((assigned.clone(), Instant::now()));
    // A queue's consumer holding a slot while it waits for a delivery yields it to the deck.
    shared.slot_wanted.notify_waiters();
    let tracker = shared.attempts.clone();
    let shared = shared.clone();
    tracker.spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(KEPT_SLOT_WAIT) => {}
            () = shared.taking.cancelled() => {}
        }
        let waiting = {
            let mut deck = lock(&shared.deck);
            deck.iter()
                .position(|(held, _)| held.grant.task_key == task)
                .and_then(|at| deck.remove(at))
        };
        if let Some((assigned, _)) = waiting {
            hand_back(&shared, &assigned).await;
        }
    });
}

/// A task slot, held from the claim of a delivery to the end of its attempt (or build).
/// Releasing it tells the queue consumers, which may take more work.
struct Slot {
    /// Taken out only by [`Slot::pass_on`].
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
    /// Cancelled when the slot is released.
    released: CancellationToken,
    /// The round of consumption whose delivery the slot holds, told first that the delivery's
    /// ack is about to give its consumer room for another.
    round: Option<RoundAcks>,
}

impl Slot {
    /// The slot for the attempt that follows this one in it (a speculative assignment): the
    /// delivery this slot held is settled as if the slot were released, and the permit stays
    /// taken.
    fn pass_on(mut self) -> Slot {
        Slot {
            permit: self.permit.take(),
            freed: self.freed.clone(),
            released: CancellationToken::new(),
            round: None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(round) = &self.round {
            round.count_returned();
        }
        self.released.cancel();
        self.freed.notify_waiters();
    }
}

/// What the takes of one round of consumption share with it (see [`consume_loop`]).
#[derive(Clone)]
struct RoundAcks {
    /// Opens when the round ended: the acks still held go out.
    gate: watch::Receiver<bool>,
    /// Deliveries acked (or requeued) while the round's consumer still consumes: each gave it
    /// room for one more delivery.
    returned: Arc<std::sync::atomic::AtomicUsize>,
}

impl RoundAcks {
    /// The acks of a new round, held until `gate` opens.
    fn new(gate: watch::Receiver<bool>) -> RoundAcks {
        RoundAcks {
            gate,
            returned: Arc::default(),
        }
    }

    /// Counts a delivery about to be settled, if the round still consumes.
    fn count_returned(&self) {
        if !*self.gate.borrow() {
            self.returned
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// How many deliveries were settled during the round.
    fn returned(&self) -> usize {
        self.returned.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Shared {
    /// A free slot, waiting for one; `None` once the worker stops taking work.
    async fn slot(&self) -> Option<Slot> {
        let permit = tokio::select! {
            () = self.taking.cancelled() => return None,
            permit = self.slots.clone().acquire_owned() => permit.ok()?,
        };
        Some(self.wrap(permit))
    }

    /// A free slot if there is one now.
    fn try_slot(&self) -> Option<Slot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| self.wrap(p))
    }

    fn wrap(&self, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            permit: Some(permit),
            freed: self.slot_freed.clone(),
            released: CancellationToken::new(),
            round: None,
        }
    }

    /// The slots the worker offers for tasks to start without a claim (`idle_slots`): the free
    /// ones plus `freeing` (held by what is ending) if it runs and builds nothing else, else 0.
    /// A slot a consumer holds while it waits for a delivery counts as taken: an empty queue's
    /// delivery would need it.
    fn idle_slots(&self, freeing: usize) -> u32 {
        let idle = !self.taking.is_cancelled()
            && lock(&self.running).is_empty()
            && lock(&self.builds).is_empty();
        if idle {
            u32::try_from(self.free_slots() + freeing).unwrap_or(u32::MAX)
        } else {
            0
        }
    }

    /// Gives `slot`, which a queue's consumer holds while it waits for a delivery, to a task
    /// assigned without a claim that found no free slot; gives it back if none is waiting. A
    /// worker consuming several queues can have all its free slots so held while it is idle.
    fn give_idle_slot(&self, slot: Slot) -> Option<Slot> {
        let mut requests = lock(&self.slot_requests);
        let mut slot = slot;
        while let Some(request) = requests.pop_front() {
            match request.send(slot) {
                Ok(()) => return None,
                // Its wait ended: handed back already.
                Err(back) => slot = back,
            }
        }
        Some(slot)
    }

    /// A slot for a task assigned without a claim: a free one, or one a queue's consumer
    /// yields, waiting at most `within`; none if the worker stops taking work.
    async fn slot_for_assigned(&self, within: Duration) -> Option<Slot> {
        if self.taking.is_cancelled() {
            return None;
        }
        if let Some(slot) = self.try_slot() {
            return Some(slot);
        }
        let (request, given) = tokio::sync::oneshot::channel();
        lock(&self.slot_requests).push_back(request);
        self.slot_wanted.notify_waiters();
        tokio::time::timeout(within, given).await.ok()?.ok()
    }

    /// How many tasks the deck holds, or has asked for, at most: as many a slot as its
    /// attempts end while the dispatcher answers a report ([`DeckSizing::per_slot`]).
    fn deck_size(&self) -> usize {
        lock(&self.deck_sizing).per_slot() * self.config.executor_limit as usize
    }

    /// How many slots are free.
    fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }
}

/// How long a round of consumption keeps the acks of answered claims waiting before it ends
/// (and sends them) although the worker could take more.
const ROUND_IDLE: Duration = Duration::from_secs(5);

/// The longest a round of consumption lasts, so that a message whose attempt runs long is
/// acked well before RabbitMQ's `consumer_timeout` (30 minutes by default) would close the
/// channel holding it.
const ROUND_LONGEST: Duration = Duration::from_secs(60);

/// Consumes one task queue, never holding more messages than the worker has free slots.
///
/// RabbitMQ's prefetch is per consumer (quorum queues have no channel-wide prefetch), and it
/// counts unacked messages. So the loop consumes in rounds: a round starts a consumer whose
/// prefetch is the number of free slots and takes each delivery into a slot and claims it.
/// A delivery's ack is held until its slot is released (its claim refused or unanswered, or
/// its attempt ended) or the round ends, whichever comes first: while the round lasts, every
/// ack that gives the consumer room for one more delivery frees a slot for it, so the broker
/// never sends more than there are slots, and a busy worker's rounds go on without a consume
/// and a cancel (two writes to the quorum queue's log) each time it fills up. A round ends,
/// its consumer canceled first and the acks it holds sent after, when a delivery comes with
/// no slot for it (a slot went to a follow-up or to another queue's consumer; the delivery and
/// those buffered behind it are kept and taken first as slots free up), when the slots freed
/// outside its acks are enough to raise the prefetch, after [`ROUND_IDLE`] without a delivery
/// while acks wait, or after [`ROUND_LONGEST`].
async fn consume_loop(shared: Arc<Shared>, requirements: RequirementSet) {
    let routing_key = requirements.routing_key();
    let queue = match shared.broker.declare_task_queue(&requirements).await {
        Ok(queue) => queue,
        Err(error) => {
            tracing::error!("cannot consume the tasks of `{routing_key}`: {error}");
            lock(&shared.consumed).remove(&routing_key);
            return;
        }
    };
    let mut consumer: Option<Consumer<Work>> = None;
    let mut kept = std::collections::VecDeque::new();
    let mut takes = tokio::task::JoinSet::new();
    // Kept deliveries come from ended rounds: their acks need not wait.
    let (_always_open, opened) = watch::channel(true);
    let opened = RoundAcks::new(opened);
    let canceled = loop {
        let Some(slot) = shared.slot().await else {
            break false;
        };
        if let Some(delivery) = kept.pop_front() {
            takes.spawn(take_work(shared.clone(), delivery, slot, opened.clone()));
            continue;
        }
        gather_slots(&shared).await;
        let prefetch = 1 + shared.free_slots();
        let started = match &mut consumer {
            Some(consumer) => consumer.resume(prefetch_count(prefetch)).await,
            None => Consumer::new(&shared.broker, &queue, prefetch_count(prefetch))
                .await
                .map(|opened| {
                    tracing::info!("consuming {queue}");
                    consumer = Some(opened);
                }),
        };
        let Some(current) = consumer.as_mut().filter(|_| started.is_ok()) else {
            if let Err(error) = started {
                tracing::warn!("cannot consume {queue}: {error}");
            }
            // A consumer whose channel cannot consume again is replaced by a new one; what
            // it kept goes back to the queue with its channel.
            if let Some(broken) = consumer.take() {
                kept.clear();
                broken.close().await;
            }
            drop(slot);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let (gate, acks) = watch::channel(false);
        let acks = RoundAcks::new(acks);
        let (round, taken) = round(&shared, current, slot, prefetch, &acks, &mut takes).await;
        tracing::debug!(
            "a round of consumption of {queue} ended after {taken} deliveries (prefetch {prefetch}): {}",
            round.why()
        );
        match current.pause().await {
            Ok(buffered) => kept.extend(buffered),
            Err(error) => tracing::warn!("pausing the consumer of {queue}: {error}"),
        }
        gate.send_replace(true);
        match round {
            Round::Ended => {}
            Round::Overflowed(delivery) => kept.push_front(*delivery),
            Round::Stopped => break false,
            Round::Canceled => break true,
        }
    };
    // Claims under way finish (and ack) before the channel closes.
    while takes.join_next().await.is_some() {}
    if canceled {
        tracing::warn!("the consumer of {queue} was canceled");
        lock(&shared.consumed).remove(&routing_key);
    }
    // Kept deliveries go back to the queue, for other workers.
    if let Some(consumer) = consumer {
        consumer.close().await;
    }
}

/// How long a nearly full worker waits for more slots to free before starting a round.
const ROUND_GATHER: Duration = Duration::from_millis(5);

/// The share of its slots a busy worker gathers, within [`ROUND_GATHER`], before a round: one
/// slot of eight.
const ROUND_SHARE: usize = 8;

/// Waits, at most [`ROUND_GATHER`], until one slot in [`ROUND_SHARE`] is free (counting the one
/// the caller holds). Every round costs RabbitMQ a consumer's start and cancelation (entries in
/// a quorum queue's log), so a worker with many slots, freed one at a time as its attempts
/// end, takes its work in rounds of several deliveries rather than one round per attempt. A
/// worker with fewer than twice [`ROUND_SHARE`] slots, and so every idle one, does not wait.
async fn gather_slots(shared: &Shared) {
    let wanted = (shared.config.executor_limit as usize / ROUND_SHARE).max(1);
    let deadline = tokio::time::Instant::now() + ROUND_GATHER;
    loop {
        // Registered before the check, so a slot freed in between is not missed.
        let freed = shared.slot_freed.notified();
        if 1 + shared.free_slots() >= wanted {
            return;
        }
        tokio::select! {
            () = freed => {}
            () = tokio::time::sleep_until(deadline) => return,
            () = shared.taking.cancelled() => return,
        }
    }
}

/// How a round of consumption ended.
enum Round {
    /// The prefetch should change, or the round lasted long enough: start another.
    Ended,
    /// This delivery came with no free slot for it: keep it, and start another.
    Overflowed(Box<Delivery<Work>>),
    /// The worker stops taking work.
    Stopped,
    /// RabbitMQ canceled the consumer (its queue is gone).
    Canceled,
}

impl Round {
    /// Why the round ended, for the log.
    fn why(&self) -> &'static str {
        match self {
            Round::Ended => "its prefetch should change, or it lasted long enough",
            Round::Overflowed(_) => "a delivery came with no free slot",
            Round::Stopped => "the worker stops taking work",
            Round::Canceled => "RabbitMQ canceled the consumer",
        }
    }
}

/// Runs one round of [`consume_loop`] on `consumer`, whose prefetch is `prefetch`, starting
/// with `slot`; returns how it ended and how many deliveries it took.
async fn round(
    shared: &Arc<Shared>,
    consumer: &mut Consumer<Work>,
    slot: Slot,
    prefetch: usize,
    acks: &RoundAcks,
    takes: &mut tokio::task::JoinSet<()>,
) -> (Round, usize) {
    // The slot the next delivery goes to, once there is one.
    let mut slot = Some(slot);
    let mut taken = 0;
    // Acks wait at most ROUND_IDLE after the last delivery.
    let mut idle_deadline = tokio::time::Instant::now() + ROUND_IDLE;
    let longest = tokio::time::Instant::now() + ROUND_LONGEST;
    loop {
        let freed = shared.slot_freed.notified();
        let wanted = shared.slot_wanted.notified();
        if slot.is_none() {
            slot = shared.try_slot();
        }
        // A task assigned without a claim goes first, then one on the deck: the next delivery
        // waits for a slot.
        if let Some(idle) = slot.take() {
            slot = shared
                .give_idle_slot(idle)
                .and_then(|idle| start_from_deck(shared, idle));
        }
        tokio::select! {
            () = shared.taking.cancelled() => return (Round::Stopped, taken),
            () = wanted => {}
            next = consumer.next() => match next {
                None => return (Round::Canceled, taken),
                Some(Err(error)) => {
                    tracing::warn!("reading {}: {error}", consumer.queue());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Some(Ok(delivery)) => {
                    if given_here(shared, &delivery) {
                        // Its ack makes room for the next delivery, as a released slot would.
                        taken += 1;
                        acks.count_returned();
                        drop_given(delivery).await;
                        continue;
                    }
                    let Some(held) = slot.take() else {
                        return (Round::Overflowed(Box::new(delivery)), taken);
                    };
                    taken += 1;
                    idle_deadline = tokio::time::Instant::now() + ROUND_IDLE;
                    takes.spawn(take_work(shared.clone(), delivery, held, acks.clone()));
                }
            },
            // Many more slots than the round can fill: raise the prefetch. (Checked when a
            // slot frees, not as a `select!` precondition, which is read only on entry.)
            () = freed => {
                let room = (prefetch + acks.returned()).saturating_sub(taken);
                let free = shared.free_slots() + usize::from(slot.is_some());
                if free > 2 * room {
                    return (Round::Ended, taken);
                }
            }
            () = tokio::time::sleep_until(idle_deadline), if taken > 0 => return (Round::Ended, taken),
            () = tokio::time::sleep_until(longest) => return (Round::Ended, taken),
        }
    }
}

fn prefetch_count(slots: usize) -> u16 {
    u16::try_from(slots).unwrap_or(u16::MAX)
}

/// Claims the work of `delivery` in `slot`, acking it as [`take`] and [`take_build`] say.
async fn take_work(shared: Arc<Shared>, delivery: Delivery<Work>, slot: Slot, acks: RoundAcks) {
    if given_here(&shared, &delivery) {
        drop(slot);
        drop_given(delivery).await;
        return;
    }
    match &delivery.message {
        Work::Task(ready) => {
            let task = ready.task_key;
            take(&shared, delivery, task, slot, acks).await;
        }
        Work::Build(ready) => {
            let function = ready.function_key;
            take_build(&shared, delivery, function, slot, acks).await;
        }
    }
}

/// Whether `delivery` offers a task granted here already without a claim ([`GivenTasks`]).
fn given_here(shared: &Shared, delivery: &Delivery<Work>) -> bool {
    match &delivery.message {
        Work::Task(ready) => lock(&shared.given).has(ready),
        Work::Build(_) => false,
    }
}

/// Acks `delivery`, whose task was granted here already without a claim.
async fn drop_given(delivery: Delivery<Work>) {
    if let Work::Task(ready) = &delivery.message {
        tracing::debug!(task.key = %ready.task_key, "task {} was given here already: its message is dropped", ready.task_key);
    }
    if let Err(error) = delivery.ack().await {
        tracing::debug!("ack of a task given already lost: {error}");
    }
}

/// Acks `delivery` when it is due: once its round of consumption ended (`acks` opens) or
/// `released` is cancelled (its slot was released, which gave the round a free slot for the
/// room the ack makes), whichever comes first.
async fn ack_when_due(
    delivery: Delivery<Work>,
    acks: RoundAcks,
    released: Option<CancellationToken>,
    what: &str,
) {
    let mut gate = acks.gate;
    let released = released.unwrap_or_default();
    tokio::select! {
        // A closed gate (its round is gone) counts as open.
        _ = gate.wait_for(|open| *open) => {}
        () = released.cancelled() => {}
    }
    if let Err(error) = delivery.ack().await {
        tracing::debug!("ack of {what} lost: {error}");
    }
}

/// Claims the task of `delivery` and runs it if the claim was granted; acks the message once
/// the slot is released (the claim refused, or the attempt ended) or the round ends, and
/// requeues it if the claim was not answered.
async fn take(
    shared: &Arc<Shared>,
    delivery: Delivery<Work>,
    task: TaskKey,
    mut slot: Slot,
    acks: RoundAcks,
) {
    // The delivery is settled when the slot is released (or the round ends): the round counts
    // the room that makes.
    slot.round = Some(acks.clone());
    let released = slot.released.clone();
    let reply = match shared.claims.claim(task).await {
        Ok(reply) => reply,
        Err(error) => {
            // Unanswered: another delivery (here or elsewhere) claims it again.
            tracing::warn!(task.key = %task, "claim of task {task} not answered: {error}");
            drop(slot);
            let _ = delivery.requeue().await;
            return;
        }
    };
    match reply {
        ClaimReply::Refused { reason, .. } => {
            tracing::debug!(task.key = %task, "claim of task {task} refused: {reason}");
            drop(slot);
        }
        ClaimReply::Granted {
            grant,
            assignment,
            ahead,
        } => {
            start_attempt(shared, grant, Arc::from(assignment), slot);
            // Running now: what comes after it is kept.
            for assigned in &ahead {
                hold_ahead(shared, assigned);
            }
        }
    }
    // From here on PostgreSQL, not the broker, owns the task.
    ack_when_due(delivery, acks, Some(released), &format!("task {task}")).await;
}

/// Registers the granted attempt as running, so orders and duplicates find it, and runs it in
/// `slot`.
fn start_attempt(shared: &Arc<Shared>, grant: Grant, assignment: Arc<Assignment>, slot: Slot) {
    let stop = register_running(shared, &grant, Instant::now());
    spawn_attempt(shared, grant, assignment, stop, slot);
}

/// Registers the attempt of `grant` as running, so orders, heartbeats and what is assigned
/// after it find it; [`spawn_attempt`] runs it. Its lease is counted from `granted` (when the
/// grant came, or a moment later), so the worker never thinks it holds it longer than the
/// dispatcher does.
fn register_running(shared: &Shared, grant: &Grant, granted: Instant) -> StopChannel {
    let task = grant.task_key;
    let (stop_tx, stop_rx) = watch::channel(None);
    let stop_tx = Arc::new(stop_tx);
    let lease = *lock(&shared.lease);
    {
        let mut running = lock(&shared.running);
        if let Some((order, _)) = lock(&shared.early_orders).remove(&task) {
            stop_tx.send_replace(Some(order));
        }
        running.insert(
            task,
            Running {
                grant: grant.clone(),
                stop: stop_tx.clone(),
                handing_back: false,
                lease_deadline: granted + lease,
            },
        );
    }
    (stop_tx, stop_rx)
}

/// Runs the attempt [`register_running`] registered, in `slot`.
fn spawn_attempt(
    shared: &Arc<Shared>,
    grant: Grant,
    assignment: Arc<Assignment>,
    stop: StopChannel,
    slot: Slot,
) {
    let shared = shared.clone();
    shared
        .attempts
        .clone()
        .spawn(attempt(shared, grant, assignment, stop, slot));
}

/// Runs a task the dispatcher assigned without a claim (a follow-up of a task this worker
/// ran, or a task of a plan submitted while it was idle) in a free slot, or one a queue's
/// consumer yields; otherwise hands it back, re-queued for any worker without counting an
/// attempt.
fn run_assigned(shared: &Arc<Shared>, assigned: &TaskAssigned) {
    if let Some(slot) = (!shared.taking.is_cancelled())
        .then(|| shared.try_slot())
        .flatten()
    {
        start_assigned(shared, assigned, slot, Instant::now());
        return;
    }
    // A queue's consumer may hold a free slot while it waits for a delivery: it yields it.
    // Tracked with the attempts, so a stopping worker waits for the start or the hand-back.
    let tracker = shared.attempts.clone();
    let shared = shared.clone();
    let assigned = assigned.clone();
    let came = Instant::now();
    tracker.spawn(async move {
        match shared.slot_for_assigned(SLOT_REQUEST_WAIT).await {
            Some(slot) => start_assigned(&shared, &assigned, slot, came),
            None => hand_back(&shared, &assigned).await,
        }
    });
}

/// How long a task assigned without a claim waits for a queue's consumer to yield it a slot
/// before it is handed back: a consumer holding one yields it at once.
const SLOT_REQUEST_WAIT: Duration = Duration::from_millis(50);

/// Runs `assigned`, which came at `came` (its lease counted from then), in `slot`.
fn start_assigned(shared: &Arc<Shared>, assigned: &TaskAssigned, slot: Slot, came: Instant) {
    let task = assigned.grant.task_key;
    match assigned.after {
        Some(after) => {
            tracing::debug!(task.key = %task, "task {task} assigned after task {after}")
        }
        None => tracing::debug!(task.key = %task, "task {task} assigned at its submission"),
    }
    let stop = register_running(shared, &assigned.grant, came);
    spawn_attempt(
        shared,
        assigned.grant.clone(),
        Arc::from(assigned.assignment.clone()),
        stop,
        slot,
    );
}

/// Hands `assigned` back at once, re-queued for any worker without counting an attempt: no
/// slot was free for it.
async fn hand_back(shared: &Arc<Shared>, assigned: &TaskAssigned) {
    let task = assigned.grant.task_key;
    tracing::debug!(task.key = %task, "task {task} assigned without a free slot: handing it back");
    let report = TaskStatusReport {
        task_key: task,
        attempt: assigned.grant.attempt,
        lease_token: assigned.grant.lease_token,
        worker_id: shared.config.worker_id.clone(),
        outcome: ReportedOutcome::Failed {
            error_type: TaskErrorType::CanceledByWorker,
            message: format!("worker {} had no free slot for it", shared.config.worker_id),
            retryable: true,
        },
        steps: Vec::new(),
        output: serde_json::Value::Null,
        outputs: Vec::new(),
        logs: Vec::new(),
        follow_up: false,
        idle_slots: 0,
        started_next: None,
        awaits_work: false,
        on_deck: 0,
    };
    if !shared.reports.send(report).await {
        tracing::warn!(task.key = %task, "task {task}: the worker stopped before handing it back");
    }
}

/// The stop orders of one attempt: the sender shared with the running registry.
type StopChannel = (
    Arc<watch::Sender<Option<Stop>>>,
    watch::Receiver<Option<Stop>>,
);

/// Runs a granted attempt and reports its end.
async fn attempt(
    shared: Arc<Shared>,
    grant: Grant,
    assignment: Arc<Assignment>,
    (stop_tx, stop_rx): StopChannel,
    slot: Slot,
) {
    let task = grant.task_key;
    let timer = timeout_timer(assignment.timeout_secs, &stop_tx);
    let started = Instant::now();
    tracing::info!(task.key = %task, task.attempt = %grant.attempt, "running task {task} ({})", assignment.function_name);
    let device = choose_device(&shared, &assignment);
    let (ended, leftover) = match device {
        Ok(device) => {
            executor::run(executor::Attempt {
                grant: &grant,
                assignment: assignment.clone(),
                device,
                work_root: &shared.config.work_root,
                keep_failed: shared.config.keep_failed_workspaces,
                artifacts: shared.artifacts.as_ref(),
                publisher: &shared.publisher,
                log_limits: shared.config.log_limits,
                grace: shared.config.grace,
                stop: stop_rx,
                build_image: None,
            })
            .await
        }
        Err(message) => (
            executor::Ended::failed(TaskErrorType::Execution, message, true),
            executor::Leftover::none(task),
        ),
    };
    if let Some(timer) = timer {
        timer.abort();
    }
    measure_deck(&shared, |sizing| sizing.attempt_ended(started.elapsed()));
    let handing_back = lock(&shared.running)
        .remove(&task)
        .is_some_and(|run| run.handing_back);
    if ended.stopped == Some(Stop::LeaseLost) {
        // Another attempt may run already; this one's report would be refused.
        tracing::warn!(task.key = %task, "task {task}: lease lost, step killed, nothing reported");
        drop_ahead(&shared, task);
        pass_to_deck(&shared, slot);
        leftover.finish().await;
        return;
    }
    let outcome = reported(&shared, ended.outcome, handing_back);
    // The chain's next task, granted ahead, starts in this slot at once.
    let next = if outcome == ReportedOutcome::Done {
        take_ahead(&shared, task, &ended.outputs)
    } else {
        drop_ahead(&shared, task);
        None
    };
    // Otherwise the deck's first task does.
    let from_deck = match next {
        None if !shared.taking.is_cancelled() => lock(&shared.deck).pop_front(),
        _ => None,
    };
    // Otherwise this attempt's slot is free once the report is sent: a child it makes ready
    // can have it.
    let follow_up = outcome == ReportedOutcome::Done
        && next.is_none()
        && from_deck.is_none()
        && !shared.taking.is_cancelled();
    // Idle once it is sent if nothing else runs: its slot and the free ones are offered.
    let idle_slots = if follow_up { shared.idle_slots(1) } else { 0 };
    let refills = outcome == ReportedOutcome::Done
        && !shared.taking.is_cancelled()
        && shared.refills.load(std::sync::atomic::Ordering::Relaxed);
    // The slot waits for the dispatcher's answer, if it gives one: a task to run in it, or
    // `released`.
    let awaits_work = follow_up && refills;
    // And one more task for the deck, while it holds or was promised fewer than its size: the slot it frees next starts that task without waiting for the
    // dispatcher. Not while a chain runs ahead here: its next link is on its way already.
    let on_deck = u32::from(refills && next.is_none() && deck_count(&shared) < shared.deck_size());
    let report = TaskStatusReport {
        task_key: task,
        attempt: grant.attempt,
        lease_token: grant.lease_token,
        worker_id: shared.config.worker_id.clone(),
        outcome,
        steps: ended.steps,
        output: ended.output,
        outputs: ended.outputs,
        logs: ended.log_tail,
        follow_up,
        idle_slots,
        started_next: next.as_ref().map(|(grant, ..)| grant.task_key),
        awaits_work,
        on_deck,
    };
    tracing::info!(task.key = %task, "task {task} ended: {:?}", report.outcome);
    // The slot is free, or passed on to the task started ahead, once the report is queued:
    // its next task's claim can travel with the report rather than behind its confirm, and
    // neither waits for this attempt's workspace, which is finished meanwhile (the next
    // attempt takes another spare, or makes its own). The attempt stays tracked until the
    // confirm, so a stopping worker waits for it. Kept before the report goes, so that no
    // answer can come before it is.
    let slot = if awaits_work {
        keep_slot(&shared, task, Some(slot), on_deck);
        None
    } else {
        if on_deck > 0 {
            keep_slot(&shared, task, None, on_deck);
        }
        Some(slot)
    };
    // Sent once the output models are on disk, while the next task already runs.
    let queued = shared.reports.queue_synced(report, ended.syncing);
    match (next, from_deck, slot) {
        (Some((grant, assignment, stop)), _, Some(slot)) => {
            tracing::debug!(task.key = %grant.task_key, "task {} started ahead, after task {task}", grant.task_key);
            spawn_attempt(&shared, grant, Arc::from(assignment), stop, slot.pass_on());
        }
        (_, Some((assigned, came)), Some(slot)) => {
            tracing::debug!(task.key = %assigned.grant.task_key, "task {} started from the deck, after task {task}", assigned.grant.task_key);
            start_assigned(&shared, &assigned, slot.pass_on(), came);
        }
        (_, _, slot) => drop(slot),
    }
    leftover.finish().await;
    if !queued.confirmed().await {
        tracing::warn!(task.key = %task, "task {task}: the worker stopped before reporting it");
    }
}

/// Claims the build of `function` and builds it if the claim was granted; acks the message
/// once the claim is answered and the round ends.
async fn take_build(
    shared: &Arc<Shared>,
    delivery: Delivery<Work>,
    function: FunctionKey,
    slot: Slot,
    acks: RoundAcks,
) {
    let request = BuildClaim {
        function_key: function,
        worker_id: shared.config.worker_id.clone(),
    };
    let reply = shared
        .rpc
        .call::<_, BuildClaimReply>(
            EVENTS_EXCHANGE,
            &format!("function.{function}.claim"),
            &request,
            shared.config.claim_timeout,
        )
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => {
            tracing::warn!("build claim of function {function} not answered: {error}");
            let _ = delivery.requeue().await;
            return;
        }
    };
    match reply {
        BuildClaimReply::Refused { reason, .. } => {
            tracing::debug!("build claim of function {function} refused: {reason}");
            drop(slot);
        }
        BuildClaimReply::Granted {
            function_key,
            function_name,
            attempt,
            build_token,
            lease_expires_at,
            build_steps,
            archive,
            timeout_secs,
        } => {
            let grant = Grant {
                task_key: TaskKey(function_key.0),
                attempt,
                lease_token: build_token,
                lease_expires_at,
            };
            let assignment = Assignment {
                compute_plan_key: models::PlanKey(uuid::Uuid::nil()),
                rank: 0,
                function_key,
                function_name,
                steps: build_steps,
                timeout_secs,
                image: None,
                archive,
                parameters: models::JsonObject::new(),
                parameter_schema: None,
                inputs: Vec::new(),
                outputs: Vec::new(),
                device_id: None,
                input: serde_json::Value::Null,
            };
            let shared = shared.clone();
            shared
                .attempts
                .clone()
                .spawn(build(shared, grant, Arc::new(assignment), slot));
        }
    }
    // A build's message is acked when its round ends: its slot does not count for the round.
    ack_when_due(delivery, acks, None, &format!("build {function}")).await;
}

/// Runs a granted build on the local device and reports its end.
async fn build(shared: Arc<Shared>, grant: Grant, assignment: Arc<Assignment>, slot: Slot) {
    let function = assignment.function_key;
    let (stop_tx, stop_rx) = watch::channel(None);
    let stop_tx = Arc::new(stop_tx);
    let lease = *lock(&shared.lease);
    lock(&shared.builds).insert(
        function,
        RunningBuild {
            token: grant.lease_token,
            stop: stop_tx.clone(),
            handing_back: false,
            lease_deadline: Instant::now() + lease,
        },
    );
    let timer = timeout_timer(assignment.timeout_secs, &stop_tx);
    tracing::info!(
        "building function {function} ({})",
        assignment.function_name
    );
    // Builds run their steps as subprocesses, on the local device.
    let device: Arc<dyn Device> = Arc::new(LocalDevice::default());
    let (ended, leftover) = executor::run(executor::Attempt {
        grant: &grant,
        assignment: assignment.clone(),
        device,
        work_root: &shared.config.work_root,
        keep_failed: shared.config.keep_failed_workspaces,
        artifacts: shared.artifacts.as_ref(),
        publisher: &shared.publisher,
        log_limits: shared.config.log_limits,
        grace: shared.config.grace,
        stop: stop_rx,
        build_image: Some(format!("functions/{function}/{}/image", grant.attempt)),
    })
    .await;
    if let Some(timer) = timer {
        timer.abort();
    }
    let handing_back = lock(&shared.builds)
        .remove(&function)
        .is_some_and(|run| run.handing_back);
    if ended.stopped == Some(Stop::LeaseLost) {
        tracing::warn!("build of function {function}: lease lost, nothing reported");
        leftover.finish().await;
        drop(slot);
        return;
    }
    let outcome = reported(&shared, ended.outcome, handing_back);
    tracing::info!("build of function {function} ended: {outcome:?}");
    let report = BuildReport {
        function_key: function,
        build_token: grant.lease_token,
        worker_id: shared.config.worker_id.clone(),
        outcome,
        image: ended.image,
        steps: ended.steps,
    };
    let key = format!("function.{function}.status");
    tokio::join!(
        publish_until_confirmed(&shared.publisher, &key, &report),
        leftover.finish()
    );
    drop(slot);
}

/// The device an assignment runs on: the one it names, else the handler of its function,
/// else the worker's first device.
fn choose_device(shared: &Shared, assignment: &Assignment) -> Result<Arc<dyn Device>, String> {
    let devices = lock(&shared.devices);
    if let Some(id) = &assignment.device_id {
        return devices
            .iter()
            .find(|device| device.info().id == *id)
            .cloned()
            .ok_or_else(|| format!("device {id} is not active on this worker"));
    }
    if shared.handlers.handles(&assignment.function_name) {
        return Ok(shared.handlers.clone() as Arc<dyn Device>);
    }
    devices
        .first()
        .cloned()
        .ok_or_else(|| "this worker has no active device".to_owned())
}

/// Sends heartbeats that renew the leases of running attempts; kills the steps of attempts
/// whose lease could not be renewed in time.
async fn heartbeat_loop(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    let key = broker::topology::worker_event_key(&shared.config.worker_id, "heartbeat");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once the worker stops taking work, one heartbeat says so at once (no idle slots).
    let mut told_stopping = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
            () = shared.taking.cancelled(), if !told_stopping => told_stopping = true,
        }
        let sent_at = Instant::now();
        let leases: Vec<HeldLease> = lock(&shared.running)
            .values()
            .map(|run| HeldLease {
                task_key: run.grant.task_key,
                attempt: run.grant.attempt,
                lease_token: run.grant.lease_token,
            })
            .collect();
        let builds: Vec<HeldBuild> = lock(&shared.builds)
            .iter()
            .map(|(function, run)| HeldBuild {
                function_key: *function,
                build_token: run.token,
            })
            .collect();
        let devices_changed = shared
            .devices_changed
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let devices =
            devices_changed.then(|| lock(&shared.devices).iter().map(|d| d.info()).collect());
        let heartbeat = WorkerHeartbeat {
            worker_id: shared.config.worker_id.clone(),
            leases,
            builds,
            devices,
            idle_slots: shared.idle_slots(0),
        };
        let confirmed = shared
            .publisher
            .publish(EVENTS_EXCHANGE, &key, &heartbeat, broker::Meta::default())
            .await;
        let lease = *lock(&shared.lease);
        let mut running = lock(&shared.running);
        let renewed = confirmed.is_ok();
        if !renewed && devices_changed {
            // Sent again with the next heartbeat.
            shared
                .devices_changed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        match confirmed {
            Ok(()) => {
                for held in &heartbeat.leases {
                    if let Some(run) = running.get_mut(&held.task_key) {
                        run.lease_deadline = sent_at + lease;
                    }
                }
            }
            Err(error) => tracing::warn!("heartbeat not confirmed: {error}"),
        }
        let now = Instant::now();
        let mut builds = lock(&shared.builds);
        for (function, run) in builds.iter_mut() {
            if renewed && heartbeat.builds.iter().any(|b| b.function_key == *function) {
                run.lease_deadline = sent_at + lease;
            }
            if now >= run.lease_deadline {
                tracing::warn!("build lease of function {function} lapsed: killing its step");
                run.stop
                    .send_if_modified(|order| set_stop(order, Stop::LeaseLost));
            }
        }
        drop(builds);
        for run in running.values() {
            if now >= run.lease_deadline {
                tracing::warn!(task.key = %run.grant.task_key, "lease of task {} lapsed: killing its step", run.grant.task_key);
                run.stop
                    .send_if_modified(|order| set_stop(order, Stop::LeaseLost));
            }
        }
    }
}

/// Refreshes the device list from `scanner`.
async fn scan_loop(shared: Arc<Shared>, scanner: Arc<dyn DeviceScanner>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(shared.config.scan_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let devices = scanner.scan().await;
        let ids: Vec<String> = devices.iter().map(|d| d.info().id.to_string()).collect();
        let mut current = lock(&shared.devices);
        let before: Vec<String> = current.iter().map(|d| d.info().id.to_string()).collect();
        if before != ids {
            tracing::info!("active devices now: {ids:?}");
            shared
                .devices_changed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        *current = devices;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> models::File {
        models::File {
            checksum: "0".repeat(64),
            storage_address: name.to_owned(),
        }
    }

    fn parent_output(parent: TaskKey, output: &str) -> AssignedInput {
        AssignedInput {
            identifier: "models".to_owned(),
            multiple: true,
            value: InputValue::ParentOutput {
                task_key: parent,
                output: output.to_owned(),
                file: None,
            },
        }
    }

    fn assignment(inputs: Vec<AssignedInput>) -> Assignment {
        Assignment {
            compute_plan_key: models::PlanKey(uuid::Uuid::nil()),
            rank: 0,
            function_key: FunctionKey(uuid::Uuid::nil()),
            function_name: "link".to_owned(),
            steps: Vec::new(),
            timeout_secs: None,
            image: None,
            archive: None,
            parameters: models::JsonObject::new(),
            parameter_schema: None,
            inputs,
            outputs: Vec::new(),
            device_id: None,
            input: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_parent_s_outputs_fill_the_inputs_that_take_them_one_value_per_file() {
        let parent = TaskKey(uuid::Uuid::from_u128(1));
        let other = TaskKey(uuid::Uuid::from_u128(2));
        let kept = parent_output(other, "model");
        let outputs = vec![
            ReportedOutput::Model {
                identifier: "model".to_owned(),
                file: file("a"),
            },
            ReportedOutput::Performance {
                identifier: "model".to_owned(),
                value: 0.5,
            },
            ReportedOutput::Model {
                identifier: "other".to_owned(),
                file: file("b"),
            },
            ReportedOutput::Model {
                identifier: "model".to_owned(),
                file: file("c"),
            },
        ];
        let filled = fill_parent_outputs(
            assignment(vec![parent_output(parent, "model"), kept.clone()]),
            parent,
            &outputs,
        )
        .expect("the parent left the output");
        let values: Vec<&InputValue> = filled.inputs.iter().map(|input| &input.value).collect();
        assert_eq!(
            values,
            [
                &InputValue::ParentOutput {
                    task_key: parent,
                    output: "model".to_owned(),
                    file: Some(file("a")),
                },
                &InputValue::ParentOutput {
                    task_key: parent,
                    output: "model".to_owned(),
                    file: Some(file("c")),
                },
                &kept.value,
            ]
        );
        assert!(filled.inputs.iter().all(|input| input.multiple));
    }

    /// A slot of `slots`, as an attempt holds it.
    fn slot(slots: &Arc<Semaphore>) -> Slot {
        Slot {
            permit: Some(slots.clone().try_acquire_owned().unwrap()),
            freed: Arc::new(Notify::new()),
            released: CancellationToken::new(),
            round: None,
        }
    }

    #[test]
    fn a_task_granted_with_no_slot_takes_one_kept_idle_and_that_answer_s_task_goes_on_the_deck() {
        let slots = Arc::new(Semaphore::new(2));
        let (a, b, c) = (
            TaskKey(uuid::Uuid::from_u128(1)),
            TaskKey(uuid::Uuid::from_u128(2)),
            TaskKey(uuid::Uuid::from_u128(3)),
        );
        let mut answers = Answers::default();
        // A kept its slot and asked one task for the deck; B passed its slot on and asked one.
        answers.0.insert(
            a,
            Answer {
                number: 0,
                asked: Some(Instant::now()),
                slot: Some(slot(&slots)),
                deck: 1,
            },
        );
        answers.0.insert(
            b,
            Answer {
                number: 1,
                asked: Some(Instant::now()),
                slot: None,
                deck: 1,
            },
        );
        assert_eq!(answers.deck_asked(), 2);

        // B's task comes first: no slot of its own; it takes A's, kept idle. It tells how
        // long B's answer took.
        let (kept, took) = answers.take(b);
        assert!(kept.is_none());
        assert!(took.is_some(), "B's answer's first task");
        assert!(!answers.0.contains_key(&b), "B's answer came");
        let taken = answers.take_idle_slot().expect("A's slot was idle");
        assert_eq!(slots.available_permits(), 1, "the slot moved, still held");
        assert!(answers.take_idle_slot().is_none(), "no other slot kept");
        // A's tasks, still to come, both go on the deck now.
        assert_eq!(answers.deck_asked(), 2);
        let (kept, took) = answers.take(a);
        assert!(kept.is_none());
        assert!(took.is_some(), "A's answer's first task");
        let (kept, took) = answers.take(a);
        assert!(
            kept.is_none() && took.is_none(),
            "its second task, timed already"
        );
        assert!(answers.0.is_empty(), "both of A's tasks came");
        let (kept, took) = answers.take(a);
        assert!(
            kept.is_none() && took.is_none(),
            "a task after the answer finds nothing"
        );
        drop(taken);
        assert_eq!(slots.available_permits(), 2);

        // A kept slot is still A's task's when it comes first.
        answers.0.insert(
            c,
            Answer {
                number: 2,
                asked: None,
                slot: Some(slot(&slots)),
                deck: 0,
            },
        );
        assert!(answers.take(c).0.is_some());
        assert!(answers.0.is_empty());
    }

    #[test]
    fn an_answer_s_timer_removes_only_the_answer_it_was_started_for() {
        let slots = Arc::new(Semaphore::new(1));
        let task = TaskKey(uuid::Uuid::from_u128(1));
        let mut answers = Answers::default();
        answers.0.insert(
            task,
            Answer {
                number: 7,
                asked: None,
                slot: Some(slot(&slots)),
                deck: 0,
            },
        );
        assert!(
            answers.remove_numbered(task, 6).is_none(),
            "an earlier wait's timer"
        );
        let answer = answers.remove_numbered(task, 7).expect("its own timer");
        assert!(answer.slot.is_some());
        assert!(answers.remove_numbered(task, 7).is_none());
    }

    #[test]
    fn an_output_the_parent_did_not_leave_is_an_error_naming_it() {
        let parent = TaskKey(uuid::Uuid::from_u128(1));
        let problem = fill_parent_outputs(
            assignment(vec![parent_output(parent, "model")]),
            parent,
            &[],
        )
        .expect_err("nothing to fill in");
        assert!(
            problem.contains("`models`") && problem.contains("`model`"),
            "{problem}"
        );
    }
}
