//! `baton bench ceiling`: what plain lapin does against this RabbitMQ on this machine, the
//! physical limit every other figure is divided by.
//!
//! Two figures, measured alternately in a RabbitMQ vhost of the benchmark's own that is deleted
//! afterwards, both with persistent messages, publisher confirms and acks on durable quorum
//! queues:
//!
//! - msgs/s: `bench broker`'s plain-lapin side ([`run_lapin`]), publish and consume.
//! - round trips/s ([`run_round_trips`]): a task's way through the broker with nothing of baton
//!   in it. A "dispatcher" connection publishes task messages and keeps `in_flight` of them
//!   out; a "worker" connection takes each, publishes a status message and acks the task once
//!   that status is confirmed, as a real worker does; the dispatcher acks each status and
//!   publishes the next task.
//!
//! `baton bench throughput` measures the same round trips between its device runs and divides
//! its tasks/s by them. Like `bench.rs`, this speaks AMQP outside the `broker` crate on purpose.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use serde_json::json;

use crate::OutputFormat;
use crate::bench::{
    BENCH_EXCHANGE, BenchVhost, BrokerBench, baseline_message, declare_bench_queue, median,
    run_lapin,
};
use crate::output::{Output, table};

/// Round trips kept in flight unless told otherwise: the figure issue 8 defines the ceiling
/// with, and the one `bench throughput` divides by.
pub(crate) const DEFAULT_IN_FLIGHT: u32 = 64;

/// The queue the dispatcher side publishes tasks to, and its routing key.
const TASKS_QUEUE: (&str, &str) = ("bench.tasks", "task");

/// The queue the worker side publishes statuses to, and its routing key.
const STATUS_QUEUE: (&str, &str) = ("bench.status", "status");

/// Messages (and round trips) of the warm-up of each figure, not counted: queues declared,
/// connections and code paths warm, as `bench broker` does.
const WARM_UP: u32 = 2_000;

/// How long either side waits for its next delivery or confirm before the run is reported as
/// stuck: a lost message would otherwise hang the benchmark, and a healthy run sees one every
/// millisecond or so.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `baton bench ceiling`.
#[derive(Clone, Debug)]
pub(crate) struct CeilingBench {
    /// RabbitMQ and its management API; `messages` and `runs` are those of the msgs/s figure,
    /// and `runs` also that of the round trips.
    pub(crate) broker: BrokerBench,
    /// Round trips per run.
    pub(crate) round_trips: u32,
    /// Round trips in flight at once.
    pub(crate) in_flight: u32,
}

/// What `baton bench ceiling` measured.
#[derive(Debug)]
pub(crate) struct CeilingFigures {
    /// Messages per msgs/s run.
    pub(crate) messages: u32,
    /// Round trips per run.
    pub(crate) round_trips: u32,
    /// Round trips in flight at once.
    pub(crate) in_flight: u32,
    /// Runs of each figure.
    pub(crate) runs: u32,
    /// Confirmed publish + consume, msgs/s per run.
    pub(crate) msgs_runs: Vec<f64>,
    /// Task → worker → status, round trips/s per run.
    pub(crate) round_trip_runs: Vec<f64>,
    /// Median of `msgs_runs`.
    pub(crate) msgs_per_sec: f64,
    /// Median of `round_trip_runs`.
    pub(crate) round_trips_per_sec: f64,
}

/// Runs the ceiling benchmark in a vhost of its own, deleted afterwards.
pub(crate) async fn ceiling(options: CeilingBench) -> anyhow::Result<CeilingFigures> {
    anyhow::ensure!(options.broker.runs >= 1, "--runs must be at least 1");
    anyhow::ensure!(
        options.broker.messages >= 1,
        "--messages must be at least 1"
    );
    anyhow::ensure!(options.round_trips >= 1, "--round-trips must be at least 1");
    anyhow::ensure!(
        (1..=u32::from(u16::MAX)).contains(&options.in_flight),
        "--in-flight must be between 1 and {} (it is the consumers' prefetch)",
        u16::MAX
    );
    let vhost = BenchVhost::create(&options.broker).await?;
    let outcome = options
        .broker
        .until_stopped(measure(&options, &vhost.amqp_url()))
        .await;
    let deleted = vhost.delete().await;
    match (outcome, deleted) {
        (Ok(figures), deleted) => deleted.map(|()| figures),
        (Err(error), Ok(())) => Err(error),
        (Err(error), Err(delete_error)) => {
            tracing::warn!("cleaning up after a failed benchmark: {delete_error:#}");
            Err(error)
        }
    }
}

/// The warm-up, then `runs` runs of each figure on `url`.
async fn measure(options: &CeilingBench, url: &str) -> anyhow::Result<CeilingFigures> {
    let messages = options.broker.messages;
    let (round_trips, in_flight) = (options.round_trips, options.in_flight);
    run_lapin(url, messages.min(WARM_UP))
        .await
        .context("warming up the msgs/s side")?;
    run_round_trips(url, round_trips.min(WARM_UP), in_flight)
        .await
        .context("warming up the round trips")?;
    let mut msgs_runs = Vec::new();
    let mut round_trip_runs = Vec::new();
    for run in 0..options.broker.runs {
        let msgs = || async {
            let elapsed = run_lapin(url, messages).await?;
            anyhow::Ok(f64::from(messages) / elapsed.as_secs_f64())
        };
        let trips = || async {
            let elapsed = run_round_trips(url, round_trips, in_flight).await?;
            anyhow::Ok(f64::from(round_trips) / elapsed.as_secs_f64())
        };
        // Alternate the order, so neither figure always runs on a warmer machine.
        if run.is_multiple_of(2) {
            msgs_runs.push(msgs().await.with_context(|| format!("run {}", run + 1))?);
            round_trip_runs.push(trips().await.with_context(|| format!("run {}", run + 1))?);
        } else {
            round_trip_runs.push(trips().await.with_context(|| format!("run {}", run + 1))?);
            msgs_runs.push(msgs().await.with_context(|| format!("run {}", run + 1))?);
        }
        tracing::info!(
            "run {}: {:.0} msgs/s, {:.0} round trips/s",
            run + 1,
            msgs_runs[msgs_runs.len() - 1],
            round_trip_runs[round_trip_runs.len() - 1]
        );
    }
    Ok(CeilingFigures {
        messages,
        round_trips,
        in_flight,
        runs: options.broker.runs,
        msgs_per_sec: median(msgs_runs.clone()),
        round_trips_per_sec: median(round_trip_runs.clone()),
        msgs_runs,
        round_trip_runs,
    })
}

/// Runs `count` task → worker → status round trips with plain lapin, `in_flight` at a time, on
/// two connections of their own; returns the time from the first task published to the last
/// status acked.
pub(crate) async fn run_round_trips(
    url: &str,
    count: u32,
    in_flight: u32,
) -> anyhow::Result<Duration> {
    let prefetch = u16::try_from(in_flight).context("at most 65535 round trips in flight")?;
    let dispatcher = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting the dispatcher side")?;
    let worker = match Connection::connect(url, ConnectionProperties::default()).await {
        Ok(worker) => worker,
        Err(error) => {
            let _ = dispatcher.close(200, "done".into()).await;
            return Err(error).context("connecting the worker side");
        }
    };
    let outcome = round_trips(&dispatcher, &worker, count, prefetch).await;
    // Closing also ends the side that is still running when the other failed.
    let closed = [
        dispatcher.close(200, "done".into()).await,
        worker.close(200, "done".into()).await,
    ];
    let elapsed = outcome?;
    for close in closed {
        close.context("closing a connection of the round trips")?;
    }
    Ok(elapsed)
}

/// The round trips between the `dispatcher` and `worker` connections.
async fn round_trips(
    dispatcher: &Connection,
    worker: &Connection,
    count: u32,
    prefetch: u16,
) -> anyhow::Result<Duration> {
    let tasks_channel = dispatcher.create_channel().await?;
    for (queue, routing_key) in [TASKS_QUEUE, STATUS_QUEUE] {
        declare_bench_queue(&tasks_channel, queue, routing_key).await?;
        // Left over only by a run that failed; its messages would be counted as this run's.
        tasks_channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
    }
    tasks_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (statuses_channel, statuses) = consumer(dispatcher, STATUS_QUEUE.0, prefetch).await?;
    let status_channel = worker.create_channel().await?;
    status_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (tasks_consumer_channel, tasks) = consumer(worker, TASKS_QUEUE.0, prefetch).await?;
    let message = baseline_message()?;
    // Held here and closed once both sides are done: lapin closes a channel on its own when its
    // last handle goes, and one still closing makes the connection's close fail.
    let channels = [
        tasks_channel.clone(),
        statuses_channel,
        status_channel.clone(),
        tasks_consumer_channel,
    ];

    let worker_side = tokio::spawn(work(tasks, status_channel, message.clone(), count));
    let dispatcher_side = tokio::spawn(dispatch(
        statuses,
        tasks_channel,
        message,
        count,
        u32::from(prefetch),
    ));
    let ((), elapsed) = tokio::try_join!(
        side("worker", worker_side),
        side("dispatcher", dispatcher_side)
    )?;
    for channel in channels {
        channel
            .close(200, "done".into())
            .await
            .context("closing a channel of the round trips")?;
    }
    Ok(elapsed)
}

/// What the side `name` of the round trips ended with.
async fn side<T>(
    name: &str,
    handle: tokio::task::JoinHandle<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    handle
        .await
        .with_context(|| format!("the {name} side panicked"))?
        .with_context(|| format!("the {name} side"))
}

/// A consumer of `queue` with `prefetch` unacked deliveries, on a new channel of `connection`
/// that is returned with it.
async fn consumer(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("{queue}-consumer").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Publishes `body` with `properties` on `channel`, mandatory, to `routing_key` of
/// [`BENCH_EXCHANGE`]; returns the pending confirm.
async fn publish(
    channel: &Channel,
    routing_key: &str,
    (body, properties): &(Vec<u8>, BasicProperties),
) -> anyhow::Result<PublisherConfirm> {
    Ok(channel
        .basic_publish(
            BENCH_EXCHANGE.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties.clone(),
        )
        .await?)
}

/// An error unless RabbitMQ took the `what` message: acked, and not returned as unroutable.
fn check_confirmation(confirmation: Confirmation, what: &str) -> anyhow::Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => bail!(
            "the {what} was returned: {} {}",
            returned.reply_code,
            returned.reply_text
        ),
        Confirmation::Nack(_) => bail!("RabbitMQ refused the {what} (nack)"),
        Confirmation::NotRequested => bail!("the {what} was published without confirms"),
    }
}

/// Waits up to [`STALL_TIMEOUT`] for the next delivery of `consumer`.
async fn next_delivery(
    consumer: &mut lapin::Consumer,
    what: &str,
) -> anyhow::Result<lapin::message::Delivery> {
    Ok(tokio::time::timeout(STALL_TIMEOUT, consumer.next())
        .await
        .with_context(|| format!("no {what} came for {STALL_TIMEOUT:?}"))?
        .with_context(|| format!("the {what} consumer stopped"))??)
}

/// The worker side: for each of `count` tasks, publishes a status and acks the task once the
/// status is confirmed (a real worker's order: the task stays RabbitMQ's until its report is
/// safe), with as many tasks pending as the prefetch lets in.
async fn work(
    mut tasks: lapin::Consumer,
    statuses: Channel,
    message: (Vec<u8>, BasicProperties),
    count: u32,
) -> anyhow::Result<()> {
    let mut acking = FuturesUnordered::new();
    let (mut received, mut acked) = (0, 0);
    while acked < count {
        tokio::select! {
            delivery = next_delivery(&mut tasks, "task"), if received < count => {
                let delivery = delivery?;
                received += 1;
                let confirm = publish(&statuses, STATUS_QUEUE.1, &message).await?;
                acking.push(async move {
                    let confirmation = tokio::time::timeout(STALL_TIMEOUT, confirm)
                        .await
                        .context("a status was not confirmed in time")??;
                    check_confirmation(confirmation, "status")?;
                    delivery.ack(BasicAckOptions::default()).await?;
                    anyhow::Ok(())
                });
            }
            Some(outcome) = acking.next(), if !acking.is_empty() => {
                outcome?;
                acked += 1;
            }
            else => bail!("the worker side ran out of tasks after {acked} of {count}"),
        }
    }
    Ok(())
}

/// The dispatcher side: publishes tasks, `in_flight` at a time, acks each status and publishes
/// the next task, until `count` statuses came back; returns the time from the first task
/// published to the last status acked.
async fn dispatch(
    mut statuses: lapin::Consumer,
    tasks: Channel,
    message: (Vec<u8>, BasicProperties),
    count: u32,
    in_flight: u32,
) -> anyhow::Result<Duration> {
    let confirmed = |confirm: PublisherConfirm| async move {
        let confirmation = tokio::time::timeout(STALL_TIMEOUT, confirm)
            .await
            .context("a task was not confirmed in time")??;
        check_confirmation(confirmation, "task")
    };
    let mut confirming = FuturesUnordered::new();
    let started = Instant::now();
    let mut published = 0;
    while published < count.min(in_flight) {
        confirming.push(confirmed(publish(&tasks, TASKS_QUEUE.1, &message).await?));
        published += 1;
    }
    let mut done = 0;
    while done < count {
        tokio::select! {
            delivery = next_delivery(&mut statuses, "status") => {
                delivery?.ack(BasicAckOptions::default()).await?;
                done += 1;
                if published < count {
                    confirming.push(confirmed(publish(&tasks, TASKS_QUEUE.1, &message).await?));
                    published += 1;
                }
            }
            Some(outcome) = confirming.next(), if !confirming.is_empty() => outcome?,
        }
    }
    let elapsed = started.elapsed();
    while let Some(outcome) = confirming.next().await {
        outcome?;
    }
    Ok(elapsed)
}

/// Prints the ceiling benchmark: a table for people, then one JSON line per figure.
pub(crate) fn print_ceiling_bench(
    out: &Output,
    format: OutputFormat,
    figures: &CeilingFigures,
) -> anyhow::Result<()> {
    let joined = |values: &[f64]| {
        values
            .iter()
            .map(|value| format!("{value:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if format == OutputFormat::Table {
        let mut summary = table(&[
            "ceiling: plain lapin, persistent, confirmed, quorum queues",
            "median",
            "runs",
        ]);
        summary.add_row(vec![
            format!("publish + consume, msgs/s ({} messages)", figures.messages),
            format!("{:.0}", figures.msgs_per_sec),
            joined(&figures.msgs_runs),
        ]);
        summary.add_row(vec![
            format!(
                "task → worker → status, round trips/s ({} round trips, {} in flight)",
                figures.round_trips, figures.in_flight
            ),
            format!("{:.0}", figures.round_trips_per_sec),
            joined(&figures.round_trip_runs),
        ]);
        out.line(summary);
    }
    let lines = [
        json!({
            "scenario": "ceiling",
            "figure": "msgs_per_s",
            "value": figures.msgs_per_sec,
            "messages": figures.messages,
            "runs": figures.runs,
            "run_values": figures.msgs_runs,
        }),
        json!({
            "scenario": "ceiling",
            "figure": "round_trips_per_s",
            "value": figures.round_trips_per_sec,
            "round_trips": figures.round_trips,
            "in_flight": figures.in_flight,
            "runs": figures.runs,
            "run_values": figures.round_trip_runs,
        }),
    ];
    for line in lines {
        out.line(serde_json::to_string(&line)?);
    }
    Ok(())
}
