//! The dispatcher's decisions about tasks and plans, without IO: no database, no network, no
//! clock and no randomness. Time comes in as `now`; lease tokens, lease durations and the retry
//! jitter come in with the events. The shell loads a plan into a [`PlanState`], calls [`apply`]
//! for each event, and carries out the returned [`Effect`]s in one transaction.
//!
//! SPEC.md §5 and §6 are the rules; DESIGN.md "The flow of one task" is the protocol. The
//! choices this module makes where they are silent:
//!
//! - **Canceling one task** (owner or operator) cancels it, or orders its worker to stop it if it
//!   runs; once it is CANCELED, every WAITING descendant is canceled too ("parent task `<key>`
//!   canceled"), because it can never run. The plan goes on with its other branches; its status
//!   follows from [`PlanCounters::status`] (all terminal with a canceled task reads CANCELED). A
//!   running task's descendants are canceled only when it actually becomes CANCELED: if its worker
//!   reports DONE first, the children run.
//! - **A FAILED task fails its plan** (`failure_date`, `failed_task_key`, set once, and only if the
//!   plan was not already terminated): every WAITING and TODO task is canceled and every DOING one
//!   is ordered to stop. A build failure fails all the function's not-started tasks first, then the
//!   plan, so they all read FAILED (BUILD); the first of them is the plan's `failed_task_key`.
//! - **A lease lapses at a [`Event::Tick`]** at or after its expiry. Until then the attempt is
//!   current: its reports and renewals are accepted.
//! - **No retry once stopping**: a failed attempt of a task with a cancel or abort request, or of a
//!   terminated plan, is not retried.
//! - **Tasks added to a terminated plan** (failed or canceled) are born CANCELED: a terminated plan
//!   grants no claim, and no plan is left with work that can never run. Tasks added to a DONE plan
//!   run: the plan is active again and loses its end date.
//! - **Orders are repeated**: a lease renewal of a task with a cancel or abort request sends the
//!   order again, so a worker that missed it (reconnecting) gets it on its next heartbeat.
//! - **A refused event changes nothing** and yields exactly one effect: [`Effect::ReplyClaim`] for
//!   a claim, [`Effect::Refused`] otherwise. A transition the state machine
//!   ([`TaskStatus::can_become`]) refuses would be a bug here; it is rolled back and reported as a
//!   refusal, never a panic.

mod run;
mod state;

#[cfg(test)]
mod tests;

use models::wire::Grant;
use models::{
    Attempt, FunctionKey, FunctionStatus, Lease, OrganizationId, RetryPolicy, TaskErrorType,
    TaskKey, TaskStatus, Timestamp, WaitingReason, WorkerId,
};
use uuid::Uuid;

#[cfg(doc)]
use models::PlanCounters;

pub use state::PlanState;

/// One task as the core sees it: what its state machine, its lease and its DAG need.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskNode {
    /// Its key.
    pub key: TaskKey,
    /// The function it runs.
    pub function_key: FunctionKey,
    /// Its status.
    pub status: TaskStatus,
    /// Why it waits, when WAITING.
    pub waiting_reason: Option<WaitingReason>,
    /// 0 without parents, else 1 + the highest parent rank.
    pub rank: u32,
    /// The organization whose workers run it.
    pub worker: OrganizationId,
    /// The routing key of its requirement set: where [`Effect::Enqueue`] publishes it.
    pub routing_key: String,
    /// Its function's retry policy.
    pub retry: RetryPolicy,
    /// Attempts granted so far; the current one while DOING.
    pub attempt_count: u32,
    /// The lease of the running attempt, while DOING.
    pub lease: Option<Lease>,
    /// The worker process running it (set on claim), or that last ran it.
    pub worker_id: Option<WorkerId>,
    /// Not to be claimed before this time (retry backoff).
    pub not_before: Option<Timestamp>,
    /// A graceful cancel was requested while it ran.
    pub cancel_requested: bool,
    /// An immediate abort was requested while it ran.
    pub abort_requested: bool,
    /// Why it failed, when FAILED.
    pub error_type: Option<TaskErrorType>,
    /// The failure's message, when FAILED.
    pub error_message: Option<String>,
    /// The first time it became DOING.
    pub start_date: Option<Timestamp>,
    /// The first time it became terminal.
    pub end_date: Option<Timestamp>,
    /// Its distinct parents. Parents in the plan are edges of its DAG; a parent outside the plan
    /// (a stored task of another plan) counts as DONE only when the state was told so.
    pub parents: Vec<TaskKey>,
}

impl TaskNode {
    /// Copies the state the core keeps onto `task`, the full record of the same task.
    pub fn write_to(&self, task: &mut models::Task) {
        task.status = self.status;
        task.waiting_reason = self.waiting_reason;
        task.attempt_count = self.attempt_count;
        task.lease.clone_from(&self.lease);
        task.worker_id.clone_from(&self.worker_id);
        task.not_before = self.not_before;
        task.cancel_requested = self.cancel_requested;
        task.abort_requested = self.abort_requested;
        task.error_type = self.error_type;
        task.error_message.clone_from(&self.error_message);
        task.start_date = self.start_date;
        task.end_date = self.end_date;
    }
}

/// What happened to a plan, as reported by a worker, the owner, an operator or the clock.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A worker asks to run `task`; `lease_token` and `lease_duration` come from the shell.
    ClaimRequested {
        /// The task.
        task: TaskKey,
        /// The worker asking.
        worker: WorkerId,
        /// The secret every report of the granted attempt must carry.
        lease_token: Uuid,
        /// How long the lease lasts unless renewed.
        lease_duration: chrono::Duration,
    },
    /// The worker holding `attempt` reports the end of it.
    Finished {
        /// The task.
        task: TaskKey,
        /// The attempt that ended.
        attempt: Attempt,
        /// The attempt's lease token.
        lease_token: Uuid,
        /// How it ended.
        outcome: Outcome,
    },
    /// The worker holding `attempt` renews its lease (heartbeat) until `now + lease_duration`.
    LeaseRenewed {
        /// The task.
        task: TaskKey,
        /// The running attempt.
        attempt: Attempt,
        /// The attempt's lease token.
        lease_token: Uuid,
        /// The new lease lasts this long from `now`.
        lease_duration: chrono::Duration,
    },
    /// Time passed: lapse expired leases; nothing else.
    Tick,
    /// The owner cancels the whole plan.
    CancelPlan {
        /// Why, for the tasks' histories.
        reason: String,
    },
    /// The owner or an operator cancels one task (graceful).
    CancelTask {
        /// The task.
        task: TaskKey,
        /// Why, for its history.
        reason: String,
    },
    /// The owner or an operator aborts one task (kill now).
    AbortTask {
        /// The task.
        task: TaskKey,
        /// Why, for its history.
        reason: String,
    },
    /// A function of some tasks of this plan changed build status.
    FunctionChanged {
        /// The function.
        function: FunctionKey,
        /// Its new status.
        status: FunctionStatus,
    },
    /// Tasks added to the plan, already validated, each with the initial status
    /// `models::task::initial_status` gave it; the core derives it again from the current state
    /// (a given TODO also tells that every parent outside the plan is DONE, since DONE is final).
    /// A plan that was DONE runs again.
    ///
    /// Every added task gets an [`Effect::TaskChanged`] with its full state; `status_changed` is
    /// set only when the derived status differs from the given one (which the submission stored
    /// with its first history row). The TODO ones get an [`Effect::Enqueue`]. A key already in the
    /// plan, a key given twice or a cycle among the added tasks refuses the whole batch.
    TasksAdded {
        /// The new tasks, in any order.
        tasks: Vec<TaskNode>,
    },
    /// A parent task outside this plan (in another plan) ended: DONE promotes its WAITING
    /// children here whose parents are now all DONE; FAILED or CANCELED cancels its WAITING
    /// children here, which can never run.
    ExternalParentEnded {
        /// The parent, a task of another plan.
        task: TaskKey,
        /// Its terminal status.
        status: TaskStatus,
    },
}

/// How an attempt ended, as its worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success.
    Done,
    /// Failure; retried while `retryable` and attempts remain.
    Failed {
        /// What kind of failure.
        error_type: TaskErrorType,
        /// What went wrong, in words.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
    /// The worker stopped the task on a cancel or abort order.
    Canceled,
}

/// The core's answer to a claim; the shell adds the assignment to a grant before sending it.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimDecision {
    /// The attempt is granted.
    Granted(Grant),
    /// The claim is refused: a duplicate, a canceled task or a stale delivery.
    Refused {
        /// The task.
        task_key: TaskKey,
        /// Why, in words.
        reason: String,
    },
}

/// What the shell must do. Store effects are applied in one transaction with the others of the
/// same [`apply`].
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// The task changed; `task` is its full state after the change. `status_changed` says whether
    /// a history row (timestamp = now, `task.status`, `reason`, attempt) must be appended.
    TaskChanged {
        /// The task after the change.
        task: TaskNode,
        /// Why, for the history row and logs.
        reason: String,
        /// Whether its status changed.
        status_changed: bool,
    },
    /// Publish the task (an outbox row) on `routing_key`, not before `not_before`.
    Enqueue {
        /// The task.
        task: TaskKey,
        /// Its requirement set's routing key.
        routing_key: String,
        /// Not to be published (or claimed) before this time.
        not_before: Option<Timestamp>,
    },
    /// The plan changed (counters, status, dates, failed task): its full state after the change.
    /// At most one per [`apply`], after the task effects.
    PlanChanged {
        /// The plan after the change.
        plan: models::ComputePlan,
    },
    /// Answer a claim.
    ReplyClaim {
        /// The answer.
        reply: ClaimDecision,
    },
    /// Tell the worker running `task` to stop it.
    SendOrder {
        /// The task.
        task: TaskKey,
        /// The worker process running it, when known.
        worker: Option<WorkerId>,
        /// Graceful cancel or abort.
        order: Order,
    },
    /// The event was refused and changed nothing (stale attempt, wrong token, duplicate report,
    /// unknown task, cancel of a terminated plan...). The shell logs it.
    Refused {
        /// The task the event named, if it named one.
        task: Option<TaskKey>,
        /// Why, in words.
        reason: String,
    },
}

/// An order to the worker running a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Stop gracefully: SIGTERM, then SIGKILL after the grace period.
    Cancel,
    /// Kill the step's process group now.
    Abort,
}

/// Applies `event` to `plan` at `now` and returns what the shell must do.
///
/// `jitter` in [0, 1) scales the retry backoff when the task's policy asks for jitter (full
/// jitter: delay = `backoff_ms(attempt) × jitter`; otherwise `backoff_ms(attempt)`); a value
/// outside [0, 1] is clamped, and NaN counts as 1.
///
/// A refused event leaves `plan` as it was and returns one effect: [`Effect::ReplyClaim`] for a
/// claim, [`Effect::Refused`] otherwise.
pub fn apply(plan: &mut PlanState, event: Event, now: Timestamp, jitter: f64) -> Vec<Effect> {
    run::apply(plan, event, now, jitter)
}
