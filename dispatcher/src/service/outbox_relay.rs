//! The outbox relay: publishes ready tasks recorded in the outbox, in order, with confirms, and
//! deletes each row only once RabbitMQ confirmed it. A crash between the two publishes a task
//! twice; claims make the duplicate harmless. Rows stay through broker outages.
//!
//! The dispatcher's own loops hand the rows they commit to the relay in memory ([`Handover`]),
//! so a ready task is published without the relay reading it back; the relay reads the outbox
//! only for rows nobody handed over: a retry's backoff that ended, a hand-over lost to a crash
//! or a refused publish, rows other programs stored.
//!
//! A round with more rows for one task queue than the configured `publish_ahead` publishes
//! that many and holds the rest back in the outbox ([`tasks::hold_outbox_rows`]); later rows
//! for that queue are held behind them. A submission stores its rows beyond the window held
//! already ([`hold_beyond_window`]), so that a large plan's rows are not written twice. While
//! rows are held, the relay reads the queues' ready messages every [`HELD_POLL`] and releases,
//! oldest first, as many rows as their consumers took. The event applier deletes the held row
//! of a task it grants without the queue (a refill, a follow-up), so that task's message is
//! never published only to be dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use broker::topology::{CONTROL_EXCHANGE, QUEUE_ANNOUNCE_KEY, TASKS_EXCHANGE};
use broker::{Meta, Publisher};
use models::RequirementSet;
use models::wire::{QueueAnnouncement, TaskReady};

use super::Context;
use crate::store::rows::{NewOutboxRow, OutboxRow};
use crate::store::{self, tasks, workers};

/// Rows published per round: enough to amortise a transaction, few enough to keep confirms
/// flowing.
pub const BATCH: i64 = 1_000;

/// How often, while rows are held back, their queues' ready messages are read to release more.
const HELD_POLL: Duration = Duration::from_millis(20);

/// The task queues with rows held back in the outbox: each routing key's queue.
#[derive(Default)]
struct Held {
    /// Queue names by routing key.
    queues: HashMap<String, String>,
    /// Whether the outbox should be read for held rows this relay does not know of: rows
    /// held before a restart, or by another dispatcher's relay.
    unknown: bool,
}

impl Held {
    /// Whether some rows are known to be held, or may be.
    fn pending(&self) -> bool {
        self.unknown || !self.queues.is_empty()
    }
}

/// How long to wait after a failed round before the next.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How often the same unsatisfiable requirement set is warned about.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How far ahead a row handed over in memory is stored as available: the relay publishes it at
/// once and deletes it, so only a row whose hand-over was lost (its writer crashed, RabbitMQ
/// refused it) is ever found by polling, this long after it was written. Another dispatcher's
/// relay does not publish it meanwhile.
pub const HANDOVER_GRACE: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Outbox rows committed by the other loops and handed to the relay in memory, so that it
/// publishes them without reading them back (see [`HANDOVER_GRACE`]).
#[derive(Debug, Default)]
pub struct Handover {
    rows: Mutex<Vec<OutboxRow>>,
}

impl Handover {
    /// Adds committed rows, to be published after those already handed over. Of the rows
    /// stored held, only each queue's first is kept: it tells the relay that the queue has rows
    /// held from there on, and the relay releases them from the outbox.
    pub(crate) fn push(&self, rows: Vec<OutboxRow>) {
        let mut held_queues = HashSet::new();
        let rows = rows
            .into_iter()
            .filter(|row| !row.held || held_queues.insert(row.routing_key.clone()));
        self.lock().extend(rows);
    }

    /// Takes every row handed over so far.
    fn take(&self) -> Vec<OutboxRow> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OutboxRow>> {
        // A panic while holding the lock leaves a plain Vec: still usable.
        self.rows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A queue's window of `publish_ahead` rows (none when it is 0), counted over rows taken in
/// publishing order.
struct Window<'a> {
    publish_ahead: usize,
    per_queue: HashMap<&'a str, usize>,
}

impl<'a> Window<'a> {
    fn new(publish_ahead: usize) -> Window<'a> {
        Window {
            publish_ahead,
            per_queue: HashMap::new(),
        }
    }

    /// Whether rows are held at all.
    fn applies(&self) -> bool {
        self.publish_ahead > 0
    }

    /// Counts the next row of `routing_key`'s queue; whether it is beyond the window.
    fn beyond(&mut self, routing_key: &'a str) -> bool {
        let publish_ahead = self.publish_ahead;
        let count = self.per_queue.entry(routing_key).or_default();
        *count += 1;
        publish_ahead > 0 && *count > publish_ahead
    }
}

/// Marks as held the rows of `rows` (in publishing order) beyond each queue's first
/// `publish_ahead` (none when it is 0): what the relay would hold back of them as one round.
pub fn hold_beyond_window(rows: &mut [NewOutboxRow], publish_ahead: usize) {
    let mut window = Window::new(publish_ahead);
    let held: Vec<bool> = rows
        .iter()
        .map(|row| window.beyond(&row.routing_key))
        .collect();
    for (row, held) in rows.iter_mut().zip(held) {
        row.held = held;
    }
}

/// How long a requirement set seen served by an active worker is not checked again.
const SERVED_FRESH: Duration = Duration::from_secs(1);

/// Requirement sets no active worker satisfies, and when each was last warned about; and those
/// recently seen served, so that a busy relay does not list the workers for every round.
#[derive(Default)]
struct Unserved {
    warned: std::collections::HashMap<String, std::time::Instant>,
    served: std::collections::HashMap<String, std::time::Instant>,
}

impl Unserved {
    /// Warns (at most every [`WARN_EVERY`] per set) about published tasks whose requirements no
    /// active, enabled worker satisfies, and records it in each such task's history: they stay
    /// queued until one registers.
    async fn check(
        &mut self,
        context: &Context,
        published: &[(String, RequirementSet, models::TaskKey)],
    ) {
        let all_fresh = published.iter().all(|(routing_key, _, _)| {
            self.served
                .get(routing_key)
                .is_some_and(|at| at.elapsed() < SERVED_FRESH)
        });
        if all_fresh {
            return;
        }
        let mut conn = match store::connection(&context.pool).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!("listing workers: {error}");
                return;
            }
        };
        let workers = match workers::list_workers(&mut conn).await {
            Ok(workers) => workers,
            Err(error) => {
                tracing::debug!("listing workers: {error}");
                return;
            }
        };
        let served = |requirements: &RequirementSet| {
            workers.iter().any(|worker| {
                worker.is_active
                    && worker.is_enabled
                    && !worker.should_disconnect
                    && requirements.is_satisfied_by(&worker.properties)
            })
        };
        let now = chrono::Utc::now();
        for (routing_key, requirements, _) in published {
            if served(requirements) {
                self.served
                    .insert(routing_key.clone(), std::time::Instant::now());
            }
        }
        let unserved: Vec<models::TaskStateChange> = published
            .iter()
            .filter(|(_, requirements, _)| !served(requirements))
            .map(|(routing_key, _, task)| models::TaskStateChange {
                task_key: *task,
                timestamp: now,
                status: models::TaskStatus::Todo,
                reason: format!(
                    "no active worker satisfies `{routing_key}`: waiting for one to register"
                ),
                attempt: None,
            })
            .collect();
        if let Err(error) = tasks::insert_state_changes(&conn, &unserved).await {
            tracing::debug!("recording unserved tasks: {error}");
        }
        let mut counts: std::collections::BTreeMap<&str, (usize, &RequirementSet)> =
            std::collections::BTreeMap::new();
        for (routing_key, requirements, _) in published {
            counts.entry(routing_key).or_insert((0, requirements)).0 += 1;
        }
        for (routing_key, (count, requirements)) in counts {
            let served = served(requirements);
            let recently = self
                .warned
                .get(routing_key)
                .is_some_and(|at| at.elapsed() < WARN_EVERY);
            if !served && !recently {
                tracing::warn!(
                    routing_key,
                    "{count} task(s) need `{routing_key}` and no active worker satisfies it; \
                     they wait in {} until one registers",
                    broker::topology::task_queue(requirements)
                );
                self.warned
                    .insert(routing_key.to_owned(), std::time::Instant::now());
            }
        }
    }
}

/// The relay's state between rounds: where it publishes, the queues it declared, the
/// requirement sets seen unserved, and the queues with rows held back.
struct Relay<'a> {
    context: &'a Context,
    publisher: Publisher,
    declared: HashSet<String>,
    unserved: Unserved,
    held: Held,
}

impl Relay<'_> {
    /// Publishes `rows` in order, with confirms, and deletes the confirmed ones; returns how many
    /// were published. With `may_hold`, a queue's rows beyond the configured `publish_ahead`, and
    /// those of a queue whose earlier rows are held, are held back instead (see the module's
    /// documentation). A row handed over as stored held is not published: its queue has rows
    /// held from it on.
    async fn publish_rows(&mut self, rows: &[OutboxRow], may_hold: bool) -> anyhow::Result<usize> {
        let mut messages = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        let mut window = Window::new(self.context.config.publish_ahead);
        let mut holding = Vec::new();
        for row in rows {
            if row.held && self.held.queues.contains_key(&row.routing_key) {
                continue;
            }
            let message: TaskReady = match serde_json::from_value(row.payload.clone()) {
                Ok(message) => message,
                Err(error) => {
                    // Written by this program, so this is a bug; keep the row for an operator.
                    tracing::error!(
                        outbox.id = row.id,
                        "outbox row {} is not a task.ready message: {error}",
                        row.id
                    );
                    undecodable.push(row.id);
                    continue;
                }
            };
            // Stored held (its queue is held from it on), beyond the window, or behind rows
            // of its queue held earlier.
            let hold = row.held
                || (may_hold
                    && window.applies()
                    && (window.beyond(&row.routing_key)
                        || self.held.queues.contains_key(&row.routing_key)));
            if hold {
                self.held
                    .queues
                    .entry(row.routing_key.clone())
                    .or_insert_with(|| broker::topology::task_queue(&message.requirements));
                if !row.held {
                    holding.push(row.id);
                }
                continue;
            }
            if !self.declared.contains(&row.routing_key) {
                self.context
                    .broker
                    .declare_task_queue(&message.requirements)
                    .await?;
                self.declared.insert(row.routing_key.clone());
                // Workers that satisfy the set start consuming its queue.
                let announcement = QueueAnnouncement {
                    requirements: message.requirements.clone(),
                };
                self.publisher
                    .publish_broadcast(
                        CONTROL_EXCHANGE,
                        QUEUE_ANNOUNCE_KEY,
                        &announcement,
                        Meta::default(),
                    )
                    .await?;
            }
            messages.push((row, message));
        }
        if !holding.is_empty() {
            let mut conn = store::connection(&self.context.pool).await?;
            tasks::hold_outbox_rows(&mut conn, &holding).await?;
            tracing::debug!(
                "held {} outbox rows back, {} queues have rows held",
                holding.len(),
                self.held.queues.len()
            );
        }
        // Handed to the connection all at once and in order (lapin queues a publish's frames when
        // it is first polled): one write for the round, not one wake-up of lapin's I/O loop per row.
        let sent = futures::future::join_all(messages.iter().map(|(row, message)| {
            let meta = Meta {
                message_id: format!("task-{}-outbox-{}", message.task_key, row.id),
                ..Meta::default()
            };
            self.publisher
                .send(TASKS_EXCHANGE, &row.routing_key, message, meta)
        }))
        .await;
        let mut pending = Vec::with_capacity(sent.len());
        let mut published = Vec::with_capacity(sent.len());
        for ((row, message), sent) in messages.into_iter().zip(sent) {
            match sent {
                Ok(confirm) => {
                    published.push((
                        row.routing_key.clone(),
                        message.requirements,
                        message.task_key,
                    ));
                    pending.push((row.id, confirm));
                }
                Err(error) => tracing::warn!("publishing outbox row {}: {error}", row.id),
            }
        }
        let mut confirmed = Vec::with_capacity(pending.len());
        let mut failure = None;
        for (id, confirm) in pending {
            match confirm.confirmed().await {
                Ok(()) => confirmed.push(id),
                Err(error) => {
                    if let broker::BrokerError::Unroutable { routing_key, .. } = &error {
                        // The queue was deleted (by an operator?): declare it again next round.
                        self.declared.remove(routing_key);
                    }
                    failure.get_or_insert(error);
                }
            }
        }
        if !confirmed.is_empty() {
            let mut conn = store::connection(&self.context.pool).await?;
            tasks::delete_outbox_rows(&mut conn, &confirmed).await?;
        }
        self.unserved.check(self.context, &published).await;
        if let Some(error) = failure {
            return Err(error.into());
        }
        if !undecodable.is_empty() && confirmed.is_empty() {
            anyhow::bail!("outbox rows {undecodable:?} cannot be published");
        }
        Ok(confirmed.len())
    }

    /// Publishes one round of outbox rows available at `now`, read from the database; returns how
    /// many were read.
    async fn round(&mut self) -> anyhow::Result<usize> {
        let rows = {
            let mut conn = store::connection(&self.context.pool).await?;
            tasks::next_outbox_rows(&mut conn, chrono::Utc::now(), BATCH).await?
        };
        self.publish_rows(&rows, true).await?;
        // Rows held by a relay that stopped are found on the next release.
        self.held.unknown = true;
        Ok(rows.len())
    }

    /// Releases held rows, oldest first, into the queues that hold fewer ready messages than the
    /// configured `publish_ahead`, as many as each lacks, and publishes them.
    async fn release_held(&mut self) -> anyhow::Result<()> {
        let mut conn = store::connection(&self.context.pool).await?;
        if self.held.unknown {
            for (routing_key, payload) in tasks::held_outbox_queues(&mut conn).await? {
                let message: TaskReady = match serde_json::from_value(payload) {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::error!(
                            "a held outbox row of `{routing_key}` is not a task.ready message: {error}"
                        );
                        continue;
                    }
                };
                self.held
                    .queues
                    .entry(routing_key)
                    .or_insert_with(|| broker::topology::task_queue(&message.requirements));
            }
            self.held.unknown = false;
        }
        if self.held.queues.is_empty() {
            return Ok(());
        }
        let (routing_keys, queues): (Vec<String>, Vec<String>) = self
            .held
            .queues
            .iter()
            .map(|(routing_key, queue)| (routing_key.clone(), queue.clone()))
            .unzip();
        let counts = self.context.broker.message_counts(&queues).await?;
        let window = self.context.config.publish_ahead;
        for (routing_key, (_, ready)) in routing_keys.into_iter().zip(counts) {
            // A missing queue is declared again by the publish; with no window (the setting was
            // changed), everything held goes.
            let lacking = match window {
                0 => BATCH as usize,
                window => window.saturating_sub(ready.map_or(0, |ready| ready as usize)),
            };
            if lacking == 0 {
                continue;
            }
            let hidden_until = chrono::Utc::now() + HANDOVER_GRACE;
            let rows =
                tasks::release_outbox_rows(&mut conn, &routing_key, lacking as i64, hidden_until)
                    .await?;
            if rows.len() < lacking {
                self.held.queues.remove(&routing_key);
            }
            if !rows.is_empty() {
                tracing::debug!(
                    "released {} held outbox rows into `{routing_key}`, which had {ready:?} ready messages",
                    rows.len()
                );
                self.publish_rows(&rows, false).await?;
            }
        }
        Ok(())
    }
}

/// When the relay should next read the outbox: at the poll interval, or sooner when a row
/// becomes available (a retry's backoff ends, a hand-over's grace lapses).
async fn next_poll(context: &Context) -> tokio::time::Instant {
    let mut wait = context.config.outbox_poll;
    if let Ok(mut conn) = store::connection(&context.pool).await
        && let Ok(Some(next)) = tasks::next_outbox_availability(&mut conn).await
    {
        let until = (next - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        wait = wait.min(until).max(Duration::from_millis(10));
    }
    tokio::time::Instant::now() + wait
}

/// Runs the relay until `shutdown`.
///
/// Rows handed over in memory are published as soon as they come, without reading the
/// database; the outbox is read at the poll interval and when a stored row becomes available.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut relay = Relay {
        context: &context,
        publisher: Publisher::new(&context.broker).await?,
        declared: HashSet::new(),
        unserved: Unserved::default(),
        held: Held {
            unknown: true,
            ..Held::default()
        },
    };
    let mut poll_at = tokio::time::Instant::now();
    let mut release_at = tokio::time::Instant::now();
    loop {
        let handed = context.handover.take();
        if !handed.is_empty()
            && let Err(error) = relay.publish_rows(&handed, true).await
        {
            // Still stored: polling finds them once their grace lapses.
            tracing::warn!(
                "publishing {} handed-over outbox rows failed, polling retries them: {error:#}",
                handed.len()
            );
        }
        if tokio::time::Instant::now() >= poll_at {
            match relay.round().await {
                // A full round: more may be waiting.
                Ok(read) if read as i64 == BATCH => continue,
                Ok(_) => poll_at = next_poll(&context).await,
                Err(error) => {
                    tracing::warn!("outbox relay round failed, retrying: {error:#}");
                    poll_at = tokio::time::Instant::now() + RETRY_DELAY;
                }
            }
        }
        if relay.held.pending() && tokio::time::Instant::now() >= release_at {
            if let Err(error) = relay.release_held().await {
                tracing::warn!("releasing held outbox rows failed, retrying: {error:#}");
            }
            release_at = tokio::time::Instant::now() + HELD_POLL;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = context.outbox_wakeup.notified() => {}
            () = tokio::time::sleep_until(poll_at) => {}
            () = tokio::time::sleep_until(release_at), if relay.held.pending() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Handover, hold_beyond_window};
    use crate::store::rows::{NewOutboxRow, OutboxRow};

    fn new_row(routing_key: &str) -> NewOutboxRow {
        NewOutboxRow {
            task_key: uuid::Uuid::nil(),
            routing_key: routing_key.to_owned(),
            payload: serde_json::Value::Null,
            created_at: chrono::DateTime::UNIX_EPOCH,
            available_at: None,
            held: false,
        }
    }

    #[test]
    fn each_queue_keeps_its_window_and_the_rest_is_held() {
        let keys = ["a", "b", "a", "a", "b", "c", "a"];
        let mut rows: Vec<NewOutboxRow> = keys.iter().map(|key| new_row(key)).collect();
        hold_beyond_window(&mut rows, 2);
        let held: Vec<bool> = rows.iter().map(|row| row.held).collect();
        assert_eq!(held, [false, false, false, true, false, false, true]);
        // No window: nothing held.
        let mut rows: Vec<NewOutboxRow> = keys.iter().map(|key| new_row(key)).collect();
        hold_beyond_window(&mut rows, 0);
        assert!(rows.iter().all(|row| !row.held));
    }

    #[test]
    fn a_hand_over_keeps_the_rows_not_held_and_each_queues_first_held_row() {
        let row = |id: i64, routing_key: &str, held: bool| OutboxRow {
            id,
            task_key: uuid::Uuid::nil(),
            routing_key: routing_key.to_owned(),
            payload: serde_json::Value::Null,
            created_at: chrono::DateTime::UNIX_EPOCH,
            available_at: None,
            held,
        };
        let handover = Handover::default();
        handover.push(vec![
            row(1, "a", false),
            row(2, "a", true),
            row(3, "b", false),
            row(4, "a", true),
            row(5, "b", true),
            row(6, "b", true),
        ]);
        handover.push(vec![row(7, "a", false), row(8, "a", true)]);
        let ids: Vec<i64> = handover.take().iter().map(|row| row.id).collect();
        assert_eq!(ids, [1, 2, 3, 5, 7, 8]);
    }
}
