//! Counts for operators: how many rows each table holds, plans and tasks by status, and a
//! trivial query for health checks.

use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use models::{PlanStatus, TaskStatus};

use super::schema::{compute_plans, tasks};
use super::{StoreError, StoreResult};

/// The tables [`row_counts`] reports on, in the order it reports them.
pub const COUNTED_TABLES: &[&str] = &[
    "organizations",
    "users",
    "credentials",
    "projects",
    "functions",
    "datasets",
    "data_samples",
    "compute_plans",
    "tasks",
    "task_state_changes",
    "outbox",
    "models",
    "performances",
    "log_lines",
    "measurements",
    "workers",
    "devices",
    "schedules",
    "submissions",
];

#[derive(QueryableByName)]
struct TableCount {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// How many rows each table of [`COUNTED_TABLES`] holds, in one round trip.
pub async fn row_counts(conn: &mut AsyncPgConnection) -> StoreResult<Vec<(String, i64)>> {
    // The names come from the constant above, never from input, so formatting them is safe.
    let query = COUNTED_TABLES
        .iter()
        .map(|table| format!("SELECT '{table}' AS table_name, count(*) AS count FROM {table}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let rows: Vec<TableCount> = sql_query(query).load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.table_name, row.count))
        .collect())
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Integer)]
    one: i32,
}

/// Runs `SELECT 1`: whether PostgreSQL answers.
pub async fn ping(conn: &mut AsyncPgConnection) -> StoreResult<()> {
    let answer: One = sql_query("SELECT 1 AS one").get_result(conn).await?;
    debug_assert_eq!(answer.one, 1);
    Ok(())
}

/// How many plans are in each status; statuses without a plan are left out.
pub async fn count_plans_by_status(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Vec<(PlanStatus, i64)>> {
    let rows: Vec<(String, i64)> = compute_plans::table
        .group_by(compute_plans::status)
        .select((compute_plans::status, count_star()))
        .order(compute_plans::status)
        .load(conn)
        .await?;
    parse_statuses(rows, "compute_plans")
}

/// How many tasks are in each status; statuses without a task are left out.
pub async fn count_tasks_by_status(
    conn: &mut AsyncPgConnection,
) -> StoreResult<Vec<(TaskStatus, i64)>> {
    let rows: Vec<(String, i64)> = tasks::table
        .group_by(tasks::status)
        .select((tasks::status, count_star()))
        .order(tasks::status)
        .load(conn)
        .await?;
    parse_statuses(rows, "tasks")
}

/// Reads the status words of counted `rows` of `table`.
fn parse_statuses<S>(rows: Vec<(String, i64)>, table: &'static str) -> StoreResult<Vec<(S, i64)>>
where
    S: std::str::FromStr<Err = models::ParseWordError>,
{
    rows.into_iter()
        .map(|(status, count)| {
            let status =
                status
                    .parse()
                    .map_err(|error: models::ParseWordError| StoreError::Corrupt {
                        table,
                        key: "(status)".to_owned(),
                        reason: error.to_string(),
                    })?;
            Ok((status, count))
        })
        .collect()
}

#[derive(QueryableByName)]
struct Estimate {
    #[diesel(sql_type = diesel::sql_types::Double)]
    rows: f64,
}

/// How many rows of `tasks` PostgreSQL's statistics last counted (an estimate; -1 if the table
/// was never analyzed).
pub async fn counted_tasks(conn: &mut AsyncPgConnection) -> StoreResult<f64> {
    let estimate: Estimate =
        sql_query("SELECT reltuples::float8 AS rows FROM pg_class WHERE oid = 'tasks'::regclass")
            .get_result(conn)
            .await?;
    Ok(estimate.rows)
}

/// The fewest tasks stored at once that [`refresh_task_statistics`] analyzes for.
pub const ANALYZED_TASKS: usize = 1000;

/// Analyzes `tasks` and `task_edges` after `added` tasks were stored at once, if they are at
/// least [`ANALYZED_TASKS`] and a tenth of what PostgreSQL's statistics last counted (or the
/// tables were never analyzed); returns whether it did.
///
/// A prepared statement keeps the plan it chose while the table was small (a scan of the whole
/// table for `key = ANY($1)`) until the table is analyzed, and autovacuum analyzes only after
/// its next nap (a minute). Without this, a dispatcher started on an empty database and given a
/// 20,000-task plan scanned every task for each batch's lookups: 15 ms a statement. Planning
/// every statement afresh instead (`plan_cache_mode = force_custom_plan`) cost a quarter of the
/// throughput.
pub async fn refresh_task_statistics(
    conn: &mut AsyncPgConnection,
    added: usize,
) -> StoreResult<bool> {
    if added < ANALYZED_TASKS {
        return Ok(false);
    }
    let counted = counted_tasks(conn).await?;
    if counted >= 0.0 && (added as f64) < counted / 10.0 {
        return Ok(false);
    }
    sql_query("ANALYZE tasks, task_edges").execute(conn).await?;
    Ok(true)
}
