//! Every exchange, queue, binding and queue argument baton uses: the contract of DESIGN.md's
//! "RabbitMQ topology" table, and the only place these names are written.
//!
//! Declarations are idempotent: declaring what exists with the same arguments changes nothing,
//! so every process declares what it uses on start (and lapin replays it after a reconnect).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use models::RequirementSet;
use models::submission::{
    NewDataSamples, NewDataset, NewFunction, NewOrganization, NewProject, PlanSubmission,
};
use models::wire::{AddTasks, CancelRequest, WireMessage};

use crate::BrokerError;

/// Direct exchange producers publish submissions to (routing key = message kind). Producers get
/// write access to this exchange only.
pub const SUBMIT_EXCHANGE: &str = "baton.submit";
/// Quorum queue of submissions, consumed by the active dispatcher.
pub const SUBMISSIONS_QUEUE: &str = "baton.submissions";
/// Direct exchange of ready tasks; the routing key is the task's requirement set.
pub const TASKS_EXCHANGE: &str = "baton.tasks";
/// Prefix of the per-requirement-set task queues: `baton.tasks.device=lucidac`, `baton.tasks.any`.
pub const TASK_QUEUE_PREFIX: &str = "baton.tasks.";
/// Topic exchange of everything workers report: `task.<key>.status`, `task.<key>.log`,
/// `worker.<id>.heartbeat`, …; claims travel here too (`task.<key>.claim`).
pub const EVENTS_EXCHANGE: &str = "baton.events";
/// Quorum queue with a single active consumer: the dispatcher's feed of events. A standby
/// dispatcher's consumer waits and takes over when the active one goes away.
pub const DISPATCHER_QUEUE: &str = "baton.dispatcher";
/// Topic exchange of orders to workers: `worker.<id>` and `task.<key>` routing keys.
pub const CONTROL_EXCHANGE: &str = "baton.control";
/// Fanout exchange and quorum queue of messages nobody could handle, with the reason in headers.
pub const DEAD_EXCHANGE: &str = "baton.dead";
/// The dead-letter queue (same name as its exchange, so operators find one `baton.dead`).
pub const DEAD_QUEUE: &str = "baton.dead";

/// Routing key on [`CONTROL_EXCHANGE`] of [`models::wire::QueueAnnouncement`]s: a task queue
/// was declared for a new requirement set.
pub const QUEUE_ANNOUNCE_KEY: &str = "queues.announce";
/// Prefix of a worker's own control queue: `baton.worker.<id>`.
pub const WORKER_QUEUE_PREFIX: &str = "baton.worker.";
/// How long a worker's control queue outlives its last consumer, in milliseconds: long enough
/// to ride out a reconnect, short enough that departed workers leave nothing behind.
pub const WORKER_QUEUE_EXPIRES_MS: i64 = 60_000;

/// How many times a message of a baton queue is delivered before it is dead-lettered. A task
/// message is acked once its claim is answered, so redeliveries only come from workers that
/// crashed before that; five of those in a row means the message itself is the problem.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 5;

/// The routing keys of the dispatcher's feed on [`EVENTS_EXCHANGE`]: every task, worker and
/// function event.
pub const DISPATCHER_BINDINGS: &[&str] = &["task.#", "worker.#", "function.#"];

/// The kinds producers may submit, each bound from [`SUBMIT_EXCHANGE`] to [`SUBMISSIONS_QUEUE`]
/// (`plan.cancel` and `plan.add_tasks` go to [`DISPATCHER_QUEUE`] instead).
pub fn submission_kinds() -> [&'static str; 6] {
    [
        PlanSubmission::KIND,
        NewFunction::KIND,
        NewDataset::KIND,
        NewDataSamples::KIND,
        NewOrganization::KIND,
        NewProject::KIND,
    ]
}

/// The name of the queue of tasks that need `requirements`: `baton.tasks.<routing key>`.
pub fn task_queue(requirements: &RequirementSet) -> String {
    format!("{TASK_QUEUE_PREFIX}{}", requirements.routing_key())
}

/// The events routing key of `kind` about task `task`: `task.<key>.<verb>`.
pub fn task_event_key(task: models::TaskKey, verb: &str) -> String {
    format!("task.{task}.{verb}")
}

/// The events routing key of `verb` from worker `worker`: `worker.<id>.<verb>`, which RabbitMQ
/// lets only that worker's user publish under (docs/security.md).
pub fn worker_event_key(worker: &models::WorkerId, verb: &str) -> String {
    format!("worker.{worker}.{verb}")
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(text.into())
}

/// The arguments of baton's quorum queues: dead-lettering to [`DEAD_EXCHANGE`] at least once
/// (RabbitMQ keeps a message until the dead-letter queue confirms it, which requires
/// `reject-publish` overflow) after `delivery_limit` deliveries.
pub fn quorum_arguments(delivery_limit: u32) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongUInt(delivery_limit),
    );
    arguments.insert("x-dead-letter-exchange".into(), long_string(DEAD_EXCHANGE));
    arguments.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
    arguments
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            ShortString::from(name),
            kind,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Declare {
            what: format!("exchange {name}"),
            source: Box::new(source),
        })
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .map(|_| ())
        .map_err(|source| BrokerError::Declare {
            what: format!("queue {name}"),
            source: Box::new(source),
        })
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Declare {
            what: format!("binding {exchange} -> {queue} ({routing_key})"),
            source: Box::new(source),
        })
}

/// Declares every fixed exchange, queue and binding: the dead-letter target first, then the
/// submission path, the task exchange, the events feed and the control exchange.
pub async fn declare(channel: &Channel, delivery_limit: u32) -> Result<(), BrokerError> {
    declare_exchange(channel, DEAD_EXCHANGE, ExchangeKind::Fanout).await?;
    let mut dead_arguments = FieldTable::default();
    dead_arguments.insert("x-queue-type".into(), long_string("quorum"));
    declare_queue(channel, DEAD_QUEUE, dead_arguments).await?;
    bind(channel, DEAD_QUEUE, DEAD_EXCHANGE, "").await?;

    declare_exchange(channel, SUBMIT_EXCHANGE, ExchangeKind::Direct).await?;
    declare_queue(channel, SUBMISSIONS_QUEUE, quorum_arguments(delivery_limit)).await?;
    for kind in submission_kinds() {
        bind(channel, SUBMISSIONS_QUEUE, SUBMIT_EXCHANGE, kind).await?;
    }

    declare_exchange(channel, TASKS_EXCHANGE, ExchangeKind::Direct).await?;

    declare_exchange(channel, EVENTS_EXCHANGE, ExchangeKind::Topic).await?;
    let mut dispatcher_arguments = quorum_arguments(delivery_limit);
    dispatcher_arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    declare_queue(channel, DISPATCHER_QUEUE, dispatcher_arguments).await?;
    for key in DISPATCHER_BINDINGS {
        bind(channel, DISPATCHER_QUEUE, EVENTS_EXCHANGE, key).await?;
    }
    // Cancels and added tasks change stored plans, which only the active dispatcher may do:
    // producers send them to `baton.submit` (their only door), and they go to its feed.
    for kind in [CancelRequest::KIND, AddTasks::KIND] {
        bind(channel, DISPATCHER_QUEUE, SUBMIT_EXCHANGE, kind).await?;
    }

    declare_exchange(channel, CONTROL_EXCHANGE, ExchangeKind::Topic).await?;
    Ok(())
}

/// Declares the queue of tasks that need `requirements` and binds it to [`TASKS_EXCHANGE`];
/// returns its name.
pub async fn declare_task_queue(
    channel: &Channel,
    requirements: &RequirementSet,
    delivery_limit: u32,
) -> Result<String, BrokerError> {
    let queue = task_queue(requirements);
    declare_queue(channel, &queue, quorum_arguments(delivery_limit)).await?;
    bind(channel, &queue, TASKS_EXCHANGE, &requirements.routing_key()).await?;
    Ok(queue)
}

/// The control queue of worker `worker`: `baton.worker.<id>`.
pub fn worker_queue(worker: &models::WorkerId) -> String {
    format!("{WORKER_QUEUE_PREFIX}{worker}")
}

/// The control routing key of orders to worker `worker`: `worker.<id>`.
pub fn worker_control_key(worker: &models::WorkerId) -> String {
    format!("worker.{worker}")
}

/// Declares worker `worker`'s control queue, a classic queue that expires once unused for
/// [`WORKER_QUEUE_EXPIRES_MS`], bound to its own orders (including the cancel and abort
/// orders of the tasks it holds) and to queue announcements.
pub async fn declare_worker_queue(
    channel: &Channel,
    worker: &models::WorkerId,
) -> Result<String, BrokerError> {
    let queue = worker_queue(worker);
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("classic"));
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(WORKER_QUEUE_EXPIRES_MS),
    );
    declare_queue(channel, &queue, arguments).await?;
    bind(
        channel,
        &queue,
        CONTROL_EXCHANGE,
        &worker_control_key(worker),
    )
    .await?;
    bind(channel, &queue, CONTROL_EXCHANGE, QUEUE_ANNOUNCE_KEY).await?;
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn task_queues_are_named_after_canonical_requirement_sets() {
        assert_eq!(task_queue(&RequirementSet::any()), "baton.tasks.any");
        let lucidac = RequirementSet(BTreeMap::from([
            ("os".to_owned(), "linux".to_owned()),
            ("device".to_owned(), "lucidac".to_owned()),
        ]));
        assert_eq!(task_queue(&lucidac), "baton.tasks.device=lucidac,os=linux");
        let long = RequirementSet(BTreeMap::from([("label".to_owned(), "x".repeat(300))]));
        assert!(task_queue(&long).len() <= 255);
    }

    #[test]
    fn quorum_queues_dead_letter_at_least_once() {
        let arguments = quorum_arguments(5);
        let inner = arguments.inner();
        let text = |key: &str| match inner.get(key) {
            Some(AMQPValue::LongString(value)) => value.to_string(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text("x-queue-type"), "quorum");
        assert_eq!(text("x-dead-letter-exchange"), DEAD_EXCHANGE);
        assert_eq!(text("x-dead-letter-strategy"), "at-least-once");
        assert_eq!(text("x-overflow"), "reject-publish");
        assert!(matches!(
            inner.get("x-delivery-limit"),
            Some(AMQPValue::LongUInt(5))
        ));
    }

    #[test]
    fn event_keys_name_the_task() {
        let key = models::TaskKey(uuid::Uuid::from_u128(1));
        assert_eq!(
            task_event_key(key, "claim"),
            "task.00000000-0000-0000-0000-000000000001.claim"
        );
        assert_eq!(
            worker_event_key(&"host-1".into(), "claim"),
            "worker.host-1.claim"
        );
    }
}
