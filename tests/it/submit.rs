//! Submitting a compute plan: validated against what is stored, then stored whole in one
//! transaction, or refused with every problem and nothing stored.

use std::collections::BTreeMap;

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use serde_json::json;

use dispatcher::store::{plans, stats, tasks};
use dispatcher::submission::{SubmissionError, submit_plan};
use models::submission::{NewTask, PlanSubmission};
use models::{
    FunctionKey, InputRef, Metadata, OrganizationId, PlanStatus, RequirementSet, TaskInput,
    TaskKey, TaskOutput, TaskStatus,
};

use crate::support::db::TestDb;
use crate::support::fixtures::{self as fx, key};

async fn seed(conn: &mut AsyncPgConnection) {
    fx::seed_catalog(conn).await;
}

/// A training task of the fixture function on dataset 20, after `parent` if given.
fn train(n: u128, parent: Option<u128>) -> NewTask {
    let mut inputs = vec![
        TaskInput {
            identifier: "opener".into(),
            source: InputRef::Asset { asset_key: key(20) },
        },
        TaskInput {
            identifier: "datasamples".into(),
            source: InputRef::Asset { asset_key: key(21) },
        },
    ];
    if let Some(parent) = parent {
        inputs.push(TaskInput {
            identifier: "model".into(),
            source: InputRef::ParentOutput {
                parent_task_key: key(parent).into(),
                parent_task_output_identifier: "model".into(),
            },
        });
    }
    let public = models::Permission::public(&"org-a".into());
    NewTask {
        key: key(n).into(),
        function_key: FunctionKey(key(1)),
        name: Some(format!("train {n}")),
        inputs,
        outputs: BTreeMap::from([
            (
                "model".to_owned(),
                TaskOutput {
                    permissions: models::Permissions::private(&"org-a".into()),
                    transient: false,
                },
            ),
            (
                "score".to_owned(),
                TaskOutput {
                    permissions: models::Permissions::new(public),
                    transient: false,
                },
            ),
        ]),
        parameters: json!({"lr": 0.1}).as_object().cloned().unwrap(),
        metadata: Metadata::new(),
        tag: String::new(),
        worker: None,
        requirements: RequirementSet(BTreeMap::from([("gpu".into(), "1".into())])),
        input_type: None,
        input: serde_json::Value::Null,
    }
}

fn submission(tasks: Vec<NewTask>) -> PlanSubmission {
    PlanSubmission {
        key: key(30).into(),
        name: "chain".into(),
        tag: "t".into(),
        metadata: Metadata::new(),
        project: Some("fl".into()),
        tasks,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_plan_is_stored_whole_with_counters_history_and_outbox() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    // Submitted child first: the store receives them in topological order.
    let plan = submission(vec![train(41, Some(40)), train(40, None)]);
    let owner = OrganizationId::from("org-a");
    let (stored, stored_tasks) = submit_plan(
        &mut conn,
        &plan,
        &owner,
        Some(&"alice".into()),
        Utc::now(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(stored.status, PlanStatus::Todo);
    assert_eq!(
        (
            stored.counters.task_count,
            stored.counters.todo_count,
            stored.counters.waiting_count
        ),
        (2, 1, 1)
    );
    let order: Vec<TaskKey> = stored_tasks.iter().map(|t| t.key).collect();
    assert_eq!(order, vec![key(40).into(), key(41).into()]);

    assert_eq!(
        plans::find_plan(&conn, plan.key).await.unwrap(),
        Some(stored)
    );
    let root = tasks::find_task(&mut conn, key(40).into())
        .await
        .unwrap()
        .unwrap();
    let child = tasks::find_task(&mut conn, key(41).into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (root.status, root.rank, root.worker.as_str()),
        (TaskStatus::Todo, 0, "org-a")
    );
    assert_eq!((child.status, child.rank), (TaskStatus::Waiting, 1));
    assert_eq!(child.waiting_reason, Some(models::WaitingReason::Parents));
    // The function's requirements merged with the task's.
    assert_eq!(root.requirements.routing_key(), "device=lucidac,gpu=1");
    assert_eq!(
        tasks::find_children(&mut conn, root.key).await.unwrap(),
        vec![child.key]
    );
    let history = tasks::list_state_changes(&mut conn, child.key)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status, TaskStatus::Waiting);

    // Only the ready task is waiting to be published, on its requirement set's routing key.
    let outbox = tasks::next_outbox_rows(&mut conn, Utc::now(), 10)
        .await
        .unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].task_key, key(40));
    assert_eq!(outbox[0].routing_key, "device=lucidac,gpu=1");
    let message: models::wire::TaskReady =
        serde_json::from_value(outbox[0].payload.clone()).unwrap();
    assert_eq!(message.task_key, key(40).into());
    assert_eq!(message.requirements.routing_key(), "device=lucidac,gpu=1");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_plan_is_refused_with_every_problem_and_nothing_is_stored() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let mut unknown_function = train(40, None);
    unknown_function.function_key = FunctionKey(key(404));
    let mut bad_parameter = train(41, Some(77));
    bad_parameter.parameters = json!({"lr": "fast"}).as_object().cloned().unwrap();
    let mut plan = submission(vec![unknown_function, bad_parameter]);
    plan.name = String::new();

    let before = stats::row_counts(&mut conn).await.unwrap();
    let error = submit_plan(&mut conn, &plan, &"org-a".into(), None, Utc::now(), None)
        .await
        .unwrap_err();
    let SubmissionError::Invalid(errors) = error else {
        panic!("expected a validation error, got {error:?}");
    };
    let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expected_fragments = [
        "name: must not be empty",
        "tasks[0].function_key",
        "tasks[1].parameters",
        "unknown parent",
    ];
    for fragment in expected_fragments {
        assert!(
            rendered.iter().any(|line| line.contains(fragment)),
            "no error mentions {fragment:?}: {rendered:#?}"
        );
    }
    assert_eq!(
        stats::row_counts(&mut conn).await.unwrap(),
        before,
        "nothing is stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_key_cannot_be_submitted_twice() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let plan = submission(vec![train(40, None)]);
    submit_plan(&mut conn, &plan, &"org-a".into(), None, Utc::now(), None)
        .await
        .unwrap();
    let mut again = plan.clone();
    again.tasks = vec![train(50, None)];
    let error = submit_plan(&mut conn, &again, &"org-a".into(), None, Utc::now(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, SubmissionError::PlanExists(key) if key == plan.key),
        "{error:?}"
    );
    assert_eq!(
        tasks::find_task(&mut conn, key(50).into()).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_of_a_stored_failed_parent_is_born_canceled() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    plans::insert_plan(&conn, &fx::plan(31, "org-a", "fl"))
        .await
        .unwrap();
    let mut failed = fx::failed_task(40, 31, 1);
    failed.worker_id = None;
    tasks::insert_tasks(&conn, &[failed]).await.unwrap();

    let plan = submission(vec![train(41, Some(40))]);
    let (stored, stored_tasks) =
        submit_plan(&mut conn, &plan, &"org-a".into(), None, Utc::now(), None)
            .await
            .unwrap();
    assert_eq!(stored_tasks[0].status, TaskStatus::Canceled);
    assert!(stored_tasks[0].end_date.is_some());
    assert_eq!(stored.status, PlanStatus::Canceled);
    assert!(
        tasks::next_outbox_rows(&mut conn, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn storing_a_large_plan_analyzes_the_tasks_table() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    seed(&mut conn).await;
    let owner = OrganizationId::from("org-a");
    let small = PlanSubmission {
        key: key(31).into(),
        ..submission((100..110).map(|n| train(n, None)).collect())
    };
    submit_plan(&mut conn, &small, &owner, None, Utc::now(), None)
        .await
        .unwrap();
    assert!(
        stats::counted_tasks(&mut conn).await.unwrap() < 10.0,
        "ten tasks are not worth an ANALYZE"
    );
    let large = submission((1_000..2_000).map(|n| train(n, None)).collect());
    submit_plan(&mut conn, &large, &owner, None, Utc::now(), None)
        .await
        .unwrap();
    assert_eq!(
        stats::counted_tasks(&mut conn).await.unwrap(),
        1_010.0,
        "a thousand tasks stored at once: the statistics count them"
    );
    // Another thousand, more than a tenth of what is counted, is analyzed for; fewer than
    // ANALYZED_TASKS never are.
    assert!(
        stats::refresh_task_statistics(&mut conn, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !stats::refresh_task_statistics(&mut conn, 999)
            .await
            .unwrap()
    );
}
