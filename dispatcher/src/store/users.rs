//! Queries on users and their credentials beyond registration (which is in [`super::catalog`]):
//! listing and changing users, finding, replacing and revoking credentials.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use models::{Credential, CredentialId, CredentialKind, Role, User, UserId};

use super::rows::{CredentialRow, UserRow};
use super::schema::{credentials, users};
use super::{Page, StoreError, StoreResult};
use crate::auth::HashedPassword;

/// Users by identifier: `limit` rows after skipping `offset`, with how many there are in all.
pub async fn list_users(
    conn: &mut AsyncPgConnection,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<User>> {
    let total = users::table.count().get_result(conn).await?;
    let rows = users::table
        .order(users::identifier)
        .limit(limit)
        .offset(offset)
        .select(UserRow::as_select())
        .load(conn)
        .await?
        .into_iter()
        .map(UserRow::into_model)
        .collect::<StoreResult<_>>()?;
    Ok(Page { rows, total })
}

/// What may change on a user; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserChange {
    /// A new display name.
    pub display_name: Option<String>,
    /// New roles, replacing the old ones.
    pub roles: Option<Vec<Role>>,
    /// Enable or disable.
    pub is_enabled: Option<bool>,
}

/// Applies `change` to `identifier` at `now` and answers the user as it is now, or `None` when
/// there is no such user.
pub async fn update_user(
    conn: &mut AsyncPgConnection,
    identifier: &UserId,
    change: &UserChange,
    now: DateTime<Utc>,
) -> StoreResult<Option<User>> {
    let Some(mut user) = super::catalog::find_user(conn, identifier).await? else {
        return Ok(None);
    };
    if let Some(name) = &change.display_name {
        user.display_name.clone_from(name);
    }
    if let Some(roles) = &change.roles {
        user.roles.clone_from(roles);
    }
    if let Some(enabled) = change.is_enabled {
        user.is_enabled = enabled;
    }
    user.update_date = now;
    let row = UserRow::from_model(&user);
    diesel::update(users::table.find(identifier.as_str()))
        .set((
            users::display_name.eq(&row.display_name),
            users::roles.eq(&row.roles),
            users::is_enabled.eq(row.is_enabled),
            users::update_date.eq(row.update_date),
        ))
        .execute(conn)
        .await?;
    Ok(Some(user))
}

/// The credential `identifier`, whoever it belongs to.
pub async fn find_credential(
    conn: &mut AsyncPgConnection,
    identifier: CredentialId,
) -> StoreResult<Option<Credential>> {
    credentials::table
        .find(identifier.0)
        .select(CredentialRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(CredentialRow::into_model)
        .transpose()
}

/// The password credential of `user`, if it has one.
pub async fn password_of(
    conn: &mut AsyncPgConnection,
    user: &UserId,
) -> StoreResult<Option<Credential>> {
    credentials::table
        .filter(credentials::user_identifier.eq(user.as_str()))
        .filter(credentials::kind.eq(CredentialKind::Password.as_str()))
        .select(CredentialRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(CredentialRow::into_model)
        .transpose()
}

/// Sets `user`'s password to `credential`, replacing the one it had, in one transaction.
pub async fn set_password(
    conn: &mut AsyncPgConnection,
    credential: &Credential,
) -> StoreResult<()> {
    let row = CredentialRow::from_model(credential);
    conn.transaction::<_, StoreError, _>(async |conn| {
        diesel::delete(
            credentials::table
                .filter(credentials::user_identifier.eq(&row.user_identifier))
                .filter(credentials::kind.eq(CredentialKind::Password.as_str())),
        )
        .execute(conn)
        .await?;
        diesel::insert_into(credentials::table)
            .values(&row)
            .execute(conn)
            .await?;
        Ok(())
    })
    .await
}

/// Stores `hashed` as password credential `identifier`'s new protected form (a rehash with
/// newer parameters).
pub async fn replace_password_hash(
    conn: &mut AsyncPgConnection,
    identifier: CredentialId,
    hashed: &HashedPassword,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let parameters = serde_json::to_value(hashed.params).map_err(|error| StoreError::Encode {
        what: "password parameters",
        reason: error.to_string(),
    })?;
    diesel::update(credentials::table.find(identifier.0))
        .set((
            credentials::hash_function_parameters.eq(parameters),
            credentials::hash_function_salt.eq(Some(&hashed.salt)),
            credentials::secret.eq(hashed.hash.expose()),
            credentials::update_date.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The tokens of `user`, oldest first (their protected secrets included: callers show only
/// metadata).
pub async fn tokens_of(
    conn: &mut AsyncPgConnection,
    user: &UserId,
) -> StoreResult<Vec<Credential>> {
    Ok(super::catalog::list_credentials(conn, user)
        .await?
        .into_iter()
        .filter(|credential| credential.kind == CredentialKind::Token)
        .collect())
}

/// Revokes token `identifier` of `user` at `now`. Answers the token as it is now, or `None`
/// when `user` has no such token; revoking twice keeps the first date.
pub async fn revoke_token(
    conn: &mut AsyncPgConnection,
    user: &UserId,
    identifier: CredentialId,
    now: DateTime<Utc>,
) -> StoreResult<Option<Credential>> {
    let owned = credentials::table
        .find(identifier.0)
        .filter(credentials::user_identifier.eq(user.as_str()))
        .filter(credentials::kind.eq(CredentialKind::Token.as_str()));
    diesel::update(owned.filter(credentials::revocation_date.is_null()))
        .set((
            credentials::revocation_date.eq(Some(now)),
            credentials::update_date.eq(now),
        ))
        .execute(conn)
        .await?;
    owned
        .select(CredentialRow::as_select())
        .first(conn)
        .await
        .optional()?
        .map(CredentialRow::into_model)
        .transpose()
}
