//! The messages baton sends over RabbitMQ, as plain types with a JSON Schema each.
//!
//! Each message has a kind (the AMQP `type` property, e.g. `task.ready`) and is written as JSON.
//! [`SCHEMA_VERSION`] travels in a header so that a consumer refuses, rather than misreads, a
//! message of a version it does not know. The schemas under `schemas/` in the repository are
//! generated from these types (a test fails when a committed one is stale), so that producers in
//! any language can check what they send.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::submission::{
    NewDataSamples, NewDataset, NewFunction, NewOrganization, NewProject, NewTask, PlanSubmission,
};
use crate::validation::ValidationError;
use crate::{
    Attempt, DataSampleKey, DatasetKey, DeviceId, File, FunctionKey, FunctionOutput, JsonObject,
    LogStream, ModelKey, OutputKind, PlanKey, PlanStatus, RequirementSet, Step, StepState,
    TaskErrorType, TaskKey, Timestamp, WorkerId,
};

/// The version of the message formats below. A change a consumer of the previous version would
/// misread bumps it.
pub const SCHEMA_VERSION: u32 = 1;

/// A message that travels over RabbitMQ.
pub trait WireMessage: Serialize + DeserializeOwned + JsonSchema {
    /// Its kind, sent as the AMQP `type` property; dotted lowercase words.
    const KIND: &'static str;
}

impl WireMessage for PlanSubmission {
    const KIND: &'static str = "plan.submit";
}

impl WireMessage for NewFunction {
    const KIND: &'static str = "function.register";
}

impl WireMessage for NewDataset {
    const KIND: &'static str = "dataset.register";
}

impl WireMessage for NewDataSamples {
    const KIND: &'static str = "data_sample.register";
}

impl WireMessage for NewOrganization {
    const KIND: &'static str = "organization.register";
}

impl WireMessage for NewProject {
    const KIND: &'static str = "project.register";
}

/// The answer to the registration of an organization, project, function, dataset or samples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AssetReply {
    /// Stored; the same answer is sent again for a resubmission of the same message.
    Accepted {
        /// The keys or identifiers registered.
        keys: Vec<String>,
    },
    /// Refused; nothing was stored.
    Rejected {
        /// `invalid`, `already_exists`, `internal`.
        error: String,
        /// Every problem found, each with its path.
        details: Vec<ErrorDetail>,
    },
}

impl WireMessage for AssetReply {
    const KIND: &'static str = "asset.register_reply";
}

/// Tasks to add to an existing plan, by its owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddTasks {
    /// The plan.
    pub compute_plan_key: PlanKey,
    /// The new tasks; their parents may be stored tasks of the plan.
    pub tasks: Vec<NewTask>,
}

impl WireMessage for AddTasks {
    const KIND: &'static str = "plan.add_tasks";
}

/// One problem with a submission, for the reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Where, e.g. `tasks[2].inputs[0].identifier`; empty for the submission as a whole.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl From<&ValidationError> for ErrorDetail {
    fn from(error: &ValidationError) -> Self {
        ErrorDetail {
            path: if error.path.0.is_empty() {
                String::new()
            } else {
                error.path.to_string()
            },
            message: error.kind.to_string(),
        }
    }
}

/// The answer to a submission, sent to its `reply_to` queue with its `correlation_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SubmissionReply {
    /// Stored; the same answer is sent again for a resubmission of the same request.
    Accepted {
        /// The plan.
        compute_plan_key: PlanKey,
        /// How many tasks the plan now has.
        task_count: u32,
        /// The plan's status after the submission.
        status: PlanStatus,
    },
    /// Refused; nothing was stored.
    Rejected {
        /// The plan named by the submission, when it could be read.
        compute_plan_key: Option<PlanKey>,
        /// The kind of refusal: `invalid_submission`, `already_exists`, `forbidden`,
        /// `malformed`, `internal`.
        error: String,
        /// Every problem found, each with its path.
        details: Vec<ErrorDetail>,
    },
}

impl WireMessage for SubmissionReply {
    const KIND: &'static str = "plan.submission_reply";
}

/// A task is ready to run: published on `baton.tasks` with its requirement set's routing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskReady {
    /// The task.
    pub task_key: TaskKey,
    /// Its plan.
    pub compute_plan_key: PlanKey,
    /// Its function.
    pub function_key: FunctionKey,
    /// The properties a worker needs to run it.
    pub requirements: RequirementSet,
    /// The attempt this message offers: the task's attempts granted before it was published,
    /// plus one. A worker the dispatcher gave this attempt of the task, or a later one, in a
    /// report's slot (`TaskAssigned::after`) acks the message without claiming it: its claim
    /// would be refused. Absent from older dispatchers' messages, which are always claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
}

impl WireMessage for TaskReady {
    const KIND: &'static str = "task.ready";
}

/// A worker asks to run a task it received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimRequest {
    /// The task.
    pub task_key: TaskKey,
    /// The worker asking.
    pub worker_id: WorkerId,
}

impl WireMessage for ClaimRequest {
    const KIND: &'static str = "task.claim";
}

/// A worker asks to run several tasks it received at once, published on `baton.events` as
/// `worker.<id>.claim`: one message and one reply for a round of deliveries rather than one
/// each. Each task is claimed as by a [`ClaimRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimBatch {
    /// The worker asking.
    pub worker_id: WorkerId,
    /// The tasks, each once.
    pub task_keys: Vec<TaskKey>,
}

impl WireMessage for ClaimBatch {
    const KIND: &'static str = "task.claim_batch";
}

/// The dispatcher's answers to a [`ClaimBatch`]: one per task, each naming its task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimBatchReply {
    /// The answers, in the order of the batch's tasks.
    pub replies: Vec<ClaimReply>,
}

impl WireMessage for ClaimBatchReply {
    const KIND: &'static str = "task.claim_batch_reply";
}

/// An attempt granted to a worker: what every report of the attempt names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Grant {
    /// The task.
    pub task_key: TaskKey,
    /// The new attempt.
    pub attempt: Attempt,
    /// The secret every report of this attempt carries.
    pub lease_token: Uuid,
    /// When the lease lapses unless renewed.
    pub lease_expires_at: Timestamp,
}

/// Everything a worker needs to run a granted attempt, resolved by the dispatcher so that the
/// worker reads nothing else: the function's steps, the task's parameters, where each input's
/// file is, and which outputs it must leave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Assignment {
    /// The task's plan.
    pub compute_plan_key: PlanKey,
    /// The task's rank in its plan.
    pub rank: u32,
    /// The function.
    pub function_key: FunctionKey,
    /// The function's name.
    pub function_name: String,
    /// The steps to run, in order.
    pub steps: Vec<Step>,
    /// Seconds the whole attempt may take.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// The function's built artifact, unpacked into the workspace before the steps run.
    #[serde(default)]
    pub image: Option<File>,
    /// The function's code archive.
    #[serde(default)]
    pub archive: Option<File>,
    /// The parameters: the function's defaults, overridden by the task's values.
    #[serde(default)]
    pub parameters: JsonObject,
    /// A JSON Schema the parameters satisfy (the function's).
    #[serde(default)]
    pub parameter_schema: Option<serde_json::Value>,
    /// The inputs, in the task's order.
    #[serde(default)]
    pub inputs: Vec<AssignedInput>,
    /// The outputs the attempt must register, each at least once.
    #[serde(default)]
    pub outputs: Vec<FunctionOutput>,
    /// The device the task asked for (LuciHub), if any.
    #[serde(default)]
    pub device_id: Option<DeviceId>,
    /// The task's input data for its device (LuciHub's input JSON).
    #[serde(default)]
    pub input: serde_json::Value,
}

/// One resolved input of an assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AssignedInput {
    /// The function input it fills.
    pub identifier: String,
    /// Whether the input takes several values (it then is a directory).
    #[serde(default)]
    pub multiple: bool,
    /// The value.
    #[serde(flatten)]
    pub value: InputValue,
}

/// Where an input's value is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InputValue {
    /// A model file in the artifact store; the worker verifies its checksum.
    Model {
        /// The model.
        model_key: ModelKey,
        /// Its file.
        file: File,
    },
    /// A data sample, at a path on the worker's host.
    DataSample {
        /// The sample.
        data_sample_key: DataSampleKey,
        /// Where it is, when registered with a path.
        path: Option<String>,
    },
    /// A data manager, whose opener reads the samples.
    DataManager {
        /// The dataset.
        dataset_key: DatasetKey,
        /// Its opener file in the artifact store.
        opener: File,
    },
    /// A model output of the parent a speculative assignment runs after (`TaskAssigned`'s
    /// `after`), which the dispatcher has not registered yet: the worker that ran the parent
    /// fills in `file` from its own report, one input value per file of that output.
    ParentOutput {
        /// The parent.
        task_key: TaskKey,
        /// The parent's output.
        output: String,
        /// The file, once the worker filled it in; none as the dispatcher sends it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<File>,
    },
}

/// A value an attempt registers for one of its function's outputs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReportedOutput {
    /// A model file, uploaded to the artifact store.
    Model {
        /// The output.
        identifier: String,
        /// The file's checksum and address.
        file: File,
    },
    /// A finite float.
    Performance {
        /// The output.
        identifier: String,
        /// The value.
        value: f64,
    },
}

impl ReportedOutput {
    /// The output this value is for.
    pub fn identifier(&self) -> &str {
        match self {
            ReportedOutput::Model { identifier, .. }
            | ReportedOutput::Performance { identifier, .. } => identifier,
        }
    }
}

/// Every problem with the values an attempt reports for its function's outputs (SPEC.md §7):
/// each declared output has a value, of its kind, and only one unless it is `multiple`; no
/// value is for an undeclared output; performances are finite. Empty when all is well.
pub fn check_reported_outputs(
    declared: &[FunctionOutput],
    reported: &[ReportedOutput],
) -> Vec<String> {
    let mut problems = Vec::new();
    for value in reported {
        let identifier = value.identifier();
        let Some(output) = declared.iter().find(|o| o.identifier == identifier) else {
            problems.push(format!(
                "output `{identifier}` is not declared by the function"
            ));
            continue;
        };
        match (value, output.kind) {
            (ReportedOutput::Model { .. }, OutputKind::Model) => {}
            (ReportedOutput::Performance { value, .. }, OutputKind::Performance) => {
                if !value.is_finite() {
                    problems.push(format!(
                        "output `{identifier}`: {value} is not a finite number"
                    ));
                }
            }
            (_, kind) => problems.push(format!("output `{identifier}` takes a {kind}")),
        }
    }
    for output in declared {
        let count = reported
            .iter()
            .filter(|value| value.identifier() == output.identifier)
            .count();
        if count == 0 {
            problems.push(format!("output `{}` has no value", output.identifier));
        } else if count > 1 && !output.multiple {
            problems.push(format!(
                "output `{}` takes one value, got {count}",
                output.identifier
            ));
        }
    }
    problems
}

/// The dispatcher's answer to a claim request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ClaimReply {
    /// The worker runs the task under this lease; it acks the task message.
    Granted {
        /// The attempt granted.
        #[serde(flatten)]
        grant: Grant,
        /// What to run.
        assignment: Box<Assignment>,
        /// The next links of the task's chain, granted ahead (`TaskAssigned::speculative`),
        /// each after the one before it, the first after this task.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ahead: Vec<TaskAssigned>,
    },
    /// The worker drops the task message: a duplicate, a canceled task or a stale delivery.
    Refused {
        /// The task.
        task_key: TaskKey,
        /// Why, in words.
        reason: String,
    },
}

impl WireMessage for ClaimReply {
    const KIND: &'static str = "task.claim_reply";
}

impl ClaimReply {
    /// The task it answers for.
    pub fn task_key(&self) -> TaskKey {
        match self {
            ClaimReply::Granted { grant, .. } => grant.task_key,
            ClaimReply::Refused { task_key, .. } => *task_key,
        }
    }
}

/// A task granted to a worker without a claim, published on `baton.control` as `worker.<id>`:
/// a child that the worker's DONE report (offering a `follow_up`) made ready, a task waiting in
/// its queue granted in the slot such a report kept (`awaits_work`), or a ready task of a plan
/// just submitted while the worker said it was idle (`idle_slots`); either way one whose
/// requirements the worker satisfies. The worker runs it as it would a granted claim (in a free
/// slot, or one a queue's consumer waiting for a delivery yields), or, with no slot, hands it
/// back (a `CANCELED_BY_WORKER` failure, re-queued without counting an attempt).
///
/// A `speculative` assignment is granted ahead, before `after` ended: the next link of a chain
/// that the worker runs. The worker keeps it while it runs `after` (or holds a speculative
/// assignment of `after`), starts it in `after`'s slot as soon as `after` ends DONE on it, and
/// says so in `after`'s report (`started_next`); the dispatcher makes the grant (this attempt
/// and lease token) when it applies that report, or aborts the attempt if it cannot. Otherwise
/// (`after` failed, or ended before this arrived) the worker drops it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskAssigned {
    /// The task whose report made this one ready (for a speculative assignment: will make it
    /// ready), or whose report's kept slot it fills (`TaskStatusReport::awaits_work`; a task
    /// taken from its queue for it); none for a task started at its plan's submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<TaskKey>,
    /// Granted before `after` ended, to start only after it ends DONE on this worker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub speculative: bool,
    /// The attempt granted.
    #[serde(flatten)]
    pub grant: Grant,
    /// What to run.
    pub assignment: Box<Assignment>,
}

impl WireMessage for TaskAssigned {
    const KIND: &'static str = "task.assigned";
}

/// Several tasks assigned to one worker in one message, on `baton.control` routed
/// `worker.<id>`: the tasks one batch of the dispatcher granted in the slots the worker's
/// reports kept (`TaskStatusReport::awaits_work`), each handled as a `task.assigned` of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskAssignedBatch {
    /// The assignments, in the order the reports came.
    pub assignments: Vec<TaskAssigned>,
}

impl WireMessage for TaskAssignedBatch {
    const KIND: &'static str = "task.assigned_batch";
}

/// How an attempt ended, as the worker that ran it reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReportedOutcome {
    /// Every step succeeded and every declared output was registered.
    Done,
    /// The attempt failed.
    Failed {
        /// Why, in baton's words.
        error_type: TaskErrorType,
        /// What happened, for people.
        message: String,
        /// Whether another attempt may succeed (a crash of the device, not a bug in the step).
        retryable: bool,
    },
    /// The worker stopped the task on a cancel or abort order.
    Canceled,
}

/// The end of an attempt, published on `baton.events` as `task.<key>.status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStatusReport {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt the worker was granted.
    pub attempt: Attempt,
    /// The lease token of that attempt: only its holder can report for it.
    pub lease_token: Uuid,
    /// The worker reporting.
    pub worker_id: WorkerId,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: ReportedOutcome,
    /// The status of each step.
    #[serde(default)]
    pub steps: Vec<StepState>,
    /// Output data the device returned (LuciHub's output JSON).
    #[serde(default)]
    pub output: serde_json::Value,
    /// The values registered for the function's outputs; with `done`, every declared output
    /// has its values here.
    #[serde(default)]
    pub outputs: Vec<ReportedOutput>,
    /// The end of the attempt's log: the lines written since its last `task.log` batch (all of
    /// them for a short attempt), recorded with the report rather than in a message of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogRecord>,
    /// With `done`: the worker can start at once a child this report makes ready, so the
    /// dispatcher may grant it one without a claim (`task.assigned`), which spares the child
    /// its trip through the task queue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_up: bool,
    /// With `follow_up`: the worker runs and holds nothing else, so once this report is sent
    /// all these slots (its executor limit) are free; the dispatcher may start that many tasks
    /// of plans submitted meanwhile on it without a claim (`task.assigned`). 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_slots: u32,
    /// With `done`: the speculative assignment after this task (`TaskAssigned::speculative`)
    /// that the worker started in its slot when it ended, for the dispatcher to grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_next: Option<TaskKey>,
    /// With `follow_up`: the worker keeps this attempt's slot for the dispatcher's answer,
    /// taking no queued task into it meanwhile. The dispatcher answers with a task granted in
    /// that slot (`task.assigned` whose `after` is this task: a child the report made ready,
    /// or else the oldest task waiting in a queue the worker consumes), or with a
    /// `released` order naming this task when it has none; the worker frees the slot by
    /// itself if no answer comes within a few seconds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaits_work: bool,
    /// With `done`: how many more tasks the worker takes for this report, beyond the one of
    /// `awaits_work`, onto its deck: granted now, each started in the next slot an attempt
    /// frees on that worker, and handed back (`CANCELED_BY_WORKER`) if none frees within a
    /// few seconds. The dispatcher grants them as it refills a kept slot, each sent as
    /// `task.assigned` whose `after` is this task, and sends a `released` order naming this
    /// task when it grants fewer tasks than the report takes in all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub on_deck: u32,
}

/// Whether `value` is 0 (a field left out of a message when it is).
fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl WireMessage for TaskStatusReport {
    const KIND: &'static str = "task.status";
}

/// The ends of several attempts, published on `baton.events` as `worker.<id>.status` by a
/// worker whose attempts ended while its previous report was on its way: one message rather
/// than one each. Each report is applied as a `task.status` would be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusBatch {
    /// The reports.
    pub reports: Vec<TaskStatusReport>,
}

impl WireMessage for StatusBatch {
    const KIND: &'static str = "task.status_batch";
}

/// A function is to be built: published on `baton.tasks` with its requirement set's routing
/// key, beside that set's tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BuildReady {
    /// The function.
    pub function_key: FunctionKey,
    /// The properties a worker needs to build it (the function's requirements).
    pub requirements: RequirementSet,
}

impl WireMessage for BuildReady {
    const KIND: &'static str = "function.build_ready";
}

/// A worker asks to build a function it received, on `baton.events` as
/// `function.<key>.claim`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BuildClaim {
    /// The function.
    pub function_key: FunctionKey,
    /// The worker asking.
    pub worker_id: WorkerId,
}

impl WireMessage for BuildClaim {
    const KIND: &'static str = "function.build_claim";
}

/// The dispatcher's answer to a build claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum BuildClaimReply {
    /// The worker builds the function under this lease, renewed by its heartbeats.
    Granted {
        /// The function.
        function_key: FunctionKey,
        /// Its name.
        function_name: String,
        /// The build attempt.
        attempt: Attempt,
        /// The secret the build's report and renewals carry.
        build_token: Uuid,
        /// When the lease lapses unless renewed.
        lease_expires_at: Timestamp,
        /// The steps to run, in order; a file left at `BATON_OUTPUTS/image` is the built
        /// artifact the function's tasks get (as `BATON_IMAGE`).
        build_steps: Vec<Step>,
        /// The function's code archive, if any.
        #[serde(default)]
        archive: Option<File>,
        /// Seconds the build may take.
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    /// The worker drops the message: the function is built, building elsewhere or canceled.
    Refused {
        /// The function.
        function_key: FunctionKey,
        /// Why, in words.
        reason: String,
    },
}

impl WireMessage for BuildClaimReply {
    const KIND: &'static str = "function.build_claim_reply";
}

/// The end of a build, published on `baton.events` as `function.<key>.status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuildReport {
    /// The function.
    pub function_key: FunctionKey,
    /// The build's token: only its holder can report.
    pub build_token: Uuid,
    /// The worker reporting.
    pub worker_id: WorkerId,
    /// How it ended: `done` makes the function READY, `failed` FAILED; `canceled` (the worker
    /// gave up) puts the build back to be built again.
    #[serde(flatten)]
    pub outcome: ReportedOutcome,
    /// The built artifact, with `done`, if the build left one.
    #[serde(default)]
    pub image: Option<File>,
    /// The status of each build step.
    #[serde(default)]
    pub steps: Vec<StepState>,
}

impl WireMessage for BuildReport {
    const KIND: &'static str = "function.build_status";
}

/// A build lease a worker holds and renews.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HeldBuild {
    /// The function.
    pub function_key: FunctionKey,
    /// The build's token.
    pub build_token: Uuid,
}

/// A lease a worker holds and renews.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HeldLease {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt.
    pub attempt: Attempt,
    /// The attempt's lease token.
    pub lease_token: Uuid,
}

/// A worker is alive and still runs these attempts: published as `worker.<id>.heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerHeartbeat {
    /// The worker.
    pub worker_id: WorkerId,
    /// The leases it renews.
    #[serde(default)]
    pub leases: Vec<HeldLease>,
    /// The build leases it renews.
    #[serde(default)]
    pub builds: Vec<HeldBuild>,
    /// Its active devices, when its device scanner saw a change since the last heartbeat:
    /// devices not listed are inactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceInfo>>,
    /// Its free slots when it runs and holds nothing (all of them), else 0: the dispatcher may
    /// start that many tasks of plans submitted meanwhile on it without a claim
    /// (`task.assigned`). A worker with work, or one that stopped taking work, sends 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_slots: u32,
}

impl WireMessage for WorkerHeartbeat {
    const KIND: &'static str = "worker.heartbeat";
}

/// A dispatcher that does not apply events asks to: published on `baton.dispatcher` itself
/// (through the default exchange) every few seconds by each dispatcher not leading, so that
/// the consumer RabbitMQ made active receives an event, and takes the lead, even when nothing
/// else arrives. The one that receives it does nothing more with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DispatcherPing {
    /// The dispatcher that sent it (its AMQP app id).
    pub dispatcher: String,
}

impl WireMessage for DispatcherPing {
    const KIND: &'static str = "dispatcher.ping";
}

/// One line of a task's output, as a worker sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogRecord {
    /// Its position in the attempt's log, from 0.
    pub seq: u64,
    /// The step that wrote it.
    pub step: Option<u32>,
    /// Its stream.
    pub stream: LogStream,
    /// When it was read.
    pub timestamp: Timestamp,
    /// The text, without its line ending.
    pub text: String,
    /// The line was cut to the per-line bound.
    #[serde(default)]
    pub truncated: bool,
}

/// Lines of a running attempt's log, published as `task.<key>.log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogBatch {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt.
    pub attempt: Attempt,
    /// The attempt's lease token.
    pub lease_token: Uuid,
    /// The lines, in order.
    pub lines: Vec<LogRecord>,
}

impl WireMessage for LogBatch {
    const KIND: &'static str = "task.log";
}

/// One sample of a measurement channel, as a worker sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sample {
    /// The channel.
    pub channel: String,
    /// The device's time.
    pub t: f64,
    /// The value.
    pub value: f64,
    /// When the worker read it.
    pub timestamp: Timestamp,
}

/// Samples of a running attempt, published as `task.<key>.measurement`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MeasurementBatch {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt.
    pub attempt: Attempt,
    /// The attempt's lease token.
    pub lease_token: Uuid,
    /// The samples, in order.
    pub samples: Vec<Sample>,
}

impl WireMessage for MeasurementBatch {
    const KIND: &'static str = "task.measurement";
}

/// An order to workers, published on `baton.control` (`task.<key>` or `worker.<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "order", rename_all = "snake_case")]
pub enum ControlOrder {
    /// Stop the task gracefully: SIGTERM, then SIGKILL after the grace period.
    Cancel {
        /// The task.
        task_key: TaskKey,
        /// Why.
        reason: String,
    },
    /// Kill the task's processes now.
    Abort {
        /// The task.
        task_key: TaskKey,
        /// Why.
        reason: String,
    },
    /// Finish running work, take no more, then leave.
    Disconnect {
        /// The worker.
        worker_id: WorkerId,
    },
    /// Nothing was granted in the slots the worker kept for these reported tasks
    /// (`TaskStatusReport::awaits_work`): it frees them for its queues' deliveries.
    Released {
        /// The reported tasks whose slots are free.
        task_keys: Vec<TaskKey>,
    },
}

impl WireMessage for ControlOrder {
    const KIND: &'static str = "control.order";
}

/// The dispatcher declared a task queue for a requirement set, published on `baton.control`
/// as `queues.announce`: every worker that satisfies it starts consuming it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QueueAnnouncement {
    /// The requirement set; its queue is `baton.tasks.<routing key>`.
    pub requirements: RequirementSet,
}

impl WireMessage for QueueAnnouncement {
    const KIND: &'static str = "queue.announce";
}

/// A device a registering worker offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceInfo {
    /// Its identifier, unique within the worker.
    pub id: crate::DeviceId,
    /// Its type; it becomes the worker property `device=<type>`.
    #[serde(rename = "type")]
    pub device_type: String,
    /// The type of input it takes.
    #[serde(default)]
    pub input_type: Option<String>,
    /// A JSON Schema task parameters must satisfy on it.
    #[serde(default)]
    pub parameter_schema: Option<serde_json::Value>,
}

/// A worker introduces itself, as `worker.<id>.register` on `baton.events`, and waits for the
/// answer on its `reply_to`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerRegistration {
    /// Its identifier.
    pub worker_id: WorkerId,
    /// The organization whose tasks it runs.
    pub organization: crate::OrganizationId,
    /// The version of the worker program.
    pub version: String,
    /// The name shown in user interfaces.
    #[serde(default)]
    pub display_name: String,
    /// Its properties from configuration (its devices add `device=<type>`).
    #[serde(default)]
    pub properties: crate::Properties,
    /// How many tasks it runs at once.
    pub executor_limit: u32,
    /// Its devices.
    #[serde(default)]
    pub devices: Vec<DeviceInfo>,
}

impl WireMessage for WorkerRegistration {
    const KIND: &'static str = "worker.register";
}

/// The dispatcher's answer to a worker's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum RegistrationReply {
    /// Registered: the worker may claim tasks.
    Registered {
        /// The worker.
        worker_id: WorkerId,
        /// Send a heartbeat at least this often, in seconds.
        heartbeat_interval_secs: u32,
        /// How long a granted claim lasts without renewal, in seconds.
        lease_secs: u32,
        /// The requirement sets of tasks waiting or ready now that this worker satisfies: it
        /// consumes their queues (and later ones as [`QueueAnnouncement`]s arrive).
        #[serde(default)]
        queues: Vec<RequirementSet>,
        /// The dispatcher answers a DONE report that keeps its slot
        /// (`TaskStatusReport::awaits_work`): the worker may keep its slots so. A dispatcher that
        /// does not (an older one, or one with follow-ups off) leaves it out.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refills: bool,
    },
    /// Refused, with the reason.
    Refused {
        /// The worker.
        worker_id: WorkerId,
        /// Why.
        reason: String,
    },
}

impl WireMessage for RegistrationReply {
    const KIND: &'static str = "worker.registration_reply";
}

/// An owner's or operator's order to stop work, published on `baton.submit` as `plan.cancel`
/// and answered on `reply_to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum CancelRequest {
    /// Cancel every task of a plan that has not ended: waiting and ready ones at once, running
    /// ones through a cancel order to their worker.
    Plan {
        /// The plan.
        compute_plan_key: PlanKey,
        /// Why, recorded in the tasks' history.
        reason: String,
    },
    /// Cancel one task (gracefully, if it runs); its waiting descendants are canceled with it.
    Task {
        /// The task.
        task_key: TaskKey,
        /// Why.
        reason: String,
    },
    /// Abort one task: its processes are killed at once.
    Abort {
        /// The task.
        task_key: TaskKey,
        /// Why.
        reason: String,
    },
}

impl WireMessage for CancelRequest {
    const KIND: &'static str = "plan.cancel";
}

/// The answer to a cancel request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelReply {
    /// Done, or ordered for running tasks.
    Accepted,
    /// Refused: unknown plan or task, or already ended.
    Refused {
        /// Why.
        reason: String,
    },
}

impl WireMessage for CancelReply {
    const KIND: &'static str = "plan.cancel_reply";
}

/// A message's kind and JSON Schema.
pub struct MessageSchema {
    /// The message kind.
    pub kind: &'static str,
    /// Its schema (JSON Schema draft 2020-12).
    pub schema: serde_json::Value,
}

fn schema_of<M: WireMessage>() -> MessageSchema {
    MessageSchema {
        kind: M::KIND,
        schema: schemars::schema_for!(M).to_value(),
    }
}

/// The schema of every wire message, by kind.
pub fn schemas() -> Vec<MessageSchema> {
    vec![
        schema_of::<PlanSubmission>(),
        schema_of::<NewFunction>(),
        schema_of::<NewDataset>(),
        schema_of::<NewDataSamples>(),
        schema_of::<NewOrganization>(),
        schema_of::<NewProject>(),
        schema_of::<AssetReply>(),
        schema_of::<AddTasks>(),
        schema_of::<SubmissionReply>(),
        schema_of::<TaskReady>(),
        schema_of::<BuildReady>(),
        schema_of::<BuildClaim>(),
        schema_of::<BuildClaimReply>(),
        schema_of::<BuildReport>(),
        schema_of::<ClaimRequest>(),
        schema_of::<ClaimReply>(),
        schema_of::<ClaimBatch>(),
        schema_of::<ClaimBatchReply>(),
        schema_of::<TaskAssigned>(),
        schema_of::<TaskAssignedBatch>(),
        schema_of::<TaskStatusReport>(),
        schema_of::<StatusBatch>(),
        schema_of::<WorkerHeartbeat>(),
        schema_of::<DispatcherPing>(),
        schema_of::<LogBatch>(),
        schema_of::<MeasurementBatch>(),
        schema_of::<ControlOrder>(),
        schema_of::<QueueAnnouncement>(),
        schema_of::<WorkerRegistration>(),
        schema_of::<RegistrationReply>(),
        schema_of::<CancelRequest>(),
        schema_of::<CancelReply>(),
    ]
}

#[cfg(test)]
mod tests;
