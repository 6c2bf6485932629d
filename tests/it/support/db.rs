//! `TestDb`: a fresh PostgreSQL database per test, cloned from a migrated template.
//!
//! The template is named after a hash of `migrations/`, so a schema change builds a new one; it
//! is built once, under an advisory lock, because nextest runs tests in parallel processes.
//! Cloning costs tens of milliseconds, far less than running the migrations each time.

use std::path::Path;

use diesel::sql_types::{BigInt, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The PostgreSQL server tests use, as a URL to its maintenance database. The role needs
/// CREATEDB. Override with `BATON_TEST_DATABASE_URL`.
pub(crate) fn admin_url() -> String {
    std::env::var("BATON_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://baton:baton@127.0.0.1:5432/postgres".to_owned())
}

/// `admin_url()` with its database replaced by `database`.
pub(crate) fn url_for(database: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base.to_owned(), format!("?{query}")),
        None => (admin.clone(), String::new()),
    };
    let root = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(root, _)| root);
    format!("{root}/{database}{query}")
}

/// A stable hash of every file under `migrations/`, naming the template.
fn migrations_hash() -> u64 {
    fn visit(dir: &Path, files: &mut Vec<(String, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("migrations/ is readable")
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                visit(&path, files);
            } else {
                let content = std::fs::read(&path).expect("migration file is readable");
                files.push((path.display().to_string(), content));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files = Vec::new();
    visit(&root, &mut files);
    // FNV-1a over the contents only (not the absolute paths, which differ per checkout).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, content) in files {
        for byte in content {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

async fn database_exists(conn: &mut AsyncPgConnection, name: &str) -> bool {
    let found: Count = sql_query("SELECT count(*) AS count FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(name)
        .get_result(conn)
        .await
        .expect("querying pg_database");
    found.count > 0
}

/// Makes sure the migrated template exists and returns its name.
async fn ensure_template(admin: &mut AsyncPgConnection) -> String {
    let hash = migrations_hash();
    let template = format!("baton_template_{hash:016x}");
    // Advisory lock keys are bigints; the hash's bits make a fine one.
    let lock_key = hash as i64;
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(lock_key)
        .execute(admin)
        .await
        .expect("taking the template lock");
    if !database_exists(admin, &template).await {
        let building = format!("{template}_building");
        sql_query(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .execute(admin)
            .await
            .expect("dropping a half-built template");
        sql_query(format!("CREATE DATABASE {building}"))
            .execute(admin)
            .await
            .expect("creating the template");
        dispatcher::store::run_migrations(&url_for(&building))
            .await
            .expect("migrating the template");
        // Renaming last means a template that exists is always complete.
        sql_query(format!("ALTER DATABASE {building} RENAME TO {template}"))
            .execute(admin)
            .await
            .expect("publishing the template");
    }
    sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(lock_key)
        .execute(admin)
        .await
        .expect("releasing the template lock");
    template
}

/// A database of its own for one test, dropped when the value is dropped.
pub(crate) struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// A new database with every migration applied.
    pub(crate) async fn new() -> TestDb {
        let mut admin = AsyncPgConnection::establish(&admin_url())
            .await
            .expect("connecting to PostgreSQL: is it running? (.ci/services starts it)");
        let template = ensure_template(&mut admin).await;
        let name = format!("baton_test_{}", uuid::Uuid::new_v4().simple());
        sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&mut admin)
            .await
            .expect("cloning the template");
        TestDb {
            url: url_for(&name),
            name,
        }
    }

    /// A new database without any migration applied.
    pub(crate) async fn empty() -> TestDb {
        let mut admin = AsyncPgConnection::establish(&admin_url())
            .await
            .expect("connecting to PostgreSQL: is it running? (.ci/services starts it)");
        let name = format!("baton_test_{}", uuid::Uuid::new_v4().simple());
        sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("creating an empty database");
        TestDb {
            url: url_for(&name),
            name,
        }
    }

    /// Its connection URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to it.
    pub(crate) async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("connecting to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived runtime on its own thread does the IO.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async move {
                let mut admin = AsyncPgConnection::establish(&admin_url()).await.ok()?;
                sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}
