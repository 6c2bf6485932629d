//! `baton rabbitmq setup` against the real RabbitMQ: each principal's user may do what its part
//! needs and nothing else, as RabbitMQ itself enforces it.

use broker::{Broker, BrokerConfig, Meta, Publisher, RpcClient};
use cli::rabbitmq::{ManagementApi, Part, Principal, SetUp, setup};
use models::wire::TaskReady;
use models::{FunctionKey, PlanKey, RequirementSet, TaskKey, WorkerId};

use crate::support::broker::{TestBroker, amqp_base, api_base};

fn management() -> ManagementApi {
    ManagementApi {
        url: api_base(),
        user: "guest".into(),
        password: "guest".into(),
    }
}

/// Deletes the RabbitMQ users `users` (they are not in the vhost, so deleting it leaves them).
async fn delete_users(users: &[String]) {
    for user in users {
        let _ = reqwest::Client::new()
            .delete(format!("{}/users/{user}", api_base()))
            .basic_auth("guest", Some("guest"))
            .send()
            .await;
    }
}

fn message() -> TaskReady {
    TaskReady {
        task_key: TaskKey(uuid::Uuid::new_v4()),
        compute_plan_key: PlanKey(uuid::Uuid::new_v4()),
        function_key: FunctionKey(uuid::Uuid::new_v4()),
        requirements: RequirementSet::any(),
        attempt: None,
    }
}

/// Connects to the test's vhost as the user `set` made.
async fn connect(broker: &TestBroker, set: &SetUp) -> Broker {
    let password = set.password.as_deref().expect("a new user gets a password");
    let host = amqp_base()
        .rsplit_once('@')
        .map(|(_, host)| host.to_owned())
        .expect("an AMQP URL with credentials");
    let url = format!("amqp://{}:{password}@{host}/{}", set.user, broker.vhost());
    Broker::connect(BrokerConfig::new(url, "baton-test"))
        .await
        .unwrap_or_else(|error| panic!("{} connects: {error}", set.user))
}

/// Publishes one message as `broker`'s user on a channel of its own and waits for the confirm.
async fn publish(broker: &Broker, exchange: &str, routing_key: &str) -> Result<(), String> {
    let publisher = Publisher::new(broker)
        .await
        .map_err(|error| error.to_string())?;
    publisher
        .publish(exchange, routing_key, &message(), Meta::default())
        .await
        .map_err(|error| error.to_string())
}

#[track_caller]
fn assert_refused(outcome: Result<(), String>, what: &str) {
    match outcome {
        Ok(()) => panic!("{what} was accepted"),
        Err(error) => assert!(
            error.contains("ACCESS_REFUSED") || error.contains("403"),
            "{what} failed, not for lack of permission: {error}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn producers_and_workers_may_only_do_what_their_part_needs() {
    let broker = TestBroker::new().await;
    // The topology, as the dispatcher declares it.
    let admin = Broker::connect(broker.config("baton-test")).await.unwrap();
    admin.declare_topology().await.unwrap();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let producer = format!("producer-{suffix}");
    let worker = format!("worker-{suffix}");
    let dispatcher = format!("dispatcher-{suffix}");
    let principals = [
        Principal {
            part: Part::Producer,
            user: producer.clone(),
        },
        Principal {
            part: Part::Worker,
            user: worker.clone(),
        },
        Principal {
            part: Part::Dispatcher,
            user: dispatcher.clone(),
        },
    ];
    let made = setup(&management(), broker.vhost(), &principals, false)
        .await
        .unwrap();
    assert_eq!(made.len(), 3);

    // A producer publishes submissions, and gets its answers on direct reply-to.
    let as_producer = connect(&broker, &made[0]).await;
    publish(&as_producer, "baton.submit", "plan.submit")
        .await
        .expect("a producer may submit");
    RpcClient::new(&as_producer)
        .await
        .expect("a producer may wait for answers on direct reply-to");
    assert_refused(
        publish(&as_producer, "baton.tasks", "any").await,
        "a producer publishing a task",
    );
    assert_refused(
        publish(&as_producer, "baton.events", "task.x.status").await,
        "a producer publishing an event",
    );
    assert_refused(
        publish(&as_producer, "baton.control", "worker.w.cancel").await,
        "a producer publishing an order",
    );
    assert_refused(
        publish(&as_producer, "", "baton.tasks.any").await,
        "a producer publishing straight into a task queue",
    );

    // A worker declares its own control queue and reports events under its own keys only.
    let as_worker = connect(&broker, &made[1]).await;
    as_worker
        .declare_worker_queue(&WorkerId::from(worker.as_str()))
        .await
        .expect("a worker declares its control queue");
    as_worker
        .declare_task_queue(&RequirementSet::any())
        .await
        .expect("a worker declares the task queues it consumes");
    publish(
        &as_worker,
        "baton.events",
        &format!("worker.{worker}.heartbeat"),
    )
    .await
    .expect("a worker reports for itself");
    publish(&as_worker, "baton.events", "task.0190.status")
        .await
        .expect("a worker reports on tasks");
    assert_refused(
        publish(&as_worker, "baton.events", "worker.someone-else.heartbeat").await,
        "a worker reporting for another worker",
    );
    assert_refused(
        as_worker
            .declare_worker_queue(&WorkerId::from("someone-else"))
            .await
            .map(|_| ())
            .map_err(|error| error.to_string()),
        "a worker declaring another worker's queue",
    );
    assert_refused(
        publish(&as_worker, "baton.tasks", "any").await,
        "a worker publishing a task",
    );
    assert_refused(
        publish(&as_worker, "baton.submit", "plan.submit").await,
        "a worker submitting",
    );

    // The dispatcher's user owns the topology.
    let as_dispatcher = connect(&broker, &made[2]).await;
    as_dispatcher
        .declare_topology()
        .await
        .expect("the dispatcher declares the topology");
    publish(&as_dispatcher, "baton.tasks", "any")
        .await
        .expect("the dispatcher publishes tasks");

    // Running it again keeps the users and their passwords.
    let again = setup(&management(), broker.vhost(), &principals, false)
        .await
        .unwrap();
    assert!(again.iter().all(|set| set.password.is_none()));
    delete_users(&[producer, worker, dispatcher]).await;
}
