//! Every entity through PostgreSQL and back, and the typed errors the store returns when the
//! database refuses data.

use diesel_async::{AsyncPgConnection, RunQueryDsl};

use dispatcher::store::rows::{NewOutboxRow, TaskRow};
use dispatcher::store::{StoreError, catalog, execution, plans, schema, tasks, workers};
use models::{OrganizationId, PlanStatus, TaskKey, TaskStatus, WorkerId};

use crate::support::db::TestDb;
use crate::support::fixtures::{self as fx, key};

/// Stores the common catalog (`fixtures::seed_catalog`) and plan 30.
async fn seed(conn: &mut AsyncPgConnection) {
    fx::seed_catalog(conn).await;
    plans::insert_plan(conn, &fx::plan(30, "org-a", "fl"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn organizations_round_trip_with_is_current_derived() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let org_a = fx::organization("org-a");
    let org_b = fx::organization("örg-b");
    catalog::insert_organization(&mut conn, &org_a)
        .await
        .unwrap();
    catalog::insert_organization(&mut conn, &org_b)
        .await
        .unwrap();

    let current = OrganizationId::from("org-a");
    let found = catalog::find_organization(&mut conn, &"org-a".into(), Some(&current))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found,
        models::Organization {
            is_current: true,
            ..org_a.clone()
        }
    );
    let all = catalog::list_organizations(&conn, Some(&current))
        .await
        .unwrap();
    assert_eq!(
        all,
        vec![
            models::Organization {
                is_current: true,
                ..org_a
            },
            org_b
        ]
    );
    assert_eq!(
        catalog::find_organization(&mut conn, &"nobody".into(), None)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn users_and_credentials_round_trip() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let alice = fx::user("alice", "org-a");
    assert_eq!(
        catalog::find_user(&conn, &"alice".into()).await.unwrap(),
        Some(alice)
    );

    let password = fx::password("alice", 100);
    let token = fx::token("alice", 101);
    catalog::insert_credential(&mut conn, &password)
        .await
        .unwrap();
    catalog::insert_credential(&mut conn, &token).await.unwrap();
    assert_eq!(
        catalog::list_credentials(&mut conn, &"alice".into())
            .await
            .unwrap(),
        vec![password, token]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn projects_functions_and_schedules_round_trip() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    assert_eq!(
        catalog::find_project(&mut conn, &"fl".into())
            .await
            .unwrap(),
        Some(fx::project("fl"))
    );
    let function = fx::function(1, "org-a", "fl");
    assert_eq!(
        catalog::find_function(&mut conn, function.key)
            .await
            .unwrap(),
        Some(function.clone())
    );
    assert_eq!(
        catalog::find_functions(&conn, &[function.key, key(404).into()])
            .await
            .unwrap(),
        vec![function]
    );

    let schedule = fx::schedule("fl", "nightly", 1, None);
    catalog::insert_schedule(&mut conn, &schedule)
        .await
        .unwrap();
    assert_eq!(
        catalog::find_schedule(&mut conn, &"fl".into(), &"nightly".into())
            .await
            .unwrap(),
        Some(schedule)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn datasets_and_samples_link_both_ways() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    // A second dataset that takes an existing sample at registration.
    catalog::insert_dataset(&mut conn, &fx::dataset(23, "org-a", &[22]))
        .await
        .unwrap();

    let dataset = catalog::find_dataset(&mut conn, key(20).into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dataset, fx::dataset(20, "org-a", &[21, 22]));
    let samples = catalog::find_data_samples(&conn, &[key(21).into(), key(22).into()])
        .await
        .unwrap();
    assert_eq!(
        samples,
        vec![
            fx::data_sample(21, "org-a", &[20]),
            fx::data_sample(22, "org-a", &[20, 23])
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_round_trip_update_and_list_by_status() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let mut plan = fx::plan(30, "org-a", "fl");
    assert_eq!(
        plans::find_plan(&conn, plan.key).await.unwrap(),
        Some(plan.clone())
    );

    let mut other = fx::plan(31, "org-a", "fl");
    other.counters = models::PlanCounters::default();
    other.status = PlanStatus::Empty;
    plans::insert_plan(&conn, &other).await.unwrap();

    // The failed-task reference is checked at commit, so the task may come in the same
    // transaction.
    tasks::insert_tasks(&conn, &[fx::failed_task(40, 30, 1)])
        .await
        .unwrap();
    plan.counters.doing_count = 0;
    plan.counters.failed_count = 1;
    plan.failure_date = Some(fx::at(20));
    plan.failed_task_key = Some(key(40).into());
    plan.status = plan
        .counters
        .status(plan.failure_date, plan.cancelation_date);
    plans::update_plan(&conn, &plan).await.unwrap();
    assert_eq!(
        plans::lock_plan(&mut conn, plan.key).await.unwrap(),
        Some(plan.clone())
    );

    let failed = plans::list_plans(&mut conn, Some(PlanStatus::Failed), 10, 0)
        .await
        .unwrap();
    assert_eq!(failed, vec![plan.clone()]);
    let all = plans::list_plans(&mut conn, None, 10, 0).await.unwrap();
    assert_eq!(all.len(), 2);
    let second_page = plans::list_plans(&mut conn, None, 1, 1).await.unwrap();
    assert_eq!(second_page.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_round_trip_with_their_dag() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let root = fx::task(40, 30, 1, None);
    let mut child = fx::task(41, 30, 1, Some(40));
    child.status = TaskStatus::Waiting;
    child.waiting_reason = Some(models::WaitingReason::Parents);
    child.lease = None;
    tasks::insert_tasks(&conn, &[root.clone(), child.clone()])
        .await
        .unwrap();

    assert_eq!(
        tasks::find_task(&mut conn, root.key).await.unwrap(),
        Some(root.clone())
    );
    assert_eq!(
        tasks::find_task(&mut conn, child.key).await.unwrap(),
        Some(child.clone())
    );
    assert_eq!(
        tasks::find_children(&mut conn, root.key).await.unwrap(),
        vec![child.key]
    );
    assert_eq!(
        tasks::find_parents(&mut conn, child.key).await.unwrap(),
        vec![root.key]
    );
    assert_eq!(
        tasks::list_plan_tasks(&mut conn, key(30).into(), Some(TaskStatus::Waiting))
            .await
            .unwrap(),
        vec![child.clone()]
    );
    assert_eq!(
        tasks::list_plan_tasks(&mut conn, key(30).into(), None)
            .await
            .unwrap(),
        vec![root.clone(), child.clone()]
    );

    let mut done = root.clone();
    done.status = TaskStatus::Done;
    done.lease = None;
    done.end_date = Some(fx::at(25));
    done.output = serde_json::json!({"accuracy": 0.93});
    tasks::update_task(&mut conn, &done).await.unwrap();
    assert_eq!(
        tasks::find_task(&mut conn, root.key).await.unwrap(),
        Some(done)
    );
    assert_eq!(
        tasks::find_tasks(&conn, &[child.key, key(404).into()])
            .await
            .unwrap(),
        vec![child]
    );
}

/// The updates of a running task (status, lease, attempt, dates, results) change no indexed
/// column of `tasks`, so PostgreSQL makes them HOT: each new row version stays in its page and
/// no index gets an entry for it (migration `2026-11-25-000000_hot_task_updates`). An index on
/// one of those columns would make every update write it, as all did before.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_tasks_updates_are_hot() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    // One task: its page then has room for both new versions without pruning the old ones,
    // which PostgreSQL may not do while other databases' transactions are open (tests run in
    // parallel).
    let mut todo = fx::task(40, 30, 1, None);
    todo.status = TaskStatus::Todo;
    todo.attempt_count = 0;
    todo.lease = None;
    todo.start_date = None;
    todo.end_date = None;
    tasks::insert_tasks(&conn, std::slice::from_ref(&todo))
        .await
        .unwrap();

    let lease = models::Lease {
        attempt: models::Attempt(1),
        token: uuid::Uuid::from_u128(7),
        expires_at: fx::at(40),
    };
    let output = serde_json::json!({"accuracy": 0.5});
    let update = |status, running: bool| tasks::TaskStateUpdate {
        key: todo.key,
        status,
        waiting_reason: None,
        error_type: None,
        error_message: None,
        cancel_requested: false,
        abort_requested: false,
        attempt_count: 1,
        lease: running.then_some(&lease),
        not_before: None,
        worker_id: None,
        start_date: Some(fx::at(30)),
        end_date: (!running).then(|| fx::at(35)),
        update_date: fx::at(if running { 30 } else { 35 }),
        result: (!running).then_some((&[][..], &output)),
    };
    // As the event applier does: each change in a transaction of its own, whose counts
    // PostgreSQL gives before it commits.
    #[derive(diesel::QueryableByName)]
    struct Updates {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        updated: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        hot: i64,
    }
    for (status, running) in [(TaskStatus::Doing, true), (TaskStatus::Done, false)] {
        execute(&mut conn, "BEGIN").await;
        tasks::update_task_states(&conn, &[update(status, running)])
            .await
            .unwrap();
        let counted: Updates = diesel::sql_query(
            "SELECT n_tup_upd AS updated, n_tup_hot_upd AS hot \
             FROM pg_stat_xact_user_tables WHERE relname = 'tasks'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        execute(&mut conn, "COMMIT").await;
        // Counts not yet flushed to the cumulative statistics include the earlier
        // transaction's: every update so far must be HOT.
        assert!(
            counted.updated >= 1,
            "to {status:?}: {} updated",
            counted.updated
        );
        assert_eq!(
            counted.hot, counted.updated,
            "to {status:?}: HOT of updated"
        );
    }
    let stored = tasks::find_task(&mut conn, todo.key).await.unwrap();
    assert!(
        stored
            .as_ref()
            .is_some_and(|task| task.status == TaskStatus::Done && task.output == output),
        "{stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_changes_and_outbox_keep_their_order() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();

    let history = vec![
        fx::state_change(40, TaskStatus::Todo, 1),
        fx::state_change(40, TaskStatus::Doing, 2),
        fx::state_change(40, TaskStatus::Todo, 3),
    ];
    tasks::insert_state_changes(&conn, &history).await.unwrap();
    assert_eq!(
        tasks::list_state_changes(&mut conn, key(40).into())
            .await
            .unwrap(),
        history
    );

    let rows: Vec<NewOutboxRow> = (0..4)
        .map(|i| NewOutboxRow {
            task_key: key(40),
            routing_key: format!("device=lucidac,n={i}"),
            payload: serde_json::json!({"task_key": key(40), "n": i}),
            created_at: fx::at(4),
            // The last one waits for a retry backoff.
            available_at: (i == 3).then(|| fx::at(50)),
            held: false,
        })
        .collect();
    tasks::insert_outbox_rows(&conn, &rows).await.unwrap();
    let pending = tasks::next_outbox_rows(&mut conn, fx::at(30), 2)
        .await
        .unwrap();
    let keys: Vec<&str> = pending.iter().map(|r| r.routing_key.as_str()).collect();
    assert_eq!(keys, ["device=lucidac,n=0", "device=lucidac,n=1"]);
    assert_eq!(pending[1].payload, rows[1].payload);
    let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
    assert_eq!(tasks::delete_outbox_rows(&mut conn, &ids).await.unwrap(), 2);
    let rest = tasks::next_outbox_rows(&mut conn, fx::at(30), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].routing_key, "device=lucidac,n=2");
    assert_eq!(
        tasks::next_outbox_availability(&mut conn).await.unwrap(),
        Some(fx::at(50))
    );
    let later = tasks::next_outbox_rows(&mut conn, fx::at(50), 10)
        .await
        .unwrap();
    assert_eq!(later.len(), 2);
    assert_eq!(later[1].routing_key, "device=lucidac,n=3");
}

/// Rows stored held wait for their release: polling and the availability do not see them, each
/// queue with held rows is found once (with its oldest held row), a release takes the oldest
/// first, and only held rows are deleted as granted.
#[tokio::test(flavor = "multi_thread")]
async fn rows_stored_held_wait_for_their_release() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(
        &conn,
        &[fx::task(40, 30, 1, None), fx::task(41, 30, 1, None)],
    )
    .await
    .unwrap();
    let row = |n: u32, routing_key: &str, held: bool| NewOutboxRow {
        task_key: key(if n == 0 { 41 } else { 40 }),
        routing_key: routing_key.to_owned(),
        payload: serde_json::json!({ "n": n }),
        created_at: fx::at(4),
        // A hand-over's grace: a held row keeps none.
        available_at: Some(fx::at(9)),
        held,
    };
    let rows = [
        row(0, "q=a", false),
        row(1, "q=a", true),
        row(2, "q=b", true),
        row(3, "q=a", true),
        row(4, "q=b", true),
    ];
    let stored = tasks::insert_outbox_rows(&conn, &rows).await.unwrap();
    let held: Vec<(bool, Option<_>)> = stored.iter().map(|r| (r.held, r.available_at)).collect();
    assert_eq!(
        held,
        [
            (false, Some(fx::at(9))),
            (true, None),
            (true, None),
            (true, None),
            (true, None)
        ]
    );
    let polled = tasks::next_outbox_rows(&mut conn, fx::at(30), 10)
        .await
        .unwrap();
    assert_eq!(polled.len(), 1);
    assert_eq!(polled[0].payload, serde_json::json!({ "n": 0 }));
    assert_eq!(
        tasks::next_outbox_availability(&mut conn).await.unwrap(),
        Some(fx::at(9))
    );
    let queues = tasks::held_outbox_queues(&mut conn).await.unwrap();
    assert_eq!(
        queues,
        [
            ("q=a".to_owned(), serde_json::json!({ "n": 1 })),
            ("q=b".to_owned(), serde_json::json!({ "n": 2 }))
        ]
    );
    let released = tasks::release_outbox_rows(&mut conn, "q=a", 1, fx::at(20))
        .await
        .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].payload, serde_json::json!({ "n": 1 }));
    assert!(!released[0].held);
    assert_eq!(released[0].available_at, Some(fx::at(20)));
    // Task 40's held rows go (n = 2, 3, 4); task 41's row, not held, stays for the relay.
    assert_eq!(
        tasks::delete_held_outbox_rows(&conn, &[key(40).into(), key(41).into()])
            .await
            .unwrap(),
        3
    );
    assert!(
        tasks::held_outbox_queues(&mut conn)
            .await
            .unwrap()
            .is_empty()
    );
    let left = tasks::next_outbox_rows(&mut conn, fx::at(30), 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_writes_are_prepared_once_per_connection_whatever_their_size() {
    #[derive(diesel::QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement: String,
    }
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    for size in [1, 3, 2] {
        let history: Vec<_> = (0..size)
            .map(|n| fx::state_change(40, TaskStatus::Todo, n))
            .collect();
        tasks::insert_state_changes(&conn, &history).await.unwrap();
        let rows: Vec<NewOutboxRow> = (0..size)
            .map(|n| NewOutboxRow {
                task_key: key(40),
                routing_key: format!("n={n}"),
                payload: serde_json::json!({ "n": n }),
                created_at: fx::at(4),
                available_at: None,
                held: false,
            })
            .collect();
        let stored = tasks::insert_outbox_rows(&conn, &rows).await.unwrap();
        let order: Vec<&str> = stored.iter().map(|row| row.routing_key.as_str()).collect();
        let given: Vec<&str> = rows.iter().map(|row| row.routing_key.as_str()).collect();
        assert_eq!(order, given, "ids follow the order given");
    }
    let prepared: Vec<Prepared> =
        diesel::sql_query("SELECT statement FROM pg_prepared_statements ORDER BY statement")
            .load(&mut conn)
            .await
            .unwrap();
    let count = |start: &str| {
        prepared
            .iter()
            .filter(|p| p.statement.starts_with(start))
            .count()
    };
    assert_eq!(count("INSERT INTO task_state_changes"), 1);
    assert_eq!(count("INSERT INTO outbox"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn models_and_performances_round_trip_into_the_performance_table() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let mut first = fx::task(40, 30, 1, None);
    first.rank = 0;
    let second = fx::task(41, 30, 1, Some(40));
    tasks::insert_tasks(&conn, &[first, second]).await.unwrap();

    let model = fx::model(50, 40);
    let mut disabled = fx::model(51, 40);
    disabled.address = None;
    execution::insert_model(&mut conn, &model).await.unwrap();
    execution::insert_model(&mut conn, &disabled).await.unwrap();
    assert_eq!(
        execution::find_model(&mut conn, model.key).await.unwrap(),
        Some(model.clone())
    );
    let mut listed = execution::list_task_models(&mut conn, key(40).into())
        .await
        .unwrap();
    listed.sort_by_key(|m| m.key);
    assert_eq!(listed, vec![model, disabled]);

    execution::insert_performance(&mut conn, &fx::performance(41, 0.75))
        .await
        .unwrap();
    execution::insert_performance(&mut conn, &fx::performance(40, 0.5))
        .await
        .unwrap();
    assert_eq!(
        execution::list_task_performances(&mut conn, key(40).into())
            .await
            .unwrap(),
        vec![fx::performance(40, 0.5)]
    );
    let table = plans::performance_table(&mut conn, key(30).into())
        .await
        .unwrap();
    let summary: Vec<(TaskKey, u32, i64, f64, &str)> = table
        .iter()
        .map(|r| {
            (
                r.task_key,
                r.task_rank,
                r.round_idx,
                r.performance,
                r.function_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (key(40).into(), 0, 1, 0.5, "train — réseau"),
            (key(41).into(), 1, 1, 0.75, "train — réseau"),
        ]
    );
    let columns: models::Performances = table.into_iter().collect();
    assert_eq!(columns.performance, vec![0.5, 0.75]);
    assert_eq!(columns.compute_plan_tag, vec!["🏷 nightly", "🏷 nightly"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_measurements_round_trip() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();

    let lines: Vec<_> = (0..5).map(|seq| fx::log_line(40, seq)).collect();
    execution::insert_log_lines(&conn, &lines).await.unwrap();
    // A redelivered batch stores nothing twice.
    execution::insert_log_lines(&conn, &lines[2..])
        .await
        .unwrap();
    assert_eq!(
        execution::list_log_lines(&mut conn, key(40).into(), 100, 0)
            .await
            .unwrap(),
        lines
    );
    assert_eq!(
        execution::list_log_lines(&mut conn, key(40).into(), 2, 3)
            .await
            .unwrap(),
        lines[3..].to_vec()
    );

    let samples: Vec<_> = (0..4u32)
        .map(|i| fx::measurement(40, if i.is_multiple_of(2) { "x₁" } else { "y" }, i))
        .collect();
    execution::insert_measurements(&conn, &samples)
        .await
        .unwrap();
    assert_eq!(
        execution::list_measurements(&mut conn, key(40).into(), None)
            .await
            .unwrap(),
        samples
    );
    assert_eq!(
        execution::list_measurements(&mut conn, key(40).into(), Some("y"))
            .await
            .unwrap(),
        vec![samples[1].clone(), samples[3].clone()]
    );
    assert_eq!(
        execution::list_channels(&mut conn, key(40).into())
            .await
            .unwrap(),
        vec!["x₁".to_owned(), "y".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_and_devices_round_trip_and_upsert() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let mut worker = fx::worker("worker-1", "alice", "org-a");
    assert_eq!(
        workers::find_worker(&mut conn, &worker.identifier)
            .await
            .unwrap(),
        Some(worker.clone())
    );
    worker.is_active = false;
    worker.version = "0.2.0".into();
    worker.update_date = fx::at(40);
    workers::upsert_worker(&mut conn, &worker).await.unwrap();
    assert_eq!(
        workers::list_workers(&mut conn).await.unwrap(),
        vec![worker.clone()]
    );

    let mut device = fx::device("worker-1", "lucidac-0");
    workers::upsert_devices(
        &mut conn,
        &[device.clone(), fx::device("worker-1", "lucidac-1")],
    )
    .await
    .unwrap();
    device.is_active = false;
    workers::upsert_devices(&mut conn, std::slice::from_ref(&device))
        .await
        .unwrap();
    let devices = workers::list_devices(&mut conn, &WorkerId::from("worker-1"))
        .await
        .unwrap();
    assert_eq!(devices, vec![device, fx::device("worker-1", "lucidac-1")]);

    // A task may name the worker that runs it.
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_status_is_refused_by_the_database() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let mut task = fx::task(40, 30, 1, None);
    task.status = TaskStatus::Todo;
    task.lease = None;
    let mut row = TaskRow::from_model(&task).unwrap();
    row.status = "LOST".into();
    let error: StoreError = diesel::insert_into(schema::tasks::table)
        .values(&row)
        .execute(&mut conn)
        .await
        .unwrap_err()
        .into();
    assert!(
        matches!(&error, StoreError::CheckFailed { constraint: Some(c), .. } if c == "tasks_status_check"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dangling_reference_is_refused_by_the_database() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    // Task 40 of plan 99, which does not exist.
    let error = tasks::insert_tasks(&conn, &[fx::task(40, 99, 1, None)])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::DanglingReference { constraint: Some(c), .. } if c == "tasks_compute_plan_key_fkey"),
        "{error:?}"
    );
    // A parent that does not exist.
    let error = tasks::insert_tasks(&conn, &[fx::task(41, 30, 1, Some(77))])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::DanglingReference { constraint: Some(c), .. } if c == "task_edges_parent_key_fkey"),
        "{error:?}"
    );
}

/// The foreign key constraint `error` names, when it is a dangling reference.
fn dangling_constraint(error: &StoreError) -> Option<&str> {
    match error {
        StoreError::DanglingReference { constraint, .. } => constraint.as_deref(),
        _ => None,
    }
}

/// Rows of `table`.
async fn count_rows(conn: &mut AsyncPgConnection, table: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let found: Count = diesel::sql_query(format!("SELECT count(*) AS count FROM {table}"))
        .get_result(conn)
        .await
        .unwrap();
    found.count
}

/// Runs `statement`, which must succeed.
async fn execute(conn: &mut AsyncPgConnection, statement: &str) {
    diesel::sql_query(statement).execute(conn).await.unwrap();
}

/// Runs `statement`, which the database must refuse; returns the store's error for it.
async fn refused(conn: &mut AsyncPgConnection, statement: &str) -> StoreError {
    let error = diesel::sql_query(statement)
        .execute(conn)
        .await
        .expect_err(statement);
    StoreError::from(error)
}

/// Asserts that `waiting` (`what`) still waits for the lock that `holder`'s open transaction
/// holds, then commits that transaction and returns what `waiting` ended with.
async fn commit_once_waiting<T>(
    waiting: tokio::task::JoinHandle<T>,
    holder: &mut AsyncPgConnection,
    what: &str,
) -> T {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "{what} did not wait for the lock");
    execute(holder, "COMMIT").await;
    waiting.await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_task_reference_is_checked_with_its_foreign_key_error() {
    // The references of tasks, edges and history rows are checked per statement by triggers
    // (migration 2026-11-24-000000), which raise what the foreign keys raised.
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    type Change = fn(&mut models::Task);
    let cases: [(Change, &str); 4] = [
        (
            |t| t.function_key = key(2).into(),
            "tasks_function_key_fkey",
        ),
        (|t| t.owner = "org-z".into(), "tasks_owner_fkey"),
        (|t| t.worker = "org-z".into(), "tasks_worker_fkey"),
        (|t| t.creator = Some("mallory".into()), "tasks_creator_fkey"),
    ];
    for (change, constraint) in cases {
        let mut task = fx::task(40, 30, 1, None);
        change(&mut task);
        // The bad task among good ones: one statement checks them all.
        let batch = [fx::task(41, 30, 1, None), task, fx::task(42, 30, 1, None)];
        let error = tasks::insert_tasks(&conn, &batch).await.unwrap_err();
        assert_eq!(dangling_constraint(&error), Some(constraint), "{error:?}");
        assert!(
            error
                .to_string()
                .contains("insert or update on table \"tasks\" violates foreign key"),
            "{error}"
        );
    }
    assert_eq!(count_rows(&mut conn, "tasks").await, 0);

    // A child that does not exist, and history of an unknown task.
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    let error = refused(
        &mut conn,
        &format!(
            "INSERT INTO task_edges (parent_key, child_key) VALUES ('{}', '{}')",
            key(40),
            key(77)
        ),
    )
    .await;
    assert_eq!(
        dangling_constraint(&error),
        Some("task_edges_child_key_fkey")
    );
    let error = tasks::insert_state_changes(
        &conn,
        &[
            fx::state_change(40, TaskStatus::Todo, 1),
            fx::state_change(77, TaskStatus::Todo, 1),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(
        dangling_constraint(&error),
        Some("task_state_changes_task_key_fkey")
    );
    assert_eq!(count_rows(&mut conn, "task_state_changes").await, 0);
    // Log lines of an unknown task, among good ones (migration 2026-11-26-000000).
    let error = execution::insert_log_lines(&conn, &[fx::log_line(40, 0), fx::log_line(77, 1)])
        .await
        .unwrap_err();
    assert_eq!(dangling_constraint(&error), Some("log_lines_task_key_fkey"));
    assert_eq!(count_rows(&mut conn, "log_lines").await, 0);
    // Tasks written by the same transaction, and tasks another one wrote, together.
    execute(&mut conn, "BEGIN").await;
    tasks::insert_tasks(&conn, &[fx::task(41, 30, 1, None)])
        .await
        .unwrap();
    execution::insert_log_lines(&conn, &[fx::log_line(40, 0), fx::log_line(41, 0)])
        .await
        .unwrap();
    tasks::insert_state_changes(
        &conn,
        &[
            fx::state_change(41, TaskStatus::Todo, 1),
            fx::state_change(40, TaskStatus::Todo, 1),
        ],
    )
    .await
    .unwrap();
    execute(&mut conn, "COMMIT").await;
    assert_eq!(count_rows(&mut conn, "log_lines").await, 2);
    assert_eq!(count_rows(&mut conn, "task_state_changes").await, 2);

    // An update is checked as an insert is.
    let error = refused(
        &mut conn,
        &format!(
            "UPDATE tasks SET worker = 'org-z' WHERE key = '{}'",
            key(40)
        ),
    )
    .await;
    assert_eq!(dangling_constraint(&error), Some("tasks_worker_fkey"));
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_keep_the_foreign_keys_behaviour() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(
        &conn,
        &[fx::task(40, 30, 1, None), fx::task(41, 30, 1, Some(40))],
    )
    .await
    .unwrap();
    tasks::insert_state_changes(&conn, &[fx::state_change(41, TaskStatus::Todo, 1)])
        .await
        .unwrap();
    execution::insert_log_lines(&conn, &[fx::log_line(40, 0), fx::log_line(41, 0)])
        .await
        .unwrap();
    assert_eq!(count_rows(&mut conn, "task_edges").await, 1);

    // A function or organization that tasks use cannot be deleted (NO ACTION). Organization
    // org-c is only a task's worker.
    catalog::insert_organization(&mut conn, &fx::organization("org-c"))
        .await
        .unwrap();
    let mut task = fx::task(43, 30, 1, None);
    task.worker = "org-c".into();
    tasks::insert_tasks(&conn, &[task]).await.unwrap();
    let in_use = [
        ("DELETE FROM functions", "tasks_function_key_fkey"),
        (
            "DELETE FROM organizations WHERE id = 'org-c'",
            "tasks_worker_fkey",
        ),
    ];
    for (statement, constraint) in in_use {
        let error = refused(&mut conn, statement).await;
        assert_eq!(
            dangling_constraint(&error),
            Some(constraint),
            "{statement}: {error:?}"
        );
        assert!(
            error.to_string().contains("update or delete on table"),
            "{error}"
        );
    }
    // Nor can a referenced key change.
    for statement in [
        format!("UPDATE compute_plans SET key = '{}'", key(31)),
        format!(
            "UPDATE tasks SET key = '{}' WHERE key = '{}'",
            key(49),
            key(40)
        ),
    ] {
        let error = refused(&mut conn, &statement).await;
        assert!(
            error.to_string().contains("cannot change"),
            "{statement}: {error}"
        );
    }

    // A deleted user leaves its tasks without creator (SET NULL); credentials and sessions
    // keep their own foreign keys, so the user is a new one without any.
    catalog::insert_user(&mut conn, &fx::user("bob", "org-a"))
        .await
        .unwrap();
    let mut task = fx::task(42, 30, 1, None);
    task.creator = Some("bob".into());
    tasks::insert_tasks(&conn, &[task]).await.unwrap();
    execute(&mut conn, "DELETE FROM users WHERE identifier = 'bob'").await;
    let stored = tasks::find_task(&mut conn, key(42).into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.creator, None);

    // A deleted task takes its edges and history along; a deleted plan its tasks (CASCADE).
    execute(
        &mut conn,
        &format!("DELETE FROM tasks WHERE key = '{}'", key(40)),
    )
    .await;
    assert_eq!(count_rows(&mut conn, "task_edges").await, 0);
    assert_eq!(count_rows(&mut conn, "task_state_changes").await, 1);
    assert_eq!(count_rows(&mut conn, "log_lines").await, 1);
    execute(&mut conn, "DELETE FROM compute_plans").await;
    assert_eq!(count_rows(&mut conn, "tasks").await, 0);
    assert_eq!(count_rows(&mut conn, "task_state_changes").await, 0);
    assert_eq!(count_rows(&mut conn, "log_lines").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_rows_and_models_are_checked_as_their_foreign_keys_did() {
    // Checked per statement by triggers (migration 2026-11-30-000001).
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    catalog::insert_organization(&mut conn, &fx::organization("org-m"))
        .await
        .unwrap();
    let outbox = |task: u128| format!("('{}', 'any', '{{}}', now())", key(task));
    let insert_outbox = |rows: &[u128]| {
        let values: Vec<String> = rows.iter().map(|task| outbox(*task)).collect();
        format!(
            "INSERT INTO outbox (task_key, routing_key, payload, created_at) VALUES {}",
            values.join(", ")
        )
    };
    let model = |n: u128, task: u128, owner: &str| {
        format!(
            "('{}', '{}', 'model', '{{}}', '{owner}', now())",
            key(n),
            key(task)
        )
    };
    let insert_models = |rows: &[String]| {
        format!(
            "INSERT INTO models (key, compute_task_key, output_identifier, permissions, owner, \
             creation_date) VALUES {}",
            rows.join(", ")
        )
    };
    // An unknown task or owner among good rows: the statement is refused whole.
    let error = refused(&mut conn, &insert_outbox(&[40, 77, 40])).await;
    assert_eq!(dangling_constraint(&error), Some("outbox_task_key_fkey"));
    let error = refused(
        &mut conn,
        &insert_models(&[model(60, 40, "org-a"), model(61, 77, "org-a")]),
    )
    .await;
    assert_eq!(
        dangling_constraint(&error),
        Some("models_compute_task_key_fkey")
    );
    let error = refused(
        &mut conn,
        &insert_models(&[model(60, 40, "org-a"), model(61, 40, "org-z")]),
    )
    .await;
    assert_eq!(dangling_constraint(&error), Some("models_owner_fkey"));
    assert!(
        error
            .to_string()
            .contains("insert or update on table \"models\" violates foreign key"),
        "{error}"
    );
    assert_eq!(count_rows(&mut conn, "outbox").await, 0);
    assert_eq!(count_rows(&mut conn, "models").await, 0);

    execute(&mut conn, &insert_outbox(&[40, 40])).await;
    execute(
        &mut conn,
        &insert_models(&[model(60, 40, "org-a"), model(61, 40, "org-m")]),
    )
    .await;
    // The relay's updates pass; a row moved to an unknown task, or a model to an unknown
    // owner, does not.
    execute(&mut conn, "UPDATE outbox SET held = true").await;
    let error = refused(
        &mut conn,
        &format!("UPDATE outbox SET task_key = '{}'", key(77)),
    )
    .await;
    assert_eq!(dangling_constraint(&error), Some("outbox_task_key_fkey"));
    let error = refused(&mut conn, "UPDATE models SET owner = 'org-z'").await;
    assert_eq!(dangling_constraint(&error), Some("models_owner_fkey"));
    // An organization that owns a model stays (NO ACTION)...
    let error = refused(&mut conn, "DELETE FROM organizations WHERE id = 'org-m'").await;
    assert_eq!(dangling_constraint(&error), Some("models_owner_fkey"));
    // ...and a deleted task takes its outbox rows and models along (CASCADE).
    execute(
        &mut conn,
        &format!("DELETE FROM tasks WHERE key = '{}'", key(40)),
    )
    .await;
    assert_eq!(count_rows(&mut conn, "outbox").await, 0);
    assert_eq!(count_rows(&mut conn, "models").await, 0);
    execute(&mut conn, "DELETE FROM organizations WHERE id = 'org-m'").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_being_used_by_an_open_transaction_cannot_be_deleted() {
    // The checks lock what they find, as a foreign key does: a delete waits for the
    // transaction storing tasks, then sees them.
    let db = TestDb::new().await;
    let mut storing = db.connect().await;
    let mut deleting = db.connect().await;
    seed(&mut storing).await;
    execute(&mut storing, "BEGIN").await;
    tasks::insert_tasks(&storing, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    let delete = tokio::spawn(async move { refused(&mut deleting, "DELETE FROM functions").await });
    let error = commit_once_waiting(delete, &mut storing, "the delete").await;
    assert_eq!(dangling_constraint(&error), Some("tasks_function_key_fkey"));

    // The other way round: tasks stored while the function's delete is uncommitted wait, then
    // find it gone.
    catalog::insert_function(&mut storing, &fx::function(2, "org-a", "fl"))
        .await
        .unwrap();
    let mut deleting = db.connect().await;
    execute(&mut deleting, "BEGIN").await;
    execute(
        &mut deleting,
        &format!("DELETE FROM functions WHERE key = '{}'", key(2)),
    )
    .await;
    let store =
        tokio::spawn(
            async move { tasks::insert_tasks(&storing, &[fx::task(41, 30, 2, None)]).await },
        );
    let error = commit_once_waiting(store, &mut deleting, "the insert")
        .await
        .unwrap_err();
    assert_eq!(dangling_constraint(&error), Some("tasks_function_key_fkey"));
}

/// Two connections to a seeded `db` holding task 40: one to write with, and one whose open
/// transaction has deleted task 40 and not committed.
async fn task_40_being_deleted(db: &TestDb) -> (AsyncPgConnection, AsyncPgConnection) {
    let mut writing = db.connect().await;
    let mut deleting = db.connect().await;
    seed(&mut writing).await;
    tasks::insert_tasks(&writing, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    execute(&mut deleting, "BEGIN").await;
    execute(
        &mut deleting,
        &format!("DELETE FROM tasks WHERE key = '{}'", key(40)),
    )
    .await;
    (writing, deleting)
}

#[tokio::test(flavor = "multi_thread")]
async fn history_for_a_task_being_deleted_waits_and_is_refused() {
    // A task's history written while another transaction deletes the task: the check locks
    // the task, waits for the delete to commit, then finds the task gone.
    let db = TestDb::new().await;
    let (mut writing, mut deleting) = task_40_being_deleted(&db).await;
    tasks::insert_tasks(&writing, &[fx::task(41, 30, 1, None)])
        .await
        .unwrap();
    let write = tokio::spawn(async move {
        let history = [
            fx::state_change(41, TaskStatus::Todo, 1),
            fx::state_change(40, TaskStatus::Todo, 1),
        ];
        let outcome = tasks::insert_state_changes(&writing, &history).await;
        (
            outcome,
            count_rows(&mut writing, "task_state_changes").await,
        )
    });
    let (outcome, stored) = commit_once_waiting(write, &mut deleting, "the history").await;
    let error = outcome.unwrap_err();
    assert_eq!(
        dangling_constraint(&error),
        Some("task_state_changes_task_key_fkey")
    );
    // Nothing half-written: task 41's row went with the refused statement.
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_lines_for_a_task_being_deleted_wait_and_are_refused() {
    // As for history rows: log lines of a task another transaction is deleting lock it, wait
    // for the delete to commit, then find it gone; lines of a task this transaction wrote
    // pass beside them without a lock.
    let db = TestDb::new().await;
    let (mut writing, mut deleting) = task_40_being_deleted(&db).await;
    let write = tokio::spawn(async move {
        execute(&mut writing, "BEGIN").await;
        tasks::insert_tasks(&writing, &[fx::task(41, 30, 1, None)])
            .await
            .unwrap();
        let lines = [fx::log_line(41, 0), fx::log_line(40, 0)];
        let outcome = execution::insert_log_lines(&writing, &lines).await;
        execute(&mut writing, "ROLLBACK").await;
        (outcome, count_rows(&mut writing, "log_lines").await)
    });
    let (outcome, stored) = commit_once_waiting(write, &mut deleting, "the log lines").await;
    let error = outcome.unwrap_err();
    assert_eq!(dangling_constraint(&error), Some("log_lines_task_key_fkey"));
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_keys_are_refused_by_the_database() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let error = plans::insert_plan(&conn, &fx::plan(30, "org-a", "fl"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Duplicate { constraint: Some(c), .. } if c == "compute_plans_pkey"),
        "{error:?}"
    );
    // At most one password per user.
    catalog::insert_credential(&mut conn, &fx::password("alice", 100))
        .await
        .unwrap();
    let error = catalog::insert_credential(&mut conn, &fx::password("alice", 101))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Duplicate { constraint: Some(c), .. } if c == "credentials_one_password_per_user"),
        "{error:?}"
    );
    // One performance per task output.
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    execution::insert_performance(&mut conn, &fx::performance(40, 0.5))
        .await
        .unwrap();
    let error = execution::insert_performance(&mut conn, &fx::performance(40, 0.6))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Duplicate { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn values_outside_the_models_rules_are_refused_by_the_database() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    let error = execution::insert_performance(&mut conn, &fx::performance(40, f64::NAN))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::CheckFailed { .. }), "{error:?}");

    let mut plan = fx::plan(31, "org-a", "fl");
    plan.name = "x".repeat(101);
    let error = plans::insert_plan(&conn, &plan).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::CheckFailed { constraint: Some(c), .. } if c == "compute_plans_name_check"),
        "{error:?}"
    );

    // Counters that do not add up.
    let mut plan = fx::plan(32, "org-a", "fl");
    plan.counters.todo_count += 1;
    let error = plans::insert_plan(&conn, &plan).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::CheckFailed { constraint: Some(c), .. } if c == "compute_plans_counts_add_up"),
        "{error:?}"
    );

    // A lease on a task that is not running.
    let mut task = fx::task(41, 30, 1, None);
    task.status = TaskStatus::Todo;
    let error = tasks::insert_tasks(&conn, &[task]).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::CheckFailed { constraint: Some(c), .. } if c == "tasks_lease_only_when_doing"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_row_is_reported_not_panicked_on() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    tasks::insert_tasks(&conn, &[fx::task(40, 30, 1, None)])
        .await
        .unwrap();
    diesel::sql_query("UPDATE tasks SET source = '{\"type\": \"telepathy\"}'")
        .execute(&mut conn)
        .await
        .unwrap();
    let error = tasks::find_task(&mut conn, key(40).into())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Corrupt { table: "tasks", reason, .. } if reason.starts_with("source:")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_inserts_split_below_the_bind_parameter_limit() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    // 2,500 tasks × 39 columns is 97,500 parameters: more than one statement may carry.
    let many: Vec<_> = (0..2_500u128)
        .map(|n| {
            let mut task = fx::task(10_000 + n, 30, 1, None);
            task.lease = None;
            task.status = TaskStatus::Todo;
            task
        })
        .collect();
    tasks::insert_tasks(&conn, &many).await.unwrap();
    let stored = tasks::list_plan_tasks(&mut conn, key(30).into(), Some(TaskStatus::Todo))
        .await
        .unwrap();
    assert_eq!(stored.len(), 2_500);

    // 10,000 log lines × 8 columns is 80,000 parameters.
    let lines: Vec<_> = (0..10_000).map(|seq| fx::log_line(10_000, seq)).collect();
    execution::insert_log_lines(&conn, &lines).await.unwrap();
    let stored = execution::list_log_lines(&mut conn, key(10_000).into(), 20_000, 0)
        .await
        .unwrap();
    assert_eq!(stored.len(), 10_000);
    assert_eq!(stored.last(), lines.last());

    // 12,000 samples × 6 columns is 72,000 parameters.
    let samples: Vec<_> = (0..12_000)
        .map(|i| fx::measurement(10_000, "v", i))
        .collect();
    execution::insert_measurements(&conn, &samples)
        .await
        .unwrap();
    let stored = execution::list_measurements(&mut conn, key(10_000).into(), Some("v"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 12_000);
}

/// The advisory locks `conn`'s session holds, as `(classid, objid, mode)`.
async fn advisory_locks(conn: &mut AsyncPgConnection) -> Vec<(i64, i64, String)> {
    #[derive(diesel::QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        class: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        object: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        mode: String,
    }
    let held: Vec<Held> = diesel::sql_query(
        "SELECT classid::bigint AS class, objid::bigint AS object, mode FROM pg_locks \
         WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted \
         ORDER BY classid, objid",
    )
    .load(conn)
    .await
    .unwrap();
    held.into_iter()
        .map(|h| (h.class, h.object, h.mode))
        .collect()
}

#[tokio::test]
async fn task_end_locks_exclude_submissions_and_stay_few() {
    use diesel_async::AsyncConnection;
    use tasks::EndLock;
    let db = TestDb::new().await;
    let mut applier = db.connect().await;
    let mut submission = db.connect().await;
    let few: Vec<TaskKey> = (1..=3).map(|n| TaskKey(key(n))).collect();
    let many: Vec<TaskKey> = (1..=300).map(|n| TaskKey(key(n))).collect();
    let some: Vec<TaskKey> = (1..=100).map(|n| TaskKey(key(n))).collect();

    // A few tasks: the lock over all ends, shared, then one each, in ascending order.
    applier
        .transaction(async |conn| {
            tasks::lock_task_ends(conn, &few, EndLock::Exclusive).await?;
            let held = advisory_locks(conn).await;
            assert_eq!(held.len(), 4, "{held:?}");
            assert_eq!(held[0].2, "ShareLock", "all ends, shared: {held:?}");
            assert!(held[1..].iter().all(|lock| lock.2 == "ExclusiveLock"));
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    assert!(
        advisory_locks(&mut applier).await.is_empty(),
        "held to the end only"
    );

    // A submission may take more than the applier: 100 parents, 100 locks and the shared one.
    applier
        .transaction(async |conn| {
            tasks::lock_task_ends(conn, &some, EndLock::Shared).await?;
            let held = advisory_locks(conn).await;
            assert_eq!(held.len(), 101, "{held:?}");
            assert!(held.iter().all(|lock| lock.2 == "ShareLock"));
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    // The applier's 100, or a submission's 300: the lock over all ends alone, exclusive.
    for (mode, keys) in [(EndLock::Exclusive, &some), (EndLock::Shared, &many)] {
        applier
            .transaction(async |conn| {
                tasks::lock_task_ends(conn, keys, mode).await?;
                let held = advisory_locks(conn).await;
                assert_eq!(held.len(), 1, "{mode:?}: {held:?}");
                assert_eq!(held[0].2, "ExclusiveLock");
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
    }

    // Shared holders do not wait for each other; an exclusive one waits for them.
    let task = &few[1..2];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&str>(4);
    let (held, release) = tokio::sync::oneshot::channel::<()>();
    let reader = async {
        submission
            .transaction(async |conn| {
                tasks::lock_task_ends(conn, task, EndLock::Shared).await?;
                tx.send("shared").await.unwrap();
                release.await.unwrap();
                tx.send("released").await.unwrap();
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
    };
    let ender = async {
        assert_eq!(rx.recv().await, Some("shared"));
        let mut other = db.connect().await;
        other
            .transaction(async |conn| {
                tasks::lock_task_ends(conn, task, EndLock::Shared).await?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let waiting = async {
            applier
                .transaction(async |conn| {
                    tasks::lock_task_ends(conn, task, EndLock::Exclusive).await?;
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
        };
        tokio::pin!(waiting);
        // Given time, the exclusive lock is still not taken while the shared one is held.
        let taken = tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting).await;
        assert!(
            taken.is_err(),
            "the exclusive end lock waits for the shared one"
        );
        held.send(()).unwrap();
        waiting.await;
        assert_eq!(rx.recv().await, Some("released"));
    };
    tokio::join!(reader, ender);
}

#[tokio::test]
async fn the_lead_is_taken_after_the_leader_s_transactions_and_fences_them() {
    use diesel_async::AsyncConnection;
    use dispatcher::store::leadership;
    let db = TestDb::new().await;
    let mut first = db.connect().await;
    let mut second = db.connect().await;
    let mine = leadership::take(&mut first, "first", chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(mine, 1, "the first lead after the migration's epoch 0");

    // The second waits for the first's transaction that checked its epoch, then leads.
    let (checked, mut was_checked) = tokio::sync::mpsc::channel::<()>(1);
    let (go, release) = tokio::sync::oneshot::channel::<()>();
    let leader = async {
        first
            .transaction(async |conn| {
                leadership::hold(conn, mine).await?;
                checked.send(()).await.unwrap();
                release.await.unwrap();
                Ok::<_, StoreError>(())
            })
            .await
            .expect("the epoch is the first's while it leads");
    };
    let taker = async {
        was_checked.recv().await.unwrap();
        let taking = leadership::take(&mut second, "second", chrono::Utc::now());
        tokio::pin!(taking);
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut taking).await;
        assert!(
            early.is_err(),
            "the lead waits for the leader's transaction"
        );
        go.send(()).unwrap();
        assert_eq!(taking.await.unwrap(), mine + 1);
    };
    tokio::join!(leader, taker);

    let refused = first
        .transaction(async |conn| leadership::hold(conn, mine).await)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::NotLeading(message) if message.contains("second took the lead at epoch 2")),
        "{refused}"
    );
}
