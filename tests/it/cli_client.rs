//! The `baton` client commands end to end, against `baton dev` (a dispatcher, its HTTP API and
//! real local workers running subprocess steps) run in-process on the test's own database and
//! RabbitMQ vhost: a YAML plan submitted and watched to DONE, its performances as a table, CSV
//! and plots, the other listings, `logs -f` following a running task, and the errors a user
//! meets (a malformed plan file, an unknown key, an unreachable API), including the exit code
//! and cause chain of the real entry point in a child process.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use dispatcher::store::catalog;
use models::function::{ParameterDecl, RetryPolicy, Step};
use models::{
    Function, FunctionKey, FunctionOutput, FunctionStatus, LogLine, Metadata, OutputKind,
    Permission, Permissions, RequirementSet,
};

use crate::support::broker::TestBroker;
use crate::support::db::TestDb;
use crate::support::fixtures::key;

/// The organization `baton dev` acts as in these tests.
const ORGANIZATION: &str = "org-a";

/// How long anything these tests wait for may take.
const WAIT: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Shows the dispatcher's and workers' logs for a failing test.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// `baton dev` running in a thread of this process, with its own database, vhost and
/// directories; stopped on drop.
struct Dev {
    api_url: String,
    /// The token of the administrator `dev` registers for the client commands.
    token: String,
    amqp_url: String,
    _db: TestDb,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    running: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    // Dropped last: the vhost outlives the services using it.
    _broker: TestBroker,
}

impl Dev {
    /// Starts `baton dev` with one worker and waits until it says where its API is; registers
    /// `functions`.
    fn start(functions: &[Function]) -> Dev {
        show_logs();
        let (db, broker) =
            runtime().block_on(async { (TestDb::new().await, TestBroker::new().await) });
        let dir = tempfile::tempdir().unwrap();
        let out = cli::Output::buffer();
        let stop = CancellationToken::new();
        let args: Vec<String> = [
            "dev",
            "--database-url",
            db.url(),
            "--amqp-url",
            &broker.url(),
            "--organization",
            ORGANIZATION,
            "--workers",
            "1",
            "--executor-limit",
            "4",
            "--http-addr",
            "127.0.0.1:0",
            "--artifacts",
            &dir.path().join("artifacts").display().to_string(),
            "--work-dir",
            &dir.path().join("work").display().to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let running = {
            let (out, stop) = (out.clone(), stop.clone());
            std::thread::spawn(move || {
                let cli = cli::Cli::parse_from(std::iter::once("baton".to_owned()).chain(args));
                cli::run_with(cli, &out, &stop)
            })
        };
        let deadline = Instant::now() + WAIT;
        let api_url = loop {
            let said = out.captured();
            if let Some(url) = said
                .lines()
                .find_map(|line| line.strip_prefix("baton dev: the HTTP API is at "))
            {
                break url.trim().to_owned();
            }
            if running.is_finished() {
                panic!("baton dev stopped: {:?}", running.join().unwrap());
            }
            assert!(Instant::now() < deadline, "baton dev did not start: {said}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            out.captured().contains("dev-worker-1"),
            "the worker ids are shown: {}",
            out.captured()
        );
        let token = out
            .captured()
            .lines()
            .find_map(|line| line.split_once("has the token "))
            .and_then(|(_, rest)| rest.split(',').next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("baton dev shows a token: {}", out.captured()));
        runtime().block_on(async {
            let mut conn = db.connect().await;
            for function in functions {
                catalog::insert_function(&mut conn, function).await.unwrap();
            }
        });
        Dev {
            api_url,
            token,
            amqp_url: broker.url(),
            _db: db,
            dir,
            stop,
            running: Some(running),
            _broker: broker,
        }
    }

    /// Runs `baton --api-url <dev> args…`; returns the outcome and what it printed.
    fn baton(&self, args: &[&str]) -> (anyhow::Result<()>, String) {
        run_baton(&self.api_url, &["--token", &self.token], args)
    }

    /// Runs `baton args…`, which must succeed; returns what it printed.
    fn ok(&self, args: &[&str]) -> String {
        let (outcome, printed) = self.baton(args);
        if let Err(error) = outcome {
            panic!("baton {args:?} failed: {error:#}\n{printed}");
        }
        printed
    }

    /// Writes `text` to `name` in the test's directory; returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(running) = self.running.take() {
            let outcome = running.join();
            if !std::thread::panicking() {
                outcome.unwrap().unwrap();
            }
        }
    }
}

/// Runs `baton --api-url api_url global… args…` in-process; returns the outcome and what it
/// printed.
fn run_baton(api_url: &str, global: &[&str], args: &[&str]) -> (anyhow::Result<()>, String) {
    let out = cli::Output::buffer();
    let cli = cli::Cli::parse_from(
        ["baton", "--api-url", api_url]
            .into_iter()
            .chain(global.iter().copied())
            .chain(args.iter().copied()),
    );
    let outcome = cli::run_with(cli, &out, &CancellationToken::new());
    (outcome, out.captured())
}

/// A function of one `sh -c script` step given `{parameters.round}` and then `arguments`,
/// with `outputs`.
fn function(n: u128, name: &str, script: &str, arguments: &[&str], outputs: &[&str]) -> Function {
    let now = Utc::now();
    let mut command: Vec<String> = ["sh", "-c", script, "sh", "{parameters.round}"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    command.extend(arguments.iter().map(|argument| (*argument).to_owned()));
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
        inputs: Vec::new(),
        outputs: outputs
            .iter()
            .map(|identifier| FunctionOutput {
                identifier: (*identifier).into(),
                kind: OutputKind::Performance,
                multiple: false,
            })
            .collect(),
        steps: vec![Step {
            timeout_secs: None,
            name: name.to_owned(),
            command,
        }],
        build_steps: Vec::new(),
        parameters: vec![ParameterDecl {
            key: "round".into(),
            description: "the round, from 0".into(),
            default: None,
        }],
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

/// `score` reports 0.5, 0.6, 0.7 for rounds 0, 1, 2; `loss` reports 1.9, 1.8, 1.7.
fn metrics() -> [Function; 2] {
    [
        function(
            1,
            "score",
            r#"echo "scoring round $1"; echo "0.$((5 + $1))" > "$2""#,
            &["{outputs.score}"],
            &["score"],
        ),
        function(
            2,
            "loss",
            r#"echo "1.$((9 - $1))" > "$2""#,
            &["{outputs.loss}"],
            &["loss"],
        ),
    ]
}

/// A plan of one task per metric and round (0 to 2), in YAML as a user writes it.
fn metrics_plan_yaml(plan: u128) -> String {
    let mut yaml = format!(
        "# Three rounds of two metrics.\n\
         key: {}\n\
         name: metrics over rounds\n\
         tag: cli-test\n\
         tasks:\n",
        key(plan)
    );
    for round in 0..3u128 {
        for (function, output) in [(1u128, "score"), (2, "loss")] {
            yaml.push_str(&format!(
                "  - key: {task}\n    \
                     name: {output} r{round}\n    \
                     function_key: {function_key}\n    \
                     worker: {ORGANIZATION}\n    \
                     parameters: {{round: {round}}}\n    \
                     metadata: {{round_idx: \"{round}\"}}\n    \
                     outputs:\n      \
                       {output}:\n        \
                         permissions:\n          \
                           process: {{public: true, authorized_ids: [{ORGANIZATION}]}}\n",
                task = key(plan + 10 + round * 2 + function),
                function_key = key(function),
            ));
        }
    }
    yaml
}

#[test]
fn a_yaml_plan_is_submitted_watched_to_done_and_its_performances_shown_and_plotted() {
    let dev = Dev::start(&metrics());
    let plan = key(100).to_string();
    let file = dev.file("plan.yaml", &metrics_plan_yaml(100));

    let submitted = dev.ok(&["submit", &file, "--idempotency-key", "cli-test-1"]);
    assert!(submitted.contains(&plan), "{submitted}");
    assert!(submitted.contains("6 tasks"), "{submitted}");
    // The same key again gets the first answer and stores nothing twice.
    dev.ok(&["submit", &file, "--idempotency-key", "cli-test-1"]);

    let watched = dev.ok(&["plans", "watch", &plan, "--interval-ms", "100"]);
    assert!(watched.contains("DONE"), "{watched}");
    assert!(watched.contains("6 done"), "{watched}");
    let plan_json: serde_json::Value =
        serde_json::from_str(&dev.ok(&["plans", "watch", &plan, "--output", "json"])).unwrap();
    assert_eq!(plan_json["status"], "DONE");
    assert_eq!(plan_json["counters"]["done_count"], 6);

    // The table names tasks and metrics.
    let table = dev.ok(&["perf", &plan]);
    for text in [
        "score r0", "loss r2", "score", "loss", "0.5", "0.6", "0.7", "1.9", "1.7",
    ] {
        assert!(table.contains(text), "{text:?} in {table}");
    }

    // CSV: a header, then one row per task.
    let csv = dev.ok(&["perf", &plan, "--csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "compute_plan_key,round_idx,task_rank,task_key,function_name,worker,identifier,performance"
        )
    );
    let rows: BTreeSet<(String, String, String, String)> = lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 8, "{line}");
            assert_eq!(fields[0], plan);
            assert_eq!(fields[5], ORGANIZATION);
            (
                fields[1].to_owned(),
                fields[4].to_owned(),
                fields[6].to_owned(),
                fields[7].to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String, String)> = [
        ("0", "score", "0.5"),
        ("1", "score", "0.6"),
        ("2", "score", "0.7"),
        ("0", "loss", "1.9"),
        ("1", "loss", "1.8"),
        ("2", "loss", "1.7"),
    ]
    .into_iter()
    .map(|(round, metric, value)| {
        (
            round.to_owned(),
            metric.to_owned(),
            metric.to_owned(),
            value.to_owned(),
        )
    })
    .collect();
    assert_eq!(rows, expected);

    // Plots, drawn with the bundled font.
    let png = dev.dir.path().join("perf.png");
    let said = dev.ok(&["perf", &plan, "--plot", &png.display().to_string()]);
    assert!(said.contains("plot written to"), "{said}");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    assert!(
        bytes.len() > 5 * 1024,
        "a non-trivial PNG: {} bytes",
        bytes.len()
    );
    let svg = dev.dir.path().join("perf.svg");
    dev.ok(&["perf", &plan, "--plot", &svg.display().to_string()]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
    for label in [
        "metrics over rounds",
        "round",
        "performance",
        "score @ org-a",
        "loss @ org-a",
    ] {
        assert!(text.contains(label), "{label:?} in the SVG");
    }
    let (refused, _) = dev.baton(&["perf", &plan, "--plot", "perf.jpg"]);
    assert_eq!(
        refused.unwrap_err().to_string(),
        "--plot perf.jpg: the file name must end in .png or .svg"
    );

    // JSON is the API's columnar document.
    let columns: serde_json::Value =
        serde_json::from_str(&dev.ok(&["perf", &plan, "--output", "json"])).unwrap();
    assert_eq!(columns["performance"].as_array().unwrap().len(), 6);

    // The listings.
    let shown = dev.ok(&["plans", "show", &plan]);
    for text in [
        "score r1",
        "loss r0",
        "score",
        "DONE",
        "dev-worker-1",
        "baton.tasks.any",
    ] {
        assert!(shown.contains(text), "{text:?} in {shown}");
    }
    let listed = dev.ok(&["plans", "ls", "--tag", "cli-test", "--status", "DONE"]);
    assert!(listed.contains(&plan), "{listed}");
    let none = dev.ok(&["plans", "ls", "--tag", "another"]);
    assert!(!none.contains(&plan), "{none}");
    let page: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "tasks",
        "ls",
        "--plan",
        &plan,
        "--page-size",
        "4",
        "--output",
        "json",
    ]))
    .unwrap();
    assert_eq!(page["count"], 6);
    assert_eq!(page["results"].as_array().unwrap().len(), 4);
    let task = key(100 + 10 + 1).to_string();
    let task_shown = dev.ok(&["tasks", "show", &task]);
    for text in ["score r0", "DONE", "DOING", "TODO", "dev-worker-1"] {
        assert!(task_shown.contains(text), "{text:?} in {task_shown}");
    }
    let logs = dev.ok(&["logs", &task]);
    assert!(logs.contains("scoring round 0"), "{logs}");
    let workers = dev.ok(&["workers", "ls"]);
    assert!(workers.contains("dev-worker-1"), "{workers}");
    assert!(workers.contains(ORGANIZATION), "{workers}");
    let devices: serde_json::Value =
        serde_json::from_str(&dev.ok(&["devices", "ls", "--output", "json"])).unwrap();
    assert!(devices["count"].is_u64(), "{devices}");

    // Canceling what ended is refused, with the dispatcher's reason.
    let (refused, _) = dev.baton(&["cancel", &plan]);
    let message = format!("{:#}", refused.unwrap_err());
    assert!(message.contains("409 refused"), "{message}");
}

#[test]
fn logs_follow_a_running_task_and_end_with_it() {
    let talk = function(
        3,
        "talk",
        r#"for i in 1 2 3 4 5 6 7 8 9 10; do echo "line $i of round $1"; sleep 0.25; done"#,
        &[],
        &[],
    );
    let dev = Dev::start(&[talk]);
    let task = key(201).to_string();
    let plan = serde_json::json!({
        "key": key(200),
        "name": "talking",
        "tasks": [{
            "key": key(201),
            "function_key": key(3),
            "worker": ORGANIZATION,
            "parameters": {"round": 4},
        }],
    });
    let file = dev.file("plan.json", &plan.to_string());

    // Followers started before the task exists in storage would get a 404: submit first, then
    // follow at once, while the task waits for or runs on the worker.
    dev.ok(&["submit", &file]);
    let follow_through = |format: &'static str, amqp_url: String| {
        let (api_url, token, task) = (dev.api_url.clone(), dev.token.clone(), task.clone());
        std::thread::spawn(move || {
            run_baton(
                &api_url,
                &["--token", &token],
                &[
                    "logs",
                    "-f",
                    &task,
                    "--amqp-url",
                    &amqp_url,
                    "--interval-ms",
                    "100",
                    "--output",
                    format,
                ],
            )
        })
    };
    let follow = |format: &'static str| follow_through(format, dev.amqp_url.clone());
    let as_json = follow("json");
    let as_table = follow("table");
    // One that cannot reach RabbitMQ follows through the API alone.
    let polling = follow_through("json", "amqp://guest:guest@127.0.0.1:1/%2f".to_owned());
    // A third follower joins once part of the log is stored: it gets the stored part, then
    // the rest live.
    let deadline = Instant::now() + WAIT;
    loop {
        let stored = dev.ok(&["logs", &task]);
        if stored.contains("line 3 of round 4") {
            assert!(
                !stored.contains("line 10 of round 4"),
                "joined too late: {stored}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the task's log was never stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    let joining = follow("json");
    let deadline = Instant::now() + WAIT;
    while !(as_json.is_finished()
        && as_table.is_finished()
        && joining.is_finished()
        && polling.is_finished())
    {
        assert!(
            Instant::now() < deadline,
            "logs -f did not end with the task"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let expected: Vec<String> = (1..=10).map(|i| format!("line {i} of round 4")).collect();
    let mut documents = Vec::new();
    for follower in [as_json, joining, polling] {
        let (outcome, printed) = follower.join().unwrap();
        outcome.unwrap();
        let lines: Vec<LogLine> = printed
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let said: Vec<&str> = lines
            .iter()
            .filter(|line| line.stream == models::LogStream::Stdout)
            .map(|line| line.text.as_str())
            .collect();
        assert_eq!(said, expected, "every line once, in order");
        let identities: BTreeSet<(u32, u64)> = lines
            .iter()
            .map(|line| (line.attempt.0, line.seq))
            .collect();
        assert_eq!(identities.len(), lines.len(), "no line twice: {printed}");
        documents.push(lines);
    }
    assert_eq!(
        documents[0], documents[1],
        "both followers printed the same lines"
    );
    assert_eq!(
        documents[0], documents[2],
        "following through the API alone printed the same lines"
    );
    let lines = &documents[0];

    let (outcome, printed) = as_table.join().unwrap();
    outcome.unwrap();
    for (index, text) in expected.iter().enumerate() {
        assert_eq!(
            printed.matches(text.as_str()).count(),
            1,
            "{text:?} once in {printed}"
        );
        if index > 0 {
            let before = printed.find(expected[index - 1].as_str()).unwrap();
            assert!(
                before < printed.find(text.as_str()).unwrap(),
                "in order: {printed}"
            );
        }
    }
    assert!(printed.contains("── attempt 1 ──"), "{printed}");

    // The task ended DONE when the followers stopped.
    let shown: serde_json::Value =
        serde_json::from_str(&dev.ok(&["tasks", "show", &task, "--output", "json"])).unwrap();
    assert_eq!(shown["task"]["status"], "DONE");

    // Following a task that ended prints its stored log and returns.
    let (outcome, again) = dev.baton(&[
        "logs",
        "-f",
        &task,
        "--amqp-url",
        &dev.amqp_url,
        "--output",
        "json",
    ]);
    outcome.unwrap();
    assert_eq!(again, printed_json_of(lines));
}

/// The JSON lines `baton logs --output json` prints for `lines`.
fn printed_json_of(lines: &[LogLine]) -> String {
    lines
        .iter()
        .map(|line| format!("{}\n", serde_json::to_string(line).unwrap()))
        .collect()
}

#[test]
fn bad_plan_files_and_unknown_keys_are_clear_errors_and_store_nothing() {
    let dev = Dev::start(&metrics());

    // A mistake in the file: named with its path, nothing sent.
    let yaml = metrics_plan_yaml(300).replacen(
        &format!("function_key: {}", key(2)),
        "function_key: not-a-key",
        1,
    );
    let file = dev.file("broken.yaml", &yaml);
    let (outcome, _) = dev.baton(&["submit", &file]);
    let message = format!("{:#}", outcome.unwrap_err());
    assert!(
        message.contains(&format!(
            "{file} is not a valid plan: at tasks[1].function_key: "
        )),
        "{message}"
    );

    // A plan the dispatcher refuses: every problem, with its path.
    let unknown_function = metrics_plan_yaml(301).replace(&key(2).to_string(), &key(9).to_string());
    let file = dev.file("refused.yml", &unknown_function);
    let (outcome, _) = dev.baton(&["submit", &file]);
    let message = format!("{:#}", outcome.unwrap_err());
    assert!(message.contains("submitting"), "{message}");
    assert!(
        message.contains("POST /api/v1/compute_plans answered 422 invalid_submission"),
        "{message}"
    );
    assert!(message.contains("tasks[1].function_key"), "{message}");

    // Nothing was stored.
    let listed: serde_json::Value =
        serde_json::from_str(&dev.ok(&["plans", "ls", "--output", "json"])).unwrap();
    assert_eq!(listed["count"], 0, "{listed}");

    // Unknown keys: the API's 404, with what it did not find.
    let unknown = key(999).to_string();
    let (outcome, _) = dev.baton(&["plans", "show", &unknown]);
    let message = format!("{:#}", outcome.unwrap_err());
    assert!(
        message.contains(&format!(
            "GET /api/v1/compute_plans/{unknown} answered 404 not_found"
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("key: compute plan {unknown} does not exist")),
        "{message}"
    );
    let (outcome, _) = dev.baton(&["cancel", &unknown]);
    let message = format!("{:#}", outcome.unwrap_err());
    assert!(
        message.contains(&format!(
            "no compute plan and no task has the key {unknown}"
        )),
        "{message}"
    );
    let (outcome, _) = dev.baton(&["logs", &unknown]);
    assert!(format!("{:#}", outcome.unwrap_err()).contains("404 not_found"));

    // Without the token, the API's refusal says why.
    let (outcome, _) = run_baton(&dev.api_url, &[], &["plans", "ls"]);
    let message = format!("{:#}", outcome.unwrap_err());
    assert!(
        message.contains("GET /api/v1/compute_plans answered 401"),
        "{message}"
    );

    // The real entry point prints the cause chain on stderr and exits non-zero.
    let broken = dev.dir.path().join("broken.yaml").display().to_string();
    let child = baton_process(&[
        "--api-url",
        &dev.api_url,
        "--token",
        &dev.token,
        "submit",
        &broken,
    ]);
    assert_eq!(child.status.code(), Some(1), "{child:?}");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(
        stderr.contains(&format!("error: {broken} is not a valid plan")),
        "{stderr}"
    );
    let child = baton_process(&[
        "--api-url",
        &dev.api_url,
        "--token",
        &dev.token,
        "tasks",
        "show",
        &unknown,
    ]);
    assert_eq!(child.status.code(), Some(1), "{child:?}");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(stderr.contains("404 not_found"), "{stderr}");
    assert!(
        stderr.contains(&format!("task {unknown} does not exist")),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_api_is_named_in_the_error() {
    let (outcome, _) = run_baton("http://127.0.0.1:1", &[], &["plans", "ls"]);
    let error = outcome.unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot reach the baton API at http://127.0.0.1:1/ (GET /api/v1/compute_plans; set \
         --api-url or BATON_API_URL)"
    );
    assert!(error.chain().count() > 1, "the cause follows: {error:#}");
    let (outcome, _) = run_baton("https://baton.example", &[], &["plans", "ls"]);
    assert!(
        outcome
            .unwrap_err()
            .to_string()
            .contains("this baton speaks plain HTTP only"),
    );
    let (outcome, _) = run_baton("ftp://somewhere", &[], &["plans", "ls"]);
    assert!(
        outcome
            .unwrap_err()
            .to_string()
            .contains("expected an http:// URL"),
    );
}

/// The environment variable that makes [`baton_child_process`] run `baton` with the
/// arguments it holds (a JSON array).
const CHILD_ARGS: &str = "BATON_TEST_CLI_ARGS";

/// Runs `baton args…` through `cli::main_from` in a child process (this test binary running
/// [`baton_child_process`]); returns its exit status and output.
fn baton_process(args: &[&str]) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cli_client::baton_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ARGS, serde_json::to_string(args).unwrap())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Not a test: the body of the `baton` process that [`baton_process`] starts.
#[test]
#[ignore = "runs only as a child process of another test"]
fn baton_child_process() {
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).unwrap();
    let code = cli::main_from(std::iter::once("baton".to_owned()).chain(args));
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    });
}

#[test]
fn the_example_plan_file_in_the_readme_is_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("```yaml\n# plan.yaml")
        .expect("the README shows a plan file");
    let body = &readme[start + "```yaml\n".len()..];
    let yaml = &body[..body.find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, yaml).unwrap();
    // Parsed before anything is sent: an unreachable API proves the file was read whole.
    let (outcome, _) = run_baton(
        "http://127.0.0.1:1",
        &[],
        &["submit", &file.display().to_string()],
    );
    let message = outcome.unwrap_err().to_string();
    assert!(message.starts_with("submitting "), "{message}");
}

#[test]
fn users_and_tokens_are_managed_from_the_command_line() {
    let dev = Dev::start(&[]);
    let made = dev.ok(&[
        "users",
        "create",
        "carol",
        "--organization",
        ORGANIZATION,
        "--role",
        "producer",
        "--display-name",
        "Carol",
    ]);
    assert!(
        made.contains("carol") && made.contains("producer"),
        "{made}"
    );

    let issued: serde_json::Value = serde_json::from_str(&dev.ok(&[
        "--output",
        "json",
        "tokens",
        "create",
        "--user",
        "carol",
        "--description",
        "laptop",
    ]))
    .unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();
    let id = issued["info"]["identifier"].as_str().unwrap().to_owned();
    assert!(token.starts_with("baton_"));

    let as_carol = |args: &[&str]| run_baton(&dev.api_url, &["--token", &token], args);
    let (shown, printed) = as_carol(&["users", "show"]);
    shown.unwrap();
    assert!(printed.contains("carol"), "{printed}");
    let (listed, _) = as_carol(&["plans", "ls"]);
    listed.expect("a producer lists its organization's plans");
    let (refused, _) = as_carol(&["workers", "ls"]);
    let refused = format!("{:#}", refused.unwrap_err());
    assert!(
        refused.contains("403") && refused.contains("forbidden"),
        "{refused}"
    );

    // Listed without its secret, then revoked: it no longer authenticates.
    let listed = dev.ok(&["tokens", "ls", "--user", "carol"]);
    assert!(
        listed.contains(&id) && listed.contains("laptop"),
        "{listed}"
    );
    assert!(
        !listed.contains(&token),
        "a listing shows no secret: {listed}"
    );
    let revoked = dev.ok(&["tokens", "revoke", "--user", "carol", &id]);
    assert!(revoked.contains(&id), "{revoked}");
    let (after, _) = as_carol(&["users", "show"]);
    let after = format!("{:#}", after.unwrap_err());
    assert!(
        after.contains("401") && after.contains("invalid credentials"),
        "{after}"
    );

    // Roles change; a disabled user is anonymous.
    let updated = dev.ok(&["users", "update", "carol", "--role", "viewer", "--disable"]);
    assert!(
        updated.contains("viewer") && updated.contains("no"),
        "{updated}"
    );
    let users = dev.ok(&["users", "ls"]);
    assert!(users.contains("carol") && users.contains("dev"), "{users}");
}
