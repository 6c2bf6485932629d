//! `baton bench chain`, `baton bench fan-in` and `baton bench latency`: how long no-op tasks
//! that depend on each other, or plans of one task, take through the whole path.
//!
//! They run in the environment `baton bench throughput` sets up ([`BenchEnv`], [`Harness`]):
//! a RabbitMQ vhost, a PostgreSQL database and a directory of their own, an in-process
//! dispatcher and one in-process worker with the handler device, all removed afterwards.
//!
//! - `chain`: one plan of N tasks, each the child of the one before; the figure is the time
//!   from sending the plan to the latest task end stored in PostgreSQL.
//! - `fan-in`: one plan of N parallel tasks and one task taking all their models; same figure.
//! - `latency`: N plans of one `noop` task, one after the other; the figures are the
//!   percentiles of send → the task's start date (its claim's grant) and send → its end date.
//!
//! Times are taken against the dates the dispatcher stores, so the 20 ms polling for DONE
//! does not count in them.
//!
//! After each run of `chain` and `fan-in`, the same number of plain-lapin round trips (a task
//! message to a worker side, its status back, both persistent and confirmed on quorum queues,
//! as `baton bench ceiling` does) runs in the same vhost, as many at once as the DAG lets
//! tasks run: one for a chain, the worker's slots for a fan-in. That is the raw broker's time
//! for the DAG's hops, which the run's time is divided by, as `throughput` is by the ceiling.
//! After each run of `latency`, as many round trips run one at a time, for their mean.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use diesel::sql_query;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use dispatcher::store::catalog;
use models::function::{FunctionInput, FunctionOutput, RetryPolicy};
use models::submission::{NewTask, PlanSubmission};
use models::{
    Function, FunctionKey, FunctionStatus, InputKind, InputRef, Metadata, OrganizationId,
    OutputKind, Permission, Permissions, PlanKey, RequirementSet, Step, TaskInput, TaskKey,
    TaskOutput,
};

use crate::OutputFormat;
use crate::bench::{BrokerBench, median};
use crate::bench_throughput::{
    BenchEnv, Device, Harness, LINK_FUNCTION_NAME, LINK_OUTPUT, RunTimes, plans_of,
    round_trips_with_retry, run_plans, start_worker,
};
use crate::output::Output;

/// How long the warm-up may take: it waits for the dispatcher to start and the worker to
/// register.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// Tasks of the `noop` warm-up plan, and the most tasks of the shaped warm-up, not counted.
const WARM_UP_TASKS: u32 = 100;

/// How often a plan is read while waiting for it to be DONE in `chain` and `fan-in`; the
/// figures come from stored dates, so this only delays the next run.
const DAG_POLL: Duration = Duration::from_millis(20);

/// How often the one-task plan of `latency` is read while waiting for it: short, because the
/// next plan is sent only once it is DONE, and long enough not to load PostgreSQL much.
const LATENCY_POLL: Duration = Duration::from_millis(2);

/// The DAG scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DagShape {
    /// Each task the child of the one before.
    Chain,
    /// Parallel tasks joined by one.
    FanIn,
}

impl DagShape {
    /// The scenario's name on the command line.
    fn name(self) -> &'static str {
        match self {
            DagShape::Chain => "chain",
            DagShape::FanIn => "fan-in",
        }
    }

    /// The goal of issue 8, in seconds for 1,000 tasks.
    fn goal_secs(self) -> f64 {
        match self {
            DagShape::Chain => 1.0,
            DagShape::FanIn => 0.5,
        }
    }

    /// How many of the shape's tasks can run at once on a worker of `slots` slots: the
    /// raw broker's round trips are run as many at a time.
    fn parallelism(self, slots: u32) -> u32 {
        match self {
            DagShape::Chain => 1,
            DagShape::FanIn => slots,
        }
    }
}

/// Options of `baton bench chain`, `fan-in` and `latency`.
#[derive(Clone, Debug)]
pub(crate) struct DagBench {
    /// A PostgreSQL URL whose role may create databases; the benchmark makes its own next to it.
    pub(crate) database_url: String,
    /// RabbitMQ and its management API (`messages` and `runs` unused).
    pub(crate) broker: BrokerBench,
    /// Tasks per run: the chain's length, the parallel tasks of the fan-in (the joining task
    /// comes on top), or the one-task plans of `latency`.
    pub(crate) tasks: u32,
    /// Measured runs; medians are reported.
    pub(crate) runs: u32,
    /// Tasks the worker runs at once.
    pub(crate) executor_limit: u32,
    /// How long one run may take before it is declared hung.
    pub(crate) run_timeout: Duration,
}

/// What `baton bench chain` or `fan-in` measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct DagFigures {
    /// The scenario.
    pub(crate) shape: DagShape,
    /// Tasks in the plan (the fan-in's joining task included).
    pub(crate) tasks: u32,
    /// Measured runs.
    pub(crate) runs: u32,
    /// Tasks the worker ran at once.
    pub(crate) executor_limit: u32,
    /// Seconds from sending the plan to the latest task end stored, per run.
    pub(crate) total_secs: Vec<f64>,
    /// Seconds until the plan was accepted, per run.
    pub(crate) submit_secs: Vec<f64>,
    /// Median of `total_secs`.
    pub(crate) median_total_secs: f64,
    /// Median over runs of the median claim grant → end of the plan's tasks (ms).
    pub(crate) attempt_ms: f64,
    /// Seconds the raw broker took for as many round trips, as many at once as the DAG lets
    /// tasks run, after each run.
    pub(crate) broker_secs: Vec<f64>,
    /// Median of `broker_secs`.
    pub(crate) median_broker_secs: f64,
    /// Median over runs of the raw broker's seconds divided by the run's: 1 is the broker's
    /// speed.
    pub(crate) broker_ratio: f64,
    /// The goal of issue 8 (for 1,000 tasks).
    pub(crate) goal_secs: f64,
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Percentiles {
    /// Median over runs of each run's 50th percentile.
    pub(crate) p50_ms: f64,
    /// Median over runs of each run's 99th percentile.
    pub(crate) p99_ms: f64,
    /// Each run's 50th percentile.
    pub(crate) p50_runs: Vec<f64>,
    /// Each run's 99th percentile.
    pub(crate) p99_runs: Vec<f64>,
}

/// What `baton bench latency` measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct LatencyFigures {
    /// One-task plans per run.
    pub(crate) plans: u32,
    /// Measured runs.
    pub(crate) runs: u32,
    /// Tasks the worker ran at once.
    pub(crate) executor_limit: u32,
    /// From sending the plan to the task's start date (its claim's grant).
    pub(crate) submit_to_start: Percentiles,
    /// From sending the plan to the task's end date (DONE).
    pub(crate) submit_to_done: Percentiles,
    /// The mean of as many plain-lapin round trips, one at a time, after each run (ms).
    pub(crate) broker_round_trip_runs: Vec<f64>,
    /// Median of `broker_round_trip_runs`.
    pub(crate) broker_round_trip_ms: f64,
}

/// The `link` function: takes any number of models, writes one.
fn link_function(owner: &OrganizationId) -> Function {
    let now = Utc::now();
    Function {
        key: FunctionKey(Uuid::new_v4()),
        name: LINK_FUNCTION_NAME.into(),
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
        inputs: vec![FunctionInput {
            identifier: "models".into(),
            kind: InputKind::Model,
            multiple: true,
            optional: true,
        }],
        outputs: vec![FunctionOutput {
            identifier: LINK_OUTPUT.into(),
            kind: OutputKind::Model,
            multiple: false,
        }],
        steps: vec![Step {
            timeout_secs: None,
            name: "link".into(),
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

/// A plan of `tasks` `link` tasks shaped as `shape` (the fan-in gets one more, joining task).
fn dag_plan(
    shape: DagShape,
    tasks: u32,
    function: FunctionKey,
    owner: &OrganizationId,
) -> PlanSubmission {
    let keys: Vec<TaskKey> = (0..tasks).map(|_| TaskKey(Uuid::new_v4())).collect();
    let outputs = BTreeMap::from([(
        LINK_OUTPUT.to_owned(),
        TaskOutput {
            permissions: Permissions::private(owner),
            transient: false,
        },
    )]);
    let input_from = |parent: TaskKey| TaskInput {
        identifier: "models".into(),
        source: InputRef::ParentOutput {
            parent_task_key: parent,
            parent_task_output_identifier: LINK_OUTPUT.into(),
        },
    };
    let task = |key: TaskKey, inputs: Vec<TaskInput>| NewTask {
        key,
        function_key: function,
        name: None,
        inputs,
        outputs: outputs.clone(),
        parameters: serde_json::Map::new(),
        metadata: Metadata::new(),
        tag: String::new(),
        worker: Some(owner.clone()),
        requirements: RequirementSet::any(),
        input_type: None,
        input: serde_json::Value::Null,
    };
    let new_tasks = match shape {
        DagShape::Chain => keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                let inputs = match index.checked_sub(1) {
                    Some(parent) => vec![input_from(keys[parent])],
                    None => Vec::new(),
                };
                task(*key, inputs)
            })
            .collect(),
        DagShape::FanIn => {
            let mut new_tasks: Vec<NewTask> =
                keys.iter().map(|key| task(*key, Vec::new())).collect();
            new_tasks.push(task(
                TaskKey(Uuid::new_v4()),
                keys.iter().map(|key| input_from(*key)).collect(),
            ));
            new_tasks
        }
    };
    PlanSubmission {
        key: PlanKey(Uuid::new_v4()),
        name: format!("{} of {tasks}", shape.name()),
        tag: "bench".into(),
        metadata: Metadata::new(),
        project: None,
        tasks: new_tasks,
    }
}

/// The stored dates of one plan's tasks, reduced.
#[derive(diesel::QueryableByName)]
struct PlanDates {
    /// The earliest start (claim grant).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    first_start: Option<DateTime<Utc>>,
    /// The latest end.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    last_end: Option<DateTime<Utc>>,
}

/// The earliest start and latest end of `plan`'s tasks.
async fn plan_dates(
    conn: &mut AsyncPgConnection,
    plan: PlanKey,
) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let dates = sql_query(
        "SELECT min(start_date) AS first_start, max(end_date) AS last_end \
         FROM tasks WHERE compute_plan_key = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(plan.0)
    .get_result::<PlanDates>(conn)
    .await
    .with_context(|| format!("reading the dates of plan {plan}'s tasks"))?;
    match (dates.first_start, dates.last_end) {
        (Some(start), Some(end)) => Ok((start, end)),
        _ => anyhow::bail!("plan {plan} is DONE but its tasks have no start or end date"),
    }
}

/// The latest end of `plan`'s tasks other than `join`, and `join`'s start (its claim's grant).
async fn join_dates(
    conn: &mut AsyncPgConnection,
    plan: PlanKey,
    join: TaskKey,
) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let dates = sql_query(
        "SELECT (SELECT start_date FROM tasks WHERE key = $2) AS first_start, \
                max(end_date) AS last_end \
         FROM tasks WHERE compute_plan_key = $1 AND key <> $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(plan.0)
    .bind::<diesel::sql_types::Uuid, _>(join.0)
    .get_result::<PlanDates>(conn)
    .await
    .with_context(|| format!("reading the dates of plan {plan}'s joining task"))?;
    match (dates.last_end, dates.first_start) {
        (Some(parallel_end), Some(join_start)) => Ok((parallel_end, join_start)),
        _ => anyhow::bail!("plan {plan} is DONE but its tasks have no start or end date"),
    }
}

/// Milliseconds from `from` to `to`.
fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(f64::NAN, |micros| micros as f64 / 1_000.0)
}

/// The nearest-rank `quantile` (0 < quantile ≤ 1) of `values`.
fn percentile(values: &mut [f64], quantile: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = (quantile * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Sets up the environment, starts one handler worker, warms up, then runs `body`; removes
/// everything afterwards.
async fn in_environment<T>(
    options: &DagBench,
    body: impl AsyncFnOnce(&mut Harness, &mut BenchEnv, FunctionKey) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    anyhow::ensure!(options.tasks >= 1, "--tasks must be at least 1");
    anyhow::ensure!(options.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(
        options.executor_limit >= 1,
        "--executor-limit must be at least 1"
    );
    let mut env = BenchEnv::create(&options.database_url, &options.broker).await?;
    let outcome = options
        .broker
        .until_stopped(async {
            let mut harness = Harness::start(&mut env).await?;
            let outcome = async {
                let organization = crate::bench_throughput::organization();
                let link = link_function(&organization);
                catalog::insert_function(&mut harness.conn, &link)
                    .await
                    .context("registering the link function")?;
                env.services.workers.push(start_worker(
                    &env.amqp_url,
                    Device::Handler,
                    0,
                    options.executor_limit,
                    &env.dir,
                )?);
                // Waits for the dispatcher to start and the worker to register; not counted.
                let warm_up = plans_of(WARM_UP_TASKS, 1, harness.function, &organization);
                run_plans(
                    &warm_up,
                    &harness.rpc,
                    &mut harness.conn,
                    &mut env.services,
                    WARM_UP_TIMEOUT,
                    DAG_POLL,
                )
                .await
                .context("running the warm-up plan")?;
                body(&mut harness, &mut env, link.key).await
            }
            .await;
            harness.close().await;
            outcome
        })
        .await;
    env.finish(outcome).await
}

/// Sends `plan` and waits for it to be DONE.
async fn run_one(
    plan: &PlanSubmission,
    harness: &mut Harness,
    env: &mut BenchEnv,
    timeout: Duration,
    poll: Duration,
) -> anyhow::Result<RunTimes> {
    run_plans(
        std::slice::from_ref(plan),
        &harness.rpc,
        &mut harness.conn,
        &mut env.services,
        timeout,
        poll,
    )
    .await
}

/// Runs `baton bench chain` or `baton bench fan-in`.
pub(crate) async fn dag(shape: DagShape, options: DagBench) -> anyhow::Result<DagFigures> {
    in_environment(&options, async |harness, env, link| {
        let organization = crate::bench_throughput::organization();
        // The shape's own path (models written, uploaded, fetched) warmed up, not counted.
        let warm_up = dag_plan(shape, options.tasks.min(20), link, &organization);
        run_one(&warm_up, harness, env, WARM_UP_TIMEOUT, DAG_POLL)
            .await
            .context("running the shaped warm-up plan")?;
        let mut total_secs = Vec::new();
        let mut submit_secs = Vec::new();
        let mut attempt_ms = Vec::new();
        let mut broker_secs = Vec::new();
        let mut ratios = Vec::new();
        let mut tasks = 0;
        for run in 0..options.runs {
            let plan = dag_plan(shape, options.tasks, link, &organization);
            tasks = u32::try_from(plan.tasks.len()).unwrap_or(u32::MAX);
            let times = run_one(&plan, harness, env, options.run_timeout, DAG_POLL)
                .await
                .with_context(|| format!("run {}", run + 1))?;
            let (_, last_end) = plan_dates(&mut harness.conn, plan.key).await?;
            let total = millis(times.sent_at, last_end) / 1_000.0;
            if let (DagShape::FanIn, Some(join)) = (shape, plan.tasks.last()) {
                let (parallel_end, join_start) =
                    join_dates(&mut harness.conn, plan.key, join.key).await?;
                tracing::info!(
                    "fan-in, run {}: the parallel tasks' last end after {:.3} s, \
                     the join's start after {:.3} s",
                    run + 1,
                    millis(times.sent_at, parallel_end) / 1_000.0,
                    millis(times.sent_at, join_start) / 1_000.0,
                );
            }
            tracing::info!(
                "{}, run {}: {total:.3} s to the last DONE (accepted after {:.3} s)",
                shape.name(),
                run + 1,
                times.submitted.as_secs_f64()
            );
            let in_flight = shape.parallelism(options.executor_limit);
            let broker = round_trips_with_retry(&env.amqp_url, tasks, in_flight)
                .await?
                .as_secs_f64();
            tracing::info!(
                "{}, run {}: the raw broker took {broker:.3} s for {tasks} round trips, \
                 {in_flight} at a time",
                shape.name(),
                run + 1,
            );
            total_secs.push(total);
            broker_secs.push(broker);
            ratios.push(broker / total);
            submit_secs.push(times.submitted.as_secs_f64());
            attempt_ms.push(times.attempt_ms);
        }
        Ok(DagFigures {
            shape,
            tasks,
            runs: options.runs,
            executor_limit: options.executor_limit,
            median_total_secs: median(total_secs.clone()),
            total_secs,
            submit_secs,
            attempt_ms: median(attempt_ms),
            median_broker_secs: median(broker_secs.clone()),
            broker_secs,
            broker_ratio: median(ratios),
            goal_secs: shape.goal_secs(),
        })
    })
    .await
}

/// Runs `baton bench latency`.
pub(crate) async fn latency(options: DagBench) -> anyhow::Result<LatencyFigures> {
    in_environment(&options, async |harness, env, _link| {
        let organization = crate::bench_throughput::organization();
        let mut start = (Vec::new(), Vec::new());
        let mut done = (Vec::new(), Vec::new());
        let mut broker_round_trips = Vec::new();
        for run in 0..options.runs {
            let mut to_start = Vec::new();
            let mut to_done = Vec::new();
            for _ in 0..options.tasks {
                let plan = plans_of(1, 1, harness.function, &organization)
                    .pop()
                    .context("a plan of one task")?;
                let times = run_one(&plan, harness, env, options.run_timeout, LATENCY_POLL)
                    .await
                    .with_context(|| format!("run {}", run + 1))?;
                let (started, ended) = plan_dates(&mut harness.conn, plan.key).await?;
                to_start.push(millis(times.sent_at, started));
                to_done.push(millis(times.sent_at, ended));
            }
            let figures = [
                percentile(&mut to_start, 0.5),
                percentile(&mut to_start, 0.99),
                percentile(&mut to_done, 0.5),
                percentile(&mut to_done, 0.99),
            ];
            tracing::info!(
                "latency, run {}: submit → start p50 {:.2} ms, p99 {:.2} ms; submit → DONE p50 {:.2} ms, p99 {:.2} ms",
                run + 1,
                figures[0],
                figures[1],
                figures[2],
                figures[3]
            );
            start.0.push(figures[0]);
            start.1.push(figures[1]);
            done.0.push(figures[2]);
            done.1.push(figures[3]);
            let broker = round_trips_with_retry(&env.amqp_url, options.tasks, 1).await?;
            broker_round_trips.push(broker.as_secs_f64() * 1_000.0 / f64::from(options.tasks));
        }
        let percentiles = |(p50_runs, p99_runs): (Vec<f64>, Vec<f64>)| Percentiles {
            p50_ms: median(p50_runs.clone()),
            p99_ms: median(p99_runs.clone()),
            p50_runs,
            p99_runs,
        };
        Ok(LatencyFigures {
            plans: options.tasks,
            runs: options.runs,
            executor_limit: options.executor_limit,
            submit_to_start: percentiles(start),
            submit_to_done: percentiles(done),
            broker_round_trip_ms: median(broker_round_trips.clone()),
            broker_round_trip_runs: broker_round_trips,
        })
    })
    .await
}

/// The values of `runs`, formatted with `decimals` and joined by spaces.
fn joined(runs: &[f64], decimals: usize) -> String {
    runs.iter()
        .map(|value| format!("{value:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints `bench chain` or `bench fan-in`: a table for people, then one JSON line per figure.
pub(crate) fn print_dag_bench(
    out: &Output,
    format: OutputFormat,
    figures: &DagFigures,
) -> anyhow::Result<()> {
    let name = figures.shape.name();
    if format == OutputFormat::Table {
        let mut table = Table::new();
        table
            .load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec![
                format!(
                    "{name}: {} no-op tasks, 1 worker × {} slots",
                    figures.tasks, figures.executor_limit
                ),
                "median".to_owned(),
                "goal (1,000 tasks)".to_owned(),
                "runs".to_owned(),
            ]);
        table.add_row(vec![
            "send → last DONE (s)".to_owned(),
            format!("{:.3}", figures.median_total_secs),
            format!("≤ {}", figures.goal_secs),
            joined(&figures.total_secs, 3),
        ]);
        table.add_row(vec![
            "plan accepted after (s)".to_owned(),
            format!("{:.3}", median(figures.submit_secs.clone())),
            String::new(),
            joined(&figures.submit_secs, 3),
        ]);
        table.add_row(vec![
            "claim → DONE per task (ms, median)".to_owned(),
            format!("{:.1}", figures.attempt_ms),
            String::new(),
            String::new(),
        ]);
        table.add_row(vec![
            format!(
                "raw broker: as many round trips, {} at a time (s)",
                figures.shape.parallelism(figures.executor_limit)
            ),
            format!("{:.3}", figures.median_broker_secs),
            String::new(),
            joined(&figures.broker_secs, 3),
        ]);
        table.add_row(vec![
            "ratio: raw broker / send → last DONE".to_owned(),
            format!("{:.3}", figures.broker_ratio),
            String::new(),
            String::new(),
        ]);
        out.line(table);
    }
    let line = json!({
        "scenario": name,
        "figure": "total_secs",
        "value": figures.median_total_secs,
        "goal": figures.goal_secs,
        "tasks": figures.tasks,
        "runs": figures.runs,
        "executor_limit": figures.executor_limit,
        "run_values": figures.total_secs,
        "submit_secs": figures.submit_secs,
        "attempt_ms": figures.attempt_ms,
        "broker_secs": figures.median_broker_secs,
        "broker_run_values": figures.broker_secs,
        "broker_in_flight": figures.shape.parallelism(figures.executor_limit),
        "broker_ratio": figures.broker_ratio,
    });
    out.line(serde_json::to_string(&line)?);
    Ok(())
}

/// Prints `bench latency`: a table for people, then one JSON line per figure.
pub(crate) fn print_latency_bench(
    out: &Output,
    format: OutputFormat,
    figures: &LatencyFigures,
) -> anyhow::Result<()> {
    let rows = [
        (
            "submit_to_start",
            "p50",
            &figures.submit_to_start,
            Some(1.0),
        ),
        (
            "submit_to_start",
            "p99",
            &figures.submit_to_start,
            Some(3.0),
        ),
        ("submit_to_done", "p50", &figures.submit_to_done, None),
        ("submit_to_done", "p99", &figures.submit_to_done, None),
    ];
    let pick = |percentiles: &Percentiles, which: &str| {
        if which == "p50" {
            (percentiles.p50_ms, percentiles.p50_runs.clone())
        } else {
            (percentiles.p99_ms, percentiles.p99_runs.clone())
        }
    };
    if format == OutputFormat::Table {
        let mut table = Table::new();
        table
            .load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(vec![
                format!(
                    "latency: {} one-task plans in sequence, 1 worker × {} slots",
                    figures.plans, figures.executor_limit
                ),
                "median (ms)".to_owned(),
                "goal (ms)".to_owned(),
                "runs (ms)".to_owned(),
            ]);
        for (figure, which, percentiles, goal) in &rows {
            let (value, runs) = pick(percentiles, which);
            table.add_row(vec![
                format!("{} {which}", figure.replace('_', " ")),
                format!("{value:.2}"),
                goal.map_or_else(String::new, |goal| format!("≤ {goal}")),
                joined(&runs, 2),
            ]);
        }
        table.add_row(vec![
            "raw broker: a round trip, one at a time (mean)".to_owned(),
            format!("{:.2}", figures.broker_round_trip_ms),
            String::new(),
            joined(&figures.broker_round_trip_runs, 2),
        ]);
        out.line(table);
    }
    for (figure, which, percentiles, goal) in &rows {
        let (value, runs) = pick(percentiles, which);
        let line = json!({
            "scenario": "latency",
            "figure": format!("{figure}_{which}_ms"),
            "value": value,
            "goal": goal,
            "plans": figures.plans,
            "runs": figures.runs,
            "executor_limit": figures.executor_limit,
            "run_values": runs,
        });
        out.line(serde_json::to_string(&line)?);
    }
    let line = json!({
        "scenario": "latency",
        "figure": "broker_round_trip_ms",
        "value": figures.broker_round_trip_ms,
        "plans": figures.plans,
        "runs": figures.runs,
        "run_values": figures.broker_round_trip_runs,
    });
    out.line(serde_json::to_string(&line)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{DagShape, dag_plan, percentile};
    use models::{FunctionKey, InputRef, OrganizationId};

    #[test]
    fn chain_tasks_each_take_the_one_before() {
        let owner = OrganizationId::from("bench");
        let plan = dag_plan(DagShape::Chain, 4, FunctionKey(uuid::Uuid::nil()), &owner);
        assert_eq!(plan.tasks.len(), 4);
        assert!(plan.tasks[0].inputs.is_empty());
        for pair in plan.tasks.windows(2) {
            assert_eq!(pair[1].inputs.len(), 1);
            match &pair[1].inputs[0].source {
                InputRef::ParentOutput {
                    parent_task_key, ..
                } => assert_eq!(*parent_task_key, pair[0].key),
                InputRef::Asset { .. } => panic!("expected a parent output"),
            }
        }
    }

    #[test]
    fn fan_in_joins_every_parallel_task() {
        let owner = OrganizationId::from("bench");
        let plan = dag_plan(DagShape::FanIn, 5, FunctionKey(uuid::Uuid::nil()), &owner);
        assert_eq!(plan.tasks.len(), 6);
        assert!(plan.tasks[..5].iter().all(|task| task.inputs.is_empty()));
        assert_eq!(plan.tasks[5].inputs.len(), 5);
    }

    #[test]
    fn the_raw_broker_runs_a_chain_one_at_a_time_and_a_fan_in_slot_by_slot() {
        assert_eq!(DagShape::Chain.parallelism(8), 1);
        assert_eq!(DagShape::FanIn.parallelism(8), 8);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.5), 50.0);
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut [3.0], 0.99), 3.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
