//! Authentication and role checks for every route.
//!
//! Each route of the table says what it needs ([`Access`]). Before its handler runs, the
//! request's `Authorization: Bearer <token>` is turned into a [`Principal`] (no header: an
//! anonymous caller with the deployment's anonymous roles, none by default), and the route's
//! [`Action`] is checked against the role table (`models::access`): an anonymous caller that
//! may not gets `401 unauthenticated`, a user that may not `403 forbidden`. A token that does
//! not authenticate (malformed, unknown, expired, revoked) is a `401` with one generic message
//! whatever the cause. Handlers read the principal with the [`Caller`] extractor for the
//! checks that depend on the resource: the owner of a plan, a task's logs permission, a
//! model's process permission.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use dispatcher::auth::AuthError;
use models::OrganizationId;
use models::access::{Action, Principal, Scope};

use crate::error::{ApiError, ErrorKind};
use crate::state::ApiState;

/// What a route needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials: health checks and the API's description.
    Public,
    /// A caller allowed to do the action (by a role, or by being a user for
    /// [`Action::OwnAccount`]).
    Requires(Action),
}

/// The authenticated caller of a request, for handlers.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a handler asked for its caller on a public route"))
    }
}

impl Caller {
    /// Whether the caller may do `action` on what `owner` owns.
    pub fn may(&self, action: Action, owner: &OrganizationId) -> bool {
        self.0.may(action, owner)
    }

    /// The organization the caller's reach is limited to for `action`: its own when its
    /// roles give it only [`Scope::Own`], none when they reach everything.
    pub fn limited_to(&self, action: Action) -> Option<OrganizationId> {
        match self.0.scope(action) {
            Scope::Own => self.0.organization.clone(),
            Scope::All | Scope::None => None,
        }
    }

    /// Whether an asset whose permission is `permission` is shared with the caller (SPEC.md
    /// §3): public, allowing the caller's organization, or the caller an administrator; else
    /// a 403 at `path` saying that `what` is not shared with it.
    pub fn shares(
        &self,
        permission: &models::Permission,
        path: &str,
        what: impl std::fmt::Display,
    ) -> Result<(), ApiError> {
        let organization = self.0.organization.as_ref();
        if self.0.has_role(models::Role::Administrator)
            || permission.public
            || organization.is_some_and(|org| permission.allows(org))
        {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorKind::Forbidden,
            path,
            format!(
                "{what} is not shared with {}",
                organization.map_or("anonymous callers", |org| org.as_str())
            ),
        ))
    }

    /// The error for a caller that may not do `action`: 401 for an anonymous caller, 403
    /// for a user.
    pub fn refusal(&self, action: Action, owner: Option<&OrganizationId>) -> ApiError {
        let (_, message) = dispatcher::auth::refusal(&self.0, action, owner).unwrap_or((
            dispatcher::auth::FORBIDDEN,
            format!("user {} may not {}", self.0.name(), action.describe()),
        ));
        if self.0.user.is_none() {
            ApiError::new(ErrorKind::Unauthenticated, "Authorization", message)
        } else {
            ApiError::new(ErrorKind::Forbidden, "", message)
        }
    }
}

/// The message every failed authentication gets.
const INVALID_CREDENTIALS: &str = "invalid credentials";

/// The token of an `Authorization: Bearer` header; `Ok(None)` without the header.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::new(
            ErrorKind::Unauthenticated,
            "Authorization",
            "expected `Authorization: Bearer <token>`",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(invalid());
    }
    Ok(Some(token.trim()))
}

/// The principal a request's credentials authenticate as, and whether it presented a token.
pub(crate) async fn principal_of(
    state: &ApiState,
    parts: &Parts,
) -> Result<(Principal, bool), ApiError> {
    let Some(token) = bearer(parts)? else {
        return Ok((
            Principal::anonymous(state.anonymous_roles().to_vec()),
            false,
        ));
    };
    let mut conn = state.conn().await?;
    match dispatcher::auth::authenticate_token(
        &mut conn,
        token,
        chrono::Utc::now(),
        state.anonymous_roles(),
    )
    .await
    {
        Ok(principal) => Ok((principal, true)),
        Err(AuthError::Store(error)) => Err(error.into()),
        Err(_) => Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "Authorization",
            INVALID_CREDENTIALS,
        )),
    }
}

/// The middleware in front of every route that is not [`Access::Public`]: authenticates,
/// checks the route's action, and hands the [`Caller`] to the handler.
pub(crate) async fn authorize(
    State(state): State<ApiState>,
    action: Action,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let (principal, presented_token) = match principal_of(&state, &parts).await {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let caller = Caller(principal);
    if caller.0.scope(action) == Scope::None {
        // A token of a disabled user authenticates as an anonymous caller: refused, it gets
        // the answer every token that does not authenticate gets, so nobody learns that it
        // is otherwise valid.
        if presented_token && caller.0.user.is_none() {
            return ApiError::new(
                ErrorKind::Unauthenticated,
                "Authorization",
                INVALID_CREDENTIALS,
            )
            .into_response();
        }
        return caller.refusal(action, None).into_response();
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}
