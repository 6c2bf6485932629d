//! The dispatcher's service loops: the shell around `store` and `core` that talks to RabbitMQ.
//!
//! [`run`] applies the migrations, connects, declares the topology and runs, until `shutdown`:
//! the submission consumer ([`submissions`]), the outbox relay ([`outbox_relay`]) and the event
//! applier ([`event_applier`]). If one of them fails, the others are stopped and the error is
//! returned, so a supervisor (systemd, Kubernetes) restarts the process, which rebuilds its
//! state from PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use broker::{Broker, BrokerConfig};
use models::OrganizationId;

use crate::store::{self, Pool, catalog};

pub(crate) mod assignment;
mod builds;
pub mod event_applier;
pub mod offers;
pub mod outbox_relay;
mod queued;
pub mod submissions;

/// How the dispatcher runs.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// baton's database.
    pub database_url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// RabbitMQ.
    pub broker: BrokerConfig,
    /// The organization this deployment acts as (`is_current`); it is registered on start if
    /// missing, and owns what an anonymous caller allowed to register or submit sends.
    pub organization: OrganizationId,
    /// The roles of callers that are not baton users (or are disabled): none unless the
    /// deployment grants some.
    pub anonymous_roles: Vec<models::Role>,
    /// How long a granted claim lasts unless the worker renews it.
    pub lease_duration: chrono::Duration,
    /// How often the outbox is polled when nothing wakes the relay.
    pub outbox_poll: Duration,
    /// How often workers must send a heartbeat; one silent for three intervals is inactive.
    pub heartbeat_interval: Duration,
    /// How long a worker's registration is trusted before it is read again, so that a worker
    /// an operator disabled stops getting claims.
    pub registration_cache: Duration,
    /// Whether a task a DONE report makes ready goes straight to the reporting worker when that
    /// worker offers to take it (`TaskStatusReport::follow_up`) and satisfies its requirements,
    /// rather than through its task queue: a chain's next task starts one round trip and one
    /// batch sooner, on the host that holds its parent's outputs, ahead of the queue.
    pub follow_ups: bool,
    /// With `follow_ups`: how many links of a chain a worker running one of them is granted
    /// ahead (`TaskAssigned::speculative`), to start each as soon as the one before ends DONE
    /// on it, without waiting for the dispatcher to apply that report; 0 grants none ahead.
    /// The default, 64, covers the dispatcher's answer (a report's way, a batch and the grant's
    /// way back, 10–20 ms) at the pace of a no-op link (under 1 ms): with 8, a chain of 1,000
    /// waited for the dispatcher 99 times, 13 ms each (BENCHMARKS.md).
    pub run_ahead: usize,
    /// How many ready messages the outbox relay keeps in a task queue when it has more to
    /// publish: a round's rows beyond these wait in the outbox, held, and are released, oldest
    /// first, as the queue's consumers take messages (checked every 20 ms while rows are held).
    /// A held task the event applier grants meanwhile (a refill of a worker's kept slot, a
    /// follow-up) is never published: its message is not sent, delivered and dropped. 0 holds
    /// none back. The default, 64, is a worker's slots many times over on most hosts; a fan-in
    /// of 1,000 published 1,000 messages, nearly all dropped (BENCHMARKS.md).
    pub publish_ahead: usize,
    /// Whether a new plan's ready tasks are granted, in the transaction that stores the plan,
    /// to workers that said they are idle (`idle_slots` in their DONE reports and heartbeats)
    /// and satisfy their requirements, rather than published to their task queues: such a
    /// task starts without the outbox's publish, the queue and a claim's round trip and batch.
    pub eager_starts: bool,
    /// Where the loops record what they measure (claim latency, event batch sizes); share a
    /// clone with whoever serves them.
    pub metrics: crate::metrics::DispatcherMetrics,
}

impl DispatcherConfig {
    /// A configuration with the defaults: a 30 s lease, a 1 s outbox poll, 10 s heartbeats, fresh
    /// metrics.
    pub fn new(
        database_url: impl Into<String>,
        broker: BrokerConfig,
        organization: OrganizationId,
    ) -> DispatcherConfig {
        DispatcherConfig {
            database_url: database_url.into(),
            pool_size: store::DEFAULT_POOL_SIZE,
            broker,
            organization,
            lease_duration: chrono::Duration::seconds(30),
            outbox_poll: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(10),
            registration_cache: Duration::from_secs(10),
            follow_ups: true,
            run_ahead: 64,
            publish_ahead: 64,
            eager_starts: true,
            anonymous_roles: Vec::new(),
            metrics: crate::metrics::DispatcherMetrics::new(),
        }
    }
}

/// What every loop shares.
pub struct Context {
    /// The configuration.
    pub config: DispatcherConfig,
    /// The database.
    pub pool: Pool,
    /// RabbitMQ.
    pub broker: Broker,
    /// Woken after a commit that wrote outbox rows, so they are published at once.
    pub outbox_wakeup: Notify,
    /// Outbox rows committed by the other loops, waiting in memory for the relay.
    pub handover: outbox_relay::Handover,
    /// Idle workers' free slots, recorded by the event applier, taken by eager starts.
    pub offers: offers::Offers,
    /// Plans whose tasks the submission consumer started at once, for the event applier to
    /// hold (and watch the leases of) from its next batch on.
    pub started: std::sync::Mutex<Vec<StartedPlan>>,
}

/// A plan stored with tasks already started on idle workers: its state as the core holds it,
/// and its tasks' requirements, handed to the event applier so that it need not read them.
pub struct StartedPlan {
    /// The plan and its DAG, after the grants.
    pub state: crate::core::PlanState,
    /// Every task's requirement set.
    pub requirements: Vec<(models::TaskKey, models::RequirementSet)>,
}

impl Context {
    /// Hands committed outbox rows, stored with `available_at` [`outbox_relay::HANDOVER_GRACE`]
    /// ahead, to the relay, which publishes them at once without reading them back.
    pub fn hand_over(&self, rows: Vec<crate::store::rows::OutboxRow>) {
        if !rows.is_empty() {
            self.handover.push(rows);
            self.outbox_wakeup.notify_one();
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("organization", &self.config.organization)
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

/// Registers the deployment's organization if it is not yet.
async fn ensure_organization(pool: &Pool, organization: &OrganizationId) -> anyhow::Result<()> {
    let mut conn = store::connection(pool).await?;
    if catalog::find_organization(&mut conn, organization, None)
        .await?
        .is_none()
    {
        let record = models::Organization {
            id: organization.clone(),
            address: None,
            is_current: true,
            creation_date: chrono::Utc::now(),
        };
        match catalog::insert_organization(&mut conn, &record).await {
            // Another dispatcher registered it meanwhile.
            Ok(()) | Err(store::StoreError::Duplicate { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Connects everything and builds the shared context.
pub async fn start(config: DispatcherConfig) -> anyhow::Result<Arc<Context>> {
    store::run_migrations(&config.database_url)
        .await
        .context("applying database migrations")?;
    let pool = store::connect(&config.database_url, config.pool_size)?;
    ensure_organization(&pool, &config.organization)
        .await
        .context("registering the deployment's organization")?;
    let broker = Broker::connect(config.broker.clone()).await?;
    broker
        .declare_topology()
        .await
        .context("declaring the RabbitMQ topology")?;
    // Idle workers renew their offers with every heartbeat.
    let offers = offers::Offers::new(config.heartbeat_interval * 3 / 2);
    Ok(Arc::new(Context {
        config,
        pool,
        broker,
        outbox_wakeup: Notify::new(),
        handover: outbox_relay::Handover::default(),
        offers,
        started: std::sync::Mutex::default(),
    }))
}

/// Runs the dispatcher until `shutdown` is cancelled or a loop fails.
pub async fn run(config: DispatcherConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let context = start(config).await?;
    tracing::info!(
        "dispatcher started for organization {}",
        context.config.organization
    );
    let stop = shutdown.child_token();
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(submissions::run(Arc::clone(&context), stop.clone()));
    loops.spawn(outbox_relay::run(Arc::clone(&context), stop.clone()));
    loops.spawn(event_applier::run(Arc::clone(&context), stop.clone()));
    let mut outcome = Ok(());
    while let Some(finished) = loops.join_next().await {
        let result = match finished {
            Ok(result) => result,
            Err(join_error) => Err(anyhow::anyhow!("a dispatcher loop panicked: {join_error}")),
        };
        if let Err(error) = result {
            tracing::error!("dispatcher loop failed: {error:#}");
            if outcome.is_ok() {
                outcome = Err(error);
            }
        }
        // One loop ended: stop the others.
        stop.cancel();
    }
    if let Err(error) = context.broker.close().await {
        tracing::debug!("closing the RabbitMQ connection: {error}");
    }
    outcome
}
