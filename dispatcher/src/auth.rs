//! Authentication: passwords hashed with argon2id, API tokens, and turning either into a
//! [`Principal`] (SPEC.md §2).
//!
//! - A password is hashed with argon2id at [`PasswordParams::CURRENT`] (OWASP's minimum: 19 MiB,
//!   2 iterations, parallelism 1), under a fresh 16-byte salt each time it is set. The
//!   parameters and the salt are recorded on the credential, so a stored hash is always verified
//!   with its own parameters, and a successful login rehashes it when they are not the current
//!   ones.
//! - A token is 32 bytes from the operating system's CSPRNG, shown once as
//!   `baton_<credential id>_<secret>` (hex). Only the SHA-256 of the secret is stored; a token
//!   is looked up by its credential id and its digest compared in constant time.
//! - Every refusal is the same [`AuthError::Refused`]: an unknown user, a wrong password, a
//!   disabled user, an expired, revoked or malformed token cannot be told apart, and an unknown
//!   user's login costs the same argon2 work as a known one's.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use models::access::Principal;
use models::{Credential, CredentialId, CredentialKind, Role, Secret, User, UserId};

use crate::store::{self, StoreError, catalog, users};

/// The longest password accepted, in bytes: argon2's cost must not be a denial-of-service lever.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// What every token starts with, so that scanners and people recognize one.
pub const TOKEN_PREFIX: &str = "baton_";

/// The longest token description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 200;

const SALT_BYTES: usize = 16;
const TOKEN_SECRET_BYTES: usize = 32;
const ARGON2ID: &str = "argon2id";
const SHA256: &str = "sha256";

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credentials do not authenticate anyone: one message for every cause, so that a
    /// caller learns nothing about which users exist.
    #[error("invalid credentials")]
    Refused,
    /// A new password or token request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The system's random number generator failed.
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

/// argon2id's parameters, as recorded on a password credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordParams {
    /// Memory, in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Length of the hash, in bytes.
    pub output_len: usize,
}

impl PasswordParams {
    /// What new passwords are hashed with: OWASP's minimum for argon2id.
    pub const CURRENT: PasswordParams = PasswordParams {
        m_cost: 19_456,
        t_cost: 2,
        p_cost: 1,
        output_len: 32,
    };

    fn argon2(self) -> Result<Argon2<'static>, AuthError> {
        let params = Params::new(self.m_cost, self.t_cost, self.p_cost, Some(self.output_len))
            .map_err(|error| AuthError::Invalid(format!("argon2 parameters: {error}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// A password in protected form, ready to be stored on a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct HashedPassword {
    /// The parameters it was hashed with.
    pub params: PasswordParams,
    /// The salt, as hex.
    pub salt: String,
    /// The hash, as hex.
    pub hash: Secret,
}

impl fmt::Debug for HashedPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashedPassword")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| AuthError::Random(error.to_string()))?;
    Ok(bytes)
}

/// Why `password` may not be set, if it may not.
pub fn password_problem(password: &str) -> Option<String> {
    if password.len() > MAX_PASSWORD_BYTES {
        Some(format!("a password has at most {MAX_PASSWORD_BYTES} bytes"))
    } else if password.chars().count() < MIN_PASSWORD_CHARS {
        Some(format!(
            "a password has at least {MIN_PASSWORD_CHARS} characters"
        ))
    } else {
        None
    }
}

/// Hashes `password` under a fresh salt with `params`. CPU-bound (tens of milliseconds): call it
/// from a blocking thread.
pub fn hash_password(password: &str, params: PasswordParams) -> Result<HashedPassword, AuthError> {
    if let Some(problem) = password_problem(password) {
        return Err(AuthError::Invalid(problem));
    }
    let salt = random_bytes::<SALT_BYTES>()?;
    let mut hash = vec![0u8; params.output_len];
    params
        .argon2()?
        .hash_password_into(password.as_bytes(), &salt, &mut hash)
        .map_err(|error| AuthError::Invalid(format!("argon2: {error}")))?;
    Ok(HashedPassword {
        params,
        salt: hex::encode(salt),
        hash: Secret(hex::encode(hash)),
    })
}

/// The outcome of checking a password against a stored credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordCheck {
    /// It does not match (or the credential is not a usable argon2id password).
    Mismatch,
    /// It matches; `rehash` when the credential's parameters are not
    /// [`PasswordParams::CURRENT`].
    Match {
        /// Whether to store it again with the current parameters.
        rehash: bool,
    },
}

/// Checks `password` against `credential` with the credential's own parameters and salt,
/// comparing in constant time. CPU-bound: call it from a blocking thread.
pub fn verify_password(credential: &Credential, password: &str) -> PasswordCheck {
    if credential.kind != CredentialKind::Password
        || credential.hash_function != ARGON2ID
        || password.len() > MAX_PASSWORD_BYTES
    {
        return PasswordCheck::Mismatch;
    }
    let Ok(params) =
        serde_json::from_value::<PasswordParams>(credential.hash_function_parameters.clone())
    else {
        return PasswordCheck::Mismatch;
    };
    let (Some(salt), Ok(stored)) = (
        credential
            .hash_function_salt
            .as_deref()
            .and_then(|salt| hex::decode(salt).ok()),
        hex::decode(credential.secret.expose()),
    ) else {
        return PasswordCheck::Mismatch;
    };
    let Ok(argon2) = params.argon2() else {
        return PasswordCheck::Mismatch;
    };
    let mut computed = vec![0u8; params.output_len];
    if argon2
        .hash_password_into(password.as_bytes(), &salt, &mut computed)
        .is_err()
        || !bool::from(computed.ct_eq(&stored))
    {
        return PasswordCheck::Mismatch;
    }
    PasswordCheck::Match {
        rehash: params != PasswordParams::CURRENT,
    }
}

/// Spends the work of one password check on nothing, so that a login for an unknown user
/// takes as long as one with a wrong password.
pub fn spend_a_password_check(password: &str) {
    let params = PasswordParams::CURRENT;
    if let Ok(argon2) = params.argon2() {
        let mut sink = vec![0u8; params.output_len];
        let password = &password.as_bytes()[..password.len().min(MAX_PASSWORD_BYTES)];
        let _ = argon2.hash_password_into(password, &[0u8; SALT_BYTES], &mut sink);
    }
}

/// The password credential of `user` holding `hashed`.
pub fn password_credential(
    user: &UserId,
    hashed: &HashedPassword,
    now: DateTime<Utc>,
) -> Credential {
    Credential {
        identifier: CredentialId(uuid::Uuid::now_v7()),
        user: user.clone(),
        kind: CredentialKind::Password,
        hash_function: ARGON2ID.to_owned(),
        hash_function_parameters: serde_json::to_value(hashed.params)
            .unwrap_or(serde_json::Value::Null),
        hash_function_salt: Some(hashed.salt.clone()),
        secret: hashed.hash.clone(),
        description: None,
        expiration_date: None,
        revocation_date: None,
        creation_date: now,
        update_date: now,
    }
}

/// A token's text, as given to its owner once. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenText(String);

impl TokenText {
    /// The token, to show its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenText(<redacted>)")
    }
}

fn digest(secret: &[u8]) -> String {
    hex::encode(Sha256::digest(secret))
}

/// A new token for `user`: the credential to store and the text to show once.
pub fn new_token(
    user: &UserId,
    description: Option<String>,
    expiration_date: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(Credential, TokenText), AuthError> {
    if let Some(description) = &description
        && description.chars().count() > MAX_DESCRIPTION_CHARS
    {
        return Err(AuthError::Invalid(format!(
            "a token's description has at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    if expiration_date.is_some_and(|expiry| expiry <= now) {
        return Err(AuthError::Invalid(
            "a token's expiration date must be in the future".into(),
        ));
    }
    let secret = random_bytes::<TOKEN_SECRET_BYTES>()?;
    let identifier = CredentialId(uuid::Uuid::now_v7());
    let text = format!(
        "{TOKEN_PREFIX}{}_{}",
        identifier.0.simple(),
        hex::encode(secret)
    );
    let credential = Credential {
        identifier,
        user: user.clone(),
        kind: CredentialKind::Token,
        hash_function: SHA256.to_owned(),
        hash_function_parameters: serde_json::json!({}),
        hash_function_salt: None,
        secret: Secret(digest(&secret)),
        description,
        expiration_date,
        revocation_date: None,
        creation_date: now,
        update_date: now,
    };
    Ok((credential, TokenText(text)))
}

/// The credential id and secret a token's text carries, if it has a token's shape.
pub fn parse_token(text: &str) -> Option<(CredentialId, Vec<u8>)> {
    let rest = text.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() != 2 * TOKEN_SECRET_BYTES {
        return None;
    }
    let id = uuid::Uuid::try_parse(id).ok()?;
    let secret = hex::decode(secret).ok()?;
    Some((CredentialId(id), secret))
}

/// Whether `secret` is the one `credential` protects, compared in constant time; the
/// credential must be a usable token at `now`.
pub fn token_matches(credential: &Credential, secret: &[u8], now: DateTime<Utc>) -> bool {
    credential.kind == CredentialKind::Token
        && credential.hash_function == SHA256
        && credential.is_usable(now)
        && bool::from(
            digest(secret)
                .as_bytes()
                .ct_eq(credential.secret.expose().as_bytes()),
        )
}

/// The user a token authenticates at `now`: a well-formed token, stored, not revoked, not
/// expired, whose user exists. The user may be disabled: [`Principal::of_user`] decides what
/// that means.
pub async fn user_of_token(
    conn: &mut AsyncPgConnection,
    token: &str,
    now: DateTime<Utc>,
) -> Result<User, AuthError> {
    let (identifier, secret) = parse_token(token).ok_or(AuthError::Refused)?;
    let credential = users::find_credential(conn, identifier)
        .await?
        .ok_or(AuthError::Refused)?;
    if !token_matches(&credential, &secret, now) {
        return Err(AuthError::Refused);
    }
    catalog::find_user(conn, &credential.user)
        .await?
        .ok_or(AuthError::Refused)
}

/// The principal a token authenticates as at `now`; a disabled user gets `anonymous_roles`.
pub async fn authenticate_token(
    conn: &mut AsyncPgConnection,
    token: &str,
    now: DateTime<Utc>,
    anonymous_roles: &[Role],
) -> Result<Principal, AuthError> {
    let user = user_of_token(conn, token, now).await?;
    Ok(Principal::of_user(&user, anonymous_roles))
}

/// Checks `password` for `identifier` at `now`, rehashing it when its parameters are not the
/// current ones. A disabled user cannot log in; every failure is [`AuthError::Refused`].
pub async fn login(
    pool: &store::Pool,
    identifier: &UserId,
    password: &str,
    now: DateTime<Utc>,
) -> Result<User, AuthError> {
    let mut conn = store::connection(pool).await?;
    let user = catalog::find_user(&conn, identifier).await?;
    let credential = match &user {
        Some(_) => users::password_of(&mut conn, identifier).await?,
        None => None,
    };
    drop(conn);
    let password_owned = password.to_owned();
    let Some(credential) = credential else {
        // Spend the same work as a real check, so the answer's timing says nothing.
        let _ = tokio::task::spawn_blocking(move || spend_a_password_check(&password_owned)).await;
        return Err(AuthError::Refused);
    };
    let checked = credential.clone();
    let check = tokio::task::spawn_blocking(move || verify_password(&checked, &password_owned))
        .await
        .unwrap_or(PasswordCheck::Mismatch);
    let user = user.ok_or(AuthError::Refused)?;
    match check {
        PasswordCheck::Mismatch => Err(AuthError::Refused),
        PasswordCheck::Match { .. } if !user.is_enabled => Err(AuthError::Refused),
        PasswordCheck::Match { rehash } => {
            if rehash {
                let password = password.to_owned();
                let hashed = tokio::task::spawn_blocking(move || {
                    hash_password(&password, PasswordParams::CURRENT)
                })
                .await
                .map_err(|error| AuthError::Invalid(error.to_string()))??;
                let mut conn = store::connection(pool).await?;
                users::replace_password_hash(&mut conn, credential.identifier, &hashed, now)
                    .await?;
                tracing::info!(user = %identifier, "rehashed a password with the current parameters");
            }
            Ok(user)
        }
    }
}

/// Who sent an AMQP message, as authorization sees it.
///
/// RabbitMQ vouches for the `user_id` property (it refuses a message whose `user_id` is not the
/// connection's user), so that user is the sender, looked up as a baton user of the same
/// identifier. A message from `trusted_user` (the dispatcher's own RabbitMQ user, which its
/// HTTP API publishes as) may instead name the baton user it is sent for in
/// [`broker::envelope::ON_BEHALF_OF_HEADER`] (the empty name for an anonymous HTTP caller);
/// from anyone else that header is ignored. A
/// message without `user_id`, or from a RabbitMQ user that is not a baton user, is anonymous
/// and gets `anonymous_roles`; a disabled user too.
pub async fn principal_of_message(
    conn: &AsyncPgConnection,
    meta: &broker::Meta,
    trusted_user: &str,
    anonymous_roles: &[Role],
) -> Result<Principal, StoreError> {
    let sender = match (&meta.user_id, &meta.on_behalf_of) {
        // The API sends an anonymous caller's requests for the empty name.
        (Some(user), Some(for_user)) if user == trusted_user && for_user.is_empty() => None,
        (Some(user), Some(for_user)) if user == trusted_user => Some(for_user),
        (Some(user), _) => Some(user),
        (None, _) => None,
    };
    let Some(sender) = sender else {
        return Ok(Principal::anonymous(anonymous_roles.to_vec()));
    };
    Ok(
        match catalog::find_user(conn, &UserId::from(sender.as_str())).await? {
            Some(user) => Principal::of_user(&user, anonymous_roles),
            None => Principal::anonymous(anonymous_roles.to_vec()),
        },
    )
}

/// Why `principal` may not do `action` (on something `owner` owns, when given), as the error
/// word and message a refusal carries: `unauthenticated` for an anonymous caller, `forbidden`
/// for a user. `None` when it may.
pub fn refusal(
    principal: &Principal,
    action: models::access::Action,
    owner: Option<&models::OrganizationId>,
) -> Option<(&'static str, String)> {
    let allowed = match owner {
        Some(owner) => principal.may(action, owner),
        None => principal.scope(action) != models::access::Scope::None,
    };
    if allowed {
        return None;
    }
    Some(match &principal.user {
        None => (
            UNAUTHENTICATED,
            format!("an anonymous caller may not {}", action.describe()),
        ),
        Some(user) => (
            FORBIDDEN,
            match owner {
                Some(owner) if principal.scope(action) != models::access::Scope::None => format!(
                    "user {user} may not {} of organization {owner}",
                    action.describe()
                ),
                _ => format!("user {user} may not {}", action.describe()),
            },
        ),
    })
}

/// The error word of a refusal to an anonymous caller.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// The error word of a refusal to an authenticated caller without the right.
pub const FORBIDDEN: &str = "forbidden";

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters, so unit tests in debug builds stay fast; the real ones are tested in
    /// `the_current_parameters_are_owasps_minimum`.
    const CHEAP: PasswordParams = PasswordParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
        output_len: 32,
    };

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn the_current_parameters_are_owasps_minimum() {
        let current = PasswordParams::CURRENT;
        assert!(current.m_cost >= 19 * 1024);
        assert!(current.t_cost >= 2);
        assert_eq!(current.p_cost, 1);
        let hashed = hash_password("correct horse", current).unwrap();
        let credential = password_credential(&"alice".into(), &hashed, now());
        assert_eq!(
            verify_password(&credential, "correct horse"),
            PasswordCheck::Match { rehash: false }
        );
        assert_eq!(credential.hash_function, "argon2id");
        assert_eq!(
            credential.hash_function_parameters,
            serde_json::json!({"m_cost": 19456, "t_cost": 2, "p_cost": 1, "output_len": 32})
        );
    }

    #[test]
    fn a_password_verifies_with_its_own_parameters_and_asks_for_a_rehash_when_they_are_old() {
        let hashed = hash_password("correct horse", CHEAP).unwrap();
        let credential = password_credential(&"alice".into(), &hashed, now());
        assert_eq!(
            verify_password(&credential, "correct horse"),
            PasswordCheck::Match { rehash: true }
        );
        assert_eq!(
            verify_password(&credential, "correct horsE"),
            PasswordCheck::Mismatch
        );
        assert_eq!(verify_password(&credential, ""), PasswordCheck::Mismatch);
    }

    #[test]
    fn each_set_gets_a_fresh_salt() {
        let first = hash_password("correct horse", CHEAP).unwrap();
        let second = hash_password("correct horse", CHEAP).unwrap();
        assert_ne!(first.salt, second.salt);
        assert_ne!(first.hash, second.hash);
        assert_eq!(first.salt.len(), 2 * SALT_BYTES);
    }

    #[test]
    fn unacceptable_passwords_are_refused_with_the_reason() {
        for (password, reason) in [
            ("short", "at least 8 characters"),
            (&"x".repeat(MAX_PASSWORD_BYTES + 1), "at most 1024 bytes"),
        ] {
            let error = hash_password(password, CHEAP).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
        }
    }

    #[test]
    fn a_tampered_or_foreign_credential_never_matches() {
        let hashed = hash_password("correct horse", CHEAP).unwrap();
        let good = password_credential(&"alice".into(), &hashed, now());
        let mut bad_salt = good.clone();
        bad_salt.hash_function_salt = Some("zz".into());
        let mut other_function = good.clone();
        other_function.hash_function = "pbkdf2".into();
        let mut bad_params = good.clone();
        bad_params.hash_function_parameters = serde_json::json!({"m_cost": "lots"});
        let mut a_token = good.clone();
        a_token.kind = CredentialKind::Token;
        for credential in [bad_salt, other_function, bad_params, a_token] {
            assert_eq!(
                verify_password(&credential, "correct horse"),
                PasswordCheck::Mismatch
            );
        }
    }

    #[test]
    fn a_token_is_shown_once_stored_hashed_and_matches_only_its_secret() {
        let (credential, text) =
            new_token(&"alice".into(), Some("ci".into()), None, now()).unwrap();
        assert!(text.expose().starts_with("baton_"));
        assert!(!format!("{text:?}").contains(text.expose()));
        let (id, secret) = parse_token(text.expose()).unwrap();
        assert_eq!(id, credential.identifier);
        assert_ne!(credential.secret.expose(), hex::encode(&secret));
        assert!(token_matches(&credential, &secret, now()));
        let mut other = secret.clone();
        other[0] ^= 1;
        assert!(!token_matches(&credential, &other, now()));
    }

    #[test]
    fn expired_and_revoked_tokens_do_not_match() {
        let expiry = now() + chrono::Duration::hours(1);
        let (credential, text) = new_token(&"alice".into(), None, Some(expiry), now()).unwrap();
        let (_, secret) = parse_token(text.expose()).unwrap();
        assert!(token_matches(&credential, &secret, now()));
        assert!(!token_matches(&credential, &secret, expiry));
        let mut revoked = credential;
        revoked.revocation_date = Some(now());
        assert!(!token_matches(&revoked, &secret, now()));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let (_, text) = new_token(&"alice".into(), None, None, now()).unwrap();
        let good = text.expose();
        for bad in [
            "",
            "baton_",
            &good.replace("baton_", "other_"),
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.replacen('_', "-", 2),
            &format!("{}zz", &good[..good.len() - 2]),
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn new_tokens_refuse_a_past_expiry_and_a_long_description() {
        assert!(new_token(&"alice".into(), None, Some(now()), now()).is_err());
        assert!(
            new_token(
                &"alice".into(),
                Some("d".repeat(MAX_DESCRIPTION_CHARS + 1)),
                None,
                now()
            )
            .is_err()
        );
    }
}
