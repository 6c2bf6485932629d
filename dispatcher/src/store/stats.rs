//! Counts for operators: how many rows each table holds.

use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::StoreResult;

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
