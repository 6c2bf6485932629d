//! Tasks: list with filters, get, state-change history, logs, measurements, cancel and abort.
//!
//! A task is shown with every field but its lease's token: only the worker holding the lease
//! may know it, since every report of the attempt is checked against it.

use axum::Json;
use axum::extract::State;
use schemars::Schema;
use schemars::generate::SchemaGenerator;
use serde_json::Value;

use dispatcher::store::execution;
use dispatcher::store::tasks::{self, TaskFilter};
use models::wire::CancelRequest;
use models::{
    FunctionKey, LogLine, Measurement, OrganizationId, PlanKey, Task, TaskKey, TaskStateChange,
    TaskStatus, WorkerId,
};

use models::access::Action;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, Key, OptionalJsonBody, Query};
use crate::pagination::{PAGE, PAGE_SIZE, Paginated, Pagination};
use crate::plans::{CancelBody, cancel_outcome};
use crate::routes::{Param, Route, get, post, schema_of};
use crate::state::ApiState;

const TASK_KEY: Param = Param::path::<uuid::Uuid>("key", "The task's key.");

const TASK_FILTERS: &[Param] = &[
    PAGE,
    PAGE_SIZE,
    Param::query::<uuid::Uuid>("compute_plan_key", "Only tasks of this compute plan."),
    Param::query::<String>(
        "status",
        "Only tasks in this status (WAITING, TODO, DOING, DONE, FAILED, CANCELED, or an \
         Orchestra/qunicorn alias such as `pending` for WAITING and TODO).",
    ),
    Param::query::<String>("worker", "Only tasks run by workers of this organization."),
    Param::query::<String>("worker_id", "Only tasks run (or last run) by this worker."),
    Param::query::<uuid::Uuid>("function_key", "Only tasks of this function."),
];

const MEASUREMENT_FILTERS: &[Param] = &[
    TASK_KEY,
    PAGE,
    PAGE_SIZE,
    Param::query::<String>("channel", "Only samples of this channel."),
];

const LOG_PARAMS: &[Param] = &[TASK_KEY, PAGE, PAGE_SIZE];

/// A task's schema as the API shows it: its lease without the token.
fn task_schema(generator: &mut SchemaGenerator) -> Schema {
    let schema = schema_of::<Task>(generator);
    if let Some(Value::Object(lease)) = generator.definitions_mut().get_mut("Lease") {
        if let Some(Value::Object(properties)) = lease.get_mut("properties") {
            properties.remove("token");
        }
        if let Some(Value::Array(required)) = lease.get_mut("required") {
            required.retain(|name| name != "token");
        }
    }
    schema
}

/// A page of tasks' schema, their leases without tokens.
fn task_page_schema(generator: &mut SchemaGenerator) -> Schema {
    task_schema(generator);
    schema_of::<Paginated<Task>>(generator)
}

/// The routes of this module.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/api/v1/tasks", "listTasks", list_tasks)
            .requires(Action::ReadPlans)
            .summary(
                "tasks",
                "List tasks, newest plans first, by rank within a plan",
            )
            .params(TASK_FILTERS)
            .returns_schema(200, "A page of tasks", task_page_schema),
        get("/api/v1/tasks/{key}", "getTask", get_task)
            .requires(Action::ReadPlans)
            .summary("tasks", "Get a task")
            .params(&[TASK_KEY])
            .returns_schema(200, "The task", task_schema),
        get("/api/v1/tasks/{key}/history", "getTaskHistory", get_history)
            .requires(Action::ReadPlans)
            .summary("tasks", "A task's state changes, oldest first")
            .params(&[TASK_KEY])
            .returns::<Vec<TaskStateChange>>(200, "Every state change"),
        get("/api/v1/tasks/{key}/logs", "getTaskLogs", get_logs)
            .requires(Action::ReadLogs)
            .summary(
                "tasks",
                "A task's log lines, every attempt, in writing order",
            )
            .params(LOG_PARAMS)
            .returns::<Paginated<LogLine>>(200, "A page of log lines"),
        get(
            "/api/v1/tasks/{key}/measurements",
            "getTaskMeasurements",
            get_measurements,
        )
        .requires(Action::ReadPlans)
        .summary("tasks", "A task's measurement samples, in arrival order")
        .params(MEASUREMENT_FILTERS)
        .returns::<Paginated<Measurement>>(200, "A page of samples"),
        post("/api/v1/tasks/{key}/cancel", "cancelTask", cancel_task)
            .requires(Action::CancelPlans)
            .summary(
                "tasks",
                "Cancel a task: at once if it has not started, else its step gets SIGTERM, then \
                 SIGKILL after the grace period",
            )
            .params(&[TASK_KEY])
            .optional_body::<CancelBody>()
            .returns_schema(
                200,
                "Canceled or ordered; the task as it is now",
                task_schema,
            ),
        post("/api/v1/tasks/{key}/abort", "abortTask", abort_task)
            .requires(Action::CancelPlans)
            .summary("tasks", "Abort a task: its processes are killed at once")
            .params(&[TASK_KEY])
            .optional_body::<CancelBody>()
            .returns_schema(
                200,
                "Aborted or ordered; the task as it is now",
                task_schema,
            ),
    ]
}

/// `task` as the API shows it: without its lease's token.
pub(crate) fn public_task(task: Task) -> Result<Value, ApiError> {
    let mut value = serde_json::to_value(task).map_err(ApiError::internal)?;
    if let Some(Value::Object(lease)) = value.get_mut("lease") {
        lease.remove("token");
    }
    Ok(value)
}

/// The stored task `key`, or a 404.
async fn find_task(state: &ApiState, key: TaskKey) -> Result<Task, ApiError> {
    let mut conn = state.conn().await?;
    tasks::find_task(&mut conn, key)
        .await?
        .ok_or_else(|| ApiError::not_found("key", format!("task {key}")))
}

/// The stored task `key` if `caller` may do `action` on it: 404 when it may not even read
/// it (its existence is not revealed), 403 when it may read it but not do `action`.
async fn task_for(
    state: &ApiState,
    caller: &Caller,
    key: TaskKey,
    action: Action,
) -> Result<Task, ApiError> {
    let task = find_task(state, key).await?;
    if !caller.may(Action::ReadPlans, &task.owner) {
        return Err(ApiError::not_found("key", format!("task {key}")));
    }
    if !caller.may(action, &task.owner) {
        return Err(caller.refusal(action, Some(&task.owner)));
    }
    Ok(task)
}

/// The statuses `text` names: a status word, or an alias standing for several.
fn parse_statuses(text: &str) -> Result<Vec<TaskStatus>, ApiError> {
    TaskStatus::from_alias(text)
        .map(<[TaskStatus]>::to_vec)
        .ok_or_else(|| {
            let words: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(
                "status",
                format!(
                    "unknown task status {text:?}, expected one of: {} (or an alias)",
                    words.join(", ")
                ),
            )
        })
}

async fn list_tasks(
    State(state): State<ApiState>,
    caller: Caller,
    query: Query,
) -> Result<Json<Paginated<Value>>, ApiError> {
    query.only(TASK_FILTERS)?;
    let pagination = Pagination::from_query(&query)?;
    let filter = TaskFilter {
        compute_plan_key: query.parse::<uuid::Uuid>("compute_plan_key")?.map(PlanKey),
        statuses: query
            .get("status")
            .map(parse_statuses)
            .transpose()?
            .unwrap_or_default(),
        worker: query.get("worker").map(OrganizationId::from),
        worker_id: query.get("worker_id").map(WorkerId::from),
        function_key: query.parse::<uuid::Uuid>("function_key")?.map(FunctionKey),
        owner: caller.limited_to(Action::ReadPlans),
    };
    let mut conn = state.conn().await?;
    let page =
        tasks::list_tasks_page(&mut conn, &filter, pagination.limit(), pagination.offset()).await?;
    let results = page
        .rows
        .into_iter()
        .map(public_task)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(pagination.page_of(page.total, results)))
}

async fn get_task(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<TaskKey>,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    query.only(&[])?;
    Ok(Json(public_task(
        task_for(&state, &caller, key, Action::ReadPlans).await?,
    )?))
}

async fn get_history(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<TaskKey>,
    query: Query,
) -> Result<Json<Vec<TaskStateChange>>, ApiError> {
    query.only(&[])?;
    task_for(&state, &caller, key, Action::ReadPlans).await?;
    let mut conn = state.conn().await?;
    Ok(Json(tasks::list_state_changes(&mut conn, key).await?))
}

async fn get_logs(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<TaskKey>,
    query: Query,
) -> Result<Json<Paginated<LogLine>>, ApiError> {
    query.only(LOG_PARAMS)?;
    let pagination = Pagination::from_query(&query)?;
    let task = task_for(&state, &caller, key, Action::ReadLogs).await?;
    // SPEC.md §3: reading a task's logs needs its logs permission, whatever the role.
    caller.shares(
        &task.logs_permission,
        "",
        format_args!("the log of task {key}"),
    )?;
    let mut conn = state.conn().await?;
    let count = execution::count_log_lines(&mut conn, key).await?;
    let lines =
        execution::list_log_lines(&mut conn, key, pagination.limit(), pagination.offset()).await?;
    Ok(Json(pagination.page_of(count, lines)))
}

async fn get_measurements(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<TaskKey>,
    query: Query,
) -> Result<Json<Paginated<Measurement>>, ApiError> {
    query.only(MEASUREMENT_FILTERS)?;
    let pagination = Pagination::from_query(&query)?;
    task_for(&state, &caller, key, Action::ReadPlans).await?;
    let mut conn = state.conn().await?;
    let page = execution::list_measurements_page(
        &mut conn,
        key,
        query.get("channel"),
        pagination.limit(),
        pagination.offset(),
    )
    .await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn cancel_task(
    state: State<ApiState>,
    caller: Caller,
    key: Key<TaskKey>,
    idempotency: IdempotencyKey,
    query: Query,
    body: OptionalJsonBody<CancelBody>,
) -> Result<Json<Value>, ApiError> {
    stop_task(state, caller, key, idempotency, query, body, Stop::Cancel).await
}

async fn abort_task(
    state: State<ApiState>,
    caller: Caller,
    key: Key<TaskKey>,
    idempotency: IdempotencyKey,
    query: Query,
    body: OptionalJsonBody<CancelBody>,
) -> Result<Json<Value>, ApiError> {
    stop_task(state, caller, key, idempotency, query, body, Stop::Abort).await
}

/// A cancel or an abort of one task.
#[derive(Clone, Copy)]
enum Stop {
    Cancel,
    Abort,
}

/// Orders `stop` of the task, through the dispatcher, and answers with the task as it is then.
async fn stop_task(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<TaskKey>,
    idempotency: IdempotencyKey,
    query: Query,
    OptionalJsonBody(body): OptionalJsonBody<CancelBody>,
    stop: Stop,
) -> Result<Json<Value>, ApiError> {
    query.only(&[])?;
    let reason = body.reason_or(match stop {
        Stop::Cancel => "canceled through the HTTP API",
        Stop::Abort => "aborted through the HTTP API",
    })?;
    task_for(&state, &caller, key, Action::CancelPlans).await?;
    let request = match stop {
        Stop::Cancel => CancelRequest::Task {
            task_key: key,
            reason,
        },
        Stop::Abort => CancelRequest::Abort {
            task_key: key,
            reason,
        },
    };
    cancel_outcome(state.request(&caller, &request, &idempotency).await?)?;
    Ok(Json(public_task(find_task(&state, key).await?)?))
}
