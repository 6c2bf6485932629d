//! Routes for operators and tools: `/healthz`, Prometheus `/metrics`, and the OpenAPI
//! document.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use broker::topology::{self, DISPATCHER_QUEUE, SUBMISSIONS_QUEUE};
use dispatcher::store::{stats, tasks};

use models::access::Action;

use crate::error::ApiError;
use crate::extract::Query;
use crate::routes::{Body, Route, get};
use crate::state::ApiState;

/// How long a health check waits for PostgreSQL before calling it down.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The routes of this module.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/healthz", "health", health)
            .public()
            .summary(
                "operations",
                "Whether PostgreSQL answers and RabbitMQ is connected",
            )
            .returns::<Health>(200, "Healthy (503 with the same body when not)"),
        get("/metrics", "metrics", metrics)
            .requires(Action::ReadMetrics)
            .summary(
                "operations",
                "Prometheus metrics, in the OpenMetrics text format",
            )
            .returns_body(200, "The metrics", Body::Text(OPENMETRICS)),
        get("/api/v1/openapi.json", "openapi", openapi)
            .public()
            .summary("operations", "This document")
            .returns_body(
                200,
                "The OpenAPI 3.1 document",
                Body::Json(|_| schemars::json_schema!({"type": "object"})),
            ),
    ]
}

/// The OpenMetrics text media type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/healthz` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` when both are, else `unavailable`.
    pub status: String,
    /// `ok`, or `unreachable` when PostgreSQL did not answer `SELECT 1` in time.
    pub database: String,
    /// `ok`, `recovering` (reconnecting), `blocked` (a resource alarm stops publishing) or
    /// `disconnected`.
    pub broker: String,
}

async fn database_health(state: &ApiState) -> Result<(), String> {
    let check = async {
        let mut conn = state
            .store_conn()
            .await
            .map_err(|error| error.to_string())?;
        stats::ping(&mut conn)
            .await
            .map_err(|error| error.to_string())
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
    }
}

async fn health(State(state): State<ApiState>, query: Query) -> Result<Response, ApiError> {
    query.only(&[])?;
    let database = match database_health(&state).await {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!("health check: PostgreSQL: {error}");
            "unreachable"
        }
    };
    let link = state.broker().state();
    let broker = if link.blocked.is_some() {
        "blocked"
    } else if link.recovering {
        "recovering"
    } else if link.connected {
        "ok"
    } else {
        "disconnected"
    };
    let healthy = database == "ok" && broker == "ok";
    let health = Health {
        status: if healthy { "ok" } else { "unavailable" }.to_owned(),
        database: database.to_owned(),
        broker: broker.to_owned(),
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(health)).into_response())
}

/// A `status` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// A `queue` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// The queues whose depth is reported: submissions, the dispatcher's feed, and the task queue
/// of every requirement set with ready tasks (declared when their first task was published, so
/// asking for a queue that does not exist, which costs RabbitMQ a channel, is rare).
async fn watched_queues(state: &ApiState) -> Result<Vec<String>, ApiError> {
    let mut conn = state.conn().await?;
    let sets = tasks::ready_requirement_sets(&mut conn).await?;
    let mut queues = vec![SUBMISSIONS_QUEUE.to_owned(), DISPATCHER_QUEUE.to_owned()];
    queues.extend(sets.iter().map(topology::task_queue));
    Ok(queues)
}

async fn metrics(State(state): State<ApiState>, query: Query) -> Result<Response, ApiError> {
    query.only(&[])?;
    let mut registry = Registry::with_prefix("baton");
    let (plans, tasks) = {
        let mut conn = state.conn().await?;
        (
            stats::count_plans_by_status(&mut conn).await?,
            stats::count_tasks_by_status(&mut conn).await?,
        )
    };
    let plan_gauge = Family::<StatusLabel, Gauge>::default();
    for status in models::PlanStatus::ALL {
        let count = plans
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, count)| *count);
        plan_gauge
            .get_or_create(&StatusLabel {
                status: status.as_str().to_owned(),
            })
            .set(count);
    }
    registry.register("compute_plans", "Compute plans by status", plan_gauge);
    let task_gauge = Family::<StatusLabel, Gauge>::default();
    for status in models::TaskStatus::ALL {
        let count = tasks
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, count)| *count);
        task_gauge
            .get_or_create(&StatusLabel {
                status: status.as_str().to_owned(),
            })
            .set(count);
    }
    registry.register("tasks", "Tasks by status", task_gauge);
    let queues = watched_queues(&state).await?;
    let depths = state.broker().message_counts(&queues).await?;
    let queue_gauge = Family::<QueueLabel, Gauge>::default();
    for (queue, count) in depths {
        // A task queue not declared yet (its first task is being published) holds nothing.
        queue_gauge
            .get_or_create(&QueueLabel { queue })
            .set(i64::from(count.unwrap_or(0)));
    }
    registry.register(
        "queue_messages",
        "Messages ready in baton's queues, not yet taken by a consumer (queue lag)",
        queue_gauge,
    );
    state.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|error| ApiError::internal(format!("encoding metrics: {error}")))?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response())
}

async fn openapi(query: Query) -> Result<Response, ApiError> {
    query.only(&[])?;
    Ok(Json(crate::openapi::api_document()).into_response())
}
