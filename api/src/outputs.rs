//! What tasks produce: models (metadata and file download).
//!
//! A model's file is streamed from the local artifact store, never read whole into memory, and
//! only from under the store's root.

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use axum::response::{IntoResponse, Response};

use dispatcher::store::execution::{self, ModelFilter};
use models::{Model, ModelKey, PlanKey, TaskKey};

use models::access::Action;

use crate::artifacts::{self, ArtifactError};
use crate::auth::Caller;
use crate::error::{ApiError, ErrorKind};
use crate::extract::{Key, Query};
use crate::pagination::{PAGE, PAGE_SIZE, Paginated, Pagination};
use crate::routes::{Body, Param, Route, get};
use crate::state::ApiState;

const MODEL_KEY: Param = Param::path::<uuid::Uuid>("key", "The model's key.");

const MODEL_FILTERS: &[Param] = &[
    PAGE,
    PAGE_SIZE,
    Param::query::<uuid::Uuid>("compute_plan_key", "Only models of this plan's tasks."),
    Param::query::<uuid::Uuid>("compute_task_key", "Only models of this task."),
];

/// The header carrying a downloaded file's SHA-256, to verify it against.
pub(crate) const CHECKSUM_HEADER: &str = "x-checksum-sha256";

/// The routes of this module.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/api/v1/models", "listModels", list_models)
            .requires(Action::ReadAssets)
            .summary("models", "List models, oldest first")
            .params(MODEL_FILTERS)
            .returns::<Paginated<Model>>(200, "A page of models"),
        get("/api/v1/models/{key}", "getModel", get_model)
            .requires(Action::ReadAssets)
            .summary("models", "Get a model's metadata")
            .params(&[MODEL_KEY])
            .returns::<Model>(200, "The model"),
        get(
            "/api/v1/models/{key}/download",
            "downloadModel",
            download_model,
        )
        .requires(Action::DownloadModels)
        .summary(
            "models",
            "Download a model's file; its SHA-256 is in `X-Checksum-Sha256` and the ETag",
        )
        .params(&[MODEL_KEY])
        .returns_body(200, "The file", Body::Binary),
    ]
}

async fn list_models(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<Model>>, ApiError> {
    query.only(MODEL_FILTERS)?;
    let pagination = Pagination::from_query(&query)?;
    let filter = ModelFilter {
        compute_plan_key: query.parse::<uuid::Uuid>("compute_plan_key")?.map(PlanKey),
        compute_task_key: query.parse::<uuid::Uuid>("compute_task_key")?.map(TaskKey),
    };
    let mut conn = state.conn().await?;
    let page =
        execution::list_models_page(&mut conn, &filter, pagination.limit(), pagination.offset())
            .await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

async fn find_model(state: &ApiState, key: ModelKey) -> Result<Model, ApiError> {
    let mut conn = state.conn().await?;
    execution::find_model(&mut conn, key)
        .await?
        .ok_or_else(|| ApiError::not_found("key", format!("model {key}")))
}

async fn get_model(
    State(state): State<ApiState>,
    Key(key): Key<ModelKey>,
    query: Query,
) -> Result<Json<Model>, ApiError> {
    query.only(&[])?;
    Ok(Json(find_model(&state, key).await?))
}

async fn download_model(
    State(state): State<ApiState>,
    caller: Caller,
    Key(key): Key<ModelKey>,
    query: Query,
) -> Result<Response, ApiError> {
    query.only(&[])?;
    let model = find_model(&state, key).await?;
    // SPEC.md §3: downloading needs the model's process permission, whatever the role.
    caller.shares(
        &model.permissions.process,
        "key",
        format_args!("model {key}"),
    )?;
    let Some(file) = model.address else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            "key",
            format!("model {key} was disabled: its file was deleted"),
        ));
    };
    let opened = match artifacts::open(state.artifacts(), &file.storage_address).await {
        Ok(opened) => opened,
        Err(ArtifactError::NotFound { .. }) => {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "key",
                format!("the file of model {key} is not in the artifact store"),
            ));
        }
        Err(error @ ArtifactError::Refused { .. }) => {
            // A stored address the store would never have written: say so in the log only.
            tracing::warn!("not serving the file of model {key}: {error}");
            return Err(ApiError::new(
                ErrorKind::NotFound,
                "key",
                format!("the file of model {key} is not in the artifact store"),
            ));
        }
        Err(error @ ArtifactError::Io { .. }) => return Err(ApiError::internal(error)),
    };
    let stream = tokio_util::io::ReaderStream::new(opened.file);
    let headers = [
        (CONTENT_TYPE, "application/octet-stream".to_owned()),
        (CONTENT_LENGTH, opened.size.to_string()),
        (
            CONTENT_DISPOSITION,
            format!("attachment; filename=\"model-{key}\""),
        ),
        (ETAG, format!("\"{}\"", file.checksum)),
    ];
    Ok((
        headers,
        [(CHECKSUM_HEADER, file.checksum)],
        HttpBody::from_stream(stream),
    )
        .into_response())
}
