//! Schedules: cron triggers of a function with parameters (Orchestra's `Schedule`).

use serde::{Deserialize, Serialize};

use crate::{FunctionKey, JsonObject, ProjectId, ScheduleId, TaskKey, Timestamp};

/// A cron trigger: each matching time, a plan of one task of `function_key` is submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The project it belongs to.
    pub project: ProjectId,
    /// Unique within the project.
    pub identifier: ScheduleId,
    /// The name shown in user interfaces.
    pub display_name: String,
    /// The function it triggers (Orchestra's `job`).
    pub function_key: FunctionKey,
    /// The parameters each triggered task gets.
    pub parameters: JsonObject,
    /// The cron expression: 5 fields, or 6 with seconds first; names allowed; day-of-week 0 =
    /// Sunday.
    pub expression: String,
    /// The IANA time zone the expression is read in.
    pub timezone: String,
    /// Created disabled; a disabled schedule does not fire.
    pub is_enabled: bool,
    /// The task it last triggered.
    pub last_run: Option<TaskKey>,
    /// The last matching time it fired for.
    pub last_fire_date: Option<Timestamp>,
    /// When it was created.
    pub creation_date: Timestamp,
    /// When it was last updated.
    pub update_date: Timestamp,
}
