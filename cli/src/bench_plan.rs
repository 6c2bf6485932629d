//! `baton bench large-plan`: validate, store, publish and load a layered DAG of many tasks,
//! each run in a PostgreSQL database and a RabbitMQ vhost of its own, removed afterwards.
//!
//! Phases: validation (loading what the plan references, then `models::validation::plan`), the
//! storing transaction (validation again, then plan, tasks, edges, history and outbox rows), the
//! first ready task published and confirmed by RabbitMQ (the issue's "validate + store + first
//! publish"), the planner statistics refreshed afterwards (not counted: the relay does not wait
//! for it), and rebuilding the dispatcher's in-memory state of the plan, whose resident memory
//! per task is measured.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use broker::topology::TASKS_EXCHANGE;
use broker::{Broker, BrokerConfig, Meta, Publisher};
use dispatcher::store::{self, catalog};
use dispatcher::submission::{analyze_after, load_known_assets, submit_plan_handing_over};
use models::function::{FunctionInput, FunctionOutput, RetryPolicy};
use models::submission::{NewTask, PlanSubmission};
use models::validation::plan::{Limits, validate_plan};
use models::wire::TaskReady;
use models::{
    Function, FunctionKey, FunctionStatus, InputKind, InputRef, Metadata, Organization,
    OrganizationId, OutputKind, Permission, Permissions, PlanKey, RequirementSet, Step, TaskInput,
    TaskKey, TaskOutput,
};

use crate::bench::{BrokerBench, median};
use crate::bench_throughput::BenchEnv;

/// The goal for validating, storing and first publishing 100,000 tasks.
const GOAL_SECS: f64 = 5.0;

/// Options of `baton bench large-plan`.
#[derive(Clone, Debug)]
pub(crate) struct LargePlanBench {
    /// A PostgreSQL URL whose role may create databases; its database is replaced.
    pub(crate) database_url: String,
    /// Tasks in the plan.
    pub(crate) tasks: u32,
    /// Tasks per layer; each task takes the models of two tasks of the layer before.
    pub(crate) width: u32,
    /// Runs, each of a new plan in a fresh database; medians are reported.
    pub(crate) runs: u32,
    /// Where the benchmark makes its vhost.
    pub(crate) broker: BrokerBench,
}

/// What `baton bench large-plan` measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct LargePlanFigures {
    /// Tasks in the plan.
    pub(crate) tasks: u32,
    /// Layers of the DAG.
    pub(crate) layers: u32,
    /// Runs measured.
    pub(crate) runs: u32,
    /// Seconds to load what the plan references and validate it (median).
    pub(crate) validate_secs: f64,
    /// Seconds of validating again and storing in one transaction (median).
    pub(crate) store_secs: f64,
    /// Seconds from the start of storing to RabbitMQ's confirm of the first ready task
    /// (median): the "validate + store + first publish".
    pub(crate) first_publish_secs: f64,
    /// Each run's `first_publish_secs`.
    pub(crate) first_publish_runs: Vec<f64>,
    /// Seconds of the statistics refresh after the store (median; not in the figures above).
    pub(crate) analyze_secs: f64,
    /// Seconds to rebuild the dispatcher's state of the plan from the database (last run).
    pub(crate) load_state_secs: f64,
    /// Resident memory the plan's state added, in bytes per task (last run).
    pub(crate) state_bytes_per_task: f64,
    /// The goal for `first_publish_secs`.
    pub(crate) goal_secs: f64,
}

/// The process's resident set size in bytes, from `/proc/self/status`.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}

fn function(owner: &OrganizationId) -> Function {
    let now = Utc::now();
    Function {
        key: FunctionKey(Uuid::from_u128(1)),
        name: "step".into(),
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
            identifier: "model".into(),
            kind: OutputKind::Model,
            multiple: false,
        }],
        steps: vec![Step {
            timeout_secs: None,
            name: "run".into(),
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
        data: serde_json::json!({}),
        creation_date: now,
        update_date: now,
    }
}

/// A layered DAG: layer 0 has no parents, every later task takes the models of two tasks of
/// the layer before.
fn layered_plan(tasks: u32, width: u32, owner: &OrganizationId) -> PlanSubmission {
    let key = |n: u32| TaskKey(Uuid::from_u128(0x1000_0000 + u128::from(n)));
    let outputs = BTreeMap::from([(
        "model".to_owned(),
        TaskOutput {
            permissions: Permissions::private(owner),
            transient: false,
        },
    )]);
    let new_tasks = (0..tasks)
        .map(|n| {
            let layer = n / width;
            let inputs = if layer == 0 {
                Vec::new()
            } else {
                let previous = (layer - 1) * width;
                [previous + n % width, previous + (n + 1) % width]
                    .into_iter()
                    .map(|parent| TaskInput {
                        identifier: "models".into(),
                        source: InputRef::ParentOutput {
                            parent_task_key: key(parent),
                            parent_task_output_identifier: "model".into(),
                        },
                    })
                    .collect()
            };
            NewTask {
                key: key(n),
                function_key: FunctionKey(Uuid::from_u128(1)),
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
            }
        })
        .collect();
    PlanSubmission {
        key: PlanKey(Uuid::new_v4()),
        name: "large plan".into(),
        tag: "bench".into(),
        metadata: Metadata::new(),
        project: None,
        tasks: new_tasks,
    }
}

/// One run's phases, in seconds.
struct RunFigures {
    validate_secs: f64,
    store_secs: f64,
    first_publish_secs: f64,
    analyze_secs: f64,
}

/// One run in the fresh environment `env`: validates a new plan, then stores it as the
/// dispatcher's submission handler does and publishes its first ready task as the dispatcher's
/// relay does.
async fn run_once(
    env: &BenchEnv,
    options: &LargePlanBench,
) -> anyhow::Result<(RunFigures, PlanKey)> {
    store::run_migrations(&env.database_url).await?;
    let mut conn = AsyncPgConnection::establish(&env.database_url).await?;
    let broker = Broker::connect(BrokerConfig::new(&env.amqp_url, "baton-bench-relay"))
        .await
        .context("connecting to the benchmark's vhost")?;
    broker.declare_topology().await?;
    let owner = OrganizationId::from("bench");
    catalog::insert_organization(
        &mut conn,
        &Organization {
            id: owner.clone(),
            address: None,
            is_current: true,
            creation_date: Utc::now(),
        },
    )
    .await?;
    catalog::insert_function(&mut conn, &function(&owner)).await?;
    let submission = layered_plan(options.tasks, options.width, &owner);

    let started = Instant::now();
    let known = load_known_assets(&conn, &submission.tasks).await?;
    let limits = Limits::DEFAULT;
    let validated = validate_plan(&submission, &known.context(&owner, &limits));
    let validate_secs = started.elapsed().as_secs_f64();
    if let Err(errors) = validated {
        anyhow::bail!("the benchmark plan is invalid: {}", errors[0]);
    }

    let publisher = Publisher::new(&broker).await?;
    let started = Instant::now();
    let (plan, rows) =
        submit_plan_handing_over(&mut conn, &submission, &owner, None, Utc::now(), None)
            .await
            .context("storing the benchmark plan")?;
    let store_secs = started.elapsed().as_secs_f64();
    let first = <[_]>::first(&rows).context("the benchmark plan has no ready task")?;
    let ready: TaskReady =
        serde_json::from_value(first.payload.clone()).context("reading the first outbox row")?;
    broker.declare_task_queue(&ready.requirements).await?;
    publisher
        .publish(TASKS_EXCHANGE, &first.routing_key, &ready, Meta::default())
        .await
        .context("publishing the first ready task")?;
    let first_publish_secs = started.elapsed().as_secs_f64();
    if let Err(error) = broker.close().await {
        tracing::debug!("closing the benchmark's connection: {error}");
    }

    let started = Instant::now();
    analyze_after(&mut conn, &plan).await;
    let analyze_secs = started.elapsed().as_secs_f64();
    Ok((
        RunFigures {
            validate_secs,
            store_secs,
            first_publish_secs,
            analyze_secs,
        },
        plan.key,
    ))
}

/// Rebuilds the dispatcher's state of plan `key` in a fresh process (in this one, the allocator
/// reuses what the submission freed, so resident memory would not show the state's size).
async fn load_in_child(url: &str, key: PlanKey) -> anyhow::Result<LoadedState> {
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "load-plan-state", "--plan", &key.to_string()])
        .env("BATON_DATABASE_URL", url)
        .env("BATON_OUTPUT", "json")
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running the state-loading process")?;
    anyhow::ensure!(output.status.success(), "the state-loading process failed");
    serde_json::from_slice(&output.stdout).context("reading the state-loading process's figures")
}

/// What loading a plan's state cost, as the state-loading process reports it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct LoadedState {
    /// Tasks in the plan.
    pub(crate) tasks: usize,
    /// Seconds to load it.
    pub(crate) secs: f64,
    /// Resident memory added by the state, in bytes.
    pub(crate) resident_bytes_added: u64,
}

/// Loads the dispatcher's state of plan `key` in this (fresh) process and measures it.
pub(crate) async fn load_plan_state(
    database_url: &str,
    key: PlanKey,
) -> anyhow::Result<LoadedState> {
    let mut conn = AsyncPgConnection::establish(database_url).await?;
    let before = resident_bytes().context("reading /proc/self/status")?;
    let started = Instant::now();
    let state = dispatcher::service::event_applier::load_plan_state(&mut conn, key)
        .await?
        .with_context(|| format!("plan {key} not found"))?;
    let secs = started.elapsed().as_secs_f64();
    let after = resident_bytes().context("reading /proc/self/status")?;
    Ok(LoadedState {
        tasks: state.tasks().count(),
        secs,
        resident_bytes_added: after.saturating_sub(before),
    })
}

/// Runs the benchmark: each run in a database and a vhost of its own (`BenchEnv`), removed
/// afterwards.
pub(crate) async fn large_plan(options: LargePlanBench) -> anyhow::Result<LargePlanFigures> {
    anyhow::ensure!(options.width >= 2, "--width must be at least 2");
    anyhow::ensure!(
        options.tasks >= options.width,
        "--tasks must be at least --width"
    );
    anyhow::ensure!(options.runs >= 1, "--runs must be at least 1");
    let mut runs = Vec::new();
    let mut loaded = None;
    for run in 0..options.runs {
        let env = BenchEnv::create(&options.database_url, &options.broker).await?;
        let outcome = options
            .broker
            .until_stopped(async {
                let (figures, plan) = run_once(&env, &options).await?;
                tracing::info!(
                    "run {}: validate + store {:.2} s, first publish {:.2} s",
                    run + 1,
                    figures.store_secs,
                    figures.first_publish_secs
                );
                // The state is loaded once, after the last run.
                if run + 1 == options.runs {
                    loaded = Some(load_in_child(&env.database_url, plan).await?);
                }
                anyhow::Ok(figures)
            })
            .await;
        runs.push(env.finish(outcome).await?);
    }
    let loaded = loaded.context("no run loaded the plan's state")?;
    let median_of = |phase: fn(&RunFigures) -> f64| median(runs.iter().map(phase).collect());
    Ok(LargePlanFigures {
        tasks: options.tasks,
        layers: options.tasks.div_ceil(options.width),
        runs: options.runs,
        validate_secs: median_of(|run| run.validate_secs),
        store_secs: median_of(|run| run.store_secs),
        first_publish_secs: median_of(|run| run.first_publish_secs),
        first_publish_runs: runs.iter().map(|run| run.first_publish_secs).collect(),
        analyze_secs: median_of(|run| run.analyze_secs),
        load_state_secs: loaded.secs,
        state_bytes_per_task: loaded.resident_bytes_added as f64 / f64::from(options.tasks),
        goal_secs: GOAL_SECS,
    })
}
