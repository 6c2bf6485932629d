//! Queries on compute plans: insert, read, save counters and dates, list, and the performance
//! table of a plan.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use models::performance::round_idx;
use models::{ComputePlan, Metadata, PerformanceRow, PlanKey, PlanStatus};

use super::rows::PlanRow;
use super::schema::{compute_plans, functions, performances, tasks};
use super::{StoreError, StoreResult};

/// Stores a new `plan`.
pub async fn insert_plan(conn: &mut AsyncPgConnection, plan: &ComputePlan) -> StoreResult<()> {
    diesel::insert_into(compute_plans::table)
        .values(PlanRow::from_model(plan)?)
        .execute(conn)
        .await?;
    Ok(())
}

/// The plan `key`.
pub async fn find_plan(
    conn: &mut AsyncPgConnection,
    key: PlanKey,
) -> StoreResult<Option<ComputePlan>> {
    compute_plans::table
        .find(key.0)
        .select(PlanRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(PlanRow::into_model)
        .transpose()
}

/// The plan `key`, locked until the end of the transaction, so that concurrent changes to its
/// counters are applied one after the other.
pub async fn lock_plan(
    conn: &mut AsyncPgConnection,
    key: PlanKey,
) -> StoreResult<Option<ComputePlan>> {
    compute_plans::table
        .find(key.0)
        .for_update()
        .select(PlanRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(PlanRow::into_model)
        .transpose()
}

/// Saves every field of an existing `plan` (counters, status, dates, failed task).
pub async fn update_plan(conn: &mut AsyncPgConnection, plan: &ComputePlan) -> StoreResult<()> {
    let updated = diesel::update(compute_plans::table.find(plan.key.0))
        .set(PlanRow::from_model(plan)?)
        .execute(conn)
        .await?;
    if updated == 0 {
        return Err(StoreError::Database(diesel::result::Error::NotFound));
    }
    Ok(())
}

/// Plans, newest first, optionally only those in `status`; `limit` rows after skipping
/// `offset`.
pub async fn list_plans(
    conn: &mut AsyncPgConnection,
    status: Option<PlanStatus>,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<ComputePlan>> {
    let mut query = compute_plans::table
        .select(PlanRow::as_select())
        .order((compute_plans::creation_date.desc(), compute_plans::key))
        .limit(limit)
        .offset(offset)
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(compute_plans::status.eq(status.as_str()));
    }
    query
        .load(conn)
        .await?
        .into_iter()
        .map(PlanRow::into_model)
        .collect()
}

/// The performance table of plan `key` (the seed's `Performances` columns): one row per
/// performance, ordered by task rank, then worker, then task.
pub async fn performance_table(
    conn: &mut AsyncPgConnection,
    key: PlanKey,
) -> StoreResult<Vec<PerformanceRow>> {
    let Some(plan) = find_plan(conn, key).await? else {
        return Ok(Vec::new());
    };
    let rows: Vec<(
        uuid::Uuid,
        String,
        i32,
        serde_json::Value,
        String,
        String,
        f64,
    )> = performances::table
        .inner_join(tasks::table.inner_join(functions::table))
        .filter(tasks::compute_plan_key.eq(key.0))
        .order((
            tasks::rank,
            tasks::worker,
            tasks::key,
            performances::output_identifier,
        ))
        .select((
            tasks::key,
            tasks::worker,
            tasks::rank,
            tasks::metadata,
            functions::name,
            performances::output_identifier,
            performances::value,
        ))
        .load(conn)
        .await?;
    rows.into_iter()
        .map(
            |(task_key, worker, rank, metadata, function_name, identifier, value)| {
                let corrupt = |reason: String| StoreError::Corrupt {
                    table: "tasks",
                    key: task_key.to_string(),
                    reason,
                };
                let metadata: Metadata = serde_json::from_value(metadata)
                    .map_err(|e| corrupt(format!("metadata: {e}")))?;
                let rank =
                    u32::try_from(rank).map_err(|_| corrupt(format!("negative rank {rank}")))?;
                Ok(PerformanceRow {
                    compute_plan_key: plan.key,
                    compute_plan_tag: plan.tag.clone(),
                    compute_plan_status: plan.status,
                    compute_plan_start_date: plan.start_date,
                    compute_plan_end_date: plan.end_date,
                    compute_plan_metadata: plan.metadata.clone(),
                    worker: worker.into(),
                    task_key: task_key.into(),
                    function_name,
                    task_rank: rank,
                    round_idx: round_idx(&metadata, rank),
                    identifier,
                    performance: value,
                })
            },
        )
        .collect()
}
