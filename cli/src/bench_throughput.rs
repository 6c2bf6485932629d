//! `baton bench throughput`: how many independent no-op tasks per second go through the whole
//! path (submission over AMQP, storage, outbox relay, claim, run, report, DONE in PostgreSQL),
//! with the plain-lapin ceiling (`bench_ceiling`) measured in the same run: confirmed publish +
//! consume msgs/s, and task → worker → status round trips/s with
//! [`DEFAULT_IN_FLIGHT`] in flight.
//!
//! It brings up everything it needs on the local services and removes it afterwards: a RabbitMQ
//! vhost and a PostgreSQL database of its own, a dispatcher and one worker (or more, with
//! `--workers`) in this process. The worker runs the one-step function `noop` (argv `true`)
//! either in-process, through a handler named `noop`, or as a subprocess, when no handler is
//! registered.
//!
//! Each device gets a warm-up plan (not counted, it also waits for the workers' registration),
//! then `runs` measured runs, each of fresh plans, alternating with runs of the baseline.
//!
//! The environment ([`BenchEnv`]) and the dispatcher with its producer ([`Harness`]) are shared
//! with `bench chain`, `fan-in` and `latency` (`bench_dag`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use diesel::sql_query;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use broker::topology::SUBMIT_EXCHANGE;
use broker::{Broker, BrokerConfig, RpcClient};
use dispatcher::store::{self, catalog, plans};
use models::function::RetryPolicy;
use models::submission::{NewTask, PlanSubmission};
use models::validation::plan::Limits;
use models::wire::{SubmissionReply, WireMessage};
use models::{
    Function, FunctionKey, FunctionStatus, Metadata, Organization, OrganizationId, Permission,
    Permissions, PlanCounters, PlanKey, PlanStatus, RequirementSet, Role, Step, TaskKey, User,
};

use crate::bench::{BenchVhost, BrokerBench, median, run_lapin};
use crate::bench_ceiling::{DEFAULT_IN_FLIGHT, run_round_trips};
use crate::bench_cpu::{CpuPerTask, CpuTicks};
use crate::output::Output;
use crate::{OutputFormat, ThroughputDevices};

/// The organization the benchmark's dispatcher acts as.
const ORGANIZATION: &str = "bench";

/// The function every task runs, and the name of the worker's in-process handler.
const FUNCTION_NAME: &str = "noop";

/// The function of DAG benchmarks' tasks (`bench chain`, `bench fan-in`): a no-op that takes
/// its parents' models and writes a one-byte model, so that tasks can depend on each other;
/// also the name of its in-process handler.
pub(crate) const LINK_FUNCTION_NAME: &str = "link";

/// The output [`LINK_FUNCTION_NAME`] writes.
pub(crate) const LINK_OUTPUT: &str = "model";

/// How long one plan submission may wait for the dispatcher's answer: storing a plan of the
/// largest allowed batch takes seconds, and the first one waits for the dispatcher to start.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the stored plans are read while waiting for them to be DONE: short against a run
/// of a second or more, long enough not to load PostgreSQL.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Tasks of the warm-up plan run before each device's measured runs.
const WARM_UP_TASKS: u32 = 100;

/// How long the dispatcher and each worker get to stop before their tasks are aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `baton bench throughput`.
#[derive(Clone, Debug)]
pub(crate) struct ThroughputBench {
    /// A PostgreSQL URL whose role may create databases; the benchmark makes its own next to it.
    pub(crate) database_url: String,
    /// RabbitMQ and its management API; `messages` and `runs` are those of the baseline.
    pub(crate) broker: BrokerBench,
    /// Tasks per run; by default [`Device::default_tasks`].
    pub(crate) tasks: Option<u32>,
    /// Which devices to measure.
    pub(crate) devices: ThroughputDevices,
    /// Measured runs per device.
    pub(crate) runs: u32,
    /// Tasks each worker runs at once.
    pub(crate) executor_limit: u32,
    /// Workers, each with `executor_limit` slots.
    pub(crate) workers: u32,
    /// Plans the tasks of a run are split across (default: as few as the batch limit allows).
    pub(crate) plans: Option<u32>,
    /// How long one run may take before it is declared hung.
    pub(crate) run_timeout: Duration,
}

/// How the worker runs the `noop` step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Device {
    /// In-process, through a registered handler that returns at once.
    Handler,
    /// As a subprocess running `true`, in an attempt workspace.
    Subprocess,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::Handler => "handler",
            Device::Subprocess => "subprocess",
        }
    }

    /// Tasks per run without `--tasks`: issue 8's 20,000 for the in-process handler (the
    /// throughput scenario), 2,000 for subprocesses (the subprocess scenario).
    pub(crate) fn default_tasks(self) -> u32 {
        match self {
            Device::Handler => 20_000,
            Device::Subprocess => 2_000,
        }
    }
}

impl ThroughputBench {
    /// Tasks per run on `device`.
    fn tasks_for(&self, device: Device) -> u32 {
        self.tasks.unwrap_or_else(|| device.default_tasks())
    }

    /// The devices to measure.
    fn devices(&self) -> Vec<Device> {
        match self.devices {
            ThroughputDevices::Handler => vec![Device::Handler],
            ThroughputDevices::Subprocess => vec![Device::Subprocess],
            ThroughputDevices::Both => vec![Device::Handler, Device::Subprocess],
        }
    }

    /// Plans a run of `tasks` tasks is split across, or why `--plans` cannot be used.
    fn plans_for(&self, tasks: u32) -> anyhow::Result<u32> {
        let max_tasks = u32::try_from(Limits::DEFAULT.max_tasks).unwrap_or(u32::MAX);
        let plans = self.plans.unwrap_or_else(|| tasks.div_ceil(max_tasks));
        anyhow::ensure!(
            (1..=tasks).contains(&plans),
            "--plans must be between 1 and the tasks of a run ({tasks})"
        );
        anyhow::ensure!(
            tasks.div_ceil(plans) <= max_tasks,
            "--plans {plans} puts more than {max_tasks} tasks in a plan, the submission batch limit"
        );
        Ok(plans)
    }
}

/// What one device measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct DeviceFigures {
    /// The device.
    pub(crate) device: Device,
    /// Tasks per run.
    pub(crate) tasks: u32,
    /// Plans per run.
    pub(crate) plans: u32,
    /// Seconds from the first submission to every plan DONE, per run.
    pub(crate) run_secs: Vec<f64>,
    /// Seconds until every plan of a run was accepted, per run.
    pub(crate) submit_secs: Vec<f64>,
    /// Median tasks per second.
    pub(crate) tasks_per_sec: f64,
    /// Milliseconds of wall time per task at that rate.
    pub(crate) per_task_ms: f64,
    /// Median over runs of the median time from a task's claim grant to its DONE (ms).
    pub(crate) attempt_ms: f64,
    /// The baseline's msgs/s per run, measured between this device's runs.
    pub(crate) ceiling_runs: Vec<f64>,
    /// Median of `ceiling_runs`.
    pub(crate) ceiling_msgs_per_sec: f64,
    /// `tasks_per_sec / ceiling_msgs_per_sec`.
    pub(crate) ratio: f64,
    /// The ceiling's round trips/s per run ([`DEFAULT_IN_FLIGHT`] in flight, as many as
    /// tasks), measured between this device's runs.
    pub(crate) round_trip_runs: Vec<f64>,
    /// Median of `round_trip_runs`.
    pub(crate) ceiling_round_trips_per_sec: f64,
    /// `tasks_per_sec / ceiling_round_trips_per_sec`: the figure issue 8's goal is set on.
    pub(crate) round_trip_ratio: f64,
    /// CPU per task of this process, PostgreSQL and RabbitMQ, per run (none without `/proc`).
    pub(crate) cpu_runs: Vec<CpuPerTask>,
    /// Each group's median of `cpu_runs`.
    pub(crate) cpu_ms_per_task: Option<CpuPerTask>,
}

/// What `baton bench throughput` measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ThroughputFigures {
    /// Measured runs per device.
    pub(crate) runs: u32,
    /// Tasks each worker ran at once.
    pub(crate) executor_limit: u32,
    /// Workers.
    pub(crate) workers: u32,
    /// One entry per device measured.
    pub(crate) devices: Vec<DeviceFigures>,
}

/// A service running in a task of this process, with its shutdown token.
type Service = (CancellationToken, JoinHandle<anyhow::Result<()>>);

/// The dispatcher and workers a benchmark runs in-process.
#[derive(Default)]
pub(crate) struct Services {
    /// The dispatcher, once started.
    dispatcher: Option<Service>,
    /// The workers started.
    pub(crate) workers: Vec<Service>,
}

impl Services {
    /// An error if the dispatcher or a worker stopped on its own.
    pub(crate) async fn check(&mut self) -> anyhow::Result<()> {
        if let Some((_, handle)) = &self.dispatcher
            && handle.is_finished()
            && let Some((_, handle)) = self.dispatcher.take()
        {
            return stopped("dispatcher", handle).await;
        }
        if let Some(index) = self
            .workers
            .iter()
            .position(|(_, handle)| handle.is_finished())
        {
            let (_, handle) = self.workers.swap_remove(index);
            return stopped("worker", handle).await;
        }
        Ok(())
    }

    /// Stops the workers and waits for them.
    pub(crate) async fn stop_workers(&mut self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        for worker in std::mem::take(&mut self.workers) {
            let stopped = stop("worker", Some(worker)).await;
            if outcome.is_ok() {
                outcome = stopped;
            }
        }
        outcome
    }

    /// Stops the workers and the dispatcher.
    async fn stop_all(&mut self) -> anyhow::Result<()> {
        let workers = self.stop_workers().await;
        let dispatcher = stop("dispatcher", self.dispatcher.take()).await;
        workers.and(dispatcher)
    }
}

/// The error to report for service `name` that ended during the benchmark.
async fn stopped(name: &str, handle: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    match handle.await {
        Ok(Ok(())) => bail!("the {name} stopped during the benchmark"),
        Ok(Err(error)) => Err(error.context(format!("the {name} stopped during the benchmark"))),
        Err(join_error) => bail!("the {name} panicked: {join_error}"),
    }
}

/// Cancels a service's token and waits for it (aborting it after [`STOP_TIMEOUT`]).
async fn stop(name: &str, service: Option<Service>) -> anyhow::Result<()> {
    let Some((token, mut handle)) = service else {
        return Ok(());
    };
    token.cancel();
    match tokio::time::timeout(STOP_TIMEOUT, &mut handle).await {
        Ok(Ok(result)) => result.with_context(|| format!("stopping the {name}")),
        Ok(Err(join_error)) => Err(anyhow::anyhow!("the {name} panicked: {join_error}")),
        Err(_) => {
            handle.abort();
            bail!("the {name} did not stop within {STOP_TIMEOUT:?}")
        }
    }
}

fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let root = base.rsplit_once('/').map_or(base, |(root, _)| root);
    format!("{root}/{database}{query}")
}

fn noop_function(owner: &OrganizationId) -> Function {
    let now = Utc::now();
    Function {
        key: FunctionKey(Uuid::new_v4()),
        name: FUNCTION_NAME.into(),
        display_name: None,
        summary: None,
        owner: owner.clone(),
        creator: None,
        project: None,
        permissions: Permissions::new(Permission::public(owner)),
        metadata: Metadata::new(),
        description: None,
        archive: None,
        image: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        steps: vec![Step {
            timeout_secs: None,
            name: "noop".into(),
            command: vec!["true".into()],
        }],
        build_steps: Vec::new(),
        parameters: Vec::new(),
        parameter_schema: None,
        workspace: None,
        kind: None,
        requirements: RequirementSet::any(),
        retry: RetryPolicy::default(),
        timeout_secs: None,
        is_enabled: true,
        status: FunctionStatus::Ready,
        data: json!({}),
        creation_date: now,
        update_date: now,
    }
}

/// Registers the organization, the user the worker connects as, and the `noop` function.
pub(crate) async fn seed(
    conn: &mut AsyncPgConnection,
    organization: &OrganizationId,
    worker_user: &str,
) -> anyhow::Result<FunctionKey> {
    let now = Utc::now();
    catalog::insert_organization(
        conn,
        &Organization {
            id: organization.clone(),
            address: None,
            is_current: true,
            creation_date: now,
        },
    )
    .await
    .context("registering the benchmark's organization")?;
    // A worker's owner is the RabbitMQ user it connects as, which must be a baton user.
    catalog::insert_user(
        conn,
        &User {
            identifier: worker_user.into(),
            display_name: "benchmark worker".into(),
            organization: organization.clone(),
            roles: vec![Role::Worker, Role::Producer],
            is_enabled: true,
            creation_date: now,
            update_date: now,
        },
    )
    .await
    .with_context(|| format!("registering the user {worker_user} the worker connects as"))?;
    let function = noop_function(organization);
    catalog::insert_function(conn, &function)
        .await
        .context("registering the noop function")?;
    Ok(function.key)
}

/// `tasks` independent tasks of `function`, split as evenly as possible across `plans` plans.
pub(crate) fn plans_of(
    tasks: u32,
    plans: u32,
    function: FunctionKey,
    owner: &OrganizationId,
) -> Vec<PlanSubmission> {
    let base = tasks / plans;
    let extra = tasks % plans;
    (0..plans)
        .map(|plan| {
            let size = base + u32::from(plan < extra);
            PlanSubmission {
                key: PlanKey(Uuid::new_v4()),
                name: format!("throughput {}", plan + 1),
                tag: "bench".into(),
                metadata: Metadata::new(),
                project: None,
                tasks: (0..size)
                    .map(|_| NewTask {
                        key: TaskKey(Uuid::new_v4()),
                        function_key: function,
                        name: None,
                        inputs: Vec::new(),
                        outputs: Default::default(),
                        parameters: serde_json::Map::new(),
                        metadata: Metadata::new(),
                        tag: String::new(),
                        worker: Some(owner.clone()),
                        requirements: RequirementSet::any(),
                        input_type: None,
                        input: serde_json::Value::Null,
                    })
                    .collect(),
            }
        })
        .filter(|plan| !plan.tasks.is_empty())
        .collect()
}

/// What one run measured.
pub(crate) struct RunTimes {
    /// From the first submission to every plan DONE (as seen by polling).
    pub(crate) total: Duration,
    /// From the first submission to every plan accepted.
    pub(crate) submitted: Duration,
    /// Median of each task's claim grant to its DONE, in PostgreSQL's clock: the worker's
    /// time per attempt plus the report's way back.
    pub(crate) attempt_ms: f64,
    /// The wall-clock time just before the first submission was sent, to compare with the
    /// dates the dispatcher stores.
    pub(crate) sent_at: chrono::DateTime<Utc>,
}

/// Submits `plans` over AMQP and waits until all are DONE in PostgreSQL, reading them every
/// `poll`.
pub(crate) async fn run_plans(
    plans: &[PlanSubmission],
    rpc: &RpcClient,
    conn: &mut AsyncPgConnection,
    services: &mut Services,
    run_timeout: Duration,
    poll: Duration,
) -> anyhow::Result<RunTimes> {
    let tasks: usize = plans.iter().map(|plan| plan.tasks.len()).sum();
    let sent_at = Utc::now();
    let started = Instant::now();
    let replies = futures::future::join_all(plans.iter().map(|plan| {
        rpc.call::<_, SubmissionReply>(SUBMIT_EXCHANGE, PlanSubmission::KIND, plan, SUBMIT_TIMEOUT)
    }))
    .await;
    for (plan, reply) in plans.iter().zip(replies) {
        match reply.with_context(|| format!("submitting plan {}", plan.key))? {
            SubmissionReply::Accepted { .. } => {}
            SubmissionReply::Rejected { error, details, .. } => {
                let problems = details
                    .iter()
                    .map(|detail| format!("{}: {}", detail.path, detail.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                bail!("plan {} was rejected ({error}): {problems}", plan.key)
            }
        }
    }
    let submitted = started.elapsed();

    let mut pending: Vec<PlanKey> = plans.iter().map(|plan| plan.key).collect();
    let mut finished = PlanCounters::default();
    loop {
        let mut unfinished = PlanCounters::default();
        let mut still_pending = Vec::with_capacity(pending.len());
        for key in pending {
            let plan = plans::find_plan(conn, key)
                .await
                .with_context(|| format!("reading plan {key}"))?
                .with_context(|| format!("plan {key} was accepted but is not stored"))?;
            match plan.status {
                PlanStatus::Done => add(&mut finished, &plan.counters),
                PlanStatus::Failed | PlanStatus::Canceled => bail!(
                    "plan {key} ended {}: {}",
                    plan.status,
                    describe(&plan.counters)
                ),
                _ => {
                    add(&mut unfinished, &plan.counters);
                    still_pending.push(key);
                }
            }
        }
        pending = still_pending;
        if pending.is_empty() {
            let total = started.elapsed();
            let keys: Vec<PlanKey> = plans.iter().map(|plan| plan.key).collect();
            return Ok(RunTimes {
                total,
                submitted,
                attempt_ms: median_attempt_ms(conn, &keys).await?,
                sent_at,
            });
        }
        if started.elapsed() > run_timeout {
            add(&mut unfinished, &finished);
            bail!(
                "the run did not end within {run_timeout:?}: {} of {tasks} tasks DONE ({})",
                unfinished.done_count,
                describe(&unfinished)
            );
        }
        services.check().await?;
        tokio::time::sleep(poll).await;
    }
}

/// The median, over the tasks of `plans`, of the time from the grant of their claim to their
/// end, in milliseconds.
pub(crate) async fn median_attempt_ms(
    conn: &mut AsyncPgConnection,
    plans: &[PlanKey],
) -> anyhow::Result<f64> {
    #[derive(diesel::QueryableByName)]
    struct Median {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        ms: Option<f64>,
    }
    let keys: Vec<Uuid> = plans.iter().map(|plan| plan.0).collect();
    let median = sql_query(
        "SELECT percentile_cont(0.5) WITHIN GROUP \
         (ORDER BY extract(epoch FROM end_date - start_date) * 1000) AS ms \
         FROM tasks WHERE compute_plan_key = ANY($1) AND start_date IS NOT NULL",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(keys)
    .get_result::<Median>(conn)
    .await
    .context("reading the tasks' attempt times")?;
    Ok(median.ms.unwrap_or(f64::NAN))
}

fn add(total: &mut PlanCounters, counters: &PlanCounters) {
    total.task_count += counters.task_count;
    total.waiting_count += counters.waiting_count;
    total.todo_count += counters.todo_count;
    total.doing_count += counters.doing_count;
    total.done_count += counters.done_count;
    total.failed_count += counters.failed_count;
    total.canceled_count += counters.canceled_count;
}

fn describe(counters: &PlanCounters) -> String {
    format!(
        "{} waiting, {} todo, {} doing, {} done, {} failed, {} canceled",
        counters.waiting_count,
        counters.todo_count,
        counters.doing_count,
        counters.done_count,
        counters.failed_count,
        counters.canceled_count
    )
}

/// Starts in-process worker number `index` running tasks on `device`; with the handler
/// device it also runs [`LINK_FUNCTION_NAME`] in-process, writing a one-byte model.
pub(crate) fn start_worker(
    amqp_url: &str,
    device: Device,
    index: u32,
    executor_limit: u32,
    dir: &Path,
) -> anyhow::Result<Service> {
    // One identifier per device: the dispatcher refuses a worker whose identifier is still
    // active, and the previous device's worker stopped only a moment ago.
    let id = match index {
        0 => format!("bench-worker-{}", device.name()),
        _ => format!("bench-worker-{}-{index}", device.name()),
    };
    let mut config = worker::WorkerConfig::new(
        BrokerConfig::new(amqp_url, format!("baton-{id}")),
        id.as_str().into(),
        ORGANIZATION.into(),
    );
    config.executor_limit = executor_limit;
    config.work_root = dir.join(format!("work-{id}"));
    let artifacts_dir = dir.join("artifacts");
    let artifacts = worker::artifacts::LocalStore::new(&artifacts_dir).with_context(|| {
        format!(
            "opening the benchmark's artifact store {}",
            artifacts_dir.display()
        )
    })?;
    let mut builder = worker::Worker::builder(config, Arc::new(artifacts));
    if device == Device::Handler {
        builder = builder
            .handler(FUNCTION_NAME, |_context| async { Ok(()) })
            .handler(LINK_FUNCTION_NAME, |context| async move {
                let Some(path) = context.outputs.get(LINK_OUTPUT) else {
                    return Err(format!("output `{LINK_OUTPUT}` is not declared"));
                };
                tokio::fs::write(path, b"0")
                    .await
                    .map_err(|error| format!("writing output `{LINK_OUTPUT}`: {error}"))
            });
    }
    let token = CancellationToken::new();
    let handle = tokio::spawn(builder.build().run(token.clone()));
    Ok((token, handle))
}

/// Runs the lapin baseline with `count` messages, once more if it fails: its connections are
/// new each run and now and then one is closed under it, which says nothing about the speed.
async fn lapin_with_retry(amqp_url: &str, count: u32) -> anyhow::Result<Duration> {
    match run_lapin(amqp_url, count).await {
        Ok(elapsed) => Ok(elapsed),
        Err(error) => {
            tracing::warn!("the lapin baseline failed, running it again: {error:#}");
            run_lapin(amqp_url, count)
                .await
                .context("running the lapin baseline")
        }
    }
}

/// Runs `count` plain-lapin round trips, `in_flight` at a time, once more if they fail, for
/// the reason given at [`lapin_with_retry`].
pub(crate) async fn round_trips_with_retry(
    amqp_url: &str,
    count: u32,
    in_flight: u32,
) -> anyhow::Result<Duration> {
    match run_round_trips(amqp_url, count, in_flight).await {
        Ok(elapsed) => Ok(elapsed),
        Err(error) => {
            tracing::warn!("the lapin round trips failed, running them again: {error:#}");
            run_round_trips(amqp_url, count, in_flight)
                .await
                .context("running the lapin round trips")
        }
    }
}

/// Everything one benchmark needs once its vhost and database exist.
struct Setup<'a> {
    options: &'a ThroughputBench,
    amqp_url: String,
    dir: PathBuf,
}

/// A connection to the benchmark's database, a producer on its vhost and the seeded `noop`
/// function, with the dispatcher started in the environment's services.
pub(crate) struct Harness {
    /// To the benchmark's database.
    pub(crate) conn: AsyncPgConnection,
    /// The producer's connection.
    client: Broker,
    /// Submits plans.
    pub(crate) rpc: RpcClient,
    /// The `noop` function.
    pub(crate) function: FunctionKey,
}

impl Harness {
    /// Migrates the environment's database, seeds it, connects a producer and starts the
    /// dispatcher (no worker yet: see [`start_worker`]).
    pub(crate) async fn start(env: &mut BenchEnv) -> anyhow::Result<Harness> {
        store::run_migrations(&env.database_url)
            .await
            .context("migrating the benchmark database")?;
        let mut conn = AsyncPgConnection::establish(&env.database_url)
            .await
            .context("connecting to the benchmark database")?;
        let client = Broker::connect(BrokerConfig::new(&env.amqp_url, "baton-bench-producer"))
            .await
            .context("connecting the benchmark's producer to RabbitMQ")?;
        // Declared here too (the same topology the dispatcher declares), so submissions sent
        // while the dispatcher starts wait in their queue.
        client
            .declare_topology()
            .await
            .context("declaring the RabbitMQ topology")?;
        let rpc = RpcClient::new(&client).await?;
        let organization = OrganizationId::from(ORGANIZATION);
        let function = seed(&mut conn, &organization, client.user()).await?;

        let dispatcher_token = CancellationToken::new();
        let config = dispatcher::service::DispatcherConfig::new(
            env.database_url.clone(),
            BrokerConfig::new(&env.amqp_url, "baton-dispatcher"),
            organization,
        );
        env.services.dispatcher = Some((
            dispatcher_token.clone(),
            tokio::spawn(dispatcher::service::run(config, dispatcher_token)),
        ));
        Ok(Harness {
            conn,
            client,
            rpc,
            function,
        })
    }

    /// Closes the producer's connection.
    pub(crate) async fn close(self) {
        if let Err(error) = self.client.close().await {
            tracing::debug!("closing the producer's connection: {error}");
        }
    }
}

/// The organization benchmark plans run as.
pub(crate) fn organization() -> OrganizationId {
    OrganizationId::from(ORGANIZATION)
}

impl Setup<'_> {
    async fn measure(&self, env: &mut BenchEnv) -> anyhow::Result<Vec<DeviceFigures>> {
        let Harness {
            mut conn,
            client,
            rpc,
            function,
        } = Harness::start(env).await?;
        let services = &mut env.services;
        let devices = self.options.devices();
        let warm_up = devices
            .iter()
            .map(|device| self.options.tasks_for(*device))
            .min()
            .unwrap_or(1)
            .min(2_000);
        let mut figures = Vec::new();
        let outcome = async {
            // The baseline's queue and code paths warmed up, not counted.
            lapin_with_retry(&self.amqp_url, warm_up)
                .await
                .context("warming up")?;
            round_trips_with_retry(&self.amqp_url, warm_up, DEFAULT_IN_FLIGHT)
                .await
                .context("warming up")?;
            for device in devices {
                figures.push(
                    self.measure_device(device, function, &rpc, &mut conn, services)
                        .await
                        .with_context(|| format!("measuring the {} device", device.name()))?,
                );
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = client.close().await {
            tracing::debug!("closing the producer's connection: {error}");
        }
        outcome.map(|()| figures)
    }

    async fn measure_device(
        &self,
        device: Device,
        function: FunctionKey,
        rpc: &RpcClient,
        conn: &mut AsyncPgConnection,
        services: &mut Services,
    ) -> anyhow::Result<DeviceFigures> {
        let options = self.options;
        let organization = OrganizationId::from(ORGANIZATION);
        for index in 0..options.workers {
            services.workers.push(start_worker(
                &self.amqp_url,
                device,
                index,
                options.executor_limit,
                &self.dir,
            )?);
        }
        // Waits for the dispatcher to start and the workers to register; not counted.
        let task_count = options.tasks_for(device);
        let plan_count = options.plans_for(task_count)?;
        let warm_up = plans_of(task_count.min(WARM_UP_TASKS), 1, function, &organization);
        let started = Instant::now();
        run_plans(&warm_up, rpc, conn, services, SUBMIT_TIMEOUT, POLL_INTERVAL)
            .await
            .context("running the warm-up plan")?;
        tracing::info!(
            "{} device: warm-up done in {:.2} s",
            device.name(),
            started.elapsed().as_secs_f64()
        );

        let mut run_secs = Vec::new();
        let mut submit_secs = Vec::new();
        let mut attempt_ms = Vec::new();
        let mut ceiling_runs = Vec::new();
        let mut round_trip_runs = Vec::new();
        let mut cpu_runs = Vec::new();
        let tasks = f64::from(task_count);
        for run in 0..options.runs {
            let plans = plans_of(task_count, plan_count, function, &organization);
            // The ceiling's two figures, one after the other: msgs/s and round trips/s.
            let lapin = || async {
                let elapsed = lapin_with_retry(&self.amqp_url, task_count).await?;
                let trips =
                    round_trips_with_retry(&self.amqp_url, task_count, DEFAULT_IN_FLIGHT).await?;
                anyhow::Ok((tasks / elapsed.as_secs_f64(), tasks / trips.as_secs_f64()))
            };
            let mut push_ceiling = |(msgs, trips)| {
                ceiling_runs.push(msgs);
                round_trip_runs.push(trips);
            };
            // Alternate the order, so neither side always runs on a warmer machine.
            let measured = if run.is_multiple_of(2) {
                push_ceiling(lapin().await?);
                run_measured(&plans, rpc, conn, services, options.run_timeout).await
            } else {
                let measured = run_measured(&plans, rpc, conn, services, options.run_timeout).await;
                if measured.is_ok() {
                    push_ceiling(lapin().await?);
                }
                measured
            }
            .with_context(|| format!("run {}", run + 1))?;
            let (times, cpu) = measured;
            cpu_runs.extend(cpu);
            run_secs.push(times.total.as_secs_f64());
            submit_secs.push(times.submitted.as_secs_f64());
            attempt_ms.push(times.attempt_ms);
            tracing::info!(
                "{} device, run {}: {:.0} tasks/s (plans accepted after {:.2} s), lapin {:.0} msgs/s, {:.0} round trips/s",
                device.name(),
                run + 1,
                tasks / times.total.as_secs_f64(),
                times.submitted.as_secs_f64(),
                ceiling_runs[ceiling_runs.len() - 1],
                round_trip_runs[round_trip_runs.len() - 1],
            );
        }
        services.stop_workers().await?;

        let tasks_per_sec = median(run_secs.iter().map(|secs| tasks / secs).collect());
        let ceiling_msgs_per_sec = median(ceiling_runs.clone());
        let ceiling_round_trips_per_sec = median(round_trip_runs.clone());
        Ok(DeviceFigures {
            device,
            tasks: task_count,
            plans: plan_count,
            run_secs,
            submit_secs,
            tasks_per_sec,
            per_task_ms: 1_000.0 / tasks_per_sec,
            attempt_ms: median(attempt_ms),
            ceiling_runs,
            ceiling_msgs_per_sec,
            ratio: tasks_per_sec / ceiling_msgs_per_sec,
            round_trip_runs,
            ceiling_round_trips_per_sec,
            round_trip_ratio: tasks_per_sec / ceiling_round_trips_per_sec,
            cpu_ms_per_task: median_cpu(&cpu_runs),
            cpu_runs,
        })
    }
}

/// A RabbitMQ vhost, a PostgreSQL database and a directory of a benchmark's own, with the
/// services it runs in them; [`BenchEnv::finish`] stops those and removes the rest.
pub(crate) struct BenchEnv {
    name: String,
    admin: AsyncPgConnection,
    vhost: BenchVhost,
    /// The vhost's AMQP URL.
    pub(crate) amqp_url: String,
    /// The benchmark database's URL.
    pub(crate) database_url: String,
    /// A scratch directory (attempt workspaces, artifacts).
    pub(crate) dir: PathBuf,
    /// The dispatcher and workers running in this environment.
    pub(crate) services: Services,
}

impl BenchEnv {
    /// Makes a vhost, a database next to `database_url`'s and a directory; whatever was made
    /// is removed again if a later step fails.
    pub(crate) async fn create(
        database_url: &str,
        broker: &BrokerBench,
    ) -> anyhow::Result<BenchEnv> {
        let name = format!("baton_bench_{}", Uuid::new_v4().simple());
        let admin = AsyncPgConnection::establish(database_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL at {} (set --database-url or BATON_DATABASE_URL)",
                    crate::output::redact_url(database_url)
                )
            })?;
        let vhost = BenchVhost::create(broker).await?;
        let dir = std::env::temp_dir().join(&name);
        let mut env = BenchEnv {
            amqp_url: vhost.amqp_url(),
            database_url: url_with_database(database_url, &name),
            name,
            admin,
            vhost,
            dir,
            services: Services::default(),
        };
        let created = async {
            sql_query(format!("CREATE DATABASE {}", env.name))
                .execute(&mut env.admin)
                .await
                .context("creating the benchmark database (the role needs CREATEDB)")?;
            std::fs::create_dir_all(&env.dir)
                .with_context(|| format!("creating the benchmark directory {}", env.dir.display()))
        }
        .await;
        match created {
            Ok(()) => Ok(env),
            Err(error) => env.finish(Err(error)).await,
        }
    }

    /// Stops the services and removes the vhost, the database and the directory, whatever
    /// `outcome` was; the first error is the one returned, the others are logged.
    pub(crate) async fn finish<T>(mut self, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
        let cleanups = [
            self.services.stop_all().await,
            sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut self.admin)
            .await
            .map(drop)
            .context("dropping the benchmark database"),
            self.vhost.delete().await,
            match std::fs::remove_dir_all(&self.dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(anyhow::Error::from(error).context(format!(
                        "removing the benchmark directory {}",
                        self.dir.display()
                    )))
                }
                _ => Ok(()),
            },
        ];
        match outcome {
            Ok(value) => {
                for cleanup in cleanups {
                    cleanup?;
                }
                Ok(value)
            }
            Err(error) => {
                for cleanup in cleanups {
                    if let Err(cleanup_error) = cleanup {
                        tracing::warn!("cleaning up after a failed benchmark: {cleanup_error:#}");
                    }
                }
                Err(error)
            }
        }
    }
}

/// Runs the throughput benchmark in a vhost and a database of its own, both removed afterwards.
pub(crate) async fn throughput(options: ThroughputBench) -> anyhow::Result<ThroughputFigures> {
    anyhow::ensure!(options.tasks != Some(0), "--tasks must be at least 1");
    anyhow::ensure!(options.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(
        options.executor_limit >= 1,
        "--executor-limit must be at least 1"
    );
    anyhow::ensure!(options.workers >= 1, "--workers must be at least 1");
    // Refused before anything is set up.
    for device in options.devices() {
        options.plans_for(options.tasks_for(device))?;
    }

    let mut env = BenchEnv::create(&options.database_url, &options.broker).await?;
    let setup = Setup {
        options: &options,
        amqp_url: env.amqp_url.clone(),
        dir: env.dir.clone(),
    };
    let outcome = options.broker.until_stopped(setup.measure(&mut env)).await;
    let devices = env.finish(outcome).await?;
    Ok(ThroughputFigures {
        runs: options.runs,
        executor_limit: options.executor_limit,
        workers: options.workers,
        devices,
    })
}

/// [`run_plans`], with the CPU per task this process, PostgreSQL and RabbitMQ spent meanwhile
/// (none without `/proc`).
async fn run_measured(
    plans: &[PlanSubmission],
    rpc: &RpcClient,
    conn: &mut AsyncPgConnection,
    services: &mut Services,
    run_timeout: Duration,
) -> anyhow::Result<(RunTimes, Option<CpuPerTask>)> {
    let tasks: usize = plans.iter().map(|plan| plan.tasks.len()).sum();
    let before = CpuTicks::read();
    let times = run_plans(plans, rpc, conn, services, run_timeout, POLL_INTERVAL).await?;
    let cpu = before
        .zip(CpuTicks::read())
        .and_then(|(before, after)| before.per_task(&after, tasks as f64));
    Ok((times, cpu))
}

/// Each group's median over `runs`; a group missing from any run is missing; `None` for no
/// runs.
fn median_cpu(runs: &[CpuPerTask]) -> Option<CpuPerTask> {
    if runs.is_empty() {
        return None;
    }
    let group = |value: fn(&CpuPerTask) -> Option<f64>| -> Option<f64> {
        let values: Option<Vec<f64>> = runs.iter().map(value).collect();
        values.map(median)
    };
    Some(CpuPerTask {
        bench: median(runs.iter().map(|run| run.bench).collect()),
        postgres: group(|run| run.postgres),
        rabbitmq: group(|run| run.rabbitmq),
    })
}

/// `value` with 3 decimals, or `-` when unknown.
fn ms_or_dash(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.3}"))
}

/// Prints the throughput benchmark: a table for people, then one JSON line per device.
pub(crate) fn print_throughput_bench(
    out: &Output,
    format: OutputFormat,
    figures: &ThroughputFigures,
) -> anyhow::Result<()> {
    if format == OutputFormat::Table {
        let mut summary = Table::new();
        summary
            .load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec![
                format!(
                    "throughput: no-op tasks, {} worker(s) × {} slots",
                    figures.workers, figures.executor_limit
                ),
                "tasks (plans) per run".to_owned(),
                "median tasks/s".to_owned(),
                "ms per task".to_owned(),
                "claim → DONE ms (median)".to_owned(),
                "lapin msgs/s".to_owned(),
                "ratio".to_owned(),
                format!("lapin round trips/s ({DEFAULT_IN_FLIGHT} in flight)"),
                "ratio to round trips".to_owned(),
                "runs (tasks/s)".to_owned(),
                "plans accepted after (s)".to_owned(),
                "CPU ms per task: bench, PostgreSQL, RabbitMQ (median)".to_owned(),
            ]);
        for device in &figures.devices {
            let rates = device
                .run_secs
                .iter()
                .map(|secs| format!("{:.0}", f64::from(device.tasks) / secs))
                .collect::<Vec<_>>()
                .join(" ");
            let submits = device
                .submit_secs
                .iter()
                .map(|secs| format!("{secs:.2}"))
                .collect::<Vec<_>>()
                .join(" ");
            summary.add_row(vec![
                device.device.name().to_owned(),
                format!("{} ({})", device.tasks, device.plans),
                format!("{:.0}", device.tasks_per_sec),
                format!("{:.2}", device.per_task_ms),
                format!("{:.1}", device.attempt_ms),
                format!("{:.0}", device.ceiling_msgs_per_sec),
                format!("{:.3}", device.ratio),
                format!("{:.0}", device.ceiling_round_trips_per_sec),
                format!("{:.3}", device.round_trip_ratio),
                rates,
                submits,
                device.cpu_ms_per_task.map_or_else(
                    || "-".to_owned(),
                    |cpu| {
                        format!(
                            "{:.3}, {}, {}",
                            cpu.bench,
                            ms_or_dash(cpu.postgres),
                            ms_or_dash(cpu.rabbitmq)
                        )
                    },
                ),
            ]);
        }
        out.line(summary);
    }
    for device in &figures.devices {
        let line = json!({
            "scenario": "throughput",
            "device": device.device,
            "tasks": device.tasks,
            "plans": device.plans,
            "runs": figures.runs,
            "executor_limit": figures.executor_limit,
            "workers": figures.workers,
            "tasks_per_sec": device.tasks_per_sec,
            "per_task_ms": device.per_task_ms,
            "attempt_ms": device.attempt_ms,
            "ceiling_msgs_per_sec": device.ceiling_msgs_per_sec,
            "ratio": device.ratio,
            "ceiling_round_trips_per_sec": device.ceiling_round_trips_per_sec,
            "ceiling_in_flight": DEFAULT_IN_FLIGHT,
            "round_trip_ratio": device.round_trip_ratio,
            "run_secs": device.run_secs,
            "submit_secs": device.submit_secs,
            "cpu_ms_per_task": device.cpu_ms_per_task,
            "cpu_runs": device.cpu_runs,
        });
        out.line(serde_json::to_string(&line)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Device, ThroughputBench, ThroughputDevices, plans_of, url_with_database};
    use crate::bench::BrokerBench;
    use models::{FunctionKey, OrganizationId};

    #[test]
    fn tasks_are_split_evenly_across_plans() {
        let owner = OrganizationId::from("bench");
        let sizes = |tasks, plans| {
            plans_of(tasks, plans, FunctionKey(uuid::Uuid::nil()), &owner)
                .iter()
                .map(|plan| plan.tasks.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(10, 3), vec![4, 3, 3]);
        assert_eq!(sizes(2, 2), vec![1, 1]);
        assert_eq!(sizes(5, 1), vec![5]);
    }

    #[test]
    fn each_device_has_its_scenarios_task_count_unless_one_is_given() {
        let bench = |tasks, plans| ThroughputBench {
            database_url: String::new(),
            broker: BrokerBench {
                amqp_url: String::new(),
                management_url: String::new(),
                management_user: (String::new(), String::new()),
                messages: 1,
                runs: 1,
                stop: tokio_util::sync::CancellationToken::new(),
            },
            tasks,
            devices: ThroughputDevices::Both,
            runs: 1,
            executor_limit: 1,
            workers: 1,
            plans,
            run_timeout: Duration::from_secs(1),
        };
        let defaults = bench(None, None);
        assert_eq!(
            (
                defaults.tasks_for(Device::Handler),
                defaults.tasks_for(Device::Subprocess)
            ),
            (20_000, 2_000)
        );
        assert_eq!(defaults.plans_for(20_000).unwrap(), 1);
        let given = bench(Some(300), Some(3));
        assert_eq!(given.tasks_for(Device::Subprocess), 300);
        assert_eq!(given.plans_for(300).unwrap(), 3);
        let error = given.plans_for(2).unwrap_err().to_string();
        assert!(
            error.contains("between 1 and the tasks of a run (2)"),
            "{error}"
        );
    }

    #[test]
    fn database_is_replaced_in_the_url() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/baton?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
    }
}
