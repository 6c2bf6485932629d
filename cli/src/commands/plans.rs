//! `baton submit FILE` and `baton plans ls|show|watch`: compute plans through the HTTP API.
//!
//! A plan file is read into [`PlanSubmission`] here, so that a mistake in it is reported with
//! the file's name and the path inside it before anything is sent; the dispatcher then
//! validates it against what is stored.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use models::submission::PlanSubmission;
use models::{ComputePlan, FunctionKey, PlanCounters, PlanKey, PlanStatus};

use crate::client::{ApiClient, PlanFilter};
use crate::output::{self, Output};
use crate::{OutputFormat, PlansCommand, SubmitArgs};

/// Runs `baton plans …`.
pub(crate) async fn run(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    command: PlansCommand,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    match command {
        PlansCommand::Ls {
            status,
            owner,
            project,
            tag,
            page,
        } => {
            let filter = PlanFilter {
                status,
                owner,
                project,
                tag,
            };
            let listed = client.plans(&filter, page.into()).await?;
            output::print_plan_page(out, format, &listed)
        }
        PlansCommand::Show { key } => show(out, format, client, PlanKey(key)).await,
        PlansCommand::Watch { key, watching } => {
            let interval = Duration::from_millis(watching.interval_ms);
            watch(out, format, client, PlanKey(key), interval, stop).await
        }
    }
}

/// Runs `baton submit`: reads the file, submits it, prints the stored plan, and watches it
/// when asked to.
pub(crate) async fn submit(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    args: SubmitArgs,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let submission = read_plan_file(&args.file)?;
    let plan = client
        .submit_plan(&submission, args.idempotency_key.as_deref())
        .await
        .with_context(|| format!("submitting {}", args.file.display()))?;
    if args.watch {
        // The watch prints the plan once it ends.
        let interval = Duration::from_millis(args.watching.interval_ms);
        return watch(out, format, client, plan.key, interval, stop).await;
    }
    output::print_plan_summary(out, format, &plan)
}

/// Reads a plan file: YAML when its name ends in `.yaml` or `.yml`, JSON otherwise.
pub(crate) fn read_plan_file(path: &Path) -> anyhow::Result<PlanSubmission> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the plan file {}", path.display()))?;
    parse_plan(&text, path)
}

/// Whether `path` names a YAML file.
fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| {
            extension.eq_ignore_ascii_case("yaml") || extension.eq_ignore_ascii_case("yml")
        })
}

/// Reads `text`, the content of `path`, as a plan; a mistake is reported with the file's name
/// and the path inside the document (`tasks[1].function_key`).
fn parse_plan(text: &str, path: &Path) -> anyhow::Result<PlanSubmission> {
    let invalid = |at: &serde_path_to_error::Path, message: String| {
        let at = at.to_string();
        if at == "." {
            anyhow::anyhow!("{} is not a valid plan: {message}", path.display())
        } else {
            anyhow::anyhow!("{} is not a valid plan: at {at}: {message}", path.display())
        }
    };
    if is_yaml(path) {
        let deserializer = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer)
            .map_err(|error| invalid(error.path(), error.inner().to_string()))
    } else {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let plan = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| invalid(error.path(), error.inner().to_string()))?;
        deserializer
            .end()
            .map_err(|error| anyhow::anyhow!("{} is not a valid plan: {error}", path.display()))?;
        Ok(plan)
    }
}

/// Runs `baton plans show`: the plan, then its tasks with their functions' names.
async fn show(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    key: PlanKey,
) -> anyhow::Result<()> {
    let plan = client.plan(key).await?;
    let tasks = client
        .plan_tasks(key)
        .await
        .with_context(|| format!("reading the tasks of plan {key}"))?;
    let mut names: HashMap<FunctionKey, String> = HashMap::new();
    if format == OutputFormat::Table {
        let functions: std::collections::BTreeSet<FunctionKey> =
            tasks.iter().map(|task| task.function_key).collect();
        for function in functions {
            // A function this caller may not read keeps its key in the table.
            if let Ok(name) = client.function_name(function).await {
                names.insert(function, name);
            }
        }
    }
    output::print_plan(out, format, &plan, &tasks, &names)
}

/// How many of a plan's tasks are in one status.
type Counter = fn(&PlanCounters) -> u32;

/// The task statuses a watch shows, each with its counter.
const WATCHED: [(&str, Counter); 6] = [
    ("waiting", |counters| counters.waiting_count),
    ("todo", |counters| counters.todo_count),
    ("doing", |counters| counters.doing_count),
    ("done", |counters| counters.done_count),
    ("failed", |counters| counters.failed_count),
    ("canceled", |counters| counters.canceled_count),
];

/// Runs `baton plans watch`: one progress bar per task status (on stderr, when it is a
/// terminal), updated every `interval` until the plan ends; then the plan. A plan that ended
/// FAILED or CANCELED is an error naming its first failed task.
pub(crate) async fn watch(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    key: PlanKey,
    interval: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos:>6}/{len}")
        .context("the progress bar template")?
        .progress_chars("=> ");
    let rows: Vec<ProgressBar> = WATCHED
        .iter()
        .map(|(status, _)| {
            bars.add(
                ProgressBar::new(0)
                    .with_style(style.clone())
                    .with_prefix(*status),
            )
        })
        .collect();
    let plan = loop {
        let plan = client.plan(key).await?;
        for (bar, (_, count)) in rows.iter().zip(WATCHED) {
            bar.set_length(u64::from(plan.counters.task_count));
            bar.set_position(u64::from(count(&plan.counters)));
        }
        if plan.status.is_terminal() || plan.status == PlanStatus::Empty {
            break plan;
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => {
                bars.clear().ok();
                bail!("stopped watching plan {key}, which is {}", plan.status);
            }
        }
    };
    for bar in &rows {
        // Left drawn as they are (`finish` would fill them).
        bar.abandon();
    }
    output::print_plan_summary(out, format, &plan)?;
    match plan.status {
        PlanStatus::Failed | PlanStatus::Canceled => bail!("{}", ended_badly(client, &plan).await),
        _ => Ok(()),
    }
}

/// Why `plan` ended FAILED or CANCELED, naming its first failed task and that task's error.
async fn ended_badly(client: &ApiClient, plan: &ComputePlan) -> String {
    let counters = &plan.counters;
    let mut message = format!(
        "plan {} ended {}: {} of {} tasks done, {} failed, {} canceled",
        plan.key,
        plan.status,
        counters.done_count,
        counters.task_count,
        counters.failed_count,
        counters.canceled_count
    );
    if let Some(key) = plan.failed_task_key {
        message.push_str(&format!("; task {key} failed"));
        if let Ok(task) = client.task(key).await
            && let Some(error_type) = task.error_type
        {
            message.push_str(&format!(
                " ({error_type}: {})",
                task.error_message.as_deref().unwrap_or("no message")
            ));
        }
        message.push_str(&format!(" (`baton logs {key}` shows its log)"));
    }
    message
}

#[cfg(test)]
mod tests;
