//! baton's RabbitMQ layer, the only crate that speaks AMQP.
//!
//! - [`topology`]: every exchange, queue, binding and argument, declared idempotently.
//! - [`envelope`]: a wire message ↔ AMQP body and properties, pure.
//! - [`connection`]: connecting, with heartbeats, automatic recovery and an observable state.
//! - [`publisher`]: confirmed, mandatory publishing with a timeout on every confirm.
//! - [`consumer`]: typed deliveries; whatever cannot be decoded is dead-lettered with the reason.
//! - [`rpc`]: request/reply over RabbitMQ's direct reply-to.

pub mod connection;
pub mod consumer;
pub mod envelope;
pub mod publisher;
pub mod rpc;
pub mod topology;

pub use connection::{Broker, BrokerConfig, BrokerState};
pub use consumer::{Consumer, Delivery, MessageSet, Received, Refusal};
pub use envelope::Meta;
pub use publisher::{PendingConfirm, Publisher};
pub use rpc::RpcClient;

use std::time::Duration;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Declaring an exchange, queue or binding failed (e.g. a queue exists with other arguments).
    #[error("declaring {what}: {source}")]
    Declare {
        /// What was being declared.
        what: String,
        /// lapin's error.
        source: Box<lapin::Error>,
    },
    /// The URL does not parse.
    #[error("invalid RabbitMQ URL {url}: {reason}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection could not be opened.
    #[error("connecting to RabbitMQ at {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// lapin's error.
        source: Box<lapin::Error>,
    },
    /// A channel could not be opened or configured.
    #[error("RabbitMQ channel: {0}")]
    Channel(Box<lapin::Error>),
    /// A message could not be encoded.
    #[error(transparent)]
    Encode(#[from] envelope::EncodeError),
    /// The publish failed (connection lost before the confirm, channel closed, …): it may or may
    /// not have been stored, so the caller publishes again.
    #[error("publishing to {exchange} ({routing_key}): {source}")]
    Publish {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// lapin's error.
        source: Box<lapin::Error>,
    },
    /// No confirm came in time (the connection may be blocked by a resource alarm).
    #[error("no confirm from RabbitMQ within {after:?} for {exchange} ({routing_key})")]
    ConfirmTimeout {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// The timeout.
        after: Duration,
    },
    /// No queue is bound for the message: it was returned, not stored.
    #[error("unroutable: no queue for {exchange} ({routing_key}): {reply_code} {reply_text}")]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// AMQP's reply code (312 NO_ROUTE).
        reply_code: u16,
        /// AMQP's reply text.
        reply_text: String,
    },
    /// RabbitMQ refused to store the message (nack).
    #[error("RabbitMQ did not store the message for {exchange} ({routing_key})")]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The channel is not in confirm mode (a bug: every publisher enables it).
    #[error("the channel does not confirm publishes")]
    NotConfirming,
    /// Consuming failed.
    #[error("consuming {queue}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Consume {
        /// The queue.
        queue: String,
        /// lapin's error, if any.
        source: Option<Box<lapin::Error>>,
    },
    /// An ack, nack or reject failed (after a reconnect the broker redelivers the message).
    #[error("settling a delivery: {0}")]
    Settle(Box<lapin::Error>),
    /// A reply could not be read.
    #[error("reading a reply: {0}")]
    Reply(envelope::DecodeError),
    /// No reply came in time.
    #[error("no reply to {kind} within {after:?}")]
    ReplyTimeout {
        /// The request's kind.
        kind: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// A request to reply to did not say where.
    #[error("message {message_id} has no reply_to")]
    NoReplyTo {
        /// The request's message id.
        message_id: String,
    },
}
