//! Users, their roles and their credentials (Orchestra's `User` and `User Authentication`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{CredentialId, OrganizationId, Timestamp, UserId};

word_enum! {
    /// What a user may do; a request is allowed if any of the user's roles allows it (SPEC.md §2).
    pub enum Role("role") {
        /// Everything.
        Administrator = "administrator",
        /// Create and act on functions, plans, tasks, schedules and workers.
        Operator = "operator",
        /// Submit plans and read their own.
        Producer = "producer",
        /// Read everything.
        Auditor = "auditor",
        /// Read projects, plans and workers.
        Viewer = "viewer",
        /// Connect as a worker, claim and report tasks.
        Worker = "worker",
    }
}

/// Someone who calls baton.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct User {
    /// Unique identifier matching `^[a-zA-Z0-9_.-]{3,32}$`.
    pub identifier: UserId,
    /// The full name shown in user interfaces.
    pub display_name: String,
    /// The organization the user acts for.
    pub organization: OrganizationId,
    /// The user's roles.
    pub roles: Vec<Role>,
    /// A disabled user has exactly the rights of an anonymous caller.
    pub is_enabled: bool,
    /// When it was created.
    pub creation_date: Timestamp,
    /// When it was last updated.
    pub update_date: Timestamp,
}

/// Why `identifier` cannot name a user, if it cannot: it must match `^[a-zA-Z0-9_.-]{3,32}$`
/// (Orchestra's rule).
pub fn identifier_problem(identifier: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !(3..=32).contains(&identifier.len()) {
        return Some("must be 3 to 32 characters long".to_owned());
    }
    identifier
        .chars()
        .find(|c| !allowed(*c))
        .map(|bad| format!("{bad:?} is not allowed: only ASCII letters, digits, `_`, `.` and `-`"))
}

word_enum! {
    /// How a credential authenticates.
    pub enum CredentialKind("credential type") {
        /// A password, hashed with argon2id; at most one per user.
        Password = "password",
        /// An API token, stored as its SHA-256.
        Token = "token",
    }
}

/// A protected secret (a hash): never shown by `Debug`, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The protected value, for the code that verifies it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A means for a user to authenticate: a password or a token, in protected form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Its identifier.
    pub identifier: CredentialId,
    /// The user it authenticates.
    pub user: UserId,
    /// Password or token.
    #[serde(rename = "type")]
    pub kind: CredentialKind,
    /// The hash function that protects the secret (`argon2id`, `sha256`).
    pub hash_function: String,
    /// The hash function's parameters (memory, iterations, parallelism for argon2id).
    pub hash_function_parameters: serde_json::Value,
    /// The salt, as hex; none for tokens.
    pub hash_function_salt: Option<String>,
    /// The secret in protected form.
    pub secret: Secret,
    /// What the token is for, as its owner described it.
    pub description: Option<String>,
    /// After this time it no longer authenticates.
    pub expiration_date: Option<Timestamp>,
    /// When it was revoked; a revoked credential never authenticates.
    pub revocation_date: Option<Timestamp>,
    /// When it was created.
    pub creation_date: Timestamp,
    /// When it was last updated.
    pub update_date: Timestamp,
}

impl Credential {
    /// Whether it may still authenticate at `now`: not revoked and not expired.
    pub fn is_usable(&self, now: Timestamp) -> bool {
        self.revocation_date.is_none() && self.expiration_date.is_none_or(|expiry| expiry > now)
    }
}

#[cfg(test)]
mod tests {
    use super::identifier_problem;

    #[test]
    fn user_identifiers_follow_orchestras_rule() {
        for good in ["bob", "alice.smith-2", "a_b", &"x".repeat(32)] {
            assert_eq!(identifier_problem(good), None, "{good}");
        }
        for bad in ["ab", "", &"x".repeat(33), "bob smith", "zoë", "bob/.."] {
            assert!(identifier_problem(bad).is_some(), "{bad}");
        }
    }
}
