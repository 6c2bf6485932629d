//! The HTTP API against a real in-process dispatcher, PostgreSQL and RabbitMQ, over a real
//! listener: every route's success, an unknown key, bad input answered with the structured
//! error, and pagination with its bounds.
//!
//! Writes go through the dispatcher over AMQP (the path producers use); what only workers
//! produce (logs, measurements, models, performances, devices) is stored with the store's
//! functions before it is read back.

use std::collections::BTreeSet;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use broker::topology::EVENTS_EXCHANGE;
use broker::{Broker, RpcClient};
use dispatcher::metrics::DispatcherMetrics;
use dispatcher::service::DispatcherConfig;
use dispatcher::store::{catalog, execution, plans, tasks, workers};
use models::wire::{ClaimReply, ClaimRequest, RegistrationReply};
use models::{File, Model, TaskKey};

use crate::support::broker::TestBroker;
use crate::support::cluster::register;
use crate::support::db::TestDb;
use crate::support::fixtures::{self as fx, key};

/// The organization the dispatcher and the API act as.
const ORGANIZATION: &str = "org-a";

/// A dispatcher and the HTTP API beside it, on a database and a vhost of their own. Requests
/// carry the token of `root`, an administrator of [`ORGANIZATION`], unless sent with
/// [`Api::as_token`] or [`Api::anonymous`].
pub(crate) struct Api {
    pub(crate) db: TestDb,
    pub(crate) broker: TestBroker,
    pub(crate) base: String,
    http: reqwest::Client,
    /// The administrator's token.
    pub(crate) root_token: String,
    artifacts: tempfile::TempDir,
    dispatcher_stop: CancellationToken,
    api_stop: CancellationToken,
    dispatcher: JoinHandle<anyhow::Result<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

/// A response: its status, headers and body (JSON when it parses, else the text).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: Value,
}

/// Makes user `identifier` of `organization` with `roles` and a token, stored directly; answers
/// the token.
pub(crate) async fn user_with_token(
    conn: &mut AsyncPgConnection,
    identifier: &str,
    organization: &str,
    roles: &[models::Role],
) -> String {
    if catalog::find_organization(conn, &organization.into(), None)
        .await
        .unwrap()
        .is_none()
    {
        catalog::insert_organization(conn, &fx::organization(organization))
            .await
            .unwrap();
    }
    let mut user = fx::user(identifier, organization);
    user.roles = roles.to_vec();
    catalog::insert_user(conn, &user).await.unwrap();
    let (credential, token) =
        dispatcher::auth::new_token(&user.identifier, None, None, chrono::Utc::now()).unwrap();
    catalog::insert_credential(conn, &credential).await.unwrap();
    token.expose().to_owned()
}

impl Api {
    /// Starts a dispatcher, waits until it consumes, then serves the API on 127.0.0.1:0;
    /// writes wait at most `rpc_timeout` for the dispatcher.
    async fn start_with(rpc_timeout: Duration) -> Api {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let db = TestDb::new().await;
        let broker = TestBroker::new().await;
        let metrics = DispatcherMetrics::new();
        let mut config = DispatcherConfig::new(
            db.url(),
            broker.config("baton-dispatcher"),
            ORGANIZATION.into(),
        );
        config.outbox_poll = Duration::from_millis(200);
        config.heartbeat_interval = Duration::from_secs(1);
        config.registration_cache = Duration::from_millis(200);
        config.metrics = metrics.clone();
        let dispatcher_stop = CancellationToken::new();
        let dispatcher = tokio::spawn(dispatcher::service::run(config, dispatcher_stop.clone()));
        for attempt in 0.. {
            assert!(
                !dispatcher.is_finished(),
                "the dispatcher stopped while starting"
            );
            if broker.queue_exists("baton.submissions").await {
                break;
            }
            assert!(attempt < 200, "the dispatcher did not start within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let artifacts = tempfile::tempdir().unwrap();
        let mut api_config = api::ApiConfig::new(
            db.url(),
            broker.config("baton-api"),
            ORGANIZATION.into(),
            artifacts.path(),
        );
        api_config.metrics = metrics;
        api_config.rpc_timeout = rpc_timeout;
        let state = api::ApiState::connect(api_config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let api_stop = CancellationToken::new();
        let server = tokio::spawn(api::serve(listener, state, api_stop.clone()));
        let root_token = user_with_token(
            &mut db.connect().await,
            "root",
            ORGANIZATION,
            &[models::Role::Administrator],
        )
        .await;
        Api {
            db,
            broker,
            base,
            http: reqwest::Client::new(),
            root_token,
            artifacts,
            dispatcher_stop,
            api_stop,
            dispatcher,
            server,
        }
    }

    pub(crate) async fn start() -> Api {
        Api::start_with(Duration::from_secs(20)).await
    }

    /// A connection to the test's database.
    pub(crate) async fn conn(&self) -> AsyncPgConnection {
        self.db.connect().await
    }

    /// The artifact store's directory, which model downloads are served from.
    pub(crate) fn artifacts_dir(&self) -> &std::path::Path {
        self.artifacts.path()
    }

    /// Sends `request` with the administrator's token.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        self.send_as(Some(&self.root_token), request).await
    }

    /// Sends `request` with `token` (none: anonymously).
    pub(crate) async fn send_as(
        &self,
        token: Option<&str>,
        request: reqwest::RequestBuilder,
    ) -> Reply {
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.expect("the API answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A request builder for `method` on `path`.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// POSTs `body` with `Idempotency-Key: key`.
    async fn post_once(&self, path: &str, body: &Value, key: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
    }

    /// POSTs `body` as raw bytes with `content_type`.
    async fn post_raw(&self, path: &str, body: &'static str, content_type: &str) -> Reply {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// Stores what the read-only routes show: organizations, users, a project, function 1,
    /// dataset 20 with samples 21 and 22, workers and devices, plan 30 with task 31 (running,
    /// with a lease) and its child 32, models, performances, logs and measurements.
    pub(crate) async fn seed(&self) {
        let mut conn = self.conn().await;
        catalog::insert_organization(&mut conn, &fx::organization("org-b"))
            .await
            .unwrap();
        for user in ["alice", "guest"] {
            catalog::insert_user(&mut conn, &fx::user(user, ORGANIZATION))
                .await
                .unwrap();
        }
        catalog::insert_project(&mut conn, &fx::project("fl"))
            .await
            .unwrap();
        catalog::insert_function(&mut conn, &fx::function(1, ORGANIZATION, "fl"))
            .await
            .unwrap();
        catalog::insert_dataset(&mut conn, &fx::dataset(20, ORGANIZATION, &[]))
            .await
            .unwrap();
        catalog::insert_data_samples(
            &mut conn,
            &[
                fx::data_sample(21, ORGANIZATION, &[20]),
                fx::data_sample(22, ORGANIZATION, &[20]),
            ],
        )
        .await
        .unwrap();
        for (worker, devices) in [
            ("worker-1", &["dev-a", "dev-b"][..]),
            ("worker-2", &["dev-c"]),
        ] {
            workers::upsert_worker(&mut conn, &fx::worker(worker, "alice", ORGANIZATION))
                .await
                .unwrap();
            let devices: Vec<_> = devices.iter().map(|id| fx::device(worker, id)).collect();
            workers::upsert_devices(&mut conn, &devices).await.unwrap();
        }
        plans::insert_plan(&conn, &fx::plan(30, ORGANIZATION, "fl"))
            .await
            .unwrap();
        tasks::insert_tasks(
            &conn,
            &[fx::task(31, 30, 1, None), fx::task(32, 30, 1, Some(31))],
        )
        .await
        .unwrap();
        tasks::insert_state_changes(
            &conn,
            &[
                fx::state_change(31, models::TaskStatus::Todo, 1),
                fx::state_change(31, models::TaskStatus::Doing, 2),
            ],
        )
        .await
        .unwrap();
        for performance in [fx::performance(31, 0.5), fx::performance(32, 0.75)] {
            execution::insert_performance(&mut conn, &performance)
                .await
                .unwrap();
        }
        let lines: Vec<_> = (0..5).map(|seq| fx::log_line(31, seq)).collect();
        execution::insert_log_lines(&conn, &lines).await.unwrap();
        let samples: Vec<_> = (0..3)
            .map(|i| fx::measurement(31, "voltage", i))
            .chain((0..2).map(|i| fx::measurement(31, "current", i)))
            .collect();
        execution::insert_measurements(&conn, &samples)
            .await
            .unwrap();
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.api_stop.cancel();
        self.dispatcher_stop.cancel();
        self.server.abort();
        self.dispatcher.abort();
    }
}

/// Checks that `reply` is the structured error: exactly `error` and `details`, each detail
/// exactly a string `path` and `message`, of `kind` with `status`, one detail at `path`.
#[track_caller]
pub(crate) fn assert_error(reply: &Reply, status: u16, kind: &str, path: &str) {
    assert_eq!(reply.status, status, "{reply:#?}");
    let object = reply
        .body
        .as_object()
        .unwrap_or_else(|| panic!("{reply:#?}"));
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["details", "error"]), "{reply:#?}");
    assert_eq!(reply.body["error"], kind, "{reply:#?}");
    let details = reply.body["details"].as_array().expect("details");
    assert!(!details.is_empty(), "{reply:#?}");
    for detail in details {
        let keys: BTreeSet<&str> = detail
            .as_object()
            .expect("a detail")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["message", "path"]), "{reply:#?}");
        assert!(detail["path"].is_string() && detail["message"].is_string());
    }
    assert!(
        details.iter().any(|detail| detail["path"] == path),
        "no detail at {path:?}: {reply:#?}"
    );
    let content_type = reply.headers.get("content-type").expect("a content type");
    assert_eq!(content_type, "application/json");
}

/// Checks a page's counts and returns its results.
#[track_caller]
fn assert_page(reply: &Reply, count: u64, page: u32, page_size: u32, len: usize) -> Vec<Value> {
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(
        (
            reply.body["count"].as_u64(),
            reply.body["page"].as_u64(),
            reply.body["page_size"].as_u64()
        ),
        (
            Some(count),
            Some(u64::from(page)),
            Some(u64::from(page_size))
        ),
        "{reply:#?}"
    );
    let results = reply.body["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), len, "{reply:#?}");
    results
}

/// `path` with `query` appended.
fn with_query(path: &str, query: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{query}")
}

/// Checks the pagination bounds of the listing at `path` and that unknown parameters are
/// refused.
async fn assert_page_bounds(api: &Api, path: &str) {
    for (query, parameter) in [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=two", "page"),
        ("page_size=0", "page_size"),
        ("page_size=1001", "page_size"),
        ("page_size=", "page_size"),
        ("page=1&page=2", "page"),
        ("pagesize=10", "pagesize"),
    ] {
        let reply = api.get(&with_query(path, query)).await;
        assert_error(&reply, 400, "invalid_request", parameter);
    }
    let reply = api.get(&with_query(path, "page_size=1000")).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["page_size"], 1000);
    // A page past the last one is empty.
    let reply = api
        .get(&with_query(path, "page=1000000&page_size=1000"))
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["results"], json!([]));
}

/// A function whose tasks take models from their parents and produce one.
pub(crate) fn noop_function(n: u128) -> Value {
    json!({
        "key": key(n),
        "name": format!("step {n}"),
        "project": "fl",
        "permissions": {"process": {"public": true, "authorized_ids": []}},
        "inputs": [{"identifier": "models", "kind": "MODEL", "multiple": true, "optional": true}],
        "outputs": [{"identifier": "model", "kind": "MODEL"}],
        "steps": [{"name": "run", "command": ["true"]}],
    })
}

/// Task `n` of function `function` after `parents`.
pub(crate) fn new_task(n: u128, function: u128, parents: &[u128]) -> Value {
    let inputs: Vec<Value> = parents
        .iter()
        .map(|parent| {
            json!({
                "identifier": "models",
                "parent_task_key": key(*parent),
                "parent_task_output_identifier": "model",
            })
        })
        .collect();
    json!({
        "key": key(n),
        "function_key": key(function),
        "name": format!("t{n}"),
        "inputs": inputs,
        "outputs": {"model": {"permissions": {"process": {"public": false, "authorized_ids": [ORGANIZATION]}}}},
        "worker": ORGANIZATION,
    })
}

pub(crate) fn new_plan(n: u128, tag: &str, tasks: Vec<Value>) -> Value {
    json!({"key": key(n), "name": format!("plan {n}"), "tag": tag, "project": "fl", "tasks": tasks})
}

/// Registers project `fl` and function `n` through the API.
pub(crate) async fn register_function(api: &Api, n: u128) {
    let reply = api
        .post(
            "/api/v1/projects",
            &json!({"identifier": "fl", "display_name": "FL"}),
        )
        .await;
    assert!(
        reply.status == 201 || reply.body["error"] == "already_exists",
        "{reply:#?}"
    );
    let reply = api.post("/api/v1/functions", &noop_function(n)).await;
    assert_eq!(reply.status, 201, "{reply:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn organizations_are_registered_listed_and_read() {
    let api = Api::start().await;
    let reply = api
        .post(
            "/api/v1/organizations",
            &json!({"id": "org-c", "address": "https://c.example.org"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    assert_eq!(reply.headers["location"], "/api/v1/organizations/org-c");
    assert_eq!(reply.body["id"], "org-c");
    assert_eq!(reply.body["is_current"], false);
    for id in ["org-d", "org-e"] {
        assert_eq!(
            api.post("/api/v1/organizations", &json!({"id": id}))
                .await
                .status,
            201
        );
    }
    // Registered twice: refused, the first kept.
    let again = api
        .post("/api/v1/organizations", &json!({"id": "org-c"}))
        .await;
    assert_error(&again, 409, "already_exists", "");

    let reply = api.get("/api/v1/organizations/org-a").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["is_current"], true, "the dispatcher's own");
    assert_error(
        &api.get("/api/v1/organizations/nobody").await,
        404,
        "not_found",
        "id",
    );

    // org-a (the dispatcher's), org-c, org-d, org-e, by identifier.
    let page = api.get("/api/v1/organizations?page_size=3").await;
    let results = assert_page(&page, 4, 1, 3, 3);
    let ids: Vec<&Value> = results.iter().map(|o| &o["id"]).collect();
    assert_eq!(ids, [&json!("org-a"), &json!("org-c"), &json!("org-d")]);
    let last = api.get("/api/v1/organizations?page=2&page_size=3").await;
    assert_eq!(assert_page(&last, 4, 2, 3, 1)[0]["id"], "org-e");
    assert_page_bounds(&api, "/api/v1/organizations").await;

    // Bad bodies: each a structured 4xx, none reaches the dispatcher.
    assert_error(
        &api.post("/api/v1/organizations", &json!({})).await,
        400,
        "invalid_request",
        "",
    );
    assert_error(
        &api.post("/api/v1/organizations", &json!({"id": 7})).await,
        400,
        "invalid_request",
        "id",
    );
    assert_error(
        &api.post(
            "/api/v1/organizations",
            &json!({"id": "x", "colour": "red"}),
        )
        .await,
        400,
        "invalid_request",
        "colour",
    );
    assert_error(
        &api.post_raw("/api/v1/organizations", "{\"id\": ", "application/json")
            .await,
        400,
        "invalid_request",
        "id",
    );
    assert_error(
        &api.post_raw(
            "/api/v1/organizations",
            "id=x",
            "application/x-www-form-urlencoded",
        )
        .await,
        415,
        "unsupported_media_type",
        "Content-Type",
    );
    // An invalid identifier is the dispatcher's refusal, with its path.
    let reply = api.post("/api/v1/organizations", &json!({"id": ""})).await;
    assert_eq!(reply.status, 422, "{reply:#?}");
    assert_eq!(reply.body["error"], "invalid_submission");
}

#[tokio::test(flavor = "multi_thread")]
async fn projects_are_registered_listed_and_read() {
    let api = Api::start().await;
    for identifier in ["fl", "qc", "ml"] {
        let reply = api
            .post(
                "/api/v1/projects",
                &json!({"identifier": identifier, "display_name": "Projet ✓", "services": {"git": {"url": "https://x"}}}),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:#?}");
        assert_eq!(
            reply.headers["location"],
            format!("/api/v1/projects/{identifier}")
        );
    }
    let reply = api.get("/api/v1/projects/qc").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["display_name"], "Projet ✓");
    assert_eq!(reply.body["services"]["git"]["url"], "https://x");
    assert_error(
        &api.get("/api/v1/projects/nothing").await,
        404,
        "not_found",
        "identifier",
    );
    let page = api.get("/api/v1/projects?page=2&page_size=2").await;
    assert_eq!(assert_page(&page, 3, 2, 2, 1)[0]["identifier"], "qc");
    assert_page_bounds(&api, "/api/v1/projects").await;
    assert_error(
        &api.post("/api/v1/projects", &json!({"identifier": "x"}))
            .await,
        400,
        "invalid_request",
        "",
    );
    assert_error(
        &api.post(
            "/api/v1/projects",
            &json!({"identifier": "fl", "display_name": "again"}),
        )
        .await,
        409,
        "already_exists",
        "",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_are_registered_listed_filtered_and_read() {
    let api = Api::start().await;
    register_function(&api, 1).await;
    let mut building = noop_function(2);
    building["build_steps"] = json!([{"name": "build", "command": ["make"]}]);
    let reply = api.post("/api/v1/functions", &building).await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    assert_eq!(reply.body["status"], "WAITING", "it waits for its build");
    assert_eq!(
        reply.headers["location"],
        format!("/api/v1/functions/{}", key(2))
    );

    let reply = api.get(&format!("/api/v1/functions/{}", key(1))).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(
        (
            &reply.body["name"],
            &reply.body["status"],
            &reply.body["owner"]
        ),
        (&json!("step 1"), &json!("READY"), &json!(ORGANIZATION))
    );
    assert_error(
        &api.get(&format!("/api/v1/functions/{}", key(404))).await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/functions/not-a-key").await,
        400,
        "invalid_request",
        "key",
    );

    let ready = api.get("/api/v1/functions?status=READY").await;
    assert_eq!(assert_page(&ready, 1, 1, 50, 1)[0]["key"], json!(key(1)));
    let all = api.get("/api/v1/functions?project=fl&page_size=1").await;
    assert_page(&all, 2, 1, 1, 1);
    let none = api.get("/api/v1/functions?owner=org-b").await;
    assert_page(&none, 0, 1, 50, 0);
    assert_error(
        &api.get("/api/v1/functions?status=DONE").await,
        400,
        "invalid_request",
        "status",
    );
    assert_page_bounds(&api, "/api/v1/functions").await;

    // Every problem of an invalid function, each with its path, and nothing stored.
    let mut broken = noop_function(3);
    broken["name"] = json!("");
    broken["outputs"][0]["identifier"] = json!("x".repeat(101));
    let reply = api.post("/api/v1/functions", &broken).await;
    assert_error(&reply, 422, "invalid_submission", "name");
    assert_eq!(
        reply.body["details"].as_array().unwrap().len(),
        2,
        "{reply:#?}"
    );
    assert_error(
        &api.get(&format!("/api/v1/functions/{}", key(3))).await,
        404,
        "not_found",
        "key",
    );
    let mut typo = noop_function(4);
    typo["outputs"][0]["kind"] = json!("MODLE");
    assert_error(
        &api.post("/api/v1/functions", &typo).await,
        400,
        "invalid_request",
        "outputs[0].kind",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn datasets_and_data_samples_are_registered_listed_and_read() {
    let api = Api::start().await;
    let checksum = fx::checksum("opener");
    let dataset = json!({
        "key": key(20),
        "name": "scans",
        "permissions": {"process": {"public": false, "authorized_ids": []}},
        "type": "images",
        "opener": {"checksum": checksum, "storage_address": "openers/scans.py"},
        "description": {"checksum": checksum, "storage_address": "openers/README.md"},
        "logs_permission": {"public": false, "authorized_ids": []},
    });
    let reply = api.post("/api/v1/datasets", &dataset).await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    assert_eq!(reply.body["type"], "images");
    let mut second = dataset.clone();
    second["key"] = json!(key(25));
    assert_eq!(api.post("/api/v1/datasets", &second).await.status, 201);

    let samples: Vec<Value> = (21..24)
        .map(|n| json!({"key": key(n), "path": format!("/data/{n}"), "data_manager_keys": [key(20)]}))
        .collect();
    let reply = api
        .post("/api/v1/data_samples", &json!({"samples": samples}))
        .await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    let keys: Vec<&Value> = reply
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["key"])
        .collect();
    assert_eq!(keys, [&json!(key(21)), &json!(key(22)), &json!(key(23))]);
    assert_eq!(
        reply.headers["location"],
        format!("/api/v1/data_samples/{}", key(21))
    );
    // Samples of an unknown dataset: refused with the path of the bad key.
    let orphans = json!({"samples": [{"key": key(29), "data_manager_keys": [key(404)]}]});
    assert_error(
        &api.post("/api/v1/data_samples", &orphans).await,
        422,
        "invalid_submission",
        "samples[0].data_manager_keys[0]",
    );
    assert_error(
        &api.post("/api/v1/data_samples", &json!({"samples": [{"key": "x"}]}))
            .await,
        400,
        "invalid_request",
        "samples[0].key",
    );
    assert_error(
        &api.post("/api/v1/datasets", &json!({"key": key(26)})).await,
        400,
        "invalid_request",
        "",
    );

    let reply = api.get(&format!("/api/v1/datasets/{}", key(20))).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(
        reply.body["data_sample_keys"],
        json!([key(21), key(22), key(23)])
    );
    assert_error(
        &api.get(&format!("/api/v1/datasets/{}", key(404))).await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/datasets/20").await,
        400,
        "invalid_request",
        "key",
    );
    let page = api.get("/api/v1/datasets?page_size=1").await;
    assert_page(&page, 2, 1, 1, 1);
    assert_page_bounds(&api, "/api/v1/datasets").await;

    // The samples of a dataset, in attachment order.
    let samples_path = format!("/api/v1/datasets/{}/data_samples", key(20));
    let page = api
        .get(&with_query(&samples_path, "page=2&page_size=2"))
        .await;
    let results = assert_page(&page, 3, 2, 2, 1);
    assert_eq!(results[0]["key"], json!(key(23)));
    assert_eq!(results[0]["data_manager_keys"], json!([key(20)]));
    assert_page(
        &api.get(&format!("/api/v1/datasets/{}/data_samples", key(25)))
            .await,
        0,
        1,
        50,
        0,
    );
    assert_page_bounds(&api, &samples_path).await;
    assert_error(
        &api.get(&format!("/api/v1/datasets/{}/data_samples", key(404)))
            .await,
        404,
        "not_found",
        "key",
    );

    let reply = api.get(&format!("/api/v1/data_samples/{}", key(22))).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["path"], "/data/22");
    assert_error(
        &api.get(&format!("/api/v1/data_samples/{}", key(404))).await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/data_samples/nope").await,
        400,
        "invalid_request",
        "key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_are_submitted_listed_read_and_extended() {
    let api = Api::start().await;
    register_function(&api, 1).await;
    let plan = new_plan(
        100,
        "nightly",
        vec![new_task(1, 1, &[]), new_task(2, 1, &[1])],
    );
    let reply = api
        .post_once("/api/v1/compute_plans", &plan, "submit-100")
        .await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    assert_eq!(
        reply.headers["location"],
        format!("/api/v1/compute_plans/{}", key(100))
    );
    assert_eq!(
        (
            &reply.body["key"],
            &reply.body["status"],
            &reply.body["counters"]["task_count"]
        ),
        (&json!(key(100)), &json!("TODO"), &json!(2))
    );
    assert_eq!(reply.body["owner"], ORGANIZATION);
    // The same request again, with its key: the same answer, nothing stored twice.
    let again = api
        .post_once("/api/v1/compute_plans", &plan, "submit-100")
        .await;
    assert_eq!(again.status, 201, "{again:#?}");
    assert_eq!(again.body["counters"]["task_count"], 2);
    // Other content under a stored plan key: refused.
    let other = new_plan(100, "other", vec![new_task(3, 1, &[])]);
    assert_error(
        &api.post("/api/v1/compute_plans", &other).await,
        409,
        "already_exists",
        "key",
    );
    // Every problem of an invalid plan, with its path; nothing stored.
    let invalid = new_plan(101, "", vec![new_task(4, 404, &[]), new_task(5, 1, &[99])]);
    let reply = api.post("/api/v1/compute_plans", &invalid).await;
    assert_error(&reply, 422, "invalid_submission", "tasks[0].function_key");
    assert!(
        reply.body["details"].as_array().unwrap().len() >= 2,
        "{reply:#?}"
    );
    assert_error(
        &api.get(&format!("/api/v1/compute_plans/{}", key(101)))
            .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.post(
            "/api/v1/compute_plans",
            &json!({"key": key(102), "name": "x", "tasks": [{"key": key(6)}]}),
        )
        .await,
        400,
        "invalid_request",
        "tasks[0]",
    );
    for (n, tag) in [(103, "nightly"), (104, "weekly")] {
        let reply = api
            .post(
                "/api/v1/compute_plans",
                &new_plan(n, tag, vec![new_task(n + 100, 1, &[])]),
            )
            .await;
        assert_eq!(reply.status, 201, "{reply:#?}");
    }

    let reply = api
        .get(&format!("/api/v1/compute_plans/{}", key(100)))
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["tag"], "nightly");
    assert_error(
        &api.get(&format!("/api/v1/compute_plans/{}", key(404)))
            .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/compute_plans/100").await,
        400,
        "invalid_request",
        "key",
    );

    let nightly = api
        .get("/api/v1/compute_plans?tag=nightly&status=TODO&project=fl")
        .await;
    assert_page(&nightly, 2, 1, 50, 2);
    let owned = api
        .get(&format!(
            "/api/v1/compute_plans?owner={ORGANIZATION}&page=2&page_size=2"
        ))
        .await;
    assert_page(&owned, 3, 2, 2, 1);
    assert_page(
        &api.get("/api/v1/compute_plans?status=DONE").await,
        0,
        1,
        50,
        0,
    );
    assert_error(
        &api.get("/api/v1/compute_plans?status=RUNNING").await,
        400,
        "invalid_request",
        "status",
    );
    assert_page_bounds(&api, "/api/v1/compute_plans").await;

    // Tasks added to the stored plan, after a stored task.
    let tasks_path = format!("/api/v1/compute_plans/{}/tasks", key(100));
    let reply = api
        .post(&tasks_path, &json!({"tasks": [new_task(7, 1, &[2])]}))
        .await;
    assert_eq!(reply.status, 201, "{reply:#?}");
    assert_eq!(reply.body["counters"]["task_count"], 3);
    assert_error(
        &api.post(
            &format!("/api/v1/compute_plans/{}/tasks", key(404)),
            &json!({"tasks": [new_task(8, 1, &[])]}),
        )
        .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.post(&tasks_path, &json!({"tasks": [new_task(9, 404, &[])]}))
            .await,
        422,
        "invalid_submission",
        "tasks[0].function_key",
    );
    assert_error(
        &api.post(&tasks_path, &json!({"tasks": "none"})).await,
        400,
        "invalid_request",
        "tasks",
    );
    assert_error(
        &api.post("/api/v1/compute_plans/x/tasks", &json!({"tasks": []}))
            .await,
        400,
        "invalid_request",
        "key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_are_canceled_once() {
    let api = Api::start().await;
    register_function(&api, 1).await;
    let plan = new_plan(100, "", vec![new_task(1, 1, &[]), new_task(2, 1, &[1])]);
    assert_eq!(api.post("/api/v1/compute_plans", &plan).await.status, 201);
    let cancel = format!("/api/v1/compute_plans/{}/cancel", key(100));
    assert_error(
        &api.post(&cancel, &json!({"reason": "x".repeat(1001)}))
            .await,
        400,
        "invalid_request",
        "reason",
    );
    assert_error(
        &api.post(&cancel, &json!({"why": "typo"})).await,
        400,
        "invalid_request",
        "why",
    );
    let reply = api.post(&cancel, &json!({"reason": "wrong data"})).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["status"], "CANCELED");
    assert_eq!(reply.body["counters"]["canceled_count"], 2);
    assert!(reply.body["cancelation_date"].is_string());
    let history = api.get(&format!("/api/v1/tasks/{}/history", key(2))).await;
    let last = history.body.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "CANCELED");
    assert!(
        last["reason"].as_str().unwrap().contains("wrong data"),
        "{last}"
    );
    // Canceled already: refused. An empty body is allowed.
    let again = api.post_raw(&cancel, "", "application/json").await;
    assert_error(&again, 409, "refused", "");
    assert_error(
        &api.post(
            &format!("/api/v1/compute_plans/{}/cancel", key(404)),
            &json!({}),
        )
        .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.post("/api/v1/compute_plans/nope/cancel", &json!({}))
            .await,
        400,
        "invalid_request",
        "key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_are_listed_read_canceled_and_aborted() {
    let api = Api::start().await;
    register_function(&api, 1).await;
    let plan = new_plan(
        100,
        "",
        vec![
            new_task(1, 1, &[]),
            new_task(2, 1, &[1]),
            new_task(3, 1, &[]),
        ],
    );
    assert_eq!(api.post("/api/v1/compute_plans", &plan).await.status, 201);
    let other = new_plan(101, "", vec![new_task(4, 1, &[])]);
    assert_eq!(api.post("/api/v1/compute_plans", &other).await.status, 201);

    let of_plan = format!("/api/v1/tasks?compute_plan_key={}", key(100));
    let page = api.get(&of_plan).await;
    let results = assert_page(&page, 3, 1, 50, 3);
    let names: Vec<&Value> = results.iter().map(|t| &t["name"]).collect();
    assert_eq!(
        names,
        [&json!("t1"), &json!("t3"), &json!("t2")],
        "by rank, then key"
    );
    assert_page(
        &api.get(&with_query(&of_plan, "status=TODO")).await,
        2,
        1,
        50,
        2,
    );
    // An alias stands for several statuses.
    assert_page(
        &api.get(&with_query(&of_plan, "status=pending")).await,
        3,
        1,
        50,
        3,
    );
    let second = api.get(&with_query(&of_plan, "page=2&page_size=2")).await;
    assert_eq!(assert_page(&second, 3, 2, 2, 1)[0]["name"], "t2");
    assert_page(&api.get("/api/v1/tasks").await, 4, 1, 50, 4);
    assert_page(
        &api.get(&format!(
            "/api/v1/tasks?worker={ORGANIZATION}&function_key={}",
            key(1)
        ))
        .await,
        4,
        1,
        50,
        4,
    );
    assert_page(
        &api.get("/api/v1/tasks?worker_id=worker-9").await,
        0,
        1,
        50,
        0,
    );
    assert_error(
        &api.get("/api/v1/tasks?status=SOMETIMES").await,
        400,
        "invalid_request",
        "status",
    );
    assert_error(
        &api.get("/api/v1/tasks?compute_plan_key=12").await,
        400,
        "invalid_request",
        "compute_plan_key",
    );
    assert_page_bounds(&api, "/api/v1/tasks").await;

    let reply = api.get(&format!("/api/v1/tasks/{}", key(2))).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(
        (
            &reply.body["status"],
            &reply.body["waiting_reason"],
            &reply.body["rank"]
        ),
        (&json!("WAITING"), &json!("PARENTS"), &json!(1))
    );
    assert_error(
        &api.get(&format!("/api/v1/tasks/{}", key(404))).await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/tasks/t1").await,
        400,
        "invalid_request",
        "key",
    );

    let history = api.get(&format!("/api/v1/tasks/{}/history", key(1))).await;
    assert_eq!(history.status, 200, "{history:#?}");
    assert_eq!(history.body[0]["status"], "TODO", "{history:#?}");
    assert_error(
        &api.get(&format!("/api/v1/tasks/{}/history", key(404)))
            .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/tasks/x/history").await,
        400,
        "invalid_request",
        "key",
    );

    // Cancel one task: only it.
    let reply = api
        .post(
            &format!("/api/v1/tasks/{}/cancel", key(3)),
            &json!({"reason": "not needed"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["status"], "CANCELED");
    assert_error(
        &api.post(&format!("/api/v1/tasks/{}/cancel", key(3)), &json!({}))
            .await,
        409,
        "refused",
        "",
    );
    assert_error(
        &api.post(&format!("/api/v1/tasks/{}/cancel", key(404)), &json!({}))
            .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.post(
            &format!("/api/v1/tasks/{}/cancel", key(1)),
            &json!({"reason": 5}),
        )
        .await,
        400,
        "invalid_request",
        "reason",
    );
    // Abort a task that has not started: canceled at once.
    let reply = api
        .post_raw(
            &format!("/api/v1/tasks/{}/abort", key(4)),
            "",
            "application/json",
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["status"], "CANCELED");
    assert_error(
        &api.post(&format!("/api/v1/tasks/{}/abort", key(4)), &json!({}))
            .await,
        409,
        "refused",
        "",
    );
    assert_error(
        &api.post(&format!("/api/v1/tasks/{}/abort", key(404)), &json!({}))
            .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.post("/api/v1/tasks/x/abort", &json!({})).await,
        400,
        "invalid_request",
        "key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_is_shown_without_its_lease_token() {
    let api = Api::start().await;
    api.seed().await;
    let reply = api.get(&format!("/api/v1/tasks/{}", key(31))).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["status"], "DOING");
    assert_eq!(reply.body["lease"]["attempt"], 2);
    assert!(reply.body["lease"].get("token").is_none(), "{reply:#?}");
    let listed = api
        .get(&format!("/api/v1/tasks?compute_plan_key={}", key(30)))
        .await;
    for task in assert_page(&listed, 2, 1, 50, 2) {
        assert!(!task.to_string().contains(&key(999).to_string()), "{task}");
    }
    let history = api.get(&format!("/api/v1/tasks/{}/history", key(31))).await;
    let statuses: Vec<&Value> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["status"])
        .collect();
    assert_eq!(statuses, [&json!("TODO"), &json!("DOING")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_measurements_are_paginated_in_order() {
    let api = Api::start().await;
    api.seed().await;
    let logs = format!("/api/v1/tasks/{}/logs", key(31));
    let page = api.get(&with_query(&logs, "page=2&page_size=2")).await;
    let lines = assert_page(&page, 5, 2, 2, 2);
    let seqs: Vec<&Value> = lines.iter().map(|line| &line["seq"]).collect();
    assert_eq!(seqs, [&json!(2), &json!(3)]);
    assert_eq!(lines[1]["truncated"], true);
    assert_eq!(lines[0]["stream"], "STDOUT");
    assert_page(
        &api.get(&format!("/api/v1/tasks/{}/logs", key(32))).await,
        0,
        1,
        50,
        0,
    );
    assert_page_bounds(&api, &logs).await;
    assert_error(
        &api.get(&format!("/api/v1/tasks/{}/logs", key(404))).await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/tasks/x/logs").await,
        400,
        "invalid_request",
        "key",
    );

    let measurements = format!("/api/v1/tasks/{}/measurements", key(31));
    assert_page(&api.get(&measurements).await, 5, 1, 50, 5);
    let voltage = api
        .get(&with_query(
            &measurements,
            "channel=voltage&page=2&page_size=2",
        ))
        .await;
    let samples = assert_page(&voltage, 3, 2, 2, 1);
    assert_eq!(
        (&samples[0]["channel"], &samples[0]["t"]),
        (&json!("voltage"), &json!(0.002))
    );
    assert_page(
        &api.get(&with_query(&measurements, "channel=none")).await,
        0,
        1,
        50,
        0,
    );
    assert_page_bounds(&api, &measurements).await;
    assert_error(
        &api.get(&format!("/api/v1/tasks/{}/measurements", key(404)))
            .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/tasks/x/measurements").await,
        400,
        "invalid_request",
        "key",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn models_are_listed_read_and_downloaded_from_the_store_only() {
    let api = Api::start().await;
    api.seed().await;
    let weights = b"model weights \x00\x01\x02";
    std::fs::create_dir_all(api.artifacts.path().join("models")).unwrap();
    std::fs::write(api.artifacts.path().join("models/w.bin"), weights).unwrap();
    let checksum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(weights))
    };
    let model = |n: u128, task: u128, address: Option<&str>| Model {
        address: address.map(|address| File {
            checksum: checksum.clone(),
            storage_address: address.to_owned(),
        }),
        ..fx::model(n, task)
    };
    let mut conn = api.conn().await;
    for record in [
        model(40, 31, Some("models/w.bin")),
        model(41, 31, Some("../outside-secret")),
        model(42, 32, None),
        model(43, 32, Some("models/missing.bin")),
    ] {
        execution::insert_model(&mut conn, &record).await.unwrap();
    }
    drop(conn);

    let reply = api.get(&format!("/api/v1/models/{}", key(40))).await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["compute_task_key"], json!(key(31)));
    assert_eq!(reply.body["address"]["checksum"], json!(checksum));
    assert_error(
        &api.get(&format!("/api/v1/models/{}", key(404))).await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/models/40").await,
        400,
        "invalid_request",
        "key",
    );

    let response = api
        .http
        .get(format!("{}/api/v1/models/{}/download", api.base, key(40)))
        .bearer_auth(&api.root_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-checksum-sha256"], checksum.as_str());
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(
        response.headers()["content-length"],
        weights.len().to_string().as_str()
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), weights);
    for n in [41, 42, 43, 404] {
        assert_error(
            &api.get(&format!("/api/v1/models/{}/download", key(n)))
                .await,
            404,
            "not_found",
            "key",
        );
    }
    assert_error(
        &api.get("/api/v1/models/x/download").await,
        400,
        "invalid_request",
        "key",
    );

    assert_page(&api.get("/api/v1/models").await, 4, 1, 50, 4);
    let of_task = api
        .get(&format!("/api/v1/models?compute_task_key={}", key(32)))
        .await;
    assert_page(&of_task, 2, 1, 50, 2);
    let of_plan = api
        .get(&format!(
            "/api/v1/models?compute_plan_key={}&page=2&page_size=3",
            key(30)
        ))
        .await;
    assert_page(&of_plan, 4, 2, 3, 1);
    assert_page(
        &api.get(&format!("/api/v1/models?compute_plan_key={}", key(404)))
            .await,
        0,
        1,
        50,
        0,
    );
    assert_error(
        &api.get("/api/v1/models?compute_task_key=x").await,
        400,
        "invalid_request",
        "compute_task_key",
    );
    assert_page_bounds(&api, "/api/v1/models").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_has_the_seed_performance_columns() {
    let api = Api::start().await;
    api.seed().await;
    let reply = api
        .get(&format!("/api/v1/compute_plans/{}/performances", key(30)))
        .await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    let columns: BTreeSet<&str> = reply
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        columns,
        BTreeSet::from([
            "compute_plan_key",
            "compute_plan_tag",
            "compute_plan_status",
            "compute_plan_start_date",
            "compute_plan_end_date",
            "compute_plan_metadata",
            "worker",
            "task_key",
            "function_name",
            "task_rank",
            "round_idx",
            "identifier",
            "performance",
        ])
    );
    assert_eq!(reply.body["performance"], json!([0.5, 0.75]));
    assert_eq!(reply.body["task_rank"], json!([0, 1]));
    assert_eq!(reply.body["task_key"], json!([key(31), key(32)]));
    assert_error(
        &api.get(&format!("/api/v1/compute_plans/{}/performances", key(404)))
            .await,
        404,
        "not_found",
        "key",
    );
    assert_error(
        &api.get("/api/v1/compute_plans/x/performances").await,
        400,
        "invalid_request",
        "key",
    );
    assert_error(
        &api.get(&format!(
            "/api/v1/compute_plans/{}/performances?page=1",
            key(30)
        ))
        .await,
        400,
        "invalid_request",
        "page",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_and_devices_are_listed_and_read() {
    let api = Api::start().await;
    api.seed().await;
    let page = api.get("/api/v1/workers?page_size=1&page=2").await;
    assert_eq!(assert_page(&page, 2, 2, 1, 1)[0]["identifier"], "worker-2");
    assert_page_bounds(&api, "/api/v1/workers").await;
    let reply = api.get("/api/v1/workers/worker-1").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["properties"]["device"], "lucidac");
    assert_error(
        &api.get("/api/v1/workers/worker-9").await,
        404,
        "not_found",
        "identifier",
    );
    assert_error(
        &api.get("/api/v1/workers/worker-1?verbose=1").await,
        400,
        "invalid_request",
        "verbose",
    );

    assert_page(&api.get("/api/v1/devices").await, 3, 1, 50, 3);
    let of_worker = api
        .get("/api/v1/devices?worker=worker-1&page=2&page_size=1")
        .await;
    let devices = assert_page(&of_worker, 2, 2, 1, 1);
    assert_eq!(
        (&devices[0]["id"], &devices[0]["type"]),
        (&json!("dev-b"), &json!("lucidac"))
    );
    assert_page(
        &api.get("/api/v1/devices?worker=worker-9").await,
        0,
        1,
        50,
        0,
    );
    assert_page_bounds(&api, "/api/v1/devices").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_return_the_first_answer_and_refuse_another_body() {
    let api = Api::start().await;
    let first = api
        .post_once("/api/v1/organizations", &json!({"id": "org-c"}), "k-1")
        .await;
    assert_eq!(first.status, 201, "{first:#?}");
    // The same key and body again: the first answer.
    let again = api
        .post_once("/api/v1/organizations", &json!({"id": "org-c"}), "k-1")
        .await;
    assert_eq!((again.status, &again.body["id"]), (201, &json!("org-c")));
    // The same key with another body: refused, nothing else stored.
    let reused = api
        .post_once("/api/v1/organizations", &json!({"id": "org-d"}), "k-1")
        .await;
    assert_error(&reused, 409, "conflict", "message_id");
    assert_error(
        &api.get("/api/v1/organizations/org-d").await,
        404,
        "not_found",
        "id",
    );
    // The same key for another kind of write is another request.
    let project = api
        .post_once(
            "/api/v1/projects",
            &json!({"identifier": "fl", "display_name": "FL"}),
            "k-1",
        )
        .await;
    assert_eq!(project.status, 201, "{project:#?}");
    for bad in ["", "with space", &"k".repeat(201)] {
        assert_error(
            &api.post_once("/api/v1/organizations", &json!({"id": "org-e"}), bad)
                .await,
            400,
            "invalid_request",
            "Idempotency-Key",
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_nobody_answers_times_out_with_504() {
    let api = Api::start_with(Duration::from_secs(1)).await;
    api.dispatcher_stop.cancel();
    for _ in 0..100 {
        if api.dispatcher.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(api.dispatcher.is_finished(), "the dispatcher stopped");
    let reply = api
        .post("/api/v1/organizations", &json!({"id": "org-late"}))
        .await;
    assert_error(&reply, 504, "timeout", "");
    let message = reply.body["details"][0]["message"].as_str().unwrap();
    assert!(message.contains("Idempotency-Key"), "{message}");
    // Reads still work.
    assert_eq!(api.get("/api/v1/organizations").await.status, 200);
}

/// A fresh value for a path parameter.
fn fill(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                uuid::Uuid::new_v4().to_string()
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let api = Api::start().await;
    let reply = api.get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(reply.body["openapi"], "3.1.0");
    let paths = reply.body["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            operations += 1;
            let url = format!("{}{}", api.base, fill(path));
            let request = match method.as_str() {
                "get" => api.http.get(url),
                "post" => api.http.post(url).json(&json!({})),
                other => panic!("unexpected method {other}"),
            };
            let answer = api.send(request).await;
            assert_ne!(answer.status, 405, "{method} {path}: {answer:#?}");
            let text = answer.body.to_string();
            assert!(
                !text.contains("no route for"),
                "{method} {path}: {answer:#?}"
            );
            assert!(answer.status < 500, "{method} {path}: {answer:#?}");
        }
    }
    assert_eq!(operations, 47, "the document's operations");
    // And nothing else is served.
    assert_error(&api.get("/api/v1/nothing").await, 404, "not_found", "");
    let reply = api.get("/api/v1/compute_plans/x/y/z").await;
    assert_error(&reply, 404, "not_found", "");
    assert!(reply.body.to_string().contains("no route for GET"));
    let reply = api
        .send(api.http.delete(format!("{}/api/v1/tasks", api.base)))
        .await;
    assert_error(&reply, 405, "method_not_allowed", "");
    assert_error(
        &api.get("/api/v1/openapi.json?format=yaml").await,
        400,
        "invalid_request",
        "format",
    );
}

/// Registers worker `id` over AMQP and claims `task` with it; returns whether it was granted.
async fn claim(api: &Api, id: &str, task: TaskKey) -> bool {
    let client = Broker::connect(api.broker.config(id)).await.unwrap();
    let rpc = RpcClient::new(&client).await.unwrap();
    let reply = register(&rpc, id, ORGANIZATION).await;
    assert!(
        matches!(reply, RegistrationReply::Registered { .. }),
        "{reply:?}"
    );
    let request = ClaimRequest {
        task_key: task,
        worker_id: id.into(),
    };
    let reply: ClaimReply = rpc
        .call(
            EVENTS_EXCHANGE,
            &broker::topology::worker_event_key(&id.into(), "claim"),
            &request,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    matches!(reply, ClaimReply::Granted { .. })
}

/// The value of the sample `name` (with its labels) in the metrics `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_report_the_dispatcher() {
    let api = Api::start().await;
    let reply = api.get("/healthz").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert_eq!(
        reply.body,
        json!({"status": "ok", "database": "ok", "broker": "ok"})
    );
    assert_error(
        &api.get("/healthz?deep=1").await,
        400,
        "invalid_request",
        "deep",
    );

    let mut conn = api.conn().await;
    catalog::insert_user(&mut conn, &fx::user("guest", ORGANIZATION))
        .await
        .unwrap();
    drop(conn);
    register_function(&api, 1).await;
    let plan = new_plan(
        100,
        "",
        vec![
            new_task(1, 1, &[]),
            new_task(2, 1, &[1]),
            new_task(3, 1, &[]),
        ],
    );
    assert_eq!(api.post("/api/v1/compute_plans", &plan).await.status, 201);
    assert!(
        claim(&api, "worker-1", TaskKey(key(1))).await,
        "the claim is granted"
    );

    let response = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(&api.root_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = response.text().await.unwrap();
    assert_eq!(
        sample(&text, "baton_compute_plans{status=\"DOING\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "baton_compute_plans{status=\"DONE\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "baton_tasks{status=\"DOING\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "baton_tasks{status=\"WAITING\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "baton_tasks{status=\"TODO\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "baton_queue_messages{queue=\"baton.submissions\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "baton_queue_messages{queue=\"baton.tasks.any\"}").is_some(),
        "{text}"
    );
    assert_eq!(
        sample(&text, "baton_claim_latency_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "baton_event_batch_size_count").is_some_and(|count| count >= 2.0),
        "a registration and a claim at least: {text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_error(&api.get("/metrics?x=1").await, 400, "invalid_request", "x");
    // Scraping left the API's connection as it was.
    let reply = api.get("/healthz").await;
    assert_eq!(reply.status, 200, "{reply:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn counting_a_missing_queue_leaves_the_connection_up() {
    let api = Api::start().await;
    let probe = Broker::connect(api.broker.config("probe")).await.unwrap();
    let queues = [
        "baton.tasks.nothing".to_owned(),
        "baton.submissions".to_owned(),
    ];
    let counts = probe.message_counts(&queues).await.unwrap();
    assert_eq!(
        counts,
        [
            ("baton.tasks.nothing".to_owned(), None),
            ("baton.submissions".to_owned(), Some(0))
        ]
    );
    // The channel RabbitMQ closed is reported as an event; the connection is still up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = probe.state();
    assert!(state.connected && !state.recovering, "{state:?}");
    assert_eq!(probe.message_counts(&queues).await.unwrap(), counts);
}
