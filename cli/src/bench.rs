//! `baton bench`: measured speed, with a plain-lapin baseline doing the same work in the same
//! run, so the figures are ratios that survive a noisy machine.
//!
//! `baton bench broker` publishes N persistent messages with pipelined publisher confirms and
//! consumes them with acks, once through baton's broker layer (envelope, typed decoding, confirm
//! checks) and once through plain lapin (the same bytes, the same queue arguments), alternating
//! which goes first, in a RabbitMQ vhost of its own that is deleted afterwards. The baseline
//! (with `bench_ceiling`'s round trips) speaks AMQP outside the `broker` crate, on purpose.
//!
//! The plain-lapin side ([`run_lapin`]) is also the msgs/s figure of `baton bench ceiling`
//! (`bench_ceiling`), and measured between the runs of `bench throughput`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use broker::topology::{self, TASKS_EXCHANGE};
use broker::{Broker, BrokerConfig, Consumer, Meta, Publisher};
use models::wire::TaskReady;
use models::{FunctionKey, PlanKey, RequirementSet, TaskKey};
use tokio_util::sync::CancellationToken;

/// Confirms kept in flight by both sides: enough to hide the round trip, as a real relay would.
const WINDOW: usize = 1_000;

/// The direct exchange plain-lapin baselines publish to.
pub(crate) const BENCH_EXCHANGE: &str = "bench.raw";

/// Options of `baton bench broker`.
#[derive(Clone, Debug)]
pub(crate) struct BrokerBench {
    /// `amqp://user:password@host:port` without a vhost.
    pub(crate) amqp_url: String,
    /// The management API (`http://host:15672/api`).
    pub(crate) management_url: String,
    /// The management API's user and password.
    pub(crate) management_user: (String, String),
    /// Messages per run.
    pub(crate) messages: u32,
    /// Runs of each side.
    pub(crate) runs: u32,
    /// Cancelled to stop the benchmark early (SIGINT or SIGTERM): it then removes what it made
    /// and ends in an error.
    pub(crate) stop: CancellationToken,
}

impl BrokerBench {
    /// Runs `work`, the part of a benchmark between making its vhost (and database) and
    /// removing them, unless the benchmark is stopped first: `work` is then dropped, and the
    /// caller removes what the benchmark made as after a failure.
    pub(crate) async fn until_stopped<T>(
        &self,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            outcome = work => outcome,
            () = self.stop.cancelled() => bail!("the benchmark was stopped before its end"),
        }
    }
}

/// A vhost that lives as long as the benchmark.
pub(crate) struct BenchVhost {
    name: String,
    options: BrokerBench,
}

impl BenchVhost {
    /// Makes a fresh vhost through the management API and gives the user of `options` every
    /// permission on it.
    pub(crate) async fn create(options: &BrokerBench) -> anyhow::Result<BenchVhost> {
        let name = format!("baton-bench-{}", uuid::Uuid::new_v4().simple());
        let client = reqwest::Client::new();
        let (user, password) = &options.management_user;
        for (path, body) in [
            (format!("/vhosts/{name}"), None),
            (
                format!("/permissions/{name}/{user}"),
                Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
            ),
        ] {
            let mut request = client
                .put(format!("{}{path}", options.management_url))
                .basic_auth(user, Some(password));
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.with_context(|| {
                format!(
                    "reaching the RabbitMQ management API at {} (is rabbitmq_management enabled?)",
                    options.management_url
                )
            })?;
            if !response.status().is_success() {
                bail!("management API {path}: {}", response.status());
            }
        }
        Ok(BenchVhost {
            name,
            options: options.clone(),
        })
    }

    /// The AMQP URL of the vhost.
    pub(crate) fn amqp_url(&self) -> String {
        format!("{}/{}", self.options.amqp_url, self.name)
    }

    /// Deletes the vhost and everything in it.
    pub(crate) async fn delete(self) -> anyhow::Result<()> {
        let (user, password) = &self.options.management_user;
        reqwest::Client::new()
            .delete(format!(
                "{}/vhosts/{}",
                self.options.management_url, self.name
            ))
            .basic_auth(user, Some(password))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("deleting the benchmark vhost {}", self.name))?;
        Ok(())
    }
}

fn message(n: u32) -> TaskReady {
    TaskReady {
        task_key: TaskKey(uuid::Uuid::from_u128(u128::from(n))),
        compute_plan_key: PlanKey(uuid::Uuid::from_u128(1)),
        function_key: FunctionKey(uuid::Uuid::from_u128(2)),
        requirements: RequirementSet::any(),
        attempt: None,
    }
}

/// Publishes and consumes `count` messages through baton's broker layer; returns the time from
/// the first publish to the last ack.
async fn run_baton(url: &str, count: u32) -> anyhow::Result<Duration> {
    let publishing = Broker::connect(BrokerConfig::new(url, "baton-bench-publisher")).await?;
    let consuming = Broker::connect(BrokerConfig::new(url, "baton-bench-consumer")).await?;
    publishing.declare_topology().await?;
    let queue = publishing
        .declare_task_queue(&RequirementSet::any())
        .await?;
    let publisher = Publisher::new(&publishing).await?;
    let prefetch = u16::try_from(WINDOW).unwrap_or(u16::MAX);
    let mut consumer = Consumer::<TaskReady>::new(&consuming, &queue, prefetch).await?;

    let started = Instant::now();
    let sending = tokio::spawn(async move {
        let mut pending = VecDeque::with_capacity(WINDOW);
        for n in 0..count {
            pending.push_back(
                publisher
                    .send(TASKS_EXCHANGE, "any", &message(n), Meta::default())
                    .await?,
            );
            if pending.len() >= WINDOW
                && let Some(confirm) = pending.pop_front()
            {
                confirm.confirmed().await?;
            }
        }
        for confirm in pending {
            confirm.confirmed().await?;
        }
        anyhow::Ok(())
    });
    for _ in 0..count {
        let delivery = consumer
            .next()
            .await
            .context("the benchmark consumer stopped")??;
        delivery.ack().await?;
    }
    let elapsed = started.elapsed();
    sending.await??;
    publishing.close().await?;
    consuming.close().await?;
    Ok(elapsed)
}

/// The bytes and properties baton would send for a task message, built once: plain-lapin
/// baselines send them as they are and do no encoding.
pub(crate) fn baseline_message() -> anyhow::Result<(Vec<u8>, BasicProperties)> {
    Ok(broker::envelope::encode(&message(0), &Meta::default())?)
}

/// Declares the durable quorum queue `queue` (with the arguments of baton's task queues) and
/// binds it to [`BENCH_EXCHANGE`] under `routing_key`, declaring the exchange first.
pub(crate) async fn declare_bench_queue(
    channel: &lapin::Channel,
    queue: &str,
    routing_key: &str,
) -> anyhow::Result<()> {
    channel
        .exchange_declare(
            BENCH_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            topology::quorum_arguments(topology::DEFAULT_DELIVERY_LIMIT),
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            BENCH_EXCHANGE.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The same work with plain lapin: same body bytes and properties, a quorum queue with the same
/// arguments, pipelined confirms, acks one by one.
pub(crate) async fn run_lapin(url: &str, count: u32) -> anyhow::Result<Duration> {
    let publishing = Connection::connect(url, ConnectionProperties::default()).await?;
    let consuming = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = publishing.create_channel().await?;
    declare_bench_queue(&channel, "bench.raw", "any").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume_channel = consuming.create_channel().await?;
    let prefetch = u16::try_from(WINDOW).unwrap_or(u16::MAX);
    consume_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consume_channel
        .basic_consume(
            "bench.raw".into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (body, properties) = baseline_message()?;

    // Held here and closed before the connections: lapin closes a channel on its own when its
    // last handle goes, and a connection closed while one of its channels is still closing
    // fails (`invalid channel state: Closing`).
    let channels = [channel.clone(), consume_channel.clone()];
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        let mut pending = VecDeque::with_capacity(WINDOW);
        for _ in 0..count {
            pending.push_back(
                channel
                    .basic_publish(
                        BENCH_EXCHANGE.into(),
                        "any".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        properties.clone(),
                    )
                    .await?,
            );
            if pending.len() >= WINDOW
                && let Some(confirm) = pending.pop_front()
            {
                confirm.await?;
            }
        }
        for confirm in pending {
            confirm.await?;
        }
        anyhow::Ok(())
    });
    for _ in 0..count {
        let delivery = consumer
            .next()
            .await
            .context("the baseline consumer stopped")??;
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    sending.await??;
    for channel in channels {
        channel.close(200, "done".into()).await?;
    }
    publishing.close(200, "done".into()).await?;
    consuming.close(200, "done".into()).await?;
    Ok(elapsed)
}

/// The median of `values` (the mean of the two middle ones for an even count).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) && middle > 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// What `baton bench broker` measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct BrokerFigures {
    /// Messages per run.
    pub(crate) messages: u32,
    /// Runs of each side.
    pub(crate) runs: u32,
    /// Plain lapin, msgs/s per run.
    pub(crate) lapin_runs: Vec<f64>,
    /// baton's broker layer, msgs/s per run.
    pub(crate) baton_runs: Vec<f64>,
    /// Median of `lapin_runs`.
    pub(crate) lapin_median: f64,
    /// Median of `baton_runs`.
    pub(crate) baton_median: f64,
    /// `baton_median / lapin_median`.
    pub(crate) ratio: f64,
}

/// Runs the broker benchmark.
pub(crate) async fn broker(options: BrokerBench) -> anyhow::Result<BrokerFigures> {
    if options.runs == 0 || options.messages == 0 {
        bail!("--runs and --messages must be at least 1");
    }
    let vhost = BenchVhost::create(&options).await?;
    let url = vhost.amqp_url();
    let mut lapin_runs = Vec::new();
    let mut baton_runs = Vec::new();
    let outcome = options
        .until_stopped(async {
            // A warm-up of each side, not counted: queues created, code paths hot.
            run_lapin(&url, options.messages.min(2_000)).await?;
            run_baton(&url, options.messages.min(2_000)).await?;
            for run in 0..options.runs {
                let rate = |elapsed: Duration| f64::from(options.messages) / elapsed.as_secs_f64();
                // Alternate the order, so neither side always runs on a warmer machine.
                if run.is_multiple_of(2) {
                    lapin_runs.push(rate(run_lapin(&url, options.messages).await?));
                    baton_runs.push(rate(run_baton(&url, options.messages).await?));
                } else {
                    baton_runs.push(rate(run_baton(&url, options.messages).await?));
                    lapin_runs.push(rate(run_lapin(&url, options.messages).await?));
                }
                tracing::info!(
                    "run {}: lapin {:.0} msgs/s, baton {:.0} msgs/s",
                    run + 1,
                    lapin_runs[lapin_runs.len() - 1],
                    baton_runs[baton_runs.len() - 1]
                );
            }
            anyhow::Ok(())
        })
        .await;
    vhost.delete().await?;
    outcome?;
    let lapin_median = median(lapin_runs.clone());
    let baton_median = median(baton_runs.clone());
    Ok(BrokerFigures {
        messages: options.messages,
        runs: options.runs,
        lapin_runs,
        baton_runs,
        lapin_median,
        baton_median,
        ratio: baton_median / lapin_median,
    })
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
