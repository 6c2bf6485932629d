//! What every handler shares: the database pool, the RabbitMQ connection and its request/reply
//! client, the artifact store's root, the dispatcher's metrics.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use broker::topology::SUBMIT_EXCHANGE;
use broker::{Broker, BrokerConfig, RpcClient};
use dispatcher::metrics::DispatcherMetrics;
use dispatcher::store::{self, Pool, PooledConnection};
use models::OrganizationId;
use models::wire::WireMessage;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorKind};
use crate::extract::IdempotencyKey;

/// Connections the API's own pool opens at most: reads are short, and the dispatcher's loops
/// have a pool of their own.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// How long a write waits for the dispatcher's answer by default: a large plan is validated
/// and stored in one transaction, which takes seconds for a hundred thousand tasks.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(60);

/// How the API connects and what it serves.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// baton's database.
    pub database_url: String,
    /// Connections in the API's pool.
    pub pool_size: usize,
    /// RabbitMQ, where writes are published (the API's own connection).
    pub broker: BrokerConfig,
    /// The organization the deployment acts as (shown as `is_current`).
    pub organization: OrganizationId,
    /// The artifact store's directory: model files are served from under it, never from
    /// elsewhere.
    pub artifacts: PathBuf,
    /// The dispatcher's histograms, shown by `/metrics`.
    pub metrics: DispatcherMetrics,
    /// How long a write waits for the dispatcher's answer.
    pub rpc_timeout: Duration,
    /// The roles of callers without a token (or whose user is disabled): none unless the
    /// deployment grants some.
    pub anonymous_roles: Vec<models::Role>,
}

impl ApiConfig {
    /// A configuration with the defaults: a pool of [`DEFAULT_POOL_SIZE`], fresh metrics, a
    /// [`DEFAULT_RPC_TIMEOUT`].
    pub fn new(
        database_url: impl Into<String>,
        broker: BrokerConfig,
        organization: OrganizationId,
        artifacts: impl Into<PathBuf>,
    ) -> ApiConfig {
        ApiConfig {
            database_url: database_url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            broker,
            organization,
            artifacts: artifacts.into(),
            metrics: DispatcherMetrics::new(),
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            anonymous_roles: Vec::new(),
        }
    }
}

/// The API's shared state; clones share it.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    broker: Broker,
    rpc: RpcClient,
    organization: OrganizationId,
    artifacts: PathBuf,
    metrics: DispatcherMetrics,
    rpc_timeout: Duration,
    anonymous_roles: Vec<models::Role>,
    /// AMQP message ids of writes waiting for their answer: replies are matched by that id, so
    /// two requests in flight with the same `Idempotency-Key` cannot both wait.
    in_flight: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("organization", &self.inner.organization)
            .field("artifacts", &self.inner.artifacts)
            .field("broker", &self.inner.broker)
            .finish_non_exhaustive()
    }
}

/// Removes a message id from the in-flight set when the request ends, however it ends.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // Held only to insert or remove one id, never across an await: a poisoned lock holds a
    // consistent set.
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ApiState {
    /// Opens the pool (lazily: PostgreSQL is reached at the first request), connects to
    /// RabbitMQ, declares the topology (idempotent, so writes route even before the dispatcher
    /// declared it) and opens the request/reply client.
    pub async fn connect(config: ApiConfig) -> anyhow::Result<ApiState> {
        std::fs::create_dir_all(&config.artifacts).with_context(|| {
            format!("creating the artifact store {}", config.artifacts.display())
        })?;
        let artifacts = std::fs::canonicalize(&config.artifacts).with_context(|| {
            format!(
                "resolving the artifact store {}",
                config.artifacts.display()
            )
        })?;
        let pool = store::connect(&config.database_url, config.pool_size)?;
        let broker = Broker::connect(config.broker.clone()).await?;
        broker
            .declare_topology()
            .await
            .context("declaring the RabbitMQ topology")?;
        let rpc = RpcClient::new(&broker)
            .await
            .context("opening the API's request/reply channel")?;
        Ok(ApiState {
            inner: Arc::new(Inner {
                pool,
                broker,
                rpc,
                organization: config.organization,
                artifacts,
                metrics: config.metrics,
                rpc_timeout: config.rpc_timeout,
                anonymous_roles: config.anonymous_roles,
                in_flight: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// A database connection; an unreachable database is a 503.
    pub(crate) async fn conn(&self) -> Result<PooledConnection, ApiError> {
        Ok(self.store_conn().await?)
    }

    /// A database connection, with the store's error (for health checks, which log it).
    pub(crate) async fn store_conn(&self) -> store::StoreResult<PooledConnection> {
        store::connection(&self.inner.pool).await
    }

    /// The RabbitMQ connection.
    pub(crate) fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The organization the deployment acts as.
    pub(crate) fn organization(&self) -> &OrganizationId {
        &self.inner.organization
    }

    /// The artifact store's directory, canonical.
    pub(crate) fn artifacts(&self) -> &std::path::Path {
        &self.inner.artifacts
    }

    /// The roles of anonymous callers.
    pub(crate) fn anonymous_roles(&self) -> &[models::Role] {
        &self.inner.anonymous_roles
    }

    /// The pool, for work that spans blocking steps (logins).
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The dispatcher's histograms.
    pub(crate) fn metrics(&self) -> &DispatcherMetrics {
        &self.inner.metrics
    }

    /// Publishes `request` on `baton.submit` with its kind as routing key, as any producer
    /// does, on behalf of `caller` (whom the dispatcher authorizes again, as it does every
    /// sender), and waits for the dispatcher's answer. With an idempotency key, the AMQP
    /// `message_id` is `<kind>:<key>`, which the dispatcher recognises when it comes again.
    pub(crate) async fn request<Req: WireMessage, Rep: WireMessage>(
        &self,
        caller: &Caller,
        request: &Req,
        idempotency: &IdempotencyKey,
    ) -> Result<Rep, ApiError> {
        let message_id = match &idempotency.0 {
            Some(key) => format!("{}:{key}", Req::KIND),
            None => String::new(),
        };
        let _guard = if message_id.is_empty() {
            None
        } else {
            if !lock(&self.inner.in_flight).insert(message_id.clone()) {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    crate::extract::IDEMPOTENCY_KEY,
                    "a request with this key is in progress; retry once it is answered",
                ));
            }
            Some(InFlight {
                set: &self.inner.in_flight,
                id: message_id.clone(),
            })
        };
        Ok(self
            .inner
            .rpc
            .call_as(
                SUBMIT_EXCHANGE,
                Req::KIND,
                request,
                message_id,
                // An anonymous caller is named by the empty name, so the dispatcher never
                // takes the request for one of the API's own.
                Some(caller.0.user.as_ref().map_or("", models::UserId::as_str)),
                self.inner.rpc_timeout,
            )
            .await?)
    }
}
