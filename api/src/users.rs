//! Users, their passwords and their API tokens; logging in.
//!
//! These are not dispatcher events: they are written to PostgreSQL directly, each in one
//! statement or transaction. A user may read itself and manage its own password and tokens;
//! reading others needs `read_users`, changing them `manage_users` (administrators). No
//! response ever holds a secret, a salt or a hash, except the one that creates a token, which
//! shows that token once.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use dispatcher::auth::{self, AuthError, PasswordParams};
use dispatcher::store::{StoreError, catalog, users};
use models::access::Action;
use models::{Credential, CredentialId, OrganizationId, Role, User, UserId};

use crate::auth::Caller;
use crate::catalog::created;
use crate::error::{ApiError, ErrorKind};
use crate::extract::{JsonBody, Query};
use crate::pagination::{PAGE, PAGE_SIZE, Paginated, Pagination};
use crate::routes::{Param, Route, get, post};
use crate::state::ApiState;

const USER_ID: Param = Param::path::<String>("identifier", "The user's identifier.");
const TOKEN_ID: Param = Param::path::<uuid::Uuid>("token", "The token's identifier.");
const PAGES: &[Param] = &[PAGE, PAGE_SIZE];

/// How long a token made by logging in lasts unless the request says otherwise.
pub(crate) const LOGIN_TOKEN_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// The longest lifetime a token may be given, in seconds (ten years).
pub(crate) const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// The longest display name accepted, in characters.
pub(crate) const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// A token as listed: what it is for and when it ends, never its secret or hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    /// Its identifier (also the middle part of the token's text).
    pub identifier: uuid::Uuid,
    /// The user it authenticates.
    pub user: UserId,
    /// What it is for.
    pub description: Option<String>,
    /// After this time it no longer authenticates.
    pub expiration_date: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revocation_date: Option<DateTime<Utc>>,
    /// When it was made.
    pub creation_date: DateTime<Utc>,
}

impl From<&Credential> for TokenInfo {
    fn from(credential: &Credential) -> Self {
        TokenInfo {
            identifier: credential.identifier.0,
            user: credential.user.clone(),
            description: credential.description.clone(),
            expiration_date: credential.expiration_date,
            revocation_date: credential.revocation_date,
            creation_date: credential.creation_date,
        }
    }
}

/// A token just made: its text, shown this once, and its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IssuedToken {
    /// The token: send it as `Authorization: Bearer <token>`. It is not stored and cannot be
    /// shown again.
    pub token: String,
    /// Its metadata.
    pub info: TokenInfo,
}

/// A token to make.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What it is for (at most 200 characters).
    #[serde(default)]
    pub description: Option<String>,
    /// Seconds it lasts; it never expires when left out.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A login: a user's identifier and password, for a token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The user.
    pub identifier: String,
    /// Its password.
    pub password: String,
    /// What the token is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Seconds the token lasts (default a week).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("identifier", &self.identifier)
            .finish_non_exhaustive()
    }
}

/// A user to create.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Its identifier, matching `^[a-zA-Z0-9_.-]{3,32}$`.
    pub identifier: String,
    /// Its full name (default: the identifier).
    #[serde(default)]
    pub display_name: Option<String>,
    /// The organization it acts for.
    pub organization: OrganizationId,
    /// Its roles.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Whether it may authenticate (default true).
    #[serde(default)]
    pub is_enabled: Option<bool>,
    /// Its first password, if it logs in with one.
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("identifier", &self.identifier)
            .field("organization", &self.organization)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// Changes to a user; what is left out stays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// A new full name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// New roles, replacing the old ones.
    #[serde(default)]
    pub roles: Option<Vec<Role>>,
    /// Enable or disable it.
    #[serde(default)]
    pub is_enabled: Option<bool>,
}

/// A new password. A user changing its own gives the current one too; an administrator
/// setting another's does not.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The new password (8 characters to 1024 bytes).
    pub password: String,
    /// The current password, when changing one's own.
    #[serde(default)]
    pub current_password: Option<String>,
}

impl std::fmt::Debug for PasswordChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordChange(<redacted>)")
    }
}

/// The routes of this module.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        post("/api/v1/login", "login", login)
            .public()
            .summary(
                "users",
                "Log in with a password, for a token (the same error whatever is wrong)",
            )
            .body::<Login>()
            .returns::<IssuedToken>(201, "A token, shown this once"),
        get("/api/v1/me", "getMe", get_me)
            .requires(Action::OwnAccount)
            .summary("users", "The authenticated user")
            .returns::<User>(200, "The user"),
        get("/api/v1/users", "listUsers", list_users)
            .requires(Action::ReadUsers)
            .summary("users", "List users, by identifier")
            .params(PAGES)
            .returns::<Paginated<User>>(200, "A page of users"),
        post("/api/v1/users", "createUser", create_user)
            .requires(Action::ManageUsers)
            .summary("users", "Create a user")
            .body::<NewUser>()
            .returns::<User>(201, "Created"),
        get("/api/v1/users/{identifier}", "getUser", get_user)
            .requires(Action::OwnAccount)
            .summary("users", "Get a user (oneself, or anyone with read_users)")
            .params(&[USER_ID])
            .returns::<User>(200, "The user"),
        post("/api/v1/users/{identifier}", "updateUser", update_user)
            .requires(Action::ManageUsers)
            .summary("users", "Change a user's name, roles or enabled flag")
            .params(&[USER_ID])
            .body::<UserUpdate>()
            .returns::<User>(200, "The user as it is now"),
        post(
            "/api/v1/users/{identifier}/password",
            "setPassword",
            set_password,
        )
        .requires(Action::OwnAccount)
        .summary(
            "users",
            "Set a user's password (one's own with the current one, or anyone's with \
             manage_users)",
        )
        .params(&[USER_ID])
        .body::<PasswordChange>()
        .returns_schema(200, "Set", |_| schemars::json_schema!({"type": "object"})),
        get(
            "/api/v1/users/{identifier}/tokens",
            "listTokens",
            list_tokens,
        )
        .requires(Action::OwnAccount)
        .summary(
            "users",
            "List a user's tokens, without their secrets (one's own, or anyone's with read_users)",
        )
        .params(&[USER_ID])
        .returns::<Vec<TokenInfo>>(200, "Its tokens, oldest first"),
        post(
            "/api/v1/users/{identifier}/tokens",
            "createToken",
            create_token,
        )
        .requires(Action::OwnAccount)
        .summary(
            "users",
            "Make a token (for oneself, or anyone with manage_users); it is shown once",
        )
        .params(&[USER_ID])
        .body::<NewToken>()
        .returns::<IssuedToken>(201, "The token, shown this once"),
        post(
            "/api/v1/users/{identifier}/tokens/{token}/revoke",
            "revokeToken",
            revoke_token,
        )
        .requires(Action::OwnAccount)
        .summary(
            "users",
            "Revoke a token (one's own, or anyone's with manage_users); it never authenticates \
             again",
        )
        .params(&[USER_ID, TOKEN_ID])
        .returns::<TokenInfo>(200, "The token as it is now"),
    ]
}

/// Whether `caller` may act on user `identifier` with `action` (reading or managing others),
/// or is that user itself.
fn on_user(caller: &Caller, identifier: &UserId, others: Action) -> Result<(), ApiError> {
    if caller.0.user.as_ref() == Some(identifier)
        || caller.0.scope(others) != models::access::Scope::None
    {
        Ok(())
    } else {
        Err(caller.refusal(others, None))
    }
}

fn user_id(text: String) -> Result<UserId, ApiError> {
    match models::user::identifier_problem(&text) {
        Some(problem) => Err(ApiError::invalid("identifier", problem)),
        None => Ok(UserId(text)),
    }
}

async fn find_user(state: &ApiState, identifier: &UserId) -> Result<User, ApiError> {
    let conn = state.conn().await?;
    catalog::find_user(&conn, identifier)
        .await?
        .ok_or_else(|| ApiError::not_found("identifier", format!("user {identifier}")))
}

fn auth_error(error: AuthError, path: &str) -> ApiError {
    match error {
        AuthError::Refused => {
            ApiError::new(ErrorKind::Unauthenticated, path, "invalid credentials")
        }
        AuthError::Invalid(message) => ApiError::invalid(path, message),
        AuthError::Store(error) => error.into(),
        AuthError::Random(message) => ApiError::internal(message),
    }
}

/// The expiry of a token asked to last `secs` from `now`.
fn expiry(secs: Option<u64>, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match secs {
        None => Ok(None),
        Some(0) => Err(ApiError::invalid("expires_in_secs", "must be at least 1")),
        Some(secs) if secs > MAX_TOKEN_LIFETIME_SECS => Err(ApiError::invalid(
            "expires_in_secs",
            format!("must be at most {MAX_TOKEN_LIFETIME_SECS}"),
        )),
        Some(secs) => Ok(Some(
            now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX)),
        )),
    }
}

/// Makes and stores a token for `user`.
async fn issue(
    state: &ApiState,
    user: &UserId,
    description: Option<String>,
    expiration_date: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<IssuedToken, ApiError> {
    let (credential, text) = auth::new_token(user, description, expiration_date, now)
        .map_err(|error| auth_error(error, "description"))?;
    let mut conn = state.conn().await?;
    catalog::insert_credential(&mut conn, &credential).await?;
    Ok(IssuedToken {
        token: text.expose().to_owned(),
        info: TokenInfo::from(&credential),
    })
}

async fn login(
    State(state): State<ApiState>,
    query: Query,
    JsonBody(login): JsonBody<Login>,
) -> Result<Response, ApiError> {
    query.only(&[])?;
    let now = Utc::now();
    let expiration = expiry(
        Some(login.expires_in_secs.unwrap_or(LOGIN_TOKEN_LIFETIME_SECS)),
        now,
    )?;
    // An identifier that cannot exist is refused like a wrong password, after the same work.
    let user = match models::user::identifier_problem(&login.identifier) {
        None => auth::login(
            state.pool(),
            &UserId(login.identifier.clone()),
            &login.password,
            now,
        )
        .await
        .map_err(|error| auth_error(error, ""))?,
        Some(_) => {
            let password = login.password.clone();
            let _ =
                tokio::task::spawn_blocking(move || auth::spend_a_password_check(&password)).await;
            return Err(auth_error(AuthError::Refused, ""));
        }
    };
    let description = login.description.or(Some("login".to_owned()));
    let issued = issue(&state, &user.identifier, description, expiration, now).await?;
    tracing::info!(user = %user.identifier, "user logged in");
    Ok(created(
        format!(
            "/api/v1/users/{}/tokens/{}",
            user.identifier, issued.info.identifier
        ),
        issued,
    ))
}

async fn get_me(
    State(state): State<ApiState>,
    caller: Caller,
    query: Query,
) -> Result<Json<User>, ApiError> {
    query.only(&[])?;
    let Some(identifier) = caller.0.user.clone() else {
        return Err(caller.refusal(Action::OwnAccount, None));
    };
    Ok(Json(find_user(&state, &identifier).await?))
}

async fn list_users(
    State(state): State<ApiState>,
    query: Query,
) -> Result<Json<Paginated<User>>, ApiError> {
    query.only(PAGES)?;
    let pagination = Pagination::from_query(&query)?;
    let mut conn = state.conn().await?;
    let page = users::list_users(&mut conn, pagination.limit(), pagination.offset()).await?;
    Ok(Json(pagination.page_of(page.total, page.rows)))
}

fn display_name(name: Option<String>, default: &str) -> Result<String, ApiError> {
    let name = name.unwrap_or_else(|| default.to_owned());
    if name.trim().is_empty() || name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::invalid(
            "display_name",
            format!("must be 1 to {MAX_DISPLAY_NAME_CHARS} characters long"),
        ));
    }
    Ok(name)
}

async fn create_user(
    State(state): State<ApiState>,
    query: Query,
    JsonBody(new): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    query.only(&[])?;
    let identifier = user_id(new.identifier.clone())?;
    let now = Utc::now();
    let user = User {
        display_name: display_name(new.display_name.clone(), &new.identifier)?,
        identifier: identifier.clone(),
        organization: new.organization.clone(),
        roles: new.roles.clone(),
        is_enabled: new.is_enabled.unwrap_or(true),
        creation_date: now,
        update_date: now,
    };
    let password = match new.password.clone() {
        Some(password) => Some(
            tokio::task::spawn_blocking(move || {
                auth::hash_password(&password, PasswordParams::CURRENT)
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(|error| auth_error(error, "password"))?,
        ),
        None => None,
    };
    let mut conn = state.conn().await?;
    if catalog::find_organization(&mut conn, &new.organization, None)
        .await?
        .is_none()
    {
        return Err(ApiError::invalid(
            "organization",
            format!("organization {} is not registered", new.organization),
        ));
    }
    match catalog::insert_user(&mut conn, &user).await {
        Ok(()) => {}
        Err(StoreError::Duplicate { .. }) => {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                "identifier",
                format!("user {identifier} already exists"),
            ));
        }
        Err(error) => return Err(error.into()),
    }
    if let Some(hashed) = password {
        users::set_password(
            &mut conn,
            &auth::password_credential(&identifier, &hashed, now),
        )
        .await?;
    }
    tracing::info!(user = %identifier, roles = ?user.roles, "user created");
    Ok(created(format!("/api/v1/users/{identifier}"), user))
}

async fn get_user(
    State(state): State<ApiState>,
    caller: Caller,
    Path(identifier): Path<String>,
    query: Query,
) -> Result<Json<User>, ApiError> {
    query.only(&[])?;
    let identifier = user_id(identifier)?;
    on_user(&caller, &identifier, Action::ReadUsers)?;
    Ok(Json(find_user(&state, &identifier).await?))
}

async fn update_user(
    State(state): State<ApiState>,
    Path(identifier): Path<String>,
    query: Query,
    JsonBody(update): JsonBody<UserUpdate>,
) -> Result<Json<User>, ApiError> {
    query.only(&[])?;
    let identifier = user_id(identifier)?;
    let change = users::UserChange {
        display_name: update
            .display_name
            .map(|name| display_name(Some(name), ""))
            .transpose()?,
        roles: update.roles,
        is_enabled: update.is_enabled,
    };
    let mut conn = state.conn().await?;
    let user = users::update_user(&mut conn, &identifier, &change, Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("identifier", format!("user {identifier}")))?;
    tracing::info!(user = %identifier, roles = ?user.roles, enabled = user.is_enabled, "user changed");
    Ok(Json(user))
}

async fn set_password(
    State(state): State<ApiState>,
    caller: Caller,
    Path(identifier): Path<String>,
    query: Query,
    JsonBody(change): JsonBody<PasswordChange>,
) -> Result<Json<serde_json::Value>, ApiError> {
    query.only(&[])?;
    let identifier = user_id(identifier)?;
    let manager = caller.0.scope(Action::ManageUsers) != models::access::Scope::None;
    on_user(&caller, &identifier, Action::ManageUsers)?;
    find_user(&state, &identifier).await?;
    let now = Utc::now();
    if !manager {
        // Changing one's own password needs the current one (when there is one).
        let has_password = {
            let mut conn = state.conn().await?;
            users::password_of(&mut conn, &identifier).await?.is_some()
        };
        if has_password {
            let current = change.current_password.clone().unwrap_or_default();
            auth::login(state.pool(), &identifier, &current, now)
                .await
                .map_err(|error| match error {
                    // The caller is authenticated: a wrong current password is a refusal of
                    // the change, not of the caller.
                    AuthError::Refused => ApiError::new(
                        ErrorKind::Forbidden,
                        "current_password",
                        "the current password is not right",
                    ),
                    other => auth_error(other, "current_password"),
                })?;
        }
    }
    let password = change.password.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        auth::hash_password(&password, PasswordParams::CURRENT)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|error| auth_error(error, "password"))?;
    let mut conn = state.conn().await?;
    users::set_password(
        &mut conn,
        &auth::password_credential(&identifier, &hashed, now),
    )
    .await?;
    tracing::info!(user = %identifier, by = caller.0.name(), "password set");
    Ok(Json(serde_json::json!({})))
}

async fn list_tokens(
    State(state): State<ApiState>,
    caller: Caller,
    Path(identifier): Path<String>,
    query: Query,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    query.only(&[])?;
    let identifier = user_id(identifier)?;
    on_user(&caller, &identifier, Action::ReadUsers)?;
    find_user(&state, &identifier).await?;
    let mut conn = state.conn().await?;
    let tokens = users::tokens_of(&mut conn, &identifier).await?;
    Ok(Json(tokens.iter().map(TokenInfo::from).collect()))
}

async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    Path(identifier): Path<String>,
    query: Query,
    JsonBody(new): JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    query.only(&[])?;
    let identifier = user_id(identifier)?;
    on_user(&caller, &identifier, Action::ManageUsers)?;
    find_user(&state, &identifier).await?;
    let now = Utc::now();
    let issued = issue(
        &state,
        &identifier,
        new.description,
        expiry(new.expires_in_secs, now)?,
        now,
    )
    .await?;
    tracing::info!(user = %identifier, by = caller.0.name(), token = %issued.info.identifier, "token made");
    Ok(created(
        format!(
            "/api/v1/users/{identifier}/tokens/{}",
            issued.info.identifier
        ),
        issued,
    ))
}

async fn revoke_token(
    State(state): State<ApiState>,
    caller: Caller,
    Path((identifier, token)): Path<(String, String)>,
    query: Query,
) -> Result<Json<TokenInfo>, ApiError> {
    query.only(&[])?;
    let identifier = user_id(identifier)?;
    let token = uuid::Uuid::try_parse(&token)
        .map_err(|error| ApiError::invalid("token", format!("not a UUID: {error}")))?;
    on_user(&caller, &identifier, Action::ManageUsers)?;
    let mut conn = state.conn().await?;
    let revoked = users::revoke_token(&mut conn, &identifier, CredentialId(token), Utc::now())
        .await?
        .ok_or_else(|| {
            ApiError::not_found("token", format!("token {token} of user {identifier}"))
        })?;
    tracing::info!(user = %identifier, by = caller.0.name(), %token, "token revoked");
    Ok(Json(TokenInfo::from(&revoked)))
}
