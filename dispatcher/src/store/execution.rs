//! Queries on what running tasks produce: models, performances, log lines and measurements.
//! Logs and measurements arrive in batches and are inserted in chunks.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use ::models::{LogLine, Measurement, Model, ModelKey, Performance, PlanKey, TaskKey};

use std::collections::HashMap;

use super::rows::{LogLineRow, MeasurementRow, ModelRow, NewMeasurementRow, PerformanceRecord};
use super::schema::{log_lines, measurements, models, performances, tasks};
use super::{Page, StoreResult, insert_unnested};

/// Registers `model`.
pub async fn insert_model(conn: &mut AsyncPgConnection, model: &Model) -> StoreResult<()> {
    insert_models(conn, std::slice::from_ref(model)).await
}

/// Registers `models`, one array per column (`insert_unnested!`).
pub async fn insert_models(conn: &AsyncPgConnection, models: &[Model]) -> StoreResult<()> {
    let rows = models
        .iter()
        .map(ModelRow::from_model)
        .collect::<StoreResult<Vec<_>>>()?;
    use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};
    insert_unnested!(conn, "models", rows, [
        key: SqlUuid,
        compute_task_key: SqlUuid,
        output_identifier: Text,
        checksum: Nullable<Text>,
        storage_address: Nullable<Text>,
        owner: Text,
        creation_date: Timestamptz,
    ], json [permissions])?;
    Ok(())
}

/// The model `key`.
pub async fn find_model(conn: &mut AsyncPgConnection, key: ModelKey) -> StoreResult<Option<Model>> {
    models::table
        .find(key.0)
        .select(ModelRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(ModelRow::into_model)
        .transpose()
}

/// The models among `keys` that exist.
pub async fn find_models(
    mut conn: &AsyncPgConnection,
    keys: &[ModelKey],
) -> StoreResult<Vec<Model>> {
    let keys: Vec<uuid::Uuid> = keys.iter().map(|k| k.0).collect();
    models::table
        .filter(models::key.eq_any(keys))
        .select(ModelRow::as_select())
        .load(&mut conn)
        .await?
        .into_iter()
        .map(ModelRow::into_model)
        .collect()
}

/// The models `task` produced, in registration order.
pub async fn list_task_models(
    conn: &mut AsyncPgConnection,
    task: TaskKey,
) -> StoreResult<Vec<Model>> {
    models::table
        .filter(models::compute_task_key.eq(task.0))
        .order((models::creation_date, models::key))
        .select(ModelRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(ModelRow::into_model)
        .collect()
}

/// The models produced by each of `tasks`, by task, each task's in the order of
/// [`list_task_models`]; a task without models is absent.
pub async fn list_models_of_tasks(
    conn: &mut AsyncPgConnection,
    tasks: &[TaskKey],
) -> StoreResult<HashMap<TaskKey, Vec<Model>>> {
    let keys: Vec<uuid::Uuid> = tasks.iter().map(|task| task.0).collect();
    let mut by_task: HashMap<TaskKey, Vec<Model>> = HashMap::new();
    for row in models::table
        .filter(models::compute_task_key.eq_any(keys))
        .order((models::creation_date, models::key))
        .select(ModelRow::as_select())
        .load(conn)
        .await?
    {
        let model = row.into_model()?;
        by_task
            .entry(model.compute_task_key)
            .or_default()
            .push(model);
    }
    Ok(by_task)
}

/// Which models a listing shows: those matching every filter given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelFilter {
    /// Only models produced by tasks of this plan.
    pub compute_plan_key: Option<PlanKey>,
    /// Only models produced by this task.
    pub compute_task_key: Option<TaskKey>,
}

fn filtered_models(
    filter: &ModelFilter,
) -> diesel::helper_types::IntoBoxed<
    'static,
    diesel::helper_types::InnerJoin<models::table, tasks::table>,
    Pg,
> {
    let mut query = models::table.inner_join(tasks::table).into_boxed();
    if let Some(plan) = filter.compute_plan_key {
        query = query.filter(tasks::compute_plan_key.eq(plan.0));
    }
    if let Some(task) = filter.compute_task_key {
        query = query.filter(models::compute_task_key.eq(task.0));
    }
    query
}

/// The models matching `filter`, oldest first: `limit` rows after skipping `offset`, with how
/// many match in all.
pub async fn list_models_page(
    conn: &mut AsyncPgConnection,
    filter: &ModelFilter,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Model>> {
    let total = filtered_models(filter).count().get_result(conn).await?;
    let rows = filtered_models(filter)
        .select(ModelRow::as_select())
        .order((models::creation_date, models::key))
        .limit(limit)
        .offset(offset)
        .load(conn)
        .await?
        .into_iter()
        .map(ModelRow::into_model)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { rows, total })
}

/// Registers `performance`; a second value for the same task output is a duplicate.
pub async fn insert_performance(
    conn: &mut AsyncPgConnection,
    performance: &Performance,
) -> StoreResult<()> {
    insert_performances(conn, std::slice::from_ref(performance)).await
}

/// Records `performances`, in statements that fit PostgreSQL's bind-parameter limit.
pub async fn insert_performances(
    conn: &AsyncPgConnection,
    performances: &[Performance],
) -> StoreResult<()> {
    let rows: Vec<PerformanceRecord> = performances
        .iter()
        .map(PerformanceRecord::from_model)
        .collect();
    use diesel::sql_types::{Double, Text, Timestamptz, Uuid as SqlUuid};
    insert_unnested!(conn, "performances", rows, [
        compute_task_key: SqlUuid,
        output_identifier: Text,
        value: Double,
        creation_date: Timestamptz,
    ])?;
    Ok(())
}

/// The performances `task` reported, by output identifier.
pub async fn list_task_performances(
    conn: &mut AsyncPgConnection,
    task: TaskKey,
) -> StoreResult<Vec<Performance>> {
    Ok(performances::table
        .filter(performances::compute_task_key.eq(task.0))
        .order(performances::output_identifier)
        .select(PerformanceRecord::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(PerformanceRecord::into_model)
        .collect())
}

/// Appends log lines. A line already stored (same task, attempt and sequence number, as when a
/// batch is redelivered) is kept as it is, so replays store nothing twice.
pub async fn insert_log_lines(conn: &AsyncPgConnection, lines: &[LogLine]) -> StoreResult<()> {
    let rows = lines
        .iter()
        .map(LogLineRow::from_model)
        .collect::<StoreResult<Vec<_>>>()?;
    use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
    insert_unnested!(conn, "log_lines", rows, [
        task_key: SqlUuid,
        attempt: Integer,
        seq: BigInt,
        step: Nullable<Integer>,
        stream: Text,
        timestamp: Timestamptz,
        text: Text,
        truncated: Bool,
    ], "ON CONFLICT DO NOTHING")?;
    Ok(())
}

/// The log of `task`, every attempt, in writing order: at most `limit` lines after skipping
/// `offset`.
pub async fn list_log_lines(
    conn: &mut AsyncPgConnection,
    task: TaskKey,
    limit: i64,
    offset: i64,
) -> StoreResult<Vec<LogLine>> {
    log_lines::table
        .filter(log_lines::task_key.eq(task.0))
        .order((log_lines::attempt, log_lines::seq))
        .limit(limit)
        .offset(offset)
        .select(LogLineRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(LogLineRow::into_model)
        .collect()
}

/// How many log lines `task` has, every attempt.
pub async fn count_log_lines(conn: &mut AsyncPgConnection, task: TaskKey) -> StoreResult<i64> {
    Ok(log_lines::table
        .filter(log_lines::task_key.eq(task.0))
        .count()
        .get_result(conn)
        .await?)
}

/// Appends measurement samples.
pub async fn insert_measurements(
    conn: &AsyncPgConnection,
    samples: &[Measurement],
) -> StoreResult<()> {
    let rows = samples
        .iter()
        .map(NewMeasurementRow::from_model)
        .collect::<StoreResult<Vec<_>>>()?;
    use diesel::sql_types::{Double, Integer, Text, Timestamptz, Uuid as SqlUuid};
    insert_unnested!(conn, "measurements", rows, [
        task_key: SqlUuid,
        attempt: Integer,
        channel: Text,
        t: Double,
        value: Double,
        timestamp: Timestamptz,
    ])?;
    Ok(())
}

/// The samples of `task`, optionally of one `channel`, in arrival order.
pub async fn list_measurements(
    conn: &mut AsyncPgConnection,
    task: TaskKey,
    channel: Option<&str>,
) -> StoreResult<Vec<Measurement>> {
    let mut query = measurements::table
        .filter(measurements::task_key.eq(task.0))
        .order(measurements::id)
        .select(MeasurementRow::as_select())
        .into_boxed();
    if let Some(channel) = channel {
        query = query.filter(measurements::channel.eq(channel.to_owned()));
    }
    query
        .load(conn)
        .await?
        .into_iter()
        .map(MeasurementRow::into_model)
        .collect()
}

fn filtered_measurements(task: TaskKey, channel: Option<&str>) -> measurements::BoxedQuery<'_, Pg> {
    let mut query = measurements::table
        .filter(measurements::task_key.eq(task.0))
        .into_boxed();
    if let Some(channel) = channel {
        query = query.filter(measurements::channel.eq(channel));
    }
    query
}

/// The samples of `task`, optionally of one `channel`, in arrival order: `limit` rows after
/// skipping `offset`, with how many there are in all.
pub async fn list_measurements_page(
    conn: &mut AsyncPgConnection,
    task: TaskKey,
    channel: Option<&str>,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Measurement>> {
    let total = filtered_measurements(task, channel)
        .count()
        .get_result(conn)
        .await?;
    let rows = filtered_measurements(task, channel)
        .order(measurements::id)
        .limit(limit)
        .offset(offset)
        .select(MeasurementRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(MeasurementRow::into_model)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { rows, total })
}

/// The measurement channels of `task`, by name (LuciHub's "number of channels" is its length).
pub async fn list_channels(
    conn: &mut AsyncPgConnection,
    task: TaskKey,
) -> StoreResult<Vec<String>> {
    Ok(measurements::table
        .filter(measurements::task_key.eq(task.0))
        .select(measurements::channel)
        .distinct()
        .order(measurements::channel)
        .load(conn)
        .await?)
}
