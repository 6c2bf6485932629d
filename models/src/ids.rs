//! Newtype keys and identifiers, so a worker id can never be passed where a task key is expected.
//!
//! Substra's assets (functions, datasets, samples, plans, tasks, models) are keyed by UUID;
//! Orchestra's names (organizations, users, projects, workers, schedules) are short strings.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_key {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The UUID inside.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self)
            }
        }
    };
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

uuid_key!(
    /// Key of a function.
    FunctionKey
);
uuid_key!(
    /// Key of a dataset (Substra's data manager).
    DatasetKey
);
uuid_key!(
    /// Key of a data sample.
    DataSampleKey
);
uuid_key!(
    /// Key of a compute plan.
    PlanKey
);
uuid_key!(
    /// Key of a task (also Orchestra's run identifier and qunicorn's job id).
    TaskKey
);
uuid_key!(
    /// Key of a model, the file a task produced.
    ModelKey
);
uuid_key!(
    /// Identifier of a credential.
    CredentialId
);

string_id!(
    /// Identifier of an organization; owners, workers of tasks and permissions name them.
    OrganizationId
);
string_id!(
    /// Identifier of a user (`^[a-zA-Z0-9_.-]{3,32}$`).
    UserId
);
string_id!(
    /// Identifier of a project.
    ProjectId
);
string_id!(
    /// Identifier of a worker process on a device host.
    WorkerId
);
string_id!(
    /// Identifier of a device, unique within its worker.
    DeviceId
);
string_id!(
    /// Identifier of a schedule, unique within its project.
    ScheduleId
);

/// The number of a task's attempt, starting at 1 with the first granted claim.
///
/// A report is accepted only for the task's current attempt, so a worker whose lease lapsed can
/// never overwrite the outcome of the attempt that replaced it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl Attempt {
    /// The first attempt of a task.
    pub const FIRST: Attempt = Attempt(1);

    /// The attempt number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The attempt after this one.
    pub const fn next(self) -> Attempt {
        Attempt(self.0 + 1)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
