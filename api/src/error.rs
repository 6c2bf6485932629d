//! The API's one error type and its JSON shape: `{"error": kind, "details": [{path, message}]}`.
//!
//! Bad input is a 4xx and is not logged as an error; a 5xx is logged with its cause, and the
//! caller gets a generic message that never names a URL, a credential or a query.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use broker::BrokerError;
use dispatcher::store::StoreError;
use models::wire::ErrorDetail;

/// What went wrong, as the `error` word of a response; each kind has one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request cannot be read: malformed JSON, a bad query or path parameter, a bad header.
    InvalidRequest,
    /// The body is not JSON (`Content-Type`).
    UnsupportedMediaType,
    /// The body is larger than the API accepts.
    PayloadTooLarge,
    /// Nothing has this key, or no route has this path.
    NotFound,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// The dispatcher refused the content: every problem is in the details, nothing was stored.
    InvalidSubmission,
    /// Something with this key exists already, with other content.
    AlreadyExists,
    /// The caller did not authenticate (no token, or one that does not authenticate) and an
    /// anonymous caller may not do this.
    Unauthenticated,
    /// The caller may not do this (e.g. add tasks to another organization's plan).
    Forbidden,
    /// The dispatcher refused the order (e.g. canceling a plan that already ended).
    Refused,
    /// Another request with the same `Idempotency-Key` is still in progress.
    Conflict,
    /// PostgreSQL or RabbitMQ cannot be reached.
    Unavailable,
    /// The dispatcher did not answer in time; the request may still be applied.
    Timeout,
    /// A bug or a corrupt row; the details are in the server's log.
    Internal,
}

impl ErrorKind {
    /// The word sent as `error`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::InvalidSubmission => "invalid_submission",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Refused => "refused",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }

    /// The HTTP status it is sent with.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::InvalidSubmission => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::AlreadyExists | ErrorKind::Refused | ErrorKind::Conflict => {
                StatusCode::CONFLICT
            }
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// The kind: `invalid_request`, `unsupported_media_type`, `payload_too_large`,
    /// `not_found`, `method_not_allowed`, `invalid_submission`, `already_exists`,
    /// `unauthenticated`, `forbidden`,
    /// `refused`, `conflict`, `unavailable`, `timeout` or `internal`.
    pub error: String,
    /// Every problem found, each with where it is (a JSON path into the body, or the name of
    /// the query, path or header parameter; empty for the request as a whole).
    pub details: Vec<ErrorDetail>,
}

/// An error a handler returns; it becomes the response.
#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    details: Vec<ErrorDetail>,
    /// For 5xx: the cause, logged when the response is made, never sent.
    cause: Option<String>,
}

fn detail(path: impl Into<String>, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail {
        path: path.into(),
        message: message.into(),
    }
}

impl ApiError {
    /// An error of `kind` with one problem at `path`.
    pub fn new(kind: ErrorKind, path: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            details: vec![detail(path, message)],
            cause: None,
        }
    }

    /// An error of `kind` with the problems `details`.
    pub fn with_details(kind: ErrorKind, details: Vec<ErrorDetail>) -> ApiError {
        ApiError {
            kind,
            details,
            cause: None,
        }
    }

    /// Bad input at `path` (a parameter name or a JSON path).
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidRequest, path, message)
    }

    /// `what` (e.g. `compute plan 0190…`) does not exist; `path` names the parameter.
    pub fn not_found(path: impl Into<String>, what: impl std::fmt::Display) -> ApiError {
        ApiError::new(ErrorKind::NotFound, path, format!("{what} does not exist"))
    }

    /// A failure of the server: `cause` is logged, the caller reads a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        ApiError {
            kind: ErrorKind::Internal,
            details: vec![detail(
                "",
                "internal error; the server's log has the details",
            )],
            cause: Some(cause.to_string()),
        }
    }

    /// `service` cannot be reached: `cause` is logged, the caller reads that it is unavailable.
    pub fn unavailable(service: &str, cause: impl std::fmt::Display) -> ApiError {
        ApiError {
            kind: ErrorKind::Unavailable,
            details: vec![detail("", format!("{service} is unavailable, retry later"))],
            cause: Some(cause.to_string()),
        }
    }

    /// The dispatcher refused a submission or registration with `error` (its word: `invalid`,
    /// `invalid_submission`, `already_exists`, `message_id_reused`, `forbidden`,
    /// `unauthenticated`, `not_found`,
    /// `malformed`, `internal`) and `details`.
    pub fn refusal(error: &str, details: Vec<ErrorDetail>) -> ApiError {
        let kind = match error {
            "invalid" | "invalid_submission" => ErrorKind::InvalidSubmission,
            "already_exists" => ErrorKind::AlreadyExists,
            "message_id_reused" => ErrorKind::Conflict,
            "forbidden" => ErrorKind::Forbidden,
            "unauthenticated" => ErrorKind::Unauthenticated,
            "not_found" => ErrorKind::NotFound,
            "malformed" => ErrorKind::InvalidRequest,
            "internal" => {
                return ApiError::internal(format!(
                    "the dispatcher failed to answer: {}",
                    details
                        .iter()
                        .map(|d| d.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            _ => ErrorKind::Refused,
        };
        ApiError::with_details(kind, details)
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Its problems, as sent.
    pub fn details(&self) -> &[ErrorDetail] {
        &self.details
    }

    /// The body sent for it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.kind.as_str().to_owned(),
            details: self.details.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.as_str())?;
        for detail in &self.details {
            if detail.path.is_empty() {
                write!(f, "; {}", detail.message)?;
            } else {
                write!(f, "; {}: {}", detail.path, detail.message)?;
            }
        }
        Ok(())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            match self.kind {
                ErrorKind::Internal => tracing::error!("HTTP request failed: {cause}"),
                _ => tracing::warn!("HTTP request failed ({}): {cause}", self.kind.as_str()),
            }
        }
        let mut response = (self.kind.status(), axum::Json(self.body())).into_response();
        if self.kind == ErrorKind::Unauthenticated {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"baton\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Pool(_) => ApiError::unavailable("the database", error),
            other => ApiError::internal(other),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::ReplyTimeout { after, .. } => ApiError {
                kind: ErrorKind::Timeout,
                details: vec![detail(
                    "",
                    format!(
                        "the dispatcher did not answer within {}s; the request may still be \
                         applied: retry with the same Idempotency-Key",
                        after.as_secs()
                    ),
                )],
                cause: None,
            },
            BrokerError::Encode(_) | BrokerError::Reply(_) | BrokerError::NoReplyTo { .. } => {
                ApiError::internal(error)
            }
            other => ApiError::unavailable("RabbitMQ", other),
        }
    }
}

#[cfg(test)]
mod tests;
