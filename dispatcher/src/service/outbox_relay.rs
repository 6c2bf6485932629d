//! The outbox relay: publishes ready tasks recorded in the outbox, in order, with confirms, and
//! deletes each row only once RabbitMQ confirmed it. A crash between the two publishes a task
//! twice; claims make the duplicate harmless. Rows stay through broker outages.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use broker::topology::{CONTROL_EXCHANGE, QUEUE_ANNOUNCE_KEY, TASKS_EXCHANGE};
use broker::{Meta, Publisher};
use models::RequirementSet;
use models::wire::{QueueAnnouncement, TaskReady};

use super::Context;
use crate::store::{self, tasks, workers};

/// Rows published per round: enough to amortise a transaction, few enough to keep confirms
/// flowing.
pub const BATCH: i64 = 1_000;

/// How long to wait after a failed round before the next.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How often the same unsatisfiable requirement set is warned about.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Requirement sets no active worker satisfies, and when each was last warned about.
#[derive(Default)]
struct Unserved {
    warned: std::collections::HashMap<String, std::time::Instant>,
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
        if published.is_empty() {
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
        if let Err(error) = tasks::insert_state_changes(&mut conn, &unserved).await {
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

/// Publishes one round of available outbox rows; returns how many were published.
async fn relay_round(
    context: &Context,
    publisher: &Publisher,
    declared: &mut HashSet<String>,
    unserved: &mut Unserved,
) -> anyhow::Result<usize> {
    let mut conn = store::connection(&context.pool).await?;
    let rows = tasks::next_outbox_rows(&mut conn, chrono::Utc::now(), BATCH).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut pending = Vec::with_capacity(rows.len());
    let mut published = Vec::with_capacity(rows.len());
    let mut undecodable = Vec::new();
    for row in &rows {
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
        if !declared.contains(&row.routing_key) {
            context
                .broker
                .declare_task_queue(&message.requirements)
                .await?;
            declared.insert(row.routing_key.clone());
            // Workers that satisfy the set start consuming its queue.
            let announcement = QueueAnnouncement {
                requirements: message.requirements.clone(),
            };
            publisher
                .publish_broadcast(
                    CONTROL_EXCHANGE,
                    QUEUE_ANNOUNCE_KEY,
                    &announcement,
                    Meta::default(),
                )
                .await?;
        }
        let meta = Meta {
            message_id: format!("task-{}-outbox-{}", message.task_key, row.id),
            ..Meta::default()
        };
        match publisher
            .send(TASKS_EXCHANGE, &row.routing_key, &message, meta)
            .await
        {
            Ok(confirm) => {
                published.push((
                    row.routing_key.clone(),
                    message.requirements.clone(),
                    message.task_key,
                ));
                pending.push((row.id, confirm));
            }
            Err(error) => {
                tracing::warn!("publishing outbox row {}: {error}", row.id);
                break;
            }
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
                    declared.remove(routing_key);
                }
                failure.get_or_insert(error);
            }
        }
    }
    tasks::delete_outbox_rows(&mut conn, &confirmed).await?;
    drop(conn);
    unserved.check(context, &published).await;
    if let Some(error) = failure {
        return Err(error.into());
    }
    if !undecodable.is_empty() && confirmed.is_empty() {
        anyhow::bail!("outbox rows {undecodable:?} cannot be published");
    }
    Ok(confirmed.len())
}

/// Runs the relay until `shutdown`.
pub async fn run(context: Arc<Context>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let publisher = Publisher::new(&context.broker).await?;
    let mut declared = HashSet::new();
    let mut unserved = Unserved::default();
    loop {
        let published = match relay_round(&context, &publisher, &mut declared, &mut unserved).await
        {
            Ok(published) => published,
            Err(error) => {
                tracing::warn!("outbox relay round failed, retrying: {error:#}");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RETRY_DELAY) => continue,
                }
            }
        };
        if published as i64 == BATCH {
            continue;
        }
        // Sleep until woken, the next retry becomes available, or the poll interval passes.
        let mut wait = context.config.outbox_poll;
        if let Ok(mut conn) = store::connection(&context.pool).await
            && let Ok(Some(next)) = tasks::next_outbox_availability(&mut conn).await
        {
            let until = (next - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            wait = wait.min(until).max(Duration::from_millis(10));
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = context.outbox_wakeup.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
