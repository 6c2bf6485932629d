//! An in-process dispatcher on a test database and vhost, and scripted workers that claim and
//! report like real ones.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use broker::consumer::MessageSet;
use broker::envelope::{DecodeError, Envelope};
use broker::topology::{self, EVENTS_EXCHANGE, SUBMIT_EXCHANGE};
use broker::{Broker, Consumer, Meta, Publisher, RpcClient};
use dispatcher::service::DispatcherConfig;
use dispatcher::store::{catalog, plans, tasks};
use models::submission::PlanSubmission;
use models::wire::{
    ClaimReply, ClaimRequest, ControlOrder, DeviceInfo, RegistrationReply, ReportedOutcome,
    ReportedOutput, SubmissionReply, TaskAssigned, TaskAssignedBatch, TaskReady, TaskStatusReport,
    WireMessage, WorkerRegistration,
};
use models::{ComputePlan, PlanKey, RequirementSet, Task, TaskKey, WorkerId};

use super::broker::TestBroker;
use super::db::TestDb;

/// The organization the test dispatcher acts as.
pub(crate) const ORGANIZATION: &str = "org-a";

/// A dispatcher running in this process on its own database and vhost.
pub(crate) struct TestCluster {
    pub(crate) db: TestDb,
    pub(crate) broker: TestBroker,
    shutdown: CancellationToken,
    dispatcher: Option<JoinHandle<anyhow::Result<()>>>,
    lease: chrono::Duration,
    outbox_poll: Duration,
    /// `DispatcherConfig::publish_ahead`, if not the default.
    publish_ahead: Option<usize>,
    /// What the dispatcher (and any restart of it) records for operators.
    pub(crate) metrics: dispatcher::metrics::DispatcherMetrics,
}

impl TestCluster {
    /// A database seeded by `seed`, a vhost, and a dispatcher granting leases of `lease`.
    pub(crate) async fn start(lease: chrono::Duration) -> TestCluster {
        TestCluster::start_polling(lease, Duration::from_millis(200)).await
    }

    /// Like [`TestCluster::start`], with the outbox relay reading the outbox every
    /// `outbox_poll` (and when a stored row becomes available) rather than every 200 ms.
    pub(crate) async fn start_polling(
        lease: chrono::Duration,
        outbox_poll: Duration,
    ) -> TestCluster {
        TestCluster::start_with(lease, outbox_poll, None).await
    }

    /// Like [`TestCluster::start`], with the outbox relay keeping at most `publish_ahead`
    /// ready messages in a task queue.
    pub(crate) async fn start_publishing_ahead(
        lease: chrono::Duration,
        publish_ahead: usize,
    ) -> TestCluster {
        TestCluster::start_with(lease, Duration::from_millis(200), Some(publish_ahead)).await
    }

    async fn start_with(
        lease: chrono::Duration,
        outbox_poll: Duration,
        publish_ahead: Option<usize>,
    ) -> TestCluster {
        // The dispatcher's logs, shown for failing tests (RUST_LOG to tune).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let db = TestDb::new().await;
        let broker = TestBroker::new().await;
        let mut cluster = TestCluster {
            db,
            broker,
            shutdown: CancellationToken::new(),
            dispatcher: None,
            lease,
            outbox_poll,
            publish_ahead,
            metrics: dispatcher::metrics::DispatcherMetrics::new(),
        };
        cluster.start_dispatcher();
        cluster.wait_until_ready().await;
        cluster
    }

    fn config(&self) -> DispatcherConfig {
        let mut config = DispatcherConfig::new(
            self.db.url(),
            self.broker.config("baton-dispatcher"),
            ORGANIZATION.into(),
        );
        config.lease_duration = self.lease;
        config.outbox_poll = self.outbox_poll;
        if let Some(publish_ahead) = self.publish_ahead {
            config.publish_ahead = publish_ahead;
        }
        config.heartbeat_interval = Duration::from_secs(1);
        config.registration_cache = Duration::from_millis(200);
        config.metrics = self.metrics.clone();
        config
    }

    /// Starts (or restarts) the dispatcher.
    pub(crate) fn start_dispatcher(&mut self) {
        self.shutdown = CancellationToken::new();
        let config = self.config();
        let shutdown = self.shutdown.clone();
        self.dispatcher = Some(tokio::spawn(dispatcher::service::run(config, shutdown)));
    }

    /// Starts a second dispatcher beside the first, as an operator starts a warm standby; it
    /// stops with the test.
    pub(crate) async fn start_standby(&self) -> JoinHandle<anyhow::Result<()>> {
        let mut config = self.config();
        config.broker.app_id = "baton-dispatcher-standby".into();
        tokio::spawn(dispatcher::service::run(
            config,
            self.shutdown.child_token(),
        ))
    }

    /// Kills the dispatcher: its task is aborted, its connections dropped, nothing flushed.
    pub(crate) async fn kill_dispatcher(&mut self) {
        if let Some(handle) = self.dispatcher.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Waits until the dispatcher declared the topology (the submissions queue exists).
    async fn wait_until_ready(&self) {
        for _ in 0..200 {
            if let Some(handle) = &self.dispatcher
                && handle.is_finished()
            {
                panic!("the dispatcher stopped while starting");
            }
            if self.broker.queue_exists("baton.submissions").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the dispatcher did not start within 10 s");
    }

    /// A broker connection for a test client.
    pub(crate) async fn client(&self, app_id: &str) -> Broker {
        let broker = Broker::connect(self.broker.config(app_id)).await.unwrap();
        broker.declare_topology().await.unwrap();
        broker
    }

    /// Submits `plan` over AMQP and returns the dispatcher's answer.
    pub(crate) async fn submit(&self, rpc: &RpcClient, plan: &PlanSubmission) -> SubmissionReply {
        rpc.call(
            SUBMIT_EXCHANGE,
            PlanSubmission::KIND,
            plan,
            Duration::from_secs(10),
        )
        .await
        .unwrap()
    }

    /// The stored plan `key`.
    pub(crate) async fn plan(&self, key: PlanKey) -> ComputePlan {
        let conn = self.db.connect().await;
        plans::find_plan(&conn, key).await.unwrap().unwrap()
    }

    /// The stored tasks of plan `key`.
    pub(crate) async fn tasks(&self, key: PlanKey) -> Vec<Task> {
        let mut conn = self.db.connect().await;
        tasks::list_plan_tasks(&mut conn, key, None).await.unwrap()
    }

    /// Waits (at most `within`) until plan `key` satisfies `done`; returns it.
    pub(crate) async fn wait_for_plan(
        &self,
        key: PlanKey,
        within: Duration,
        what: &str,
        done: impl Fn(&ComputePlan) -> bool,
    ) -> ComputePlan {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let plan = self.plan(key).await;
            if done(&plan) {
                return plan;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {within:?} for plan {key} to be {what}; it is {:?} with {:?}",
                plan.status,
                plan.counters
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gives user `user` exactly `roles`.
    pub(crate) async fn grant(&self, user: &str, roles: &[models::Role]) {
        let mut conn = self.db.connect().await;
        let change = dispatcher::store::users::UserChange {
            roles: Some(roles.to_vec()),
            ..Default::default()
        };
        dispatcher::store::users::update_user(&mut conn, &user.into(), &change, chrono::Utc::now())
            .await
            .unwrap()
            .expect("the user exists");
    }

    /// Registers the catalog the tests submit against: organizations and `functions`.
    pub(crate) async fn seed(&self, functions: &[models::Function]) {
        let mut conn = self.db.connect().await;
        if catalog::find_organization(&mut conn, &"org-b".into(), None)
            .await
            .unwrap()
            .is_none()
        {
            catalog::insert_organization(
                &mut conn,
                &crate::support::fixtures::organization("org-b"),
            )
            .await
            .unwrap();
        }
        // `guest` is the RabbitMQ user the tests connect as: workers registering over AMQP
        // are owned by it.
        for user in ["alice", "guest"] {
            if catalog::find_user(&conn, &user.into())
                .await
                .unwrap()
                .is_none()
            {
                let record = crate::support::fixtures::user(user, ORGANIZATION);
                catalog::insert_user(&mut conn, &record).await.unwrap();
            }
        }
        for function in functions {
            catalog::insert_function(&mut conn, function).await.unwrap();
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.dispatcher.take() {
            handle.abort();
        }
    }
}

/// What a scripted worker does with a task it was granted.
#[derive(Clone, Debug)]
pub(crate) enum Script {
    /// Report DONE.
    Succeed,
    /// Report FAILED.
    Fail {
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// Never report (a worker that hangs or died).
    Vanish,
}

/// Registers worker `id` of `organization`, with one `lucidac` device, over `rpc`.
pub(crate) async fn register(rpc: &RpcClient, id: &str, organization: &str) -> RegistrationReply {
    let registration = WorkerRegistration {
        worker_id: id.into(),
        organization: organization.into(),
        version: "test".into(),
        display_name: String::new(),
        properties: [("os".to_owned(), "linux".to_owned())].into(),
        executor_limit: 2,
        devices: vec![DeviceInfo {
            id: "lucidac-0".into(),
            device_type: "lucidac".into(),
            input_type: None,
            parameter_schema: None,
        }],
    };
    rpc.call(
        EVENTS_EXCHANGE,
        &topology::worker_event_key(&id.into(), "register"),
        &registration,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

/// A worker that claims tasks from `baton.tasks.any` and reports as its script says.
pub(crate) struct ScriptedWorker {
    pub(crate) id: WorkerId,
    broker: Broker,
    rpc: RpcClient,
    events: Publisher,
    consumer: Consumer<TaskReady>,
    /// Its DONE reports offer a follow-up (`TaskStatusReport::follow_up`).
    follow_ups: bool,
    /// The idle slots its DONE reports offering a follow-up give (`TaskStatusReport::idle_slots`).
    idle_slots: u32,
}

/// What comes on a worker's control queue: tasks assigned without a claim, and orders.
#[derive(Clone, Debug)]
pub(crate) enum Control {
    /// A task assigned.
    Assigned(Box<TaskAssigned>),
    /// Several tasks assigned in one message.
    AssignedBatch(TaskAssignedBatch),
    /// A cancel, abort or disconnect order.
    Order(ControlOrder),
}

impl MessageSet for Control {
    fn kinds() -> Vec<&'static str> {
        vec![
            TaskAssigned::KIND,
            TaskAssignedBatch::KIND,
            ControlOrder::KIND,
        ]
    }

    fn decode(envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        Ok(match envelope.kind.as_str() {
            TaskAssigned::KIND => Control::Assigned(Box::new(envelope.decode()?)),
            TaskAssignedBatch::KIND => Control::AssignedBatch(envelope.decode()?),
            ControlOrder::KIND => Control::Order(envelope.decode()?),
            other => {
                return Err(DecodeError::UnexpectedKind {
                    found: other.to_owned(),
                    expected: Self::kinds().join(", "),
                });
            }
        })
    }
}

/// A claim's outcome, for tests that look at them.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) task: TaskKey,
    pub(crate) attempt: models::Attempt,
    pub(crate) token: uuid::Uuid,
    /// The outputs the assignment declares, which a DONE report fills.
    pub(crate) outputs: Vec<models::FunctionOutput>,
}

impl Granted {
    /// The grant of a task assigned without a claim.
    pub(crate) fn assigned(assigned: &TaskAssigned) -> Granted {
        Granted {
            task: assigned.grant.task_key,
            attempt: assigned.grant.attempt,
            token: assigned.grant.lease_token,
            outputs: assigned.assignment.outputs.clone(),
        }
    }

    /// The grant in a claim reply, if it is one.
    pub(crate) fn of(reply: &ClaimReply) -> Option<Granted> {
        match reply {
            ClaimReply::Granted {
                grant, assignment, ..
            } => Some(Granted {
                task: grant.task_key,
                attempt: grant.attempt,
                token: grant.lease_token,
                outputs: assignment.outputs.clone(),
            }),
            ClaimReply::Refused { .. } => None,
        }
    }

    /// A value for every declared output, as a worker that ran the steps would register.
    pub(crate) fn outputs(&self) -> Vec<ReportedOutput> {
        self.outputs
            .iter()
            .map(|output| match output.kind {
                models::OutputKind::Model => ReportedOutput::Model {
                    identifier: output.identifier.clone(),
                    file: models::File {
                        checksum: "0".repeat(64),
                        storage_address: format!("scripted/{}/{}", self.task, output.identifier),
                    },
                },
                models::OutputKind::Performance => ReportedOutput::Performance {
                    identifier: output.identifier.clone(),
                    value: 0.5,
                },
            })
            .collect()
    }
}

impl ScriptedWorker {
    /// A worker named `id` consuming `baton.tasks.any`.
    pub(crate) async fn new(cluster: &TestCluster, id: &str) -> ScriptedWorker {
        let broker = cluster.client(id).await;
        let rpc = RpcClient::new(&broker).await.unwrap();
        let reply = register(&rpc, id, ORGANIZATION).await;
        assert!(
            matches!(reply, RegistrationReply::Registered { .. }),
            "worker {id} registers: {reply:?}"
        );
        broker
            .declare_task_queue(&RequirementSet::any())
            .await
            .unwrap();
        ScriptedWorker {
            id: id.into(),
            rpc,
            events: Publisher::new(&broker).await.unwrap(),
            consumer: Consumer::new(&broker, &topology::task_queue(&RequirementSet::any()), 1)
                .await
                .unwrap(),
            broker,
            follow_ups: false,
            idle_slots: 0,
        }
    }

    /// From now on, its DONE reports offer a follow-up; the tasks the dispatcher assigns come
    /// on the worker's control queue, read by the consumer returned.
    pub(crate) async fn offer_follow_ups<M: MessageSet>(&mut self) -> Consumer<M> {
        self.follow_ups = true;
        let queue = self.broker.declare_worker_queue(&self.id).await.unwrap();
        Consumer::new(&self.broker, &queue, 8).await.unwrap()
    }

    /// Offers follow-ups and, idle, `slots` free slots (in a heartbeat now and in its DONE
    /// reports), so the dispatcher may start new plans' tasks on it; returns the consumer of
    /// its control queue, where those arrive.
    pub(crate) async fn offer_idle_slots<M: MessageSet>(&mut self, slots: u32) -> Consumer<M> {
        let assignments = self.offer_follow_ups().await;
        self.idle_slots = slots;
        self.heartbeat(slots).await;
        self.applied().await;
        assignments
    }

    /// Returns once the dispatcher applied what this worker sent before: a claim of no task,
    /// sent after them to the same queue, is answered only after its batch.
    pub(crate) async fn applied(&self) {
        let nothing = TaskKey(uuid::Uuid::new_v4());
        let reply = self.claim(nothing).await;
        assert!(
            matches!(reply, ClaimReply::Refused { .. }),
            "a claim of no task is refused: {reply:?}"
        );
    }

    /// Sends a heartbeat renewing no lease, with `idle_slots`.
    pub(crate) async fn heartbeat(&self, idle_slots: u32) {
        let heartbeat = models::wire::WorkerHeartbeat {
            worker_id: self.id.clone(),
            leases: Vec::new(),
            builds: Vec::new(),
            devices: None,
            idle_slots,
        };
        self.publish_as_worker("heartbeat", &heartbeat).await;
    }

    /// Sends a heartbeat renewing the leases of `granted`.
    pub(crate) async fn renew(&self, granted: &[&Granted]) {
        let heartbeat = models::wire::WorkerHeartbeat {
            worker_id: self.id.clone(),
            leases: granted
                .iter()
                .map(|granted| models::wire::HeldLease {
                    task_key: granted.task,
                    attempt: granted.attempt,
                    lease_token: granted.token,
                })
                .collect(),
            builds: Vec::new(),
            devices: None,
            idle_slots: 0,
        };
        self.publish_as_worker("heartbeat", &heartbeat).await;
    }

    /// Publishes `message` under the worker's own key `worker.<id>.<kind>`.
    async fn publish_as_worker<M: models::wire::WireMessage>(&self, kind: &str, message: &M) {
        self.events
            .publish(
                EVENTS_EXCHANGE,
                &topology::worker_event_key(&self.id, kind),
                message,
                Meta::default(),
            )
            .await
            .unwrap();
    }

    /// Takes the next ready task's message (waiting at most `within`) and acks it.
    pub(crate) async fn take_ready(&mut self, within: Duration) -> TaskKey {
        self.take_ready_message(within).await.task_key
    }

    /// Claims `task` and returns the dispatcher's answer.
    pub(crate) async fn claim(&self, task: TaskKey) -> ClaimReply {
        let request = ClaimRequest {
            task_key: task,
            worker_id: self.id.clone(),
        };
        self.rpc
            .call(
                EVENTS_EXCHANGE,
                &topology::worker_event_key(&self.id, "claim"),
                &request,
                Duration::from_secs(10),
            )
            .await
            .unwrap()
    }

    /// Reports the end of `granted` with `outcome`.
    pub(crate) async fn report(&self, granted: &Granted, outcome: ReportedOutcome) {
        self.report_with_logs(granted, outcome, Vec::new()).await;
    }

    /// Reports the end of `granted` with `outcome` and the log's last lines `logs`.
    pub(crate) async fn report_with_logs(
        &self,
        granted: &Granted,
        outcome: ReportedOutcome,
        logs: Vec<models::wire::LogRecord>,
    ) {
        self.send_status(&self.status(granted, outcome, logs)).await;
    }

    /// Publishes `report` under its task's key `task.<key>.status`.
    async fn send_status(&self, report: &TaskStatusReport) {
        self.events
            .publish(
                EVENTS_EXCHANGE,
                &topology::task_event_key(report.task_key, "status"),
                report,
                Meta::default(),
            )
            .await
            .unwrap();
    }

    /// Stops taking ready tasks from its queue; those it was sent and had not read go back.
    pub(crate) async fn stop_taking(&mut self) {
        for delivery in self.consumer.pause().await.unwrap() {
            delivery.requeue().await.unwrap();
        }
    }

    /// Reports `granted` DONE, keeping its slot for the dispatcher's answer
    /// (`TaskStatusReport::awaits_work`): a task assigned in it, or a `released` order.
    pub(crate) async fn report_done_keeping_the_slot(&self, granted: &Granted) {
        self.report_done_taking(granted, true, 0).await;
    }

    /// Reports `granted` DONE, keeping its slot (`awaits_work`) if `kept`, and taking
    /// `on_deck` more tasks on the deck (`TaskStatusReport::on_deck`).
    pub(crate) async fn report_done_taking(&self, granted: &Granted, kept: bool, on_deck: u32) {
        let mut report = self.status(granted, ReportedOutcome::Done, Vec::new());
        report.follow_up = kept;
        report.awaits_work = kept;
        report.on_deck = on_deck;
        self.send_status(&report).await;
    }

    /// The next ready task's message (waiting at most `within`), acked.
    pub(crate) async fn take_ready_message(&mut self, within: Duration) -> TaskReady {
        let delivery = tokio::time::timeout(within, self.consumer.next())
            .await
            .expect("a task is ready")
            .unwrap()
            .unwrap();
        let message = delivery.message.clone();
        delivery.ack().await.unwrap();
        message
    }

    /// Reports `granted` DONE, saying it started `next` (granted ahead) in its slot.
    pub(crate) async fn report_done_started(&self, granted: &Granted, next: TaskKey) {
        let mut report = self.status(granted, ReportedOutcome::Done, Vec::new());
        report.follow_up = false;
        report.idle_slots = 0;
        report.started_next = Some(next);
        self.send_status(&report).await;
    }

    /// Reports the end of every one of `granted` as DONE, in one `task.status_batch`.
    pub(crate) async fn report_done_together(&self, granted: &[&Granted]) {
        let batch = models::wire::StatusBatch {
            reports: granted
                .iter()
                .map(|granted| self.status(granted, ReportedOutcome::Done, Vec::new()))
                .collect(),
        };
        self.publish_as_worker("status", &batch).await;
    }

    /// The report of the end of `granted`.
    fn status(
        &self,
        granted: &Granted,
        outcome: ReportedOutcome,
        logs: Vec<models::wire::LogRecord>,
    ) -> TaskStatusReport {
        TaskStatusReport {
            task_key: granted.task,
            attempt: granted.attempt,
            lease_token: granted.token,
            worker_id: self.id.clone(),
            outcome: outcome.clone(),
            steps: Vec::new(),
            output: serde_json::json!({"by": self.id}),
            outputs: if outcome == ReportedOutcome::Done {
                granted.outputs()
            } else {
                Vec::new()
            },
            follow_up: self.follow_ups && outcome == ReportedOutcome::Done,
            idle_slots: if self.follow_ups && outcome == ReportedOutcome::Done {
                self.idle_slots
            } else {
                0
            },
            logs,
            started_next: None,
            awaits_work: false,
            on_deck: 0,
        }
    }

    /// Takes the next ready task (waiting at most `within`), claims it, acks the message once the
    /// claim is answered, and, if granted, follows `script`. Returns the grant, if any.
    pub(crate) async fn work_one(&mut self, within: Duration, script: &Script) -> Option<Granted> {
        let delivery = tokio::time::timeout(within, self.consumer.next())
            .await
            .ok()??
            .unwrap();
        let task = delivery.message.task_key;
        let reply = self.claim(task).await;
        delivery.ack().await.unwrap();
        let granted = Granted::of(&reply)?;
        assert_eq!(granted.task, task);
        match script {
            Script::Succeed => self.report(&granted, ReportedOutcome::Done).await,
            Script::Fail { retryable } => {
                self.report(
                    &granted,
                    ReportedOutcome::Failed {
                        error_type: models::TaskErrorType::Execution,
                        message: "step exited with status 1".into(),
                        retryable: *retryable,
                    },
                )
                .await;
            }
            Script::Vanish => {}
        }
        Some(granted)
    }
}
