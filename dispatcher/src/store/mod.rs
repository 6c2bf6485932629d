//! The dispatcher's storage in PostgreSQL: one documented function per query, each taking the
//! connection it runs on so that callers compose them in one transaction.
//!
//! Row structs and their conversions to `models` types live in [`rows`], so `models` never sees a
//! diesel trait. Every function returns [`StoreError`], whose variants say whether the database
//! refused the data (duplicate key, dangling reference, failed check) or could not be reached.

use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::ManagerConfig;
use diesel_async::pooled_connection::RecyclingMethod;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub mod builds;
pub mod catalog;
pub mod execution;
pub mod leadership;
pub mod plans;
pub mod rows;
// diesel generates a module per table and a type per column; their documentation is the SQL in
// `migrations/`.
#[allow(missing_docs)]
pub mod schema;
pub mod stats;
pub mod submissions;
pub mod tasks;
pub mod users;
pub mod workers;

/// A pool of PostgreSQL connections.
pub type Pool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

/// A connection taken from the [`Pool`].
pub type PooledConnection = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;

/// The SQL migrations under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// PostgreSQL refuses statements with more bind parameters than this.
pub const MAX_BIND_PARAMETERS: usize = 65_535;

/// How many rows of `columns` columns one multi-row INSERT may carry without passing
/// [`MAX_BIND_PARAMETERS`].
pub const fn rows_per_insert(columns: usize) -> usize {
    MAX_BIND_PARAMETERS / columns
}

/// `query`, kept in the connection's prepared-statement cache under its SQL text.
///
/// diesel prepares every `UPDATE`, multi-row `INSERT` and `sql_query` anew on each execution
/// (their text may vary with the values), which costs a round trip to PostgreSQL and a fresh
/// parse and plan per statement. Statements whose text is fixed, or takes a few forms only, are
/// worth keeping: the event applier runs the same few each batch. Never wrap a statement whose
/// text grows with its input (a `VALUES` list, an `IN` list): each form would stay prepared.
#[derive(Clone, Copy, Debug)]
pub struct Cached<Q>(pub Q);

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for Cached<Q>
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &diesel::pg::Pg) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

// No static query id: the cache knows the statement by its text and bind types.
impl<Q> diesel::query_builder::QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// Rows one [`insert_unnested!`] statement carries: its arrays stay a few megabytes.
pub const ROWS_PER_UNNEST: usize = 10_000;

/// Statements of one [`insert_unnested!`] sent before the first of them is answered.
pub const PIPELINED_STATEMENTS: usize = 2;

/// Inserts `rows` (a `Vec` of row structs, moved) into `table` with one statement per
/// [`ROWS_PER_UNNEST`] rows, `INSERT … SELECT … FROM unnest($1, $2, …)`: one array parameter
/// per column instead of a parameter per value. The statement's text does not change with the
/// row count, and PostgreSQL parses and plans it in microseconds where a multi-row `VALUES` of
/// thousands of rows costs milliseconds. Each `column: SqlType` names a field of the row struct
/// and the column's diesel SQL type (`Nullable<…>` for an optional field).
///
/// Optionally, `json [column, …]` names `serde_json::Value` fields whose values repeat from row
/// to row (a plan's tasks share their outputs' permissions, requirements, …): each is sent as
/// one JSON array of its distinct values and a row's position in it ([`JsonColumn`]), so that
/// PostgreSQL parses each distinct value once per statement instead of once per row. An
/// optional last literal ends the statement (`"ON CONFLICT DO NOTHING"`).
macro_rules! insert_unnested {
    ($conn:expr, $table:literal, $rows:expr, [$($column:ident : $sql_type:ty),+ $(,)?]) => {
        insert_unnested!($conn, $table, $rows, [$($column: $sql_type),+], json [], "")
    };
    ($conn:expr, $table:literal, $rows:expr, [$($column:ident : $sql_type:ty),+ $(,)?],
     $suffix:literal) => {
        insert_unnested!($conn, $table, $rows, [$($column: $sql_type),+], json [], $suffix)
    };
    ($conn:expr, $table:literal, $rows:expr, [$($column:ident : $sql_type:ty),+ $(,)?],
     json [$($json:ident),* $(,)?]) => {
        insert_unnested!($conn, $table, $rows, [$($column: $sql_type),+], json [$($json),*], "")
    };
    ($conn:expr, $table:literal, $rows:expr, [$($column:ident : $sql_type:ty),+ $(,)?],
     json [$($json:ident),* $(,)?], $suffix:literal) => {{
        use ::diesel::sql_types::Array;
        use ::diesel_async::RunQueryDsl as _;
        // The text depends only on this call site: built once.
        static SQL: ::std::sync::OnceLock<String> = ::std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            $crate::store::unnest_insert_sql(
                $table,
                &[$(stringify!($column)),+],
                &[$(stringify!($json)),*],
                $suffix,
            )
        });
        let rows: Vec<_> = $rows;
        let mut rows = rows.into_iter();
        let mut chunks = Vec::with_capacity(rows.len().div_ceil($crate::store::ROWS_PER_UNNEST));
        while rows.len() > 0 {
            chunks.push(rows.by_ref().take($crate::store::ROWS_PER_UNNEST).collect::<Vec<_>>());
        }
        // Pipelined (diesel-async sends a statement while the one before runs): the next chunk's
        // arrays are encoded while PostgreSQL inserts the previous one. A table's chunks do not
        // depend on each other, and the call ends before its caller's next statement is sent.
        let shared: &::diesel_async::AsyncPgConnection = &*$conn;
        let sql = sql.as_str();
        let statements = ::futures::StreamExt::map(::futures::stream::iter(chunks), |chunk| {
            $(let mut $column = Vec::with_capacity(chunk.len());)+
            $(let mut $json = $crate::store::JsonColumn::with_capacity(chunk.len());)*
            for row in chunk {
                $($column.push(row.$column);)+
                $($json.push(row.$json);)*
            }
            $(let $json = $json.finish();)*
            let mut conn = shared;
            $crate::store::Cached(::diesel::sql_query(sql)
                $(.bind::<Array<$sql_type>, _>($column))+
                $(.bind::<Array<::diesel::sql_types::Integer>, _>($json.0))*
                $(.bind::<::diesel::sql_types::Jsonb, _>($json.1))*)
                .execute(&mut conn)
        });
        ::futures::TryStreamExt::try_fold(
            ::futures::StreamExt::buffered(statements, $crate::store::PIPELINED_STATEMENTS),
            0_usize,
            |inserted, rows| async move { Ok(inserted + rows) },
        )
        .await
        .map_err($crate::store::StoreError::from)
    }};
}
pub(crate) use insert_unnested;

/// The statement of [`insert_unnested!`]: `columns` unnested as they are, then `json` columns
/// unnested as positions (`$n`) into one JSON array parameter each (after all the unnested
/// ones), then `suffix`.
pub fn unnest_insert_sql(table: &str, columns: &[&str], json: &[&str], suffix: &str) -> String {
    let unnested = columns.len() + json.len();
    let parameters = (1..=unnested)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let names = columns.iter().chain(json).copied().collect::<Vec<_>>();
    let selected = columns
        .iter()
        .map(|column| format!("u.{column}"))
        .chain(
            json.iter()
                .enumerate()
                .map(|(n, column)| format!("${} -> u.{column}", unnested + n + 1)),
        )
        .collect::<Vec<_>>()
        .join(", ");
    let names = names.join(", ");
    format!(
        "INSERT INTO {table} ({names}) SELECT {selected} FROM unnest({parameters}) AS u({names}) \
         {suffix}"
    )
    .trim_end()
    .to_owned()
}

/// A JSON column of an [`insert_unnested!`] statement: each row's position in the array of the
/// column's distinct values.
#[derive(Debug, Default)]
pub struct JsonColumn {
    positions: Vec<i32>,
    values: Vec<serde_json::Value>,
    /// Hash of a value → the positions of the distinct values with that hash.
    by_hash: std::collections::HashMap<u64, Vec<i32>>,
    hasher: std::hash::RandomState,
}

impl JsonColumn {
    /// An empty column for `rows` rows.
    pub fn with_capacity(rows: usize) -> JsonColumn {
        JsonColumn {
            positions: Vec::with_capacity(rows),
            ..JsonColumn::default()
        }
    }

    /// Adds the next row's value.
    pub fn push(&mut self, value: serde_json::Value) {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(&value);
        let candidates = self.by_hash.entry(hash).or_default();
        let values = &mut self.values;
        let position = match candidates
            .iter()
            .find(|&&position| values[position as usize] == value)
        {
            Some(&position) => position,
            None => {
                // At most ROWS_PER_UNNEST values, far below i32::MAX.
                let position = values.len() as i32;
                values.push(value);
                candidates.push(position);
                position
            }
        };
        self.positions.push(position);
    }

    /// Each row's position, and the JSON array of the distinct values.
    pub fn finish(self) -> (Vec<i32>, serde_json::Value) {
        (self.positions, serde_json::Value::Array(self.values))
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with the same key already exists.
    #[error("duplicate key: {message}")]
    Duplicate {
        /// The violated constraint.
        constraint: Option<String>,
        /// PostgreSQL's message.
        message: String,
    },
    /// A reference names a row that does not exist (or a referenced row is still in use).
    #[error("dangling reference: {message}")]
    DanglingReference {
        /// The violated constraint.
        constraint: Option<String>,
        /// PostgreSQL's message.
        message: String,
    },
    /// A value broke a CHECK constraint (unknown status, name too long, negative count, …).
    #[error("invalid value: {message}")]
    CheckFailed {
        /// The violated constraint.
        constraint: Option<String>,
        /// PostgreSQL's message.
        message: String,
    },
    /// A required value is missing.
    #[error("missing value: {message}")]
    MissingValue {
        /// PostgreSQL's message.
        message: String,
    },
    /// A stored row could not be read back as a `models` value.
    #[error("corrupt {table} row {key}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
        /// What did not decode.
        reason: String,
    },
    /// A value could not be written (a number out of the column's range, unencodable JSON).
    #[error("cannot store {what}: {reason}")]
    Encode {
        /// What was being written.
        what: &'static str,
        /// Why it cannot be.
        reason: String,
    },
    /// What a transaction read before it began changed before it could commit; the caller
    /// retries, reading it again.
    #[error("changed meanwhile: {0}")]
    Conflict(String),
    /// Another dispatcher took the lead of the event applier since this one did; this one must
    /// forget what it holds in memory.
    #[error("another dispatcher leads: {0}")]
    NotLeading(String),
    /// Any other database error (lost connection, serialization failure, …).
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    /// No connection could be taken from the pool.
    #[error("no database connection: {0}")]
    Pool(String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            Error::DatabaseError(kind, info) => {
                let constraint = info.constraint_name().map(str::to_owned);
                let message = info.message().to_owned();
                match kind {
                    DatabaseErrorKind::UniqueViolation => StoreError::Duplicate {
                        constraint,
                        message,
                    },
                    DatabaseErrorKind::ForeignKeyViolation => StoreError::DanglingReference {
                        constraint,
                        message,
                    },
                    DatabaseErrorKind::CheckViolation => StoreError::CheckFailed {
                        constraint,
                        message,
                    },
                    DatabaseErrorKind::NotNullViolation => StoreError::MissingValue { message },
                    other => StoreError::Database(Error::DatabaseError(other, info)),
                }
            }
            other => StoreError::Database(other),
        }
    }
}

/// A result of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// One page of a listing: the rows asked for (at most the limit, after the offset) and how many
/// rows match in all, counted by a second statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The rows of the page, in the listing's order.
    pub rows: Vec<T>,
    /// How many rows match the listing's filters, on every page.
    pub total: i64,
}

/// The largest pool a dispatcher opens by default: enough for the event applier, the outbox
/// relay, claims and the API on 2 cores, without crowding PostgreSQL's default 100 connections.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Opens a pool of at most `max_size` connections to `database_url`. Connections are made
/// lazily, so this does not fail when PostgreSQL is down; the first query does.
pub fn connect(database_url: &str, max_size: usize) -> StoreResult<Pool> {
    let mut config = ManagerConfig::default();
    // `Verified` would run a test query on every checkout: one round trip per query.
    config.recycling_method = RecyclingMethod::Fast;
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|error| StoreError::Pool(error.to_string()))
}

/// Takes a connection from `pool`.
pub async fn connection(pool: &Pool) -> StoreResult<PooledConnection> {
    pool.get()
        .await
        .map_err(|error| StoreError::Pool(error.to_string()))
}

/// Applies the pending migrations to the database at `database_url` and returns the versions it
/// applied, oldest first. Runs on a blocking thread, so it works on any tokio runtime.
pub async fn run_migrations(database_url: &str) -> StoreResult<Vec<String>> {
    with_migration_connection(database_url, |connection| {
        connection
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
    })
    .await
}

/// Reverts every applied migration of the database at `database_url`, newest first, and returns
/// the versions it reverted. For tests and for operators rebuilding a database.
pub async fn revert_all_migrations(database_url: &str) -> StoreResult<Vec<String>> {
    with_migration_connection(database_url, |connection| {
        connection
            .revert_all_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
    })
    .await
}

/// The versions of the migrations applied to the database at `database_url`.
pub async fn applied_migrations(database_url: &str) -> StoreResult<Vec<String>> {
    with_migration_connection(database_url, |connection| {
        connection
            .applied_migrations()
            .map(|versions| versions.iter().map(ToString::to_string).collect())
    })
    .await
}

type MigrationConnection =
    diesel_async::async_connection_wrapper::AsyncConnectionWrapper<AsyncPgConnection>;

async fn with_migration_connection<T: Send + 'static>(
    database_url: &str,
    run: impl FnOnce(&mut MigrationConnection) -> diesel::migration::Result<T> + Send + 'static,
) -> StoreResult<T> {
    use diesel::Connection;
    let database_url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut connection = MigrationConnection::establish(&database_url)
            .map_err(|error| StoreError::Migration(format!("connecting: {error}")))?;
        run(&mut connection).map_err(|error| StoreError::Migration(error.to_string()))
    })
    .await
    .map_err(|error| StoreError::Migration(format!("migration thread failed: {error}")))?
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{JsonColumn, unnest_insert_sql};

    #[test]
    fn an_unnest_insert_puts_json_columns_last_as_positions_into_their_arrays() {
        assert_eq!(
            unnest_insert_sql("t", &["a", "b"], &[], ""),
            "INSERT INTO t (a, b) SELECT u.a, u.b FROM unnest($1, $2) AS u(a, b)"
        );
        assert_eq!(
            unnest_insert_sql("t", &["a"], &["j", "k"], "ON CONFLICT DO NOTHING"),
            "INSERT INTO t (a, j, k) SELECT u.a, $4 -> u.j, $5 -> u.k \
             FROM unnest($1, $2, $3) AS u(a, j, k) ON CONFLICT DO NOTHING"
        );
    }

    #[test]
    fn a_json_column_sends_each_distinct_value_once() {
        let mut column = JsonColumn::with_capacity(5);
        for value in [
            json!({"a": 1}),
            json!([]),
            json!({"a": 1}),
            json!(null),
            json!([]),
        ] {
            column.push(value);
        }
        let (positions, values) = column.finish();
        assert_eq!(positions, [0, 1, 0, 2, 1]);
        assert_eq!(values, json!([{"a": 1}, [], null]));
    }
}
