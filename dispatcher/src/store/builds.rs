//! Queries on function builds (SPEC.md §4): which builds to publish, granting a build to one
//! worker under a lease, renewing and lapsing build leases, and recording the outcome. Each
//! change is one guarded `UPDATE`, so two dispatchers or a redelivered message never grant or
//! end a build twice.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use models::{File, Function, FunctionKey, FunctionStatus, PlanKey, Timestamp, WorkerId};

use super::rows::FunctionRow;
use super::schema::{functions, tasks};
use super::{StoreError, StoreResult};

/// Functions waiting to be built whose build is not published (registered, or back from a
/// lapsed lease).
pub async fn unpublished_builds(conn: &mut AsyncPgConnection) -> StoreResult<Vec<Function>> {
    functions::table
        .filter(functions::status.eq(FunctionStatus::Waiting.as_str()))
        .filter(functions::build_published_at.is_null())
        .order(functions::creation_date)
        .select(FunctionRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(FunctionRow::into_model)
        .collect()
}

/// Records that the build of `key` was published at `now`.
pub async fn mark_build_published(
    conn: &mut AsyncPgConnection,
    key: FunctionKey,
    now: Timestamp,
) -> StoreResult<()> {
    diesel::update(functions::table.find(key.0))
        .set(functions::build_published_at.eq(Some(now)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Grants the build of `key` to `worker` if the function still waits for one: it becomes
/// BUILDING under a lease `token` until `expires_at`. Returns the build attempt, or `None`
/// when the function is not WAITING (built, building elsewhere, canceled).
pub async fn grant_build(
    conn: &mut AsyncPgConnection,
    key: FunctionKey,
    worker: &WorkerId,
    token: Uuid,
    expires_at: Timestamp,
    now: Timestamp,
) -> StoreResult<Option<u32>> {
    let attempt: Option<i32> = diesel::update(
        functions::table
            .find(key.0)
            .filter(functions::status.eq(FunctionStatus::Waiting.as_str())),
    )
    .set((
        functions::status.eq(FunctionStatus::Building.as_str()),
        functions::build_attempt.eq(functions::build_attempt + 1),
        functions::build_token.eq(Some(token)),
        functions::build_worker.eq(Some(worker.as_str())),
        functions::build_lease_expires_at.eq(Some(expires_at)),
        functions::update_date.eq(now),
    ))
    .returning(functions::build_attempt)
    .get_result(conn)
    .await
    .optional()?;
    attempt
        .map(|attempt| {
            u32::try_from(attempt).map_err(|_| StoreError::Corrupt {
                table: "functions",
                key: key.to_string(),
                reason: format!("build_attempt {attempt} is negative"),
            })
        })
        .transpose()
}

/// Extends the lease of the build of `key` held under `token`; false when it is not held.
pub async fn renew_build(
    conn: &mut AsyncPgConnection,
    key: FunctionKey,
    token: Uuid,
    expires_at: Timestamp,
) -> StoreResult<bool> {
    let updated = diesel::update(
        functions::table
            .find(key.0)
            .filter(functions::status.eq(FunctionStatus::Building.as_str()))
            .filter(functions::build_token.eq(token)),
    )
    .set(functions::build_lease_expires_at.eq(Some(expires_at)))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Ends the build of `key` held under `token` with `status` (READY or FAILED) and, when READY,
/// the built `image`. False when the build is not held under `token` (a stale or repeated
/// report).
pub async fn finish_build(
    conn: &mut AsyncPgConnection,
    key: FunctionKey,
    token: Uuid,
    status: FunctionStatus,
    image: Option<&File>,
    now: Timestamp,
) -> StoreResult<bool> {
    let image = image
        .map(serde_json::to_value)
        .transpose()
        .map_err(|error| StoreError::Encode {
            what: "function image",
            reason: error.to_string(),
        })?;
    let updated = diesel::update(
        functions::table
            .find(key.0)
            .filter(functions::status.eq(FunctionStatus::Building.as_str()))
            .filter(functions::build_token.eq(token)),
    )
    .set((
        functions::status.eq(status.as_str()),
        functions::image.eq(image),
        functions::build_token.eq(None::<Uuid>),
        functions::build_lease_expires_at.eq(None::<Timestamp>),
        functions::update_date.eq(now),
    ))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// The columns of a build put back to WAITING, to be published again.
#[allow(clippy::type_complexity)]
fn back_to_waiting(
    now: Timestamp,
) -> (
    diesel::dsl::Eq<functions::status, &'static str>,
    diesel::dsl::Eq<functions::build_token, Option<Uuid>>,
    diesel::dsl::Eq<functions::build_lease_expires_at, Option<Timestamp>>,
    diesel::dsl::Eq<functions::build_published_at, Option<Timestamp>>,
    diesel::dsl::Eq<functions::update_date, Timestamp>,
) {
    (
        functions::status.eq(FunctionStatus::Waiting.as_str()),
        functions::build_token.eq(None),
        functions::build_lease_expires_at.eq(None),
        functions::build_published_at.eq(None),
        functions::update_date.eq(now),
    )
}

/// The holder of the build of `key` gives it up (shutting down, or a failure another attempt
/// may not have): it goes back to WAITING, to be published again. False when not held.
pub async fn release_build(
    conn: &mut AsyncPgConnection,
    key: FunctionKey,
    token: Uuid,
    now: Timestamp,
) -> StoreResult<bool> {
    let updated = diesel::update(
        functions::table
            .find(key.0)
            .filter(functions::status.eq(FunctionStatus::Building.as_str()))
            .filter(functions::build_token.eq(token)),
    )
    .set(back_to_waiting(now))
    .execute(conn)
    .await?;
    Ok(updated == 1)
}

/// Builds whose lease lapsed before `now` go back to WAITING, to be published again; returns
/// their functions.
pub async fn lapse_builds(
    conn: &mut AsyncPgConnection,
    now: Timestamp,
) -> StoreResult<Vec<FunctionKey>> {
    let keys: Vec<Uuid> = diesel::update(
        functions::table
            .filter(functions::status.eq(FunctionStatus::Building.as_str()))
            .filter(functions::build_lease_expires_at.lt(now)),
    )
    .set(back_to_waiting(now))
    .returning(functions::key)
    .get_results(conn)
    .await?;
    Ok(keys.into_iter().map(FunctionKey).collect())
}

/// Tasks still waiting for a build that has ended: `(plan, function, function status)` for
/// each plan that must hear of it (after a crash, or a plan stored while the build ended).
pub async fn waits_on_ended_builds(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Vec<(PlanKey, FunctionKey, FunctionStatus)>> {
    let rows: Vec<(Uuid, Uuid, String)> = tasks::table
        .inner_join(functions::table)
        .filter(tasks::status.eq(models::TaskStatus::Waiting.as_str()))
        .filter(tasks::waiting_reason.eq(models::WaitingReason::Build.as_str()))
        .filter(functions::status.eq_any([
            FunctionStatus::Ready.as_str(),
            FunctionStatus::Failed.as_str(),
            FunctionStatus::Canceled.as_str(),
        ]))
        .select((tasks::compute_plan_key, functions::key, functions::status))
        .distinct()
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|(plan, function, status)| {
            let status = status.parse().map_err(|error| StoreError::Corrupt {
                table: "functions",
                key: function.to_string(),
                reason: format!("{error}"),
            })?;
            Ok((PlanKey(plan), FunctionKey(function), status))
        })
        .collect()
}
