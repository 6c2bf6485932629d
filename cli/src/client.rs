//! A typed client of baton's HTTP API (docs/api.md), for the commands that talk to a running
//! `baton dispatcher`: requests are built from the routes' paths, answers are read into the
//! `models` types the API serializes, and an error answer becomes an [`ApiError`] that says
//! what the API said.
//!
//! It does not retry: a command fails with the first error, and the caller decides.

use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use api::pagination::Paginated;
use api::{CancelBody, ErrorBody};
use models::submission::PlanSubmission;
use models::wire::ErrorDetail;
use models::{
    ComputePlan, Device, LogLine, Performances, PlanKey, Task, TaskKey, TaskStateChange, Worker,
};

use crate::output::redact_url;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may take: longer than the API waits for the dispatcher's answer to a
/// write (60 s), so that its `504 timeout` reaches the caller rather than ours.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// The largest page the API serves.
pub(crate) const MAX_PAGE_SIZE: u32 = api::pagination::MAX_PAGE_SIZE;

/// An error answer of the API: its status, its `error` kind and every detail it gave.
#[derive(Debug)]
pub(crate) struct ApiError {
    /// The request, as `GET /api/v1/tasks/…` (without the host or the query).
    pub(crate) request: String,
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The `error` word (`not_found`, `invalid_submission`, …), or the status' reason when the
    /// body was not the API's error document.
    pub(crate) kind: String,
    /// The problems the API listed.
    pub(crate) details: Vec<ErrorDetail>,
}

impl ApiError {
    /// Whether the API answered 404.
    pub(crate) fn is_not_found(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered {} {}",
            self.request,
            self.status.as_u16(),
            self.kind
        )?;
        for detail in &self.details {
            if detail.path.is_empty() {
                write!(f, "\n  - {}", detail.message)?;
            } else {
                write!(f, "\n  - {}: {}", detail.path, detail.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// Whether `error` is the API's 404.
pub(crate) fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ApiError>()
        .is_some_and(ApiError::is_not_found)
}

/// The filters of `GET /compute_plans`.
#[derive(Clone, Debug, Default)]
pub(crate) struct PlanFilter {
    /// Only plans in this status.
    pub(crate) status: Option<String>,
    /// Only plans owned by this organization.
    pub(crate) owner: Option<String>,
    /// Only plans of this project.
    pub(crate) project: Option<String>,
    /// Only plans with exactly this tag.
    pub(crate) tag: Option<String>,
}

/// The filters of `GET /tasks`.
#[derive(Clone, Debug, Default)]
pub(crate) struct TaskFilter {
    /// Only tasks of this plan.
    pub(crate) compute_plan_key: Option<PlanKey>,
    /// Only tasks in this status (or alias).
    pub(crate) status: Option<String>,
    /// Only tasks run by workers of this organization.
    pub(crate) worker: Option<String>,
    /// Only tasks run (or last run) by this worker.
    pub(crate) worker_id: Option<String>,
    /// Only tasks of this function.
    pub(crate) function_key: Option<uuid::Uuid>,
}

/// Which page of a listing to ask for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Page {
    /// From 1.
    pub(crate) page: u32,
    /// From 1 to [`MAX_PAGE_SIZE`].
    pub(crate) page_size: u32,
}

impl Page {
    fn query(self) -> [(&'static str, String); 2] {
        [
            ("page", self.page.to_string()),
            ("page_size", self.page_size.to_string()),
        ]
    }
}

/// A client of one API.
#[derive(Clone, Debug)]
pub(crate) struct ApiClient {
    http: reqwest::Client,
    base: Url,
    /// Sent as `Authorization: Bearer …`; never printed.
    token: Option<String>,
}

impl ApiClient {
    /// A client of the API at `base` (`http://127.0.0.1:8080`), sending `token` when given.
    pub(crate) fn new(base: &str, token: Option<String>) -> anyhow::Result<ApiClient> {
        let mut parsed = Url::parse(base)
            .with_context(|| format!("--api-url {}: not a URL", redact_url(base)))?;
        if parsed.scheme() == "https" {
            // reqwest is built without TLS in this workspace: put a TLS-terminating proxy on
            // the same host, or reach the API over a trusted network.
            anyhow::bail!(
                "--api-url {}: this baton speaks plain HTTP only (https:// is not supported)",
                redact_url(base)
            );
        }
        if parsed.cannot_be_a_base() || parsed.scheme() != "http" {
            anyhow::bail!(
                "--api-url {}: expected an http:// URL of `baton dispatcher`'s API",
                redact_url(base)
            );
        }
        // Paths are appended to the base's own path, as segments.
        if !parsed.path().ends_with('/') {
            let path = format!("{}/", parsed.path());
            parsed.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            http,
            base: parsed,
            token: token.filter(|token| !token.is_empty()),
        })
    }

    /// The base URL, with any password hidden.
    pub(crate) fn describe(&self) -> String {
        redact_url(self.base.as_str())
    }

    /// The URL of `/api/v1/<segments…>` with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(name, value)| (*name, value.as_str())));
        }
        url
    }

    /// Sends a request and reads the answer as `T`; an error answer is an [`ApiError`].
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<T> {
        let request_name = format!("{method} {}", url.path());
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|error| {
            anyhow::Error::new(error.without_url()).context(format!(
                "cannot reach the baton API at {} ({request_name}; set --api-url or BATON_API_URL)",
                self.describe()
            ))
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| anyhow::Error::new(error.without_url()))
            .with_context(|| format!("reading the answer to {request_name}"))?;
        if !status.is_success() {
            let (kind, details) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => (body.error, body.details),
                Err(_) => (
                    status
                        .canonical_reason()
                        .unwrap_or("error")
                        .to_lowercase()
                        .replace(' ', "_"),
                    Vec::new(),
                ),
            };
            return Err(ApiError {
                request: request_name,
                status,
                kind,
                details,
            }
            .into());
        }
        let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            anyhow::Error::new(error.into_inner()).context(format!(
                "the answer to {request_name} is not what this baton expects (at {path}): is the \
                 API of another version?"
            ))
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(Method::GET, self.url(segments, query), None, None)
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<T> {
        self.send(
            Method::POST,
            self.url(segments, &[]),
            Some(serde_json::to_vec(body).context("writing the request body")?),
            idempotency_key,
        )
        .await
    }

    /// `POST /compute_plans`: submits a plan; answers it as stored.
    pub(crate) async fn submit_plan(
        &self,
        submission: &PlanSubmission,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<ComputePlan> {
        self.post(&["compute_plans"], submission, idempotency_key)
            .await
    }

    /// `GET /compute_plans`.
    pub(crate) async fn plans(
        &self,
        filter: &PlanFilter,
        page: Page,
    ) -> anyhow::Result<Paginated<ComputePlan>> {
        let mut query: Vec<(&str, String)> = page.query().into();
        for (name, value) in [
            ("status", &filter.status),
            ("owner", &filter.owner),
            ("project", &filter.project),
            ("tag", &filter.tag),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        self.get(&["compute_plans"], &query).await
    }

    /// `GET /compute_plans/{key}`.
    pub(crate) async fn plan(&self, key: PlanKey) -> anyhow::Result<ComputePlan> {
        self.get(&["compute_plans", &key.to_string()], &[]).await
    }

    /// `POST /compute_plans/{key}/cancel`.
    pub(crate) async fn cancel_plan(
        &self,
        key: PlanKey,
        reason: Option<String>,
    ) -> anyhow::Result<ComputePlan> {
        self.post(
            &["compute_plans", &key.to_string(), "cancel"],
            &CancelBody { reason },
            None,
        )
        .await
    }

    /// `GET /compute_plans/{key}/performances`.
    pub(crate) async fn performances(&self, key: PlanKey) -> anyhow::Result<Performances> {
        self.get(&["compute_plans", &key.to_string(), "performances"], &[])
            .await
    }

    /// `GET /tasks`.
    pub(crate) async fn tasks(
        &self,
        filter: &TaskFilter,
        page: Page,
    ) -> anyhow::Result<Paginated<Task>> {
        let mut query: Vec<(&str, String)> = page.query().into();
        if let Some(key) = filter.compute_plan_key {
            query.push(("compute_plan_key", key.to_string()));
        }
        for (name, value) in [
            ("status", &filter.status),
            ("worker", &filter.worker),
            ("worker_id", &filter.worker_id),
        ] {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        if let Some(key) = filter.function_key {
            query.push(("function_key", key.to_string()));
        }
        let page: Paginated<PublicTask> = self.get(&["tasks"], &query).await?;
        Ok(Paginated {
            count: page.count,
            page: page.page,
            page_size: page.page_size,
            results: page.results.into_iter().map(|task| task.0).collect(),
        })
    }

    /// Every task of plan `key`, in the API's order (by rank), reading every page.
    pub(crate) async fn plan_tasks(&self, key: PlanKey) -> anyhow::Result<Vec<Task>> {
        let filter = TaskFilter {
            compute_plan_key: Some(key),
            ..TaskFilter::default()
        };
        let mut tasks = Vec::new();
        for number in 1.. {
            let page = self
                .tasks(
                    &filter,
                    Page {
                        page: number,
                        page_size: MAX_PAGE_SIZE,
                    },
                )
                .await?;
            let last = page.results.len() < MAX_PAGE_SIZE as usize
                || (tasks.len() + page.results.len()) as u64 >= page.count;
            tasks.extend(page.results);
            if last {
                break;
            }
        }
        Ok(tasks)
    }

    /// `GET /tasks/{key}`.
    pub(crate) async fn task(&self, key: TaskKey) -> anyhow::Result<Task> {
        let task: PublicTask = self.get(&["tasks", &key.to_string()], &[]).await?;
        Ok(task.0)
    }

    /// `GET /tasks/{key}/history`.
    pub(crate) async fn task_history(&self, key: TaskKey) -> anyhow::Result<Vec<TaskStateChange>> {
        self.get(&["tasks", &key.to_string(), "history"], &[]).await
    }

    /// `GET /tasks/{key}/logs`: one page of its log lines.
    pub(crate) async fn task_logs(
        &self,
        key: TaskKey,
        page: Page,
    ) -> anyhow::Result<Paginated<LogLine>> {
        self.get(&["tasks", &key.to_string(), "logs"], &page.query())
            .await
    }

    /// `POST /tasks/{key}/cancel`.
    pub(crate) async fn cancel_task(
        &self,
        key: TaskKey,
        reason: Option<String>,
    ) -> anyhow::Result<Task> {
        self.stop_task(key, "cancel", reason).await
    }

    /// `POST /tasks/{key}/abort`.
    pub(crate) async fn abort_task(
        &self,
        key: TaskKey,
        reason: Option<String>,
    ) -> anyhow::Result<Task> {
        self.stop_task(key, "abort", reason).await
    }

    /// `POST /tasks/{key}/{verb}`: a cancel or an abort; answers the task as it is then.
    async fn stop_task(
        &self,
        key: TaskKey,
        verb: &str,
        reason: Option<String>,
    ) -> anyhow::Result<Task> {
        let task: PublicTask = self
            .post(
                &["tasks", &key.to_string(), verb],
                &CancelBody { reason },
                None,
            )
            .await?;
        Ok(task.0)
    }

    /// `GET /functions/{key}`: the function's name.
    pub(crate) async fn function_name(&self, key: models::FunctionKey) -> anyhow::Result<String> {
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
        }
        let named: Named = self.get(&["functions", &key.to_string()], &[]).await?;
        Ok(named.name)
    }

    /// `GET /workers`.
    pub(crate) async fn workers(&self, page: Page) -> anyhow::Result<Paginated<Worker>> {
        self.get(&["workers"], &page.query()).await
    }

    /// `POST /login`: a password for a token.
    pub(crate) async fn login(&self, login: &api::Login) -> anyhow::Result<api::IssuedToken> {
        self.post(&["login"], login, None).await
    }

    /// `GET /me`.
    pub(crate) async fn me(&self) -> anyhow::Result<models::User> {
        self.get(&["me"], &[]).await
    }

    /// `GET /users`.
    pub(crate) async fn users(&self, page: Page) -> anyhow::Result<Paginated<models::User>> {
        self.get(&["users"], &page.query()).await
    }

    /// `GET /users/{identifier}`.
    pub(crate) async fn user(&self, identifier: &str) -> anyhow::Result<models::User> {
        self.get(&["users", identifier], &[]).await
    }

    /// `POST /users`.
    pub(crate) async fn create_user(&self, new: &api::NewUser) -> anyhow::Result<models::User> {
        self.post(&["users"], new, None).await
    }

    /// `POST /users/{identifier}`.
    pub(crate) async fn update_user(
        &self,
        identifier: &str,
        update: &api::UserUpdate,
    ) -> anyhow::Result<models::User> {
        self.post(&["users", identifier], update, None).await
    }

    /// `POST /users/{identifier}/password`.
    pub(crate) async fn set_password(
        &self,
        identifier: &str,
        change: &api::PasswordChange,
    ) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .post(&["users", identifier, "password"], change, None)
            .await?;
        Ok(())
    }

    /// `GET /users/{identifier}/tokens`.
    pub(crate) async fn tokens(&self, user: &str) -> anyhow::Result<Vec<api::TokenInfo>> {
        self.get(&["users", user, "tokens"], &[]).await
    }

    /// `POST /users/{identifier}/tokens`.
    pub(crate) async fn create_token(
        &self,
        user: &str,
        new: &api::NewToken,
    ) -> anyhow::Result<api::IssuedToken> {
        self.post(&["users", user, "tokens"], new, None).await
    }

    /// `POST /users/{identifier}/tokens/{token}/revoke`.
    pub(crate) async fn revoke_token(
        &self,
        user: &str,
        token: uuid::Uuid,
    ) -> anyhow::Result<api::TokenInfo> {
        let token = token.to_string();
        self.post(
            &["users", user, "tokens", &token, "revoke"],
            &serde_json::json!({}),
            None,
        )
        .await
    }

    /// `GET /devices`.
    pub(crate) async fn devices(
        &self,
        worker: Option<&str>,
        page: Page,
    ) -> anyhow::Result<Paginated<Device>> {
        let mut query: Vec<(&str, String)> = page.query().into();
        if let Some(worker) = worker {
            query.push(("worker", worker.to_owned()));
        }
        self.get(&["devices"], &query).await
    }
}

/// A task as the API shows it: its lease without the token (which only the worker holding the
/// lease may know). The nil UUID stands in for the token, so that the shown task reads into
/// [`Task`]; `output::public_task` leaves it out again when a task is printed as JSON.
struct PublicTask(Task);

impl<'de> serde::Deserialize<'de> for PublicTask {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        if let Some(serde_json::Value::Object(lease)) = value.get_mut("lease") {
            lease
                .entry("token")
                .or_insert_with(|| serde_json::Value::String(uuid::Uuid::nil().to_string()));
        }
        serde_json::from_value(value)
            .map(PublicTask)
            .map_err(serde::de::Error::custom)
    }
}
