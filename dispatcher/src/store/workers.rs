//! Queries on workers and their devices.

use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use models::{Device, Worker, WorkerId};

use super::rows::{DeviceRow, WorkerRow};
use super::schema::{devices, workers};
use super::{Page, StoreResult};

/// Registers `worker`, or updates every field of the worker with the same identifier except
/// its creation date.
pub async fn upsert_worker(conn: &mut AsyncPgConnection, worker: &Worker) -> StoreResult<()> {
    let row = WorkerRow::from_model(worker)?;
    diesel::insert_into(workers::table)
        .values(&row)
        .on_conflict(workers::identifier)
        .do_update()
        .set((
            workers::owner.eq(excluded(workers::owner)),
            workers::organization.eq(excluded(workers::organization)),
            workers::version.eq(excluded(workers::version)),
            workers::display_name.eq(excluded(workers::display_name)),
            workers::properties.eq(excluded(workers::properties)),
            workers::executor_limit.eq(excluded(workers::executor_limit)),
            workers::is_enabled.eq(excluded(workers::is_enabled)),
            workers::is_active.eq(excluded(workers::is_active)),
            workers::should_disconnect.eq(excluded(workers::should_disconnect)),
            workers::last_heartbeat.eq(excluded(workers::last_heartbeat)),
            workers::update_date.eq(excluded(workers::update_date)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The worker `identifier`.
pub async fn find_worker(
    conn: &mut AsyncPgConnection,
    identifier: &WorkerId,
) -> StoreResult<Option<Worker>> {
    workers::table
        .find(identifier.as_str())
        .select(WorkerRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(WorkerRow::into_model)
        .transpose()
}

/// Records a heartbeat of worker `identifier` at `now`; returns whether the worker is
/// registered.
pub async fn record_heartbeat(
    mut conn: &AsyncPgConnection,
    identifier: &WorkerId,
    now: chrono::DateTime<chrono::Utc>,
) -> StoreResult<bool> {
    let updated = super::Cached(
        diesel::update(workers::table.find(identifier.as_str())).set((
            workers::last_heartbeat.eq(Some(now)),
            workers::is_active.eq(true),
            workers::update_date.eq(now),
        )),
    )
    .execute(&mut conn)
    .await?;
    Ok(updated > 0)
}

/// Marks inactive every active worker whose last heartbeat is older than `before`; returns
/// their identifiers.
pub async fn mark_silent_workers_inactive(
    conn: &mut AsyncPgConnection,
    before: chrono::DateTime<chrono::Utc>,
) -> StoreResult<Vec<WorkerId>> {
    let silent: Vec<String> = diesel::update(
        workers::table.filter(workers::is_active.eq(true)).filter(
            workers::last_heartbeat
                .lt(before)
                .or(workers::last_heartbeat.is_null()),
        ),
    )
    .set(workers::is_active.eq(false))
    .returning(workers::identifier)
    .get_results(conn)
    .await?;
    Ok(silent.into_iter().map(WorkerId).collect())
}

/// Every worker, by identifier.
pub async fn list_workers(conn: &mut AsyncPgConnection) -> StoreResult<Vec<Worker>> {
    workers::table
        .order(workers::identifier)
        .select(WorkerRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(WorkerRow::into_model)
        .collect()
}

/// Records what a worker's device scanner saw: each device is inserted or updated.
pub async fn upsert_devices(conn: &mut AsyncPgConnection, devices: &[Device]) -> StoreResult<()> {
    for device in devices {
        let row = DeviceRow::from_model(device);
        diesel::insert_into(devices::table)
            .values(&row)
            .on_conflict((devices::worker, devices::id))
            .do_update()
            .set(&row)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Marks every device of `worker` not among `active` (ids) inactive: the scanner no longer
/// sees it.
pub async fn deactivate_other_devices(
    conn: &mut AsyncPgConnection,
    worker: &WorkerId,
    active: &[String],
) -> StoreResult<()> {
    diesel::update(
        devices::table
            .filter(devices::worker.eq(worker.as_str()))
            .filter(devices::id.ne_all(active)),
    )
    .set(devices::is_active.eq(false))
    .execute(conn)
    .await?;
    Ok(())
}

/// The devices of `worker`, by id.
pub async fn list_devices(
    conn: &mut AsyncPgConnection,
    worker: &WorkerId,
) -> StoreResult<Vec<Device>> {
    Ok(devices::table
        .filter(devices::worker.eq(worker.as_str()))
        .order(devices::id)
        .select(DeviceRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(DeviceRow::into_model)
        .collect())
}

/// Workers by identifier: `limit` rows after skipping `offset`, with how many there are in all.
pub async fn list_workers_page(
    conn: &mut AsyncPgConnection,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Worker>> {
    let total = workers::table.count().get_result(conn).await?;
    let rows = workers::table
        .order(workers::identifier)
        .limit(limit)
        .offset(offset)
        .select(WorkerRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(WorkerRow::into_model)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { rows, total })
}

/// Devices by worker then id, optionally only those of `worker`: `limit` rows after skipping
/// `offset`, with how many match in all.
pub async fn list_devices_page(
    conn: &mut AsyncPgConnection,
    worker: Option<&WorkerId>,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Device>> {
    let filtered = || {
        let mut query = devices::table.into_boxed();
        if let Some(worker) = worker {
            query = query.filter(devices::worker.eq(worker.as_str()));
        }
        query
    };
    let total = filtered().count().get_result(conn).await?;
    let rows = filtered()
        .order((devices::worker, devices::id))
        .limit(limit)
        .offset(offset)
        .select(DeviceRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(DeviceRow::into_model)
        .collect();
    Ok(Page { rows, total })
}
