//! What a running task leaves behind: step statuses, its state-change history, log lines and
//! measurements (Orchestra's run steps; LuciHub's state changes, logs and per-channel
//! measurements).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Attempt, TaskKey, TaskStatus, Timestamp};

word_enum! {
    /// Where one step of a running task is (SPEC.md §6).
    pub enum StepStatus("step status") {
        /// Not started yet.
        Waiting = "WAITING",
        /// Its process runs.
        Running = "RUNNING",
        /// Exited with status 0.
        Succeeded = "SUCCEEDED",
        /// Exited with a non-zero status.
        Failed = "FAILED",
        /// Killed by a cancel, an abort or a timeout.
        Aborted = "ABORTED",
        /// Could not be started (bad placeholder, missing program).
        Exception = "EXCEPTION",
        /// Not run because an earlier step did not succeed.
        Skipped = "SKIPPED",
    }
}

impl StepStatus {
    /// Whether the step is over.
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Waiting | Self::Running)
    }
}

/// The status of one step of a task's current or last attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepState {
    /// Its position among the function's steps, from 0.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: StepStatus,
    /// The process's exit code, once it exited.
    pub exit_code: Option<i32>,
    /// When it started.
    pub start_date: Option<Timestamp>,
    /// When it ended.
    pub end_date: Option<Timestamp>,
}

/// One entry of a task's append-only state-change history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskStateChange {
    /// The task.
    pub task_key: TaskKey,
    /// When the change happened.
    pub timestamp: Timestamp,
    /// The status it changed to.
    pub status: TaskStatus,
    /// Why, in words ("last parent task … done", "lease lapsed", "user action").
    pub reason: String,
    /// The attempt concerned, when there is one.
    pub attempt: Option<Attempt>,
}

word_enum! {
    /// Which stream a log line came from.
    pub enum LogStream("log stream") {
        /// The step's standard output.
        Stdout = "STDOUT",
        /// The step's standard error.
        Stderr = "STDERR",
        /// A line written by the worker itself (step started, truncation notice, …).
        System = "SYSTEM",
    }
}

/// One line of a task's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt that wrote it.
    pub attempt: Attempt,
    /// Its position in the attempt's log, from 0; orders lines written in the same instant.
    pub seq: u64,
    /// The step that wrote it, when a step did.
    pub step: Option<u32>,
    /// Its stream.
    pub stream: LogStream,
    /// When it was read.
    pub timestamp: Timestamp,
    /// The text, without its line ending.
    pub text: String,
    /// The line was cut to the per-line bound.
    pub truncated: bool,
}

/// One sample of a measurement channel: LuciHub's per-channel time series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Measurement {
    /// The task.
    pub task_key: TaskKey,
    /// The attempt that measured it.
    pub attempt: Attempt,
    /// The channel's name.
    pub channel: String,
    /// The sample's time on the device's clock, as the step wrote it.
    pub t: f64,
    /// The sample's value.
    pub value: f64,
    /// When the worker read it.
    pub timestamp: Timestamp,
}
