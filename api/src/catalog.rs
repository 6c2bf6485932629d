//! What producers register: organizations, projects, functions, datasets and data samples.
//! Registrations are published as `*.register` messages and answered by the dispatcher, as over
//! AMQP; the registered record is then read back and returned.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};

use dispatcher::store::catalog::{self, FunctionFilter};
use models::submission::{NewDataSamples, NewDataset, NewFunction, NewOrganization, NewProject};
use models::wire::AssetReply;
use models::{
    DataSample, DataSampleKey, Dataset, DatasetKey, Function, FunctionKey, FunctionStatus,
    Organization, OrganizationId, Project, ProjectId,
};

use crate::error::ApiError;
use crate::extract::{IdempotencyKey, JsonBody, Key, Query};
use crate::pagination::{PAGE, PAGE_SIZE, Paginated, Pagination};
use crate::routes::{Param, Route, get, post};
use models::access::Action;

use crate::auth::Caller;
use crate::state::ApiState;

const ORGANIZATION_ID: Param = Param::path::<String>("id", "The organization's identifier.");
const PROJECT_ID: Param = Param::path::<String>("identifier", "The project's identifier.");
const FUNCTION_KEY: Param = Param::path::<uuid::Uuid>("key", "The function's key.");
const DATASET_KEY: Param = Param::path::<uuid::Uuid>("key", "The dataset's key.");
const SAMPLE_KEY: Param = Param::path::<uuid::Uuid>("key", "The data sample's key.");

const PAGES: &[Param] = &[PAGE, PAGE_SIZE];

const FUNCTION_FILTERS: &[Param] = &[
    PAGE,
    PAGE_SIZE,
    Param::query::<String>("project", "Only functions of this project."),
    Param::query::<FunctionStatus>("status", "Only functions in this build status."),
    Param::query::<String>("owner", "Only functions owned by this organization."),
];

/// The routes of this module.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        get(
            "/api/v1/organizations",
            "listOrganizations",
            list_organizations,
        )
        .requires(Action::ReadProjects)
        .summary("organizations", "List organizations, by identifier")
        .params(PAGES)
        .returns::<Paginated<Organization>>(200, "A page of organizations"),
        post(
            "/api/v1/organizations",
            "registerOrganization",
            register_organization,
        )
        .requires(Action::RegisterOrganizations)
        .summary("organizations", "Register an organization")
        .body::<NewOrganization>()
        .returns::<Organization>(201, "Registered"),
        get(
            "/api/v1/organizations/{id}",
            "getOrganization",
            get_organization,
        )
        .requires(Action::ReadProjects)
        .summary("organizations", "Get an organization")
        .params(&[ORGANIZATION_ID])
        .returns::<Organization>(200, "The organization"),
        get("/api/v1/projects", "listProjects", list_projects)
            .requires(Action::ReadProjects)
            .summary("projects", "List projects, by identifier")
            .params(PAGES)
            .returns::<Paginated<Project>>(200, "A page of projects"),
        post("/api/v1/projects", "registerProject", register_project)
            .requires(Action::RegisterAssets)
            .summary("projects", "Register a project")
            .body::<NewProject>()
            .returns::<Project>(201, "Registered"),
        get("/api/v1/projects/{identifier}", "getProject", get_project)
            .requires(Action::ReadProjects)
            .summary("projects", "Get a project")
            .params(&[PROJECT_ID])
            .returns::<Project>(200, "The project"),
        get("/api/v1/functions", "listFunctions", list_functions)
            .requires(Action::ReadAssets)
            .summary("functions", "List functions, newest first")
            .params(FUNCTION_FILTERS)
            .returns::<Paginated<Function>>(200, "A page of functions"),
        post("/api/v1/functions", "registerFunction", register_function)
            .requires(Action::RegisterAssets)
            .summary("functions", "Register a function")
            .body::<NewFunction>()
            .returns::<Function>(201, "Registered"),
        get("/api/v1/functions/{key}", "getFunction", get_function)
            .requires(Action::ReadAssets)
            .summary("functions", "Get a function")
            .params(&[FUNCTION_KEY])
            .returns::<Function>(200, "The function"),
        get("/api/v1/datasets", "listDatasets", list_datasets)
            .requires(Action::ReadAssets)
            .summary("datasets", "List datasets (data managers), newest first")
            .params(PAGES)
            .returns::<Paginated<Dataset>>(200, "A page of datasets"),
        post("/api/v1/datasets", "registerDataset", register_dataset)
            .requires(Action::RegisterAssets)
            .summary("datasets", "Register a dataset (data manager)")
            .body::<NewDataset>()
            .returns::<Dataset>(201, "Registered"),
        get("/api/v1/datasets/{key}", "getDataset", get_dataset)
            .requires(Action::ReadAssets)
            .summary("datasets", "Get a dataset, with its sample keys")
            .params(&[DATASET_KEY])
            .returns::<Dataset>(200, "The dataset"),
        get(
            "/api/v1/datasets/{key}/data_samples",
            "listDatasetSamples",
            list_dataset_samples,
        )
        .requires(Action::ReadAssets)
        .summary(
            "datasets",
            "List the data samples of a dataset, in attachment order",
        )
        .params(&[DATASET_KEY, PAGE, PAGE_SIZE])
        .returns::<Paginated<DataSample>>(200, "A page of data samples"),
        post(
            "/api/v1/data_samples",
            "registerDataSamples",
            register_data_samples,
        )
        .requires(Action::RegisterAssets)
        .summary(
            "data samples",
            "Register data samples, attached to datasets",
        )
        .body::<NewDataSamples>()
        .returns::<Vec<DataSample>>(201, "Registered, in the order given"),
        get(
            "/api/v1/data_samples/{key}",
            "getDataSample",
            get_data_sample,
        )
        .requires(Action::ReadAssets)
        .summary("data samples", "Get a data sample")
        .params(&[SAMPLE_KEY])
        .returns::<DataSample>(200, "The data sample"),
    ]
}

/// A 201 with `Location: location` and `body`.
pub(crate) fn created<T: serde::Serialize>(location: String, body: T) -> Response {
    (StatusCode::CREATED, [(LOCATION, location)], Json(body)).into_response()
}

/// The keys of an accepted registration; a refusal becomes the error.
fn accepted_keys(reply: AssetReply) -> Result<Vec<String>, ApiError> {
    match reply {
        AssetReply::Accepted { keys } => Ok(keys),
        AssetReply::Rejected { error, details } => Err(ApiError::refusal(&error, details)),
    }
}

/// The one key of an accepted registration, parsed.
fn accepted_key<K: std::str::FromStr>(reply: AssetReply) -> Result<K, ApiError> {
    let keys = accepted_keys(reply)?;
    keys.first()
        .and_then(|key| key.parse().ok())
        .ok_or_else(|| ApiError::internal(format!("unexpected registration reply keys {keys:?}")))
}

/// A record the dispatcher just registered could not be read back.
fn vanished(what: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("{what} was registered but cannot be read back"))
}

async fn list_organizations(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<Organization>>, ApiError> {
    query.only(PAGES)?;
    let pagination = Pagination::from_query(&query)?;
    let mut conn = state.conn().await?;
    let page = catalog::list_organizations_page(
        &mut conn,
        Some(state.organization()),
        pagination.limit(),
        pagination.offset(),
    )
    .await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn find_organization(
    state: &ApiState,
    id: &OrganizationId,
) -> Result<Organization, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_organization(&mut conn, id, Some(state.organization()))
        .await?
        .ok_or_else(|| ApiError::not_found("id", format!("organization {id}")))
}

async fn get_organization(
    State(state): State<ApiState>,
    Key(id): Key<String>,
    query: Query,
) -> Result<Json<Organization>, ApiError> {
    query.only(&[])?;
    Ok(Json(find_organization(&state, &OrganizationId(id)).await?))
}

async fn register_organization(
    State(state): State<ApiState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    JsonBody(new): JsonBody<NewOrganization>,
) -> Result<Response, ApiError> {
    let reply = state.request(&caller, &new, &idempotency).await?;
    let id = OrganizationId(accepted_key::<String>(reply)?);
    let organization = find_organization(&state, &id)
        .await
        .map_err(|_| vanished(format!("organization {id}")))?;
    Ok(created(format!("/api/v1/organizations/{id}"), organization))
}

async fn list_projects(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<Project>>, ApiError> {
    query.only(PAGES)?;
    let pagination = Pagination::from_query(&query)?;
    let mut conn = state.conn().await?;
    let page =
        catalog::list_projects_page(&mut conn, pagination.limit(), pagination.offset()).await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn find_project(state: &ApiState, identifier: &ProjectId) -> Result<Project, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_project(&mut conn, identifier)
        .await?
        .ok_or_else(|| ApiError::not_found("identifier", format!("project {identifier}")))
}

async fn get_project(
    State(state): State<ApiState>,
    Key(identifier): Key<String>,
    query: Query,
) -> Result<Json<Project>, ApiError> {
    query.only(&[])?;
    Ok(Json(find_project(&state, &ProjectId(identifier)).await?))
}

async fn register_project(
    State(state): State<ApiState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    JsonBody(new): JsonBody<NewProject>,
) -> Result<Response, ApiError> {
    let reply = state.request(&caller, &new, &idempotency).await?;
    let identifier = ProjectId(accepted_key::<String>(reply)?);
    let project = find_project(&state, &identifier)
        .await
        .map_err(|_| vanished(format!("project {identifier}")))?;
    Ok(created(format!("/api/v1/projects/{identifier}"), project))
}

async fn list_functions(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<Function>>, ApiError> {
    query.only(FUNCTION_FILTERS)?;
    let pagination = Pagination::from_query(&query)?;
    let filter = FunctionFilter {
        project: query.get("project").map(ProjectId::from),
        status: query.parse("status")?,
        owner: query.get("owner").map(OrganizationId::from),
    };
    let mut conn = state.conn().await?;
    let page =
        catalog::list_functions_page(&mut conn, &filter, pagination.limit(), pagination.offset())
            .await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn find_function(state: &ApiState, key: FunctionKey) -> Result<Function, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_function(&mut conn, key)
        .await?
        .ok_or_else(|| ApiError::not_found("key", format!("function {key}")))
}

async fn get_function(
    State(state): State<ApiState>,
    Key(key): Key<FunctionKey>,
    query: Query,
) -> Result<Json<Function>, ApiError> {
    query.only(&[])?;
    Ok(Json(find_function(&state, key).await?))
}

async fn register_function(
    State(state): State<ApiState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    JsonBody(new): JsonBody<NewFunction>,
) -> Result<Response, ApiError> {
    let reply = state.request(&caller, &new, &idempotency).await?;
    let key: FunctionKey = accepted_key(reply)?;
    let function = find_function(&state, key)
        .await
        .map_err(|_| vanished(format!("function {key}")))?;
    Ok(created(format!("/api/v1/functions/{key}"), function))
}

async fn list_datasets(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<Dataset>>, ApiError> {
    query.only(PAGES)?;
    let pagination = Pagination::from_query(&query)?;
    let mut conn = state.conn().await?;
    let page =
        catalog::list_datasets_page(&mut conn, pagination.limit(), pagination.offset()).await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn find_dataset(state: &ApiState, key: DatasetKey) -> Result<Dataset, ApiError> {
    let mut conn = state.conn().await?;
    catalog::find_dataset(&mut conn, key)
        .await?
        .ok_or_else(|| ApiError::not_found("key", format!("dataset {key}")))
}

async fn get_dataset(
    State(state): State<ApiState>,
    Key(key): Key<DatasetKey>,
    query: Query,
) -> Result<Json<Dataset>, ApiError> {
    query.only(&[])?;
    Ok(Json(find_dataset(&state, key).await?))
}

async fn register_dataset(
    State(state): State<ApiState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    JsonBody(new): JsonBody<NewDataset>,
) -> Result<Response, ApiError> {
    let reply = state.request(&caller, &new, &idempotency).await?;
    let key: DatasetKey = accepted_key(reply)?;
    let dataset = find_dataset(&state, key)
        .await
        .map_err(|_| vanished(format!("dataset {key}")))?;
    Ok(created(format!("/api/v1/datasets/{key}"), dataset))
}

async fn list_dataset_samples(
    State(state): State<ApiState>,
    Key(key): Key<DatasetKey>,
    query: Query,
) -> Result<Json<Paginated<DataSample>>, ApiError> {
    query.only(PAGES)?;
    let pagination = Pagination::from_query(&query)?;
    // A missing dataset is a 404, not an empty list.
    find_dataset(&state, key).await?;
    let mut conn = state.conn().await?;
    let page =
        catalog::list_dataset_samples_page(&mut conn, key, pagination.limit(), pagination.offset())
            .await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn get_data_sample(
    State(state): State<ApiState>,
    Key(key): Key<DataSampleKey>,
    query: Query,
) -> Result<Json<DataSample>, ApiError> {
    query.only(&[])?;
    let conn = state.conn().await?;
    catalog::find_data_samples(&conn, &[key])
        .await?
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("key", format!("data sample {key}")))
}

async fn register_data_samples(
    State(state): State<ApiState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    JsonBody(new): JsonBody<NewDataSamples>,
) -> Result<Response, ApiError> {
    let reply = state.request(&caller, &new, &idempotency).await?;
    let keys = accepted_keys(reply)?
        .iter()
        .map(|key| key.parse().map(DataSampleKey))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::internal)?;
    let conn = state.conn().await?;
    let mut samples = catalog::find_data_samples(&conn, &keys).await?;
    if samples.len() != keys.len() {
        return Err(vanished("a data sample"));
    }
    samples.sort_by_key(|sample| keys.iter().position(|key| *key == sample.key));
    let location = match keys.first() {
        Some(first) => format!("/api/v1/data_samples/{first}"),
        None => "/api/v1/data_samples".to_owned(),
    };
    Ok(created(location, samples))
}
