//! Who may do what: the one table of role rules (SPEC.md §2), used by the HTTP API for every
//! route and by the dispatcher for every AMQP message kind.
//!
//! A caller is a [`Principal`]: a user's roles and organization, or an anonymous caller with the
//! roles the deployment grants anonymous callers (none unless configured). A request is allowed
//! if any of the caller's roles allows its [`Action`]; [`Principal::scope`] says how far: on
//! everything, or only on what the caller's organization owns. Asset permissions (SPEC.md §3:
//! processing, downloading, reading logs) are checked on top, by the code that holds the asset.

use serde::{Deserialize, Serialize};

use crate::{OrganizationId, Role, User, UserId};

word_enum! {
    /// What a request does, as far as authorization is concerned.
    pub enum Action("action") {
        /// Read organizations and projects.
        ReadProjects = "read_projects",
        /// Register organizations.
        RegisterOrganizations = "register_organizations",
        /// Read functions, datasets, data samples and models' metadata.
        ReadAssets = "read_assets",
        /// Register projects, functions, datasets and data samples.
        RegisterAssets = "register_assets",
        /// Download model files (the model's process permission is checked too).
        DownloadModels = "download_models",
        /// Read compute plans, tasks, their history, measurements and performances.
        ReadPlans = "read_plans",
        /// Read tasks' logs (the task's logs permission is checked too).
        ReadLogs = "read_logs",
        /// Submit compute plans and add tasks to them.
        SubmitPlans = "submit_plans",
        /// Cancel plans, cancel and abort tasks.
        CancelPlans = "cancel_plans",
        /// Read workers and devices.
        ReadWorkers = "read_workers",
        /// Connect as a worker: register, claim tasks and builds, report on them.
        ConnectWorker = "connect_worker",
        /// Read Prometheus metrics.
        ReadMetrics = "read_metrics",
        /// Read users and their tokens' metadata.
        ReadUsers = "read_users",
        /// Create and change users, set their passwords, issue and revoke their tokens.
        ManageUsers = "manage_users",
        /// Read one's own user, change one's own password, issue, list and revoke one's own
        /// tokens: any enabled user may, whatever their roles.
        OwnAccount = "own_account",
    }
}

impl Action {
    /// The action in words, for refusals: "user bob may not submit plans".
    pub const fn describe(self) -> &'static str {
        match self {
            Action::ReadProjects => "read organizations and projects",
            Action::RegisterOrganizations => "register organizations",
            Action::ReadAssets => "read functions, datasets and models",
            Action::RegisterAssets => "register projects, functions, datasets and data samples",
            Action::DownloadModels => "download models",
            Action::ReadPlans => "read compute plans and tasks",
            Action::ReadLogs => "read task logs",
            Action::SubmitPlans => "submit compute plans",
            Action::CancelPlans => "cancel compute plans and tasks",
            Action::ReadWorkers => "read workers and devices",
            Action::ConnectWorker => "connect as a worker",
            Action::ReadMetrics => "read metrics",
            Action::ReadUsers => "read users",
            Action::ManageUsers => "manage users",
            Action::OwnAccount => "manage an account",
        }
    }
}

/// How far an allowed action reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Not allowed.
    None,
    /// Allowed on what the caller's organization owns (its plans, their tasks).
    Own,
    /// Allowed on everything.
    All,
}

/// What `role` may do of `action`: the rule table.
///
/// | action | administrator | operator | producer | auditor | viewer | worker |
/// |---|---|---|---|---|---|---|
/// | read projects and organizations | all | all | all | all | all | — |
/// | register organizations | all | — | — | — | — | — |
/// | read assets | all | all | all | all | — | — |
/// | register assets | all | all | — | — | — | — |
/// | download models | all | all | all | all | — | — |
/// | read plans and tasks | all | all | own | all | all | — |
/// | read logs | all | all | own | all | — | — |
/// | submit plans | all | all | own | — | — | — |
/// | cancel plans and tasks | all | all | own | — | — | — |
/// | read workers | all | all | — | all | all | — |
/// | connect as a worker | all | — | — | — | — | all |
/// | read metrics | all | all | — | all | — | — |
/// | read users | all | — | — | all | — | — |
/// | manage users | all | — | — | — | — | — |
///
/// [`Action::OwnAccount`] is not in the table: it depends on being a user, not on a role.
pub const fn grant(role: Role, action: Action) -> Scope {
    use Action as A;
    use Role as R;
    match (role, action) {
        (R::Administrator, _) => Scope::All,
        (_, A::OwnAccount) => Scope::None,
        (R::Operator, A::ReadProjects | A::ReadAssets | A::RegisterAssets | A::DownloadModels)
        | (R::Operator, A::ReadPlans | A::ReadLogs | A::SubmitPlans | A::CancelPlans)
        | (R::Operator, A::ReadWorkers | A::ReadMetrics) => Scope::All,
        (R::Producer, A::ReadProjects | A::ReadAssets | A::DownloadModels) => Scope::All,
        (R::Producer, A::ReadPlans | A::ReadLogs) => Scope::Own,
        (R::Producer, A::SubmitPlans | A::CancelPlans) => Scope::Own,
        (R::Auditor, A::ReadProjects | A::ReadAssets | A::DownloadModels | A::ReadPlans)
        | (R::Auditor, A::ReadLogs | A::ReadWorkers | A::ReadMetrics | A::ReadUsers) => Scope::All,
        (R::Viewer, A::ReadProjects | A::ReadPlans | A::ReadWorkers) => Scope::All,
        (R::Worker, A::ConnectWorker) => Scope::All,
        _ => Scope::None,
    }
}

/// Who is calling, as authorization sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The authenticated user; none for an anonymous caller (or a disabled user, who has exactly
    /// an anonymous caller's rights).
    pub user: Option<UserId>,
    /// The organization the user acts for; none for an anonymous caller.
    pub organization: Option<OrganizationId>,
    /// The roles it holds.
    pub roles: Vec<Role>,
}

impl Principal {
    /// An anonymous caller, with the roles the deployment grants anonymous callers.
    pub fn anonymous(roles: Vec<Role>) -> Principal {
        Principal {
            user: None,
            organization: None,
            roles,
        }
    }

    /// The principal `user` authenticates as: its roles if it is enabled, else an anonymous
    /// caller's `anonymous_roles` (SPEC.md §2).
    pub fn of_user(user: &User, anonymous_roles: &[Role]) -> Principal {
        if user.is_enabled {
            Principal {
                user: Some(user.identifier.clone()),
                organization: Some(user.organization.clone()),
                roles: user.roles.clone(),
            }
        } else {
            Principal::anonymous(anonymous_roles.to_vec())
        }
    }

    /// How far the principal may do `action`: the widest grant of its roles. `Own` needs an
    /// organization, so an anonymous caller never gets it.
    pub fn scope(&self, action: Action) -> Scope {
        if action == Action::OwnAccount {
            return if self.user.is_some() {
                Scope::All
            } else {
                Scope::None
            };
        }
        let widest = self
            .roles
            .iter()
            .map(|role| grant(*role, action))
            .max()
            .unwrap_or(Scope::None);
        match widest {
            Scope::Own if self.organization.is_none() => Scope::None,
            scope => scope,
        }
    }

    /// Whether the principal may do `action` on something `owner` owns.
    pub fn may(&self, action: Action, owner: &OrganizationId) -> bool {
        match self.scope(action) {
            Scope::All => true,
            Scope::Own => self.organization.as_ref() == Some(owner),
            Scope::None => false,
        }
    }

    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The principal as it appears in refusals and logs: its user, or `anonymous`.
    pub fn name(&self) -> &str {
        self.user.as_ref().map_or("anonymous", UserId::as_str)
    }
}

/// The rule table as Markdown, one row per action and one column per role, for the
/// documentation (docs/security.md holds this very text; a test keeps them equal).
pub fn markdown_table() -> String {
    let mut text = String::from("| action |");
    for role in Role::ALL {
        text.push_str(&format!(" {role} |"));
    }
    text.push_str("\n|---|");
    for _ in Role::ALL {
        text.push_str("---|");
    }
    text.push('\n');
    for action in Action::ALL {
        if *action == Action::OwnAccount {
            continue;
        }
        text.push_str(&format!("| `{action}` |"));
        for role in Role::ALL {
            let cell = match grant(*role, *action) {
                Scope::All => "all",
                Scope::Own => "own",
                Scope::None => "—",
            };
            text.push_str(&format!(" {cell} |"));
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[Role]) -> Principal {
        Principal {
            user: Some("alice".into()),
            organization: Some("org-a".into()),
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn the_rule_table_cell_by_cell() {
        expect_test::expect![[r#"
            | action | administrator | operator | producer | auditor | viewer | worker |
            |---|---|---|---|---|---|---|
            | `read_projects` | all | all | all | all | all | — |
            | `register_organizations` | all | — | — | — | — | — |
            | `read_assets` | all | all | all | all | — | — |
            | `register_assets` | all | all | — | — | — | — |
            | `download_models` | all | all | all | all | — | — |
            | `read_plans` | all | all | own | all | all | — |
            | `read_logs` | all | all | own | all | — | — |
            | `submit_plans` | all | all | own | — | — | — |
            | `cancel_plans` | all | all | own | — | — | — |
            | `read_workers` | all | all | — | all | all | — |
            | `connect_worker` | all | — | — | — | — | all |
            | `read_metrics` | all | all | — | all | — | — |
            | `read_users` | all | — | — | all | — | — |
            | `manage_users` | all | — | — | — | — | — |
        "#]]
        .assert_eq(&markdown_table());
    }

    #[test]
    fn any_role_that_allows_is_enough_and_the_widest_scope_wins() {
        let both = principal(&[Role::Producer, Role::Viewer]);
        assert_eq!(both.scope(Action::ReadPlans), Scope::All);
        assert_eq!(both.scope(Action::SubmitPlans), Scope::Own);
        assert_eq!(both.scope(Action::ManageUsers), Scope::None);
        assert_eq!(principal(&[]).scope(Action::ReadProjects), Scope::None);
    }

    #[test]
    fn own_scope_reaches_only_the_callers_organization() {
        let producer = principal(&[Role::Producer]);
        assert!(producer.may(Action::ReadPlans, &"org-a".into()));
        assert!(!producer.may(Action::ReadPlans, &"org-b".into()));
        assert!(principal(&[Role::Auditor]).may(Action::ReadPlans, &"org-b".into()));
    }

    #[test]
    fn anonymous_callers_get_only_the_configured_roles_and_never_own_scope() {
        assert_eq!(
            Principal::anonymous(vec![]).scope(Action::ReadProjects),
            Scope::None
        );
        let viewer = Principal::anonymous(vec![Role::Viewer]);
        assert_eq!(viewer.scope(Action::ReadPlans), Scope::All);
        let producer = Principal::anonymous(vec![Role::Producer]);
        assert_eq!(producer.scope(Action::SubmitPlans), Scope::None);
        assert_eq!(producer.scope(Action::OwnAccount), Scope::None);
        assert_eq!(producer.name(), "anonymous");
    }

    #[test]
    fn a_disabled_user_has_exactly_an_anonymous_callers_rights() {
        let user = User {
            identifier: "alice".into(),
            display_name: "Alice".into(),
            organization: "org-a".into(),
            roles: vec![Role::Administrator],
            is_enabled: false,
            creation_date: chrono::DateTime::UNIX_EPOCH,
            update_date: chrono::DateTime::UNIX_EPOCH,
        };
        let principal = Principal::of_user(&user, &[Role::Viewer]);
        assert_eq!(principal, Principal::anonymous(vec![Role::Viewer]));
        assert_eq!(principal.scope(Action::ManageUsers), Scope::None);
        assert_eq!(principal.scope(Action::OwnAccount), Scope::None);
        let enabled = Principal::of_user(
            &User {
                is_enabled: true,
                ..user
            },
            &[],
        );
        assert_eq!(enabled.scope(Action::ManageUsers), Scope::All);
        assert_eq!(enabled.scope(Action::OwnAccount), Scope::All);
    }
}
