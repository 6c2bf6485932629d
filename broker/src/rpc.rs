//! Request/reply over RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`): no reply queue to
//! declare or delete, replies matched to requests by correlation id, every call bounded by a
//! timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tokio::sync::oneshot;

use models::wire::WireMessage;

use crate::envelope::{Envelope, Meta};
use crate::publisher::Publisher;
use crate::{Broker, BrokerError};

/// RabbitMQ's pseudo-queue for direct replies.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A raw reply: properties and body.
type RawReply = (BasicProperties, Vec<u8>);

/// Requests waiting for their reply, by correlation id. A std mutex: it is held only to insert
/// or remove an entry, never across an await.
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<RawReply>>>>;

/// Sends requests and waits for their replies.
#[derive(Clone)]
pub struct RpcClient {
    publisher: Publisher,
    pending: Pending,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").finish_non_exhaustive()
    }
}

fn lock(
    pending: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<RawReply>>> {
    // A panic while holding the lock cannot leave the map half-updated (single inserts and
    // removes), so a poisoned lock is still usable.
    pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl RpcClient {
    /// A client on a channel of its own: direct reply-to requires publishing requests on the
    /// channel that consumes the replies.
    pub async fn new(broker: &Broker) -> Result<RpcClient, BrokerError> {
        let channel = broker.channel().await?;
        let mut replies = channel
            .basic_consume(
                REPLY_TO.into(),
                format!("{}-replies", broker.config().app_id)
                    .as_str()
                    .into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| BrokerError::Consume {
                queue: REPLY_TO.to_owned(),
                source: Some(Box::new(source)),
            })?;
        let publisher = Publisher::on_channel(broker, channel.clone()).await?;
        let pending: Pending = Arc::default();
        let routes = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(reply) = replies.next().await {
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(error) => match channel.wait_for_recovery(error).await {
                        // Requests in flight are lost with the old channel; their callers time out.
                        Ok(()) => continue,
                        Err(error) => {
                            tracing::error!("reply consumer stopped: {error}");
                            break;
                        }
                    },
                };
                let Some(correlation_id) = reply.properties.correlation_id().clone() else {
                    tracing::warn!("dropping a reply without correlation id");
                    continue;
                };
                let waiter = lock(&routes).remove(correlation_id.as_str());
                match waiter {
                    Some(waiter) => {
                        // The caller may have given up (timeout); then nobody wants the reply.
                        let _ = waiter.send((reply.properties, reply.data));
                    }
                    None => tracing::debug!("reply {correlation_id} came after its caller gave up"),
                }
            }
        });
        Ok(RpcClient { publisher, pending })
    }

    /// Sends an already encoded request of kind `kind` (JSON `body`) and waits at most `timeout`
    /// for a reply of kind `Rep::KIND`: for producers that hold their request as JSON.
    pub async fn call_raw<Rep: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        kind: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Rep, BrokerError> {
        let meta = self.publisher.complete(Meta {
            reply_to: Some(REPLY_TO.to_owned()),
            ..Meta::default()
        });
        let mut headers = lapin::types::FieldTable::default();
        headers.insert(
            crate::envelope::SCHEMA_VERSION_HEADER.into(),
            lapin::types::AMQPValue::LongLongInt(i64::from(models::wire::SCHEMA_VERSION)),
        );
        let kind = lapin::types::ShortString::try_new(kind).map_err(|_| {
            BrokerError::Encode(crate::envelope::EncodeError::PropertyTooLong {
                property: "type",
                len: kind.len(),
            })
        })?;
        let mut properties = BasicProperties::default()
            .with_content_type(crate::envelope::CONTENT_TYPE.into())
            .with_delivery_mode(crate::envelope::PERSISTENT)
            .with_type(kind)
            .with_message_id(meta.message_id.as_str().into())
            .with_reply_to(REPLY_TO.into())
            .with_headers(headers);
        // The sender, as every baton message names it: RabbitMQ checks `user_id`, and the
        // dispatcher authorizes the message as that user.
        if let Some(user_id) = &meta.user_id {
            properties = properties.with_user_id(user_id.as_str().into());
        }
        if let Some(app_id) = &meta.app_id {
            properties = properties.with_app_id(app_id.as_str().into());
        }
        if let Some(timestamp) = meta.timestamp {
            properties = properties.with_timestamp(timestamp);
        }
        self.exchange(
            exchange,
            routing_key,
            &meta.message_id,
            "raw request",
            body,
            properties,
            timeout,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange<Rep: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        id: &str,
        what: &'static str,
        body: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<Rep, BrokerError> {
        let (sender, receiver) = oneshot::channel();
        lock(&self.pending).insert(id.to_owned(), sender);
        let outcome = async {
            self.publisher
                .send_raw(exchange, routing_key, body, properties)
                .await?
                .confirmed()
                .await?;
            match tokio::time::timeout(timeout, receiver).await {
                Ok(Ok((properties, body))) => {
                    let envelope =
                        Envelope::open(&properties, &body).map_err(BrokerError::Reply)?;
                    envelope.decode::<Rep>().map_err(BrokerError::Reply)
                }
                Ok(Err(_)) | Err(_) => Err(BrokerError::ReplyTimeout {
                    kind: what,
                    after: timeout,
                }),
            }
        }
        .await;
        lock(&self.pending).remove(id);
        outcome
    }

    /// Sends `request` to `exchange` with `routing_key` and waits at most `timeout` for a reply
    /// of kind `Rep::KIND`.
    pub async fn call<Req: WireMessage, Rep: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Rep, BrokerError> {
        self.call_with_message_id(exchange, routing_key, request, String::new(), timeout)
            .await
    }

    /// Like [`RpcClient::call`], with the request's `message_id` chosen by the caller (a fresh
    /// one when empty): a resubmission under the same id gets the answer recorded for the
    /// first. Two calls in flight at once must not share an id, or one of them times out.
    pub async fn call_with_message_id<Req: WireMessage, Rep: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Req,
        message_id: String,
        timeout: Duration,
    ) -> Result<Rep, BrokerError> {
        self.call_as(exchange, routing_key, request, message_id, None, timeout)
            .await
    }

    /// Like [`RpcClient::call_with_message_id`], sent on behalf of baton user `on_behalf_of`:
    /// the dispatcher honours that only from its own RabbitMQ user (its HTTP API).
    pub async fn call_as<Req: WireMessage, Rep: WireMessage>(
        &self,
        exchange: &str,
        routing_key: &str,
        request: &Req,
        message_id: String,
        on_behalf_of: Option<&str>,
        timeout: Duration,
    ) -> Result<Rep, BrokerError> {
        let meta = self.publisher.complete(Meta {
            message_id,
            reply_to: Some(REPLY_TO.to_owned()),
            on_behalf_of: on_behalf_of.map(str::to_owned),
            ..Meta::default()
        });
        let (body, properties) = crate::envelope::encode(request, &meta)?;
        self.exchange(
            exchange,
            routing_key,
            &meta.message_id,
            Req::KIND,
            &body,
            properties,
            timeout,
        )
        .await
    }
}

/// Sends `reply` to the requester of the message whose properties are `request`: to its
/// `reply_to`, with its `message_id` as correlation id.
pub async fn reply<Rep: WireMessage>(
    publisher: &Publisher,
    request: &Meta,
    reply: &Rep,
) -> Result<(), BrokerError> {
    send_reply(publisher, request, reply)
        .await?
        .confirmed()
        .await
}

/// Like [`reply`], returning the pending confirm instead of waiting for it: for a loop that
/// answers many requests and should not wait for each answer's confirm.
pub async fn send_reply<Rep: WireMessage>(
    publisher: &Publisher,
    request: &Meta,
    reply: &Rep,
) -> Result<crate::PendingConfirm, BrokerError> {
    let Some(reply_to) = &request.reply_to else {
        return Err(BrokerError::NoReplyTo {
            message_id: request.message_id.clone(),
        });
    };
    let meta = Meta {
        correlation_id: Some(request.message_id.clone()),
        ..Meta::default()
    };
    publisher.send_reply(reply_to, reply, meta).await
}
