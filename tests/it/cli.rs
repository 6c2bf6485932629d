//! The `baton` command end to end: `migrate`, `demo` and `status` on a fresh database.

use clap::Parser;

use dispatcher::store::{plans, stats, tasks};
use models::TaskStatus;

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

#[test]
fn demo_migrates_registers_and_stores_a_federated_plan() {
    let runtime = runtime();
    let db = runtime.block_on(TestDb::empty());
    let url = db.url().to_owned();

    baton(&["migrate", "--database-url", &url]).unwrap();
    baton(&["demo", "--database-url", &url, "--output", "json"]).unwrap();
    // A second demo reuses the registered federation and adds a second plan.
    baton(&["demo", "--database-url", &url]).unwrap();
    baton(&["status", "--database-url", &url]).unwrap();

    runtime.block_on(async {
        let mut conn = db.connect().await;
        let counts: std::collections::HashMap<String, i64> = stats::row_counts(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(counts["organizations"], 2);
        assert_eq!(counts["functions"], 3);
        assert_eq!(counts["data_samples"], 4);
        assert_eq!(counts["compute_plans"], 2);
        assert_eq!(counts["tasks"], 24);
        assert_eq!(counts["task_state_changes"], 24);
        // The two first-round training tasks of each plan are ready.
        assert_eq!(counts["outbox"], 4);

        let listed = plans::list_plans(&mut conn, None, 10, 0).await.unwrap();
        let plan = &listed[0];
        assert_eq!(plan.counters.task_count, 12);
        let stored = tasks::list_plan_tasks(&mut conn, plan.key, None)
            .await
            .unwrap();
        let max_rank = stored.iter().map(|t| t.rank).max();
        assert_eq!(
            max_rank,
            Some(6),
            "three rounds of train → aggregate → next train"
        );
        let ready: Vec<_> = stored
            .iter()
            .filter(|t| t.status == TaskStatus::Todo)
            .map(|t| (t.rank, t.worker.to_string()))
            .collect();
        assert_eq!(ready.len(), 2);
        assert!(ready.iter().all(|(rank, _)| *rank == 0));
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
