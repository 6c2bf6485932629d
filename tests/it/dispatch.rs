//! The dispatcher end to end: plans submitted over AMQP run to their end with scripted workers,
//! against real PostgreSQL and RabbitMQ.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;

use broker::RpcClient;
use broker::topology::SUBMIT_EXCHANGE;
use dispatcher::store::{tasks, workers};
use models::function::{FunctionInput, FunctionOutput, RetryPolicy};
use models::submission::{
    NewDataSample, NewDataSamples, NewDataset, NewFunction, NewOrganization, NewProject, NewTask,
    PlanSubmission,
};
use models::wire::{
    AddTasks, AssetReply, CancelReply, CancelRequest, ClaimReply, ControlOrder, InputValue,
    RegistrationReply, ReportedOutcome, SubmissionReply, TaskAssigned, TaskStatusReport,
    WireMessage,
};
use models::{
    Attempt, Function, FunctionKey, FunctionStatus, InputKind, InputRef, Metadata, ModelKey,
    OutputKind, Permission, Permissions, PlanKey, PlanStatus, RequirementSet, TaskInput, TaskKey,
    TaskOutput, TaskStatus,
};

use crate::support::cluster::{
    Control, Granted, ORGANIZATION, Script, ScriptedWorker, TestCluster, register,
};
use crate::support::fixtures::key;

const WAIT: Duration = Duration::from_secs(20);

/// A function whose tasks take models from their parents and produce one.
fn function(n: u128, retry: RetryPolicy) -> Function {
    let now = Utc::now();
    Function {
        key: FunctionKey(key(n)),
        name: format!("step {n}"),
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
        steps: vec![models::Step {
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
        retry,
        timeout_secs: None,
        is_enabled: true,
        status: FunctionStatus::Ready,
        data: serde_json::json!({}),
        creation_date: now,
        update_date: now,
    }
}

fn no_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        backoff_initial_ms: 100,
        backoff_max_ms: 100,
        jitter: false,
    }
}

/// Task `n` of function `function` after `parents`.
fn task(n: u128, function: u128, parents: &[u128]) -> NewTask {
    NewTask {
        key: TaskKey(key(n)),
        function_key: FunctionKey(key(function)),
        name: Some(format!("t{n}")),
        inputs: parents
            .iter()
            .map(|parent| TaskInput {
                identifier: "models".into(),
                source: InputRef::ParentOutput {
                    parent_task_key: TaskKey(key(*parent)),
                    parent_task_output_identifier: "model".into(),
                },
            })
            .collect(),
        outputs: BTreeMap::from([(
            "model".to_owned(),
            TaskOutput {
                permissions: Permissions::private(&ORGANIZATION.into()),
                transient: false,
            },
        )]),
        parameters: serde_json::Map::new(),
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

async fn submit(cluster: &TestCluster, rpc: &RpcClient, submission: &PlanSubmission) {
    let reply = cluster.submit(rpc, submission).await;
    assert!(
        matches!(reply, SubmissionReply::Accepted { .. }),
        "submission refused: {reply:?}"
    );
}

/// Works tasks with `script` until plan `key` is terminal.
async fn run_to_end(
    cluster: &TestCluster,
    worker: &mut ScriptedWorker,
    key: PlanKey,
    script: &Script,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cluster.plan(key).await.status.is_terminal() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "plan {key} did not end"
        );
        worker.work_one(Duration::from_millis(500), script).await;
    }
}

/// The statuses of the stored tasks, by name.
async fn statuses(cluster: &TestCluster, key: PlanKey) -> BTreeMap<String, TaskStatus> {
    cluster
        .tasks(key)
        .await
        .into_iter()
        .map(|task| (task.name.unwrap_or_default(), task.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diamond_runs_to_done_with_exact_counters() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let diamond = plan(
        100,
        vec![
            task(1, 1, &[]),
            task(2, 1, &[1]),
            task(3, 1, &[1]),
            task(4, 1, &[2, 3]),
        ],
    );
    submit(&cluster, &rpc, &diamond).await;
    let submitted = cluster.plan(diamond.key).await;
    assert_eq!(
        (
            submitted.status,
            submitted.counters.todo_count,
            submitted.counters.waiting_count
        ),
        (PlanStatus::Todo, 1, 3)
    );

    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    // After the root, both middle tasks are ready at once.
    worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("the root is granted");
    let after_root = cluster
        .wait_for_plan(diamond.key, WAIT, "with two ready tasks", |p| {
            p.counters.todo_count == 2
        })
        .await;
    assert_eq!(after_root.status, PlanStatus::Doing);
    assert_eq!(
        (
            after_root.counters.done_count,
            after_root.counters.waiting_count
        ),
        (1, 1)
    );

    run_to_end(&cluster, &mut worker, diamond.key, &Script::Succeed).await;
    let done = cluster.plan(diamond.key).await;
    assert_eq!(done.status, PlanStatus::Done);
    assert_eq!(done.counters.done_count, 4);
    assert!(done.start_date.is_some() && done.end_date.is_some());
    let mut conn = cluster.db.connect().await;
    for task in cluster.tasks(diamond.key).await {
        assert_eq!(
            (task.status, task.attempt_count),
            (TaskStatus::Done, 1),
            "{:?}",
            task.name
        );
        let history = tasks::list_state_changes(&mut conn, task.key)
            .await
            .unwrap();
        let dones = history
            .iter()
            .filter(|change| change.status == TaskStatus::Done)
            .count();
        assert_eq!(dones, 1, "task {:?} DONE once", task.name);
    }
    assert!(
        tasks::next_outbox_rows(&mut conn, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_four_level_dag_runs_to_done() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let levels = plan(
        101,
        vec![
            task(1, 1, &[]),
            task(2, 1, &[]),
            task(3, 1, &[1, 2]),
            task(4, 1, &[3]),
            task(5, 1, &[3, 1]),
            task(6, 1, &[4, 5, 2]),
        ],
    );
    submit(&cluster, &rpc, &levels).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    run_to_end(&cluster, &mut worker, levels.key, &Script::Succeed).await;
    let done = cluster.plan(levels.key).await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 6)
    );
    let ranks: BTreeMap<String, u32> = cluster
        .tasks(levels.key)
        .await
        .into_iter()
        .map(|task| (task.name.unwrap_or_default(), task.rank))
        .collect();
    assert_eq!(ranks["t6"], 3);
}

/// The ready tasks of a submission, and those its DONE tasks make ready, are handed to the
/// outbox relay in memory: the plan runs to its end although the relay reads the outbox only
/// once, when it starts.
#[tokio::test(flavor = "multi_thread")]
async fn ready_tasks_are_published_by_hand_over_without_polling() {
    let cluster =
        TestCluster::start_polling(chrono::Duration::seconds(30), Duration::from_secs(3600)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let levels = plan(
        131,
        vec![task(1, 1, &[]), task(2, 1, &[1]), task(3, 1, &[1, 2])],
    );
    submit(&cluster, &rpc, &levels).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    run_to_end(&cluster, &mut worker, levels.key, &Script::Succeed).await;
    let done = cluster.plan(levels.key).await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 3)
    );
    assert!(
        outbox_is_empty(&cluster).await,
        "every published row was deleted"
    );
}

/// Whether the outbox has no row left that the relay would publish, even an hour from now.
async fn outbox_is_empty(cluster: &TestCluster) -> bool {
    let mut conn = cluster.db.connect().await;
    tasks::next_outbox_rows(&mut conn, Utc::now() + chrono::Duration::hours(1), 10)
        .await
        .unwrap()
        .is_empty()
}

/// A DONE report that offers a follow-up gets the child it made ready on the worker's control
/// queue, granted without a claim, with the parent's model (registered by the same batch) as
/// its input; the child never goes through the task queue. A follow-up the worker hands back
/// (as a worker without a free slot does) is re-queued for any worker, and the plan ends DONE.
#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_goes_to_the_reporting_worker_without_a_claim() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let chain = plan(
        141,
        vec![task(1, 1, &[]), task(2, 1, &[1]), task(3, 1, &[2])],
    );
    submit(&cluster, &rpc, &chain).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let mut assignments = worker.offer_follow_ups().await;

    let first = worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("task 1 is granted from its queue");
    let second = next_assignment(&mut assignments).await;
    assert_eq!(
        (second.after, second.speculative, second.grant.task_key),
        (Some(first.task), false, TaskKey(key(2)))
    );
    // The chain's next link comes granted ahead, to start after task 2; the hand-back of task 2
    // below voids it.
    let ahead = next_assignment(&mut assignments).await;
    assert_eq!(
        (ahead.after, ahead.speculative, ahead.grant.task_key),
        (Some(TaskKey(key(2))), true, TaskKey(key(3)))
    );
    let mut conn = cluster.db.connect().await;
    let model = dispatcher::store::execution::list_models_of_tasks(&mut conn, &[first.task])
        .await
        .unwrap()
        .remove(&first.task)
        .expect("task 1's model is stored")
        .remove(0);
    match &second.assignment.inputs[..] {
        [input] => assert_eq!(
            input.value,
            InputValue::Model {
                model_key: model.key,
                file: model.address.clone().expect("the model has its file"),
            }
        ),
        inputs => panic!("one input expected, got {inputs:?}"),
    }
    assert!(
        worker
            .work_one(Duration::from_millis(500), &Script::Succeed)
            .await
            .is_none(),
        "task 2 was not published to the task queue"
    );

    // Handed back: the task queue gets it, and whoever takes it runs it.
    worker
        .report(
            &Granted::assigned(&second),
            ReportedOutcome::Failed {
                error_type: models::TaskErrorType::CanceledByWorker,
                message: "no free slot".into(),
                retryable: true,
            },
        )
        .await;
    let retaken = worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("task 2, handed back, is granted from its queue");
    assert_eq!(retaken.task, TaskKey(key(2)));
    let third = next_assignment(&mut assignments).await;
    assert_eq!(
        (third.after, third.speculative, third.grant.task_key),
        (Some(retaken.task), false, TaskKey(key(3)))
    );
    assert_ne!(
        third.grant.lease_token, ahead.grant.lease_token,
        "what was granted ahead of the handed-back task is void"
    );
    worker
        .report(&Granted::assigned(&third), ReportedOutcome::Done)
        .await;
    let done = cluster
        .wait_for_plan(chain.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 3)
    );

    // Two parents reported DONE in one batch: the child's assignment has both their models,
    // neither stored when it was granted.
    let join = plan(
        142,
        vec![task(4, 1, &[]), task(5, 1, &[]), task(6, 1, &[4, 5])],
    );
    submit(&cluster, &rpc, &join).await;
    let mut parents = Vec::new();
    for _ in 0..2 {
        let task = worker.take_ready(WAIT).await;
        parents.push(Granted::of(&worker.claim(task).await).expect("a parent is granted"));
    }
    worker
        .report_done_together(&parents.iter().collect::<Vec<_>>())
        .await;
    let joining = next_assignment(&mut assignments).await;
    assert_eq!(joining.grant.task_key, TaskKey(key(6)));
    let inputs: BTreeSet<ModelKey> = joining
        .assignment
        .inputs
        .iter()
        .map(|input| match &input.value {
            InputValue::Model { model_key, .. } => *model_key,
            other => panic!("a model expected, got {other:?}"),
        })
        .collect();
    let mut conn = cluster.db.connect().await;
    let stored: BTreeSet<ModelKey> = dispatcher::store::execution::list_models_of_tasks(
        &mut conn,
        &[key(4).into(), key(5).into()],
    )
    .await
    .unwrap()
    .into_values()
    .flatten()
    .map(|model| model.key)
    .collect();
    assert_eq!((inputs.len(), &inputs), (2, &stored));
    worker
        .report(&Granted::assigned(&joining), ReportedOutcome::Done)
        .await;
    let done = cluster
        .wait_for_plan(join.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(done.status, PlanStatus::Done);
    assert_eq!(
        cluster.metrics.direct_grants(),
        dispatcher::metrics::DirectGrants {
            follow_ups: 3,
            started_ahead: 0,
            refills: 0,
            eager_starts: 0,
            hand_backs: 1,
        }
    );
}

/// A DONE report whose worker keeps the attempt's slot (`awaits_work`) is answered with the
/// oldest task waiting in the worker's queue, granted in that slot as a claim would be and sent
/// after the reported task; with no task waiting, with a `released` order naming the reported
/// task. The task messages still in the queue offer the attempt given already, so the worker
/// can drop them; a claim of one is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_slot_gets_the_oldest_waiting_task_or_is_released() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let fan = plan(151, vec![task(1, 1, &[]), task(2, 1, &[]), task(3, 1, &[])]);
    submit(&cluster, &rpc, &fan).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let mut control = worker.offer_follow_ups::<Control>().await;
    let first = worker.take_ready_message(WAIT).await;
    assert_eq!(
        first.attempt,
        Some(Attempt(1)),
        "the message offers attempt 1"
    );
    let granted = Granted::of(&worker.claim(first.task_key).await).expect("granted");

    // Each DONE report keeping its slot gets the next waiting task in it.
    let mut given = Vec::new();
    let mut reported = granted;
    for _ in 0..2 {
        worker.report_done_keeping_the_slot(&reported).await;
        let assigned = next_assigned(&mut control).await;
        assert_eq!(
            (assigned.after, assigned.speculative, assigned.grant.attempt),
            (Some(reported.task), false, Attempt(1))
        );
        assert_ne!(assigned.grant.task_key, first.task_key);
        assert!(!given.contains(&assigned.grant.task_key), "given once");
        given.push(assigned.grant.task_key);
        reported = Granted::assigned(&assigned);
    }
    let stored = cluster.tasks(fan.key).await;
    let refilled = stored
        .iter()
        .find(|task| task.key == given[0])
        .expect("the first task given is stored");
    assert_eq!(
        (refilled.status, refilled.attempt_count),
        (TaskStatus::Done, 1)
    );
    assert_eq!(refilled.worker_id, Some("worker-1".into()));

    // Nothing waits any more: the last slot is released.
    worker.report_done_keeping_the_slot(&reported).await;
    match next_control(&mut control).await {
        Control::Order(ControlOrder::Released { task_keys }) => {
            assert_eq!(task_keys, vec![reported.task]);
        }
        other => panic!("a released order expected, got {other:?}"),
    }
    let done = cluster
        .wait_for_plan(fan.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 3)
    );

    // The given tasks' messages are still queued, offering the attempt given: stale.
    let mut stale = BTreeSet::new();
    for _ in 0..2 {
        let message = worker.take_ready_message(WAIT).await;
        assert_eq!(message.attempt, Some(Attempt(1)));
        stale.insert(message.task_key);
        assert!(
            matches!(
                worker.claim(message.task_key).await,
                ClaimReply::Refused { .. }
            ),
            "a claim of a task given already is refused"
        );
    }
    assert_eq!(stale, given.iter().copied().collect::<BTreeSet<_>>());
    let grants = cluster.metrics.direct_grants();
    assert_eq!((grants.refills, grants.follow_ups), (2, 0), "{grants:?}");
}

/// A DONE report taking tasks on its worker's deck (`on_deck`) is granted that many more of
/// the oldest waiting tasks, after the one for its kept slot and in the same message; one
/// that gets fewer than it takes in all is followed by a `released` order naming it.
#[tokio::test(flavor = "multi_thread")]
async fn a_report_taking_tasks_on_the_deck_is_granted_them_or_released() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let fan = plan(152, (1..=4).map(|n| task(n, 1, &[])).collect::<Vec<_>>());
    submit(&cluster, &rpc, &fan).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let mut control = worker.offer_follow_ups::<Control>().await;
    let first = worker.take_ready_message(WAIT).await;
    let granted = Granted::of(&worker.claim(first.task_key).await).expect("granted");

    // The kept slot's task and one for the deck, both granted, in one message.
    worker.report_done_taking(&granted, true, 1).await;
    let assigned = next_assignments(&mut control).await;
    assert_eq!(assigned.len(), 2, "{assigned:?}");
    for one in &assigned {
        assert_eq!(
            (one.after, one.speculative, one.grant.attempt),
            (Some(granted.task), false, Attempt(1))
        );
    }
    assert_ne!(assigned[0].grant.task_key, assigned[1].grant.task_key);
    let stored = cluster.tasks(fan.key).await;
    for one in &assigned {
        let task = stored
            .iter()
            .find(|task| task.key == one.grant.task_key)
            .expect("stored");
        assert_eq!(
            (task.status, task.worker_id.clone()),
            (TaskStatus::Doing, Some("worker-1".into()))
        );
    }

    // A deck task started in a freed slot: its report keeps no slot and takes two on the deck;
    // one task waits, so it gets that one and a `released` order.
    worker
        .report_done_taking(&Granted::assigned(&assigned[0]), false, 2)
        .await;
    let last = next_assignments(&mut control).await;
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(last[0].after, Some(assigned[0].grant.task_key));
    match next_control(&mut control).await {
        Control::Order(ControlOrder::Released { task_keys }) => {
            assert_eq!(task_keys, vec![assigned[0].grant.task_key]);
        }
        other => panic!("a released order expected, got {other:?}"),
    }
    let mut given: BTreeSet<TaskKey> = assigned.iter().map(|one| one.grant.task_key).collect();
    given.insert(last[0].grant.task_key);
    given.insert(first.task_key);
    assert_eq!(given.len(), 4, "every task given once");
    for one in [&assigned[1], &last[0]] {
        worker
            .report_done_taking(&Granted::assigned(one), false, 0)
            .await;
    }
    let done = cluster
        .wait_for_plan(fan.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 4)
    );
    let grants = cluster.metrics.direct_grants();
    assert_eq!((grants.refills, grants.hand_backs), (3, 0), "{grants:?}");
}

/// The keys of the tasks whose outbox rows are held back, in publishing order.
async fn held_tasks(cluster: &TestCluster) -> Vec<TaskKey> {
    #[derive(diesel::QueryableByName)]
    struct Held {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        task_key: uuid::Uuid,
    }
    let mut conn = cluster.db.connect().await;
    diesel_async::RunQueryDsl::load::<Held>(
        diesel::sql_query("SELECT task_key FROM outbox WHERE held ORDER BY id"),
        &mut conn,
    )
    .await
    .unwrap()
    .into_iter()
    .map(|held| TaskKey(held.task_key))
    .collect()
}

/// Waits until the outbox holds `held` rows back and the `any` queue `ready` messages.
async fn until_held_and_ready(cluster: &TestCluster, held: usize, ready: u32) -> Vec<TaskKey> {
    let probe = cluster.client("probe").await;
    let queue = broker::topology::task_queue(&RequirementSet::any());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let keys = held_tasks(cluster).await;
        let counts = probe
            .message_counts(std::slice::from_ref(&queue))
            .await
            .unwrap();
        if keys.len() == held && counts[0].1 == Some(ready) {
            return keys;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {held} held rows and {ready} ready messages, got {} and {:?}",
            keys.len(),
            counts[0].1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes `count` ready messages, claims each task and reports it DONE; returns their tasks,
/// checking that none came twice.
async fn run_from_messages(worker: &mut ScriptedWorker, count: usize) -> BTreeSet<TaskKey> {
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let message = worker.take_ready_message(WAIT).await;
        assert!(
            seen.insert(message.task_key),
            "{} published twice",
            message.task_key
        );
        let granted = Granted::of(&worker.claim(message.task_key).await).expect("granted");
        worker.report(&granted, ReportedOutcome::Done).await;
    }
    seen
}

/// With `publish_ahead`, a task queue gets that many ready messages and the rest of the plan's
/// ready tasks wait in the outbox, held; they are released, oldest first, as a consumer takes
/// messages. A held task granted without its message (here by a claim; a refill or follow-up
/// alike) has its row deleted: its message is never published. Every other task's message is
/// published once and the plan ends DONE.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_gets_its_window_of_messages_and_the_rest_wait_held_until_taken_or_granted() {
    let cluster = TestCluster::start_publishing_ahead(chrono::Duration::seconds(30), 2).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let fan = plan(153, (1..=5).map(|n| task(n, 1, &[])).collect::<Vec<_>>());
    submit(&cluster, &rpc, &fan).await;
    let order: Vec<TaskKey> = fan.tasks.iter().map(|task| task.key).collect();
    // No consumer yet: two published, the last three held, in the plan's order.
    assert_eq!(until_held_and_ready(&cluster, 3, 2).await, order[2..]);

    // The worker's consumer takes one (its prefetch): one more is released into the queue.
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let held = until_held_and_ready(&cluster, 2, 2).await;
    assert_eq!(held, order[3..]);

    // A held task claimed without its message: its row goes, nothing is released for it.
    let granted = Granted::of(&worker.claim(held[0]).await).expect("granted");
    assert_eq!(until_held_and_ready(&cluster, 1, 2).await, order[4..]);
    worker.report(&granted, ReportedOutcome::Done).await;

    // The rest through the queue, each message once; the claimed task's never.
    let seen = run_from_messages(&mut worker, 4).await;
    let expected: BTreeSet<TaskKey> = order
        .iter()
        .copied()
        .filter(|key| *key != held[0])
        .collect();
    assert_eq!(seen, expected);
    let done = cluster
        .wait_for_plan(fan.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 5)
    );
    assert!(held_tasks(&cluster).await.is_empty());
    assert!(
        outbox_is_empty(&cluster).await,
        "every row was published or deleted"
    );
}

/// Rows held back by a dispatcher that stopped are released by the next one, as its queue's
/// consumer takes messages: the plan ends DONE, each task's message published once.
#[tokio::test(flavor = "multi_thread")]
async fn rows_held_before_a_restart_are_released_after_it() {
    let mut cluster = TestCluster::start_publishing_ahead(chrono::Duration::seconds(30), 2).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let fan = plan(154, (1..=5).map(|n| task(n, 1, &[])).collect::<Vec<_>>());
    submit(&cluster, &rpc, &fan).await;
    until_held_and_ready(&cluster, 3, 2).await;
    cluster.kill_dispatcher().await;
    cluster.start_dispatcher();
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let seen = run_from_messages(&mut worker, 5).await;
    assert_eq!(seen, fan.tasks.iter().map(|task| task.key).collect());
    let done = cluster
        .wait_for_plan(fan.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 5)
    );
    assert!(held_tasks(&cluster).await.is_empty());
}

/// A worker running a chain's link is granted the next links ahead (`run_ahead`), each to
/// start as soon as the one before ends DONE on it, with its inputs from that link left for the
/// worker to fill in; nothing of them is stored until the report of the link before says the
/// worker started the next, which is then granted with the attempt and token sent ahead.
#[tokio::test(flavor = "multi_thread")]
async fn the_links_of_a_chain_granted_ahead_start_as_the_link_before_ends() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    let (chain, worker, mut control) = chain_run_ahead(&cluster, 143, 4).await;
    let second = next_assigned(&mut control).await;
    assert_eq!(
        (second.after, second.speculative, second.grant.task_key),
        (Some(TaskKey(key(1))), false, TaskKey(key(2)))
    );
    let third = next_assigned(&mut control).await;
    let fourth = next_assigned(&mut control).await;
    for (ahead, after, task) in [(&third, 2, 3), (&fourth, 3, 4)] {
        assert_eq!(
            (
                ahead.after,
                ahead.speculative,
                ahead.grant.task_key,
                ahead.grant.attempt
            ),
            (
                Some(TaskKey(key(after))),
                true,
                TaskKey(key(task)),
                models::Attempt(1)
            )
        );
        match &ahead.assignment.inputs[..] {
            [input] => assert_eq!(
                input.value,
                InputValue::ParentOutput {
                    task_key: TaskKey(key(after)),
                    output: "model".into(),
                    file: None,
                }
            ),
            inputs => panic!("one input expected, got {inputs:?}"),
        }
    }
    let stored = statuses(&cluster, chain.key).await;
    assert_eq!(
        (stored["t3"], stored["t4"]),
        (TaskStatus::Waiting, TaskStatus::Waiting),
        "nothing granted ahead is stored"
    );

    // The worker ran task 2, then 3 in its slot, then 4.
    worker
        .report_done_started(&Granted::assigned(&second), third.grant.task_key)
        .await;
    worker.applied().await;
    let running = cluster.tasks(chain.key).await;
    let t3 = running
        .iter()
        .find(|task| task.key == TaskKey(key(3)))
        .unwrap();
    assert_eq!(
        (t3.status, t3.worker_id.clone()),
        (TaskStatus::Doing, Some(worker.id.clone())),
        "task 3 is granted when task 2's report says it started"
    );
    // Delivered again (its ack lost): task 3 stays granted, and the worker is told nothing.
    worker
        .report_done_started(&Granted::assigned(&second), third.grant.task_key)
        .await;
    worker
        .report_done_started(&Granted::assigned(&third), fourth.grant.task_key)
        .await;
    worker
        .report(&Granted::assigned(&fourth), ReportedOutcome::Done)
        .await;
    let done = cluster
        .wait_for_plan(chain.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 4)
    );
    for task in cluster.tasks(chain.key).await {
        assert_eq!(task.attempt_count, 1, "{:?} ran once", task.name);
    }
    assert_eq!(cluster.metrics.direct_grants().started_ahead, 2);
    assert_eq!(cluster.metrics.direct_grants().follow_ups, 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), control.next())
            .await
            .is_err(),
        "no order or assignment comes after the chain's end"
    );
}

/// A claim of a chain's link is answered with the next links granted ahead, which the worker
/// starts one after the other without a claim or a follow-up.
#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_link_comes_with_the_next_links_granted_ahead() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let chain = plan(
        147,
        vec![task(1, 1, &[]), task(2, 1, &[1]), task(3, 1, &[2])],
    );
    submit(&cluster, &rpc, &chain).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let task = worker.take_ready(WAIT).await;
    let reply = worker.claim(task).await;
    let first = Granted::of(&reply).expect("task 1 is granted");
    let ClaimReply::Granted { ahead, .. } = reply else {
        unreachable!("granted above")
    };
    let links: Vec<(Option<TaskKey>, TaskKey, bool)> = ahead
        .iter()
        .map(|assigned| {
            (
                assigned.after,
                assigned.grant.task_key,
                assigned.speculative,
            )
        })
        .collect();
    assert_eq!(
        links,
        [
            (Some(TaskKey(key(1))), TaskKey(key(2)), true),
            (Some(TaskKey(key(2))), TaskKey(key(3)), true),
        ]
    );
    worker.report_done_started(&first, TaskKey(key(2))).await;
    worker
        .report_done_started(&Granted::assigned(&ahead[0]), TaskKey(key(3)))
        .await;
    worker
        .report(&Granted::assigned(&ahead[1]), ReportedOutcome::Done)
        .await;
    let done = cluster
        .wait_for_plan(chain.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 3)
    );
    let grants = cluster.metrics.direct_grants();
    assert_eq!((grants.follow_ups, grants.started_ahead), (0, 2));
}

/// A task a worker started ahead is aborted when it cannot be granted: here its parent's DONE
/// report registers no model, so the dispatcher fails the parent, and the plan with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_started_ahead_whose_parent_did_not_end_done_is_aborted() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    let (chain, worker, mut control) = chain_run_ahead(&cluster, 144, 3).await;
    let second = next_assigned(&mut control).await;
    let third = next_assigned(&mut control).await;
    assert!(!second.speculative && third.speculative);

    let mut granted = Granted::assigned(&second);
    granted.outputs.clear();
    worker
        .report_done_started(&granted, third.grant.task_key)
        .await;
    match next_control(&mut control).await {
        Control::Order(models::wire::ControlOrder::Abort { task_key, reason }) => {
            assert_eq!(task_key, third.grant.task_key);
            assert!(reason.contains("started ahead"), "{reason}");
        }
        other => panic!("an abort of task 3 expected, got {other:?}"),
    }
    let ended = cluster
        .wait_for_plan(chain.key, WAIT, "FAILED", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(ended.status, PlanStatus::Failed);
    let stored = statuses(&cluster, chain.key).await;
    assert_eq!(
        (stored["t2"], stored["t3"]),
        (TaskStatus::Failed, TaskStatus::Canceled)
    );
    // The aborted attempt's report, if it comes, is refused: nothing holds its lease.
    worker
        .report(&Granted::assigned(&third), ReportedOutcome::Canceled)
        .await;
    worker.applied().await;
    assert_eq!(
        statuses(&cluster, chain.key).await["t3"],
        TaskStatus::Canceled
    );
    assert_eq!(cluster.metrics.direct_grants().started_ahead, 0);
}

/// A link whose lease lapsed is granted to another worker: what was granted ahead after it to
/// the first worker is void, the second is granted the chain ahead instead, and the first
/// worker's late report (saying it started the next link) gets that attempt aborted without
/// touching the second worker's chain.
#[tokio::test(flavor = "multi_thread")]
async fn a_chain_granted_again_elsewhere_runs_ahead_there_and_the_late_worker_is_aborted() {
    let cluster = TestCluster::start(chrono::Duration::seconds(1)).await;
    cluster
        .seed(&[function(
            1,
            RetryPolicy {
                max_attempts: 3,
                ..no_retry()
            },
        )])
        .await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let chain = plan(
        145,
        vec![
            task(1, 1, &[]),
            task(2, 1, &[1]),
            task(3, 1, &[2]),
            task(4, 1, &[3]),
        ],
    );
    submit(&cluster, &rpc, &chain).await;
    let mut late = ScriptedWorker::new(&cluster, "worker-late").await;
    let mut late_control = late.offer_follow_ups::<Control>().await;
    late.work_one(WAIT, &Script::Succeed)
        .await
        .expect("task 1 is granted from its queue");
    let second_late = next_assigned(&mut late_control).await;
    let third_late = next_assigned(&mut late_control).await;
    let fourth_late = next_assigned(&mut late_control).await;
    assert_eq!(
        [
            second_late.speculative,
            third_late.speculative,
            fourth_late.speculative
        ],
        [false, true, true]
    );

    // The late worker falls silent: task 2's lease lapses and another worker runs it.
    late.stop_taking().await;
    let mut other = ScriptedWorker::new(&cluster, "worker-other").await;
    let mut other_control = other.offer_follow_ups::<Control>().await;
    let second = other
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("task 2 is granted again once its lease lapsed");
    assert_eq!(
        (second.task, second.attempt),
        (TaskKey(key(2)), models::Attempt(2))
    );
    let third = next_assigned(&mut other_control).await;
    let fourth = next_assigned(&mut other_control).await;
    assert_eq!(
        (third.speculative, third.grant.task_key),
        (false, TaskKey(key(3)))
    );
    assert_eq!(
        (fourth.speculative, fourth.after, fourth.grant.task_key),
        (true, Some(TaskKey(key(3))), TaskKey(key(4)))
    );
    assert_ne!(fourth.grant.lease_token, fourth_late.grant.lease_token);

    // The late worker's report is refused, and the link it started is aborted.
    late.report_done_started(&Granted::assigned(&second_late), TaskKey(key(3)))
        .await;
    match next_control(&mut late_control).await {
        Control::Order(models::wire::ControlOrder::Abort { task_key, .. }) => {
            assert_eq!(task_key, TaskKey(key(3)));
        }
        other => panic!("an abort of task 3 expected, got {other:?}"),
    }
    other
        .report_done_started(&Granted::assigned(&third), TaskKey(key(4)))
        .await;
    other
        .report(&Granted::assigned(&fourth), ReportedOutcome::Done)
        .await;
    let done = cluster
        .wait_for_plan(chain.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 4)
    );
    assert_eq!(cluster.metrics.direct_grants().started_ahead, 1);
}

/// A dispatcher that takes over knows nothing of what its predecessor granted ahead: the
/// worker's report saying it started a link ahead gets that attempt aborted, and the link goes
/// through its queue and is done once.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_started_ahead_of_a_dispatcher_that_died_is_aborted_and_queued() {
    let mut cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    let (chain, mut worker, mut control) = chain_run_ahead(&cluster, 146, 3).await;
    let second = next_assigned(&mut control).await;
    let third = next_assigned(&mut control).await;
    assert!(!second.speculative && third.speculative);

    cluster.kill_dispatcher().await;
    cluster.start_dispatcher();
    worker
        .report_done_started(&Granted::assigned(&second), third.grant.task_key)
        .await;
    match next_control(&mut control).await {
        Control::Order(models::wire::ControlOrder::Abort { task_key, reason }) => {
            assert_eq!(task_key, third.grant.task_key);
            assert!(reason.contains("not granted ahead"), "{reason}");
        }
        other => panic!("an abort of task 3 expected, got {other:?}"),
    }
    let retaken = worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("task 3 is granted from its queue");
    assert_eq!(retaken.task, TaskKey(key(3)));
    assert_ne!(retaken.token, third.grant.lease_token);
    // The aborted attempt's report is refused: another attempt holds the task.
    worker
        .report(&Granted::assigned(&third), ReportedOutcome::Canceled)
        .await;
    worker.applied().await;
    let done = cluster
        .wait_for_plan(chain.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 3)
    );
    let mut conn = cluster.db.connect().await;
    for task in cluster.tasks(chain.key).await {
        assert_eq!(
            times_done(&mut conn, task.key).await,
            1,
            "{:?} is done once",
            task.name
        );
        assert_eq!(task.attempt_count, 1, "{:?} ran once", task.name);
    }
}

/// How many times `task`'s history records it DONE.
async fn times_done(conn: &mut diesel_async::AsyncPgConnection, task: TaskKey) -> usize {
    tasks::list_state_changes(conn, task)
        .await
        .unwrap()
        .iter()
        .filter(|change| change.status == TaskStatus::Done)
        .count()
}

/// A chain of `links` tasks (plan `n`) whose first task a worker offering follow-ups took from
/// its queue and ran; with the worker's control queue, where the rest of the chain comes.
async fn chain_run_ahead(
    cluster: &TestCluster,
    n: u128,
    links: u128,
) -> (PlanSubmission, ScriptedWorker, broker::Consumer<Control>) {
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let tasks = (1..=links)
        .map(|link| {
            let parents: &[u128] = if link == 1 { &[] } else { &[link - 1] };
            task(link, 1, parents)
        })
        .collect();
    let chain = plan(n, tasks);
    submit(cluster, &rpc, &chain).await;
    let mut worker = ScriptedWorker::new(cluster, "worker-1").await;
    let control = worker.offer_follow_ups::<Control>().await;
    let first = worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("task 1 is granted from its queue");
    assert_eq!(first.task, TaskKey(key(1)));
    (chain, worker, control)
}

/// The next task assigned on a worker's control queue, acked; an order fails the test.
async fn next_assigned(control: &mut broker::Consumer<Control>) -> TaskAssigned {
    match next_control(control).await {
        Control::Assigned(assigned) => *assigned,
        other => panic!("an assignment expected, got {other:?}"),
    }
}

/// The tasks of the next message assigning some on a worker's control queue (one
/// `task.assigned`, or a `task.assigned_batch`), acked.
async fn next_assignments(control: &mut broker::Consumer<Control>) -> Vec<TaskAssigned> {
    match next_control(control).await {
        Control::Assigned(assigned) => vec![*assigned],
        Control::AssignedBatch(batch) => batch.assignments,
        Control::Order(order) => panic!("an assignment expected, got {order:?}"),
    }
}

/// The next message on a worker's control queue, acked.
async fn next_control(control: &mut broker::Consumer<Control>) -> Control {
    let delivery = tokio::time::timeout(WAIT, control.next())
        .await
        .expect("a control message comes")
        .unwrap()
        .unwrap();
    let message = delivery.message.clone();
    delivery.ack().await.unwrap();
    message
}

/// The next task assigned to a worker without a claim, acked.
async fn next_assignment(assignments: &mut broker::Consumer<TaskAssigned>) -> TaskAssigned {
    let delivery = tokio::time::timeout(WAIT, assignments.next())
        .await
        .expect("an assignment comes")
        .unwrap()
        .unwrap();
    let assigned = delivery.message.clone();
    delivery.ack().await.unwrap();
    assigned
}

/// Whether an assignment comes within half a second.
async fn no_assignment(assignments: &mut broker::Consumer<TaskAssigned>) -> bool {
    tokio::time::timeout(Duration::from_millis(500), assignments.next())
        .await
        .is_err()
}

/// A plan submitted while a worker says it is idle (`idle_slots`) has ready tasks granted to
/// that worker in the transaction that stores it, one per idle slot: they come as
/// `task.assigned`, without a claim, are DOING with their history from the start, and never go
/// through the task queue, which gets the tasks beyond the slots. A hand-back re-queues its
/// task and withdraws the offer; an idle DONE report renews it.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_plan_starts_on_an_idle_worker_without_a_claim() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let mut assignments = worker.offer_idle_slots(2).await;

    let three = plan(151, vec![task(1, 1, &[]), task(2, 1, &[]), task(3, 1, &[])]);
    submit(&cluster, &rpc, &three).await;
    let first = next_assignment(&mut assignments).await;
    let second = next_assignment(&mut assignments).await;
    let started: BTreeSet<TaskKey> = [first.grant.task_key, second.grant.task_key].into();
    assert_eq!(started, [TaskKey(key(1)), TaskKey(key(2))].into());
    assert_eq!(
        (first.after, first.grant.attempt),
        (None, models::Attempt(1))
    );
    let mut conn = cluster.db.connect().await;
    let stored = tasks::find_task(&mut conn, first.grant.task_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.status, stored.worker_id.as_ref()),
        (TaskStatus::Doing, Some(&worker.id))
    );
    let history: Vec<TaskStatus> = tasks::list_state_changes(&mut conn, stored.key)
        .await
        .unwrap()
        .iter()
        .map(|change| change.status)
        .collect();
    assert_eq!(history, [TaskStatus::Todo, TaskStatus::Doing]);
    assert_eq!(cluster.metrics.direct_grants().eager_starts, 2);
    let queued = worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("the task beyond the idle slots goes through the queue");
    assert_eq!(queued.task, TaskKey(key(3)));

    // A hand-back: re-queued for any worker, and the worker offers nothing until it says so.
    worker
        .report(
            &Granted::assigned(&second),
            ReportedOutcome::Failed {
                error_type: models::TaskErrorType::CanceledByWorker,
                message: "no free slot".into(),
                retryable: true,
            },
        )
        .await;
    // Claimed, not reported yet: a DONE report would offer the slots again.
    let retaken = worker.take_ready(WAIT).await;
    assert_eq!(retaken, second.grant.task_key);
    let retaken =
        Granted::of(&worker.claim(retaken).await).expect("the handed-back task is granted");
    let one = plan(152, vec![task(4, 1, &[])]);
    submit(&cluster, &rpc, &one).await;
    assert!(
        no_assignment(&mut assignments).await,
        "no task is started on a worker that handed one back"
    );
    let queued = worker.take_ready(WAIT).await;
    assert_eq!(
        queued,
        TaskKey(key(4)),
        "the new plan's task goes through its queue"
    );
    let queued = Granted::of(&worker.claim(queued).await).expect("task 4 is granted");
    for granted in [&retaken, &queued] {
        worker.report(granted, ReportedOutcome::Done).await;
    }
    assert_eq!(
        (
            cluster.metrics.direct_grants().eager_starts,
            cluster.metrics.direct_grants().hand_backs
        ),
        (2, 1)
    );

    // A heartbeat without idle slots keeps the offer withdrawn (and the worker from looking
    // silent); an idle DONE report offers the slots again.
    worker.heartbeat(0).await;
    worker
        .report(&Granted::assigned(&first), ReportedOutcome::Done)
        .await;
    worker.applied().await;
    let again = plan(153, vec![task(5, 1, &[])]);
    submit(&cluster, &rpc, &again).await;
    let fifth = next_assignment(&mut assignments).await;
    assert_eq!(fifth.grant.task_key, TaskKey(key(5)));
    worker
        .report(&Granted::assigned(&fifth), ReportedOutcome::Done)
        .await;
    for plan in [&three, &one, &again] {
        let done = cluster
            .wait_for_plan(plan.key, WAIT, "DONE", |plan| plan.status.is_terminal())
            .await;
        assert_eq!(done.status, PlanStatus::Done, "{done:?}");
    }
}

/// A task started at its plan's submission whose assignment never reaches its worker lapses
/// with its lease, though no report ever named its plan: the event applier holds the plan from
/// the submission on. It is then re-queued and run as any other.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_started_at_submission_and_lost_lapses_with_its_lease() {
    let cluster = TestCluster::start(chrono::Duration::seconds(1)).await;
    let twice = RetryPolicy {
        max_attempts: 2,
        ..no_retry()
    };
    cluster.seed(&[function(1, twice)]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let mut assignments = worker.offer_idle_slots(1).await;
    let lost = plan(154, vec![task(1, 1, &[])]);
    submit(&cluster, &rpc, &lost).await;
    // Received and dropped, as by a worker that died.
    let dropped = next_assignment(&mut assignments).await;
    assert_eq!(dropped.grant.task_key, TaskKey(key(1)));
    let retaken = worker
        .work_one(Duration::from_secs(15), &Script::Succeed)
        .await
        .expect("the lapsed task is re-queued and granted from its queue");
    assert_eq!(
        (retaken.task, retaken.attempt),
        (TaskKey(key(1)), models::Attempt(2))
    );
    let done = cluster
        .wait_for_plan(lost.key, WAIT, "DONE", |plan| plan.status.is_terminal())
        .await;
    assert_eq!(done.status, PlanStatus::Done);
}

/// A ready task whose outbox row was committed for hand-over but never handed to the relay (the
/// dispatcher that stored it died in between) is published by polling once the hand-over grace
/// lapses, and not before: until then another dispatcher may still publish it.
#[tokio::test(flavor = "multi_thread")]
async fn a_ready_task_whose_hand_over_was_lost_is_published_after_the_grace() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let lost = plan(132, vec![task(1, 1, &[])]);
    let stored_at = Utc::now();
    let mut conn = cluster.db.connect().await;
    let (_, rows) = dispatcher::submission::submit_plan_handing_over(
        &mut conn,
        &lost,
        &ORGANIZATION.into(),
        None,
        stored_at,
        None,
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "one ready task");
    // Never handed over.
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let granted = worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("published after the grace, then granted");
    assert_eq!(granted.task, TaskKey(key(1)));
    let started = cluster.tasks(lost.key).await[0]
        .start_date
        .expect("claimed");
    assert!(
        started >= stored_at + dispatcher::service::outbox_relay::HANDOVER_GRACE,
        "published at {started}, before the grace of the row stored at {stored_at} lapsed"
    );
    cluster
        .wait_for_plan(lost.key, WAIT, "DONE", |p| p.status == PlanStatus::Done)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_task_fails_the_plan_and_cancels_the_rest() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let failing = plan(
        102,
        vec![task(1, 1, &[]), task(2, 1, &[1]), task(3, 1, &[1])],
    );
    submit(&cluster, &rpc, &failing).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    worker
        .work_one(WAIT, &Script::Fail { retryable: false })
        .await
        .expect("granted");
    let failed = cluster
        .wait_for_plan(failing.key, WAIT, "FAILED", |p| {
            p.status == PlanStatus::Failed
        })
        .await;
    assert_eq!(failed.failed_task_key, Some(TaskKey(key(1))));
    assert!(failed.failure_date.is_some());
    assert_eq!(failed.counters.active_count(), 0, "no task is left to run");
    let statuses = statuses(&cluster, failing.key).await;
    assert_eq!(statuses["t1"], TaskStatus::Failed);
    assert_eq!(statuses["t2"], TaskStatus::Canceled);
    assert_eq!(statuses["t3"], TaskStatus::Canceled);
    let root = cluster
        .tasks(failing.key)
        .await
        .into_iter()
        .find(|t| t.key == TaskKey(key(1)))
        .unwrap();
    assert_eq!(root.error_type, Some(models::TaskErrorType::Execution));
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_claims_and_stale_reports_are_refused() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let single = plan(103, vec![task(1, 1, &[])]);
    submit(&cluster, &rpc, &single).await;
    let worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let other = ScriptedWorker::new(&cluster, "worker-2").await;
    let task_key = TaskKey(key(1));
    // The dispatcher publishes the task; the claim may come before that, it is TODO either way.
    let first = worker.claim(task_key).await;
    let Some(granted) = Granted::of(&first) else {
        panic!("the first claim is granted: {first:?}");
    };
    // A duplicate delivery to another worker: refused.
    let second = other.claim(task_key).await;
    assert!(matches!(second, ClaimReply::Refused { .. }), "{second:?}");

    // A report with a wrong token changes nothing.
    let forged = Granted {
        token: uuid::Uuid::new_v4(),
        ..Granted::of(&first).unwrap()
    };
    other.report(&forged, ReportedOutcome::Done).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        statuses(&cluster, single.key).await["t1"],
        TaskStatus::Doing
    );

    worker.report(&granted, ReportedOutcome::Done).await;
    cluster
        .wait_for_plan(single.key, WAIT, "DONE", |p| p.status == PlanStatus::Done)
        .await;
    // A duplicate report after the end changes nothing either.
    worker
        .report(
            &granted,
            ReportedOutcome::Failed {
                error_type: models::TaskErrorType::Execution,
                message: "late".into(),
                retryable: false,
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.plan(single.key).await.status, PlanStatus::Done);
}

/// Lines `from..to` of a log, as a worker sends them.
fn log_records(from: u64, to: u64) -> Vec<models::wire::LogRecord> {
    (from..to)
        .map(|seq| models::wire::LogRecord {
            seq,
            step: Some(0),
            stream: models::LogStream::Stdout,
            timestamp: Utc::now(),
            text: format!("line {seq}"),
            truncated: false,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_lines_of_a_report_are_kept_only_from_the_lease_holder() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let single = plan(104, vec![task(1, 1, &[])]);
    submit(&cluster, &rpc, &single).await;
    let worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let task_key = TaskKey(key(1));
    let Some(granted) = Granted::of(&worker.claim(task_key).await) else {
        panic!("the claim is granted");
    };
    // A report under a forged token: neither its status nor its lines are kept.
    let forged = Granted {
        task: task_key,
        attempt: granted.attempt,
        token: uuid::Uuid::new_v4(),
        outputs: Vec::new(),
    };
    worker
        .report_with_logs(&forged, ReportedOutcome::Done, log_records(0, 3))
        .await;
    // The holder's report carries its last lines, after a batch published on its own.
    let batch = models::wire::LogBatch {
        task_key,
        attempt: granted.attempt,
        lease_token: granted.token,
        lines: log_records(0, 2),
    };
    let events = broker::Publisher::new(&client).await.unwrap();
    events
        .publish(
            broker::topology::EVENTS_EXCHANGE,
            &broker::topology::task_event_key(task_key, "log"),
            &batch,
            broker::envelope::Meta::default(),
        )
        .await
        .unwrap();
    worker
        .report_with_logs(&granted, ReportedOutcome::Done, log_records(2, 5))
        .await;
    cluster
        .wait_for_plan(single.key, WAIT, "DONE", |p| p.status == PlanStatus::Done)
        .await;
    let mut conn = cluster.db.connect().await;
    let lines = dispatcher::store::execution::list_log_lines(&mut conn, task_key, 100, 0)
        .await
        .unwrap();
    let texts: Vec<(u64, String)> = lines.iter().map(|l| (l.seq, l.text.clone())).collect();
    assert_eq!(
        texts,
        (0..5)
            .map(|seq| (seq, format!("line {seq}")))
            .collect::<Vec<_>>(),
        "the batch's lines, then the report's, and none of the forged report's"
    );
    assert!(lines.iter().all(|l| l.attempt == granted.attempt));
    // The report's output data is stored with its DONE status.
    let done = &cluster.tasks(single.key).await[0];
    assert_eq!(done.output, serde_json::json!({"by": "worker-1"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_and_status_batches_are_answered_and_applied_task_by_task() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let pair = plan(105, vec![task(1, 1, &[]), task(2, 1, &[])]);
    submit(&cluster, &rpc, &pair).await;
    // Registered (as ScriptedWorker does) so that its claims can be granted.
    let _worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let worker_rpc = RpcClient::new(&cluster.client("worker-1").await)
        .await
        .unwrap();
    let claim = |worker: &str, tasks: Vec<TaskKey>| models::wire::ClaimBatch {
        worker_id: worker.into(),
        task_keys: tasks,
    };
    let (t1, t2, unknown) = (TaskKey(key(1)), TaskKey(key(2)), TaskKey(key(99)));
    let reply: models::wire::ClaimBatchReply = worker_rpc
        .call(
            broker::topology::EVENTS_EXCHANGE,
            "worker.worker-1.claim",
            &claim("worker-1", vec![t1, t2, t1, unknown]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let answers: Vec<(TaskKey, bool)> = reply
        .replies
        .iter()
        .map(|reply| {
            (
                reply.task_key(),
                matches!(reply, ClaimReply::Granted { .. }),
            )
        })
        .collect();
    assert_eq!(
        answers,
        vec![(t1, true), (t2, true), (t1, false), (unknown, false)],
        "in the batch's order: both tasks granted, the repeated one and the unknown one refused"
    );
    let statuses = statuses(&cluster, pair.key).await;
    assert_eq!(
        (statuses["t1"], statuses["t2"]),
        (TaskStatus::Doing, TaskStatus::Doing)
    );

    // A worker that never registered is refused every task, still in one reply; so is a batch
    // naming a worker other than the one of its routing key.
    for (routing_key, worker, refusal) in [
        ("worker.worker-9.claim", "worker-9", "not registered"),
        (
            "worker.worker-1.claim",
            "worker-9",
            "must be published as `worker.worker-9.claim`",
        ),
    ] {
        let refused: models::wire::ClaimBatchReply = worker_rpc
            .call(
                broker::topology::EVENTS_EXCHANGE,
                routing_key,
                &claim(worker, vec![t1, t2]),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let tasks: Vec<TaskKey> = refused.replies.iter().map(ClaimReply::task_key).collect();
        assert_eq!(tasks, vec![t1, t2]);
        assert!(
            refused
                .replies
                .iter()
                .all(|reply| matches!(reply, ClaimReply::Refused { reason, .. } if reason.contains(refusal))),
            "{refused:?}"
        );
    }

    // A single claim is held to the same rule: refused under a task's key, and under a key
    // of another worker than the one it names.
    for (routing_key, worker) in [
        (broker::topology::task_event_key(t1, "claim"), "worker-1"),
        ("worker.worker-1.claim".to_owned(), "worker-9"),
    ] {
        let request = models::wire::ClaimRequest {
            task_key: t1,
            worker_id: worker.into(),
        };
        let refused: ClaimReply = worker_rpc
            .call(
                broker::topology::EVENTS_EXCHANGE,
                &routing_key,
                &request,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let expected = format!("must be published as `worker.{worker}.claim`, not `{routing_key}`");
        assert!(
            matches!(&refused, ClaimReply::Refused { task_key, reason } if *task_key == t1 && reason.contains(&expected)),
            "{refused:?}"
        );
    }

    // Both ends in one status batch, after a forged report that changes nothing.
    let report = |granted: &Granted, logs| TaskStatusReport {
        task_key: granted.task,
        attempt: granted.attempt,
        lease_token: granted.token,
        worker_id: "worker-1".into(),
        outcome: ReportedOutcome::Done,
        steps: Vec::new(),
        output: serde_json::json!({"task": granted.task.to_string()}),
        outputs: granted.outputs(),
        logs,
        follow_up: false,
        idle_slots: 0,
        started_next: None,
        awaits_work: false,
        on_deck: 0,
    };
    let first = Granted::of(&reply.replies[0]).unwrap();
    let second = Granted::of(&reply.replies[1]).unwrap();
    let forged = Granted {
        token: uuid::Uuid::new_v4(),
        ..Granted::of(&reply.replies[0]).unwrap()
    };
    let batch = models::wire::StatusBatch {
        reports: vec![
            TaskStatusReport {
                outcome: ReportedOutcome::Canceled,
                ..report(&forged, log_records(7, 8))
            },
            report(&first, log_records(0, 2)),
            report(&second, Vec::new()),
        ],
    };
    broker::Publisher::new(&cluster.client("worker-1").await)
        .await
        .unwrap()
        .publish(
            broker::topology::EVENTS_EXCHANGE,
            "worker.worker-1.status",
            &batch,
            broker::envelope::Meta::default(),
        )
        .await
        .unwrap();
    cluster
        .wait_for_plan(pair.key, WAIT, "DONE", |p| p.status == PlanStatus::Done)
        .await;
    for task in cluster.tasks(pair.key).await {
        assert_eq!(
            task.output,
            serde_json::json!({"task": task.key.to_string()})
        );
    }
    let mut conn = cluster.db.connect().await;
    let lines = dispatcher::store::execution::list_log_lines(&mut conn, t1, 100, 0)
        .await
        .unwrap();
    let seqs: Vec<u64> = lines.iter().map(|line| line.seq).collect();
    assert_eq!(
        seqs,
        vec![0, 1],
        "the holder's lines, not the forged report's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_lease_requeues_the_task_for_another_worker() {
    let cluster = TestCluster::start(chrono::Duration::seconds(1)).await;
    cluster
        .seed(&[function(
            1,
            RetryPolicy {
                max_attempts: 3,
                ..no_retry()
            },
        )])
        .await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let single = plan(104, vec![task(1, 1, &[])]);
    submit(&cluster, &rpc, &single).await;
    let mut silent = ScriptedWorker::new(&cluster, "worker-silent").await;
    let mut healthy = ScriptedWorker::new(&cluster, "worker-healthy").await;
    let first = silent
        .work_one(WAIT, &Script::Vanish)
        .await
        .expect("granted");
    assert_eq!(first.attempt, models::Attempt(1));
    // The lease lapses after a second; the task is published again.
    let second = healthy
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("granted again");
    assert_eq!(second.attempt, models::Attempt(2));
    cluster
        .wait_for_plan(single.key, WAIT, "DONE", |p| p.status == PlanStatus::Done)
        .await;
    // The silent worker's late report is refused.
    silent
        .report(
            &first,
            ReportedOutcome::Failed {
                error_type: models::TaskErrorType::Execution,
                message: "late".into(),
                retryable: false,
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = cluster.tasks(single.key).await;
    assert_eq!(
        (stored[0].status, stored[0].attempt_count),
        (TaskStatus::Done, 2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retryable_failure_is_retried_after_its_backoff() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster
        .seed(&[function(
            1,
            RetryPolicy {
                max_attempts: 2,
                backoff_initial_ms: 200,
                backoff_max_ms: 200,
                jitter: false,
            },
        )])
        .await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let single = plan(105, vec![task(1, 1, &[])]);
    submit(&cluster, &rpc, &single).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    worker
        .work_one(WAIT, &Script::Fail { retryable: true })
        .await
        .expect("granted");
    let retried = worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("granted again");
    assert_eq!(retried.attempt, models::Attempt(2));
    let done = cluster
        .wait_for_plan(single.key, WAIT, "DONE", |p| p.status == PlanStatus::Done)
        .await;
    assert!(done.failure_date.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_submissions_are_answered_with_every_problem_and_resubmissions_are_idempotent() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let mut bad = plan(106, vec![task(1, 404, &[]), task(2, 1, &[77])]);
    bad.name = String::new();
    let reply = cluster.submit(&rpc, &bad).await;
    let SubmissionReply::Rejected { error, details, .. } = reply else {
        panic!("refused: {reply:?}");
    };
    assert_eq!(error, "invalid_submission");
    let paths: Vec<&str> = details.iter().map(|d| d.path.as_str()).collect();
    assert!(paths.contains(&"name"), "{paths:?}");
    assert!(paths.contains(&"tasks[0].function_key"), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.starts_with("tasks[1].inputs[0]")),
        "{paths:?}"
    );
    let conn = cluster.db.connect().await;
    assert!(
        dispatcher::store::plans::find_plan(&conn, bad.key)
            .await
            .unwrap()
            .is_none()
    );

    let good = plan(107, vec![task(1, 1, &[])]);
    let first = cluster.submit(&rpc, &good).await;
    let again = cluster.submit(&rpc, &good).await;
    assert_eq!(first, again, "the same content gets the same answer");
    let mut other = good.clone();
    other.name = "something else".into();
    let conflict = cluster.submit(&rpc, &other).await;
    assert!(
        matches!(&conflict, SubmissionReply::Rejected { error, .. } if error == "already_exists"),
        "{conflict:?}"
    );
    assert_eq!(cluster.tasks(good.key).await.len(), 1);
}

/// Seeds function 1 and submits plan `n`, a chain of tasks `first`, `first + 1` and
/// `first + 2`; returns it once a new worker did its first task.
async fn chain_with_its_first_task_done(
    cluster: &TestCluster,
    n: u128,
    first: u128,
) -> (PlanSubmission, ScriptedWorker) {
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let chain = plan(
        n,
        vec![
            task(first, 1, &[]),
            task(first + 1, 1, &[first]),
            task(first + 2, 1, &[first + 1]),
        ],
    );
    submit(cluster, &rpc, &chain).await;
    let mut worker = ScriptedWorker::new(cluster, "worker-1").await;
    worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("granted");
    cluster
        .wait_for_plan(chain.key, WAIT, "one task done", |p| {
            p.counters.done_count == 1
        })
        .await;
    (chain, worker)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_dispatcher_restarts_and_finishes_the_plan() {
    let mut cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    let (chain, mut worker) = chain_with_its_first_task_done(&cluster, 108, 1).await;
    cluster.kill_dispatcher().await;
    cluster.start_dispatcher();
    run_to_end(&cluster, &mut worker, chain.key, &Script::Succeed).await;
    let done = cluster.plan(chain.key).await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 3)
    );
    let mut conn = cluster.db.connect().await;
    for task in cluster.tasks(chain.key).await {
        assert_eq!(times_done(&mut conn, task.key).await, 1);
    }
    assert!(
        tasks::next_outbox_rows(&mut conn, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A function with one required, single model input and a model output, for input rules.
fn single_input_function(n: u128) -> Function {
    let mut single = function(n, no_retry());
    single.inputs = vec![FunctionInput {
        identifier: "model".into(),
        kind: InputKind::Model,
        multiple: false,
        optional: false,
    }];
    single.outputs = vec![
        FunctionOutput {
            identifier: "model".into(),
            kind: OutputKind::Model,
            multiple: false,
        },
        FunctionOutput {
            identifier: "models".into(),
            kind: OutputKind::Model,
            multiple: true,
        },
    ];
    single
}

fn parent_input(identifier: &str, parent: u128, output: &str) -> TaskInput {
    TaskInput {
        identifier: identifier.into(),
        source: InputRef::ParentOutput {
            parent_task_key: TaskKey(key(parent)),
            parent_task_output_identifier: output.into(),
        },
    }
}

/// A task of the single-input function `2`, with all its outputs, fed by `parent`'s `output`.
fn single_task(n: u128, parent: u128, output: &str) -> NewTask {
    let mut fed = task(n, 2, &[]);
    fed.inputs = vec![parent_input("model", parent, output)];
    fed.outputs.insert(
        "models".into(),
        TaskOutput {
            permissions: Permissions::private(&ORGANIZATION.into()),
            transient: false,
        },
    );
    fed
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_kinds_of_invalid_submission_are_each_answered_and_store_nothing() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster
        .seed(&[function(1, no_retry()), single_input_function(2)])
        .await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();

    type Mutation = Box<dyn Fn(&mut PlanSubmission)>;
    let root = || task(1, 1, &[]);
    let cases: Vec<(&str, Mutation, &str, &str)> = vec![
        (
            "empty name",
            Box::new(|p| p.name = String::new()),
            "name",
            "must not be empty",
        ),
        (
            "long name",
            Box::new(|p| p.name = "n".repeat(101)),
            "name",
            "at most 100",
        ),
        (
            "long tag",
            Box::new(|p| p.tag = "t".repeat(101)),
            "tag",
            "at most 100",
        ),
        (
            "reserved metadata key",
            Box::new(|p| {
                p.metadata.insert("__tag__".into(), "x".into());
            }),
            "metadata",
            "\"__\"",
        ),
        (
            "long metadata value",
            Box::new(|p| {
                p.metadata.insert("k".into(), "v".repeat(101));
            }),
            "metadata",
            "bytes long",
        ),
        (
            "no task",
            Box::new(|p| p.tasks.clear()),
            "tasks",
            "no task to register",
        ),
        (
            "duplicate task key",
            Box::new(move |p| p.tasks.push(root())),
            "tasks[1].key",
            "",
        ),
        (
            "unknown function",
            Box::new(|p| p.tasks[0].function_key = FunctionKey(key(404))),
            "tasks[0].function_key",
            "not found",
        ),
        (
            "unknown input",
            Box::new(|p| {
                p.tasks.push({
                    let mut t = task(2, 1, &[]);
                    t.inputs = vec![parent_input("weights", 1, "model")];
                    t
                })
            }),
            "tasks[1].inputs[0].identifier",
            "has no input",
        ),
        (
            "single input given twice",
            Box::new(|p| {
                p.tasks.push({
                    let mut t = single_task(2, 1, "model");
                    t.inputs.push(parent_input("model", 1, "model"));
                    t
                })
            }),
            "tasks[1].inputs[1].identifier",
            "not multiple",
        ),
        (
            "missing required input",
            Box::new(|p| {
                p.tasks.push({
                    let mut t = single_task(2, 1, "model");
                    t.inputs.clear();
                    t
                })
            }),
            "tasks[1].inputs",
            "model",
        ),
        (
            "unknown parent",
            Box::new(|p| p.tasks.push(task(2, 1, &[77]))),
            "tasks",
            "unknown parent or cycle",
        ),
        (
            "cycle",
            Box::new(|p| {
                p.tasks.push(task(2, 1, &[3]));
                p.tasks.push(task(3, 1, &[2]));
            }),
            "tasks",
            "unknown parent or cycle",
        ),
        (
            "parent output not declared",
            Box::new(|p| {
                p.tasks.push({
                    let mut t = task(2, 1, &[]);
                    t.inputs = vec![parent_input("models", 1, "weights")];
                    t
                })
            }),
            "tasks[1].inputs[0]",
            "no output \"weights\"",
        ),
        (
            "multiple output into a single input",
            Box::new(|p| {
                p.tasks.push(single_task(2, 1, "model"));
                p.tasks.push(single_task(3, 2, "models"));
            }),
            "tasks[2].inputs[0]",
            "is multiple",
        ),
        (
            "unknown output",
            Box::new(|p| {
                p.tasks[0].outputs.insert(
                    "extra".into(),
                    TaskOutput {
                        permissions: Permissions::private(&ORGANIZATION.into()),
                        transient: false,
                    },
                );
            }),
            "tasks[0].outputs",
            "extra",
        ),
        (
            "missing output",
            Box::new(|p| p.tasks[0].outputs.clear()),
            "tasks[0].outputs",
            "model",
        ),
        (
            "unknown parameter",
            Box::new(|p| {
                p.tasks[0]
                    .parameters
                    .insert("speed".into(), serde_json::json!(1));
            }),
            "tasks[0].parameters",
            "speed",
        ),
        (
            "no worker",
            Box::new(|p| p.tasks[0].worker = None),
            "tasks[0].worker",
            "must be set",
        ),
        (
            "unknown worker organization",
            Box::new(|p| p.tasks[0].worker = Some("org-z".into())),
            "tasks[0].worker",
            "unknown organization",
        ),
        (
            "unknown model asset",
            Box::new(|p| {
                p.tasks[0].inputs = vec![TaskInput {
                    identifier: "models".into(),
                    source: InputRef::Asset {
                        asset_key: key(999),
                    },
                }]
            }),
            "tasks[0].inputs[0]",
            "not found",
        ),
        (
            "parameters nested too deep",
            Box::new(|p| {
                let mut deep = serde_json::json!(1);
                for _ in 0..40 {
                    deep = serde_json::json!([deep]);
                }
                p.tasks[0].parameters.insert("x".into(), deep);
            }),
            "tasks[0].parameters",
            "deeper",
        ),
    ];
    assert!(cases.len() >= 20);
    for (index, (name, mutate, path, message)) in cases.iter().enumerate() {
        let mut submission = plan(200 + index as u128, vec![root()]);
        mutate(&mut submission);
        let reply = cluster.submit(&rpc, &submission).await;
        let SubmissionReply::Rejected {
            error,
            details,
            compute_plan_key,
        } = &reply
        else {
            panic!("{name}: accepted: {reply:?}");
        };
        assert_eq!(error, "invalid_submission", "{name}");
        assert_eq!(*compute_plan_key, Some(submission.key), "{name}");
        assert!(
            details
                .iter()
                .any(|d| d.path.starts_with(path) && d.message.contains(message)),
            "{name}: no error at {path} mentioning {message:?}: {details:#?}"
        );
        let conn = cluster.db.connect().await;
        assert!(
            dispatcher::store::plans::find_plan(&conn, submission.key)
                .await
                .unwrap()
                .is_none(),
            "{name}: nothing stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_dispatcher_does_not_lapse_leases_the_active_one_renews() {
    // A standby holds no plan the active dispatcher changes: were it to load the running plans
    // at its start and watch their leases, it would lapse a lease the active one renewed since.
    let cluster = TestCluster::start(chrono::Duration::seconds(2)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(125, vec![task(18, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let granted = worker
        .work_one(WAIT, &Script::Vanish)
        .await
        .expect("granted");
    let standby = cluster.start_standby().await;
    // Renewed well within the lease, for twice its length.
    for _ in 0..16 {
        worker.renew(&[&granted]).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!standby.is_finished(), "the standby runs");
    let stored = cluster.tasks(first.key).await;
    assert_eq!(
        (stored[0].status, stored[0].attempt_count),
        (TaskStatus::Doing, 1),
        "the renewed attempt runs on"
    );
    let mut conn = cluster.db.connect().await;
    let history: Vec<(TaskStatus, String)> = tasks::list_state_changes(&mut conn, granted.task)
        .await
        .unwrap()
        .into_iter()
        .map(|change| (change.status, change.reason))
        .collect();
    let claimed = history
        .iter()
        .position(|(status, _)| *status == TaskStatus::Doing)
        .expect("claimed");
    assert_eq!(
        claimed,
        history.len() - 1,
        "no lapse was ever written: {history:?}"
    );
    worker.report(&granted, ReportedOutcome::Done).await;
    cluster
        .wait_for_plan(first.key, WAIT, "done", |p| p.status == PlanStatus::Done)
        .await;
}

/// The lead's epoch and holder (`dispatcher_leadership`).
async fn lead(conn: &mut diesel_async::AsyncPgConnection) -> (i64, String) {
    #[derive(diesel::QueryableByName)]
    struct Lead {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        epoch: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        holder: String,
    }
    let lead: Lead = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("SELECT epoch, holder FROM dispatcher_leadership"),
        conn,
    )
    .await
    .unwrap();
    (lead.epoch, lead.holder)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatcher_that_lost_the_lead_writes_nothing_and_reads_its_plans_anew() {
    // Another dispatcher takes the lead (as when RabbitMQ gives it `baton.dispatcher` after
    // this one's connection dropped) and renews a lease this one holds in memory. This one's
    // tick, due to lapse it, finds the lead gone: it writes nothing and forgets its plans.
    // Still the queue's active consumer, it receives its own ping for the lead, takes it back
    // and reads the plan as stored.
    let cluster = TestCluster::start(chrono::Duration::seconds(2)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(126, vec![task(19, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let granted = worker
        .work_one(WAIT, &Script::Vanish)
        .await
        .expect("granted");

    let mut conn = cluster.db.connect().await;
    let taken = dispatcher::store::leadership::take(&mut conn, "another-dispatcher", Utc::now())
        .await
        .unwrap();
    execute(
        &mut conn,
        &format!(
            "UPDATE tasks SET lease_expires_at = now() + interval '60 seconds' WHERE key = '{}'",
            granted.task
        ),
    )
    .await;
    // Past the lease as this dispatcher holds it, and a tick more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history: Vec<TaskStatus> = tasks::list_state_changes(&mut conn, granted.task)
        .await
        .unwrap()
        .into_iter()
        .map(|change| change.status)
        .collect();
    assert_eq!(
        history.last(),
        Some(&TaskStatus::Doing),
        "nothing written without the lead: {history:?}"
    );
    assert_eq!(
        history.iter().filter(|s| **s == TaskStatus::Doing).count(),
        1,
        "{history:?}"
    );
    assert!(
        cluster.metrics.batch_retries() >= 1,
        "the tick was rolled back"
    );

    worker.report(&granted, ReportedOutcome::Done).await;
    cluster
        .wait_for_plan(first.key, WAIT, "done", |p| p.status == PlanStatus::Done)
        .await;
    let (epoch, holder) = lead(&mut conn).await;
    assert_eq!(epoch, taken + 1, "taken back once");
    assert_eq!(holder, "baton-dispatcher");
    assert!(cluster.metrics.leading());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_the_lead_when_the_active_dispatcher_loses_its_connection() {
    // RabbitMQ closes the active dispatcher's connection (as an operator, or a network fault,
    // would): the standby is given `baton.dispatcher`, takes the lead and finishes the chain;
    // the first, reconnected as a standby, writes nothing. Each task is done once.
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    let standby = cluster.start_standby().await;
    let (chain, mut worker) = chain_with_its_first_task_done(&cluster, 127, 20).await;

    let closed = cluster
        .broker
        .close_connections_named(1, Some("baton-dispatcher"))
        .await;
    assert!(closed >= 1, "the active dispatcher's connection was closed");
    run_to_end(&cluster, &mut worker, chain.key, &Script::Succeed).await;
    assert_eq!(cluster.plan(chain.key).await.status, PlanStatus::Done);
    assert!(!standby.is_finished(), "the standby runs");

    let mut conn = cluster.db.connect().await;
    for task in cluster.tasks(chain.key).await {
        let done = times_done(&mut conn, task.key).await;
        assert_eq!((done, task.attempt_count), (1, 1), "{:?}", task.name);
    }
    assert_eq!(lead(&mut conn).await.1, "baton-dispatcher-standby");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_dispatcher_takes_over_when_the_active_one_dies() {
    let mut cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    let standby = cluster.start_standby().await;
    let (chain, mut worker) = chain_with_its_first_task_done(&cluster, 109, 1).await;
    // Two consumers on baton.dispatcher, one active.
    let queue = cluster.broker.queue_info("baton.dispatcher").await;
    assert_eq!(queue["arguments"]["x-single-active-consumer"], true);
    cluster.kill_dispatcher().await;
    run_to_end(&cluster, &mut worker, chain.key, &Script::Succeed).await;
    let done = cluster.plan(chain.key).await;
    assert_eq!(
        (done.status, done.counters.done_count),
        (PlanStatus::Done, 3)
    );
    assert!(!standby.is_finished(), "the standby is still running");
    standby.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_register_are_refused_when_already_active_and_go_inactive_when_silent() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[]).await;
    let client = cluster.client("worker-x").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let reply = register(&rpc, "worker-x", ORGANIZATION).await;
    assert!(
        matches!(
            reply,
            RegistrationReply::Registered {
                heartbeat_interval_secs: 1,
                refills: true,
                ..
            }
        ),
        "{reply:?}"
    );
    let mut conn = cluster.db.connect().await;
    let stored = workers::find_worker(&mut conn, &"worker-x".into())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.is_active);
    assert_eq!(
        stored.owner.as_str(),
        "guest",
        "owned by the RabbitMQ user it connects as"
    );
    assert_eq!(
        stored.properties.get("device").map(String::as_str),
        Some("lucidac")
    );
    assert_eq!(
        stored.properties.get("os").map(String::as_str),
        Some("linux")
    );
    let devices = workers::list_devices(&mut conn, &"worker-x".into())
        .await
        .unwrap();
    assert_eq!(devices.len(), 1);

    // The same identifier while it is active: refused.
    let again = register(&rpc, "worker-x", ORGANIZATION).await;
    assert!(
        matches!(&again, RegistrationReply::Refused { reason, .. } if reason.contains("already active")),
        "{again:?}"
    );
    // An unknown organization: refused.
    let stranger = register(&rpc, "worker-y", "org-nowhere").await;
    assert!(
        matches!(stranger, RegistrationReply::Refused { .. }),
        "{stranger:?}"
    );

    // Silent for three heartbeat intervals: inactive; then it may register again.
    let deadline = tokio::time::Instant::now() + WAIT;
    while workers::find_worker(&mut conn, &"worker-x".into())
        .await
        .unwrap()
        .unwrap()
        .is_active
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent worker stays active"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = register(&rpc, "worker-x", ORGANIZATION).await;
    assert!(
        matches!(back, RegistrationReply::Registered { .. }),
        "{back:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn canceling_a_running_plan_leaves_no_task_that_can_still_run() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("operator").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let running = plan(
        110,
        vec![task(1, 1, &[]), task(2, 1, &[]), task(3, 1, &[1, 2])],
    );
    submit(&cluster, &rpc, &running).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    // One task runs (its worker holds it), the others wait or are ready.
    let held = worker
        .work_one(WAIT, &Script::Vanish)
        .await
        .expect("granted");

    let cancel = |key: PlanKey| CancelRequest::Plan {
        compute_plan_key: key,
        reason: "operator asked".into(),
    };
    // Sent under an id of the producer's own, so that sending it again is recognized.
    let cancel_once = async || -> CancelReply {
        rpc.call_with_message_id(
            SUBMIT_EXCHANGE,
            CancelRequest::KIND,
            &cancel(running.key),
            "operator-cancel-110".to_owned(),
            WAIT,
        )
        .await
        .unwrap()
    };
    let reply = cancel_once().await;
    assert_eq!(reply, CancelReply::Accepted);
    let canceled = cluster
        .wait_for_plan(running.key, WAIT, "canceling", |p| {
            p.cancelation_date.is_some()
        })
        .await;
    assert_eq!(
        canceled.counters.doing_count, 1,
        "the running task was ordered to stop"
    );
    let holding = cluster
        .tasks(running.key)
        .await
        .into_iter()
        .find(|t| t.key == held.task)
        .unwrap();
    assert!(holding.cancel_requested);

    // The worker obeys the order.
    worker.report(&held, ReportedOutcome::Canceled).await;
    // The plan reads CANCELED from its cancelation on; it has ended once its last task has.
    let ended = cluster
        .wait_for_plan(running.key, WAIT, "ended", |p| {
            p.counters.active_count() == 0
        })
        .await;
    assert_eq!(ended.status, PlanStatus::Canceled);
    assert!(ended.end_date.is_some());
    assert_eq!(ended.counters.canceled_count, 3);

    // The same request again (a redelivery, a retry) gets the same answer, although a new one
    // would now be refused.
    assert_eq!(cancel_once().await, CancelReply::Accepted);
    // A second cancel is refused: the plan is already terminated.
    let again: CancelReply = rpc
        .call(
            SUBMIT_EXCHANGE,
            CancelRequest::KIND,
            &cancel(running.key),
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        matches!(&again, CancelReply::Refused { reason } if reason.contains("terminated")),
        "{again:?}"
    );
    // And an unknown plan is named.
    let unknown: CancelReply = rpc
        .call(
            SUBMIT_EXCHANGE,
            CancelRequest::KIND,
            &cancel(PlanKey(key(999))),
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        matches!(unknown, CancelReply::Refused { .. }),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_added_to_a_finished_plan_run_it_again() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(111, vec![task(1, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    run_to_end(&cluster, &mut worker, first.key, &Script::Succeed).await;
    let done = cluster.plan(first.key).await;
    assert_eq!(done.status, PlanStatus::Done);
    assert!(done.end_date.is_some());

    let add = |tasks: Vec<NewTask>| AddTasks {
        compute_plan_key: first.key,
        tasks,
    };
    // An invalid addition is refused whole.
    let refused: SubmissionReply = rpc
        .call(
            SUBMIT_EXCHANGE,
            AddTasks::KIND,
            &add(vec![task(2, 1, &[1]), task(3, 1, &[77])]),
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        matches!(&refused, SubmissionReply::Rejected { error, .. } if error == "invalid_submission"),
        "{refused:?}"
    );
    assert_eq!(cluster.tasks(first.key).await.len(), 1, "nothing stored");

    // Two tasks after the stored one: the plan runs again and ends DONE.
    let addition = add(vec![task(2, 1, &[1]), task(3, 1, &[2])]);
    let accepted: SubmissionReply = rpc
        .call(SUBMIT_EXCHANGE, AddTasks::KIND, &addition, WAIT)
        .await
        .unwrap();
    let SubmissionReply::Accepted {
        task_count, status, ..
    } = accepted
    else {
        panic!("refused: {accepted:?}");
    };
    assert_eq!(task_count, 3);
    assert_ne!(status, PlanStatus::Done, "the plan runs again");
    let again: SubmissionReply = rpc
        .call(SUBMIT_EXCHANGE, AddTasks::KIND, &addition, WAIT)
        .await
        .unwrap();
    assert_eq!(again, accepted, "the same tasks again get the same answer");

    run_to_end(&cluster, &mut worker, first.key, &Script::Succeed).await;
    let finished = cluster.plan(first.key).await;
    assert_eq!(
        (finished.status, finished.counters.done_count),
        (PlanStatus::Done, 3)
    );
    let ranks: BTreeMap<String, u32> = cluster
        .tasks(first.key)
        .await
        .into_iter()
        .map(|task| (task.name.unwrap_or_default(), task.rank))
        .collect();
    assert_eq!(ranks["t3"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn assets_registered_over_amqp_are_used_by_a_plan() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[]).await;
    // Registering organizations is an administrator's.
    cluster.grant("guest", &[models::Role::Administrator]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    async fn register<M: WireMessage>(rpc: &RpcClient, message: &M) -> AssetReply {
        rpc.call(SUBMIT_EXCHANGE, M::KIND, message, WAIT)
            .await
            .unwrap()
    }
    let accepted = |reply: &AssetReply| matches!(reply, AssetReply::Accepted { .. });

    let project = NewProject {
        identifier: "fl".into(),
        display_name: "Federated".into(),
        services: serde_json::Map::new(),
    };
    assert!(accepted(&register(&rpc, &project).await));
    let org = NewOrganization {
        id: "org-c".into(),
        address: None,
    };
    assert!(accepted(&register(&rpc, &org).await));
    let again = register(&rpc, &org).await;
    assert!(
        matches!(&again, AssetReply::Rejected { error, .. } if error == "already_exists"),
        "{again:?}"
    );

    // A function as a producer writes it: JSON.
    let function: NewFunction = serde_json::from_value(serde_json::json!({
        "key": key(1),
        "name": "train",
        "project": "fl",
        "permissions": {"process": {"public": true, "authorized_ids": []}},
        "inputs": [
            {"identifier": "opener", "kind": "DATA_MANAGER"},
            {"identifier": "datasamples", "kind": "DATA_SAMPLE", "multiple": true},
        ],
        "outputs": [{"identifier": "model", "kind": "MODEL"}],
        "steps": [{"name": "train", "command": ["python3", "train.py"]}],
    }))
    .unwrap();
    let reply = register(&rpc, &function).await;
    assert_eq!(
        reply,
        AssetReply::Accepted {
            keys: vec![key(1).to_string()]
        }
    );
    let mut broken = function.clone();
    broken.key = FunctionKey(key(2));
    broken.name = String::new();
    broken.outputs[0].identifier = "x".repeat(101);
    let reply = register(&rpc, &broken).await;
    let AssetReply::Rejected { error, details } = &reply else {
        panic!("accepted: {reply:?}");
    };
    assert_eq!(error, "invalid");
    assert_eq!(details.len(), 2, "{details:?}");
    let mut building = function.clone();
    building.key = FunctionKey(key(3));
    building.build_steps = vec![models::Step {
        timeout_secs: None,
        name: "build".into(),
        command: vec!["make".into()],
    }];
    // A function with build steps waits for its build.
    assert!(accepted(&register(&rpc, &building).await));
    let mut conn = cluster.db.connect().await;
    let stored = dispatcher::store::catalog::find_function(&mut conn, FunctionKey(key(3)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, FunctionStatus::Waiting);
    drop(conn);

    let checksum = crate::support::fixtures::checksum("opener");
    let dataset: NewDataset = serde_json::from_value(serde_json::json!({
        "key": key(20),
        "name": "scans",
        "permissions": {"process": {"public": false, "authorized_ids": []}},
        "type": "images",
        "opener": {"checksum": checksum, "storage_address": "file:///opener.py"},
        "description": {"checksum": checksum, "storage_address": "file:///README.md"},
        "logs_permission": {"public": false, "authorized_ids": []},
    }))
    .unwrap();
    assert!(accepted(&register(&rpc, &dataset).await));
    let samples = NewDataSamples {
        samples: vec![
            NewDataSample {
                key: key(21).into(),
                path: Some("/data/1".into()),
                data_manager_keys: vec![key(20).into()],
            },
            NewDataSample {
                key: key(22).into(),
                path: None,
                data_manager_keys: vec![key(20).into()],
            },
        ],
    };
    assert!(accepted(&register(&rpc, &samples).await));
    let orphans = NewDataSamples {
        samples: vec![NewDataSample {
            key: key(23).into(),
            path: None,
            data_manager_keys: vec![key(404).into()],
        }],
    };
    let reply = register(&rpc, &orphans).await;
    assert!(
        matches!(&reply, AssetReply::Rejected { details, .. } if details[0].path == "samples[0].data_manager_keys[0]"),
        "{reply:?}"
    );

    // A plan on the registered assets runs to its end.
    let train = NewTask {
        key: TaskKey(key(40)),
        function_key: FunctionKey(key(1)),
        name: Some("t40".into()),
        inputs: vec![
            TaskInput {
                identifier: "opener".into(),
                source: InputRef::Asset { asset_key: key(20) },
            },
            TaskInput {
                identifier: "datasamples".into(),
                source: InputRef::Asset { asset_key: key(21) },
            },
            TaskInput {
                identifier: "datasamples".into(),
                source: InputRef::Asset { asset_key: key(22) },
            },
        ],
        outputs: BTreeMap::from([(
            "model".to_owned(),
            TaskOutput {
                permissions: Permissions::private(&ORGANIZATION.into()),
                transient: false,
            },
        )]),
        parameters: serde_json::Map::new(),
        metadata: Metadata::new(),
        tag: String::new(),
        worker: None,
        requirements: RequirementSet::any(),
        input_type: None,
        input: serde_json::Value::Null,
    };
    let submission = plan(112, vec![train]);
    submit(&cluster, &rpc, &submission).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    run_to_end(&cluster, &mut worker, submission.key, &Script::Succeed).await;
    let done = cluster.plan(submission.key).await;
    assert_eq!(done.status, PlanStatus::Done);
    let stored = cluster.tasks(submission.key).await;
    assert_eq!(
        stored[0].worker.as_str(),
        ORGANIZATION,
        "the data manager's owner runs it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_waits_for_its_parent_in_another_plan() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(113, vec![task(1, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    // Two plans that follow task 1 of the first: one will see it DONE, the other FAILED.
    let second = plan(114, vec![task(2, 1, &[1])]);
    submit(&cluster, &rpc, &second).await;
    assert_eq!(
        statuses(&cluster, second.key).await["t2"],
        TaskStatus::Waiting
    );

    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    worker
        .work_one(WAIT, &Script::Succeed)
        .await
        .expect("the parent is granted");
    cluster
        .wait_for_plan(second.key, WAIT, "ready", |p| p.counters.todo_count == 1)
        .await;
    run_to_end(&cluster, &mut worker, second.key, &Script::Succeed).await;
    assert_eq!(cluster.plan(second.key).await.status, PlanStatus::Done);

    // A parent that fails leaves its children in other plans nothing to wait for.
    let third = plan(115, vec![task(3, 1, &[])]);
    submit(&cluster, &rpc, &third).await;
    let fourth = plan(116, vec![task(4, 1, &[3])]);
    submit(&cluster, &rpc, &fourth).await;
    worker
        .work_one(WAIT, &Script::Fail { retryable: false })
        .await
        .expect("granted");
    let orphaned = cluster
        .wait_for_plan(fourth.key, WAIT, "ended", |p| {
            p.counters.active_count() == 0
        })
        .await;
    assert_eq!(orphaned.counters.canceled_count, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_ends_while_its_child_s_plan_is_in_the_dispatcher_s_memory() {
    // The child's plan is loaded (a task of it was claimed) when the parent in another plan
    // ends: the dispatcher places the child from memory rather than from the store.
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(117, vec![task(7, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    let second = plan(118, vec![task(8, 1, &[7]), task(9, 1, &[])]);
    submit(&cluster, &rpc, &second).await;

    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let mut granted = Vec::new();
    for _ in 0..2 {
        granted.push(
            worker
                .work_one(WAIT, &Script::Vanish)
                .await
                .expect("granted"),
        );
    }
    let (parent, other): (Vec<_>, Vec<_>) =
        granted.into_iter().partition(|g| g.task == TaskKey(key(7)));
    assert_eq!((parent.len(), other[0].task), (1, TaskKey(key(9))));
    assert_eq!(
        statuses(&cluster, second.key).await["t8"],
        TaskStatus::Waiting
    );
    worker.report(&parent[0], ReportedOutcome::Done).await;
    cluster
        .wait_for_plan(second.key, WAIT, "t8 ready", |p| p.counters.todo_count == 1)
        .await;
    worker.report(&other[0], ReportedOutcome::Done).await;
    run_to_end(&cluster, &mut worker, second.key, &Script::Succeed).await;
    assert_eq!(cluster.plan(second.key).await.status, PlanStatus::Done);
}

/// Whether, within `within`, at least `count` sessions on the cluster's database wait for a
/// lock.
async fn lock_waiters(cluster: &TestCluster, count: i64, within: Duration) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let mut conn = cluster.db.connect().await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waiting: Waiting = diesel_async::RunQueryDsl::get_result(
            diesel::sql_query(
                "SELECT count(*) AS count FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ),
            &mut conn,
        )
        .await
        .unwrap();
        if waiting.count >= count {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection whose open transaction holds the row of plan `plan`, so that the event
/// applier's commit of a change to the plan waits; `COMMIT` on it lets the commit through.
async fn hold_plan_row(cluster: &TestCluster, plan: PlanKey) -> diesel_async::AsyncPgConnection {
    let mut blocker = cluster.db.connect().await;
    execute(&mut blocker, "BEGIN").await;
    execute(
        &mut blocker,
        &format!("SELECT 1 FROM compute_plans WHERE key = '{plan}' FOR UPDATE"),
    )
    .await;
    blocker
}

/// Runs `sql` on `conn`.
async fn execute(conn: &mut diesel_async::AsyncPgConnection, sql: &str) {
    diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_submitted_while_its_parent_s_end_commits_is_stored_ready() {
    // The event applier has read the children of a task it ends, and is committing the end,
    // when a plan with a child of that task arrives. The child must not be stored WAITING for
    // an end the applier will never tell its plan about: it waits for the end, and is TODO.
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(119, vec![task(10, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let parent = worker
        .work_one(WAIT, &Script::Vanish)
        .await
        .expect("granted");

    // The applier's commit of the end waits for the parent's plan row.
    let mut blocker = hold_plan_row(&cluster, first.key).await;
    worker.report(&parent, ReportedOutcome::Done).await;
    assert!(
        lock_waiters(&cluster, 1, WAIT).await,
        "the applier waits for the plan's row"
    );
    let second = plan(120, vec![task(11, 1, &[10])]);
    let release = async {
        // The submission waits for the end too; once both wait, the end is let through.
        lock_waiters(&cluster, 2, Duration::from_secs(5)).await;
        execute(&mut blocker, "COMMIT").await;
    };
    let (reply, ()) = tokio::join!(cluster.submit(&rpc, &second), release);
    assert!(
        matches!(reply, SubmissionReply::Accepted { .. }),
        "{reply:?}"
    );
    let stored = statuses(&cluster, second.key).await;
    assert_eq!(stored["t11"], TaskStatus::Todo, "stored ready: {stored:?}");
    assert_eq!(
        cluster.metrics.batch_retries(),
        0,
        "the end went through once"
    );
    run_to_end(&cluster, &mut worker, second.key, &Script::Succeed).await;
    assert_eq!(cluster.plan(second.key).await.status, PlanStatus::Done);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_stored_after_its_parent_s_children_were_read_is_told_of_the_end() {
    // A plan with a child of a task is stored (WAITING, its parent DOING) after the event
    // applier read that task's children and before it committed the task's end: the applier
    // sees the new child when it commits, and tells its plan.
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(121, vec![task(12, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let parent = worker
        .work_one(WAIT, &Script::Vanish)
        .await
        .expect("granted");

    let second = plan(122, vec![task(13, 1, &[12])]);
    let mut conn = cluster.db.connect().await;
    let (worker_ref, cluster_ref, second_ref) = (&worker, &cluster, &second);
    diesel_async::AsyncConnection::transaction(&mut conn, async |conn| {
        // As a submission in flight holds it: the applier reads the children, then waits.
        tasks::lock_task_ends(conn, &[parent.task], tasks::EndLock::Shared).await?;
        worker_ref.report(&parent, ReportedOutcome::Done).await;
        assert!(
            lock_waiters(cluster_ref, 1, WAIT).await,
            "the applier waits for the end lock"
        );
        // This session holds the lock already: the plan is stored, its task WAITING.
        let (stored, _) = dispatcher::submission::submit_plan(
            conn,
            second_ref,
            &ORGANIZATION.into(),
            None,
            Utc::now(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(stored.counters.waiting_count, 1);
        Ok::<_, dispatcher::store::StoreError>(())
    })
    .await
    .unwrap();
    cluster
        .wait_for_plan(second.key, WAIT, "ready", |p| p.counters.todo_count == 1)
        .await;
    // The applier found the child when it committed, and applied the end again to tell it.
    assert_eq!(cluster.metrics.batch_retries(), 1);
    run_to_end(&cluster, &mut worker, second.key, &Script::Succeed).await;
    assert_eq!(cluster.plan(second.key).await.status, PlanStatus::Done);
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_added_in_the_batch_that_ends_their_parent_in_another_plan_are_told_of_it() {
    // Tasks added to a plan, after a task of another plan, and that task's end are applied in
    // one batch: the added children are not yet stored when the end looks for children.
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let first = plan(123, vec![task(14, 1, &[]), task(15, 1, &[])]);
    submit(&cluster, &rpc, &first).await;
    let second = plan(124, vec![task(16, 1, &[])]);
    submit(&cluster, &rpc, &second).await;
    let mut worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let mut granted = Vec::new();
    for _ in 0..3 {
        granted.push(
            worker
                .work_one(WAIT, &Script::Vanish)
                .await
                .expect("granted"),
        );
    }
    let find = |n: u128| {
        granted
            .iter()
            .find(|g| g.task == TaskKey(key(n)))
            .expect("granted")
    };

    // The applier is held committing task 15's end while task 14's end and the addition queue
    // up behind it, to be taken as one batch.
    let mut blocker = hold_plan_row(&cluster, first.key).await;
    worker.report(find(15), ReportedOutcome::Done).await;
    assert!(
        lock_waiters(&cluster, 1, WAIT).await,
        "the applier waits for the plan's row"
    );
    worker.report(find(14), ReportedOutcome::Done).await;
    let addition = AddTasks {
        compute_plan_key: second.key,
        tasks: vec![task(17, 1, &[14])],
    };
    let release = async {
        // Both messages are published and pushed into the applier's prefetch within
        // milliseconds; RabbitMQ's figures of the queue lag by seconds, so this gives them
        // ample time instead. (Applied in two batches, they would not test the one batch.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        execute(&mut blocker, "COMMIT").await;
    };
    let (reply, ()) = tokio::join!(
        rpc.call::<_, SubmissionReply>(SUBMIT_EXCHANGE, AddTasks::KIND, &addition, WAIT),
        release
    );
    let reply = reply.unwrap();
    assert!(
        matches!(reply, SubmissionReply::Accepted { .. }),
        "{reply:?}"
    );
    cluster
        .wait_for_plan(second.key, WAIT, "t17 ready", |p| {
            p.counters.todo_count == 1
        })
        .await;
    assert_eq!(
        cluster.metrics.batch_retries(),
        0,
        "the added child was found without a conflict"
    );
    worker.report(find(16), ReportedOutcome::Done).await;
    run_to_end(&cluster, &mut worker, second.key, &Script::Succeed).await;
    assert_eq!(cluster.plan(second.key).await.status, PlanStatus::Done);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_submission_is_answered_and_dead_lettered() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    // Valid JSON, but no plan: the key and name are missing.
    let reply: SubmissionReply = rpc
        .call_raw(
            SUBMIT_EXCHANGE,
            PlanSubmission::KIND,
            PlanSubmission::KIND,
            br#"{"tasks": []}"#,
            WAIT,
        )
        .await
        .unwrap();
    let SubmissionReply::Rejected { error, details, .. } = &reply else {
        panic!("accepted: {reply:?}");
    };
    assert_eq!(error, "malformed");
    assert!(
        details[0].message.contains("missing field `key`"),
        "{details:?}"
    );
    // Not JSON at all.
    let reply: SubmissionReply = rpc
        .call_raw(
            SUBMIT_EXCHANGE,
            PlanSubmission::KIND,
            PlanSubmission::KIND,
            b"{not json",
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        matches!(&reply, SubmissionReply::Rejected { error, .. } if error == "malformed"),
        "{reply:?}"
    );
    // A function registration that is not one.
    let reply: AssetReply = rpc
        .call_raw(
            SUBMIT_EXCHANGE,
            NewFunction::KIND,
            NewFunction::KIND,
            br#"{"name": 3}"#,
            WAIT,
        )
        .await
        .unwrap();
    assert!(
        matches!(&reply, AssetReply::Rejected { error, .. } if error == "malformed"),
        "{reply:?}"
    );
    // The consumer goes on: a valid plan is still accepted.
    submit(&cluster, &rpc, &plan(117, vec![task(1, 1, &[])])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_disabled_by_an_operator_gets_no_more_claims() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let two = plan(118, vec![task(1, 1, &[]), task(2, 1, &[])]);
    submit(&cluster, &rpc, &two).await;
    let worker = ScriptedWorker::new(&cluster, "worker-1").await;
    let first = worker.claim(TaskKey(key(1))).await;
    assert!(matches!(first, ClaimReply::Granted { .. }), "{first:?}");

    let mut conn = cluster.db.connect().await;
    let mut stored = workers::find_worker(&mut conn, &"worker-1".into())
        .await
        .unwrap()
        .unwrap();
    stored.is_enabled = false;
    workers::upsert_worker(&mut conn, &stored).await.unwrap();
    // The dispatcher reads registrations again within its cache time (200 ms in tests).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = worker.claim(TaskKey(key(2))).await;
    assert!(
        matches!(&second, ClaimReply::Refused { reason, .. } if reason.contains("not registered, or is disabled")),
        "{second:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_reused_for_another_request_is_refused_and_stores_nothing() {
    let cluster = TestCluster::start(chrono::Duration::seconds(30)).await;
    cluster.seed(&[function(1, no_retry())]).await;
    // It registers an organization, which is an administrator's.
    cluster.grant("guest", &[models::Role::Administrator]).await;
    let client = cluster.client("producer").await;
    let rpc = RpcClient::new(&client).await.unwrap();
    let id = "producer-request-1".to_owned();
    let timeout = Duration::from_secs(10);
    // Every plan here is sent under the same message id.
    let submit_as_one = async |plan: &PlanSubmission| -> SubmissionReply {
        rpc.call_with_message_id(
            SUBMIT_EXCHANGE,
            PlanSubmission::KIND,
            plan,
            id.clone(),
            timeout,
        )
        .await
        .unwrap()
    };
    let first = plan(108, vec![task(1, 1, &[])]);
    let reply = submit_as_one(&first).await;
    assert!(
        matches!(reply, SubmissionReply::Accepted { .. }),
        "{reply:?}"
    );
    // The same request again gets the same answer.
    let again = submit_as_one(&first).await;
    assert_eq!(reply, again);

    // Another plan under the same id is refused, not answered with the first plan's reply.
    let second = plan(109, vec![task(2, 1, &[])]);
    let reused = submit_as_one(&second).await;
    let SubmissionReply::Rejected { error, details, .. } = &reused else {
        panic!("accepted: {reused:?}");
    };
    assert_eq!(error, "message_id_reused");
    assert_eq!(details[0].path, "message_id", "{details:?}");

    // Another kind of request under the same id: answered (not requeued until dead-lettered)
    // with a refusal of its own kind.
    let org = NewOrganization {
        id: "org-reused".into(),
        address: None,
    };
    let other_kind: AssetReply = rpc
        .call_with_message_id(
            SUBMIT_EXCHANGE,
            NewOrganization::KIND,
            &org,
            id.clone(),
            timeout,
        )
        .await
        .unwrap();
    assert!(
        matches!(&other_kind, AssetReply::Rejected { error, .. } if error == "message_id_reused"),
        "{other_kind:?}"
    );

    let mut conn = cluster.db.connect().await;
    assert!(
        dispatcher::store::plans::find_plan(&conn, second.key)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        dispatcher::store::catalog::find_organization(&mut conn, &"org-reused".into(), None)
            .await
            .unwrap()
            .is_none()
    );
}
