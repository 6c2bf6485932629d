//! Functions: the reusable definition a task runs (Substra's `Function`, Orchestra's `Job`,
//! qunicorn's `Deployment`), and their build status.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    File, FunctionKey, JsonObject, Metadata, OrganizationId, Permissions, ProjectId,
    RequirementSet, Timestamp, UserId,
};

word_enum! {
    /// Where a function is in its build (SPEC.md §4).
    pub enum FunctionStatus("function status") {
        /// Registered, waiting to be built.
        Waiting = "WAITING",
        /// Its build steps are running on a worker.
        Building = "BUILDING",
        /// Built (or nothing to build): its tasks may run.
        Ready = "READY",
        /// The build failed; its tasks not yet started fail.
        Failed = "FAILED",
        /// Canceled before it was ready; its tasks not yet started are canceled.
        Canceled = "CANCELED",
    }
}

impl FunctionStatus {
    /// Whether the status can still change.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Ready | Self::Failed | Self::Canceled)
    }

    /// Whether a function in this status may become `next`: WAITING → BUILDING → READY | FAILED,
    /// WAITING → READY (nothing to build), WAITING or BUILDING → CANCELED.
    pub const fn can_become(self, next: FunctionStatus) -> bool {
        use FunctionStatus::*;
        matches!(
            (self, next),
            (Waiting, Building)
                | (Waiting, Ready)
                | (Building, Ready)
                | (Building, Failed)
                | (Waiting, Canceled)
                | (Building, Canceled)
        )
    }
}

word_enum! {
    /// The kind of asset a function input takes.
    pub enum InputKind("input kind") {
        /// A model produced by another task, or registered by key.
        Model = "MODEL",
        /// Data samples of the task's data manager.
        DataSample = "DATA_SAMPLE",
        /// The data manager (dataset) whose opener reads the samples.
        DataManager = "DATA_MANAGER",
    }
}

word_enum! {
    /// The kind of asset a function output produces.
    pub enum OutputKind("output kind") {
        /// A model file, uploaded to the artifact store.
        Model = "MODEL",
        /// A finite float, e.g. a test score.
        Performance = "PERFORMANCE",
    }
}

/// One declared input of a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FunctionInput {
    /// Unique among the function's inputs, 1–100 characters.
    pub identifier: String,
    /// What the input takes.
    pub kind: InputKind,
    /// A task may give several values for it.
    #[serde(default)]
    pub multiple: bool,
    /// A task may omit it.
    #[serde(default)]
    pub optional: bool,
}

/// One declared output of a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FunctionOutput {
    /// Unique among the function's outputs, 1–100 characters.
    pub identifier: String,
    /// What the output produces.
    pub kind: OutputKind,
    /// A task may register several values for it (never for PERFORMANCE).
    #[serde(default)]
    pub multiple: bool,
}

/// One step of a function: a command run as an argv array, never through a shell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Step {
    /// The step's name, shown in logs and step statuses.
    pub name: String,
    /// The program and its arguments; `{parameters.x}`-style placeholders are substituted into
    /// single elements only.
    pub command: Vec<String>,
    /// Seconds the step may run before it is stopped (SIGTERM, then SIGKILL after the grace
    /// period) and the task fails with TIMEOUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// A parameter a function declares (Orchestra's `parameter`), with an optional default value
/// (qunicorn's deployment `parameters`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ParameterDecl {
    /// The parameter's key, unique within the function.
    pub key: String,
    /// What it is for, shown in user interfaces.
    #[serde(default)]
    pub description: String,
    /// The value used when a task does not give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
}

/// How often and how soon a failed attempt is retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds.
    pub backoff_initial_ms: u64,
    /// Upper bound of the delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Each delay is drawn uniformly from [0, computed delay] (full jitter).
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// No retry: a failed attempt fails the task, as Substra does for user-code failures.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay before attempt `attempt + 1`, after attempt `attempt`
    /// failed: `backoff_initial_ms × 2^(attempt−1)`, capped at `backoff_max_ms`. The caller
    /// draws the jitter, so this stays deterministic.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(63);
        self.backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms)
    }
}

/// A reusable definition of work: steps to run, inputs and outputs, parameters, requirements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Function {
    /// Its key.
    pub key: FunctionKey,
    /// Its name, 1–100 characters (Orchestra's job identifier, qunicorn's deployment name).
    pub name: String,
    /// The name shown in user interfaces.
    pub display_name: Option<String>,
    /// What it does, as plain text (Orchestra's job description).
    pub summary: Option<String>,
    /// The organization that registered it; it is built there.
    pub owner: OrganizationId,
    /// The user who registered it (qunicorn's `user_id`).
    pub creator: Option<UserId>,
    /// The project it belongs to.
    pub project: Option<ProjectId>,
    /// Who may process it.
    pub permissions: Permissions,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// Its description file (Substra).
    pub description: Option<File>,
    /// Its code archive (Substra's `function` file).
    pub archive: Option<File>,
    /// The built artifact tasks reuse, once READY after a build.
    pub image: Option<File>,
    /// Declared inputs.
    pub inputs: Vec<FunctionInput>,
    /// Declared outputs.
    pub outputs: Vec<FunctionOutput>,
    /// The steps a task runs, in order.
    pub steps: Vec<Step>,
    /// The steps that build it once, on a worker that satisfies its requirements.
    pub build_steps: Vec<Step>,
    /// The parameters tasks may give.
    pub parameters: Vec<ParameterDecl>,
    /// A JSON Schema the parameters' values must satisfy.
    pub parameter_schema: Option<serde_json::Value>,
    /// The directory, relative to the worker's root, where it runs (Orchestra).
    pub workspace: Option<String>,
    /// LuciHub's type of job: compile, run, verify, …
    pub kind: Option<String>,
    /// The worker properties it needs (Orchestra's job `properties`).
    pub requirements: RequirementSet,
    /// Its retry policy.
    pub retry: RetryPolicy,
    /// Seconds a task may run before it fails with TIMEOUT.
    pub timeout_secs: Option<u64>,
    /// A disabled function accepts no new tasks and its schedules do not fire.
    pub is_enabled: bool,
    /// Its build status.
    pub status: FunctionStatus,
    /// A mutable JSON store for lightweight data (qunicorn's `data`).
    pub data: serde_json::Value,
    /// When it was registered.
    pub creation_date: Timestamp,
    /// When it was last updated.
    pub update_date: Timestamp,
}

impl Function {
    /// The declared input named `identifier`.
    pub fn input(&self, identifier: &str) -> Option<&FunctionInput> {
        self.inputs.iter().find(|i| i.identifier == identifier)
    }

    /// The declared output named `identifier`.
    pub fn output(&self, identifier: &str) -> Option<&FunctionOutput> {
        self.outputs.iter().find(|o| o.identifier == identifier)
    }

    /// The status a newly registered function takes: READY when there is nothing to build.
    pub fn initial_status(build_steps: &[Step]) -> FunctionStatus {
        if build_steps.is_empty() {
            FunctionStatus::Ready
        } else {
            FunctionStatus::Waiting
        }
    }

    /// Default parameter values, as a JSON object.
    pub fn default_parameters(&self) -> JsonObject {
        self.parameters
            .iter()
            .filter_map(|p| p.default.clone().map(|v| (p.key.clone(), v)))
            .collect()
    }
}
