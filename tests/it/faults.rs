//! Faults that affect the whole RabbitMQ node. Their names start with `fault_`: `.ci/run` runs
//! them one at a time after every other test, since they would disturb tests running beside
//! them.

use std::process::Command;
use std::time::Duration;

use broker::topology::TASKS_EXCHANGE;
use broker::{Broker, BrokerError, Meta, Publisher};
use models::wire::TaskReady;
use models::{FunctionKey, PlanKey, RequirementSet, TaskKey};

use crate::support::broker::TestBroker;

/// Sets the node's memory high watermark; a tiny one raises the memory alarm, which blocks
/// every publishing connection.
fn set_memory_watermark(fraction: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["set_vm_memory_high_watermark", fraction])
        .status()
        .expect("rabbitmqctl runs (the tests run as root beside the broker)");
    assert!(
        status.success(),
        "rabbitmqctl set_vm_memory_high_watermark {fraction}"
    );
}

/// Lifts the alarm when the test ends, whatever happens in it.
struct AlarmGuard;

impl Drop for AlarmGuard {
    fn drop(&mut self) {
        set_memory_watermark("0.4");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_a_blocked_connection_times_out_its_confirms_and_says_so() {
    let test = TestBroker::new().await;
    let mut config = test.config("test-blocked");
    config.confirm_timeout = Duration::from_secs(2);
    let broker = Broker::connect(config).await.unwrap();
    broker.declare_topology().await.unwrap();
    broker
        .declare_task_queue(&RequirementSet::any())
        .await
        .unwrap();
    let publisher = Publisher::new(&broker).await.unwrap();
    let message = TaskReady {
        task_key: TaskKey(uuid::Uuid::from_u128(1)),
        compute_plan_key: PlanKey(uuid::Uuid::from_u128(2)),
        function_key: FunctionKey(uuid::Uuid::from_u128(3)),
        requirements: RequirementSet::any(),
        attempt: None,
    };
    publisher
        .publish(TASKS_EXCHANGE, "any", &message, Meta::default())
        .await
        .unwrap();

    let guard = AlarmGuard;
    set_memory_watermark("0.0000001");
    // RabbitMQ blocks a connection when it next publishes.
    let error = publisher
        .publish(TASKS_EXCHANGE, "any", &message, Meta::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, BrokerError::ConfirmTimeout { .. }),
        "{error:?}"
    );
    let mut state = broker.watch_state();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.blocked.is_some()),
    )
    .await
    .expect("the blocked state is seen within 10 s")
    .unwrap();

    drop(guard);
    tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| s.blocked.is_none()),
    )
    .await
    .expect("the connection is unblocked within 30 s of the alarm clearing")
    .unwrap();
    publisher
        .publish(TASKS_EXCHANGE, "any", &message, Meta::default())
        .await
        .unwrap();
}
