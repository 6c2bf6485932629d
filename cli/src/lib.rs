//! The `baton` command: operators' and producers' entry point.
//!
//! This is the only crate that reads the environment (through clap's `env` attributes) and
//! installs a tracing subscriber. Each subcommand builds the plain-data configuration of the
//! crate it drives and calls it.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

mod bench;
mod bench_ceiling;
mod bench_cpu;
mod bench_dag;
mod bench_plan;
mod bench_throughput;
mod client;
mod commands;
mod demo;
mod output;
pub mod rabbitmq;
mod services;

pub use output::Output;

/// The default database URL: the `baton` database on the local PostgreSQL, as `.ci/services`
/// sets it up.
pub const DEFAULT_DATABASE_URL: &str = "postgres://baton:baton@127.0.0.1:5432/baton";

/// The default URL of the HTTP API: `baton dispatcher`'s default `--http-addr`.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";

/// The default AMQP URL: the local RabbitMQ's default vhost, as `guest`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// baton: a distributed task runner for fleets of device hosts.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, propagate_version = true)]
pub struct Cli {
    /// PostgreSQL URL of baton's database.
    #[arg(
        long,
        global = true,
        env = "BATON_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,

    /// How to print results.
    #[arg(long, global = true, env = "BATON_OUTPUT", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// How to write diagnostic logs to stderr (level from `RUST_LOG`, default `info`).
    #[arg(long, global = true, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The HTTP API of `baton dispatcher`, which the client commands (`submit`, `plans`,
    /// `tasks`, `logs`, `perf`, `cancel`, `abort`, `workers`, `devices`) talk to.
    #[arg(
        long,
        global = true,
        env = "BATON_API_URL",
        default_value = DEFAULT_API_URL
    )]
    pub api_url: String,

    /// A bearer token sent with every request to the HTTP API.
    #[arg(long, global = true, env = "BATON_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations; with `--admin`, also make the first administrator
    /// and print its token once.
    Migrate(MigrateArgs),
    /// Set up the database, register a sample federation, and run a three-round federated
    /// learning plan end to end with an in-process dispatcher and one worker per hospital; show
    /// its progress, then the plan, its tasks and its performances.
    Demo {
        /// RabbitMQ, with its vhost; the demo's workers connect as its user, which the demo
        /// registers in baton.
        #[arg(
            long,
            env = "BATON_AMQP_URL",
            default_value = DEFAULT_AMQP_URL,
            hide_env_values = true
        )]
        amqp_url: String,
        /// Where the demo writes its data samples and workspaces (default: `baton-demo` in the
        /// system's temporary directory).
        #[arg(long, env = "BATON_DEMO_DIR")]
        demo_dir: Option<std::path::PathBuf>,
        /// The artifact store: openers and models (default: `artifacts` in the demo directory).
        #[arg(long, env = "BATON_ARTIFACTS")]
        artifacts: Option<std::path::PathBuf>,
        /// Seconds the plan may take to end, from the start of the workers.
        #[arg(long, env = "BATON_DEMO_TIMEOUT_SECS", default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Show what is stored: how many rows of each kind, and the latest compute plans.
    Status {
        /// How many plans to list.
        #[arg(long, env = "BATON_STATUS_LIMIT", default_value_t = 10)]
        limit: i64,
    },
    /// Run the dispatcher: take submissions, publish ready tasks, apply workers' reports.
    Dispatcher {
        /// RabbitMQ, with its vhost.
        #[arg(
            long,
            env = "BATON_AMQP_URL",
            default_value = DEFAULT_AMQP_URL,
            hide_env_values = true
        )]
        amqp_url: String,
        /// The organization this deployment acts as (registered if missing; `is_current` in
        /// the API).
        #[arg(long, env = "BATON_ORGANIZATION", default_value = "local")]
        organization: String,
        /// Seconds a granted claim lasts unless its worker renews it.
        #[arg(long, env = "BATON_LEASE_SECS", default_value_t = 30)]
        lease_secs: u32,
        /// Give a task a DONE report makes ready straight to the reporting worker, when it can
        /// run it, instead of through the task queue (`false`: every task goes through its
        /// queue, in order).
        #[arg(long, env = "BATON_FOLLOW_UPS", default_value_t = true, action = clap::ArgAction::Set)]
        follow_ups: bool,
        /// With follow-ups: how many links of a chain a worker running one of them is granted
        /// ahead, to start each as soon as the link before ends DONE on it (0: none).
        #[arg(long, env = "BATON_RUN_AHEAD", default_value_t = 64)]
        run_ahead: usize,
        /// How many ready messages to keep in a task queue when more are ready: the rest wait
        /// in the outbox, released as the queue's consumers take messages, unless a worker is
        /// granted them first without the queue (0: every ready task is published at once).
        #[arg(long, env = "BATON_PUBLISH_AHEAD", default_value_t = 64)]
        publish_ahead: usize,
        /// Start a new plan's ready tasks, in the transaction that stores it, on workers that
        /// said they are idle, instead of through the task queue (`false`: every new plan's
        /// tasks go through their queues).
        #[arg(long, env = "BATON_EAGER_STARTS", default_value_t = true, action = clap::ArgAction::Set)]
        eager_starts: bool,
        /// Where the HTTP API (REST under `/api/v1`, `/healthz`, `/metrics`) listens.
        #[arg(long, env = "BATON_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: std::net::SocketAddr,
        /// The artifact store the HTTP API serves model files from: the local directory the
        /// workers upload to.
        #[arg(long, env = "BATON_ARTIFACTS", default_value = "/tmp/baton-artifacts")]
        artifacts: std::path::PathBuf,
        /// Roles of callers without credentials (none by default), e.g. `viewer` for a
        /// read-only dashboard; comma-separated.
        #[arg(long, env = "BATON_ANONYMOUS_ROLES", value_delimiter = ',')]
        anonymous_roles: Vec<models::Role>,
    },
    /// Run a worker: register, take tasks from the queues its properties satisfy, run their
    /// steps on the local device, report back.
    Worker(WorkerArgs),
    /// Measure baton's speed against a plain-lapin baseline in the same run.
    Bench {
        /// Which scenario.
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// Try baton on one machine: migrations, then a dispatcher, its HTTP API and local workers
    /// in this process, until Ctrl-C or SIGTERM.
    Dev(DevArgs),
    /// Submit a compute plan from a YAML (`.yaml`, `.yml`) or JSON file through the HTTP API;
    /// print it as stored.
    Submit(SubmitArgs),
    /// List, show and watch compute plans.
    Plans {
        /// What to do.
        #[command(subcommand)]
        command: PlansCommand,
    },
    /// List and show tasks.
    Tasks {
        /// What to do.
        #[command(subcommand)]
        command: TasksCommand,
    },
    /// Print a task's log lines; with `-f`, follow them live until the task ends.
    Logs(LogsArgs),
    /// Print a plan's performances as a table or CSV; draw them to a PNG or SVG file.
    Perf(PerfArgs),
    /// Cancel a compute plan or a task: what has not started never runs, running steps get
    /// SIGTERM, then SIGKILL after the worker's grace period.
    Cancel(CancelArgs),
    /// Abort a task: its processes are killed at once.
    Abort(AbortArgs),
    /// List workers.
    Workers {
        /// What to do.
        #[command(subcommand)]
        command: WorkersCommand,
    },
    /// List devices.
    Devices {
        /// What to do.
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Trade a password for a token (the password is read from standard input); print the
    /// token once.
    Login(LoginArgs),
    /// List, show, create and change users (an administrator's; anyone may show itself).
    Users {
        /// What to do.
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// List, make and revoke API tokens (one's own, or anyone's for an administrator).
    Tokens {
        /// What to do.
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Set up RabbitMQ for baton.
    Rabbitmq {
        /// What to do.
        #[command(subcommand)]
        command: RabbitmqCommand,
    },
}

/// The settings of `baton migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Also make this user an administrator (created if missing) and issue it a token, shown
    /// once; an existing user is left as it is and gets no token.
    #[arg(long, env = "BATON_ADMIN")]
    pub admin: Option<String>,
    /// The organization the administrator acts for (registered if missing).
    #[arg(long, env = "BATON_ADMIN_ORGANIZATION", default_value = "local")]
    pub admin_organization: String,
    /// Write the administrator's token to this file (mode 0600) instead of printing it.
    #[arg(long, env = "BATON_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
}

/// The settings of `baton login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The user.
    #[arg(long, env = "BATON_USER")]
    pub user: String,
    /// What the token is for.
    #[arg(long)]
    pub description: Option<String>,
    /// Seconds the token lasts (default: a week).
    #[arg(long)]
    pub expires_in_secs: Option<u64>,
}

/// `baton users …`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users.
    Ls {
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a user (default: the one the token authenticates).
    Show {
        /// The user.
        identifier: Option<String>,
    },
    /// Create a user; with `--password-stdin`, its password is the first line of standard
    /// input.
    Create {
        /// Its identifier (3 to 32 of `a-z A-Z 0-9 _ . -`).
        identifier: String,
        /// The organization it acts for.
        #[arg(long)]
        organization: String,
        /// A role; repeat for several (administrator, operator, producer, auditor, viewer,
        /// worker).
        #[arg(long = "role")]
        roles: Vec<models::Role>,
        /// Its full name.
        #[arg(long)]
        display_name: Option<String>,
        /// Read its password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's roles, name or enabled flag.
    Update {
        /// The user.
        identifier: String,
        /// Its roles, replacing the old ones; repeat for several.
        #[arg(long = "role")]
        roles: Vec<models::Role>,
        /// Take every role away.
        #[arg(long, conflicts_with = "roles")]
        no_roles: bool,
        /// Its full name.
        #[arg(long)]
        display_name: Option<String>,
        /// Enable it.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable it: it keeps its tokens but has an anonymous caller's rights.
        #[arg(long)]
        disable: bool,
    },
    /// Set a user's password from standard input (first line: the new password; changing
    /// one's own, second line: the current one).
    Passwd {
        /// The user.
        identifier: String,
    },
}

/// `baton tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// List a user's tokens, without their secrets.
    Ls {
        /// The user.
        #[arg(long, env = "BATON_USER")]
        user: String,
    },
    /// Make a token; it is printed once.
    Create {
        /// The user.
        #[arg(long, env = "BATON_USER")]
        user: String,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// Seconds it lasts (default: forever).
        #[arg(long)]
        expires_in_secs: Option<u64>,
    },
    /// Revoke a token: it never authenticates again.
    Revoke {
        /// The user.
        #[arg(long, env = "BATON_USER")]
        user: String,
        /// The token's identifier (as `tokens ls` shows it).
        #[arg(value_name = "TOKEN_ID")]
        id: uuid::Uuid,
    },
}

/// `baton rabbitmq …`.
#[derive(Debug, Subcommand)]
pub enum RabbitmqCommand {
    /// Make one RabbitMQ user per principal with only the permissions its part needs
    /// (docs/security.md); new users' passwords are printed once.
    Setup(RabbitmqSetupArgs),
}

/// The settings of `baton rabbitmq setup`.
#[derive(Debug, clap::Args)]
pub struct RabbitmqSetupArgs {
    /// The vhost (made if missing).
    #[arg(long, env = "BATON_RABBITMQ_VHOST", default_value = "/")]
    pub vhost: String,
    /// The dispatcher's user (it and its HTTP API publish as it).
    #[arg(long)]
    pub dispatcher: Option<String>,
    /// A producer's user; repeat for several.
    #[arg(long = "producer")]
    pub producers: Vec<String>,
    /// A worker's user, named like its worker id; repeat for several.
    #[arg(long = "worker")]
    pub workers: Vec<String>,
    /// Give existing users a new password too.
    #[arg(long)]
    pub reset_passwords: bool,
    /// RabbitMQ's management API, as an administrator.
    #[command(flatten)]
    pub management: ManagementApiArgs,
}

/// RabbitMQ's management API and a user allowed what the command does there.
#[derive(Debug, clap::Args)]
pub struct ManagementApiArgs {
    /// RabbitMQ's management API.
    #[arg(
        long,
        env = "BATON_RABBITMQ_API",
        default_value = "http://127.0.0.1:15672/api"
    )]
    pub rabbitmq_api: String,
    /// User of the management API.
    #[arg(long, env = "BATON_RABBITMQ_API_USER", default_value = "guest")]
    pub rabbitmq_api_user: String,
    /// Password of the management API.
    #[arg(
        long,
        env = "BATON_RABBITMQ_API_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub rabbitmq_api_password: String,
}

/// Which page of a listing to print.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct PageArgs {
    /// The page, from 1.
    #[arg(long, env = "BATON_PAGE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub page: u32,
    /// Results per page, from 1 to 1000.
    #[arg(long, env = "BATON_PAGE_SIZE", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

/// How `plans watch` (and `submit --watch`) follows a plan.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct WatchArgs {
    /// Milliseconds between two reads of the plan.
    #[arg(long, env = "BATON_WATCH_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..))]
    pub interval_ms: u64,
}

/// The settings of `baton submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The plan: a `PlanSubmission` (docs/api.md, `schemas/`) in YAML (`.yaml`, `.yml`) or
    /// JSON (any other name).
    pub file: std::path::PathBuf,
    /// Makes the submission safe to retry: a second submission with the same key gets the
    /// first one's answer and stores nothing (1 to 200 visible ASCII characters).
    #[arg(long, env = "BATON_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Then watch the plan until it ends, as `baton plans watch`.
    #[arg(long, env = "BATON_SUBMIT_WATCH")]
    pub watch: bool,
    /// How to watch.
    #[command(flatten)]
    pub watching: WatchArgs,
}

/// `baton plans …`.
#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// List compute plans, newest first.
    Ls {
        /// Only plans in this status (WAITING, TODO, DOING, DONE, FAILED, CANCELED, EMPTY).
        #[arg(long, env = "BATON_PLANS_STATUS")]
        status: Option<String>,
        /// Only plans owned by this organization.
        #[arg(long, env = "BATON_PLANS_OWNER")]
        owner: Option<String>,
        /// Only plans of this project.
        #[arg(long, env = "BATON_PLANS_PROJECT")]
        project: Option<String>,
        /// Only plans with exactly this tag.
        #[arg(long, env = "BATON_PLANS_TAG")]
        tag: Option<String>,
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a compute plan and its tasks.
    Show {
        /// The plan's key.
        key: uuid::Uuid,
    },
    /// Show a plan's progress (one bar per task status) until it ends, then the plan; fails
    /// when the plan ends FAILED or CANCELED.
    Watch {
        /// The plan's key.
        key: uuid::Uuid,
        /// How to watch.
        #[command(flatten)]
        watching: WatchArgs,
    },
}

/// `baton tasks …`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List tasks, newest plans first, by rank within a plan.
    Ls {
        /// Only tasks of this compute plan.
        #[arg(long, env = "BATON_TASKS_PLAN")]
        plan: Option<uuid::Uuid>,
        /// Only tasks in this status (a status word, or an alias such as `pending`).
        #[arg(long, env = "BATON_TASKS_STATUS")]
        status: Option<String>,
        /// Only tasks run by workers of this organization.
        #[arg(long, env = "BATON_TASKS_WORKER")]
        worker: Option<String>,
        /// Only tasks run (or last run) by this worker.
        #[arg(long, env = "BATON_TASKS_WORKER_ID")]
        worker_id: Option<String>,
        /// Only tasks of this function.
        #[arg(long, env = "BATON_TASKS_FUNCTION")]
        function: Option<uuid::Uuid>,
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a task and its state changes.
    Show {
        /// The task's key.
        key: uuid::Uuid,
    },
}

/// The settings of `baton logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The task's key.
    pub task: uuid::Uuid,
    /// Follow the log live (from RabbitMQ's `baton.events`) until the task ends.
    #[arg(short, long, env = "BATON_LOGS_FOLLOW")]
    pub follow: bool,
    /// RabbitMQ, with its vhost: where `-f` listens for the task's log lines.
    #[arg(
        long,
        env = "BATON_AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Milliseconds between two checks of the task's status while following.
    #[arg(long, env = "BATON_LOGS_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..))]
    pub interval_ms: u64,
}

/// The settings of `baton perf`.
#[derive(Debug, clap::Args)]
pub struct PerfArgs {
    /// The plan's key.
    pub plan: uuid::Uuid,
    /// Print CSV instead of a table.
    #[arg(long, env = "BATON_PERF_CSV")]
    pub csv: bool,
    /// Also draw performance per round, one line per metric and worker, to this file (`.png`
    /// or `.svg`).
    #[arg(long, env = "BATON_PERF_PLOT")]
    pub plot: Option<std::path::PathBuf>,
}

/// The settings of `baton cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The key of a compute plan or of a task.
    pub key: uuid::Uuid,
    /// Why, recorded in the tasks' history.
    #[arg(long, env = "BATON_CANCEL_REASON")]
    pub reason: Option<String>,
}

/// The settings of `baton abort`.
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    /// The task's key.
    pub task: uuid::Uuid,
    /// Why, recorded in the task's history.
    #[arg(long, env = "BATON_ABORT_REASON")]
    pub reason: Option<String>,
}

/// `baton workers …`.
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List workers, by identifier.
    Ls {
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
    },
}

/// `baton devices …`.
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices, by worker then id.
    Ls {
        /// Only devices of this worker.
        #[arg(long, env = "BATON_DEVICES_WORKER")]
        worker: Option<String>,
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
    },
}

/// The settings of `baton dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// RabbitMQ, with its vhost; the workers' owner is the user it connects as, which `dev`
    /// registers in baton.
    #[arg(
        long,
        env = "BATON_AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The organization the dispatcher acts as and the workers belong to.
    #[arg(long, env = "BATON_ORGANIZATION", default_value = "local")]
    pub organization: String,
    /// How many workers to run.
    #[arg(long, env = "BATON_DEV_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// How many tasks each worker runs at once.
    #[arg(long, env = "BATON_EXECUTOR_LIMIT", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub executor_limit: u32,
    /// A property of every worker, as KEY=VALUE; repeat for several.
    #[arg(long = "property", env = "BATON_WORKER_PROPERTIES", value_delimiter = ',', value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// The artifact store: a local directory the workers upload models to and the API serves
    /// them from.
    #[arg(long, env = "BATON_ARTIFACTS", default_value = "/tmp/baton-artifacts")]
    pub artifacts: std::path::PathBuf,
    /// Where attempt workspaces are made (default: `baton-dev` in the system's temporary
    /// directory), one directory per worker.
    #[arg(long, env = "BATON_WORK_DIR")]
    pub work_dir: Option<std::path::PathBuf>,
    /// Where the HTTP API listens (port 0: any free port, printed at start).
    #[arg(long, env = "BATON_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Seconds a granted claim lasts unless its worker renews it.
    #[arg(long, env = "BATON_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u32,
}

/// The settings of `baton worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// RabbitMQ, with its vhost; the worker's owner is the user it connects as.
    #[arg(
        long,
        env = "BATON_AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The worker's identifier (default: the host name).
    #[arg(long, env = "BATON_WORKER_ID")]
    pub id: Option<String>,
    /// The organization whose tasks it runs.
    #[arg(long, env = "BATON_ORGANIZATION", default_value = "local")]
    pub organization: String,
    /// A property tasks may require, as KEY=VALUE; repeat for several.
    #[arg(long = "property", env = "BATON_WORKER_PROPERTIES", value_delimiter = ',', value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// How many tasks it runs at once.
    #[arg(long, env = "BATON_EXECUTOR_LIMIT", default_value_t = 1)]
    pub executor_limit: u32,
    /// Where attempt workspaces are made.
    #[arg(long, env = "BATON_WORK_DIR")]
    pub work_dir: Option<std::path::PathBuf>,
    /// Keep the workspace of a failed attempt.
    #[arg(long, env = "BATON_KEEP_FAILED")]
    pub keep_failed: bool,
    /// The artifact store: a local directory shared with the other workers.
    #[arg(long, env = "BATON_ARTIFACTS", default_value = "/tmp/baton-artifacts")]
    pub artifacts: std::path::PathBuf,
    /// Seconds a canceled step has between SIGTERM and SIGKILL.
    #[arg(long, env = "BATON_GRACE_SECS", default_value_t = 10)]
    pub grace_secs: u64,
    /// Seconds a stopping worker lets running tasks finish before handing them back.
    #[arg(long, env = "BATON_SHUTDOWN_SECS", default_value_t = 60)]
    pub shutdown_secs: u64,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// The benchmark scenarios.
#[derive(Debug, Subcommand)]
pub enum BenchScenario {
    /// Validate, store, first publish and load a layered DAG of many tasks (in a database and
    /// a vhost of its own).
    LargePlan {
        /// Tasks in the plan.
        #[arg(long, env = "BATON_BENCH_TASKS", default_value_t = 100_000)]
        tasks: u32,
        /// Tasks per layer.
        #[arg(long, env = "BATON_BENCH_WIDTH", default_value_t = 100)]
        width: u32,
        /// Runs, each of a new plan in a fresh database; medians are reported.
        #[arg(long, env = "BATON_BENCH_RUNS", default_value_t = 3)]
        runs: u32,
        /// Where the benchmark makes its own vhost (the first ready task is published there).
        #[command(flatten)]
        rabbitmq: BenchRabbitmq,
    },
    /// Load one plan's dispatcher state and report its cost (run by `large-plan` in a fresh
    /// process).
    #[command(hide = true)]
    LoadPlanState {
        /// The plan.
        #[arg(long)]
        plan: uuid::Uuid,
    },
    /// Confirmed publish + consume throughput of the broker layer, against plain lapin.
    Broker {
        /// Messages per run.
        #[arg(long, env = "BATON_BENCH_MESSAGES", default_value_t = 20_000)]
        messages: u32,
        /// Runs of each side; medians are reported.
        #[arg(long, env = "BATON_BENCH_RUNS", default_value_t = 5)]
        runs: u32,
        /// Where the benchmark makes its own vhost.
        #[command(flatten)]
        rabbitmq: BenchRabbitmq,
    },
    /// The physical limit every other figure is divided by, with plain lapin: persistent
    /// confirmed publish + consume msgs/s, and task → worker → status round trips/s.
    Ceiling {
        /// Messages per run of the publish + consume figure.
        #[arg(long, env = "BATON_BENCH_MESSAGES", default_value_t = 20_000)]
        messages: u32,
        /// Round trips per run: a task published, taken by the worker side, its status
        /// published and confirmed, the task acked, the status taken and acked.
        #[arg(long, env = "BATON_BENCH_ROUND_TRIPS", default_value_t = 20_000)]
        round_trips: u32,
        /// Round trips in flight at once (also the prefetch of both consumers).
        #[arg(long, env = "BATON_BENCH_IN_FLIGHT", default_value_t = bench_ceiling::DEFAULT_IN_FLIGHT)]
        in_flight: u32,
        /// Runs of each figure; medians are reported.
        #[arg(long, env = "BATON_BENCH_RUNS", default_value_t = 5)]
        runs: u32,
        /// Where the benchmark makes its own vhost.
        #[command(flatten)]
        rabbitmq: BenchRabbitmq,
    },
    /// Independent no-op tasks per second through the whole path (submit, store, publish,
    /// claim, run, report, DONE), with an in-process dispatcher and worker, against plain
    /// lapin's msgs/s and round trips/s (`ceiling`) measured in the same run.
    Throughput {
        /// Tasks per run [default: 20000 with the handler device, 2000 with subprocesses].
        #[arg(long, env = "BATON_BENCH_TASKS")]
        tasks: Option<u32>,
        /// How the worker runs the no-op step.
        #[arg(long, env = "BATON_BENCH_DEVICE", value_enum, default_value_t = ThroughputDevices::Both)]
        device: ThroughputDevices,
        /// Runs of each device; medians are reported.
        #[arg(long, env = "BATON_BENCH_RUNS", default_value_t = 3)]
        runs: u32,
        /// Tasks each worker runs at once.
        #[arg(long, env = "BATON_BENCH_EXECUTOR_LIMIT", default_value_t = 8)]
        executor_limit: u32,
        /// In-process workers, each with `--executor-limit` slots.
        #[arg(long, env = "BATON_BENCH_WORKERS", default_value_t = 1)]
        workers: u32,
        /// Plans the tasks of a run are split across (default: as few as the submission batch
        /// limit allows).
        #[arg(long, env = "BATON_BENCH_PLANS")]
        plans: Option<u32>,
        /// Seconds a run may take before it is reported as hung.
        #[arg(long, env = "BATON_BENCH_TIMEOUT_SECS", default_value_t = 120)]
        timeout_secs: u64,
        /// Where the benchmark makes its own vhost.
        #[command(flatten)]
        rabbitmq: BenchRabbitmq,
    },
    /// A plan of no-op tasks, each the child of the one before: seconds from sending it to the
    /// last DONE, with an in-process dispatcher and worker, and against as many plain-lapin
    /// round trips one after the other.
    Chain {
        /// Tasks in the chain.
        #[arg(long, env = "BATON_BENCH_TASKS", default_value_t = 1_000)]
        tasks: u32,
        /// Runs, slots and RabbitMQ.
        #[command(flatten)]
        common: DagBenchArgs,
    },
    /// Parallel no-op tasks joined by one task: seconds from sending the plan to the last DONE,
    /// with an in-process dispatcher and worker, and against as many plain-lapin round trips,
    /// as many at once as the worker has slots.
    FanIn {
        /// Parallel tasks (the joining task comes on top).
        #[arg(long, env = "BATON_BENCH_TASKS", default_value_t = 1_000)]
        tasks: u32,
        /// Runs, slots and RabbitMQ.
        #[command(flatten)]
        common: DagBenchArgs,
    },
    /// One-task plans sent one after the other: percentiles of send → start and send → DONE,
    /// with an in-process dispatcher and worker, and the mean of as many plain-lapin round
    /// trips one after the other.
    Latency {
        /// One-task plans per run.
        #[arg(long, env = "BATON_BENCH_TASKS", default_value_t = 500)]
        tasks: u32,
        /// Runs, slots and RabbitMQ.
        #[command(flatten)]
        common: DagBenchArgs,
    },
}

/// Where a benchmark makes (and deletes) its own RabbitMQ vhost.
#[derive(Debug, clap::Args)]
pub struct BenchRabbitmq {
    /// RabbitMQ, without a vhost: the benchmark makes and deletes its own.
    #[arg(
        long,
        env = "BATON_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// RabbitMQ's management API, used to make the benchmark's vhost.
    #[command(flatten)]
    pub management: ManagementApiArgs,
}

impl BenchRabbitmq {
    /// The broker settings of a benchmark sending `messages` per run over `runs` runs, stopped
    /// early when `stop` is cancelled.
    fn bench(self, messages: u32, runs: u32, stop: &CancellationToken) -> bench::BrokerBench {
        bench::BrokerBench {
            amqp_url: self.amqp_url.trim_end_matches('/').to_owned(),
            management_url: self
                .management
                .rabbitmq_api
                .trim_end_matches('/')
                .to_owned(),
            management_user: (
                self.management.rabbitmq_api_user,
                self.management.rabbitmq_api_password,
            ),
            messages,
            runs,
            stop: stop.clone(),
        }
    }
}

/// What `chain`, `fan-in` and `latency` share besides their size.
#[derive(Debug, clap::Args)]
pub struct DagBenchArgs {
    /// Measured runs; medians are reported.
    #[arg(long, env = "BATON_BENCH_RUNS", default_value_t = 3)]
    pub runs: u32,
    /// Tasks the worker runs at once.
    #[arg(long, env = "BATON_BENCH_EXECUTOR_LIMIT", default_value_t = 8)]
    pub executor_limit: u32,
    /// Seconds a run may take before it is reported as hung.
    #[arg(long, env = "BATON_BENCH_TIMEOUT_SECS", default_value_t = 600)]
    pub timeout_secs: u64,
    /// Where the benchmark makes its own vhost.
    #[command(flatten)]
    pub rabbitmq: BenchRabbitmq,
}

impl DagBenchArgs {
    /// The options of a run of `tasks` tasks on `database_url`, stopped early when `stop` is
    /// cancelled.
    fn bench(
        self,
        tasks: u32,
        database_url: &str,
        stop: &CancellationToken,
    ) -> bench_dag::DagBench {
        bench_dag::DagBench {
            database_url: database_url.to_owned(),
            broker: self.rabbitmq.bench(tasks, self.runs, stop),
            tasks,
            runs: self.runs,
            executor_limit: self.executor_limit,
            run_timeout: std::time::Duration::from_secs(self.timeout_secs),
        }
    }
}

/// The devices `baton bench throughput` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ThroughputDevices {
    /// An in-process handler that returns at once.
    Handler,
    /// A subprocess running `true`.
    Subprocess,
    /// Both, one after the other.
    Both,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables for people.
    Table,
    /// One JSON document, for scripts.
    Json,
}

/// How diagnostic logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for services.
    Json,
}

fn install_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs `baton` with the process's arguments and prints any error with its causes.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs `baton` with `args` (the first names the program), as `main` does with the process's
/// arguments: results on stdout, logs and any error with its causes on stderr, and an exit code
/// that says whether it succeeded.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    install_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs the parsed command line, printing results to standard output.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    run_with(cli, &Output::stdout(), &CancellationToken::new())
}

/// Runs the parsed command line, printing results to `out`. The commands that run until they
/// are told to stop (`dispatcher`, `worker`, `dev`) stop on SIGINT or SIGTERM, or when `stop`
/// is cancelled; `plans watch` and `logs -f` stop early (with an error) when it is.
pub fn run_with(cli: Cli, out: &Output, stop: &CancellationToken) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stop = stop.clone();
    runtime.block_on(async move {
        let format = cli.output;
        let client = || client::ApiClient::new(&cli.api_url, cli.token.clone());
        match cli.command {
            Command::Migrate(args) => {
                commands::users::migrate(out, format, &cli.database_url, args).await
            }
            Command::Demo {
                amqp_url,
                demo_dir,
                artifacts,
                timeout_secs,
            } => {
                let dir = demo_dir.unwrap_or_else(demo::DemoOptions::default_dir);
                let options = demo::DemoOptions {
                    database_url: cli.database_url.clone(),
                    amqp_url,
                    artifacts: artifacts.unwrap_or_else(|| dir.join("artifacts")),
                    dir,
                    timeout: std::time::Duration::from_secs(timeout_secs),
                };
                demo::run(options, out, format).await
            }
            Command::Status { limit } => status(out, &cli.database_url, format, limit).await,
            Command::Bench { scenario } => {
                let stop = stop_on_signal(&stop);
                bench(out, scenario, format, &cli.database_url, &stop).await
            }
            Command::Worker(args) => run_worker(args, stop_on_signal(&stop)).await,
            Command::Dispatcher {
                amqp_url,
                organization,
                lease_secs,
                follow_ups,
                run_ahead,
                publish_ahead,
                eager_starts,
                http_addr,
                artifacts,
                anonymous_roles,
            } => {
                let mut config = dispatcher::service::DispatcherConfig::new(
                    cli.database_url.clone(),
                    broker::BrokerConfig::new(amqp_url.clone(), "baton-dispatcher"),
                    organization.as_str().into(),
                );
                config.lease_duration = chrono::Duration::seconds(i64::from(lease_secs));
                config.follow_ups = follow_ups;
                config.run_ahead = run_ahead;
                config.publish_ahead = publish_ahead;
                config.eager_starts = eager_starts;
                let mut api_config = api::ApiConfig::new(
                    cli.database_url.clone(),
                    broker::BrokerConfig::new(amqp_url, "baton-api"),
                    organization.into(),
                    artifacts,
                );
                api_config.metrics = config.metrics.clone();
                config.anonymous_roles.clone_from(&anonymous_roles);
                api_config.anonymous_roles = anonymous_roles;
                run_dispatcher(config, api_config, http_addr, stop_on_signal(&stop)).await
            }
            Command::Dev(args) => {
                commands::dev::run(out, format, &cli.database_url, args, stop_on_signal(&stop))
                    .await
            }
            Command::Submit(args) => {
                commands::plans::submit(out, format, &client()?, args, &stop).await
            }
            Command::Plans { command } => {
                commands::plans::run(out, format, &client()?, command, &stop).await
            }
            Command::Tasks { command } => {
                commands::tasks::run(out, format, &client()?, command).await
            }
            Command::Logs(args) => commands::logs::run(out, format, &client()?, args, &stop).await,
            Command::Perf(args) => commands::perf::run(out, format, &client()?, args).await,
            Command::Cancel(args) => commands::tasks::cancel(out, format, &client()?, args).await,
            Command::Abort(args) => commands::tasks::abort(out, format, &client()?, args).await,
            Command::Workers { command } => {
                commands::fleet::workers(out, format, &client()?, command).await
            }
            Command::Devices { command } => {
                commands::fleet::devices(out, format, &client()?, command).await
            }
            Command::Login(args) => commands::users::login(out, format, &client()?, args).await,
            Command::Users { command } => {
                commands::users::users(out, format, &client()?, command).await
            }
            Command::Tokens { command } => {
                commands::users::tokens(out, format, &client()?, command).await
            }
            Command::Rabbitmq {
                command: RabbitmqCommand::Setup(args),
            } => commands::users::rabbitmq_setup(out, format, args).await,
        }
    })
}

/// A token cancelled on SIGINT or SIGTERM, or when `stop` is.
fn stop_on_signal(stop: &CancellationToken) -> CancellationToken {
    let shutdown = stop.child_token();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = wait_for_signal() => {
                tracing::info!("stopping on signal");
                on_signal.cancel();
            }
            () = on_signal.cancelled() => {}
        }
    });
    shutdown
}

/// Runs `baton dispatcher`: the dispatcher's loops and, beside them, the HTTP API, until SIGINT
/// or SIGTERM or until either fails; both stop together.
async fn run_dispatcher(
    config: dispatcher::service::DispatcherConfig,
    api_config: api::ApiConfig,
    http_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Applied before the API reads anything; the dispatcher finds nothing left to apply.
    apply_migrations(&config.database_url).await?;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| {
            format!("listening on {http_addr} (set --http-addr or BATON_HTTP_ADDR)")
        })?;
    let state = api::ApiState::connect(api_config)
        .await
        .context("starting the HTTP API")?;
    let api_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        let served = api::serve(listener, state, api_shutdown.clone()).await;
        // The API stopped (by itself only on an error): the dispatcher stops with it.
        api_shutdown.cancel();
        served
    });
    let outcome = dispatcher::service::run(config, shutdown.clone()).await;
    shutdown.cancel();
    let served = server
        .await
        .map_err(|error| anyhow::anyhow!("the HTTP API panicked: {error}"))?;
    outcome?;
    served.context("serving the HTTP API")
}

/// Runs `baton worker` until SIGINT or SIGTERM (then stops gracefully) or a disconnect order.
async fn run_worker(args: WorkerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let id = match args.id {
        Some(id) => id,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "worker".to_owned()),
    };
    let mut config = worker::WorkerConfig::new(
        broker::BrokerConfig::new(args.amqp_url, format!("baton-worker-{id}")),
        id.as_str().into(),
        args.organization.into(),
    );
    config.properties = args.properties.into_iter().collect();
    config.executor_limit = args.executor_limit;
    if let Some(dir) = args.work_dir {
        config.work_root = dir;
    }
    config.keep_failed_workspaces = args.keep_failed;
    config.grace = std::time::Duration::from_secs(args.grace_secs);
    config.shutdown_deadline = std::time::Duration::from_secs(args.shutdown_secs);
    let store = worker::artifacts::LocalStore::new(&args.artifacts)
        .with_context(|| format!("opening the artifact store {}", args.artifacts.display()))?;
    worker::Worker::builder(config, std::sync::Arc::new(store))
        .build()
        .run(shutdown)
        .await
}

/// Returns on SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!("cannot listen for SIGTERM: {error}");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Applies pending migrations, with an error that names the database.
pub(crate) async fn apply_migrations(database_url: &str) -> anyhow::Result<Vec<String>> {
    dispatcher::store::run_migrations(database_url)
        .await
        .with_context(|| {
            format!(
                "migrating the database at {} (set --database-url or BATON_DATABASE_URL)",
                output::redact_url(database_url)
            )
        })
}

/// Runs a benchmark scenario and prints its figures; cancelling `stop` ends it early, with
/// what it made removed.
async fn bench(
    out: &Output,
    scenario: BenchScenario,
    format: OutputFormat,
    database_url: &str,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    match scenario {
        BenchScenario::LargePlan {
            tasks,
            width,
            runs,
            rabbitmq,
        } => {
            let figures = bench_plan::large_plan(bench_plan::LargePlanBench {
                database_url: database_url.to_owned(),
                tasks,
                width,
                runs,
                broker: rabbitmq.bench(1, runs, stop),
            })
            .await?;
            output::print_large_plan_bench(out, format, &figures)
        }
        BenchScenario::LoadPlanState { plan } => {
            let loaded = bench_plan::load_plan_state(database_url, plan.into()).await?;
            output::print_json_value(out, &serde_json::to_value(&loaded)?)
        }
        BenchScenario::Broker {
            messages,
            runs,
            rabbitmq,
        } => {
            let figures = bench::broker(rabbitmq.bench(messages, runs, stop)).await?;
            output::print_broker_bench(out, format, &figures)
        }
        BenchScenario::Ceiling {
            messages,
            round_trips,
            in_flight,
            runs,
            rabbitmq,
        } => {
            let figures = bench_ceiling::ceiling(bench_ceiling::CeilingBench {
                broker: rabbitmq.bench(messages, runs, stop),
                round_trips,
                in_flight,
            })
            .await?;
            bench_ceiling::print_ceiling_bench(out, format, &figures)
        }
        BenchScenario::Throughput {
            tasks,
            device,
            runs,
            executor_limit,
            workers,
            plans,
            timeout_secs,
            rabbitmq,
        } => {
            let figures = bench_throughput::throughput(bench_throughput::ThroughputBench {
                database_url: database_url.to_owned(),
                broker: rabbitmq.bench(
                    tasks.unwrap_or_else(|| bench_throughput::Device::Handler.default_tasks()),
                    runs,
                    stop,
                ),
                tasks,
                devices: device,
                runs,
                executor_limit,
                workers,
                plans,
                run_timeout: std::time::Duration::from_secs(timeout_secs),
            })
            .await?;
            bench_throughput::print_throughput_bench(out, format, &figures)
        }
        BenchScenario::Chain { tasks, common } => {
            let options = common.bench(tasks, database_url, stop);
            let figures = bench_dag::dag(bench_dag::DagShape::Chain, options).await?;
            bench_dag::print_dag_bench(out, format, &figures)
        }
        BenchScenario::FanIn { tasks, common } => {
            let options = common.bench(tasks, database_url, stop);
            let figures = bench_dag::dag(bench_dag::DagShape::FanIn, options).await?;
            bench_dag::print_dag_bench(out, format, &figures)
        }
        BenchScenario::Latency { tasks, common } => {
            let figures = bench_dag::latency(common.bench(tasks, database_url, stop)).await?;
            bench_dag::print_latency_bench(out, format, &figures)
        }
    }
}

/// Prints the stored state.
async fn status(
    out: &Output,
    database_url: &str,
    format: OutputFormat,
    limit: i64,
) -> anyhow::Result<()> {
    let pool = dispatcher::store::connect(database_url, 2)?;
    let mut conn = dispatcher::store::connection(&pool)
        .await
        .with_context(|| {
            format!(
                "connecting to {} (set --database-url or BATON_DATABASE_URL)",
                output::redact_url(database_url)
            )
        })?;
    let counts = dispatcher::store::stats::row_counts(&mut conn).await?;
    let plans = dispatcher::store::plans::list_plans(&mut conn, None, limit, 0).await?;
    output::print_status(out, format, &counts, &plans)
}
