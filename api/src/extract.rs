//! Reading requests into typed values, with every failure an [`ApiError`] naming what is
//! wrong: JSON bodies (with the path of the bad field), path keys, query parameters (only the
//! declared ones) and the `Idempotency-Key` header.
//!
//! The parsing is plain functions over bytes and strings ([`parse_json`], [`Query::parse`]),
//! unit-tested; the extractors only take the bytes out of the request.

use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorKind};
use crate::routes::{Location, Param};

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// A JSON request body of type `T` that may be left out (empty), meaning `T::default()`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

/// Reads `bytes` as JSON of type `T`; a failure names the field (`tasks[2].key`) and says why.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ApiError::invalid(path, error.into_inner().to_string())
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::invalid("", error.to_string()))?;
    Ok(value)
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The body's bytes, once its content type said JSON (or, when `optional`, it is empty).
async fn json_bytes<S: Send + Sync>(
    request: Request,
    state: &S,
    optional: bool,
) -> Result<Bytes, ApiError> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default().to_owned());
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorKind::PayloadTooLarge, "", rejection.body_text())
            } else {
                ApiError::invalid("", rejection.body_text())
            }
        })?;
    if optional && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::new());
    }
    match content_type {
        Some(content_type) if is_json(&content_type) => Ok(bytes),
        _ => Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "Content-Type",
            "the body must be JSON, sent with `Content-Type: application/json`",
        )),
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(request, state, false).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = json_bytes(request, state, true).await?;
        if bytes.is_empty() {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

/// The one path parameter of a route (`{key}`, `{id}`, `{identifier}`), parsed as `T`.
#[derive(Debug)]
pub struct Key<T>(pub T);

/// Parses the path parameter `name`'s `value` as `T`.
pub fn parse_key<T: FromStr>(name: &str, value: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|error| ApiError::invalid(name, format!("{value:?} is not valid: {error}")))
}

impl<S: Send + Sync, T: FromStr> FromRequestParts<S> for Key<T>
where
    T::Err: std::fmt::Display,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(params) =
            axum::extract::Path::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| ApiError::invalid("", rejection.body_text()))?;
        let Some((name, value)) = params.into_iter().next() else {
            return Err(ApiError::internal(
                "a route without a path parameter reads a key",
            ));
        };
        parse_key(&name, &value).map(Key)
    }
}

/// The query string of a request, as name/value pairs in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// The pairs of `query` (the part of the URI after `?`, if any).
    pub fn from_query_string(query: Option<&str>) -> Query {
        Query {
            pairs: query
                .map(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .map(|(name, value)| (name.into_owned(), value.into_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Refuses any parameter not among `known` (the route's declared query parameters) and any
    /// parameter given twice: a typo would otherwise silently list everything.
    pub fn only(&self, known: &[Param]) -> Result<(), ApiError> {
        let mut problems = Vec::new();
        for (index, (name, _)) in self.pairs.iter().enumerate() {
            let declared = known
                .iter()
                .any(|param| param.location == Location::Query && param.name == name);
            if !declared {
                let expected: Vec<&str> = known
                    .iter()
                    .filter(|param| param.location == Location::Query)
                    .map(|param| param.name)
                    .collect();
                let message = if expected.is_empty() {
                    "unknown parameter: this route takes no query parameter".to_owned()
                } else {
                    format!(
                        "unknown parameter, expected one of: {}",
                        expected.join(", ")
                    )
                };
                problems.push(models::wire::ErrorDetail {
                    path: name.clone(),
                    message,
                });
            } else if self.pairs[..index].iter().any(|(other, _)| other == name) {
                problems.push(models::wire::ErrorDetail {
                    path: name.clone(),
                    message: "given more than once".to_owned(),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::with_details(ErrorKind::InvalidRequest, problems))
        }
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(other, _)| other == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of `name` parsed as `T`, if given; a value that does not parse is an error
    /// naming the parameter.
    pub fn parse<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        self.get(name)
            .map(|value| {
                value
                    .parse()
                    .map_err(|error| ApiError::invalid(name, format!("{value:?}: {error}")))
            })
            .transpose()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Query::from_query_string(parts.uri.query()))
    }
}

/// The request's `Idempotency-Key` header, if it has one: resending a write with the same key
/// gets the answer to the first, and applies it once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

/// The header's name.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The longest idempotency key accepted: it travels, prefixed with the message kind, as an
/// AMQP `message_id`, which holds 255 bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters.
pub fn check_idempotency_key(value: &[u8]) -> Result<String, ApiError> {
    let refuse = |message: &str| ApiError::invalid(IDEMPOTENCY_KEY, message);
    if value.is_empty() {
        return Err(refuse("must not be empty"));
    }
    if value.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(refuse("must be at most 200 characters long"));
    }
    if !value.iter().all(|byte| byte.is_ascii_graphic()) {
        return Err(refuse(
            "must be visible ASCII characters only (no space or control character)",
        ));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        if values.next().is_some() {
            return Err(ApiError::invalid(IDEMPOTENCY_KEY, "given more than once"));
        }
        check_idempotency_key(value.as_bytes()).map(|key| IdempotencyKey(Some(key)))
    }
}

#[cfg(test)]
mod tests;
