//! Compute plans: submit, add tasks, list, get, cancel, and the performance table.
//!
//! Submissions, added tasks and cancels are the `plan.submit`, `plan.add_tasks` and
//! `plan.cancel` messages producers publish over AMQP, answered by the dispatcher; the plan
//! is then read back, after the dispatcher committed it.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use dispatcher::store::plans::{self, PlanFilter};
use models::submission::{NewTask, PlanSubmission};
use models::wire::{AddTasks, CancelReply, CancelRequest, SubmissionReply};
use models::{ComputePlan, OrganizationId, Performances, PlanKey, PlanStatus, ProjectId};

use models::access::Action;

use crate::auth::Caller;
use crate::catalog::created;
use crate::error::{ApiError, ErrorKind};
use crate::extract::{IdempotencyKey, JsonBody, Key, OptionalJsonBody, Query};
use crate::pagination::{PAGE, PAGE_SIZE, Paginated, Pagination};
use crate::routes::{Param, Route, get, post};
use crate::state::ApiState;

const PLAN_KEY: Param = Param::path::<uuid::Uuid>("key", "The compute plan's key.");

const PLAN_FILTERS: &[Param] = &[
    PAGE,
    PAGE_SIZE,
    Param::query::<PlanStatus>("status", "Only plans in this status."),
    Param::query::<String>("owner", "Only plans owned by this organization."),
    Param::query::<String>("project", "Only plans of this project."),
    Param::query::<String>("tag", "Only plans with exactly this tag."),
];

/// The longest reason a cancel may give; it is recorded in the tasks' history.
pub(crate) const MAX_REASON_CHARS: usize = 1000;

/// Tasks to add to a stored plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTasks {
    /// The new tasks; their parents may be stored tasks of the plan.
    pub tasks: Vec<NewTask>,
}

/// Why a plan or task is canceled or aborted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why, recorded in the tasks' history (at most 1000 characters); the body may be left out.
    #[serde(default)]
    pub reason: Option<String>,
}

impl CancelBody {
    /// The reason to record: the one given, or `default`.
    pub fn reason_or(self, default: &str) -> Result<String, ApiError> {
        match self.reason {
            Some(reason) if reason.chars().count() > MAX_REASON_CHARS => Err(ApiError::invalid(
                "reason",
                format!("must be at most {MAX_REASON_CHARS} characters long"),
            )),
            Some(reason) => Ok(reason),
            None => Ok(default.to_owned()),
        }
    }
}

/// The routes of this module.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/api/v1/compute_plans", "listComputePlans", list_plans)
            .requires(Action::ReadPlans)
            .summary("compute plans", "List compute plans, newest first")
            .params(PLAN_FILTERS)
            .returns::<Paginated<ComputePlan>>(200, "A page of compute plans"),
        post("/api/v1/compute_plans", "submitComputePlan", submit_plan)
            .requires(Action::SubmitPlans)
            .summary(
                "compute plans",
                "Submit a compute plan with its tasks (validated as a whole: every problem is \
                 reported, nothing is stored on any)",
            )
            .body::<PlanSubmission>()
            .returns::<ComputePlan>(201, "Stored"),
        get("/api/v1/compute_plans/{key}", "getComputePlan", get_plan)
            .requires(Action::ReadPlans)
            .summary(
                "compute plans",
                "Get a compute plan, with its counters and status",
            )
            .params(&[PLAN_KEY])
            .returns::<ComputePlan>(200, "The compute plan"),
        post("/api/v1/compute_plans/{key}/tasks", "addTasks", add_tasks)
            .requires(Action::SubmitPlans)
            .summary(
                "compute plans",
                "Add tasks to a stored compute plan (by its owner; a plan that ended runs again)",
            )
            .params(&[PLAN_KEY])
            .body::<NewTasks>()
            .returns::<ComputePlan>(201, "Added; the plan as it is now"),
        post(
            "/api/v1/compute_plans/{key}/cancel",
            "cancelComputePlan",
            cancel_plan,
        )
        .requires(Action::CancelPlans)
        .summary(
            "compute plans",
            "Cancel a compute plan: waiting and ready tasks at once, running ones through \
                 their worker",
        )
        .params(&[PLAN_KEY])
        .optional_body::<CancelBody>()
        .returns::<ComputePlan>(200, "Canceled; the plan as it is now"),
        get(
            "/api/v1/compute_plans/{key}/performances",
            "getPerformances",
            get_performances,
        )
        .requires(Action::ReadPlans)
        .summary(
            "compute plans",
            "The plan's performance table, in columns (the seed's `Performances`)",
        )
        .params(&[PLAN_KEY])
        .returns::<Performances>(200, "One entry per performance in every column"),
    ]
}

/// The stored plan `key`, or a 404.
pub(crate) async fn find_plan(state: &ApiState, key: PlanKey) -> Result<ComputePlan, ApiError> {
    let conn = state.conn().await?;
    plans::find_plan(&conn, key)
        .await?
        .ok_or_else(|| ApiError::not_found("key", format!("compute plan {key}")))
}

/// The stored plan `key` if `caller` may read it; a plan of another organization is as absent
/// as a plan that does not exist (a 404), so its existence is not revealed.
pub(crate) async fn readable_plan(
    state: &ApiState,
    caller: &Caller,
    key: PlanKey,
) -> Result<ComputePlan, ApiError> {
    let plan = find_plan(state, key).await?;
    if caller.may(Action::ReadPlans, &plan.owner) {
        Ok(plan)
    } else {
        Err(ApiError::not_found("key", format!("compute plan {key}")))
    }
}

/// The stored plan `key` if `caller` may do `action` on it: 404 when it may not even read
/// it, 403 when it may read it but not do `action`.
pub(crate) async fn plan_for(
    state: &ApiState,
    caller: &Caller,
    key: PlanKey,
    action: Action,
) -> Result<ComputePlan, ApiError> {
    let plan = readable_plan(state, caller, key).await?;
    if caller.may(action, &plan.owner) {
        Ok(plan)
    } else {
        Err(caller.refusal(action, Some(&plan.owner)))
    }
}

async fn list_plans(
    State(state): State<ApiState>,
    caller: Caller,
    query: Query,
) -> Result<Json<Paginated<ComputePlan>>, ApiError> {
    query.only(PLAN_FILTERS)?;
    let pagination = Pagination::from_query(&query)?;
    let asked = query.get("owner").map(OrganizationId::from);
    let owner = match (caller.limited_to(Action::ReadPlans), asked) {
        (Some(own), Some(asked)) if own != asked => {
            return Ok(Json(pagination.page_of(0, Vec::new())));
        }
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    let filter = PlanFilter {
        status: query.parse("status")?,
        owner,
        project: query.get("project").map(ProjectId::from),
        tag: query.get("tag").map(str::to_owned),
    };
    let mut conn = state.conn().await?;
    let page =
        plans::list_plans_page(&mut conn, &filter, pagination.limit(), pagination.offset()).await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn get_plan(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<PlanKey>,
    query: Query,
) -> Result<Json<ComputePlan>, ApiError> {
    query.only(&[])?;
    Ok(Json(readable_plan(&state, &caller, key).await?))
}

/// The plan an accepted submission names, read back; a refusal becomes the error.
async fn accepted_plan(state: &ApiState, reply: SubmissionReply) -> Result<ComputePlan, ApiError> {
    match reply {
        SubmissionReply::Accepted {
            compute_plan_key, ..
        } => find_plan(state, compute_plan_key).await.map_err(|_| {
            ApiError::internal(format!(
                "compute plan {compute_plan_key} was accepted but cannot be read back"
            ))
        }),
        SubmissionReply::Rejected { error, details, .. } => Err(ApiError::refusal(&error, details)),
    }
}

async fn submit_plan(
    State(state): State<ApiState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    JsonBody(submission): JsonBody<PlanSubmission>,
) -> Result<Response, ApiError> {
    let reply = state.request(&caller, &submission, &idempotency).await?;
    let plan = accepted_plan(&state, reply).await?;
    Ok(created(format!("/api/v1/compute_plans/{}", plan.key), plan))
}

async fn add_tasks(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<PlanKey>,
    idempotency: IdempotencyKey,
    JsonBody(new): JsonBody<NewTasks>,
) -> Result<Response, ApiError> {
    plan_for(&state, &caller, key, Action::SubmitPlans).await?;
    let message = AddTasks {
        compute_plan_key: key,
        tasks: new.tasks,
    };
    let reply = state.request(&caller, &message, &idempotency).await?;
    let plan = accepted_plan(&state, reply).await?;
    Ok(created(format!("/api/v1/compute_plans/{key}"), plan))
}

/// The dispatcher's answer to a cancel; a refusal is a 409 with its reason.
pub(crate) fn cancel_outcome(reply: CancelReply) -> Result<(), ApiError> {
    match reply {
        CancelReply::Accepted => Ok(()),
        CancelReply::Refused { reason } => Err(ApiError::new(ErrorKind::Refused, "", reason)),
    }
}

async fn cancel_plan(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<PlanKey>,
    idempotency: IdempotencyKey,
    query: Query,
    OptionalJsonBody(body): OptionalJsonBody<CancelBody>,
) -> Result<Json<ComputePlan>, ApiError> {
    query.only(&[])?;
    let reason = body.reason_or("canceled through the HTTP API")?;
    plan_for(&state, &caller, key, Action::CancelPlans).await?;
    let request = CancelRequest::Plan {
        compute_plan_key: key,
        reason,
    };
    cancel_outcome(state.request(&caller, &request, &idempotency).await?)?;
    Ok(Json(find_plan(&state, key).await?))
}

async fn get_performances(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<PlanKey>,
    query: Query,
) -> Result<Json<Performances>, ApiError> {
    query.only(&[])?;
    readable_plan(&state, &caller, key).await?;
    let mut conn = state.conn().await?;
    let rows = plans::performance_table(&mut conn, key).await?;
    Ok(Json(rows.into_iter().collect()))
}
