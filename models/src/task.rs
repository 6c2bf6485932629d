//! Tasks: one execution of a function in a compute plan, its status machine and its inputs.
//!
//! A task unifies Substra's `Task`, Orchestra's `Run`, qunicorn's `Job` and LuciHub's run.
//! The transition table is SPEC.md §5; [`TaskStatus::can_become`] is its only encoding.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Attempt, DeviceId, FunctionKey, FunctionStatus, JsonObject, Metadata, OrganizationId,
    Permission, Permissions, PlanKey, RequirementSet, ScheduleId, StepState, TaskKey, Timestamp,
    UserId, WorkerId,
};

word_enum! {
    /// Where a task is in its life (SPEC.md §5). DONE, FAILED and CANCELED are terminal.
    pub enum TaskStatus("task status") {
        /// Waiting for its function's build or for its parents; see [`WaitingReason`].
        Waiting = "WAITING",
        /// Ready: published to its requirement queue, waiting for a worker's claim.
        Todo = "TODO",
        /// Claimed by a worker and running under a lease.
        Doing = "DOING",
        /// Finished successfully.
        Done = "DONE",
        /// Failed; see [`TaskErrorType`].
        Failed = "FAILED",
        /// Canceled by its owner, an operator, or its plan's failure.
        Canceled = "CANCELED",
    }
}

/// A status change that SPEC.md §5 does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The current status.
    pub from: TaskStatus,
    /// The refused next status.
    pub to: TaskStatus,
}

impl TaskStatus {
    /// Whether nothing can happen to the task any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Canceled)
    }

    /// Whether a task in this status may become `next`:
    /// WAITING → TODO; TODO → DOING; DOING → DONE; DOING → TODO (retry or lapsed lease);
    /// any non-terminal → FAILED or CANCELED. Every other change is refused.
    pub const fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        match (self, next) {
            (Waiting, Todo) | (Todo, Doing) | (Doing, Done) | (Doing, Todo) => true,
            (from, Failed | Canceled) => !from.is_terminal(),
            _ => false,
        }
    }

    /// `next` if this status may become it, else the refusal.
    pub const fn transition(self, next: TaskStatus) -> Result<TaskStatus, TransitionError> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(TransitionError {
                from: self,
                to: next,
            })
        }
    }

    /// The statuses an alias from Orchestra or qunicorn stands for (SPEC.md §1), for input and
    /// filters: `pending` is WAITING or TODO, `running` DOING, `succeeded`/`FINISHED` DONE,
    /// `failed`/`exception`/`ERROR` FAILED, `cancelled`/`aborted` CANCELED. Canonical words
    /// (any case) stand for themselves.
    pub fn from_alias(word: &str) -> Option<&'static [TaskStatus]> {
        use TaskStatus::*;
        let upper = word.to_ascii_uppercase();
        Some(match upper.as_str() {
            "WAITING" => &[Waiting],
            "TODO" => &[Todo],
            "DOING" => &[Doing],
            "DONE" => &[Done],
            "FAILED" => &[Failed],
            "CANCELED" => &[Canceled],
            "PENDING" | "READY" => &[Waiting, Todo],
            "RUNNING" => &[Doing],
            "SUCCEEDED" | "FINISHED" => &[Done],
            "EXCEPTION" | "ERROR" => &[Failed],
            "CANCELLED" | "ABORTED" => &[Canceled],
            _ => return None,
        })
    }
}

word_enum! {
    /// Why a WAITING task waits.
    pub enum WaitingReason("waiting reason") {
        /// Its function is not READY yet.
        Build = "BUILD",
        /// Some parent is not DONE yet.
        Parents = "PARENTS",
    }
}

word_enum! {
    /// Why a task FAILED, stored with the failure report.
    pub enum TaskErrorType("task error type") {
        /// Its function's build failed.
        Build = "BUILD",
        /// A step failed (non-zero exit, could not start, invalid output).
        Execution = "EXECUTION",
        /// A step or the task ran out of time.
        Timeout = "TIMEOUT",
        /// baton itself failed (worker crash beyond retries, storage error).
        Internal = "INTERNAL",
        /// The worker gave the task up (shutdown past its deadline).
        CanceledByWorker = "CANCELED_BY_WORKER",
    }
}

/// The status a task is registered with, and why it waits if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitialStatus {
    /// WAITING, TODO, FAILED or CANCELED.
    pub status: TaskStatus,
    /// Set when `status` is WAITING.
    pub waiting_reason: Option<WaitingReason>,
}

/// The status a new task takes, from its function's status and its parents' statuses
/// (SPEC.md §5, Substra's `getInitialStatus`): any parent FAILED or CANCELED → CANCELED;
/// function FAILED → FAILED; function CANCELED → CANCELED; function not READY → WAITING (BUILD);
/// some parent not DONE → WAITING (PARENTS); else TODO.
pub fn initial_status(
    function_status: FunctionStatus,
    parent_statuses: impl IntoIterator<Item = TaskStatus>,
) -> InitialStatus {
    let mut all_parents_done = true;
    for parent in parent_statuses {
        match parent {
            TaskStatus::Failed | TaskStatus::Canceled => {
                return InitialStatus {
                    status: TaskStatus::Canceled,
                    waiting_reason: None,
                };
            }
            TaskStatus::Done => {}
            _ => all_parents_done = false,
        }
    }
    let (status, waiting_reason) = match function_status {
        FunctionStatus::Failed => (TaskStatus::Failed, None),
        FunctionStatus::Canceled => (TaskStatus::Canceled, None),
        FunctionStatus::Waiting | FunctionStatus::Building => {
            (TaskStatus::Waiting, Some(WaitingReason::Build))
        }
        FunctionStatus::Ready if all_parents_done => (TaskStatus::Todo, None),
        FunctionStatus::Ready => (TaskStatus::Waiting, Some(WaitingReason::Parents)),
    };
    InitialStatus {
        status,
        waiting_reason,
    }
}

/// Where one input's value comes from: a stored asset, or an output of a parent task.
///
/// On the wire it is Substra's `InputRef`: exactly one of `asset_key`, or both
/// `parent_task_key` and `parent_task_output_identifier`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawInputRef", into = "RawInputRef")]
pub enum InputRef {
    /// A stored data manager, data sample or model, by key.
    Asset {
        /// The asset's key.
        asset_key: Uuid,
    },
    /// An output of another task, which becomes this task's parent.
    ParentOutput {
        /// The parent task.
        parent_task_key: TaskKey,
        /// The parent's output identifier.
        parent_task_output_identifier: String,
    },
}

impl JsonSchema for InputRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "InputRef".into()
    }

    /// Exactly one of `asset_key`, or both parent fields: what [`RawInputRef`]'s conversion
    /// enforces.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "properties": {
                "asset_key": {
                    "description": "A stored data manager, data sample or model.",
                    "type": "string",
                    "format": "uuid",
                },
                "parent_task_key": {
                    "description": "A parent task whose output this input takes.",
                    "type": "string",
                    "format": "uuid",
                },
                "parent_task_output_identifier": {
                    "description": "The parent's output identifier.",
                    "type": "string",
                },
            },
            "oneOf": [
                {
                    "required": ["asset_key"],
                    "not": {"anyOf": [
                        {"required": ["parent_task_key"]},
                        {"required": ["parent_task_output_identifier"]},
                    ]},
                },
                {
                    "required": ["parent_task_key", "parent_task_output_identifier"],
                    "not": {"required": ["asset_key"]},
                },
            ],
        })
    }
}

/// The flat wire form of [`InputRef`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInputRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    asset_key: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_task_key: Option<TaskKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_task_output_identifier: Option<String>,
}

impl TryFrom<RawInputRef> for InputRef {
    type Error = String;

    fn try_from(raw: RawInputRef) -> Result<Self, Self::Error> {
        match (
            raw.asset_key,
            raw.parent_task_key,
            raw.parent_task_output_identifier,
        ) {
            (Some(asset_key), None, None) => Ok(InputRef::Asset { asset_key }),
            (None, Some(parent_task_key), Some(parent_task_output_identifier)) => {
                Ok(InputRef::ParentOutput {
                    parent_task_key,
                    parent_task_output_identifier,
                })
            }
            _ => Err(
                "an input needs exactly one of `asset_key`, or both `parent_task_key` and \
                 `parent_task_output_identifier`"
                    .to_owned(),
            ),
        }
    }
}

impl From<InputRef> for RawInputRef {
    fn from(input: InputRef) -> Self {
        match input {
            InputRef::Asset { asset_key } => RawInputRef {
                asset_key: Some(asset_key),
                parent_task_key: None,
                parent_task_output_identifier: None,
            },
            InputRef::ParentOutput {
                parent_task_key,
                parent_task_output_identifier,
            } => RawInputRef {
                asset_key: None,
                parent_task_key: Some(parent_task_key),
                parent_task_output_identifier: Some(parent_task_output_identifier),
            },
        }
    }
}

/// One input of a task: which function input it fills, and from where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskInput {
    /// The function input it fills; repeated only for a `multiple` input.
    pub identifier: String,
    /// Where the value comes from.
    #[serde(flatten)]
    pub source: InputRef,
}

/// One output of a task: who may use what it produces (Substra's `ComputeTaskOutput`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOutput {
    /// Who may use the models or performances registered on it.
    pub permissions: Permissions,
    /// Its models may be deleted once every child is finished.
    #[serde(default)]
    pub transient: bool,
}

/// What triggered a task (Orchestra's run `source`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskSource {
    /// A user submitted it, through the CLI, AMQP or HTTP.
    User {
        /// Who.
        user: Option<UserId>,
    },
    /// A schedule fired.
    Schedule {
        /// Which.
        schedule: ScheduleId,
    },
    /// Another service called the API without a user.
    Api {
        /// The caller's name, if it gave one.
        client: Option<String>,
    },
    /// A task of another plan spawned it.
    ParentPlan {
        /// The spawning plan.
        plan: PlanKey,
    },
}

/// The lease of a running attempt: the worker that holds it must renew it before it expires,
/// and every report it sends carries the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    /// The attempt the lease belongs to.
    pub attempt: Attempt,
    /// A secret shared with the worker that holds the lease.
    pub token: Uuid,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// One execution of a function in a compute plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// Its key.
    pub key: TaskKey,
    /// The plan it belongs to.
    pub compute_plan_key: PlanKey,
    /// The function it runs.
    pub function_key: FunctionKey,
    /// An optional name (Orchestra's and qunicorn's job name).
    pub name: Option<String>,
    /// The organization that registered it (owns the plan).
    pub owner: OrganizationId,
    /// The organization whose workers run it.
    pub worker: OrganizationId,
    /// The user who submitted it.
    pub creator: Option<UserId>,
    /// What triggered it.
    pub source: TaskSource,
    /// 0 without parents, else 1 + the highest parent rank.
    pub rank: u32,
    /// A label, ≤ 100 characters.
    pub tag: String,
    /// Free-form metadata (`round_idx` gives the performance round).
    pub metadata: Metadata,
    /// Its inputs, in the order given.
    pub inputs: Vec<TaskInput>,
    /// Its outputs, exactly its function's, with permissions.
    pub outputs: BTreeMap<String, TaskOutput>,
    /// Parameter values given to its steps.
    pub parameters: JsonObject,
    /// The properties a worker needs to run it: its function's requirements merged with the
    /// ones given at submission (which win on a shared key). Its queue is named after them.
    pub requirements: RequirementSet,
    /// Its status.
    pub status: TaskStatus,
    /// Why it waits, when WAITING.
    pub waiting_reason: Option<WaitingReason>,
    /// Why it failed, when FAILED.
    pub error_type: Option<TaskErrorType>,
    /// The failure report's message.
    pub error_message: Option<String>,
    /// Where the failed attempt's logs are.
    pub logs_address: Option<String>,
    /// Who may read its logs.
    pub logs_permission: Permission,
    /// A graceful cancel was requested (Orchestra's `should_cancel`).
    pub cancel_requested: bool,
    /// An immediate abort was requested (Orchestra's `should_abort`).
    pub abort_requested: bool,
    /// Attempts granted so far; the current one while DOING.
    pub attempt_count: u32,
    /// The lease of the running attempt, while DOING.
    pub lease: Option<Lease>,
    /// Not to be claimed before this time (retry backoff).
    pub not_before: Option<Timestamp>,
    /// The worker process that runs (or last ran) it.
    pub worker_id: Option<WorkerId>,
    /// The device it runs (or last ran) on.
    pub device_id: Option<DeviceId>,
    /// The type of its `input` (LuciHub's input type).
    pub input_type: Option<String>,
    /// Input data given to the device (LuciHub's input JSON).
    pub input: serde_json::Value,
    /// Output data the device returned (LuciHub's output JSON).
    pub output: serde_json::Value,
    /// A mutable JSON store steps may update (qunicorn's `data`).
    pub data: serde_json::Value,
    /// The status of each step of the current or last attempt.
    pub steps: Vec<StepState>,
    /// When it was registered.
    pub creation_date: Timestamp,
    /// When it last changed.
    pub update_date: Timestamp,
    /// The first time it became DOING.
    pub start_date: Option<Timestamp>,
    /// The first time it became terminal.
    pub end_date: Option<Timestamp>,
}

impl Task {
    /// The distinct parent tasks, in first-occurrence order of the inputs.
    pub fn parent_keys(&self) -> Vec<TaskKey> {
        parent_keys(&self.inputs)
    }

    /// Seconds it ran: 0 before it started, up to `now` while running.
    pub fn duration(&self, now: Timestamp) -> i64 {
        crate::duration_seconds(self.start_date, self.end_date, now)
    }
}

/// The distinct parent tasks named by `inputs`, in first-occurrence order.
pub fn parent_keys(inputs: &[TaskInput]) -> Vec<TaskKey> {
    let mut keys: Vec<TaskKey> = Vec::new();
    for input in inputs {
        if let InputRef::ParentOutput {
            parent_task_key, ..
        } = &input.source
            && !keys.contains(parent_task_key)
        {
            keys.push(*parent_task_key);
        }
    }
    keys
}

#[cfg(test)]
mod tests;
