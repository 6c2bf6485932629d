//! Confirmed, mandatory publishing.
//!
//! [`Publisher::send`] hands the message to the connection and returns a [`PendingConfirm`], so
//! a caller can keep many publishes in flight and await their confirms together (pipelining);
//! [`Publisher::publish`] does both. A publish counts as done only when RabbitMQ confirmed it
//! and did not return it: an unroutable message, a nack, a confirm that does not come within the
//! timeout (a blocked connection) and a connection lost in between are all errors.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use models::wire::WireMessage;

use crate::envelope::{self, Meta};
use crate::{Broker, BrokerError};

#[derive(Debug)]
struct Defaults {
    app_id: String,
    user_id: String,
    confirm_timeout: Duration,
}

/// Publishes on one confirm-mode channel. Cheap to clone; clones share the channel.
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
    defaults: Arc<Defaults>,
}

/// A publish handed to the connection, whose confirm is still to come.
#[must_use = "a publish is not done until its confirm arrives"]
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    exchange: String,
    routing_key: String,
    timeout: Duration,
}

fn short(what: &'static str, text: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(text).map_err(|_| {
        BrokerError::Encode(envelope::EncodeError::PropertyTooLong {
            property: what,
            len: text.len(),
        })
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl Publisher {
    /// A publisher on a new confirm-mode channel of `broker`.
    pub async fn new(broker: &Broker) -> Result<Publisher, BrokerError> {
        let channel = broker.channel().await?;
        Publisher::on_channel(broker, channel).await
    }

    /// A publisher on `channel`, switched to confirm mode.
    pub async fn on_channel(broker: &Broker, channel: Channel) -> Result<Publisher, BrokerError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BrokerError::Channel(Box::new(e)))?;
        Ok(Publisher {
            channel,
            defaults: Arc::new(Defaults {
                app_id: broker.config().app_id.clone(),
                user_id: broker.user().to_owned(),
                confirm_timeout: broker.config().confirm_timeout,
            }),
        })
    }

    /// The channel it publishes on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// `meta` with a message id, the sender and the time filled in where missing.
    pub fn complete(&self, mut meta: Meta) -> Meta {
        if meta.message_id.is_empty() {
            meta.message_id = uuid::Uuid::new_v4().to_string();
        }
        meta.app_id
            .get_or_insert_with(|| self.defaults.app_id.clone());
        meta.user_id
            .get_or_insert_with(|| self.defaults.user_id.clone());
        meta.timestamp.get_or_insert_with(now_secs);
        meta
    }

    /// Hands `message` to the connection for `exchange` with `routing_key`; returns the pending
    /// confirm. `meta` is completed with [`Publisher::complete`].
    pub async fn send<M: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        meta: Meta,
    ) -> Result<PendingConfirm, BrokerError> {
        let meta = self.complete(meta);
        let (body, properties) = envelope::encode(message, &meta)?;
        self.send_raw(exchange, routing_key, &body, properties)
            .await
    }

    /// Publishes `message` and waits for its confirm.
    pub async fn publish<M: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        meta: Meta,
    ) -> Result<(), BrokerError> {
        self.send(exchange, routing_key, message, meta)
            .await?
            .confirmed()
            .await
    }

    /// Hands an already encoded message to the connection, `mandatory`, and returns the pending
    /// confirm.
    pub async fn send_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm, BrokerError> {
        self.send_with(exchange, routing_key, body, properties, true)
            .await
    }

    /// Publishes `message` to a direct reply-to address and waits for the confirm. Not
    /// `mandatory`: RabbitMQ 3.10 returns mandatory messages to `amq.rabbitmq.reply-to.*` even
    /// when it delivered them, and a reply whose requester left has nowhere to go anyway.
    pub async fn publish_reply<M: WireMessage>(
        &self,
        reply_to: &str,
        message: &M,
        meta: Meta,
    ) -> Result<(), BrokerError> {
        self.send_reply(reply_to, message, meta)
            .await?
            .confirmed()
            .await
    }

    /// Like [`Publisher::publish_reply`], returning the pending confirm instead of waiting for
    /// it.
    pub async fn send_reply<M: WireMessage>(
        &self,
        reply_to: &str,
        message: &M,
        meta: Meta,
    ) -> Result<PendingConfirm, BrokerError> {
        let meta = self.complete(meta);
        let (body, properties) = envelope::encode(message, &meta)?;
        self.send_with("", reply_to, &body, properties, false).await
    }

    /// Publishes `message` without `mandatory` and waits for the confirm: for announcements
    /// that may have no listener yet (a queue announcement before any worker runs).
    pub async fn publish_broadcast<M: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        meta: Meta,
    ) -> Result<(), BrokerError> {
        let meta = self.complete(meta);
        let (body, properties) = envelope::encode(message, &meta)?;
        self.send_with(exchange, routing_key, &body, properties, false)
            .await?
            .confirmed()
            .await
    }

    async fn send_with(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<PendingConfirm, BrokerError> {
        let confirm = self
            .channel
            .basic_publish(
                short("exchange", exchange)?,
                short("routing_key", routing_key)?,
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(|source| BrokerError::Publish {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                source: Box::new(source),
            })?;
        Ok(PendingConfirm {
            confirm,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            timeout: self.defaults.confirm_timeout,
        })
    }
}

impl PendingConfirm {
    /// Waits for RabbitMQ's confirm: `Ok` only if the message was stored and routed.
    pub async fn confirmed(self) -> Result<(), BrokerError> {
        let PendingConfirm {
            confirm,
            exchange,
            routing_key,
            timeout,
        } = self;
        let confirmation = match tokio::time::timeout(timeout, confirm).await {
            Err(_) => {
                return Err(BrokerError::ConfirmTimeout {
                    exchange,
                    routing_key,
                    after: timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(BrokerError::Publish {
                    exchange,
                    routing_key,
                    source: Box::new(source),
                });
            }
            Ok(Ok(confirmation)) => confirmation,
        };
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(BrokerError::Unroutable {
                    exchange,
                    routing_key,
                    reply_code: returned.reply_code,
                    reply_text: returned.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Err(BrokerError::Nacked {
                exchange,
                routing_key,
            }),
            Confirmation::NotRequested => Err(BrokerError::NotConfirming),
        }
    }
}
