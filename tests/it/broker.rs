//! The RabbitMQ layer against a real broker, each test in a vhost of its own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;

use broker::envelope::{DEAD_QUEUE_HEADER, DEAD_REASON_HEADER, SCHEMA_VERSION_HEADER};
use broker::topology::{self, DEAD_QUEUE, DISPATCHER_QUEUE, EVENTS_EXCHANGE, TASKS_EXCHANGE};
use broker::{Broker, BrokerError, Consumer, Meta, Publisher, RpcClient};
use models::wire::{ClaimReply, ClaimRequest, TaskReady};
use models::{FunctionKey, PlanKey, RequirementSet, TaskKey};

use crate::support::broker::TestBroker;

fn ready(n: u128) -> TaskReady {
    TaskReady {
        task_key: TaskKey(uuid::Uuid::from_u128(n)),
        compute_plan_key: PlanKey(uuid::Uuid::from_u128(1)),
        function_key: FunctionKey(uuid::Uuid::from_u128(2)),
        requirements: RequirementSet::any(),
        attempt: None,
    }
}

async fn connect(test: &TestBroker, app_id: &str) -> Broker {
    let broker = Broker::connect(test.config(app_id)).await.unwrap();
    broker.declare_topology().await.unwrap();
    broker
        .declare_task_queue(&RequirementSet::any())
        .await
        .unwrap();
    broker
}

/// A dead-lettered message: its headers and body.
struct Dead {
    headers: std::collections::BTreeMap<String, AMQPValue>,
    body: Vec<u8>,
}

impl Dead {
    fn text(&self, header: &str) -> Option<String> {
        match self.headers.get(header)? {
            AMQPValue::LongString(text) => {
                Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
            }
            _ => None,
        }
    }

    /// The reason RabbitMQ gave in its `x-death` header.
    fn death_reason(&self) -> Option<String> {
        let AMQPValue::FieldArray(deaths) = self.headers.get("x-death")? else {
            return None;
        };
        match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => match death.inner().get("reason")? {
                AMQPValue::LongString(reason) => {
                    Some(String::from_utf8_lossy(reason.as_bytes()).into_owned())
                }
                _ => None,
            },
            _ => None,
        }
    }
}

/// Waits (at most 10 s) until `baton.dead` holds `count` messages, and takes them.
async fn dead_letters(broker: &Broker, count: usize) -> Vec<Dead> {
    let channel = broker.channel().await.unwrap();
    let mut found = Vec::new();
    for _ in 0..200 {
        while let Some(message) = channel
            .basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            found.push(Dead {
                headers: delivery
                    .properties
                    .headers()
                    .as_ref()
                    .map(|h| {
                        h.inner()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
                body: delivery.data,
            });
        }
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {count} dead letters, found {}", found.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_confirmed_messages_arrive_once_each() {
    let test = TestBroker::new().await;
    let broker = connect(&test, "test-throughput").await;
    let publisher = Publisher::new(&broker).await.unwrap();
    let queue = topology::task_queue(&RequirementSet::any());
    let mut consumer = Consumer::<TaskReady>::new(&broker, &queue, 500)
        .await
        .unwrap();

    const COUNT: u128 = 10_000;
    let sending = tokio::spawn(async move {
        // Pipelined: keep up to 1,000 confirms in flight.
        let mut pending = std::collections::VecDeque::new();
        for n in 0..COUNT {
            let confirm = publisher
                .send(TASKS_EXCHANGE, "any", &ready(n), Meta::default())
                .await
                .unwrap();
            pending.push_back(confirm);
            if pending.len() >= 1_000 {
                pending.pop_front().unwrap().confirmed().await.unwrap();
            }
        }
        for confirm in pending {
            confirm.confirmed().await.unwrap();
        }
    });

    let mut seen = HashSet::new();
    let mut message_ids = HashSet::new();
    while seen.len() < COUNT as usize {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a message within 30 s")
            .expect("the consumer is running")
            .unwrap();
        assert!(seen.insert(delivery.message.task_key), "received twice");
        assert!(message_ids.insert(delivery.meta.message_id.clone()));
        assert_eq!(delivery.meta.app_id.as_deref(), Some("test-throughput"));
        assert_eq!(delivery.meta.user_id.as_deref(), Some("guest"));
        delivery.ack().await.unwrap();
    }
    sending.await.unwrap();
    // Nothing else is waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_message_lands_in_the_dead_letter_queue() {
    let test = TestBroker::new().await;
    let broker = connect(&test, "test-reject").await;
    let publisher = Publisher::new(&broker).await.unwrap();
    publisher
        .publish(TASKS_EXCHANGE, "any", &ready(1), Meta::default())
        .await
        .unwrap();
    let mut consumer = Consumer::<TaskReady>::new(&broker, "baton.tasks.any", 1)
        .await
        .unwrap();
    consumer
        .next()
        .await
        .unwrap()
        .unwrap()
        .reject()
        .await
        .unwrap();

    let dead = dead_letters(&broker, 1).await;
    assert_eq!(dead[0].death_reason().as_deref(), Some("rejected"));
    let message: TaskReady = serde_json::from_slice(&dead[0].body).unwrap();
    assert_eq!(message, ready(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_dead_lettered_by_baton_carries_its_reason() {
    let test = TestBroker::new().await;
    let broker = connect(&test, "test-dead-letter").await;
    let publisher = Publisher::new(&broker).await.unwrap();
    publisher
        .publish(TASKS_EXCHANGE, "any", &ready(1), Meta::default())
        .await
        .unwrap();
    let mut consumer = Consumer::<TaskReady>::new(&broker, "baton.tasks.any", 1)
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    delivery.dead_letter("task 1 does not exist").await.unwrap();

    let dead = dead_letters(&broker, 1).await;
    assert_eq!(
        dead[0].text(DEAD_REASON_HEADER).as_deref(),
        Some("task 1 does not exist")
    );
    assert_eq!(
        dead[0].text(DEAD_QUEUE_HEADER).as_deref(),
        Some("baton.tasks.any")
    );
    assert!(
        dead[0].headers.contains_key(SCHEMA_VERSION_HEADER),
        "original headers kept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_delivered_past_the_delivery_limit_is_dead_lettered() {
    let test = TestBroker::new().await;
    let mut config = test.config("test-delivery-limit");
    config.delivery_limit = 2;
    let broker = Broker::connect(config).await.unwrap();
    broker.declare_topology().await.unwrap();
    broker
        .declare_task_queue(&RequirementSet::any())
        .await
        .unwrap();
    let publisher = Publisher::new(&broker).await.unwrap();
    publisher
        .publish(TASKS_EXCHANGE, "any", &ready(7), Meta::default())
        .await
        .unwrap();

    let mut consumer = Consumer::<TaskReady>::new(&broker, "baton.tasks.any", 1)
        .await
        .unwrap();
    let mut deliveries = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
            Ok(Some(delivery)) => {
                let delivery = delivery.unwrap();
                assert_eq!(delivery.redelivered, deliveries > 0);
                deliveries += 1;
                delivery.requeue().await.unwrap();
            }
            Ok(None) => panic!("consumer canceled"),
            Err(_) => break,
        }
    }
    assert_eq!(deliveries, 3, "the first delivery and two redeliveries");
    let dead = dead_letters(&broker, 1).await;
    assert_eq!(dead[0].death_reason().as_deref(), Some("delivery_limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_unknown_messages_are_dead_lettered_and_consuming_goes_on() {
    let test = TestBroker::new().await;
    let broker = connect(&test, "test-poison").await;
    let publisher = Publisher::new(&broker).await.unwrap();
    // A body that is not JSON, with valid properties.
    let (_, properties) =
        broker::envelope::encode(&ready(1), &publisher.complete(Meta::default())).unwrap();
    publisher
        .send_raw(TASKS_EXCHANGE, "any", b"{not json", properties)
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    // A message of a kind this consumer does not read.
    let claim = ClaimRequest {
        task_key: TaskKey(uuid::Uuid::from_u128(1)),
        worker_id: "w".into(),
    };
    publisher
        .publish(TASKS_EXCHANGE, "any", &claim, Meta::default())
        .await
        .unwrap();
    // A message without baton's envelope at all.
    publisher
        .send_raw(
            TASKS_EXCHANGE,
            "any",
            b"hello",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .confirmed()
        .await
        .unwrap();
    // And a good one.
    publisher
        .publish(TASKS_EXCHANGE, "any", &ready(2), Meta::default())
        .await
        .unwrap();

    let mut consumer = Consumer::<TaskReady>::new(&broker, "baton.tasks.any", 10)
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    assert_eq!(delivery.message, ready(2));
    delivery.ack().await.unwrap();

    let dead = dead_letters(&broker, 3).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| d.text(DEAD_REASON_HEADER).unwrap())
        .collect();
    assert!(
        reasons[0].starts_with("body is not a valid task.ready message"),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        "unexpected message type \"task.claim\", expected one of: task.ready"
    );
    assert_eq!(
        reasons[2],
        "content type is None, expected \"application/json\""
    );
    assert_eq!(dead[2].body, b"hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unroutable_publish_is_an_error() {
    let test = TestBroker::new().await;
    let broker = connect(&test, "test-unroutable").await;
    let publisher = Publisher::new(&broker).await.unwrap();
    let error = publisher
        .publish(
            TASKS_EXCHANGE,
            "device=nothing-like-it",
            &ready(1),
            Meta::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BrokerError::Unroutable { reply_code: 312, routing_key, .. } if routing_key == "device=nothing-like-it"),
        "{error:?}"
    );
    // The publisher is still usable.
    publisher
        .publish(TASKS_EXCHANGE, "any", &ready(2), Meta::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_topology_is_declared_idempotently_with_its_arguments() {
    let test = TestBroker::new().await;
    let broker = connect(&test, "test-topology").await;
    broker.declare_topology().await.unwrap();
    broker
        .declare_task_queue(&RequirementSet::any())
        .await
        .unwrap();

    let tasks = test.queue_info("baton.tasks.any").await;
    assert_eq!(tasks["arguments"]["x-queue-type"], "quorum");
    assert_eq!(tasks["arguments"]["x-dead-letter-exchange"], "baton.dead");
    assert_eq!(
        tasks["arguments"]["x-dead-letter-strategy"],
        "at-least-once"
    );
    assert_eq!(tasks["arguments"]["x-delivery-limit"], 5);
    let dispatcher = test.queue_info(DISPATCHER_QUEUE).await;
    assert_eq!(dispatcher["arguments"]["x-single-active-consumer"], true);
    let submissions = test.queue_info("baton.submissions").await;
    assert_eq!(submissions["durable"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_reply_round_trip_and_timeout() {
    let test = TestBroker::new().await;
    let server = connect(&test, "test-rpc-server").await;
    let client_broker = connect(&test, "test-rpc-client").await;
    let client = RpcClient::new(&client_broker).await.unwrap();
    let task = TaskKey(uuid::Uuid::from_u128(42));
    let request = ClaimRequest {
        task_key: task,
        worker_id: "worker-1".into(),
    };
    let key = topology::task_event_key(task, "claim");

    // Nobody answers yet: the call times out.
    let error = client
        .call::<_, ClaimReply>(EVENTS_EXCHANGE, &key, &request, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            BrokerError::ReplyTimeout {
                kind: "task.claim",
                ..
            }
        ),
        "{error:?}"
    );

    let replier = Publisher::new(&server).await.unwrap();
    let mut requests = Consumer::<ClaimRequest>::new(&server, DISPATCHER_QUEUE, 10)
        .await
        .unwrap();
    let serving = tokio::spawn(async move {
        // The first request timed out on the client's side but is still in the queue.
        for _ in 0..2 {
            let delivery = requests.next().await.unwrap().unwrap();
            let reply = ClaimReply::Refused {
                task_key: delivery.message.task_key,
                reason: format!("asked by {}", delivery.message.worker_id),
            };
            // The first requester gave up; its reply may not be routable any more.
            let _ = broker::rpc::reply(&replier, &delivery.meta, &reply).await;
            delivery.ack().await.unwrap();
        }
    });
    let reply: ClaimReply = client
        .call(EVENTS_EXCHANGE, &key, &request, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        reply,
        ClaimReply::Refused {
            task_key: task,
            reason: "asked by worker-1".into()
        }
    );
    serving.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_and_consumer_resume_after_the_connections_are_closed() {
    let test = Arc::new(TestBroker::new().await);
    let publishing = connect(&test, "test-reconnect-publisher").await;
    let consuming = connect(&test, "test-reconnect-consumer").await;
    let publisher = Publisher::new(&publishing).await.unwrap();
    let mut consumer = Consumer::<TaskReady>::new(&consuming, "baton.tasks.any", 100)
        .await
        .unwrap();

    let received: Arc<Mutex<HashSet<TaskKey>>> = Arc::default();
    let seen = Arc::clone(&received);
    let consuming_task = tokio::spawn(async move {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.unwrap();
            seen.lock().unwrap().insert(delivery.message.task_key);
            // An ack on a channel lost in between fails; RabbitMQ redelivers the message.
            let _ = delivery.ack().await;
        }
        panic!("the consumer stopped");
    });

    // While messages stream, an operator closes both connections.
    let operator = Arc::clone(&test);
    let mut closing = Some(tokio::spawn(
        async move { operator.close_connections(2).await },
    ));
    let mut closed = None;
    let mut confirmed = HashSet::new();
    let mut errors = 0;
    let mut n: u128 = 0;
    // Keep publishing until the connections were closed and 1,000 more messages went through.
    let mut after_close = 0;
    while after_close < 1_000 {
        loop {
            match publisher
                .publish(TASKS_EXCHANGE, "any", &ready(n), Meta::default())
                .await
            {
                Ok(()) => {
                    confirmed.insert(TaskKey(uuid::Uuid::from_u128(n)));
                    break;
                }
                Err(_) => {
                    errors += 1;
                    assert!(errors < 1_000, "publishing never recovered");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        n += 1;
        if closing.as_ref().is_some_and(|handle| handle.is_finished())
            && let Some(handle) = closing.take()
        {
            closed = Some(handle.await.unwrap());
        }
        if closed.is_some() {
            after_close += 1;
        }
        assert!(n < 200_000, "the connections were never closed");
    }
    assert_eq!(closed, Some(2), "both connections were closed");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let missing = confirmed.difference(&received.lock().unwrap()).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} confirmed messages never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consuming_task.abort();
    assert!(publishing.state().connected && consuming.state().connected);
    assert!(errors > 0, "the outage was seen by the publisher");
}
