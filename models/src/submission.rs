//! What producers submit: new functions, compute plans and tasks, before validation.
//!
//! These are the shapes of the submission messages and HTTP bodies; [`crate::validation`]
//! checks them and turns them into what the dispatcher stores.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    File, FunctionInput, FunctionKey, FunctionOutput, JsonObject, Metadata, OrganizationId,
    ParameterDecl, Permissions, PlanKey, ProjectId, RequirementSet, RetryPolicy, Step, TaskInput,
    TaskKey, TaskOutput,
};

/// A function to register.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFunction {
    /// Its key, chosen by the producer (so a resubmission is recognised).
    pub key: FunctionKey,
    /// Its name, 1–100 characters.
    pub name: String,
    /// The name shown in user interfaces.
    #[serde(default)]
    pub display_name: Option<String>,
    /// What it does, as plain text.
    #[serde(default)]
    pub summary: Option<String>,
    /// The project it belongs to.
    #[serde(default)]
    pub project: Option<ProjectId>,
    /// Who may process it; the owner is added.
    pub permissions: Permissions,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// Its description file.
    #[serde(default)]
    pub description: Option<File>,
    /// Its code archive.
    #[serde(default)]
    pub archive: Option<File>,
    /// Declared inputs.
    #[serde(default)]
    pub inputs: Vec<FunctionInput>,
    /// Declared outputs.
    #[serde(default)]
    pub outputs: Vec<FunctionOutput>,
    /// The steps a task runs.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// The steps that build it once.
    #[serde(default)]
    pub build_steps: Vec<Step>,
    /// Declared parameters.
    #[serde(default)]
    pub parameters: Vec<ParameterDecl>,
    /// A JSON Schema for the parameters' values.
    #[serde(default)]
    pub parameter_schema: Option<serde_json::Value>,
    /// The directory, relative to the worker's root, where it runs.
    #[serde(default)]
    pub workspace: Option<String>,
    /// LuciHub's type of job.
    #[serde(default)]
    pub kind: Option<String>,
    /// The worker properties it needs.
    #[serde(default)]
    pub requirements: RequirementSet,
    /// Its retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Seconds a task may run.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Initial mutable JSON data.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// A task to add to a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Its key, unique across baton.
    pub key: TaskKey,
    /// The function it runs.
    pub function_key: FunctionKey,
    /// An optional name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its inputs.
    #[serde(default)]
    pub inputs: Vec<TaskInput>,
    /// Its outputs: exactly the function's, with permissions.
    #[serde(default)]
    pub outputs: BTreeMap<String, TaskOutput>,
    /// Parameter values.
    #[serde(default)]
    pub parameters: JsonObject,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// A label, ≤ 100 characters.
    #[serde(default)]
    pub tag: String,
    /// The organization that runs it; defaults to its data manager's owner, else required.
    #[serde(default)]
    pub worker: Option<OrganizationId>,
    /// Requirements on top of the function's.
    #[serde(default)]
    pub requirements: RequirementSet,
    /// The type of `input` (LuciHub).
    #[serde(default)]
    pub input_type: Option<String>,
    /// Input data for the device (LuciHub).
    #[serde(default)]
    pub input: serde_json::Value,
}

/// A new compute plan with its first tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSubmission {
    /// Its key, chosen by the producer.
    pub key: PlanKey,
    /// Its name, 1–100 characters.
    pub name: String,
    /// A label, ≤ 100 characters.
    #[serde(default)]
    pub tag: String,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// The project it belongs to.
    #[serde(default)]
    pub project: Option<ProjectId>,
    /// Its tasks, in any order.
    #[serde(default)]
    pub tasks: Vec<NewTask>,
}

/// An organization to register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganization {
    /// Its identifier.
    pub id: crate::OrganizationId,
    /// Where its services can be reached.
    #[serde(default)]
    pub address: Option<String>,
}

/// A project to register.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// Its identifier.
    pub identifier: ProjectId,
    /// The name shown in user interfaces.
    pub display_name: String,
    /// Services associated with it, by name.
    #[serde(default)]
    pub services: JsonObject,
}

/// A dataset (data manager) to register; its samples are registered with [`NewDataSamples`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDataset {
    /// Its key.
    pub key: crate::DatasetKey,
    /// Its name, 1–100 characters.
    pub name: String,
    /// Who may process it; the owner is added.
    pub permissions: Permissions,
    /// The kind of data.
    #[serde(rename = "type")]
    pub data_type: String,
    /// The opener that reads its samples.
    pub opener: File,
    /// Its description file.
    pub description: File,
    /// Free-form metadata.
    #[serde(default)]
    pub metadata: Metadata,
    /// Who may read the logs of tasks that use it; the owner is added.
    pub logs_permission: crate::Permission,
}

/// One data sample to register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDataSample {
    /// Its key.
    pub key: crate::DataSampleKey,
    /// Where its data is on the owner's hosts.
    #[serde(default)]
    pub path: Option<String>,
    /// The data managers (of the same owner) it belongs to.
    pub data_manager_keys: Vec<crate::DatasetKey>,
}

/// Data samples to register together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDataSamples {
    /// The samples.
    pub samples: Vec<NewDataSample>,
}
