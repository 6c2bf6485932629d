//! The `baton` command end to end: `migrate`, `demo` (with its in-process dispatcher and real
//! workers, on the test's own database and RabbitMQ vhost), `status` and `bench ceiling`.

use std::collections::HashMap;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use dispatcher::store::{execution, plans, stats, tasks};
use models::{PlanStatus, TaskStatus};

use crate::support::broker::{TestBroker, amqp_base, api_base, delete_blocking};
use crate::support::db::TestDb;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn baton(args: &[&str]) -> anyhow::Result<()> {
    cli::run(cli::Cli::parse_from(
        std::iter::once("baton").chain(args.iter().copied()),
    ))
}

/// Shows the demo's logs (its dispatcher's and workers' too) for a failing test.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

#[test]
fn demo_runs_the_federated_plan_end_to_end_with_real_workers() {
    show_logs();
    let runtime = runtime();
    let (db, broker) = runtime.block_on(async { (TestDb::empty().await, TestBroker::new().await) });
    let url = db.url().to_owned();
    let amqp_url = broker.url();
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().display().to_string();
    let demo = |format: &str| {
        baton(&[
            "demo",
            "--database-url",
            &url,
            "--amqp-url",
            &amqp_url,
            "--demo-dir",
            &demo_dir,
            "--output",
            format,
        ])
    };

    baton(&["migrate", "--database-url", &url]).unwrap();
    demo("json").unwrap();
    // A second demo reuses the registered federation, and its workers register again under
    // the same identifiers.
    demo("table").unwrap();
    baton(&["status", "--database-url", &url]).unwrap();

    runtime.block_on(async {
        let mut conn = db.connect().await;
        let counts: HashMap<String, i64> = stats::row_counts(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(counts["organizations"], 2, "{counts:?}");
        assert_eq!(counts["users"], 2, "demo and guest, the workers' owner");
        assert_eq!(counts["functions"], 3);
        assert_eq!(counts["datasets"], 2);
        assert_eq!(counts["data_samples"], 4);
        assert_eq!(counts["workers"], 2);
        assert_eq!(counts["compute_plans"], 2);
        assert_eq!(counts["tasks"], 24);
        assert_eq!(counts["outbox"], 0, "every ready task was published");

        let listed = plans::list_plans(&mut conn, None, 10, 0).await.unwrap();
        assert_eq!(listed.len(), 2);
        for plan in &listed {
            assert_eq!(plan.status, PlanStatus::Done, "{plan:?}");
            assert_eq!(plan.counters.task_count, 12);
            assert_eq!(plan.counters.done_count, 12);

            let stored = tasks::list_plan_tasks(&mut conn, plan.key, None)
                .await
                .unwrap();
            assert_eq!(stored.len(), 12);
            assert_eq!(
                stored.iter().map(|t| t.rank).max(),
                Some(6),
                "three rounds of train → aggregate → next train"
            );
            for task in &stored {
                let name = task.name.clone().unwrap_or_default();
                assert_eq!(task.status, TaskStatus::Done, "{name}: {task:?}");
                // Each task ran on the worker of the hospital it requires.
                let hospital = if name.contains("hospital-b") {
                    "hospital-b"
                } else {
                    "hospital-a"
                };
                assert_eq!(
                    task.worker_id.as_ref().map(|w| w.to_string()),
                    Some(format!("{hospital}-worker")),
                    "{name}"
                );
                if name.starts_with("train") || name.starts_with("aggregate") {
                    let stored_models = execution::list_task_models(&mut conn, task.key)
                        .await
                        .unwrap();
                    assert_eq!(stored_models.len(), 1, "{name} stored its model");
                    let file = stored_models[0].address.clone().unwrap();
                    let path = dir.path().join("artifacts").join(&file.storage_address);
                    assert!(path.is_file(), "{name}: {}", path.display());
                }
                if name.starts_with("train") {
                    let losses = execution::list_measurements(&mut conn, task.key, Some("loss"))
                        .await
                        .unwrap();
                    assert_eq!(losses.len(), 3, "{name} reported its loss curve");
                }
            }

            // The last aggregate holds what every training of every round wrote.
            let last = stored
                .iter()
                .find(|t| t.name.as_deref() == Some("aggregate r2"))
                .unwrap();
            let stored_models = execution::list_task_models(&mut conn, last.key)
                .await
                .unwrap();
            let file = stored_models[0].address.clone().unwrap();
            let model =
                std::fs::read_to_string(dir.path().join("artifacts").join(&file.storage_address))
                    .unwrap();
            for round in 0..3 {
                for hospital in ["hospital-a", "hospital-b"] {
                    let line = format!("{hospital} trained round {round} on 2 samples");
                    assert!(model.contains(&line), "{line:?} in {model}");
                }
            }

            let performances = plans::performance_table(&mut conn, plan.key).await.unwrap();
            let values: Vec<(i64, f64)> = performances
                .iter()
                .map(|row| (row.round_idx, row.performance))
                .collect();
            assert_eq!(values.len(), 3, "{values:?}");
            assert_eq!(
                values.iter().map(|(round, _)| *round).collect::<Vec<_>>(),
                [0, 1, 2]
            );
            assert!(
                values.windows(2).all(|pair| pair[0].1 < pair[1].1),
                "the accuracy grows with each round: {values:?}"
            );
            assert!((values[0].1 - 0.62).abs() < 1e-9, "{values:?}");
        }
    });
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let error = baton(&[
        "migrate",
        "--database-url",
        "postgres://baton:secret@127.0.0.1:1/baton",
    ])
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("migrating the database at postgres://baton:***@127.0.0.1:1/baton"),
        "{message}"
    );
    assert!(
        !message.contains("secret"),
        "the password is not shown: {message}"
    );
}

#[test]
fn a_demo_without_rabbitmq_is_a_clear_error() {
    let runtime = runtime();
    let db = runtime.block_on(TestDb::empty());
    let dir = tempfile::tempdir().unwrap();
    let error = baton(&[
        "demo",
        "--database-url",
        db.url(),
        "--amqp-url",
        "amqp://guest:s3cret@127.0.0.1:1/%2f",
        "--demo-dir",
        &dir.path().display().to_string(),
    ])
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("connecting to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f"),
        "{message}"
    );
    assert!(
        !message.contains("s3cret"),
        "the password is not shown: {message}"
    );
}

#[test]
fn migrate_makes_the_first_administrator_once_with_a_private_token_file() {
    use std::os::unix::fs::PermissionsExt;
    let runtime = runtime();
    let db = runtime.block_on(TestDb::empty());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets/admin-token");
    let migrate = || {
        baton(&[
            "migrate",
            "--database-url",
            db.url(),
            "--admin",
            "root",
            "--admin-organization",
            "org-x",
            "--admin-token-file",
            &file.display().to_string(),
        ])
    };
    migrate().unwrap();
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only its owner reads the token file");
    let user = runtime.block_on(async {
        let mut conn = db.connect().await;
        dispatcher::auth::user_of_token(&mut conn, &token, chrono::Utc::now())
            .await
            .expect("the token authenticates")
    });
    assert_eq!(user.identifier.as_str(), "root");
    assert_eq!(user.organization.as_str(), "org-x");
    assert_eq!(user.roles, vec![models::Role::Administrator]);

    // Again: the administrator is kept, and no new token replaces the first.
    migrate().unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    let credentials = runtime.block_on(async {
        let mut conn = db.connect().await;
        dispatcher::store::catalog::list_credentials(&mut conn, &"root".into())
            .await
            .unwrap()
    });
    assert_eq!(credentials.len(), 1);
}

/// A RabbitMQ administrator of one test, deleted on drop: benchmarks make their own vhost
/// through the management API and give its user every permission there, so the vhosts this
/// user may still use afterwards are the ones a benchmark left behind.
struct BenchAdmin {
    name: String,
    password: String,
}

impl BenchAdmin {
    async fn new() -> BenchAdmin {
        let admin = BenchAdmin {
            // At most 32 characters: the DAG benchmarks register the user their worker
            // connects as in baton, whose user identifiers are that long at most.
            name: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        let response = reqwest::Client::new()
            .put(format!("{}/users/{}", api_base(), admin.name))
            .basic_auth("guest", Some("guest"))
            .json(&serde_json::json!({"password": admin.password, "tags": "administrator"}))
            .send()
            .await
            .expect("the RabbitMQ management API answers (.ci/services enables it)");
        assert!(response.status().is_success(), "{}", response.status());
        admin
    }

    /// RabbitMQ as this user, without a vhost.
    fn amqp_url(&self) -> String {
        let base = amqp_base();
        let host = base
            .rsplit_once('@')
            .map_or_else(|| base.trim_start_matches("amqp://"), |(_, host)| host);
        format!("amqp://{}:{}@{host}", self.name, self.password)
    }

    /// The vhosts this user has permissions on.
    async fn vhosts(&self) -> Vec<String> {
        let permissions: Vec<serde_json::Value> = reqwest::Client::new()
            .get(format!("{}/users/{}/permissions", api_base(), self.name))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the management API lists the user's permissions")
            .json()
            .await
            .expect("a JSON list of permissions");
        permissions
            .iter()
            .filter_map(|permission| permission["vhost"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for BenchAdmin {
    fn drop(&mut self) {
        if !delete_blocking(format!("/users/{}", self.name)) {
            eprintln!("warning: could not delete RabbitMQ user {}", self.name);
        }
    }
}

/// Runs `baton --output json bench <args> --runs 1` as `admin`, with the test database server:
/// the JSON lines it printed.
fn run_bench(admin: &BenchAdmin, args: &[&str]) -> Vec<serde_json::Value> {
    run_bench_until(admin, args, &CancellationToken::new()).unwrap()
}

/// [`run_bench`], stopped early if `stop` is cancelled (as SIGINT or SIGTERM cancel it).
fn run_bench_until(
    admin: &BenchAdmin,
    args: &[&str],
    stop: &CancellationToken,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = cli::Output::buffer();
    let amqp_url = admin.amqp_url();
    let api = api_base();
    let database_url = crate::support::db::admin_url();
    let mut argv = vec!["baton", "--output", "json", "bench"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&[
        "--runs",
        "1",
        "--database-url",
        &database_url,
        "--amqp-url",
        &amqp_url,
        "--rabbitmq-api",
        &api,
        "--rabbitmq-api-user",
        &admin.name,
        "--rabbitmq-api-password",
        &admin.password,
    ]);
    cli::run_with(cli::Cli::parse_from(argv), &out, stop)?;
    Ok(out
        .captured()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect())
}

/// A benchmark stopped midway, as SIGINT or SIGTERM stop it, ends in an error and removes what
/// it made: its vhost (and its database and directory, removed by the same clean-up).
#[test]
fn a_stopped_benchmark_ends_in_an_error_and_removes_what_it_made() {
    show_logs();
    let runtime = runtime();
    let admin = runtime.block_on(BenchAdmin::new());
    let stop = CancellationToken::new();
    let ended = std::thread::scope(|scope| {
        let bench = scope.spawn(|| run_bench_until(&admin, &["chain", "--tasks", "9000"], &stop));
        // Stopped once it has made its vhost, a chain far too long to end meanwhile.
        runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
            while admin.vhosts().await.is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the benchmark made no vhost"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        });
        stop.cancel();
        bench.join().unwrap()
    });
    let error = ended.expect_err("a stopped benchmark ends in an error");
    assert!(
        format!("{error:#}").contains("stopped before its end"),
        "{error:#}"
    );
    let left = runtime.block_on(admin.vhosts());
    assert!(left.is_empty(), "the benchmark left its vhost: {left:?}");
}

#[test]
fn bench_ceiling_reports_both_figures_and_deletes_its_vhost() {
    show_logs();
    let runtime = runtime();
    let admin = runtime.block_on(BenchAdmin::new());
    let lines = run_bench(
        &admin,
        &[
            "ceiling",
            "--messages",
            "200",
            "--round-trips",
            "200",
            "--in-flight",
            "16",
        ],
    );
    let figures: HashMap<String, serde_json::Value> = lines
        .into_iter()
        .map(|line| {
            assert_eq!(line["scenario"], "ceiling", "{line}");
            (line["figure"].as_str().unwrap().to_owned(), line)
        })
        .collect();
    assert_eq!(figures.len(), 2, "{figures:?}");
    for figure in ["msgs_per_s", "round_trips_per_s"] {
        let line = &figures[figure];
        assert!(
            line["value"].as_f64().is_some_and(|value| value > 0.0),
            "{line}"
        );
        let runs = line["run_values"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{line}");
        assert!(runs[0].as_f64().is_some_and(|value| value > 0.0), "{line}");
    }
    assert_eq!(figures["msgs_per_s"]["messages"], 200);
    assert_eq!(figures["round_trips_per_s"]["round_trips"], 200);
    assert_eq!(figures["round_trips_per_s"]["in_flight"], 16);

    let left = runtime.block_on(admin.vhosts());
    assert!(left.is_empty(), "the benchmark left its vhost: {left:?}");
}

#[test]
fn bench_chain_reports_its_time_against_the_raw_broker_and_cleans_up() {
    show_logs();
    let runtime = runtime();
    let admin = runtime.block_on(BenchAdmin::new());
    let lines = run_bench(&admin, &["chain", "--tasks", "5"]);
    let [line] = lines.as_slice() else {
        panic!("one figure: {lines:?}");
    };
    assert_eq!(line["scenario"], "chain", "{line}");
    assert_eq!(line["tasks"], 5, "{line}");
    assert_eq!(line["broker_in_flight"], 1, "{line}");
    let positive = |key: &str| line[key].as_f64().is_some_and(|value| value > 0.0);
    for key in ["value", "broker_secs", "broker_ratio"] {
        assert!(positive(key), "{key}: {line}");
    }
    // The ratio is the raw broker's seconds over the run's, for the one run.
    let ratio = line["broker_secs"].as_f64().unwrap() / line["value"].as_f64().unwrap();
    assert!(
        (line["broker_ratio"].as_f64().unwrap() - ratio).abs() < 1e-9,
        "{line}"
    );
    assert_eq!(line["broker_run_values"].as_array().unwrap().len(), 1);

    let left = runtime.block_on(admin.vhosts());
    assert!(left.is_empty(), "the benchmark left its vhost: {left:?}");
}

#[test]
fn bench_latency_reports_the_raw_broker_s_round_trip_beside_its_percentiles() {
    show_logs();
    let runtime = runtime();
    let admin = runtime.block_on(BenchAdmin::new());
    let lines = run_bench(&admin, &["latency", "--tasks", "3"]);
    let figures: Vec<&str> = lines
        .iter()
        .map(|line| line["figure"].as_str().unwrap())
        .collect();
    assert_eq!(
        figures,
        [
            "submit_to_start_p50_ms",
            "submit_to_start_p99_ms",
            "submit_to_done_p50_ms",
            "submit_to_done_p99_ms",
            "broker_round_trip_ms"
        ]
    );
    for line in &lines {
        assert_eq!(line["scenario"], "latency", "{line}");
        assert!(
            line["value"].as_f64().is_some_and(|value| value > 0.0),
            "{line}"
        );
    }

    let left = runtime.block_on(admin.vhosts());
    assert!(left.is_empty(), "the benchmark left its vhost: {left:?}");
}
