//! Connecting to RabbitMQ: heartbeats, automatic recovery with capped exponential backoff and
//! jitter, and an observable state (connected, recovering, blocked).
//!
//! Recovery is lapin's: after a lost connection it reconnects and replays the declared topology,
//! the consumers, their QoS and confirm mode. Loops that see an error call
//! `Channel::wait_for_recovery` and go on (the consumer does); a publish in flight during the
//! outage returns an error to its caller, who republishes (the outbox keeps rows until
//! confirmed).

use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::watch;

use crate::BrokerError;
use crate::topology;

/// How often heartbeats are exchanged unless the URL says otherwise: a dead peer is noticed
/// within two intervals, far sooner than the TCP timeout.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// The longest wait between two reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);

/// How long a publisher waits for the broker's confirm. A connection blocked by a memory or disk
/// alarm never confirms; the caller gets an error instead of waiting forever.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach RabbitMQ and how to appear there.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `amqp://user:password@host:5672/vhost`; `?heartbeat=N` overrides the heartbeat.
    pub url: String,
    /// The program's name: the connection name in the management UI and the `app_id` of every
    /// message it sends.
    pub app_id: String,
    /// How long to wait for each publisher confirm.
    pub confirm_timeout: Duration,
    /// Deliveries before a message of a baton queue is dead-lettered.
    pub delivery_limit: u32,
}

impl BrokerConfig {
    /// A configuration with the defaults above.
    pub fn new(url: impl Into<String>, app_id: impl Into<String>) -> BrokerConfig {
        BrokerConfig {
            url: url.into(),
            app_id: app_id.into(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            delivery_limit: topology::DEFAULT_DELIVERY_LIMIT,
        }
    }
}

/// What the connection is doing, for logs, metrics and health checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerState {
    /// The connection is open.
    pub connected: bool,
    /// The connection was lost and is being re-established.
    pub recovering: bool,
    /// RabbitMQ blocked publishing (memory or disk alarm), with its reason.
    pub blocked: Option<String>,
}

/// A connection to RabbitMQ.
#[derive(Clone)]
pub struct Broker {
    connection: std::sync::Arc<Connection>,
    config: BrokerConfig,
    user: String,
    state: watch::Receiver<BrokerState>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("app_id", &self.config.app_id)
            .field("user", &self.user)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        let (credentials, host) = rest.rsplit_once('@')?;
        let user = credentials.split(':').next().unwrap_or_default();
        Some(format!("{scheme}://{user}:***@{host}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_owned(),
    }
}

impl Broker {
    /// Connects to the broker of `config`, with heartbeats and automatic recovery.
    pub async fn connect(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let mut uri = AMQPUri::from_str(&config.url).map_err(|reason| BrokerError::Url {
            url: redact(&config.url),
            reason,
        })?;
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        let user = uri.authority.userinfo.username.clone();
        let properties = ConnectionProperties::default()
            .with_connection_name(config.app_id.as_str().into())
            .enable_auto_recover()
            .configure_backoff(|backoff| {
                backoff
                    .without_max_times()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(MAX_RECONNECT_DELAY)
                    .with_jitter()
            });
        let connection = Connection::connect_uri(uri, properties)
            .await
            .map_err(|source| BrokerError::Connect {
                url: redact(&config.url),
                source: Box::new(source),
            })?;
        let (sender, state) = watch::channel(BrokerState {
            connected: true,
            ..BrokerState::default()
        });
        let events = connection.events_listener();
        let app_id = config.app_id.clone();
        tokio::spawn(watch_events(events, sender, app_id));
        Ok(Broker {
            connection: std::sync::Arc::new(connection),
            config,
            user,
            state,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The RabbitMQ user it is connected as (sent as `user_id`, which RabbitMQ verifies).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The current state.
    pub fn state(&self) -> BrokerState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of state.
    pub fn watch_state(&self) -> watch::Receiver<BrokerState> {
        self.state.clone()
    }

    /// A new channel. Channels are cheap but not free: keep the ones you use.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::Channel(Box::new(e)))
    }

    /// Declares baton's fixed topology (see [`topology::declare`]) on a channel of its own.
    pub async fn declare_topology(&self) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        topology::declare(&channel, self.config.delivery_limit).await?;
        close_quietly(&channel).await;
        Ok(())
    }

    /// Declares the queue of tasks needing `requirements`; returns its name.
    pub async fn declare_task_queue(
        &self,
        requirements: &models::RequirementSet,
    ) -> Result<String, BrokerError> {
        let channel = self.channel().await?;
        let queue =
            topology::declare_task_queue(&channel, requirements, self.config.delivery_limit)
                .await?;
        close_quietly(&channel).await;
        Ok(queue)
    }

    /// Declares worker `worker`'s control queue (see [`topology::declare_worker_queue`]);
    /// returns its name.
    pub async fn declare_worker_queue(
        &self,
        worker: &models::WorkerId,
    ) -> Result<String, BrokerError> {
        let channel = self.channel().await?;
        let queue = topology::declare_worker_queue(&channel, worker).await?;
        close_quietly(&channel).await;
        Ok(queue)
    }

    /// How many ready messages each of `queues` holds, `None` for a queue that does not exist,
    /// read by passive declarations (which change nothing). A missing queue closes the channel
    /// it was asked on, so the next one is asked on a new channel.
    pub async fn message_counts(
        &self,
        queues: &[String],
    ) -> Result<Vec<(String, Option<u32>)>, BrokerError> {
        let mut counts = Vec::with_capacity(queues.len());
        let mut channel = self.channel().await?;
        for queue in queues {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..lapin::options::QueueDeclareOptions::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await;
            match declared {
                Ok(declared) => counts.push((queue.clone(), Some(declared.message_count()))),
                Err(_) => {
                    counts.push((queue.clone(), None));
                    channel = self.channel().await?;
                }
            }
        }
        close_quietly(&channel).await;
        Ok(counts)
    }

    /// Closes the connection cleanly; its consumers' unacked messages go back to their queues.
    pub async fn close(&self) -> Result<(), BrokerError> {
        self.connection
            .close(200, "closed by baton".into())
            .await
            .map_err(|e| BrokerError::Channel(Box::new(e)))
    }
}

async fn close_quietly(channel: &Channel) {
    if let Err(error) = channel.close(200, "done".into()).await {
        tracing::debug!("closing a declaration channel: {error}");
    }
}

/// Follows the connection's events into `state` and the logs.
async fn watch_events(
    mut events: impl futures::Stream<Item = Event> + Unpin,
    state: watch::Sender<BrokerState>,
    app_id: String,
) {
    while let Some(event) = events.next().await {
        match event {
            Event::Connected => {
                let was_recovering = state.borrow().recovering;
                state.send_modify(|s| {
                    s.connected = true;
                    s.recovering = false;
                });
                if was_recovering {
                    tracing::warn!("{app_id}: connection to RabbitMQ recovered");
                }
            }
            Event::ConnectionBlocked(reason) => {
                tracing::warn!("{app_id}: RabbitMQ blocked publishing: {reason}");
                state.send_modify(|s| s.blocked = Some(reason));
            }
            Event::ConnectionUnblocked => {
                tracing::warn!("{app_id}: RabbitMQ unblocked publishing");
                state.send_modify(|s| s.blocked = None);
            }
            Event::SendFlow(_) => {}
            Event::Error(error) if error.is_amqp_soft_error() => {
                // A channel-level error (a passive declaration of a missing queue, …) closes
                // that channel only: the connection is still up.
                tracing::debug!("{app_id}: RabbitMQ closed a channel: {error}");
            }
            Event::Error(error) => {
                let recovering = error.can_be_recovered();
                if recovering {
                    tracing::warn!("{app_id}: connection to RabbitMQ lost, recovering: {error}");
                } else {
                    tracing::error!("{app_id}: connection to RabbitMQ failed: {error}");
                }
                state.send_modify(|s| {
                    s.connected = false;
                    s.recovering = recovering;
                });
            }
            other => tracing::debug!("{app_id}: connection event {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
