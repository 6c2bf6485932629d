//! A wire message ↔ an AMQP body and properties. Pure: no IO, no clock (the timestamp is given).
//!
//! Every message is JSON with `content_type: application/json`, persistent, with its kind in
//! `type`, a `message_id`, the sender in `app_id` (and `user_id`, which RabbitMQ checks against
//! the connection's user), a `timestamp`, and the schema version in the
//! [`SCHEMA_VERSION_HEADER`] header, so it reads well in the management UI and any AMQP client
//! can produce it.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use models::wire::{SCHEMA_VERSION, WireMessage};

/// The content type of every baton message.
pub const CONTENT_TYPE: &str = "application/json";
/// The header carrying [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_HEADER: &str = "x-baton-schema-version";
/// The header saying why a message was dead-lettered by baton.
pub const DEAD_REASON_HEADER: &str = "x-baton-dead-reason";
/// The header naming the queue a dead-lettered message was taken from.
pub const DEAD_QUEUE_HEADER: &str = "x-baton-dead-queue";
/// The header naming the baton user a trusted service (the dispatcher's own HTTP API) sends a
/// request for; honoured only from the dispatcher's own RabbitMQ user.
pub const ON_BEHALF_OF_HEADER: &str = "x-baton-on-behalf-of";
/// AMQP's delivery mode for messages that survive a broker restart.
pub const PERSISTENT: u8 = 2;

/// The properties of a message other than its kind and body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Unique per message; consumers use it to recognise a redelivery.
    pub message_id: String,
    /// For a reply: the `message_id` of the request.
    pub correlation_id: Option<String>,
    /// For a request: where the reply goes.
    pub reply_to: Option<String>,
    /// The RabbitMQ user that sends it; RabbitMQ refuses a message whose `user_id` is not the
    /// connection's user, so it vouches for the sender.
    pub user_id: Option<String>,
    /// The sending program (`baton-dispatcher`, `baton-worker`, …).
    pub app_id: Option<String>,
    /// When it was sent, in seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The baton user a trusted service sends it for ([`ON_BEHALF_OF_HEADER`]).
    pub on_behalf_of: Option<String>,
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A property is longer than AMQP's 255-byte short strings.
    #[error("{property} is {len} bytes long, at most 255 fit in an AMQP property")]
    PropertyTooLong {
        /// Which property.
        property: &'static str,
        /// Its length.
        len: usize,
    },
    /// The message did not serialise.
    #[error("serialising the message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why a delivery is not a message this consumer can read. Each becomes the dead-letter reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The content type is not JSON.
    #[error("content type is {found:?}, expected \"application/json\"")]
    ContentType {
        /// What the message said.
        found: Option<String>,
    },
    /// No schema version header, or not a number.
    #[error("no numeric {SCHEMA_VERSION_HEADER} header")]
    MissingSchemaVersion,
    /// A schema version this program does not know.
    #[error(
        "schema version {found} is not supported (this program reads version {SCHEMA_VERSION})"
    )]
    UnsupportedSchemaVersion {
        /// The message's version.
        found: i64,
    },
    /// No `type` property.
    #[error("the message has no type property")]
    MissingKind,
    /// A kind this consumer does not handle.
    #[error("unexpected message type {found:?}, expected one of: {expected}")]
    UnexpectedKind {
        /// The message's kind.
        found: String,
        /// The kinds this consumer handles.
        expected: String,
    },
    /// The body is not the JSON of its kind.
    #[error("body is not a valid {kind} message: {reason}")]
    Body {
        /// The message's kind.
        kind: String,
        /// serde's account, with line and column.
        reason: String,
    },
}

fn short(property: &'static str, text: &str) -> Result<ShortString, EncodeError> {
    ShortString::try_new(text).map_err(|_| EncodeError::PropertyTooLong {
        property,
        len: text.len(),
    })
}

/// The body and properties of `message`, of kind `M::KIND`.
pub fn encode<M: WireMessage>(
    message: &M,
    meta: &Meta,
) -> Result<(Vec<u8>, BasicProperties), EncodeError> {
    let body = serde_json::to_vec(message)?;
    let mut headers = FieldTable::default();
    headers.insert(
        SCHEMA_VERSION_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(SCHEMA_VERSION)),
    );
    if let Some(user) = &meta.on_behalf_of {
        headers.insert(
            ON_BEHALF_OF_HEADER.into(),
            AMQPValue::LongString(LongString::from(user.as_str())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_type(short("type", M::KIND)?)
        .with_message_id(short("message_id", &meta.message_id)?)
        .with_headers(headers);
    if let Some(correlation_id) = &meta.correlation_id {
        properties = properties.with_correlation_id(short("correlation_id", correlation_id)?);
    }
    if let Some(reply_to) = &meta.reply_to {
        properties = properties.with_reply_to(short("reply_to", reply_to)?);
    }
    if let Some(user_id) = &meta.user_id {
        properties = properties.with_user_id(short("user_id", user_id)?);
    }
    if let Some(app_id) = &meta.app_id {
        properties = properties.with_app_id(short("app_id", app_id)?);
    }
    if let Some(timestamp) = meta.timestamp {
        properties = properties.with_timestamp(timestamp);
    }
    Ok((body, properties))
}

/// The header value as an integer, whatever integer type the sender chose.
fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::ShortString(v) => v.as_str().parse().ok(),
        AMQPValue::LongString(v) => String::from_utf8_lossy(v.as_bytes()).parse().ok(),
        _ => None,
    }
}

/// The properties of `properties` that baton uses, whatever else is wrong with the message.
pub fn meta_of(properties: &BasicProperties) -> Meta {
    let text = |value: &Option<ShortString>| value.as_ref().map(|v| v.as_str().to_owned());
    Meta {
        message_id: text(properties.message_id()).unwrap_or_default(),
        correlation_id: text(properties.correlation_id()),
        reply_to: text(properties.reply_to()),
        user_id: text(properties.user_id()),
        app_id: text(properties.app_id()),
        timestamp: *properties.timestamp(),
        on_behalf_of: properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(ON_BEHALF_OF_HEADER))
            .and_then(|value| match value {
                AMQPValue::LongString(text) => {
                    Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
                _ => None,
            }),
    }
}

/// A received message whose envelope is valid: JSON, a known schema version, a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The message kind (`type`).
    pub kind: String,
    /// Its properties.
    pub meta: Meta,
    /// The JSON body.
    pub body: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Checks the envelope of a delivered message: content type, schema version, kind.
    pub fn open(properties: &BasicProperties, body: &'a [u8]) -> Result<Envelope<'a>, DecodeError> {
        let content_type = properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str().to_owned());
        if content_type.as_deref() != Some(CONTENT_TYPE) {
            return Err(DecodeError::ContentType {
                found: content_type,
            });
        }
        let version = properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(SCHEMA_VERSION_HEADER))
            .and_then(integer)
            .ok_or(DecodeError::MissingSchemaVersion)?;
        if version != i64::from(SCHEMA_VERSION) {
            return Err(DecodeError::UnsupportedSchemaVersion { found: version });
        }
        let kind = properties
            .kind()
            .as_ref()
            .map(|kind| kind.as_str().to_owned())
            .ok_or(DecodeError::MissingKind)?;
        Ok(Envelope {
            kind,
            meta: meta_of(properties),
            body,
        })
    }

    /// The body as a message of kind `M::KIND`.
    pub fn decode<M: WireMessage>(&self) -> Result<M, DecodeError> {
        if self.kind != M::KIND {
            return Err(DecodeError::UnexpectedKind {
                found: self.kind.clone(),
                expected: M::KIND.to_owned(),
            });
        }
        serde_json::from_slice(self.body).map_err(|error| DecodeError::Body {
            kind: self.kind.clone(),
            reason: error.to_string(),
        })
    }
}

/// The headers of a copy of a message sent to the dead-letter exchange: the original headers,
/// plus why and from which queue.
pub fn dead_letter_headers(original: Option<&FieldTable>, reason: &str, queue: &str) -> FieldTable {
    let mut headers = original.cloned().unwrap_or_default();
    headers.insert(
        DEAD_REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        DEAD_QUEUE_HEADER.into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    headers
}

#[cfg(test)]
mod tests;
