//! Producers in any language: the Python example (`examples/python/submit_plan.py`, with pika)
//! against an in-process dispatcher with its HTTP API and a real worker, on a database and a
//! vhost of their own.
//!
//! The script registers its functions and submits a plan over AMQP exactly as docs/producers.md
//! says, reads the dispatcher's reply, and follows the plan through the HTTP API until it is
//! DONE; a plan that fails makes it exit 3, and a plan the dispatcher refuses, or cannot read,
//! makes it exit 1, with nothing stored.
//!
//! The Python comes from `BATON_TEST_PYTHON`, else `target/pyenv/bin/python` (made by
//! `bash .ci/python`); without one that imports pika the tests fail, never skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use dispatcher::store::catalog::{self, FunctionFilter};
use dispatcher::store::{execution, plans, tasks};
use models::{LogStream, PlanKey, PlanStatus, Role, TaskKey, TaskStatus, User};
use worker::artifacts::LocalStore;
use worker::{Worker, WorkerConfig};

use crate::support::cluster::{ORGANIZATION, TestCluster};

/// How long one run of the script may take, its plan's wait included.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(75);

/// The workspace's root directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A Python interpreter that imports pika: `BATON_TEST_PYTHON`, else the venv `.ci/python`
/// makes. Panics, telling how to make one, when there is none.
fn python() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(configured) = std::env::var_os("BATON_TEST_PYTHON") {
        candidates.push(PathBuf::from(configured));
    }
    candidates.push(workspace_root().join("target/pyenv/bin/python"));
    for candidate in &candidates {
        let imports = std::process::Command::new(candidate)
            .args(["-c", "import pika"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if imports {
            return candidate.clone();
        }
    }
    panic!(
        "no Python with pika among {candidates:?}: run `bash .ci/python` (it makes \
         target/pyenv), or point BATON_TEST_PYTHON at a python that imports pika"
    );
}

/// What a run of the script left.
struct Run {
    /// Its exit code (none when a signal ended it).
    code: Option<i32>,
    /// What it printed: the replies and the plan's progress.
    stdout: String,
    /// Its errors: a refusal's details, one per line.
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A dispatcher, the HTTP API beside it, and (optionally) a worker of the dispatcher's
/// organization running subprocess steps on the local device.
struct Deployment {
    /// The Python that runs the script.
    python: PathBuf,
    /// The dispatcher, its database and its vhost.
    cluster: TestCluster,
    /// The API's URL, without `/api/v1`.
    api_base: String,
    /// An API token of `guest`, the baton user the script connects to RabbitMQ as.
    token: String,
    /// The artifact store (`artifacts/`), the worker's workspaces and the test's files.
    dir: tempfile::TempDir,
    /// Stops the API.
    api_stop: CancellationToken,
    /// The API's task.
    server: JoinHandle<std::io::Result<()>>,
    /// The worker's stop token and task, when it runs.
    worker: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

impl Deployment {
    /// Starts the dispatcher, then the API on 127.0.0.1:0, then a worker when `with_worker`.
    async fn start(with_worker: bool) -> Deployment {
        // Before anything starts: a missing Python is the first thing to report.
        let python = python();
        let cluster = TestCluster::start(chrono::Duration::seconds(10)).await;
        // The test's vhost admits one RabbitMQ user, `guest`, which the script and the worker
        // both connect as: a baton user of the dispatcher's organization that may register
        // functions (operator), submit plans (producer) and connect as a worker. The script
        // reads the API with a token of it.
        let mut conn = cluster.db.connect().await;
        let now = chrono::Utc::now();
        let guest = User {
            identifier: "guest".into(),
            display_name: "the producers test".into(),
            organization: ORGANIZATION.into(),
            roles: vec![Role::Operator, Role::Producer, Role::Worker],
            is_enabled: true,
            creation_date: now,
            update_date: now,
        };
        catalog::insert_user(&mut conn, &guest).await.unwrap();
        let (credential, token) =
            dispatcher::auth::new_token(&guest.identifier, None, None, now).unwrap();
        catalog::insert_credential(&mut conn, &credential)
            .await
            .unwrap();
        drop(conn);
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("artifacts");
        let state = api::ApiState::connect(api::ApiConfig::new(
            cluster.db.url(),
            cluster.broker.config("baton-api"),
            ORGANIZATION.into(),
            &artifacts,
        ))
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_base = format!("http://{}", listener.local_addr().unwrap());
        let api_stop = CancellationToken::new();
        let server = tokio::spawn(api::serve(listener, state, api_stop.clone()));
        let worker = with_worker.then(|| {
            let mut config = WorkerConfig::new(
                cluster.broker.config("worker-py"),
                "worker-py".into(),
                ORGANIZATION.into(),
            );
            config.executor_limit = 2;
            config.work_root = dir.path().join("work");
            config.shutdown_deadline = Duration::from_secs(5);
            config.claim_timeout = Duration::from_secs(10);
            let store = LocalStore::new(&artifacts).unwrap();
            let worker = Worker::builder(config, Arc::new(store)).build();
            let stop = CancellationToken::new();
            (stop.clone(), tokio::spawn(worker.run(stop)))
        });
        Deployment {
            python,
            cluster,
            api_base,
            token: token.expose().to_owned(),
            dir,
            api_stop,
            server,
            worker,
        }
    }

    /// Runs `submit_plan.py` with `args` against this deployment, killed after
    /// [`SCRIPT_TIMEOUT`].
    async fn run_script(&self, args: &[&str]) -> Run {
        let script = workspace_root().join("examples/python/submit_plan.py");
        let mut command = tokio::process::Command::new(&self.python);
        command
            .arg(&script)
            .args(["--reply-timeout", "20", "--wait", "60", "--poll", "0.2"])
            .args(args)
            .env("BATON_AMQP_URL", self.cluster.broker.url())
            .env("BATON_API_URL", &self.api_base)
            .env("BATON_TOKEN", &self.token)
            .env_remove("BATON_ORGANIZATION")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let started = Instant::now();
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("submit_plan.py did not end within {SCRIPT_TIMEOUT:?}"))
            .expect("submit_plan.py starts");
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!(
            "submit_plan.py {args:?} took {:.1} s:\n{run}",
            started.elapsed().as_secs_f64()
        );
        run
    }

    /// Writes `value` as JSON to `name` in the test's directory; returns its path.
    fn write_json(&self, name: &str, value: &serde_json::Value) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
        path.display().to_string()
    }

    /// Stops the worker and the API, checking they ended cleanly.
    async fn stop(self) {
        if let Some((stop, worker)) = self.worker {
            stop.cancel();
            worker.await.unwrap().unwrap();
        }
        self.api_stop.cancel();
        self.server.await.unwrap().unwrap();
    }
}

/// The stdout lines of `run` that report a reply to a message of type `kind`, as JSON.
fn replies(run: &Run, kind: &str) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .filter(|line| line.starts_with(&format!("{kind} ")))
        .map(|line| {
            let (_, json) = line
                .split_once(": ")
                .expect("`<kind> <id> -> <reply kind>: <json>`");
            serde_json::from_str(json).expect("the reply is printed as JSON")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_submits_a_plan_over_amqp_and_follows_it_to_done_over_http() {
    let deployment = Deployment::start(true).await;

    let run = deployment.run_script(&[]).await;
    assert_eq!(run.code, Some(0), "{run}");
    let registered = replies(&run, "function.register");
    assert_eq!(registered.len(), 2, "{run}");
    for reply in &registered {
        assert_eq!(reply["outcome"], "accepted", "{run}");
    }
    let submitted = replies(&run, "plan.submit");
    assert_eq!(submitted.len(), 1, "{run}");
    assert_eq!(submitted[0]["outcome"], "accepted", "{run}");
    assert_eq!(submitted[0]["task_count"], 4, "{run}");
    let key: PlanKey = serde_json::from_value(submitted[0]["compute_plan_key"].clone()).unwrap();
    assert!(
        run.stdout.contains(&format!("plan {key}: DONE")),
        "the script saw the plan DONE through the API: {run}"
    );

    // The store agrees: the functions, the plan and its tasks, what the steps produced.
    let mut conn = deployment.cluster.db.connect().await;
    let functions = catalog::list_functions_page(&mut conn, &FunctionFilter::default(), 100, 0)
        .await
        .unwrap()
        .rows;
    let mut names: Vec<&str> = functions.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["greet", "shout"]);
    assert!(functions.iter().all(|f| f.owner.as_str() == ORGANIZATION));

    let plan = deployment.cluster.plan(key).await;
    assert_eq!(plan.status, PlanStatus::Done);
    assert_eq!(plan.name, "hello from python");
    assert_eq!(plan.owner.as_str(), ORGANIZATION);
    // The message's user_id reached the dispatcher: the plan's creator is the RabbitMQ user.
    assert_eq!(plan.creator.as_ref().map(|c| c.as_str()), Some("guest"));
    let stored = deployment.cluster.tasks(key).await;
    let mut summary: Vec<(String, u32, TaskStatus)> = stored
        .iter()
        .map(|t| (t.name.clone().unwrap_or_default(), t.rank, t.status))
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("greet baton".to_owned(), 0, TaskStatus::Done),
            ("greet python".to_owned(), 0, TaskStatus::Done),
            ("shout baton".to_owned(), 1, TaskStatus::Done),
            ("shout python".to_owned(), 1, TaskStatus::Done),
        ]
    );
    for task in &stored {
        let name = task.name.clone().unwrap_or_default();
        if let Some(who) = name.strip_prefix("greet ") {
            let models = execution::list_task_models(&mut conn, task.key)
                .await
                .unwrap();
            assert_eq!(models.len(), 1, "{name} registered its greeting");
            let file = models[0].address.clone().expect("the model's file");
            let content = std::fs::read_to_string(
                deployment
                    .dir
                    .path()
                    .join("artifacts")
                    .join(&file.storage_address),
            )
            .unwrap();
            assert_eq!(content, format!("hello, {who}\n"));
        } else {
            let who = name.strip_prefix("shout ").expect("greet or shout");
            let lines = execution::list_log_lines(&mut conn, task.key, 100, 0)
                .await
                .unwrap();
            let stdout: Vec<&str> = lines
                .iter()
                .filter(|l| l.stream == LogStream::Stdout)
                .map(|l| l.text.as_str())
                .collect();
            assert_eq!(stdout, [format!("HELLO, {}", who.to_uppercase())]);
        }
    }

    // The realistic way: the messages written to files (to keep, edit, validate against
    // schemas/), then submitted from them. The functions are registered already, so only the
    // plan is sent; sending the same file again is answered as the first time.
    let dir = deployment.dir.path().join("messages");
    let dir = dir.to_str().unwrap();
    let written = deployment
        .run_script(&[
            "--write-to",
            dir,
            "--organization",
            ORGANIZATION,
            "--greet",
            "again",
        ])
        .await;
    assert_eq!(written.code, Some(0), "{written}");
    let files = [
        format!("{dir}/function-greet.json"),
        format!("{dir}/function-shout.json"),
        format!("{dir}/plan.json"),
    ];
    let from_files = [
        "--function",
        &files[0],
        "--function",
        &files[1],
        "--plan",
        &files[2],
    ];
    let first = deployment.run_script(&from_files).await;
    assert_eq!(first.code, Some(0), "{first}");
    assert!(replies(&first, "function.register").is_empty(), "{first}");
    assert_eq!(
        first.stdout.matches("is registered already").count(),
        2,
        "{first}"
    );
    let accepted = replies(&first, "plan.submit");
    assert_eq!(accepted[0]["task_count"], 2, "{first}");
    let second = deployment.run_script(&from_files).await;
    assert_eq!(second.code, Some(0), "{second}");
    assert_eq!(
        replies(&second, "plan.submit"),
        accepted,
        "the recorded answer: {second}"
    );
    let listed = plans::list_plans(&mut conn, None, 10, 0).await.unwrap();
    assert_eq!(listed.len(), 2, "the same file twice is one plan");
    assert!(listed.iter().all(|p| p.status == PlanStatus::Done));

    // A plan that fails is not DONE: exit status 3, with the failed task's error.
    let function = deployment.write_json(
        "function-fail.json",
        &serde_json::json!({
            "key": "00000000-0000-4000-8000-00000000f0f0",
            "name": "fail",
            "permissions": {"process": {"public": true, "authorized_ids": [ORGANIZATION]}},
            "steps": [{"name": "fail", "command": ["sh", "-c", "echo about to fail; exit 3"]}],
        }),
    );
    let plan = deployment.write_json(
        "plan-fail.json",
        &serde_json::json!({
            "key": "00000000-0000-4000-8000-00000000f001",
            "name": "failing",
            "tasks": [{
                "key": "00000000-0000-4000-8000-00000000f002",
                "function_key": "00000000-0000-4000-8000-00000000f0f0",
                "worker": ORGANIZATION,
            }],
        }),
    );
    let failed = deployment
        .run_script(&["--function", &function, "--plan", &plan])
        .await;
    assert_eq!(failed.code, Some(3), "{failed}");
    assert!(failed.stderr.contains("ended FAILED"), "{failed}");
    assert!(
        failed
            .stderr
            .contains("EXECUTION: step `fail` exited with status 3"),
        "{failed}"
    );

    drop(conn);
    deployment.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_reports_a_refused_plan_and_exits_non_zero_with_nothing_stored() {
    let deployment = Deployment::start(false).await;
    let plan_key = "00000000-0000-4000-8000-00000000b001";
    let task_key = "00000000-0000-4000-8000-00000000b002";
    let unknown_function = "00000000-0000-4000-8000-00000000b0f0";
    let unknown_parent = "00000000-0000-4000-8000-00000000b0aa";

    // Valid JSON of a plan.submit, whose task names a function and a parent nobody stored.
    let invalid = deployment.write_json(
        "invalid.json",
        &serde_json::json!({
            "key": plan_key,
            "name": "refused",
            "tasks": [{
                "key": task_key,
                "function_key": unknown_function,
                "worker": ORGANIZATION,
                "inputs": [{
                    "identifier": "model",
                    "parent_task_key": unknown_parent,
                    "parent_task_output_identifier": "model",
                }],
            }],
        }),
    );
    let run = deployment.run_script(&["--plan", &invalid]).await;
    assert_eq!(run.code, Some(1), "a refusal exits 1: {run}");
    let submitted = replies(&run, "plan.submit");
    assert_eq!(submitted.len(), 1, "{run}");
    assert_eq!(submitted[0]["outcome"], "rejected", "{run}");
    assert_eq!(submitted[0]["error"], "invalid_submission", "{run}");
    assert_eq!(submitted[0]["compute_plan_key"], plan_key, "{run}");
    let details = submitted[0]["details"].as_array().unwrap();
    assert!(
        details.iter().any(|d| d["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("tasks[0]"))
            && d["message"].as_str().unwrap().contains(unknown_function)),
        "the unknown function is named: {run}"
    );
    assert!(
        run.stderr
            .contains("plan.submit refused: invalid_submission"),
        "{run}"
    );
    assert!(
        run.stderr.contains("  tasks[0]"),
        "each problem with its path: {run}"
    );

    // Not a plan.submit at all (a misspelt field): dead-lettered, answered as malformed.
    let malformed = deployment.write_json(
        "malformed.json",
        &serde_json::json!({"key": plan_key, "nmae": "typo"}),
    );
    let run = deployment.run_script(&["--plan", &malformed]).await;
    assert_eq!(run.code, Some(1), "a refusal exits 1: {run}");
    let submitted = replies(&run, "plan.submit");
    assert_eq!(submitted[0]["outcome"], "rejected", "{run}");
    assert_eq!(submitted[0]["error"], "malformed", "{run}");
    assert!(
        run.stderr.contains("plan.submit refused: malformed"),
        "{run}"
    );

    let mut conn = deployment.cluster.db.connect().await;
    assert!(
        plans::list_plans(&mut conn, None, 10, 0)
            .await
            .unwrap()
            .is_empty(),
        "no plan is stored"
    );
    let task: TaskKey = serde_json::from_value(serde_json::json!(task_key)).unwrap();
    assert!(tasks::find_task(&mut conn, task).await.unwrap().is_none());
    drop(conn);
    deployment.stop().await;
}
