//! baton's vocabulary: the entities of the data model, their states and transitions, and the
//! validation of what producers submit.
//!
//! Everything here is plain data and pure functions: no IO, no async, no clock (time is passed in
//! as `now`), and no database, broker or HTTP types. The dispatcher's store converts its rows to
//! these types; the broker serialises them; a test in `tests/it/tidy.rs` keeps it that way.
//!
//! The crate is called `models` because it holds the data model; the ML artifact a task produces
//! is the type [`Model`] (see the glossary in ARCHITECTURE.md).

#[macro_use]
mod macros;

pub mod access;
pub mod dataset;
pub mod execution;
pub mod function;
pub mod ids;
pub mod model;
pub mod organization;
pub mod performance;
pub mod permission;
pub mod plan;
pub mod project;
pub mod requirements;
pub mod schedule;
pub mod submission;
pub mod task;
pub mod user;
pub mod validation;
pub mod wire;
pub mod worker;

pub use dataset::{DataSample, Dataset};
pub use execution::{LogLine, LogStream, Measurement, StepState, StepStatus, TaskStateChange};
pub use function::{
    Function, FunctionInput, FunctionOutput, FunctionStatus, InputKind, OutputKind, ParameterDecl,
    RetryPolicy, Step,
};
pub use ids::{
    Attempt, CredentialId, DataSampleKey, DatasetKey, DeviceId, FunctionKey, ModelKey,
    OrganizationId, PlanKey, ProjectId, ScheduleId, TaskKey, UserId, WorkerId,
};
pub use model::{File, Model};
pub use organization::Organization;
pub use performance::{Performance, PerformanceRow, Performances};
pub use permission::{Permission, Permissions};
pub use plan::{ComputePlan, PlanCounters, PlanStatus};
pub use project::Project;
pub use requirements::{Properties, RequirementSet};
pub use schedule::Schedule;
pub use task::{
    InputRef, Lease, Task, TaskErrorType, TaskInput, TaskOutput, TaskSource, TaskStatus,
    WaitingReason,
};
pub use user::{Credential, CredentialKind, Role, Secret, User};
pub use worker::{Device, Worker};

/// Free-form string metadata attached to functions, datasets, plans and tasks (Substra's
/// `Mapping[str, str]`); validated by [`validation::validate_metadata`].
pub type Metadata = std::collections::BTreeMap<String, String>;

/// A JSON object: parameters, services, and other caller-defined maps.
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A point in time. Always UTC; stored as `timestamptz`.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Seconds elapsed from `start` to `end` (or `now` while running), 0 when `start` is unknown:
/// the `duration` rule SPEC.md gives for tasks and plans alike.
pub fn duration_seconds(start: Option<Timestamp>, end: Option<Timestamp>, now: Timestamp) -> i64 {
    match start {
        None => 0,
        Some(start) => (end.unwrap_or(now) - start).num_seconds().max(0),
    }
}

/// An error parsing one of the UPPER_SNAKE words baton uses for statuses and kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}, expected one of: {expected}")]
pub struct ParseWordError {
    /// What was being parsed, e.g. "task status".
    pub what: &'static str,
    /// The text that did not parse.
    pub value: String,
    /// The accepted words, comma-separated.
    pub expected: String,
}
