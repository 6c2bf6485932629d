//! Workers and their devices, as they registered and as their heartbeats keep them.

use axum::Json;
use axum::extract::State;

use dispatcher::store::workers;
use models::{Device, Worker, WorkerId};

use crate::error::ApiError;
use crate::extract::{Key, Query};
use crate::pagination::{PAGE, PAGE_SIZE, Paginated, Pagination};
use crate::routes::{Param, Route, get};
use models::access::Action;

use crate::state::ApiState;

const WORKER_ID: Param = Param::path::<String>("identifier", "The worker's identifier.");

const PAGES: &[Param] = &[PAGE, PAGE_SIZE];

const DEVICE_FILTERS: &[Param] = &[
    PAGE,
    PAGE_SIZE,
    Param::query::<String>("worker", "Only devices of this worker."),
];

/// The routes of this module.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/api/v1/workers", "listWorkers", list_workers)
            .requires(Action::ReadWorkers)
            .summary("workers", "List workers, by identifier")
            .params(PAGES)
            .returns::<Paginated<Worker>>(200, "A page of workers"),
        get("/api/v1/workers/{identifier}", "getWorker", get_worker)
            .requires(Action::ReadWorkers)
            .summary("workers", "Get a worker")
            .params(&[WORKER_ID])
            .returns::<Worker>(200, "The worker"),
        get("/api/v1/devices", "listDevices", list_devices)
            .requires(Action::ReadWorkers)
            .summary("workers", "List devices, by worker then id")
            .params(DEVICE_FILTERS)
            .returns::<Paginated<Device>>(200, "A page of devices"),
    ]
}

async fn list_workers(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<Worker>>, ApiError> {
    query.only(PAGES)?;
    let pagination = Pagination::from_query(&query)?;
    let mut conn = state.conn().await?;
    let page =
        workers::list_workers_page(&mut conn, pagination.limit(), pagination.offset()).await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn get_worker(
    State(state): State<ApiState>,
    Key(identifier): Key<String>,
    query: Query,
) -> Result<Json<Worker>, ApiError> {
    query.only(&[])?;
    let identifier = WorkerId(identifier);
    let mut conn = state.conn().await?;
    workers::find_worker(&mut conn, &identifier)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("identifier", format!("worker {identifier}")))
}

async fn list_devices(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<Device>>, ApiError> {
    query.only(DEVICE_FILTERS)?;
    let pagination = Pagination::from_query(&query)?;
    let worker = query.get("worker").map(WorkerId::from);
    let mut conn = state.conn().await?;
    let page = workers::list_devices_page(
        &mut conn,
        worker.as_ref(),
        pagination.limit(),
        pagination.offset(),
    )
    .await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}
