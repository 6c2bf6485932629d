//! Queries on compute plans: insert, read, save counters and dates, list, and the performance
//! table of a plan.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use models::performance::round_idx;
use models::{
    ComputePlan, Metadata, OrganizationId, PerformanceRow, PlanKey, PlanStatus, ProjectId,
};

use super::rows::PlanRow;
use super::schema::{compute_plans, functions, performances, tasks};
use super::{Page, StoreError, StoreResult};

/// Stores a new `plan`.
pub async fn insert_plan(mut conn: &AsyncPgConnection, plan: &ComputePlan) -> StoreResult<()> {
    diesel::insert_into(compute_plans::table)
        .values(PlanRow::from_model(plan)?)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The plan `key`.
pub async fn find_plan(
    mut conn: &AsyncPgConnection,
    key: PlanKey,
) -> StoreResult<Option<ComputePlan>> {
    compute_plans::table
        .find(key.0)
        .select(PlanRow::as_select())
        .first(&mut conn)
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
pub async fn update_plan(mut conn: &AsyncPgConnection, plan: &ComputePlan) -> StoreResult<()> {
    // Cached: the event applier updates plans in every batch, and the statement takes one
    // form per set of unset optional columns.
    let updated = super::Cached(
        diesel::update(compute_plans::table.find(plan.key.0)).set(PlanRow::from_model(plan)?),
    )
    .execute(&mut conn)
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

/// Which plans a listing shows: those matching every filter given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanFilter {
    /// Only plans in this status.
    pub status: Option<PlanStatus>,
    /// Only plans owned by this organization.
    pub owner: Option<OrganizationId>,
    /// Only plans of this project.
    pub project: Option<ProjectId>,
    /// Only plans with exactly this tag.
    pub tag: Option<String>,
}

fn filtered_plans(filter: &PlanFilter) -> compute_plans::BoxedQuery<'_, Pg> {
    let mut query = compute_plans::table.into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(compute_plans::status.eq(status.as_str()));
    }
    if let Some(owner) = &filter.owner {
        query = query.filter(compute_plans::owner.eq(owner.as_str()));
    }
    if let Some(project) = &filter.project {
        query = query.filter(compute_plans::project.eq(project.as_str()));
    }
    if let Some(tag) = &filter.tag {
        query = query.filter(compute_plans::tag.eq(tag.as_str()));
    }
    query
}

/// The plans matching `filter`, newest first: `limit` rows after skipping `offset`, with how
/// many match in all.
pub async fn list_plans_page(
    conn: &mut AsyncPgConnection,
    filter: &PlanFilter,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<ComputePlan>> {
    let total = filtered_plans(filter).count().get_result(conn).await?;
    let rows = filtered_plans(filter)
        .select(PlanRow::as_select())
        .order((compute_plans::creation_date.desc(), compute_plans::key))
        .limit(limit)
        .offset(offset)
        .load(conn)
        .await?
        .into_iter()
        .map(PlanRow::into_model)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { rows, total })
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
