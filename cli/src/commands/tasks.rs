//! `baton tasks ls|show`, `baton cancel` and `baton abort`: tasks (and plans, for cancel)
//! through the HTTP API.

use anyhow::Context;

use models::{PlanKey, TaskKey};

use crate::client::{ApiClient, TaskFilter, is_not_found};
use crate::output::{self, Output};
use crate::{AbortArgs, CancelArgs, OutputFormat, TasksCommand};

/// Runs `baton tasks …`.
pub(crate) async fn run(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    command: TasksCommand,
) -> anyhow::Result<()> {
    match command {
        TasksCommand::Ls {
            plan,
            status,
            worker,
            worker_id,
            function,
            page,
        } => {
            let filter = TaskFilter {
                compute_plan_key: plan.map(PlanKey),
                status,
                worker,
                worker_id,
                function_key: function,
            };
            let listed = client.tasks(&filter, page.into()).await?;
            output::print_task_page(out, format, &listed)
        }
        TasksCommand::Show { key } => {
            let key = TaskKey(key);
            let task = client.task(key).await?;
            let history = client
                .task_history(key)
                .await
                .with_context(|| format!("reading the history of task {key}"))?;
            // A function this caller may not read keeps its key.
            let function = match format {
                OutputFormat::Table => client.function_name(task.function_key).await.ok(),
                OutputFormat::Json => None,
            };
            output::print_task(out, format, &task, function.as_deref(), &history)
        }
    }
}

/// Runs `baton cancel KEY`: KEY is a plan's, else a task's; prints what was canceled as it is
/// now.
pub(crate) async fn cancel(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    args: CancelArgs,
) -> anyhow::Result<()> {
    match client.plan(PlanKey(args.key)).await {
        Ok(_) => {
            let plan = client
                .cancel_plan(PlanKey(args.key), args.reason)
                .await
                .with_context(|| format!("canceling plan {}", args.key))?;
            output::print_plan_summary(out, format, &plan)
        }
        Err(error) if is_not_found(&error) => {
            let task = client
                .cancel_task(TaskKey(args.key), args.reason)
                .await
                .map_err(|error| {
                    if is_not_found(&error) {
                        error.context(format!(
                            "no compute plan and no task has the key {}",
                            args.key
                        ))
                    } else {
                        error.context(format!("canceling task {}", args.key))
                    }
                })?;
            output::print_task(out, format, &task, None, &[])
        }
        Err(error) => Err(error.context(format!("looking for plan {}", args.key))),
    }
}

/// Runs `baton abort TASK`: prints the task as it is now.
pub(crate) async fn abort(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    args: AbortArgs,
) -> anyhow::Result<()> {
    let task = client
        .abort_task(TaskKey(args.task), args.reason)
        .await
        .with_context(|| format!("aborting task {}", args.task))?;
    output::print_task(out, format, &task, None, &[])
}
