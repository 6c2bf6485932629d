//! Row structs for every table, and their conversions to and from `models` types.
//!
//! Statuses and kinds are stored as their words (`TaskStatus::as_str`), structured values as
//! JSONB through serde, counts as `INTEGER`. A row that does not convert back is reported as
//! [`StoreError::Corrupt`] with its table and key, never a panic.

use std::fmt::Display;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use uuid::Uuid;

use models::{
    Attempt, ComputePlan, Credential, DataSample, Dataset, Device, Function, Lease, LogLine,
    Measurement, Model, Organization, OrganizationId, ParseWordError, Performance, PlanCounters,
    Project, Schedule, Secret, Task, TaskStateChange, User, Worker,
};
use models::{FunctionKey, TaskKey, Timestamp, WorkerId};

use super::schema;
use super::{StoreError, StoreResult};

fn to_json<T: Serialize + ?Sized>(what: &'static str, value: &T) -> StoreResult<Value> {
    serde_json::to_value(value).map_err(|error| StoreError::Encode {
        what,
        reason: error.to_string(),
    })
}

fn from_json<T: DeserializeOwned>(
    table: &'static str,
    key: &impl Display,
    column: &str,
    value: Value,
) -> StoreResult<T> {
    serde_json::from_value(value).map_err(|error| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: format!("{column}: {error}"),
    })
}

fn parse_word<T: FromStr<Err = ParseWordError>>(
    table: &'static str,
    key: &impl Display,
    word: &str,
) -> StoreResult<T> {
    word.parse()
        .map_err(|error: ParseWordError| StoreError::Corrupt {
            table,
            key: key.to_string(),
            reason: error.to_string(),
        })
}

fn to_i32(what: &'static str, value: u32) -> StoreResult<i32> {
    i32::try_from(value).map_err(|_| StoreError::Encode {
        what,
        reason: format!("{value} is larger than {}", i32::MAX),
    })
}

fn to_u32(table: &'static str, key: &impl Display, value: i32) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt {
        table,
        key: key.to_string(),
        reason: format!("negative count {value}"),
    })
}

/// A row of `organizations`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::organizations, check_for_backend(diesel::pg::Pg))]
pub struct OrganizationRow {
    /// The identifier.
    pub id: String,
    /// Where it can be reached.
    pub address: Option<String>,
    /// When it was registered.
    pub creation_date: DateTime<Utc>,
}

impl OrganizationRow {
    /// The row storing `organization` (`is_current` is not stored).
    pub fn from_model(organization: &Organization) -> OrganizationRow {
        OrganizationRow {
            id: organization.id.0.clone(),
            address: organization.address.clone(),
            creation_date: organization.creation_date,
        }
    }

    /// The organization, with `is_current` derived from the deployment's own organization.
    pub fn into_model(self, current: Option<&OrganizationId>) -> Organization {
        let id = OrganizationId(self.id);
        Organization {
            is_current: current == Some(&id),
            id,
            address: self.address,
            creation_date: self.creation_date,
        }
    }
}

/// A row of `users`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::users, check_for_backend(diesel::pg::Pg))]
pub struct UserRow {
    /// The identifier.
    pub identifier: String,
    /// The full name.
    pub display_name: String,
    /// The organization it acts for.
    pub organization: String,
    /// Role words.
    pub roles: Vec<String>,
    /// Enabled flag.
    pub is_enabled: bool,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Last update time.
    pub update_date: DateTime<Utc>,
}

impl UserRow {
    /// The row storing `user`.
    pub fn from_model(user: &User) -> UserRow {
        UserRow {
            identifier: user.identifier.0.clone(),
            display_name: user.display_name.clone(),
            organization: user.organization.0.clone(),
            roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            is_enabled: user.is_enabled,
            creation_date: user.creation_date,
            update_date: user.update_date,
        }
    }

    /// The user this row stores.
    pub fn into_model(self) -> StoreResult<User> {
        let roles = self
            .roles
            .iter()
            .map(|role| parse_word("users", &self.identifier, role))
            .collect::<StoreResult<_>>()?;
        Ok(User {
            identifier: self.identifier.into(),
            display_name: self.display_name,
            organization: self.organization.into(),
            roles,
            is_enabled: self.is_enabled,
            creation_date: self.creation_date,
            update_date: self.update_date,
        })
    }
}

/// A row of `credentials`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::credentials, check_for_backend(diesel::pg::Pg))]
pub struct CredentialRow {
    /// The identifier.
    pub identifier: Uuid,
    /// The user it authenticates.
    pub user_identifier: String,
    /// `password` or `token`.
    pub kind: String,
    /// The hash function.
    pub hash_function: String,
    /// The hash function's parameters.
    pub hash_function_parameters: Value,
    /// The salt, as hex.
    pub hash_function_salt: Option<String>,
    /// The protected secret.
    pub secret: String,
    /// What the token is for.
    pub description: Option<String>,
    /// Expiry.
    pub expiration_date: Option<DateTime<Utc>>,
    /// Revocation.
    pub revocation_date: Option<DateTime<Utc>>,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Last update time.
    pub update_date: DateTime<Utc>,
}

impl CredentialRow {
    /// The row storing `credential`.
    pub fn from_model(credential: &Credential) -> CredentialRow {
        CredentialRow {
            identifier: credential.identifier.0,
            user_identifier: credential.user.0.clone(),
            kind: credential.kind.as_str().to_owned(),
            hash_function: credential.hash_function.clone(),
            hash_function_parameters: credential.hash_function_parameters.clone(),
            hash_function_salt: credential.hash_function_salt.clone(),
            secret: credential.secret.expose().to_owned(),
            description: credential.description.clone(),
            expiration_date: credential.expiration_date,
            revocation_date: credential.revocation_date,
            creation_date: credential.creation_date,
            update_date: credential.update_date,
        }
    }

    /// The credential this row stores.
    pub fn into_model(self) -> StoreResult<Credential> {
        Ok(Credential {
            kind: parse_word("credentials", &self.identifier, &self.kind)?,
            identifier: self.identifier.into(),
            user: self.user_identifier.into(),
            hash_function: self.hash_function,
            hash_function_parameters: self.hash_function_parameters,
            hash_function_salt: self.hash_function_salt,
            secret: Secret(self.secret),
            description: self.description,
            expiration_date: self.expiration_date,
            revocation_date: self.revocation_date,
            creation_date: self.creation_date,
            update_date: self.update_date,
        })
    }
}

/// A row of `projects`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::projects, check_for_backend(diesel::pg::Pg))]
pub struct ProjectRow {
    /// The identifier.
    pub identifier: String,
    /// The display name.
    pub display_name: String,
    /// Services, a JSON object.
    pub services: Value,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Last update time.
    pub update_date: DateTime<Utc>,
}

impl ProjectRow {
    /// The row storing `project`.
    pub fn from_model(project: &Project) -> ProjectRow {
        ProjectRow {
            identifier: project.identifier.0.clone(),
            display_name: project.display_name.clone(),
            services: Value::Object(project.services.clone()),
            creation_date: project.creation_date,
            update_date: project.update_date,
        }
    }

    /// The project this row stores.
    pub fn into_model(self) -> StoreResult<Project> {
        Ok(Project {
            services: from_json("projects", &self.identifier, "services", self.services)?,
            identifier: self.identifier.into(),
            display_name: self.display_name,
            creation_date: self.creation_date,
            update_date: self.update_date,
        })
    }
}

/// A row of `functions`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::functions, check_for_backend(diesel::pg::Pg))]
pub struct FunctionRow {
    /// Key.
    pub key: Uuid,
    /// Name.
    pub name: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Plain-text description.
    pub summary: Option<String>,
    /// Owner organization.
    pub owner: String,
    /// Creating user.
    pub creator: Option<String>,
    /// Project.
    pub project: Option<String>,
    /// Permissions (JSON).
    pub permissions: Value,
    /// Metadata (JSON object).
    pub metadata: Value,
    /// Description file (JSON).
    pub description: Option<Value>,
    /// Archive file (JSON).
    pub archive: Option<Value>,
    /// Built image (JSON).
    pub image: Option<Value>,
    /// Inputs (JSON array).
    pub inputs: Value,
    /// Outputs (JSON array).
    pub outputs: Value,
    /// Steps (JSON array).
    pub steps: Value,
    /// Build steps (JSON array).
    pub build_steps: Value,
    /// Declared parameters (JSON array).
    pub parameters: Value,
    /// Parameter schema.
    pub parameter_schema: Option<Value>,
    /// Workspace directory.
    pub workspace: Option<String>,
    /// Kind of job.
    pub kind: Option<String>,
    /// Requirements (JSON object).
    pub requirements: Value,
    /// Retry policy (JSON).
    pub retry: Value,
    /// Timeout in seconds.
    pub timeout_secs: Option<i64>,
    /// Enabled flag.
    pub is_enabled: bool,
    /// Build status word.
    pub status: String,
    /// Mutable data.
    pub data: Value,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Last update time.
    pub update_date: DateTime<Utc>,
}

impl FunctionRow {
    /// The row storing `function`.
    pub fn from_model(function: &Function) -> StoreResult<FunctionRow> {
        let timeout_secs = function
            .timeout_secs
            .map(|secs| {
                i64::try_from(secs).map_err(|_| StoreError::Encode {
                    what: "function timeout",
                    reason: format!("{secs} seconds is too large"),
                })
            })
            .transpose()?;
        Ok(FunctionRow {
            key: function.key.0,
            name: function.name.clone(),
            display_name: function.display_name.clone(),
            summary: function.summary.clone(),
            owner: function.owner.0.clone(),
            creator: function.creator.as_ref().map(|u| u.0.clone()),
            project: function.project.as_ref().map(|p| p.0.clone()),
            permissions: to_json("function permissions", &function.permissions)?,
            metadata: to_json("function metadata", &function.metadata)?,
            description: function
                .description
                .as_ref()
                .map(|f| to_json("function description", f))
                .transpose()?,
            archive: function
                .archive
                .as_ref()
                .map(|f| to_json("function archive", f))
                .transpose()?,
            image: function
                .image
                .as_ref()
                .map(|f| to_json("function image", f))
                .transpose()?,
            inputs: to_json("function inputs", &function.inputs)?,
            outputs: to_json("function outputs", &function.outputs)?,
            steps: to_json("function steps", &function.steps)?,
            build_steps: to_json("function build steps", &function.build_steps)?,
            parameters: to_json("function parameters", &function.parameters)?,
            parameter_schema: function.parameter_schema.clone(),
            workspace: function.workspace.clone(),
            kind: function.kind.clone(),
            requirements: to_json("function requirements", &function.requirements)?,
            retry: to_json("function retry policy", &function.retry)?,
            timeout_secs,
            is_enabled: function.is_enabled,
            status: function.status.as_str().to_owned(),
            data: function.data.clone(),
            creation_date: function.creation_date,
            update_date: function.update_date,
        })
    }

    /// The function this row stores.
    pub fn into_model(self) -> StoreResult<Function> {
        const T: &str = "functions";
        let key = self.key;
        let file = |column: &str, value: Option<Value>| {
            value.map(|v| from_json(T, &key, column, v)).transpose()
        };
        Ok(Function {
            key: key.into(),
            name: self.name,
            display_name: self.display_name,
            summary: self.summary,
            owner: self.owner.into(),
            creator: self.creator.map(Into::into),
            project: self.project.map(Into::into),
            permissions: from_json(T, &key, "permissions", self.permissions)?,
            metadata: from_json(T, &key, "metadata", self.metadata)?,
            description: file("description", self.description)?,
            archive: file("archive", self.archive)?,
            image: file("image", self.image)?,
            inputs: from_json(T, &key, "inputs", self.inputs)?,
            outputs: from_json(T, &key, "outputs", self.outputs)?,
            steps: from_json(T, &key, "steps", self.steps)?,
            build_steps: from_json(T, &key, "build_steps", self.build_steps)?,
            parameters: from_json(T, &key, "parameters", self.parameters)?,
            parameter_schema: self.parameter_schema,
            workspace: self.workspace,
            kind: self.kind,
            requirements: from_json(T, &key, "requirements", self.requirements)?,
            retry: from_json(T, &key, "retry", self.retry)?,
            timeout_secs: self
                .timeout_secs
                .map(|secs| {
                    u64::try_from(secs).map_err(|_| StoreError::Corrupt {
                        table: T,
                        key: key.to_string(),
                        reason: format!("negative timeout {secs}"),
                    })
                })
                .transpose()?,
            is_enabled: self.is_enabled,
            status: parse_word(T, &key, &self.status)?,
            data: self.data,
            creation_date: self.creation_date,
            update_date: self.update_date,
        })
    }
}

/// A row of `datasets` (its sample keys live in `dataset_samples`).
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::datasets, check_for_backend(diesel::pg::Pg))]
pub struct DatasetRow {
    /// Key.
    pub key: Uuid,
    /// Name.
    pub name: String,
    /// Owner organization.
    pub owner: String,
    /// Permissions (JSON).
    pub permissions: Value,
    /// Type of data.
    pub data_type: String,
    /// Opener file (JSON).
    pub opener: Value,
    /// Description file (JSON).
    pub description: Value,
    /// Metadata (JSON object).
    pub metadata: Value,
    /// Logs permission (JSON).
    pub logs_permission: Value,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
}

impl DatasetRow {
    /// The row storing `dataset` (without its sample links).
    pub fn from_model(dataset: &Dataset) -> StoreResult<DatasetRow> {
        Ok(DatasetRow {
            key: dataset.key.0,
            name: dataset.name.clone(),
            owner: dataset.owner.0.clone(),
            permissions: to_json("dataset permissions", &dataset.permissions)?,
            data_type: dataset.data_type.clone(),
            opener: to_json("dataset opener", &dataset.opener)?,
            description: to_json("dataset description", &dataset.description)?,
            metadata: to_json("dataset metadata", &dataset.metadata)?,
            logs_permission: to_json("dataset logs permission", &dataset.logs_permission)?,
            creation_date: dataset.creation_date,
        })
    }

    /// The dataset this row stores, with its samples' keys in attachment order.
    pub fn into_model(self, data_sample_keys: Vec<Uuid>) -> StoreResult<Dataset> {
        const T: &str = "datasets";
        let key = self.key;
        Ok(Dataset {
            key: key.into(),
            name: self.name,
            owner: self.owner.into(),
            permissions: from_json(T, &key, "permissions", self.permissions)?,
            data_type: self.data_type,
            data_sample_keys: data_sample_keys.into_iter().map(Into::into).collect(),
            opener: from_json(T, &key, "opener", self.opener)?,
            description: from_json(T, &key, "description", self.description)?,
            metadata: from_json(T, &key, "metadata", self.metadata)?,
            logs_permission: from_json(T, &key, "logs_permission", self.logs_permission)?,
            creation_date: self.creation_date,
        })
    }
}

/// A row of `data_samples` (its data managers live in `dataset_samples`).
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::data_samples, check_for_backend(diesel::pg::Pg))]
pub struct DataSampleRow {
    /// Key.
    pub key: Uuid,
    /// Owner organization.
    pub owner: String,
    /// Path on the owner's hosts.
    pub path: Option<String>,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
}

impl DataSampleRow {
    /// The row storing `sample` (without its data-manager links).
    pub fn from_model(sample: &DataSample) -> DataSampleRow {
        DataSampleRow {
            key: sample.key.0,
            owner: sample.owner.0.clone(),
            path: sample.path.clone(),
            creation_date: sample.creation_date,
        }
    }

    /// The sample this row stores, with the data managers it belongs to.
    pub fn into_model(self, data_manager_keys: Vec<Uuid>) -> DataSample {
        DataSample {
            key: self.key.into(),
            owner: self.owner.into(),
            data_manager_keys: data_manager_keys.into_iter().map(Into::into).collect(),
            path: self.path,
            creation_date: self.creation_date,
        }
    }
}

/// A row of `dataset_samples`: one sample attached to one data manager.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = schema::dataset_samples, check_for_backend(diesel::pg::Pg))]
pub struct DatasetSampleRow {
    /// The data manager.
    pub dataset_key: Uuid,
    /// The sample.
    pub data_sample_key: Uuid,
}

/// A row of `compute_plans`. Its key is left out of its changeset: an update that set it, even
/// to itself, would run the trigger that keeps it from changing.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(
    table_name = schema::compute_plans,
    primary_key(key),
    check_for_backend(diesel::pg::Pg)
)]
pub struct PlanRow {
    /// Key.
    pub key: Uuid,
    /// Project.
    pub project: Option<String>,
    /// Name.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// Owner organization.
    pub owner: String,
    /// Creating user.
    pub creator: Option<String>,
    /// Metadata (JSON object).
    pub metadata: Value,
    /// All tasks.
    pub task_count: i32,
    /// WAITING tasks.
    pub waiting_count: i32,
    /// TODO tasks.
    pub todo_count: i32,
    /// DOING tasks.
    pub doing_count: i32,
    /// DONE tasks.
    pub done_count: i32,
    /// FAILED tasks.
    pub failed_count: i32,
    /// CANCELED tasks.
    pub canceled_count: i32,
    /// Status word.
    pub status: String,
    /// First failed task.
    pub failed_task_key: Option<Uuid>,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Start time.
    pub start_date: Option<DateTime<Utc>>,
    /// End time.
    pub end_date: Option<DateTime<Utc>>,
    /// Failure time.
    pub failure_date: Option<DateTime<Utc>>,
    /// Cancelation time.
    pub cancelation_date: Option<DateTime<Utc>>,
}

impl PlanRow {
    /// The row storing `plan`.
    pub fn from_model(plan: &ComputePlan) -> StoreResult<PlanRow> {
        let counters = &plan.counters;
        Ok(PlanRow {
            key: plan.key.0,
            project: plan.project.as_ref().map(|p| p.0.clone()),
            name: plan.name.clone(),
            tag: plan.tag.clone(),
            owner: plan.owner.0.clone(),
            creator: plan.creator.as_ref().map(|u| u.0.clone()),
            metadata: to_json("plan metadata", &plan.metadata)?,
            task_count: to_i32("task count", counters.task_count)?,
            waiting_count: to_i32("waiting count", counters.waiting_count)?,
            todo_count: to_i32("todo count", counters.todo_count)?,
            doing_count: to_i32("doing count", counters.doing_count)?,
            done_count: to_i32("done count", counters.done_count)?,
            failed_count: to_i32("failed count", counters.failed_count)?,
            canceled_count: to_i32("canceled count", counters.canceled_count)?,
            status: plan.status.as_str().to_owned(),
            failed_task_key: plan.failed_task_key.map(|k| k.0),
            creation_date: plan.creation_date,
            start_date: plan.start_date,
            end_date: plan.end_date,
            failure_date: plan.failure_date,
            cancelation_date: plan.cancelation_date,
        })
    }

    /// The plan this row stores.
    pub fn into_model(self) -> StoreResult<ComputePlan> {
        const T: &str = "compute_plans";
        let key = self.key;
        let count = |value| to_u32(T, &key, value);
        Ok(ComputePlan {
            key: key.into(),
            project: self.project.map(Into::into),
            name: self.name,
            tag: self.tag,
            owner: self.owner.into(),
            creator: self.creator.map(Into::into),
            metadata: from_json(T, &key, "metadata", self.metadata)?,
            counters: PlanCounters {
                task_count: count(self.task_count)?,
                waiting_count: count(self.waiting_count)?,
                todo_count: count(self.todo_count)?,
                doing_count: count(self.doing_count)?,
                done_count: count(self.done_count)?,
                failed_count: count(self.failed_count)?,
                canceled_count: count(self.canceled_count)?,
            },
            status: parse_word(T, &key, &self.status)?,
            failed_task_key: self.failed_task_key.map(Into::into),
            creation_date: self.creation_date,
            start_date: self.start_date,
            end_date: self.end_date,
            failure_date: self.failure_date,
            cancelation_date: self.cancelation_date,
        })
    }
}

/// A row of `tasks`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::tasks, check_for_backend(diesel::pg::Pg))]
pub struct TaskRow {
    /// Key.
    pub key: Uuid,
    /// Plan.
    pub compute_plan_key: Uuid,
    /// Function.
    pub function_key: Uuid,
    /// Name.
    pub name: Option<String>,
    /// Owner organization.
    pub owner: String,
    /// Worker organization.
    pub worker: String,
    /// Creating user.
    pub creator: Option<String>,
    /// Source (JSON).
    pub source: Value,
    /// Rank.
    pub rank: i32,
    /// Tag.
    pub tag: String,
    /// Metadata (JSON object).
    pub metadata: Value,
    /// Inputs (JSON array).
    pub inputs: Value,
    /// Outputs (JSON object).
    pub outputs: Value,
    /// Parameters (JSON object).
    pub parameters: Value,
    /// Requirements (JSON object).
    pub requirements: Value,
    /// Status word.
    pub status: String,
    /// Waiting reason word.
    pub waiting_reason: Option<String>,
    /// Error type word.
    pub error_type: Option<String>,
    /// Failure message.
    pub error_message: Option<String>,
    /// Where the failed attempt's logs are.
    pub logs_address: Option<String>,
    /// Logs permission (JSON).
    pub logs_permission: Value,
    /// Cancel requested.
    pub cancel_requested: bool,
    /// Abort requested.
    pub abort_requested: bool,
    /// Attempts granted.
    pub attempt_count: i32,
    /// The leased attempt.
    pub lease_attempt: Option<i32>,
    /// The lease token.
    pub lease_token: Option<Uuid>,
    /// The lease expiry.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Not claimable before.
    pub not_before: Option<DateTime<Utc>>,
    /// Worker process.
    pub worker_id: Option<String>,
    /// Device.
    pub device_id: Option<String>,
    /// Input type.
    pub input_type: Option<String>,
    /// Input data.
    pub input: Value,
    /// Output data.
    pub output: Value,
    /// Mutable data.
    pub data: Value,
    /// Step statuses (JSON array).
    pub steps: Value,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Last update time.
    pub update_date: DateTime<Utc>,
    /// Start time.
    pub start_date: Option<DateTime<Utc>>,
    /// End time.
    pub end_date: Option<DateTime<Utc>>,
}

impl TaskRow {
    /// The row storing `task`.
    pub fn from_model(task: &Task) -> StoreResult<TaskRow> {
        Ok(TaskRow {
            key: task.key.0,
            compute_plan_key: task.compute_plan_key.0,
            function_key: task.function_key.0,
            name: task.name.clone(),
            owner: task.owner.0.clone(),
            worker: task.worker.0.clone(),
            creator: task.creator.as_ref().map(|u| u.0.clone()),
            source: to_json("task source", &task.source)?,
            rank: to_i32("task rank", task.rank)?,
            tag: task.tag.clone(),
            metadata: to_json("task metadata", &task.metadata)?,
            inputs: to_json("task inputs", &task.inputs)?,
            outputs: to_json("task outputs", &task.outputs)?,
            parameters: Value::Object(task.parameters.clone()),
            requirements: to_json("task requirements", &task.requirements)?,
            status: task.status.as_str().to_owned(),
            waiting_reason: task.waiting_reason.map(|r| r.as_str().to_owned()),
            error_type: task.error_type.map(|e| e.as_str().to_owned()),
            error_message: task.error_message.clone(),
            logs_address: task.logs_address.clone(),
            logs_permission: to_json("task logs permission", &task.logs_permission)?,
            cancel_requested: task.cancel_requested,
            abort_requested: task.abort_requested,
            attempt_count: to_i32("task attempt count", task.attempt_count)?,
            lease_attempt: task
                .lease
                .as_ref()
                .map(|l| to_i32("lease attempt", l.attempt.get()))
                .transpose()?,
            lease_token: task.lease.as_ref().map(|l| l.token),
            lease_expires_at: task.lease.as_ref().map(|l| l.expires_at),
            not_before: task.not_before,
            worker_id: task.worker_id.as_ref().map(|w| w.0.clone()),
            device_id: task.device_id.as_ref().map(|d| d.0.clone()),
            input_type: task.input_type.clone(),
            input: task.input.clone(),
            output: task.output.clone(),
            data: task.data.clone(),
            steps: to_json("task steps", &task.steps)?,
            creation_date: task.creation_date,
            update_date: task.update_date,
            start_date: task.start_date,
            end_date: task.end_date,
        })
    }

    /// The task this row stores.
    pub fn into_model(self) -> StoreResult<Task> {
        const T: &str = "tasks";
        let key = self.key;
        let lease = match (self.lease_attempt, self.lease_token, self.lease_expires_at) {
            (Some(attempt), Some(token), Some(expires_at)) => Some(Lease {
                attempt: Attempt(to_u32(T, &key, attempt)?),
                token,
                expires_at,
            }),
            (None, None, None) => None,
            _ => {
                return Err(StoreError::Corrupt {
                    table: T,
                    key: key.to_string(),
                    reason: "partial lease".to_owned(),
                });
            }
        };
        Ok(Task {
            key: key.into(),
            compute_plan_key: self.compute_plan_key.into(),
            function_key: self.function_key.into(),
            name: self.name,
            owner: self.owner.into(),
            worker: self.worker.into(),
            creator: self.creator.map(Into::into),
            source: from_json(T, &key, "source", self.source)?,
            rank: to_u32(T, &key, self.rank)?,
            tag: self.tag,
            metadata: from_json(T, &key, "metadata", self.metadata)?,
            inputs: from_json(T, &key, "inputs", self.inputs)?,
            outputs: from_json(T, &key, "outputs", self.outputs)?,
            parameters: from_json(T, &key, "parameters", self.parameters)?,
            requirements: from_json(T, &key, "requirements", self.requirements)?,
            status: parse_word(T, &key, &self.status)?,
            waiting_reason: self
                .waiting_reason
                .map(|r| parse_word(T, &key, &r))
                .transpose()?,
            error_type: self
                .error_type
                .map(|e| parse_word(T, &key, &e))
                .transpose()?,
            error_message: self.error_message,
            logs_address: self.logs_address,
            logs_permission: from_json(T, &key, "logs_permission", self.logs_permission)?,
            cancel_requested: self.cancel_requested,
            abort_requested: self.abort_requested,
            attempt_count: to_u32(T, &key, self.attempt_count)?,
            lease,
            not_before: self.not_before,
            worker_id: self.worker_id.map(Into::into),
            device_id: self.device_id.map(Into::into),
            input_type: self.input_type,
            input: self.input,
            output: self.output,
            data: self.data,
            steps: from_json(T, &key, "steps", self.steps)?,
            creation_date: self.creation_date,
            update_date: self.update_date,
            start_date: self.start_date,
            end_date: self.end_date,
        })
    }
}

/// The columns of `tasks` the dispatcher's core holds while a plan runs: reading only these
/// keeps the rebuild of a large plan fast and small.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = schema::tasks, check_for_backend(diesel::pg::Pg))]
pub struct TaskStateRow {
    /// The task's key.
    pub key: Uuid,
    /// Its function.
    pub function_key: Uuid,
    /// Its status.
    pub status: String,
    /// Why it waits.
    pub waiting_reason: Option<String>,
    /// Its rank.
    pub rank: i32,
    /// The organization that runs it.
    pub worker: String,
    /// What a worker needs (JSON).
    pub requirements: Value,
    /// Why it failed.
    pub error_type: Option<String>,
    /// What failed.
    pub error_message: Option<String>,
    /// A cancel was ordered.
    pub cancel_requested: bool,
    /// An abort was ordered.
    pub abort_requested: bool,
    /// Attempts granted.
    pub attempt_count: i32,
    /// The lease's attempt.
    pub lease_attempt: Option<i32>,
    /// The lease token.
    pub lease_token: Option<Uuid>,
    /// The lease expiry.
    pub lease_expires_at: Option<Timestamp>,
    /// Not to run before.
    pub not_before: Option<Timestamp>,
    /// The worker process running it.
    pub worker_id: Option<String>,
    /// When it started.
    pub start_date: Option<Timestamp>,
    /// When it ended.
    pub end_date: Option<Timestamp>,
}

/// A task as the dispatcher's core holds it (see [`TaskStateRow`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TaskState {
    /// The task's key.
    pub key: TaskKey,
    /// Its function.
    pub function_key: FunctionKey,
    /// Its status.
    pub status: models::TaskStatus,
    /// Why it waits.
    pub waiting_reason: Option<models::WaitingReason>,
    /// Its rank.
    pub rank: u32,
    /// The organization that runs it.
    pub worker: OrganizationId,
    /// What a worker needs.
    pub requirements: models::RequirementSet,
    /// Why it failed.
    pub error_type: Option<models::TaskErrorType>,
    /// What failed.
    pub error_message: Option<String>,
    /// A cancel was ordered.
    pub cancel_requested: bool,
    /// An abort was ordered.
    pub abort_requested: bool,
    /// Attempts granted.
    pub attempt_count: u32,
    /// The running attempt's lease.
    pub lease: Option<Lease>,
    /// Not to run before.
    pub not_before: Option<Timestamp>,
    /// The worker process running it.
    pub worker_id: Option<WorkerId>,
    /// When it started.
    pub start_date: Option<Timestamp>,
    /// When it ended.
    pub end_date: Option<Timestamp>,
}

impl From<&Task> for TaskState {
    fn from(task: &Task) -> TaskState {
        TaskState {
            key: task.key,
            function_key: task.function_key,
            status: task.status,
            waiting_reason: task.waiting_reason,
            rank: task.rank,
            worker: task.worker.clone(),
            requirements: task.requirements.clone(),
            error_type: task.error_type,
            error_message: task.error_message.clone(),
            cancel_requested: task.cancel_requested,
            abort_requested: task.abort_requested,
            attempt_count: task.attempt_count,
            lease: task.lease.clone(),
            not_before: task.not_before,
            worker_id: task.worker_id.clone(),
            start_date: task.start_date,
            end_date: task.end_date,
        }
    }
}

impl TaskStateRow {
    /// The task state this row holds.
    pub fn into_state(self) -> StoreResult<TaskState> {
        const T: &str = "tasks";
        let key = self.key;
        let lease = match (self.lease_attempt, self.lease_token, self.lease_expires_at) {
            (Some(attempt), Some(token), Some(expires_at)) => Some(Lease {
                attempt: Attempt(to_u32(T, &key, attempt)?),
                token,
                expires_at,
            }),
            (None, None, None) => None,
            _ => {
                return Err(StoreError::Corrupt {
                    table: T,
                    key: key.to_string(),
                    reason: "partial lease".to_owned(),
                });
            }
        };
        Ok(TaskState {
            key: key.into(),
            function_key: self.function_key.into(),
            status: parse_word(T, &key, &self.status)?,
            waiting_reason: self
                .waiting_reason
                .map(|r| parse_word(T, &key, &r))
                .transpose()?,
            rank: to_u32(T, &key, self.rank)?,
            worker: self.worker.into(),
            requirements: from_json(T, &key, "requirements", self.requirements)?,
            error_type: self
                .error_type
                .map(|e| parse_word(T, &key, &e))
                .transpose()?,
            error_message: self.error_message,
            cancel_requested: self.cancel_requested,
            abort_requested: self.abort_requested,
            attempt_count: to_u32(T, &key, self.attempt_count)?,
            lease,
            not_before: self.not_before,
            worker_id: self.worker_id.map(Into::into),
            start_date: self.start_date,
            end_date: self.end_date,
        })
    }
}

/// A row of `task_edges`: `child_key` takes an input from `parent_key`.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::task_edges, check_for_backend(diesel::pg::Pg))]
pub struct TaskEdgeRow {
    /// The parent.
    pub parent_key: Uuid,
    /// The child.
    pub child_key: Uuid,
}

/// A stored row of `task_state_changes`.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = schema::task_state_changes, check_for_backend(diesel::pg::Pg))]
pub struct StateChangeRow {
    /// Its position in the history.
    pub id: i64,
    /// The task.
    pub task_key: Uuid,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// The new status word.
    pub status: String,
    /// Why.
    pub reason: String,
    /// The attempt concerned.
    pub attempt: Option<i32>,
}

/// A new row of `task_state_changes`.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = schema::task_state_changes, check_for_backend(diesel::pg::Pg))]
pub struct NewStateChangeRow {
    /// The task.
    pub task_key: Uuid,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// The new status word.
    pub status: String,
    /// Why.
    pub reason: String,
    /// The attempt concerned.
    pub attempt: Option<i32>,
}

impl NewStateChangeRow {
    /// The row storing `change`.
    pub fn from_model(change: &TaskStateChange) -> StoreResult<NewStateChangeRow> {
        Ok(NewStateChangeRow {
            task_key: change.task_key.0,
            timestamp: change.timestamp,
            status: change.status.as_str().to_owned(),
            reason: change.reason.clone(),
            attempt: change
                .attempt
                .map(|a| to_i32("attempt", a.get()))
                .transpose()?,
        })
    }
}

impl StateChangeRow {
    /// The state change this row stores.
    pub fn into_model(self) -> StoreResult<TaskStateChange> {
        const T: &str = "task_state_changes";
        let id = self.id;
        Ok(TaskStateChange {
            task_key: self.task_key.into(),
            timestamp: self.timestamp,
            status: parse_word(T, &id, &self.status)?,
            reason: self.reason,
            attempt: self
                .attempt
                .map(|a| to_u32(T, &id, a).map(Attempt))
                .transpose()?,
        })
    }
}

/// A stored row of `outbox`: a ready task waiting to be published.
#[derive(Clone, Debug, PartialEq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = schema::outbox, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    /// Its position in publishing order.
    pub id: i64,
    /// The task.
    pub task_key: Uuid,
    /// The requirement set's routing key.
    pub routing_key: String,
    /// The message body to publish.
    pub payload: Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Not to be published before this time (a retry's backoff).
    pub available_at: Option<DateTime<Utc>>,
    /// Held back from its queue, beyond the relay's `publish_ahead` (the relay releases it).
    pub held: bool,
}

/// A new row of `outbox`.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = schema::outbox, check_for_backend(diesel::pg::Pg))]
pub struct NewOutboxRow {
    /// The task.
    pub task_key: Uuid,
    /// The requirement set's routing key.
    pub routing_key: String,
    /// The message body to publish.
    pub payload: Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Not to be published before this time (a retry's backoff).
    pub available_at: Option<DateTime<Utc>>,
    /// Stored held back from its queue, beyond the relay's `publish_ahead`: the relay releases
    /// it as the queue's consumers take messages. A held row has no availability of its own.
    pub held: bool,
}

/// A row of `submissions`: the answer given to one submission message.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::submissions, check_for_backend(diesel::pg::Pg))]
pub struct SubmissionRow {
    /// The message id of the submission.
    pub message_id: String,
    /// The plan it named, when it could be read.
    pub compute_plan_key: Option<Uuid>,
    /// SHA-256 of the submitted body, hex.
    pub digest: String,
    /// The reply sent (a `plan.submission_reply` message).
    pub reply: Value,
    /// When it was answered.
    pub creation_date: DateTime<Utc>,
}

/// A row of `models`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::models, check_for_backend(diesel::pg::Pg))]
pub struct ModelRow {
    /// Key.
    pub key: Uuid,
    /// Producing task.
    pub compute_task_key: Uuid,
    /// Output identifier.
    pub output_identifier: String,
    /// SHA-256, while available.
    pub checksum: Option<String>,
    /// Address, while available.
    pub storage_address: Option<String>,
    /// Permissions (JSON).
    pub permissions: Value,
    /// Owner organization.
    pub owner: String,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
}

impl ModelRow {
    /// The row storing `model`.
    pub fn from_model(model: &Model) -> StoreResult<ModelRow> {
        Ok(ModelRow {
            key: model.key.0,
            compute_task_key: model.compute_task_key.0,
            output_identifier: model.output_identifier.clone(),
            checksum: model.address.as_ref().map(|a| a.checksum.clone()),
            storage_address: model.address.as_ref().map(|a| a.storage_address.clone()),
            permissions: to_json("model permissions", &model.permissions)?,
            owner: model.owner.0.clone(),
            creation_date: model.creation_date,
        })
    }

    /// The model this row stores.
    pub fn into_model(self) -> StoreResult<Model> {
        const T: &str = "models";
        let key = self.key;
        let address = match (self.checksum, self.storage_address) {
            (Some(checksum), Some(storage_address)) => Some(models::File {
                checksum,
                storage_address,
            }),
            (None, None) => None,
            _ => {
                return Err(StoreError::Corrupt {
                    table: T,
                    key: key.to_string(),
                    reason: "partial address".to_owned(),
                });
            }
        };
        Ok(Model {
            key: key.into(),
            compute_task_key: self.compute_task_key.into(),
            output_identifier: self.output_identifier,
            address,
            permissions: from_json(T, &key, "permissions", self.permissions)?,
            owner: self.owner.into(),
            creation_date: self.creation_date,
        })
    }
}

/// A row of `performances`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::performances, check_for_backend(diesel::pg::Pg))]
pub struct PerformanceRecord {
    /// The task.
    pub compute_task_key: Uuid,
    /// The output.
    pub output_identifier: String,
    /// The value.
    pub value: f64,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
}

impl PerformanceRecord {
    /// The row storing `performance`.
    pub fn from_model(performance: &Performance) -> PerformanceRecord {
        PerformanceRecord {
            compute_task_key: performance.compute_task_key.0,
            output_identifier: performance.output_identifier.clone(),
            value: performance.value,
            creation_date: performance.creation_date,
        }
    }

    /// The performance this row stores.
    pub fn into_model(self) -> Performance {
        Performance {
            compute_task_key: self.compute_task_key.into(),
            output_identifier: self.output_identifier,
            value: self.value,
            creation_date: self.creation_date,
        }
    }
}

/// A row of `log_lines`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::log_lines, check_for_backend(diesel::pg::Pg))]
pub struct LogLineRow {
    /// The task.
    pub task_key: Uuid,
    /// The attempt.
    pub attempt: i32,
    /// Position in the attempt's log.
    pub seq: i64,
    /// The step.
    pub step: Option<i32>,
    /// Stream word.
    pub stream: String,
    /// When read.
    pub timestamp: DateTime<Utc>,
    /// The text.
    pub text: String,
    /// Cut to the bound.
    pub truncated: bool,
}

impl LogLineRow {
    /// The row storing `line`.
    pub fn from_model(line: &LogLine) -> StoreResult<LogLineRow> {
        Ok(LogLineRow {
            task_key: line.task_key.0,
            attempt: to_i32("log attempt", line.attempt.get())?,
            seq: i64::try_from(line.seq).map_err(|_| StoreError::Encode {
                what: "log sequence number",
                reason: format!("{} is too large", line.seq),
            })?,
            step: line.step.map(|s| to_i32("log step", s)).transpose()?,
            stream: line.stream.as_str().to_owned(),
            timestamp: line.timestamp,
            text: line.text.clone(),
            truncated: line.truncated,
        })
    }

    /// The log line this row stores.
    pub fn into_model(self) -> StoreResult<LogLine> {
        const T: &str = "log_lines";
        let key = format!("{}/{}/{}", self.task_key, self.attempt, self.seq);
        Ok(LogLine {
            task_key: self.task_key.into(),
            attempt: Attempt(to_u32(T, &key, self.attempt)?),
            seq: u64::try_from(self.seq).map_err(|_| StoreError::Corrupt {
                table: T,
                key: key.clone(),
                reason: "negative sequence number".to_owned(),
            })?,
            step: self.step.map(|s| to_u32(T, &key, s)).transpose()?,
            stream: parse_word(T, &key, &self.stream)?,
            timestamp: self.timestamp,
            text: self.text,
            truncated: self.truncated,
        })
    }
}

/// A stored row of `measurements`.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = schema::measurements, check_for_backend(diesel::pg::Pg))]
pub struct MeasurementRow {
    /// Its position in arrival order.
    pub id: i64,
    /// The task.
    pub task_key: Uuid,
    /// The attempt.
    pub attempt: i32,
    /// The channel.
    pub channel: String,
    /// Device time.
    pub t: f64,
    /// Value.
    pub value: f64,
    /// When read.
    pub timestamp: DateTime<Utc>,
}

/// A new row of `measurements`.
#[derive(Clone, Debug, Insertable)]
#[diesel(table_name = schema::measurements, check_for_backend(diesel::pg::Pg))]
pub struct NewMeasurementRow {
    /// The task.
    pub task_key: Uuid,
    /// The attempt.
    pub attempt: i32,
    /// The channel.
    pub channel: String,
    /// Device time.
    pub t: f64,
    /// Value.
    pub value: f64,
    /// When read.
    pub timestamp: DateTime<Utc>,
}

impl NewMeasurementRow {
    /// The row storing `measurement`.
    pub fn from_model(measurement: &Measurement) -> StoreResult<NewMeasurementRow> {
        Ok(NewMeasurementRow {
            task_key: measurement.task_key.0,
            attempt: to_i32("measurement attempt", measurement.attempt.get())?,
            channel: measurement.channel.clone(),
            t: measurement.t,
            value: measurement.value,
            timestamp: measurement.timestamp,
        })
    }
}

impl MeasurementRow {
    /// The measurement this row stores.
    pub fn into_model(self) -> StoreResult<Measurement> {
        Ok(Measurement {
            task_key: self.task_key.into(),
            attempt: Attempt(to_u32("measurements", &self.id, self.attempt)?),
            channel: self.channel,
            t: self.t,
            value: self.value,
            timestamp: self.timestamp,
        })
    }
}

/// A row of `workers`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = schema::workers, check_for_backend(diesel::pg::Pg))]
pub struct WorkerRow {
    /// Identifier.
    pub identifier: String,
    /// Owner user.
    pub owner: String,
    /// Organization.
    pub organization: String,
    /// Program version.
    pub version: String,
    /// Display name.
    pub display_name: String,
    /// Properties (JSON object).
    pub properties: Value,
    /// Concurrent tasks.
    pub executor_limit: i32,
    /// Enabled flag.
    pub is_enabled: bool,
    /// Active flag.
    pub is_active: bool,
    /// Disconnect requested.
    pub should_disconnect: bool,
    /// Last heartbeat.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Last update time.
    pub update_date: DateTime<Utc>,
}

impl WorkerRow {
    /// The row storing `worker`.
    pub fn from_model(worker: &Worker) -> StoreResult<WorkerRow> {
        Ok(WorkerRow {
            identifier: worker.identifier.0.clone(),
            owner: worker.owner.0.clone(),
            organization: worker.organization.0.clone(),
            version: worker.version.clone(),
            display_name: worker.display_name.clone(),
            properties: to_json("worker properties", &worker.properties)?,
            executor_limit: to_i32("executor limit", worker.executor_limit)?,
            is_enabled: worker.is_enabled,
            is_active: worker.is_active,
            should_disconnect: worker.should_disconnect,
            last_heartbeat: worker.last_heartbeat,
            creation_date: worker.creation_date,
            update_date: worker.update_date,
        })
    }

    /// The worker this row stores.
    pub fn into_model(self) -> StoreResult<Worker> {
        const T: &str = "workers";
        let key = self.identifier.clone();
        Ok(Worker {
            identifier: self.identifier.into(),
            owner: self.owner.into(),
            organization: self.organization.into(),
            version: self.version,
            display_name: self.display_name,
            properties: from_json(T, &key, "properties", self.properties)?,
            executor_limit: to_u32(T, &key, self.executor_limit)?,
            is_enabled: self.is_enabled,
            is_active: self.is_active,
            should_disconnect: self.should_disconnect,
            last_heartbeat: self.last_heartbeat,
            creation_date: self.creation_date,
            update_date: self.update_date,
        })
    }
}

/// A row of `devices`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = schema::devices, check_for_backend(diesel::pg::Pg))]
pub struct DeviceRow {
    /// The worker.
    pub worker: String,
    /// The device id.
    pub id: String,
    /// The device type.
    pub device_type: String,
    /// The input type.
    pub input_type: Option<String>,
    /// The parameter schema.
    pub parameter_schema: Option<Value>,
    /// Active flag.
    pub is_active: bool,
    /// Last seen.
    pub last_seen: Option<DateTime<Utc>>,
}

impl DeviceRow {
    /// The row storing `device`.
    pub fn from_model(device: &Device) -> DeviceRow {
        DeviceRow {
            worker: device.worker.0.clone(),
            id: device.id.0.clone(),
            device_type: device.device_type.clone(),
            input_type: device.input_type.clone(),
            parameter_schema: device.parameter_schema.clone(),
            is_active: device.is_active,
            last_seen: device.last_seen,
        }
    }

    /// The device this row stores.
    pub fn into_model(self) -> Device {
        Device {
            worker: self.worker.into(),
            id: self.id.into(),
            device_type: self.device_type,
            input_type: self.input_type,
            parameter_schema: self.parameter_schema,
            is_active: self.is_active,
            last_seen: self.last_seen,
        }
    }
}

/// A row of `schedules`.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = schema::schedules, check_for_backend(diesel::pg::Pg))]
pub struct ScheduleRow {
    /// Project.
    pub project: String,
    /// Identifier.
    pub identifier: String,
    /// Display name.
    pub display_name: String,
    /// Function.
    pub function_key: Uuid,
    /// Parameters (JSON object).
    pub parameters: Value,
    /// Cron expression.
    pub expression: String,
    /// Time zone.
    pub timezone: String,
    /// Enabled flag.
    pub is_enabled: bool,
    /// Last triggered task.
    pub last_run: Option<Uuid>,
    /// Last fire time.
    pub last_fire_date: Option<DateTime<Utc>>,
    /// Creation time.
    pub creation_date: DateTime<Utc>,
    /// Last update time.
    pub update_date: DateTime<Utc>,
}

impl ScheduleRow {
    /// The row storing `schedule`.
    pub fn from_model(schedule: &Schedule) -> ScheduleRow {
        ScheduleRow {
            project: schedule.project.0.clone(),
            identifier: schedule.identifier.0.clone(),
            display_name: schedule.display_name.clone(),
            function_key: schedule.function_key.0,
            parameters: Value::Object(schedule.parameters.clone()),
            expression: schedule.expression.clone(),
            timezone: schedule.timezone.clone(),
            is_enabled: schedule.is_enabled,
            last_run: schedule.last_run.map(|k| k.0),
            last_fire_date: schedule.last_fire_date,
            creation_date: schedule.creation_date,
            update_date: schedule.update_date,
        }
    }

    /// The schedule this row stores.
    pub fn into_model(self) -> StoreResult<Schedule> {
        let key = format!("{}/{}", self.project, self.identifier);
        Ok(Schedule {
            parameters: from_json("schedules", &key, "parameters", self.parameters)?,
            project: self.project.into(),
            identifier: self.identifier.into(),
            display_name: self.display_name,
            function_key: self.function_key.into(),
            expression: self.expression,
            timezone: self.timezone,
            is_enabled: self.is_enabled,
            last_run: self.last_run.map(Into::into),
            last_fire_date: self.last_fire_date,
            creation_date: self.creation_date,
            update_date: self.update_date,
        })
    }
}
