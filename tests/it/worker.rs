//! The worker end to end: real workers (in this process, and one in a child process that is
//! killed) run real subprocess steps against the in-process dispatcher, real RabbitMQ and real
//! PostgreSQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::Digest;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use broker::RpcClient;
use broker::topology::SUBMIT_EXCHANGE;
use dispatcher::store::{execution, tasks};
use models::function::{FunctionInput, FunctionOutput, RetryPolicy};
use models::submission::{NewTask, PlanSubmission};
use models::wire::{CancelReply, CancelRequest, SubmissionReply, WireMessage};
use models::{
    Function, FunctionKey, FunctionStatus, InputKind, InputRef, Metadata, OutputKind, Permission,
    Permissions, PlanKey, PlanStatus, RequirementSet, Step, Task, TaskErrorType, TaskInput,
    TaskKey, TaskOutput, TaskStatus,
};
use worker::artifacts::{ArtifactError, ArtifactStore, LocalStore};
use worker::{Worker, WorkerConfig};

use crate::support::cluster::{ORGANIZATION, TestCluster};
use crate::support::fixtures::key;
use crate::support::logs::Captured;

const WAIT: Duration = Duration::from_secs(30);

/// A function of `steps` (argv arrays), with `inputs` and `outputs`.
fn function(
    n: u128,
    name: &str,
    steps: &[&[&str]],
    inputs: Vec<FunctionInput>,
    outputs: Vec<FunctionOutput>,
) -> Function {
    let now = Utc::now();
    Function {
        key: FunctionKey(key(n)),
        name: name.to_owned(),
        display_name: None,
        summary: None,
        owner: ORGANIZATION.into(),
        creator: None,
        project: None,
        permissions: Permissions::new(Permission::public(&ORGANIZATION.into())),
        metadata: Metadata::new(),
        description: None,
        archive: None,
        image: None,
        inputs,
        outputs,
        steps: steps
            .iter()
            .enumerate()
            .map(|(i, argv)| Step {
                timeout_secs: None,
                name: format!("step-{i}"),
                command: argv.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect(),
        build_steps: Vec::new(),
        // Every parameter a step names is declared.
        parameters: steps
            .iter()
            .flat_map(|argv| argv.iter())
            .flat_map(|arg| arg.split("{parameters.").skip(1))
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|key| models::function::ParameterDecl {
                key,
                description: String::new(),
                default: None,
            })
            .collect(),
        parameter_schema: None,
        workspace: None,
        kind: None,
        requirements: RequirementSet::any(),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_initial_ms: 100,
            backoff_max_ms: 100,
            jitter: false,
        },
        timeout_secs: None,
        is_enabled: true,
        status: FunctionStatus::Ready,
        data: serde_json::json!({}),
        creation_date: now,
        update_date: now,
    }
}

fn output(identifier: &str, kind: OutputKind) -> FunctionOutput {
    FunctionOutput {
        identifier: identifier.into(),
        kind,
        multiple: false,
    }
}

/// Task `n` of `function` with `parameters`, taking `inputs` (identifier, parent, parent output).
fn task(
    n: u128,
    function: u128,
    inputs: &[(&str, u128, &str)],
    outputs: &[&str],
    parameters: serde_json::Value,
) -> NewTask {
    NewTask {
        key: TaskKey(key(n)),
        function_key: FunctionKey(key(function)),
        name: Some(format!("t{n}")),
        inputs: inputs
            .iter()
            .map(|(identifier, parent, parent_output)| TaskInput {
                identifier: (*identifier).into(),
                source: InputRef::ParentOutput {
                    parent_task_key: TaskKey(key(*parent)),
                    parent_task_output_identifier: (*parent_output).into(),
                },
            })
            .collect(),
        outputs: outputs
            .iter()
            .map(|identifier| {
                (
                    (*identifier).to_owned(),
                    TaskOutput {
                        // Public: a PERFORMANCE output must be.
                        permissions: Permissions::new(Permission::public(&ORGANIZATION.into())),
                        transient: false,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        parameters: parameters.as_object().cloned().unwrap_or_default(),
        metadata: Metadata::new(),
        tag: String::new(),
        worker: Some(ORGANIZATION.into()),
        requirements: RequirementSet::any(),
        input_type: None,
        input: serde_json::Value::Null,
    }
}

fn plan(n: u128, tasks: Vec<NewTask>) -> PlanSubmission {
    PlanSubmission {
        key: PlanKey(key(n)),
        name: format!("plan {n}"),
        tag: String::new(),
        metadata: Metadata::new(),
        project: None,
        tasks,
    }
}

/// A cluster, an artifact directory, and a submitting client.
struct Setup {
    cluster: TestCluster,
    rpc: RpcClient,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(lease: chrono::Duration, functions: &[Function]) -> Setup {
        let cluster = TestCluster::start(lease).await;
        cluster.seed(functions).await;
        let client = cluster.client("producer").await;
        let rpc = RpcClient::new(&client).await.unwrap();
        Setup {
            cluster,
            rpc,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    fn config(&self, id: &str) -> WorkerConfig {
        let mut config = WorkerConfig::new(
            self.cluster.broker.config(&format!("worker-{id}")),
            id.into(),
            ORGANIZATION.into(),
        );
        config.executor_limit = 2;
        config.work_root = self.dir.path().join(format!("work-{id}"));
        config.grace = Duration::from_millis(1500);
        config.shutdown_deadline = Duration::from_secs(5);
        config.claim_timeout = Duration::from_secs(10);
        config
    }

    /// Starts an in-process worker `id`; it stops with the returned token.
    fn start_worker(&self, id: &str) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let store = LocalStore::new(self.artifacts()).unwrap();
        spawn_worker(self.config(id), Arc::new(store))
    }

    async fn submit(&self, submission: &PlanSubmission) {
        let reply = self.cluster.submit(&self.rpc, submission).await;
        assert!(
            matches!(reply, SubmissionReply::Accepted { .. }),
            "submission refused: {reply:?}"
        );
    }

    async fn task(&self, n: u128) -> Task {
        let mut conn = self.cluster.db.connect().await;
        tasks::find_task(&mut conn, TaskKey(key(n)))
            .await
            .unwrap()
            .unwrap()
    }

    /// Waits until task `n` satisfies `done`.
    /// Waits until task `n` ends, and checks it ended DONE in its first attempt.
    /// Submits plan `plan_n` of `tasks` independent tasks `t1`… of function `function_n`, each
    /// with the performance output `sum`.
    async fn submit_independent(&self, plan_n: u128, function_n: u128, tasks: u128) {
        self.submit(&plan(
            plan_n,
            (1..=tasks)
                .map(|n| task(n, function_n, &[], &["sum"], serde_json::json!({})))
                .collect(),
        ))
        .await;
    }

    async fn wait_done_once(&self, n: u128) {
        let done = self
            .wait_for_task(n, "DONE", |t| t.status.is_terminal())
            .await;
        assert_eq!(
            (done.status, done.attempt_count),
            (TaskStatus::Done, 1),
            "t{n}: {:?}",
            done.error_message
        );
    }

    async fn wait_for_task(&self, n: u128, what: &str, done: impl Fn(&Task) -> bool) -> Task {
        let deadline = Instant::now() + WAIT;
        loop {
            let task = self.task(n).await;
            if done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task t{n} is not {what}: {:?} ({:?})",
                task.status,
                task.error_message
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn cancel(&self, request: &CancelRequest) {
        let reply: CancelReply = self
            .rpc
            .call(
                SUBMIT_EXCHANGE,
                CancelRequest::KIND,
                request,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(reply, CancelReply::Accepted);
    }
}

/// Starts an in-process worker with `config` and `store`; it stops with the returned token.
fn spawn_worker(
    config: WorkerConfig,
    store: Arc<dyn ArtifactStore>,
) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let worker = Worker::builder(config, store).build();
    let stop = CancellationToken::new();
    (stop.clone(), tokio::spawn(worker.run(stop)))
}

/// Waits until a step wrote its process id to `file`; returns it.
async fn wait_for_pid(file: &Path) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", file.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no process of group `pgid` remains (zombies take a moment to be reaped).
async fn assert_group_gone(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker::process::group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "process group {pgid} still has processes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_flows_from_a_two_step_task_to_its_child_which_reports_a_performance() {
    let train = function(
        601,
        "train",
        &[
            &[
                "sh",
                "-c",
                "echo training; echo 'warning: slow' >&2; \
                 printf '{\"channel\":\"loss\",\"t\":0,\"value\":1.5}\\n' >> \"$BATON_MEASUREMENTS\"; \
                 printf '{\"channel\":\"loss\",\"t\":1,\"value\":0.5}\\n' >> \"$BATON_MEASUREMENTS\"; \
                 echo weights > \"$BATON_WORKSPACE/w\"",
            ],
            &[
                "sh",
                "-c",
                "cp \"$BATON_WORKSPACE/w\" \"$1\"; echo saved",
                "sh",
                "{outputs.model}",
            ],
        ],
        Vec::new(),
        vec![output("model", OutputKind::Model)],
    );
    let test = function(
        602,
        "test",
        &[&[
            "sh",
            "-c",
            "test \"$(cat \"$1\")\" = weights && echo 0.75 > \"$2\"",
            "sh",
            "{inputs.model}",
            "{outputs.auc}",
        ]],
        vec![FunctionInput {
            identifier: "model".into(),
            kind: InputKind::Model,
            multiple: false,
            optional: false,
        }],
        vec![output("auc", OutputKind::Performance)],
    );
    let setup = Setup::new(chrono::Duration::seconds(10), &[train, test]).await;
    let (stop, worker) = setup.start_worker("w1");
    setup
        .submit(&plan(
            600,
            vec![
                task(1, 601, &[], &["model"], serde_json::json!({})),
                task(
                    2,
                    602,
                    &[("model", 1, "model")],
                    &["auc"],
                    serde_json::json!({}),
                ),
            ],
        ))
        .await;
    let plan = setup
        .cluster
        .wait_for_plan(PlanKey(key(600)), WAIT, "DONE", |p| p.status.is_terminal())
        .await;
    let t2 = setup.task(2).await;
    assert_eq!(plan.status, PlanStatus::Done, "t2: {:?}", t2.error_message);

    let mut conn = setup.cluster.db.connect().await;
    let models = execution::list_task_models(&mut conn, TaskKey(key(1)))
        .await
        .unwrap();
    assert_eq!(models.len(), 1);
    let file = models[0].address.clone().unwrap();
    assert_eq!(
        file.checksum,
        hex::encode(sha2::Sha256::digest(b"weights\n")),
        "the model's checksum is the file's"
    );
    assert!(setup.artifacts().join(&file.storage_address).is_file());
    let performances = execution::list_task_performances(&mut conn, TaskKey(key(2)))
        .await
        .unwrap();
    assert_eq!(performances.len(), 1);
    assert_eq!(performances[0].value, 0.75);

    // Logs arrive in order, with their streams and steps.
    let lines = execution::list_log_lines(&mut conn, TaskKey(key(1)), 100, 0)
        .await
        .unwrap();
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "log lines are stored in order");
    let text: Vec<(Option<u32>, String, String)> = lines
        .iter()
        .filter(|l| l.stream != models::LogStream::System)
        .map(|l| (l.step, l.stream.as_str().to_owned(), l.text.clone()))
        .collect();
    assert!(
        text.contains(&(Some(0), "STDOUT".into(), "training".into())),
        "{text:?}"
    );
    assert!(
        text.contains(&(Some(0), "STDERR".into(), "warning: slow".into())),
        "{text:?}"
    );
    assert!(
        text.contains(&(Some(1), "STDOUT".into(), "saved".into())),
        "{text:?}"
    );
    let samples = execution::list_measurements(&mut conn, TaskKey(key(1)), Some("loss"))
        .await
        .unwrap();
    let values: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.value)).collect();
    assert_eq!(values, vec![(0.0, 1.5), (1.0, 0.5)]);

    // Step states are recorded with the result.
    let t1 = setup.task(1).await;
    let steps: Vec<&str> = t1.steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(steps, ["SUCCEEDED", "SUCCEEDED"]);

    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_stay_literal_argv_elements() {
    let echo = function(
        611,
        "echo",
        &[&[
            "printf",
            "%s|%s\\n",
            "{parameters.evil}",
            "{parameters.flag}",
        ]],
        Vec::new(),
        Vec::new(),
    );
    let setup = Setup::new(chrono::Duration::seconds(10), &[echo]).await;
    let marker = setup.dir.path().join("pwned");
    let evil = format!(
        "; rm -rf / $(touch {}) `touch {}`",
        marker.display(),
        marker.display()
    );
    let (stop, worker) = setup.start_worker("w1");
    setup
        .submit(&plan(
            610,
            vec![task(
                1,
                611,
                &[],
                &[],
                serde_json::json!({"evil": evil, "flag": "-n"}),
            )],
        ))
        .await;
    setup
        .wait_for_task(1, "DONE", |t| t.status == TaskStatus::Done)
        .await;
    let mut conn = setup.cluster.db.connect().await;
    let lines = execution::list_log_lines(&mut conn, TaskKey(key(1)), 100, 0)
        .await
        .unwrap();
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == models::LogStream::Stdout)
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(stdout, [format!("{evil}|-n").as_str()]);
    assert!(!marker.exists(), "nothing was run through a shell");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_escapes_the_workspace_fails_the_task() {
    let escape = function(
        621,
        "escape",
        &[&["ln", "-s", "/etc/passwd", "{outputs.model}"]],
        Vec::new(),
        vec![output("model", OutputKind::Model)],
    );
    let missing = function(
        622,
        "missing",
        &[&["true"]],
        Vec::new(),
        vec![output("auc", OutputKind::Performance)],
    );
    let setup = Setup::new(chrono::Duration::seconds(10), &[escape, missing]).await;
    let (stop, worker) = setup.start_worker("w1");
    setup
        .submit(&plan(
            620,
            vec![task(1, 621, &[], &["model"], serde_json::json!({}))],
        ))
        .await;
    setup
        .submit(&plan(
            623,
            vec![task(2, 622, &[], &["auc"], serde_json::json!({}))],
        ))
        .await;
    let t1 = setup
        .wait_for_task(1, "FAILED", |t| t.status == TaskStatus::Failed)
        .await;
    assert_eq!(t1.error_type, Some(TaskErrorType::Execution));
    let message = t1.error_message.unwrap_or_default();
    assert!(
        message.contains("`model`") && message.contains("symbolic link"),
        "{message}"
    );
    let t2 = setup
        .wait_for_task(2, "FAILED", |t| t.status == TaskStatus::Failed)
        .await;
    let message = t2.error_message.unwrap_or_default();
    assert!(message.contains("auc"), "{message}");
    let mut conn = setup.cluster.db.connect().await;
    assert!(
        execution::list_task_models(&mut conn, TaskKey(key(1)))
            .await
            .unwrap()
            .is_empty()
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
}

/// A step that records its process group and leaves a grandchild behind; `trap` makes the
/// whole group ignore SIGTERM.
fn sleeper(n: u128, ignore_term: bool, timeout_secs: Option<u64>) -> Function {
    let script = format!(
        "{}echo $$ > \"$1\"; sleep 1000 & sleep 1000",
        if ignore_term { "trap '' TERM; " } else { "" }
    );
    let mut function = function(
        n,
        &format!("sleeper {n}"),
        &[&["sh", "-c", &script, "sh", "{parameters.pidfile}"]],
        Vec::new(),
        Vec::new(),
    );
    function.timeout_secs = timeout_secs;
    function
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_abort_and_timeout_leave_no_process_behind() {
    let setup = Setup::new(
        chrono::Duration::seconds(10),
        &[
            sleeper(631, false, None),
            sleeper(632, true, None),
            sleeper(633, true, None),
            sleeper(634, false, Some(1)),
        ],
    )
    .await;
    let (stop, worker) = setup.start_worker("w1");
    let pidfile = |n: u128| setup.dir.path().join(format!("pid-{n}"));
    let one = |task_n: u128, function: u128| {
        task(
            task_n,
            function,
            &[],
            &[],
            serde_json::json!({"pidfile": pidfile(task_n).display().to_string()}),
        )
    };
    // Cancel: SIGTERM ends it well within the grace period.
    setup.submit(&plan(630, vec![one(1, 631)])).await;
    let pid = wait_for_pid(&pidfile(1)).await;
    let asked = Instant::now();
    setup
        .cancel(&CancelRequest::Task {
            task_key: TaskKey(key(1)),
            reason: "test".into(),
        })
        .await;
    let t1 = setup
        .wait_for_task(1, "CANCELED", |t| t.status == TaskStatus::Canceled)
        .await;
    assert!(
        asked.elapsed() < Duration::from_millis(1500),
        "{:?}",
        asked.elapsed()
    );
    assert_group_gone(pid).await;
    assert_eq!(t1.steps[0].status.as_str(), "ABORTED");

    // Cancel of a step that ignores SIGTERM: SIGKILL after the grace period.
    setup.submit(&plan(635, vec![one(2, 632)])).await;
    let pid = wait_for_pid(&pidfile(2)).await;
    let asked = Instant::now();
    setup
        .cancel(&CancelRequest::Task {
            task_key: TaskKey(key(2)),
            reason: "test".into(),
        })
        .await;
    setup
        .wait_for_task(2, "CANCELED", |t| t.status == TaskStatus::Canceled)
        .await;
    assert!(
        asked.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        asked.elapsed()
    );
    assert_group_gone(pid).await;

    // Abort: killed at once, whatever it ignores.
    setup.submit(&plan(636, vec![one(3, 633)])).await;
    let pid = wait_for_pid(&pidfile(3)).await;
    let asked = Instant::now();
    setup
        .cancel(&CancelRequest::Abort {
            task_key: TaskKey(key(3)),
            reason: "test".into(),
        })
        .await;
    setup
        .wait_for_task(3, "CANCELED", |t| t.status == TaskStatus::Canceled)
        .await;
    assert!(
        asked.elapsed() < Duration::from_millis(1400),
        "{:?}",
        asked.elapsed()
    );
    assert_group_gone(pid).await;

    // Timeout: the task fails with TIMEOUT and its processes are gone.
    setup.submit(&plan(637, vec![one(4, 634)])).await;
    let pid = wait_for_pid(&pidfile(4)).await;
    let t4 = setup
        .wait_for_task(4, "FAILED", |t| t.status == TaskStatus::Failed)
        .await;
    assert_eq!(t4.error_type, Some(TaskErrorType::Timeout));
    assert_group_gone(pid).await;

    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_handler_runs_a_task_end_to_end() {
    let mut add = function(
        641,
        "add",
        &[],
        Vec::new(),
        vec![output("sum", OutputKind::Performance)],
    );
    add.steps.clear();
    add.parameters = ["a", "b"]
        .into_iter()
        .map(|key| models::function::ParameterDecl {
            key: key.into(),
            description: String::new(),
            default: None,
        })
        .collect();
    let setup = Setup::new(chrono::Duration::seconds(10), &[add]).await;
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let worker = Worker::builder(setup.config("w1"), Arc::new(store))
        .handler("add", |ctx| async move {
            let a = ctx.parameters["a"].as_f64().unwrap_or_default();
            let b = ctx.parameters["b"].as_f64().unwrap_or_default();
            ctx.log(&format!("{a} + {b}"));
            ctx.measure("progress", 0.0, 1.0);
            ctx.set_performance("sum", a + b).await
        })
        .build();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    setup
        .submit(&plan(
            640,
            vec![task(
                1,
                641,
                &[],
                &["sum"],
                serde_json::json!({"a": 1, "b": 2}),
            )],
        ))
        .await;
    setup
        .wait_for_task(1, "DONE", |t| t.status.is_terminal())
        .await;
    let t1 = setup.task(1).await;
    assert_eq!(t1.status, TaskStatus::Done, "{:?}", t1.error_message);
    let mut conn = setup.cluster.db.connect().await;
    let performances = execution::list_task_performances(&mut conn, TaskKey(key(1)))
        .await
        .unwrap();
    assert_eq!(performances[0].value, 3.0);
    let lines = execution::list_log_lines(&mut conn, TaskKey(key(1)), 100, 0)
        .await
        .unwrap();
    assert!(lines.iter().any(|l| l.text == "1 + 2"), "{lines:?}");
    let samples = execution::list_measurements(&mut conn, TaskKey(key(1)), None)
        .await
        .unwrap();
    assert_eq!(samples.len(), 1);

    // Idle now (its DONE report said so): a new plan's task starts on it in the transaction
    // that stores the plan, without going through the task queue or a claim.
    setup
        .submit(&plan(
            642,
            vec![task(
                2,
                641,
                &[],
                &["sum"],
                serde_json::json!({"a": 2, "b": 2}),
            )],
        ))
        .await;
    setup
        .wait_for_task(2, "DONE", |t| t.status.is_terminal())
        .await;
    let t2 = setup.task(2).await;
    assert_eq!(t2.status, TaskStatus::Done, "{:?}", t2.error_message);
    assert_eq!(t2.start_date, Some(t2.creation_date), "started when stored");
    let history: Vec<TaskStatus> = tasks::list_state_changes(&mut conn, t2.key)
        .await
        .unwrap()
        .iter()
        .map(|change| change.status)
        .collect();
    assert_eq!(
        history,
        [TaskStatus::Todo, TaskStatus::Doing, TaskStatus::Done]
    );
    let performances = execution::list_task_performances(&mut conn, t2.key)
        .await
        .unwrap();
    assert_eq!(performances[0].value, 4.0);
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A chain runs ahead on a real worker: after the follow-up of its first link, each link is
/// granted ahead and started in the slot of the one before as soon as that one ends, its input
/// filled in from the model the one before left; each link counts its parent's number up, so
/// the last model says every link ran once, in order, on its parent's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_ahead_each_link_on_the_model_of_the_one_before() {
    let count = function(
        661,
        "count",
        &[],
        vec![FunctionInput {
            identifier: "previous".into(),
            kind: InputKind::Model,
            multiple: false,
            optional: true,
        }],
        vec![output("number", OutputKind::Model)],
    );
    let setup = Setup::new(chrono::Duration::seconds(10), &[count]).await;
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let worker = Worker::builder(setup.config("w1"), Arc::new(store))
        .handler("count", |ctx| async move {
            let previous = match ctx.inputs.get("previous") {
                Some(path) => tokio::fs::read_to_string(path)
                    .await
                    .map_err(|error| format!("reading the input: {error}"))?
                    .parse::<u32>()
                    .map_err(|error| format!("the input is not a number: {error}"))?,
                None => 0,
            };
            let path = ctx.outputs.get("number").ok_or("no output `number`")?;
            tokio::fs::write(path, (previous + 1).to_string())
                .await
                .map_err(|error| format!("writing the output: {error}"))
        })
        .build();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let links = 6;
    let tasks = (1..=links)
        .map(|n| {
            let previous: &[(&str, u128, &str)] = if n == 1 {
                &[]
            } else {
                &[("previous", n - 1, "number")]
            };
            task(n, 661, previous, &["number"], serde_json::json!({}))
        })
        .collect();
    setup.submit(&plan(660, tasks)).await;
    setup
        .wait_for_task(links, "DONE", |t| t.status.is_terminal())
        .await;
    let mut conn = setup.cluster.db.connect().await;
    for n in 1..=links {
        let task = setup.task(n).await;
        assert_eq!(
            (task.status, task.attempt_count),
            (TaskStatus::Done, 1),
            "t{n}: {:?}",
            task.error_message
        );
        let model = execution::list_models_of_tasks(&mut conn, &[task.key])
            .await
            .unwrap()
            .remove(&task.key)
            .expect("each link registered its model")
            .remove(0);
        let file = model.address.expect("the model has its file");
        let text = std::fs::read_to_string(setup.artifacts().join(&file.storage_address)).unwrap();
        assert_eq!(text, n.to_string(), "t{n} counted on its parent's model");
    }
    // Every link after the first went to the worker without a claim: the second as the first's
    // follow-up (the first started at its submission) or granted ahead with the first's claim,
    // every later one granted ahead.
    let grants = setup.cluster.metrics.direct_grants();
    let links = u64::try_from(links).unwrap();
    assert_eq!(
        grants.follow_ups + grants.started_ahead,
        links - 1,
        "{grants:?}"
    );
    assert!(grants.started_ahead >= links - 2, "{grants:?}");
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A set-up whose function `function_n` (`add`) has no steps, its one performance output set by
/// an in-process handler, and a worker of `slots` slots running it until the token is
/// cancelled.
async fn adding_worker(
    function_n: u128,
    slots: u32,
    taking: Duration,
) -> (Setup, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let mut add = function(
        function_n,
        "add",
        &[],
        Vec::new(),
        vec![output("sum", OutputKind::Performance)],
    );
    add.steps.clear();
    let setup = Setup::new(chrono::Duration::seconds(10), &[add]).await;
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let mut config = setup.config("w1");
    config.executor_limit = slots;
    let worker = Worker::builder(config, Arc::new(store))
        .handler("add", move |ctx| async move {
            tokio::time::sleep(taking).await;
            ctx.set_performance("sum", 1.0).await
        })
        .build();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    (setup, stop, running)
}

/// A worker of one slot, idle, has that slot held by its queue's consumer waiting for a
/// delivery; a task the dispatcher assigns it without a claim (here at its plan's submission,
/// the worker's DONE report having said it was idle) gets the slot from the consumer and runs,
/// instead of being handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_waiting_for_a_delivery_yields_its_slot_to_an_assigned_task() {
    let (setup, stop, running) = adding_worker(671, 1, Duration::ZERO).await;
    for (n, plan_n) in [(1, 670), (2, 672), (3, 673)] {
        setup
            .submit(&plan(
                plan_n,
                vec![task(n, 671, &[], &["sum"], serde_json::json!({}))],
            ))
            .await;
        setup.wait_done_once(n).await;
    }
    let grants = setup.cluster.metrics.direct_grants();
    assert_eq!(
        (grants.eager_starts, grants.hand_backs),
        (2, 0),
        "{grants:?}"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A worker whose attempts end DONE keeps their slots for the dispatcher's answer, which
/// gives it the tasks still waiting in its queue one by one, without claims; their messages,
/// delivered afterwards, are dropped. Every task runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slots_of_done_attempts_are_refilled_from_the_queue() {
    let (setup, stop, running) = adding_worker(681, 2, Duration::ZERO).await;
    let tasks = 12;
    setup.submit_independent(680, 681, tasks).await;
    for n in 1..=tasks {
        setup.wait_done_once(n).await;
    }
    let grants = setup.cluster.metrics.direct_grants();
    assert_eq!(grants.hand_backs, 0, "{grants:?}");
    assert!(
        grants.refills >= 6,
        "most of the tasks beyond the first two go into kept slots: {grants:?}"
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A worker whose slots are all busy takes tasks on its deck (`on_deck`): granted with the
/// answers to its DONE reports, each started in the next slot that frees (or in a slot kept
/// idle for another report's answer, or held by the queue's consumer), so more tasks are
/// granted to it at once than it has slots, and every task still runs once, none handed back.
/// A worker of one slot has a deck too. Tasks shorter than the dispatcher's answers (2 ms) keep
/// several answers awaited at once, each with a slot kept, and the deck's tasks taking those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_granted_onto_the_deck_start_as_slots_free_and_run_once() {
    for (slots, taking_ms, tasks, function_n, plan_n) in [
        (2, 60, 12, 691, 690),
        (1, 60, 12, 693, 692),
        (2, 2, 40, 695, 694),
    ] {
        let (setup, stop, running) =
            adding_worker(function_n, slots, Duration::from_millis(taking_ms)).await;
        setup.submit_independent(plan_n, function_n, tasks).await;
        let mut spans = Vec::new();
        for n in 1..=tasks {
            setup.wait_done_once(n).await;
            let done = setup.task(n).await;
            spans.push((done.start_date.unwrap(), done.end_date.unwrap()));
        }
        let grants = setup.cluster.metrics.direct_grants();
        assert_eq!(grants.hand_backs, 0, "{slots} slots: {grants:?}");
        // Granted (start_date) to ended: with the deck, up to a task a slot waits granted.
        let most_at_once = spans
            .iter()
            .map(|(start, _)| {
                spans
                    .iter()
                    .filter(|(other_start, other_end)| other_start <= start && start < other_end)
                    .count()
            })
            .max()
            .unwrap();
        assert!(
            most_at_once > slots as usize,
            "{slots} slots, no task waited on the deck: at most {most_at_once} granted at once, \
             {grants:?}"
        );
        stop.cancel();
        running.await.unwrap().unwrap();
    }
}

/// An in-process handler of a task without files runs without a workspace until it asks for
/// its scratch directory: a handler that never asks makes no directory at all, and one that
/// asks gets a directory of its own, gone once the attempt is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_handler_gets_a_workspace_only_when_it_asks_for_one() {
    let mut noop = function(771, "noop", &[], Vec::new(), Vec::new());
    noop.steps.clear();
    let mut scratch = function(772, "scratch", &[], Vec::new(), Vec::new());
    scratch.steps.clear();
    let setup = Setup::new(chrono::Duration::seconds(10), &[noop, scratch]).await;
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let config = setup.config("w1");
    let work_root = config.work_root.clone();
    let worker = Worker::builder(config, Arc::new(store))
        .handler("noop", |_ctx| async move { Ok(()) })
        .handler("scratch", |ctx| async move {
            let dir = ctx.work_dir().await?;
            let note = dir.join("note");
            tokio::fs::write(&note, b"scratch")
                .await
                .map_err(|error| error.to_string())?;
            let read = tokio::fs::read(&note)
                .await
                .map_err(|error| error.to_string())?;
            if read != b"scratch" || ctx.work_dir().await? != dir {
                return Err("the scratch directory changed".to_owned());
            }
            ctx.log(&format!("scratch at {}", dir.display()));
            Ok(())
        })
        .build();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    setup
        .submit(&plan(
            770,
            vec![task(1, 771, &[], &[], serde_json::json!({}))],
        ))
        .await;
    let t1 = setup
        .wait_for_task(1, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(t1.status, TaskStatus::Done, "{:?}", t1.error_message);
    assert!(
        !work_root.exists(),
        "a handler that never asked made a workspace under {}",
        work_root.display()
    );

    setup
        .submit(&plan(
            773,
            vec![task(2, 772, &[], &[], serde_json::json!({}))],
        ))
        .await;
    let t2 = setup
        .wait_for_task(2, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(t2.status, TaskStatus::Done, "{:?}", t2.error_message);
    let mut conn = setup.cluster.db.connect().await;
    let lines = execution::list_log_lines(&mut conn, t2.key, 100, 0)
        .await
        .unwrap();
    let dir = lines
        .iter()
        .find_map(|line| line.text.strip_prefix("scratch at "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no scratch line in {lines:?}"));
    let canonical_root = std::fs::canonicalize(&work_root).unwrap();
    assert_eq!(
        dir,
        canonical_root.join(format!("{}-1", t2.key)).join("work"),
        "the attempt's own workspace"
    );
    // Finished beside the report: gone soon after DONE.
    let deadline = Instant::now() + Duration::from_secs(10);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} outlived its attempt",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// Batches of events whose transaction fails go back to the queue and are applied again, with
/// the batches decided while they were committing: with the first three transactions that
/// store DONE reports refused by PostgreSQL, every task of a fan-in is still done once, each of
/// its models registered once and handed to its child.
#[tokio::test]
async fn events_whose_commit_fails_are_applied_again_and_nothing_is_lost_or_doubled() {
    const PARENTS: u128 = 48;
    const CHILDREN: u128 = 4;
    let mut make = function(
        661,
        "make",
        &[],
        Vec::new(),
        vec![output("model", OutputKind::Model)],
    );
    let mut join = function(
        662,
        "join",
        &[],
        vec![FunctionInput {
            identifier: "models".into(),
            kind: InputKind::Model,
            multiple: true,
            optional: false,
        }],
        vec![output("count", OutputKind::Performance)],
    );
    make.steps.clear();
    join.steps.clear();
    let setup = Setup::new(chrono::Duration::seconds(10), &[make, join]).await;
    // A sequence is not rolled back with the transaction that advanced it: the first three
    // statements inserting DONE history fail, and only those.
    let mut conn = setup.cluster.db.connect().await;
    for statement in [
        "CREATE SEQUENCE injected_failures",
        "CREATE FUNCTION fail_first_done_batches() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF EXISTS (SELECT 1 FROM inserted WHERE status = 'DONE')
                 AND nextval('injected_failures') <= 3 THEN
                 RAISE EXCEPTION 'injected failure';
             END IF;
             RETURN NULL;
         END $$",
        "CREATE TRIGGER fail_first_done_batches AFTER INSERT ON task_state_changes
         REFERENCING NEW TABLE AS inserted
         FOR EACH STATEMENT EXECUTE FUNCTION fail_first_done_batches()",
    ] {
        diesel_async::RunQueryDsl::execute(diesel::sql_query(statement), &mut conn)
            .await
            .unwrap();
    }
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let mut config = setup.config("w1");
    config.executor_limit = 8;
    // How many times each task ran.
    let runs: Arc<std::sync::Mutex<BTreeMap<TaskKey, usize>>> = Arc::default();
    let ran = |runs: &Arc<std::sync::Mutex<BTreeMap<TaskKey, usize>>>, task| {
        *runs.lock().unwrap().entry(task).or_default() += 1;
    };
    let (make_runs, join_runs) = (runs.clone(), runs.clone());
    let worker = Worker::builder(config, Arc::new(store))
        .handler("make", move |ctx| {
            ran(&make_runs, ctx.task_key);
            async move {
                tokio::fs::write(&ctx.outputs["model"], ctx.task_key.to_string())
                    .await
                    .map_err(|error| error.to_string())
            }
        })
        .handler("join", move |ctx| {
            ran(&join_runs, ctx.task_key);
            async move {
                let mut entries = tokio::fs::read_dir(&ctx.inputs["models"])
                    .await
                    .map_err(|error| error.to_string())?;
                let mut count = 0;
                while entries
                    .next_entry()
                    .await
                    .map_err(|error| error.to_string())?
                    .is_some()
                {
                    count += 1;
                }
                ctx.set_performance("count", f64::from(count)).await
            }
        })
        .build();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let per_child = PARENTS / CHILDREN;
    let mut tasks_of_plan: Vec<NewTask> = (1..=PARENTS)
        .map(|n| task(n, 661, &[], &["model"], serde_json::json!({})))
        .collect();
    for child in 0..CHILDREN {
        let inputs: Vec<(&str, u128, &str)> = (1..=per_child)
            .map(|i| ("models", child * per_child + i, "model"))
            .collect();
        tasks_of_plan.push(task(
            1000 + child,
            662,
            &inputs,
            &["count"],
            serde_json::json!({}),
        ));
    }
    setup.submit(&plan(660, tasks_of_plan)).await;
    for child in 0..CHILDREN {
        setup
            .wait_for_task(1000 + child, "DONE", |t| t.status.is_terminal())
            .await;
    }
    let failed: i64 = {
        #[derive(diesel::QueryableByName)]
        struct Value {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            last_value: i64,
        }
        let value: Value = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query("SELECT last_value FROM injected_failures"),
            &mut conn,
        )
        .await
        .unwrap();
        value.last_value
    };
    assert!(failed > 3, "the failures were injected ({failed})");
    let keys: Vec<u128> = (1..=PARENTS)
        .chain((0..CHILDREN).map(|c| 1000 + c))
        .collect();
    for n in keys {
        let stored = setup.task(n).await;
        assert_eq!(
            stored.status,
            TaskStatus::Done,
            "t{n}: {:?}",
            stored.error_message
        );
        let changes = tasks::list_state_changes(&mut conn, stored.key)
            .await
            .unwrap();
        let ran = runs.lock().unwrap().get(&stored.key).copied();
        assert_eq!(ran, Some(1), "t{n} ran once: {changes:?}");
        // Done once; a follow-up its worker had no slot for was handed back and started again.
        let done = changes
            .iter()
            .filter(|c| c.status == TaskStatus::Done)
            .count();
        assert_eq!(done, 1, "t{n}: {changes:?}");
        assert_eq!(changes.last().map(|c| c.status), Some(TaskStatus::Done));
        if n <= PARENTS {
            let models = execution::list_task_models(&mut conn, stored.key)
                .await
                .unwrap();
            assert_eq!(models.len(), 1, "t{n}: one model");
        } else {
            let performances = execution::list_task_performances(&mut conn, stored.key)
                .await
                .unwrap();
            assert_eq!(performances.len(), 1, "t{n}: one performance");
            assert_eq!(
                performances[0].value, per_child as f64,
                "t{n} got every model"
            );
        }
    }
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// The environment variable that makes [`child_worker_process`] run a worker.
const CHILD_CONFIG: &str = "BATON_TEST_CHILD_WORKER";

/// Not a test: the body of the worker process that
/// [`a_worker_killed_mid_task_is_replaced_and_the_task_is_done_once`] starts and kills.
#[tokio::test]
#[ignore = "runs only as a child process of another test"]
async fn child_worker_process() {
    let Ok(config) = std::env::var(CHILD_CONFIG) else {
        return;
    };
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let text = |name: &str| config[name].as_str().unwrap().to_owned();
    let mut broker = broker::BrokerConfig::new(text("url"), "worker-child");
    broker.app_id = "worker-child".into();
    let mut worker_config =
        WorkerConfig::new(broker, text("id").as_str().into(), ORGANIZATION.into());
    worker_config.work_root = PathBuf::from(text("work"));
    let store = LocalStore::new(text("artifacts")).unwrap();
    Worker::builder(worker_config, Arc::new(store))
        .build()
        .run(CancellationToken::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_is_replaced_and_the_task_is_done_once() {
    let slow = function(
        651,
        "slow",
        &[&[
            "sh",
            "-c",
            "echo $$ > \"$1\"; sleep 2; echo done > \"$2\"",
            "sh",
            "{parameters.pidfile}",
            "{outputs.model}",
        ]],
        Vec::new(),
        vec![output("model", OutputKind::Model)],
    );
    let setup = Setup::new(chrono::Duration::seconds(2), &[slow]).await;
    let pidfile = setup.dir.path().join("pid");
    let config = serde_json::json!({
        "url": setup.cluster.broker.config("worker-child").url,
        "id": "child",
        "work": setup.dir.path().join("work-child").display().to_string(),
        "artifacts": setup.artifacts().display().to_string(),
    });
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker::child_worker_process",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_CONFIG, config.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    setup
        .submit(&plan(
            650,
            vec![task(
                1,
                651,
                &[],
                &["model"],
                serde_json::json!({"pidfile": pidfile.display().to_string()}),
            )],
        ))
        .await;
    let step = wait_for_pid(&pidfile).await;
    let running = setup.task(1).await;
    assert_eq!(running.status, TaskStatus::Doing);
    assert_eq!(
        running.worker_id.as_ref().map(|w| w.as_str()),
        Some("child")
    );
    // SIGKILL: the worker has no chance to report or hand anything back.
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&pidfile);

    let (stop, worker) = setup.start_worker("w2");
    let done = setup
        .wait_for_task(1, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Done, "{:?}", done.error_message);
    assert_eq!(done.attempt_count, 2);
    assert_eq!(done.worker_id.as_ref().map(|w| w.as_str()), Some("w2"));
    let mut conn = setup.cluster.db.connect().await;
    let history = tasks::list_state_changes(&mut conn, TaskKey(key(1)))
        .await
        .unwrap();
    let dones = history
        .iter()
        .filter(|change| change.status == TaskStatus::Done)
        .count();
    assert_eq!(dones, 1, "DONE once: {history:?}");
    // One model: the second attempt's.
    assert_eq!(
        execution::list_task_models(&mut conn, TaskKey(key(1)))
            .await
            .unwrap()
            .len(),
        1
    );
    // The first attempt's step ran on as an orphan of the killed worker; it ends by itself.
    let _ = step;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_is_built_once_and_its_tasks_run_with_the_image() {
    let mut built = function(
        661,
        "built",
        &[&[
            "sh",
            "-c",
            "test \"$(cat \"$BATON_IMAGE\")\" = built-v1 && echo 1 > \"$1\"",
            "sh",
            "{outputs.ok}",
        ]],
        Vec::new(),
        vec![output("ok", OutputKind::Performance)],
    );
    built.status = FunctionStatus::Waiting;
    built.build_steps = vec![Step {
        timeout_secs: None,
        name: "compile".into(),
        command: [
            "sh",
            "-c",
            "echo compiling; echo built-v1 > \"$1\"",
            "sh",
            "{outputs.image}",
        ]
        .map(String::from)
        .to_vec(),
    }];
    let mut broken = function(662, "broken", &[&["true"]], Vec::new(), Vec::new());
    broken.status = FunctionStatus::Waiting;
    broken.build_steps = vec![Step {
        timeout_secs: None,
        name: "compile".into(),
        command: vec!["false".into()],
    }];
    let setup = Setup::new(chrono::Duration::seconds(10), &[built, broken]).await;
    setup
        .submit(&plan(
            660,
            vec![
                task(1, 661, &[], &["ok"], serde_json::json!({})),
                task(2, 661, &[], &["ok"], serde_json::json!({})),
            ],
        ))
        .await;
    setup
        .submit(&plan(
            663,
            vec![task(3, 662, &[], &[], serde_json::json!({}))],
        ))
        .await;
    let waiting = setup.task(1).await;
    assert_eq!(waiting.status, TaskStatus::Waiting);
    assert_eq!(waiting.waiting_reason, Some(models::WaitingReason::Build));

    let (stop, worker) = setup.start_worker("w1");
    let plan = setup
        .cluster
        .wait_for_plan(PlanKey(key(660)), WAIT, "ended", |p| p.status.is_terminal())
        .await;
    let t1 = setup.task(1).await;
    assert_eq!(plan.status, PlanStatus::Done, "t1: {:?}", t1.error_message);
    let mut conn = setup.cluster.db.connect().await;
    let function = dispatcher::store::catalog::find_function(&mut conn, FunctionKey(key(661)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(function.status, FunctionStatus::Ready);
    let image = function.image.expect("the build's image is recorded");
    assert_eq!(
        image.checksum,
        hex::encode(sha2::Sha256::digest(b"built-v1\n"))
    );
    // The failed build fails the task that waited for it.
    let t3 = setup
        .wait_for_task(3, "FAILED", |t| t.status.is_terminal())
        .await;
    assert_eq!(t3.status, TaskStatus::Failed);
    assert_eq!(t3.error_type, Some(TaskErrorType::Build));
    let broken = dispatcher::store::catalog::find_function(&mut conn, FunctionKey(key(662)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(broken.status, FunctionStatus::Failed);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_own_timeout_fails_the_task_and_leaves_nothing_running() {
    let mut slow = sleeper(671, false, None);
    slow.steps[0].timeout_secs = Some(1);
    slow.steps.push(Step {
        name: "never".into(),
        command: vec!["true".into()],
        timeout_secs: None,
    });
    let setup = Setup::new(chrono::Duration::seconds(10), &[slow]).await;
    let (stop, worker) = setup.start_worker("w1");
    let pidfile = setup.dir.path().join("pid");
    setup
        .submit(&plan(
            670,
            vec![task(
                1,
                671,
                &[],
                &[],
                serde_json::json!({"pidfile": pidfile.display().to_string()}),
            )],
        ))
        .await;
    let pid = wait_for_pid(&pidfile).await;
    let t1 = setup
        .wait_for_task(1, "FAILED", |t| t.status.is_terminal())
        .await;
    assert_eq!(t1.status, TaskStatus::Failed);
    assert_eq!(t1.error_type, Some(TaskErrorType::Timeout));
    let steps: Vec<&str> = t1.steps.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(steps, ["ABORTED", "SKIPPED"]);
    assert_group_gone(pid).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_worker_can_run_says_so_and_runs_when_one_registers() {
    let mut gpu = function(681, "gpu", &[&["true"]], Vec::new(), Vec::new());
    gpu.requirements = RequirementSet([("gpu".to_owned(), "a100".to_owned())].into());
    let setup = Setup::new(chrono::Duration::seconds(10), &[gpu]).await;
    // A worker without the property runs already: it does not take the task.
    let (stop_plain, plain) = setup.start_worker("plain");
    setup
        .submit(&plan(
            680,
            vec![task(1, 681, &[], &[], serde_json::json!({}))],
        ))
        .await;
    let deadline = Instant::now() + WAIT;
    let reason = loop {
        let mut conn = setup.cluster.db.connect().await;
        let history = tasks::list_state_changes(&mut conn, TaskKey(key(1)))
            .await
            .unwrap();
        if let Some(change) = history
            .iter()
            .find(|change| change.reason.contains("no active worker"))
        {
            break change.reason.clone();
        }
        assert!(Instant::now() < deadline, "no warning in {history:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reason.contains("gpu=a100"), "{reason}");
    assert_eq!(setup.task(1).await.status, TaskStatus::Todo);

    // A worker with the property registers: it learns of the queue and runs the task.
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let mut config = setup.config("gpu-host");
    config.properties = [("gpu".to_owned(), "a100".to_owned())].into();
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::builder(config, Arc::new(store))
            .build()
            .run(stop.clone()),
    );
    let done = setup
        .wait_for_task(1, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Done);
    assert_eq!(
        done.worker_id.as_ref().map(|w| w.as_str()),
        Some("gpu-host")
    );
    stop.cancel();
    stop_plain.cancel();
    worker.await.unwrap().unwrap();
    plain.await.unwrap().unwrap();
}

/// A scanner whose device list the test changes.
struct Scanner(std::sync::Mutex<Vec<Arc<dyn worker::Device>>>);

impl worker::DeviceScanner for Scanner {
    fn scan(&self) -> futures::future::BoxFuture<'_, Vec<Arc<dyn worker::Device>>> {
        let devices = self.0.lock().unwrap().clone();
        Box::pin(async move { devices })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_scanner_keeps_the_dispatcher_s_device_list_current() {
    let setup = Setup::new(chrono::Duration::seconds(10), &[]).await;
    let local: Arc<dyn worker::Device> = Arc::new(worker::LocalDevice::new("local"));
    let extra: Arc<dyn worker::Device> = Arc::new(worker::LocalDevice::new("bench-2"));
    let scanner = Arc::new(Scanner(std::sync::Mutex::new(vec![local.clone()])));
    let mut config = setup.config("scanning");
    config.scan_interval = Duration::from_millis(200);
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        Worker::builder(config, Arc::new(store))
            .device(local.clone())
            .scanner(scanner.clone())
            .build()
            .run(stop.clone()),
    );
    let devices = async |expected: &[(&str, bool)]| {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut conn = setup.cluster.db.connect().await;
            let listed: Vec<(String, bool)> =
                dispatcher::store::workers::list_devices(&mut conn, &"scanning".into())
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|d| (d.id.to_string(), d.is_active))
                    .collect();
            let wanted: Vec<(String, bool)> = expected
                .iter()
                .map(|(id, active)| ((*id).to_owned(), *active))
                .collect();
            if listed == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "devices {listed:?}, expected {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    devices(&[("local", true)]).await;
    scanner.0.lock().unwrap().push(extra);
    devices(&[("bench-2", true), ("local", true)]).await;
    scanner.0.lock().unwrap().truncate(1);
    devices(&[("bench-2", false), ("local", true)]).await;
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_consumes_a_queue_announced_after_it_registered() {
    let mut gpu = function(691, "gpu", &[&["true"]], Vec::new(), Vec::new());
    gpu.requirements = RequirementSet([("gpu".to_owned(), "h100".to_owned())].into());
    let setup = Setup::new(chrono::Duration::seconds(10), &[gpu]).await;
    let mut config = setup.config("gpu-host");
    config.properties = [("gpu".to_owned(), "h100".to_owned())].into();
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        Worker::builder(config, Arc::new(store))
            .build()
            .run(stop.clone()),
    );
    // Registered before any task needs a GPU: its queue does not exist yet.
    let deadline = Instant::now() + WAIT;
    while !setup
        .cluster
        .broker
        .queue_exists("baton.worker.gpu-host")
        .await
    {
        assert!(Instant::now() < deadline, "the worker did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    setup
        .submit(&plan(
            690,
            vec![task(1, 691, &[], &[], serde_json::json!({}))],
        ))
        .await;
    let done = setup
        .wait_for_task(1, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Done);
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_back_what_it_cannot_finish_and_another_runs_it() {
    // One attempt only: a hand-back must not count as a failed attempt.
    let mut long = function(
        701,
        "long",
        &[&[
            "sh",
            "-c",
            "echo $$ > \"$1\"; sleep 1000",
            "sh",
            "{parameters.pidfile}",
        ]],
        Vec::new(),
        Vec::new(),
    );
    long.retry.max_attempts = 1;
    let quick = function(702, "quick", &[&["true"]], Vec::new(), Vec::new());
    let setup = Setup::new(chrono::Duration::seconds(10), &[long, quick]).await;
    let pidfile = setup.dir.path().join("pid");
    let mut config = setup.config("leaving");
    config.shutdown_deadline = Duration::from_millis(500);
    config.grace = Duration::from_millis(300);
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let stop = CancellationToken::new();
    let leaving = tokio::spawn(
        Worker::builder(config, Arc::new(store))
            .build()
            .run(stop.clone()),
    );
    setup
        .submit(&plan(
            700,
            vec![task(
                1,
                701,
                &[],
                &[],
                serde_json::json!({"pidfile": pidfile.display().to_string()}),
            )],
        ))
        .await;
    let pid = wait_for_pid(&pidfile).await;
    // SIGTERM, as `baton worker` gets it: stop taking work, wait, then hand back.
    stop.cancel();
    leaving.await.unwrap().unwrap();
    assert_group_gone(pid).await;
    let back = setup
        .wait_for_task(1, "TODO again", |t| t.status == TaskStatus::Todo)
        .await;
    assert_eq!(back.attempt_count, 1);
    let mut conn = setup.cluster.db.connect().await;
    let history = tasks::list_state_changes(&mut conn, TaskKey(key(1)))
        .await
        .unwrap();
    assert!(
        history.iter().any(|c| c.reason.contains("handed back")),
        "{history:?}"
    );
    drop(conn);
    // Another worker takes it; it is still running there when we look.
    let _ = std::fs::remove_file(&pidfile);
    let (stop_next, next) = setup.start_worker("next");
    wait_for_pid(&pidfile).await;
    let running = setup.task(1).await;
    assert_eq!(running.status, TaskStatus::Doing);
    assert_eq!(running.attempt_count, 2);
    assert_eq!(running.worker_id.as_ref().map(|w| w.as_str()), Some("next"));
    setup
        .cancel(&CancelRequest::Task {
            task_key: TaskKey(key(1)),
            reason: "end of test".into(),
        })
        .await;
    setup
        .wait_for_task(1, "CANCELED", |t| t.status == TaskStatus::Canceled)
        .await;
    stop_next.cancel();
    next.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_order_lets_running_work_finish_then_the_worker_leaves() {
    let steady = function(
        711,
        "steady",
        &[&[
            "sh",
            "-c",
            "echo $$ > \"$1\"; sleep 1",
            "sh",
            "{parameters.pidfile}",
        ]],
        Vec::new(),
        Vec::new(),
    );
    let setup = Setup::new(chrono::Duration::seconds(10), &[steady]).await;
    let pidfile = setup.dir.path().join("pid");
    let (_stop, worker) = setup.start_worker("w1");
    setup
        .submit(&plan(
            710,
            vec![task(
                1,
                711,
                &[],
                &[],
                serde_json::json!({"pidfile": pidfile.display().to_string()}),
            )],
        ))
        .await;
    wait_for_pid(&pidfile).await;
    let client = setup.cluster.client("operator").await;
    let publisher = broker::Publisher::new(&client).await.unwrap();
    publisher
        .publish(
            broker::topology::CONTROL_EXCHANGE,
            "worker.w1",
            &models::wire::ControlOrder::Disconnect {
                worker_id: "w1".into(),
            },
            broker::Meta::default(),
        )
        .await
        .unwrap();
    // The worker finishes the task, reports it, and returns on its own.
    tokio::time::timeout(WAIT, worker)
        .await
        .expect("the worker left")
        .unwrap()
        .unwrap();
    // Its report was confirmed before it left; the dispatcher applies it.
    let done = setup
        .wait_for_task(1, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Done);
}

/// The local device, with a parameter schema of its own.
struct Lab(worker::LocalDevice);

impl worker::Device for Lab {
    fn info(&self) -> models::wire::DeviceInfo {
        models::wire::DeviceInfo {
            id: "lab-1".into(),
            device_type: "lab".into(),
            input_type: None,
            parameter_schema: Some(serde_json::json!({
                "type": "object",
                "properties": {"voltage": {"type": "number", "maximum": 10}},
                "required": ["voltage"],
            })),
        }
    }

    fn run(
        &self,
        job: worker::device::Job,
    ) -> futures::future::BoxFuture<'_, worker::device::DeviceRun> {
        self.0.run(job)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_checked_against_the_device_schema_before_anything_runs() {
    let setup = Setup::new(chrono::Duration::seconds(10), &[]).await;
    let marker = setup.dir.path().join("ran");
    let lab = function(
        721,
        "lab",
        &[
            &["touch", "{parameters.marker}"],
            &["true", "{parameters.voltage}"],
        ],
        Vec::new(),
        Vec::new(),
    );
    setup.cluster.seed(&[lab]).await;
    let store = LocalStore::new(setup.artifacts()).unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        Worker::builder(setup.config("lab-host"), Arc::new(store))
            .device(Arc::new(Lab(worker::LocalDevice::default())))
            .build()
            .run(stop.clone()),
    );
    let marker_of = |n: u32| format!("{}-{n}", marker.display());
    for (n, voltage) in [(1u128, 230), (2, 5)] {
        setup
            .submit(&plan(
                720 + n * 10,
                vec![task(
                    n,
                    721,
                    &[],
                    &[],
                    serde_json::json!({"voltage": voltage, "marker": marker_of(n as u32)}),
                )],
            ))
            .await;
    }
    let refused = setup
        .wait_for_task(1, "FAILED", |t| t.status.is_terminal())
        .await;
    assert_eq!(refused.status, TaskStatus::Failed);
    let message = refused.error_message.unwrap_or_default();
    assert!(
        message.contains("device lab-1") && message.contains("/voltage"),
        "{message}"
    );
    let done = setup
        .wait_for_task(2, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(done.status, TaskStatus::Done);
    assert!(
        !Path::new(&marker_of(1)).exists(),
        "no step of the refused task ran"
    );
    assert!(Path::new(&marker_of(2)).exists());
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A local store whose fetches wait until the test opens the gate; it counts the fetches that
/// began.
struct GatedStore {
    inner: LocalStore,
    gate: tokio::sync::watch::Sender<bool>,
    fetches: std::sync::atomic::AtomicUsize,
}

impl GatedStore {
    fn new(inner: LocalStore) -> GatedStore {
        GatedStore {
            inner,
            gate: tokio::sync::watch::Sender::new(false),
            fetches: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

impl ArtifactStore for GatedStore {
    fn put<'a>(
        &'a self,
        address: &'a str,
        source: &'a Path,
    ) -> futures::future::BoxFuture<'a, Result<models::File, ArtifactError>> {
        self.inner.put(address, source)
    }

    fn fetch<'a>(
        &'a self,
        file: &'a models::File,
        dest: &'a Path,
    ) -> futures::future::BoxFuture<'a, Result<(), ArtifactError>> {
        Box::pin(async move {
            self.fetches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut gate = self.gate.subscribe();
            // The sender lives as long as the store: this returns once the gate is open.
            let _ = gate.wait_for(|open| *open).await;
            self.inner.fetch(file, dest).await
        })
    }

    fn describe(&self) -> String {
        format!("gated {}", self.inner.describe())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_ordered_before_start_ends_the_attempt_before_any_step() {
    let produce = function(
        731,
        "produce",
        &[&["sh", "-c", "echo weights > \"$1\"", "sh", "{outputs.model}"]],
        Vec::new(),
        vec![output("model", OutputKind::Model)],
    );
    let consume = function(
        732,
        "consume",
        &[
            &["touch", "{parameters.marker}"],
            &["cat", "{inputs.model}"],
        ],
        vec![FunctionInput {
            identifier: "model".into(),
            kind: InputKind::Model,
            multiple: false,
            optional: false,
        }],
        Vec::new(),
    );
    let setup = Setup::new(chrono::Duration::seconds(10), &[produce, consume]).await;
    let marker = setup.dir.path().join("started");
    let store = Arc::new(GatedStore::new(LocalStore::new(setup.artifacts()).unwrap()));
    let (stop, worker) = spawn_worker(setup.config("w1"), store.clone());
    setup
        .submit(&plan(
            730,
            vec![
                task(1, 731, &[], &["model"], serde_json::json!({})),
                task(
                    2,
                    732,
                    &[("model", 1, "model")],
                    &[],
                    serde_json::json!({"marker": marker.display().to_string()}),
                ),
            ],
        ))
        .await;
    // The parent has no input: it runs through the gate.
    let t1 = setup
        .wait_for_task(1, "DONE", |t| t.status.is_terminal())
        .await;
    assert_eq!(t1.status, TaskStatus::Done, "{:?}", t1.error_message);
    // The child is claimed, and its worker waits for its input at the gate.
    let claimed = setup
        .wait_for_task(2, "DOING", |t| t.status == TaskStatus::Doing)
        .await;
    assert_eq!(claimed.worker_id.as_ref().map(|w| w.as_str()), Some("w1"));
    let deadline = Instant::now() + WAIT;
    while store.fetches() == 0 {
        assert!(
            Instant::now() < deadline,
            "the child's input is not fetched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup
        .cancel(&CancelRequest::Abort {
            task_key: TaskKey(key(2)),
            reason: "aborted before it started".into(),
        })
        .await;
    setup
        .wait_for_task(2, "abort requested", |t| t.abort_requested)
        .await;
    // The abort interrupts the blocked fetch: the attempt ends before any step starts, while
    // the store still holds the input back.
    let t2 = setup
        .wait_for_task(2, "CANCELED", |t| t.status.is_terminal())
        .await;
    store.open();
    assert_eq!(t2.status, TaskStatus::Canceled, "{:?}", t2.error_message);
    assert!(t2.abort_requested);
    assert_eq!(t2.attempt_count, 1);
    assert!(t2.lease.is_none());
    // No step ran, nor says it started.
    assert!(!marker.exists(), "the first step ran");
    for step in &t2.steps {
        assert!(
            matches!(step.status.as_str(), "WAITING" | "SKIPPED")
                && step.start_date.is_none()
                && step.exit_code.is_none(),
            "step {} says it ran: {:?}",
            step.index,
            t2.steps
        );
    }
    let mut conn = setup.cluster.db.connect().await;
    let lines = execution::list_log_lines(&mut conn, TaskKey(key(2)), 100, 0)
        .await
        .unwrap();
    assert!(
        !lines
            .iter()
            .any(|l| l.text.starts_with("step `") && l.text.ends_with("` started")),
        "a step is logged as started: {lines:?}"
    );
    let history = tasks::list_state_changes(&mut conn, TaskKey(key(2)))
        .await
        .unwrap();
    let ends: Vec<_> = history.iter().filter(|c| c.status.is_terminal()).collect();
    assert_eq!(ends.len(), 1, "{history:?}");
    assert_eq!(ends[0].status, TaskStatus::Canceled, "{history:?}");
    assert_eq!(ends[0].attempt, Some(models::Attempt(1)), "{history:?}");
    drop(conn);
    let plan = setup
        .cluster
        .wait_for_plan(PlanKey(key(730)), WAIT, "ended", |p| p.status.is_terminal())
        .await;
    assert_eq!(plan.status, PlanStatus::Canceled);
    // Nothing is left behind: the attempt ended (it reported), and its workspace is gone. It
    // is finished while the report is on its way, so it may outlive the report by a moment.
    let prefix = format!("{}-", TaskKey(key(2)));
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Vec<_> = std::fs::read_dir(setup.dir.path().join("work-w1"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "workspaces left: {left:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!marker.exists(), "the first step ran late");
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_does_not_hoard_tasks_an_idle_worker_could_run() {
    let setup = Setup::new(chrono::Duration::seconds(10), &[sleeper(741, false, None)]).await;
    let pidfile = |n: u128| setup.dir.path().join(format!("pid-{n}"));
    let one = |n: u128| {
        task(
            n,
            741,
            &[],
            &[],
            serde_json::json!({"pidfile": pidfile(n).display().to_string()}),
        )
    };
    let single = |id: &str| {
        let mut config = setup.config(id);
        config.executor_limit = 1;
        let store = LocalStore::new(setup.artifacts()).unwrap();
        spawn_worker(config, Arc::new(store))
    };
    let (stop_busy, busy) = single("busy");
    setup.submit(&plan(740, vec![one(1), one(2)])).await;
    // The busy worker runs one of the two, whichever the queue gave it first.
    let deadline = Instant::now() + WAIT;
    let (first, second) = loop {
        if pidfile(1).exists() {
            break (1, 2);
        }
        if pidfile(2).exists() {
            break (2, 1);
        }
        assert!(Instant::now() < deadline, "no task started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first_pid = wait_for_pid(&pidfile(first)).await;
    let running = setup.task(first).await;
    assert_eq!(running.status, TaskStatus::Doing);
    assert_eq!(running.worker_id.as_ref().map(|w| w.as_str()), Some("busy"));
    // Time enough for RabbitMQ to deliver the other task to the busy worker, were it
    // consuming beyond its free slots.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued = setup.task(second).await;
    assert_eq!(queued.status, TaskStatus::Todo, "one slot, one task");
    assert!(!pidfile(second).exists());

    // An idle worker arrives: it gets the other task while the busy one still runs the first.
    let (stop_idle, idle) = single("idle");
    let taken = setup
        .wait_for_task(second, "DOING on the idle worker", |t| {
            t.status == TaskStatus::Doing
                && t.worker_id.as_ref().map(|w| w.as_str()) == Some("idle")
        })
        .await;
    assert_eq!(taken.attempt_count, 1);
    let second_pid = wait_for_pid(&pidfile(second)).await;
    let still = setup.task(first).await;
    assert_eq!(still.status, TaskStatus::Doing);
    assert_eq!(still.worker_id.as_ref().map(|w| w.as_str()), Some("busy"));
    assert_eq!(still.attempt_count, 1);

    setup
        .cancel(&CancelRequest::Plan {
            compute_plan_key: PlanKey(key(740)),
            reason: "end of test".into(),
        })
        .await;
    for n in [first, second] {
        setup
            .wait_for_task(n, "CANCELED", |t| t.status == TaskStatus::Canceled)
            .await;
    }
    assert_group_gone(first_pid).await;
    assert_group_gone(second_pid).await;
    stop_busy.cancel();
    stop_idle.cancel();
    busy.await.unwrap().unwrap();
    idle.await.unwrap().unwrap();
}

/// Needs a process of its own for its global subscriber (nextest runs each test in one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_workers_round_of_consumption_goes_on_as_its_attempts_end() {
    let captured = Captured::install("warn,worker::agent=debug");
    let setup = Setup::new(
        chrono::Duration::seconds(10),
        &[function(
            751,
            "nap",
            &[&["sleep", "0.2"]],
            Vec::new(),
            Vec::new(),
        )],
    )
    .await;
    let (stop, worker) = setup.start_worker("w1");
    let tasks: Vec<NewTask> = (1..=12)
        .map(|n| task(n, 751, &[], &[], serde_json::json!({})))
        .collect();
    setup.submit(&plan(750, tasks)).await;
    let plan = setup
        .cluster
        .wait_for_plan(PlanKey(key(750)), WAIT, "DONE", |p| p.status.is_terminal())
        .await;
    assert_eq!(plan.status, PlanStatus::Done);
    for n in 1..=12 {
        assert_eq!(setup.task(n).await.attempt_count, 1, "t{n} ran once");
    }
    stop.cancel();
    worker.await.unwrap().unwrap();

    // Each ack of an ended attempt made room for the next delivery in the same round, so a
    // round took more deliveries than the worker has slots (2): a round whose acks waited for
    // its end could take at most its prefetch, the free slots.
    let logs = captured.text();
    let taken: Vec<usize> = logs
        .lines()
        .filter_map(|line| line.split("ended after ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect();
    assert!(!taken.is_empty(), "no round ended:\n{logs}");
    let most = taken.iter().copied().max().unwrap_or_default();
    assert!(
        most > 2,
        "every round took at most 2 deliveries ({taken:?}):\n{logs}"
    );
}
