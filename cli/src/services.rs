//! baton's services run in this process, for `baton demo` and `baton dev`: a first connection
//! to RabbitMQ that declares the topology and names the user the workers will be owned by,
//! that user's record in baton, and a set of in-process services (dispatcher, HTTP API,
//! workers) watched while they run and stopped in the reverse order of their start.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use diesel_async::AsyncPgConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use dispatcher::store::users::{self, UserChange};
use dispatcher::store::{StoreError, catalog};
use models::{Organization, OrganizationId, Role, User, UserId, WorkerId};

use crate::output::redact_url;

/// How long the first connection to RabbitMQ may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping service may take before it is reported as stuck.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to RabbitMQ at `amqp_url` as `app_id`, or fails within [`CONNECT_TIMEOUT`] with an
/// error naming the (redacted) URL: lapin alone retries an unreachable server for ever.
pub(crate) async fn connect_broker(amqp_url: &str, app_id: &str) -> anyhow::Result<broker::Broker> {
    let target = || {
        format!(
            "connecting to RabbitMQ at {} (set --amqp-url or BATON_AMQP_URL)",
            redact_url(amqp_url)
        )
    };
    // A plain TCP connection first, to fail fast on a closed port.
    let uri = <lapin::uri::AMQPUri as std::str::FromStr>::from_str(amqp_url)
        .map_err(|reason| anyhow::anyhow!("invalid AMQP URL: {reason}"))
        .with_context(target)?;
    let address = (uri.authority.host.as_str(), uri.authority.port);
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_probe)) => {}
        Ok(Err(error)) => return Err(anyhow::Error::new(error).context(target())),
        Err(_) => bail!(
            "{}: no answer within {} s",
            target(),
            CONNECT_TIMEOUT.as_secs()
        ),
    }
    let connecting = broker::Broker::connect(broker::BrokerConfig::new(amqp_url, app_id));
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.map_err(anyhow::Error::new),
        Err(_) => Err(anyhow::anyhow!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
    .with_context(target)
}

/// Connects to RabbitMQ once before anything runs: declares the topology (so that workers
/// find their exchanges before the dispatcher has declared them) and returns the user the URL
/// connects as, which owns the workers started with the same URL.
pub(crate) async fn prepare_broker(amqp_url: &str) -> anyhow::Result<UserId> {
    let client = connect_broker(amqp_url, "baton-cli").await?;
    let declared = client
        .declare_topology()
        .await
        .context("declaring the RabbitMQ topology");
    let user = UserId::from(client.user());
    if let Err(error) = client.close().await {
        tracing::debug!("closing the first RabbitMQ connection: {error}");
    }
    declared?;
    if user.as_str().is_empty() {
        bail!(
            "the AMQP URL {} names no user: the workers are owned by it",
            redact_url(amqp_url)
        );
    }
    Ok(user)
}

/// Registers organization `id` unless it is registered already; `is_current` says whether it
/// is the deployment's own.
pub(crate) async fn ensure_organization(
    conn: &mut AsyncPgConnection,
    id: &OrganizationId,
    is_current: bool,
) -> Result<(), StoreError> {
    if catalog::find_organization(conn, id, None).await?.is_some() {
        return Ok(());
    }
    let organization = Organization {
        id: id.clone(),
        address: None,
        is_current,
        creation_date: Utc::now(),
    };
    match catalog::insert_organization(conn, &organization).await {
        // Registered meanwhile by another process (the dispatcher registers its own).
        Ok(()) | Err(StoreError::Duplicate { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Registers user `identifier` of `organization` with `roles`, or, when a user of that name is
/// registered already, gives it those of `roles` it lacks (keeping its others).
pub(crate) async fn ensure_user(
    conn: &mut AsyncPgConnection,
    identifier: &UserId,
    display_name: &str,
    organization: &OrganizationId,
    roles: &[Role],
) -> Result<(), StoreError> {
    if let Some(user) = catalog::find_user(conn, identifier).await? {
        let missing: Vec<Role> = roles
            .iter()
            .filter(|role| !user.roles.contains(role))
            .copied()
            .collect();
        if !missing.is_empty() {
            let change = UserChange {
                display_name: None,
                roles: Some(user.roles.iter().copied().chain(missing).collect()),
                is_enabled: None,
            };
            users::update_user(conn, identifier, &change, Utc::now()).await?;
        }
        return Ok(());
    }
    let now = Utc::now();
    let user = User {
        identifier: identifier.clone(),
        display_name: display_name.into(),
        organization: organization.clone(),
        roles: roles.to_vec(),
        is_enabled: true,
        creation_date: now,
        update_date: now,
    };
    match catalog::insert_user(conn, &user).await {
        // Registered meanwhile by another process.
        Ok(()) | Err(StoreError::Duplicate { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// A dispatcher, an HTTP API or a worker running in this process.
pub(crate) struct Service {
    /// What it is, for messages: "dispatcher", "worker hospital-a-worker".
    pub(crate) name: String,
    /// Cancelled to stop it.
    pub(crate) stop: CancellationToken,
    /// Its task.
    pub(crate) handle: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Spawns `run`, which stops when its token is cancelled.
    pub(crate) fn spawn<F, Fut>(name: impl Into<String>, run: F) -> Service
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        Service {
            name: name.into(),
            handle: tokio::spawn(run(stop.clone())),
            stop,
        }
    }

    /// Cancels its token and waits for it to stop (aborting it after [`STOP_TIMEOUT`]).
    async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(STOP_TIMEOUT, &mut self.handle).await {
            Ok(Ok(result)) => result.with_context(|| format!("stopping the {}", self.name)),
            Ok(Err(join_error)) => Err(anyhow::anyhow!("the {} panicked: {join_error}", self.name)),
            Err(_) => {
                self.handle.abort();
                bail!("the {} did not stop within {STOP_TIMEOUT:?}", self.name)
            }
        }
    }
}

/// The services started in this process, in the order they started.
#[derive(Default)]
pub(crate) struct Services {
    running: Vec<Service>,
}

impl Services {
    /// Adds a started service.
    pub(crate) fn push(&mut self, service: Service) {
        self.running.push(service);
    }

    /// An error if a service stopped on its own.
    pub(crate) async fn check(&mut self) -> anyhow::Result<()> {
        let Some(index) = self
            .running
            .iter()
            .position(|service| service.handle.is_finished())
        else {
            return Ok(());
        };
        let service = self.running.remove(index);
        match service.handle.await {
            Ok(Ok(())) => bail!("the {} stopped by itself", service.name),
            Ok(Err(error)) => Err(error.context(format!("the {} stopped", service.name))),
            Err(join_error) => bail!("the {} panicked: {join_error}", service.name),
        }
    }

    /// Waits until a service stops on its own (an error) or `shutdown` is cancelled.
    pub(crate) async fn watch(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        loop {
            self.check().await?;
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Stops every service, the last started first (workers before the dispatcher they report
    /// to); returns the first problem.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        while let Some(service) = self.running.pop() {
            let stopped = service.stop().await;
            if outcome.is_ok() {
                outcome = stopped;
            } else if let Err(error) = stopped {
                tracing::warn!("{error:#}");
            }
        }
        outcome
    }
}

/// Waits until every worker of `ids` registered (again) since `since`, checking meanwhile that
/// no service stopped; fails at `deadline`.
pub(crate) async fn wait_for_workers(
    conn: &mut AsyncPgConnection,
    ids: &[WorkerId],
    services: &mut Services,
    since: chrono::DateTime<Utc>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    loop {
        let mut missing = Vec::new();
        for id in ids {
            let registered = dispatcher::store::workers::find_worker(conn, id)
                .await
                .with_context(|| format!("reading worker {id}"))?
                .is_some_and(|worker| worker.is_active && worker.update_date >= since);
            if !registered {
                missing.push(id.to_string());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        services.check().await?;
        if tokio::time::Instant::now() > deadline {
            bail!(
                "worker(s) {} did not register with the dispatcher in time (is RabbitMQ \
                 reachable?)",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
