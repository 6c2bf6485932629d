//! Compute plans: a DAG of tasks with counters, a derived status and dates (Substra's
//! `ComputePlan`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Metadata, OrganizationId, PlanKey, ProjectId, TaskKey, TaskStatus, Timestamp, UserId};

word_enum! {
    /// The status of a plan, derived from its counters and dates by [`PlanCounters::status`].
    pub enum PlanStatus("plan status") {
        /// No task yet.
        Empty = "EMPTY",
        /// Every task waits.
        Waiting = "WAITING",
        /// Some task is ready, none has started or finished.
        Todo = "TODO",
        /// Work has started and is not over.
        Doing = "DOING",
        /// Every task is DONE.
        Done = "DONE",
        /// A task failed (before any cancel).
        Failed = "FAILED",
        /// Canceled (before any failure).
        Canceled = "CANCELED",
    }
}

impl PlanStatus {
    /// Whether the plan is over (it runs again if tasks are added).
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Canceled)
    }
}

/// How many of a plan's tasks are in each status, kept exact in the transaction of each change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanCounters {
    /// All tasks.
    pub task_count: u32,
    /// Tasks WAITING.
    pub waiting_count: u32,
    /// Tasks TODO.
    pub todo_count: u32,
    /// Tasks DOING.
    pub doing_count: u32,
    /// Tasks DONE.
    pub done_count: u32,
    /// Tasks FAILED.
    pub failed_count: u32,
    /// Tasks CANCELED.
    pub canceled_count: u32,
}

impl PlanCounters {
    fn slot(&mut self, status: TaskStatus) -> &mut u32 {
        match status {
            TaskStatus::Waiting => &mut self.waiting_count,
            TaskStatus::Todo => &mut self.todo_count,
            TaskStatus::Doing => &mut self.doing_count,
            TaskStatus::Done => &mut self.done_count,
            TaskStatus::Failed => &mut self.failed_count,
            TaskStatus::Canceled => &mut self.canceled_count,
        }
    }

    /// The count of tasks in `status`.
    pub fn count(&self, status: TaskStatus) -> u32 {
        let mut copy = *self;
        *copy.slot(status)
    }

    /// Counts a new task registered in `status`.
    pub fn add(&mut self, status: TaskStatus) {
        self.task_count += 1;
        *self.slot(status) += 1;
    }

    /// Moves one task from `from` to `to`.
    pub fn record_transition(&mut self, from: TaskStatus, to: TaskStatus) {
        let from_slot = self.slot(from);
        *from_slot = from_slot.saturating_sub(1);
        *self.slot(to) += 1;
    }

    /// Tasks that can still run or be running: WAITING, TODO or DOING.
    pub fn active_count(&self) -> u32 {
        self.waiting_count + self.todo_count + self.doing_count
    }

    /// The plan's status, first match wins (SPEC.md §5): no task → EMPTY; all DONE → DONE;
    /// terminated → FAILED or CANCELED, whichever of `failure_date` and `cancelation_date` came
    /// first; all WAITING → WAITING; nothing DOING and nothing DONE → TODO; else DOING.
    ///
    /// baton's addition: a plan whose tasks are all terminal without a plan-level date (a single
    /// task canceled by hand) is CANCELED if any task was canceled, else FAILED, so that a plan
    /// with nothing left to run never reads as DOING.
    pub fn status(
        &self,
        failure_date: Option<Timestamp>,
        cancelation_date: Option<Timestamp>,
    ) -> PlanStatus {
        if self.task_count == 0 {
            return PlanStatus::Empty;
        }
        if self.done_count == self.task_count {
            return PlanStatus::Done;
        }
        match (failure_date, cancelation_date) {
            (Some(failed), Some(canceled)) if canceled < failed => return PlanStatus::Canceled,
            (Some(_), _) => return PlanStatus::Failed,
            (None, Some(_)) => return PlanStatus::Canceled,
            (None, None) => {}
        }
        if self.active_count() == 0 {
            return if self.canceled_count > 0 {
                PlanStatus::Canceled
            } else {
                PlanStatus::Failed
            };
        }
        if self.waiting_count == self.task_count {
            return PlanStatus::Waiting;
        }
        if self.doing_count == 0 && self.done_count == 0 {
            return PlanStatus::Todo;
        }
        PlanStatus::Doing
    }
}

/// A DAG of tasks submitted together, or extended later by its owner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ComputePlan {
    /// Its key.
    pub key: PlanKey,
    /// The project it belongs to.
    pub project: Option<ProjectId>,
    /// Its name, 1–100 characters.
    pub name: String,
    /// A label, ≤ 100 characters.
    pub tag: String,
    /// The organization that owns it; only it may add tasks or cancel it.
    pub owner: OrganizationId,
    /// The user who submitted it.
    pub creator: Option<UserId>,
    /// Free-form metadata.
    pub metadata: Metadata,
    /// Its task counters.
    pub counters: PlanCounters,
    /// Its status, derived from the counters and dates and stored for filtering.
    pub status: PlanStatus,
    /// The first task to fail.
    pub failed_task_key: Option<TaskKey>,
    /// When it was submitted.
    pub creation_date: Timestamp,
    /// When its first task started.
    pub start_date: Option<Timestamp>,
    /// When it ended: its cancelation date, else the last task end once nothing can run.
    pub end_date: Option<Timestamp>,
    /// When a task first failed.
    pub failure_date: Option<Timestamp>,
    /// When it was canceled.
    pub cancelation_date: Option<Timestamp>,
}

impl ComputePlan {
    /// Whether it was failed or canceled; a terminated plan can only be extended, not canceled.
    pub fn is_terminated(&self) -> bool {
        self.failure_date.is_some() || self.cancelation_date.is_some()
    }

    /// Seconds it ran: 0 before any task started, up to `now` while running.
    pub fn duration(&self, now: Timestamp) -> i64 {
        crate::duration_seconds(self.start_date, self.end_date, now)
    }

    /// When it should end, at the pace so far: while DOING with at least one task DONE,
    /// `now + (task_count − done_count) × (elapsed / done_count)`; its end date once terminal;
    /// otherwise unknown.
    pub fn estimated_end_date(&self, now: Timestamp) -> Option<Timestamp> {
        if self.status.is_terminal() {
            return self.end_date;
        }
        let start = self.start_date?;
        let done = self.counters.done_count;
        if self.status != PlanStatus::Doing || done == 0 {
            return None;
        }
        let elapsed_ms = (now - start).num_milliseconds().max(0);
        let remaining = i64::from(self.counters.task_count - done);
        let remaining_ms = remaining.saturating_mul(elapsed_ms) / i64::from(done);
        Some(now + chrono::Duration::milliseconds(remaining_ms))
    }
}

#[cfg(test)]
mod tests;
