//! baton's HTTP API, served by the dispatcher (`baton dispatcher --http-addr`): REST over the
//! data model under `/api/v1`, `/healthz`, Prometheus `/metrics`, and an OpenAPI document.
//!
//! Reads go straight to PostgreSQL through `dispatcher::store`. Writes (submissions,
//! registrations, added tasks, cancels and aborts) are published over AMQP to `baton.submit`,
//! exactly as producers publish them, and the dispatcher's answer becomes the response: HTTP
//! and AMQP share one code path, and an `Idempotency-Key` becomes the message id the
//! dispatcher de-duplicates by.
//!
//! Layout: [`routes`] is the route table (method, path, summary, parameters, schemas, handler)
//! that both [`router`] and [`openapi`] are built from; [`error`] is the one error type and its
//! JSON shape; [`extract`] and [`pagination`] read requests, purely; `catalog`, `plans`,
//! `tasks`, `outputs`, `workers` and `ops` hold the handlers by resource; [`artifacts`] opens
//! model files under the store's root only.

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use tokio_util::sync::CancellationToken;

pub mod artifacts;
pub mod auth;
mod catalog;
pub mod error;
pub mod extract;
pub mod openapi;
mod ops;
mod outputs;
pub mod pagination;
mod plans;
pub mod routes;
mod state;
mod tasks;
mod users;
mod workers;

pub use error::{ApiError, ErrorBody, ErrorKind};
pub use ops::Health;
pub use plans::{CancelBody, NewTasks};
pub use state::{ApiConfig, ApiState, DEFAULT_POOL_SIZE, DEFAULT_RPC_TIMEOUT};
pub use users::{IssuedToken, Login, NewToken, NewUser, PasswordChange, TokenInfo, UserUpdate};

/// The largest request body accepted: RabbitMQ takes messages up to 128 MiB by default, and a
/// plan of the largest batch the dispatcher validates (200 000 tasks) fits.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long in-flight requests may take to finish once the server is asked to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        "",
        format!("{} does not take {method}", uri.path()),
    )
}

/// The API's router, with `state`.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for route in routes::table() {
        let handler = match route.access {
            Some(auth::Access::Public) => route.handler,
            Some(auth::Access::Requires(action)) => route.handler.layer(
                axum::middleware::from_fn_with_state(state.clone(), move |state, request, next| {
                    auth::authorize(state, action, request, next)
                }),
            ),
            // A route that does not say who may call it is served to nobody (a unit test
            // keeps the table from having one).
            None => axum::routing::any(|| async {
                ApiError::new(ErrorKind::Forbidden, "", "this route has no access rule")
            }),
        };
        router = router.route(route.path, handler);
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets requests in flight
/// finish (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!("HTTP API listening on http://{address}");
    }
    let stopping = shutdown.clone();
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stopping.cancelled().await });
    tokio::select! {
        served = server => served,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("HTTP requests still running {SHUTDOWN_GRACE:?} after shutdown: dropped");
            Ok(())
        }
    }
}
