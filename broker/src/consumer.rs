//! Typed consuming. A [`Consumer`] yields the messages of the kinds it reads; anything else (not
//! JSON, an unknown schema version, an unexpected kind, a body that does not decode) is
//! dead-lettered to `baton.dead` with the reason in its headers, and consuming goes on. Nothing
//! is dropped and nothing panics.

use std::marker::PhantomData;
use std::sync::Arc;

use futures::StreamExt;
use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};

use models::wire::WireMessage;

use crate::envelope::{self, DecodeError, Envelope, Meta};
use crate::publisher::Publisher;
use crate::topology::DEAD_EXCHANGE;
use crate::{Broker, BrokerError};

/// The messages a consumer reads: one [`WireMessage`] type, or an enum over several kinds.
pub trait MessageSet: Sized + Send + 'static {
    /// The kinds it reads.
    fn kinds() -> Vec<&'static str>;

    /// The message in `envelope`, whose kind is one of [`MessageSet::kinds`].
    fn decode(envelope: &Envelope<'_>) -> Result<Self, DecodeError>;
}

impl<M: WireMessage + Send + 'static> MessageSet for M {
    fn kinds() -> Vec<&'static str> {
        vec![M::KIND]
    }

    fn decode(envelope: &Envelope<'_>) -> Result<Self, DecodeError> {
        envelope.decode::<M>()
    }
}

/// A message received and decoded, to be acked, requeued, rejected or dead-lettered.
#[must_use = "an unsettled delivery is redelivered when the consumer goes away"]
pub struct Delivery<M> {
    /// The message.
    pub message: M,
    /// Its kind, one of the consumer's.
    pub kind: &'static str,
    /// Its properties.
    pub meta: Meta,
    /// RabbitMQ delivered it before (to this or another consumer) without an ack.
    pub redelivered: bool,
    /// The routing key it was published with.
    pub routing_key: String,
    raw: lapin::message::Delivery,
    queue: Arc<str>,
    dead: Publisher,
}

impl<M> std::fmt::Debug for Delivery<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("kind", &self.kind)
            .field("message_id", &self.meta.message_id)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl<M> Delivery<M> {
    /// Done with: RabbitMQ forgets the message.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.raw
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Settle(Box::new(e)))
    }

    /// Not now: the message goes back to its queue for another delivery (counted against the
    /// queue's delivery limit).
    pub async fn requeue(self) -> Result<(), BrokerError> {
        self.raw
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Settle(Box::new(e)))
    }

    /// Refused: RabbitMQ dead-letters the message through the queue's dead-letter exchange,
    /// with its own `x-death` header (reason `rejected`).
    pub async fn reject(self) -> Result<(), BrokerError> {
        self.raw
            .acker
            .nack(BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Settle(Box::new(e)))
    }

    /// Refused with `reason`: a copy goes to `baton.dead` with the reason and the queue in its
    /// headers, and the original is acked only once the copy is confirmed.
    pub async fn dead_letter(self, reason: &str) -> Result<(), BrokerError> {
        dead_letter(&self.dead, &self.raw, reason, &self.queue).await
    }
}

/// Copies `raw` to the dead-letter exchange with `reason`, then acks it.
async fn dead_letter(
    dead: &Publisher,
    raw: &lapin::message::Delivery,
    reason: &str,
    queue: &str,
) -> Result<(), BrokerError> {
    let headers = envelope::dead_letter_headers(raw.properties.headers().as_ref(), reason, queue);
    let properties = raw.properties.clone().with_headers(headers);
    dead.send_raw(DEAD_EXCHANGE, "", &raw.data, properties)
        .await?
        .confirmed()
        .await?;
    raw.acker
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| BrokerError::Settle(Box::new(e)))
}

/// A message a consumer could not read, already dead-lettered with `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Its properties, as far as they could be read (`reply_to` tells where to answer).
    pub meta: Meta,
    /// Its `type`, if it had one.
    pub kind: Option<String>,
    /// Why it could not be read.
    pub reason: String,
}

/// What [`Consumer::next_or_refusal`] yields.
// The large variant is the common one; boxing it would allocate once per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Received<M> {
    /// A message of the consumer's set.
    Message(Delivery<M>),
    /// A message it could not read, dead-lettered.
    Refused(Refusal),
}

/// A consumer of one queue, reading messages of the set `M`.
pub struct Consumer<M> {
    queue: Arc<str>,
    /// Prefixes consumer tags, so the RabbitMQ UI shows which program consumes.
    app_id: Arc<str>,
    channel: Channel,
    inner: lapin::Consumer,
    dead: Publisher,
    kinds: Vec<&'static str>,
    /// A delivery being dead-lettered, kept here so that a `next()` cancelled meanwhile (in a
    /// `select!` or a timeout) finishes the job on its next call instead of leaving the message
    /// unacked.
    dead_lettering: Option<(lapin::message::Delivery, String)>,
    _messages: PhantomData<fn() -> M>,
}

impl<M: MessageSet> Consumer<M> {
    /// Starts consuming `queue` with at most `prefetch` unacked messages at a time.
    pub async fn new(
        broker: &Broker,
        queue: &str,
        prefetch: u16,
    ) -> Result<Consumer<M>, BrokerError> {
        let channel = broker.channel().await?;
        let inner = start(&channel, queue, &broker.config().app_id, prefetch).await?;
        Ok(Consumer {
            queue: Arc::from(queue),
            app_id: Arc::from(broker.config().app_id.as_str()),
            channel,
            inner,
            dead: Publisher::new(broker).await?,
            kinds: M::kinds(),
            dead_lettering: None,
            _messages: PhantomData,
        })
    }

    /// Stops the broker's deliveries (`basic.cancel`) and returns the messages it had already
    /// sent and nobody read yet. They stay unacked, held by this consumer's channel, which stays
    /// open: every delivery read before or returned here is still acked or requeued as usual.
    /// [`Consumer::next`] returns `None` until [`Consumer::resume`].
    pub async fn pause(&mut self) -> Result<Vec<Delivery<M>>, BrokerError> {
        let tag = self.inner.tag();
        self.channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .map_err(|e| BrokerError::Channel(Box::new(e)))?;
        // The cancel's answer ends the stream after the deliveries that preceded it.
        let mut buffered = Vec::new();
        while let Some(next) = self.next().await {
            buffered.push(next?);
        }
        Ok(buffered)
    }

    /// Consumes the queue again, now with at most `prefetch` unacked messages from this
    /// consumer (those still unacked from before count too).
    pub async fn resume(&mut self, prefetch: u16) -> Result<(), BrokerError> {
        self.inner = start(&self.channel, &self.queue, &self.app_id, prefetch).await?;
        Ok(())
    }

    /// Stops consuming and closes the consumer's channel: messages delivered to it and not yet
    /// acked go back to the queue, for other consumers.
    pub async fn close(self) {
        if let Err(error) = self.channel.close(200, "consumer closed".into()).await {
            tracing::debug!("closing the consumer of {}: {error}", self.queue);
        }
    }

    /// The queue it consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    fn open(&self, raw: &lapin::message::Delivery) -> Result<(M, &'static str, Meta), DecodeError> {
        let envelope = Envelope::open(&raw.properties, &raw.data)?;
        let Some(kind) = self.kinds.iter().copied().find(|k| *k == envelope.kind) else {
            return Err(DecodeError::UnexpectedKind {
                found: envelope.kind,
                expected: self.kinds.join(", "),
            });
        };
        let message = M::decode(&envelope)?;
        Ok((message, kind, envelope.meta))
    }

    /// The next message, waiting through connection recoveries. `None` once the consumer was
    /// canceled (the queue was deleted, or the connection closed for good). Messages it cannot
    /// read are dead-lettered and skipped. Cancel-safe: a message is never lost when the
    /// returned future is dropped.
    pub async fn next(&mut self) -> Option<Result<Delivery<M>, BrokerError>> {
        loop {
            match self.next_or_refusal().await? {
                Ok(Received::Message(delivery)) => return Some(Ok(delivery)),
                Ok(Received::Refused(_)) => {}
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Like [`Consumer::next`], but also reports each message it could not read (after
    /// dead-lettering it), so that its sender can be told why.
    pub async fn next_or_refusal(&mut self) -> Option<Result<Received<M>, BrokerError>> {
        loop {
            if let Some((raw, reason)) = &self.dead_lettering {
                if let Err(error) = dead_letter(&self.dead, raw, reason, &self.queue).await {
                    return Some(Err(error));
                }
                let refusal = Refusal {
                    meta: envelope::meta_of(&raw.properties),
                    kind: raw.properties.kind().as_ref().map(|kind| kind.to_string()),
                    reason: reason.clone(),
                };
                self.dead_lettering = None;
                return Some(Ok(Received::Refused(refusal)));
            }
            let raw = match self.inner.next().await? {
                Ok(raw) => raw,
                Err(error) => match self.channel.wait_for_recovery(error).await {
                    Ok(()) => continue,
                    Err(source) => {
                        return Some(Err(BrokerError::Consume {
                            queue: self.queue.to_string(),
                            source: Some(Box::new(source)),
                        }));
                    }
                },
            };
            match self.open(&raw) {
                Ok((message, kind, meta)) => {
                    return Some(Ok(Received::Message(Delivery {
                        message,
                        kind,
                        meta,
                        redelivered: raw.redelivered,
                        routing_key: raw.routing_key.to_string(),
                        raw,
                        queue: Arc::clone(&self.queue),
                        dead: self.dead.clone(),
                    })));
                }
                Err(reason) => {
                    tracing::warn!(
                        queue = %self.queue,
                        "dead-lettering a message from {}: {reason}",
                        self.queue
                    );
                    // Kept in `self` across the dead-lettering's awaits: see `dead_lettering`.
                    self.dead_lettering = Some((raw, reason.to_string()));
                }
            }
        }
    }
}

/// Sets `channel`'s per-consumer prefetch to `prefetch` and starts a consumer of `queue` on it.
async fn start(
    channel: &Channel,
    queue: &str,
    app_id: &str,
    prefetch: u16,
) -> Result<lapin::Consumer, BrokerError> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| BrokerError::Channel(Box::new(e)))?;
    let queue_name = ShortString::try_new(queue).map_err(|_| BrokerError::Consume {
        queue: queue.to_owned(),
        source: None,
    })?;
    let tag = format!("{app_id}-{}", uuid::Uuid::new_v4().simple());
    channel
        .basic_consume(
            queue_name,
            ShortString::try_new(tag.as_str()).unwrap_or_else(|_| "baton".into()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Consume {
            queue: queue.to_owned(),
            source: Some(Box::new(source)),
        })
}
