//! Performances: the floats tasks report for their PERFORMANCE outputs, and the seed's
//! `Performances` table of a plan (a query over plans, tasks and performances, not stored twice).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Metadata, OrganizationId, PlanKey, PlanStatus, TaskKey, Timestamp};

/// One performance: the value a task reported for one PERFORMANCE output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Performance {
    /// The task that reported it.
    pub compute_task_key: TaskKey,
    /// The PERFORMANCE output it was reported for; one value per (task, output).
    pub output_identifier: String,
    /// The value, always finite.
    pub value: f64,
    /// When it was registered.
    pub creation_date: Timestamp,
}

/// The round a task's performance belongs to: its metadata's `round_idx` when it is an integer,
/// else its rank (SPEC.md §5).
pub fn round_idx(metadata: &Metadata, rank: u32) -> i64 {
    metadata
        .get("round_idx")
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(i64::from(rank))
}

/// One row of a plan's performance table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PerformanceRow {
    /// The plan.
    pub compute_plan_key: PlanKey,
    /// The plan's tag.
    pub compute_plan_tag: String,
    /// The plan's status.
    pub compute_plan_status: PlanStatus,
    /// The plan's start date.
    pub compute_plan_start_date: Option<Timestamp>,
    /// The plan's end date.
    pub compute_plan_end_date: Option<Timestamp>,
    /// The plan's metadata.
    pub compute_plan_metadata: Metadata,
    /// The organization that ran the task.
    pub worker: OrganizationId,
    /// The task.
    pub task_key: TaskKey,
    /// The name of the task's function (the metric).
    pub function_name: String,
    /// The task's rank.
    pub task_rank: u32,
    /// The task's round ([`round_idx`]).
    pub round_idx: i64,
    /// The output the value was reported for.
    pub identifier: String,
    /// The value.
    pub performance: f64,
}

/// A plan's performance table in the seed's columnar form: equal-length columns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Performances {
    /// Plan key per row.
    pub compute_plan_key: Vec<PlanKey>,
    /// Plan tag per row.
    pub compute_plan_tag: Vec<String>,
    /// Plan status per row.
    pub compute_plan_status: Vec<PlanStatus>,
    /// Plan start date per row.
    pub compute_plan_start_date: Vec<Option<Timestamp>>,
    /// Plan end date per row.
    pub compute_plan_end_date: Vec<Option<Timestamp>>,
    /// Plan metadata per row.
    pub compute_plan_metadata: Vec<Metadata>,
    /// Worker organization per row.
    pub worker: Vec<OrganizationId>,
    /// Task key per row.
    pub task_key: Vec<TaskKey>,
    /// Function name per row.
    pub function_name: Vec<String>,
    /// Task rank per row.
    pub task_rank: Vec<u32>,
    /// Round per row.
    pub round_idx: Vec<i64>,
    /// Output identifier per row.
    pub identifier: Vec<String>,
    /// Value per row.
    pub performance: Vec<f64>,
}

impl FromIterator<PerformanceRow> for Performances {
    fn from_iter<I: IntoIterator<Item = PerformanceRow>>(rows: I) -> Self {
        let mut table = Performances::default();
        for row in rows {
            table.compute_plan_key.push(row.compute_plan_key);
            table.compute_plan_tag.push(row.compute_plan_tag);
            table.compute_plan_status.push(row.compute_plan_status);
            table
                .compute_plan_start_date
                .push(row.compute_plan_start_date);
            table.compute_plan_end_date.push(row.compute_plan_end_date);
            table.compute_plan_metadata.push(row.compute_plan_metadata);
            table.worker.push(row.worker);
            table.task_key.push(row.task_key);
            table.function_name.push(row.function_name);
            table.task_rank.push(row.task_rank);
            table.round_idx.push(row.round_idx);
            table.identifier.push(row.identifier);
            table.performance.push(row.performance);
        }
        table
    }
}
