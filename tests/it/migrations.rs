//! The embedded migrations apply to an empty database, revert cleanly and apply again.

use diesel::sql_types::{Array, BigInt, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;

use dispatcher::store;

use crate::support::db::TestDb;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn table_count(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    let found: Count = sql_query(
        "SELECT count(*) AS count FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    found.count
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_run_up_down_and_up_again() {
    let db = TestDb::empty().await;
    assert_eq!(table_count(&db).await, 0);

    let applied = store::run_migrations(db.url()).await.unwrap();
    assert_eq!(
        applied.len(),
        store::applied_migrations(db.url()).await.unwrap().len()
    );
    assert!(!applied.is_empty());
    assert_eq!(table_count(&db).await, 22);
    // Nothing left to apply.
    assert!(store::run_migrations(db.url()).await.unwrap().is_empty());

    let reverted = store::revert_all_migrations(db.url()).await.unwrap();
    assert_eq!(reverted.len(), applied.len());
    assert_eq!(table_count(&db).await, 0);

    let again = store::run_migrations(db.url()).await.unwrap();
    assert_eq!(again, applied);
    assert_eq!(table_count(&db).await, 22);
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_an_unreachable_database_says_so() {
    let error = store::run_migrations("postgres://nobody@127.0.0.1:1/none")
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("migration failed: connecting:"),
        "{error}"
    );
}

#[derive(QueryableByName)]
struct Settings {
    #[diesel(sql_type = Array<Text>)]
    settings: Vec<String>,
}

/// The reference checks' task lookup keeps one plan per session: left to choose, PostgreSQL
/// planned it afresh at every call for small arrays (migration 2026-11-27-000000), which cost
/// more than the lookup itself.
#[tokio::test(flavor = "multi_thread")]
async fn the_reference_checks_task_lookup_is_planned_once_and_by_its_index() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let found: Settings =
        sql_query("SELECT proconfig AS settings FROM pg_proc WHERE proname = 'baton_missing_task'")
            .get_result(&mut conn)
            .await
            .unwrap();
    let mut settings = found.settings;
    settings.sort();
    assert_eq!(
        settings,
        ["enable_seqscan=off", "plan_cache_mode=force_generic_plan"]
    );
}
