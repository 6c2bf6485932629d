//! `baton logs TASK` prints a task's stored log lines; `baton logs -f TASK` follows them live.
//!
//! Following binds an exclusive, server-named queue to the task's `task.<key>.log` and
//! `task.<key>.status` events on `baton.events` *before* reading what is stored, so no line
//! falls between the two. Stored lines are printed first, then live ones; each line is printed
//! once, identified by its attempt and sequence number, and in order: a live line that arrives
//! ahead of lines not yet seen waits until storage (which the dispatcher fills from the same
//! events) has them. It ends when the task is DONE, FAILED or CANCELED; the stored log is then
//! complete, since the dispatcher stores an attempt's lines before its end.
//!
//! The API decides who may read a log: following starts by reading it there, so a caller the
//! API refuses gets its 403 before anything is taken from RabbitMQ. When RabbitMQ cannot be
//! used (unreachable, or a user without the right to declare a queue), it follows by polling
//! the API instead.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use tokio_util::sync::CancellationToken;

use broker::envelope::Envelope;
use broker::topology::{EVENTS_EXCHANGE, task_event_key};
use models::wire::{LogBatch, WireMessage};
use models::{Attempt, LogLine, TaskKey};

use crate::client::{ApiClient, MAX_PAGE_SIZE, Page};
use crate::output::{LogPrinter, Output};
use crate::{LogsArgs, OutputFormat};

/// How long live lines wait for storage to fill the gap before them; past it they are printed
/// anyway (the lines before were dropped, e.g. by a lease that lapsed).
const GAP_PATIENCE: Duration = Duration::from_secs(10);

/// Runs `baton logs`.
pub(crate) async fn run(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    args: LogsArgs,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let task = TaskKey(args.task);
    let mut log = TaskLog::new(out, format, task);
    if !args.follow {
        return log.catch_up(client).await;
    }
    let interval = Duration::from_millis(args.interval_ms);
    follow(&mut log, client, &args.amqp_url, interval, stop).await
}

/// What was printed of a task's log, and what waits to be.
struct TaskLog<'a> {
    out: &'a Output,
    format: OutputFormat,
    task: TaskKey,
    printer: LogPrinter,
    /// How many stored lines were read: the API lists them by attempt, then sequence number,
    /// and an attempt's lines are stored in order before the next attempt starts, so new
    /// stored lines always come after these.
    stored_read: u64,
    /// The next sequence number to print, per attempt.
    next_seq: BTreeMap<Attempt, u64>,
    /// Live lines that arrived ahead of lines not yet seen.
    pending: BTreeMap<(Attempt, u64), LogLine>,
    /// Since when lines have been pending.
    pending_since: Option<tokio::time::Instant>,
}

impl<'a> TaskLog<'a> {
    fn new(out: &'a Output, format: OutputFormat, task: TaskKey) -> TaskLog<'a> {
        TaskLog {
            out,
            format,
            task,
            printer: LogPrinter::default(),
            stored_read: 0,
            next_seq: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_since: None,
        }
    }

    fn print(&mut self, line: &LogLine) -> anyhow::Result<()> {
        self.next_seq.insert(line.attempt, line.seq + 1);
        self.printer.print(self.out, self.format, line)
    }

    /// Prints the pending lines that now follow what was printed.
    fn drain(&mut self) -> anyhow::Result<()> {
        self.release(false)
    }

    /// Prints the pending lines that follow what was printed; with `superseded`, also those of
    /// an attempt older than a pending line's, whose missing lines storage does not have (it
    /// had every line of an attempt before the next one started) and never will.
    fn release(&mut self, superseded: bool) -> anyhow::Result<()> {
        while let Some((&(attempt, seq), _)) = self.pending.first_key_value() {
            let next = self.next_seq.get(&attempt).copied().unwrap_or(0);
            let older = superseded
                && self
                    .pending
                    .last_key_value()
                    .is_some_and(|(&(last, _), _)| last > attempt);
            if seq > next && !older {
                break;
            }
            if let Some((_, line)) = self.pending.pop_first()
                && seq >= next
            {
                self.print(&line)?;
            }
        }
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        Ok(())
    }

    /// Takes a line read from storage, which holds every line in order: printed unless it was.
    fn stored(&mut self, line: LogLine) -> anyhow::Result<()> {
        let next = self.next_seq.get(&line.attempt).copied().unwrap_or(0);
        if line.seq >= next {
            self.print(&line)?;
        }
        self.drain()
    }

    /// Takes a line that arrived live: printed when it is the next of its attempt, kept while
    /// lines before it are missing, dropped when it was printed.
    fn live(&mut self, line: LogLine) -> anyhow::Result<()> {
        let next = self.next_seq.get(&line.attempt).copied().unwrap_or(0);
        if line.seq < next {
            return Ok(());
        }
        self.pending_since
            .get_or_insert_with(tokio::time::Instant::now);
        self.pending.insert((line.attempt, line.seq), line);
        self.drain()
    }

    /// Prints every pending line, in order, giving up on what is missing before them.
    fn flush(&mut self) -> anyhow::Result<()> {
        for (_, line) in std::mem::take(&mut self.pending) {
            let next = self.next_seq.get(&line.attempt).copied().unwrap_or(0);
            if line.seq >= next {
                self.print(&line)?;
            }
        }
        self.pending_since = None;
        Ok(())
    }

    /// Reads the stored lines not read yet and prints those not printed.
    async fn catch_up(&mut self, client: &ApiClient) -> anyhow::Result<()> {
        loop {
            let page_size = u64::from(MAX_PAGE_SIZE);
            let page = Page {
                page: u32::try_from(self.stored_read / page_size + 1)
                    .context("the task's log has too many lines to page through")?,
                page_size: MAX_PAGE_SIZE,
            };
            let skip = (self.stored_read % page_size) as usize;
            let lines = client
                .task_logs(self.task, page)
                .await
                .with_context(|| format!("reading the log of task {}", self.task))?;
            let full = lines.results.len() as u64 == page_size;
            let fresh: Vec<LogLine> = lines.results.into_iter().skip(skip).collect();
            self.stored_read += fresh.len() as u64;
            for line in fresh {
                self.stored(line)?;
            }
            if !full {
                return self.release(true);
            }
        }
    }
}

/// A live line of `batch`.
fn line_of(batch: &LogBatch, record: models::wire::LogRecord) -> LogLine {
    LogLine {
        task_key: batch.task_key,
        attempt: batch.attempt,
        seq: record.seq,
        step: record.step,
        stream: record.stream,
        timestamp: record.timestamp,
        text: record.text,
        truncated: record.truncated,
    }
}

/// Follows the task's log until the task ends (or `stop` is cancelled).
async fn follow(
    log: &mut TaskLog<'_>,
    client: &ApiClient,
    amqp_url: &str,
    interval: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let task = log.task;
    // Fails early, with the API's 404, for a task that does not exist, and with its 403 for a
    // caller that may not read the log: the API decides who reads it, live lines included.
    client.task(task).await?;
    client
        .task_logs(
            task,
            Page {
                page: 1,
                page_size: 1,
            },
        )
        .await
        .with_context(|| format!("reading the log of task {task}"))?;
    let broker = match crate::services::connect_broker(amqp_url, "baton-logs").await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::warn!("following task {task} through the API only: {error:#}");
            return poll(log, client, interval, stop).await;
        }
    };
    let followed = async {
        let mut events = match subscribe(&broker, task).await {
            Ok(events) => events,
            // A RabbitMQ user that may not declare or bind a queue (a producer's, set up by
            // `baton rabbitmq setup`) still follows, by polling the API.
            Err(error) => {
                tracing::warn!("following task {task} through the API only: {error:#}");
                return poll(log, client, interval, stop).await;
            }
        };
        let mut current = client.task(task).await?;
        log.catch_up(client).await?;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if current.status.is_terminal() {
                // Every line of the task is stored by now.
                log.catch_up(client).await?;
                return log.flush();
            }
            tokio::select! {
                delivery = events.next() => {
                    let delivery = match delivery {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(error)) => {
                            return Err(anyhow::Error::new(error)
                                .context(format!("receiving the events of task {task}")));
                        }
                        None => bail!("RabbitMQ closed the queue of task {task}'s events"),
                    };
                    let envelope = Envelope::open(&delivery.properties, &delivery.data)
                        .context("reading an event of the task")?;
                    if envelope.kind == LogBatch::KIND {
                        let batch: LogBatch = envelope
                            .decode()
                            .context("reading a log batch of the task")?;
                        for record in batch.lines.clone() {
                            log.live(line_of(&batch, record))?;
                        }
                        continue;
                    }
                    // A status report: an attempt ended; see what became of the task.
                }
                _ = ticks.tick() => {}
                () = stop.cancelled() => bail!("stopped following task {task}, which is {}", current.status),
            }
            current = client.task(task).await?;
            if !log.pending.is_empty() {
                log.catch_up(client).await?;
                if log
                    .pending_since
                    .is_some_and(|since| since.elapsed() > GAP_PATIENCE)
                {
                    log.flush()?;
                }
            }
        }
    }
    .await;
    if let Err(error) = broker.close().await {
        tracing::debug!("closing the RabbitMQ connection: {error}");
    }
    followed
}

/// Follows the task's log by reading storage through the API every `interval`, until the task
/// ends: for when RabbitMQ cannot be used.
async fn poll(
    log: &mut TaskLog<'_>,
    client: &ApiClient,
    interval: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let task = log.task;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = client.task(task).await?;
        log.catch_up(client).await?;
        if current.status.is_terminal() {
            return log.flush();
        }
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => bail!("stopped following task {task}, which is {}", current.status),
        }
    }
}

/// Declares an exclusive, server-named queue that RabbitMQ deletes with the connection, bound to
/// `task`'s log and status events, and consumes it.
async fn subscribe(broker: &broker::Broker, task: TaskKey) -> anyhow::Result<lapin::Consumer> {
    let channel = broker
        .channel()
        .await
        .context("opening a RabbitMQ channel")?;
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring a queue for the task's events")?;
    for verb in ["log", "status"] {
        let routing_key = task_event_key(task, verb);
        channel
            .queue_bind(
                queue.name().clone(),
                ShortString::from(EVENTS_EXCHANGE),
                ShortString::from(routing_key.as_str()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding {EVENTS_EXCHANGE} ({routing_key}) to the queue"))?;
    }
    channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from("baton-logs"),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consuming the task's events")
}

#[cfg(test)]
mod tests;
