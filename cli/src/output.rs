//! Printing results as tables for people or JSON for scripts, to standard output or to a
//! buffer ([`Output`]) that a program running `baton` in-process reads back.
//!
//! Progress bars and diagnostics go to stderr elsewhere; only results come through here.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde_json::json;

use models::{
    ComputePlan, Device, LogLine, LogStream, PerformanceRow, Task, TaskStateChange, Worker,
};

use api::pagination::Paginated;

use crate::OutputFormat;

/// Where `baton` writes its results: standard output, or a buffer that a program running
/// commands in-process (the integration tests) reads back with [`Output::captured`].
#[derive(Clone, Debug, Default)]
pub struct Output {
    buffer: Option<Arc<Mutex<String>>>,
}

impl Output {
    /// Standard output.
    pub fn stdout() -> Output {
        Output { buffer: None }
    }

    /// A buffer in memory; clones share it.
    pub fn buffer() -> Output {
        Output {
            buffer: Some(Arc::default()),
        }
    }

    /// What was written to the buffer so far (empty for standard output).
    pub fn captured(&self) -> String {
        self.buffer.as_ref().map_or_else(String::new, |buffer| {
            buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Writes `text` and a line ending.
    pub(crate) fn line(&self, text: impl std::fmt::Display) {
        match &self.buffer {
            Some(buffer) => {
                let mut buffer = buffer.lock().unwrap_or_else(PoisonError::into_inner);
                // Writing to a String cannot fail.
                let _ = writeln!(buffer, "{text}");
            }
            None => {
                let mut stdout = std::io::stdout().lock();
                if let Err(error) = writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
                    // A reader that went away (`baton logs -f … | head`) ends the command, as
                    // it ends any Unix filter; anything else is worth a word on stderr.
                    if error.kind() != std::io::ErrorKind::BrokenPipe {
                        eprintln!("error: writing to standard output: {error}");
                    }
                    std::process::exit(if error.kind() == std::io::ErrorKind::BrokenPipe {
                        0
                    } else {
                        1
                    });
                }
            }
        }
    }

    /// Writes `value` as one pretty-printed JSON document.
    pub(crate) fn json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        self.line(serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// `url` with its password replaced by `***`, safe to print.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A table with `header`, in the CLI's style.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

/// Prints one JSON document on one line.
pub(crate) fn print_json_value(out: &Output, value: &serde_json::Value) -> anyhow::Result<()> {
    out.line(serde_json::to_string(value)?);
    Ok(())
}

/// Prints the migrations just applied.
pub(crate) fn print_migrations(
    out: &Output,
    format: OutputFormat,
    applied: &[String],
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(&json!({ "applied": applied })),
        OutputFormat::Table if applied.is_empty() => {
            out.line("database schema is up to date");
            Ok(())
        }
        OutputFormat::Table => {
            for version in applied {
                out.line(format_args!("applied migration {version}"));
            }
            Ok(())
        }
    }
}

fn plan_row(plan: &ComputePlan) -> Vec<String> {
    let counters = &plan.counters;
    vec![
        plan.key.to_string(),
        plan.name.clone(),
        plan.status.to_string(),
        format!(
            "{} tasks: {} waiting, {} todo, {} doing, {} done, {} failed, {} canceled",
            counters.task_count,
            counters.waiting_count,
            counters.todo_count,
            counters.doing_count,
            counters.done_count,
            counters.failed_count,
            counters.canceled_count
        ),
        plan.creation_date
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
    ]
}

/// Prints row counts and the latest plans.
pub(crate) fn print_status(
    out: &Output,
    format: OutputFormat,
    counts: &[(String, i64)],
    plans: &[ComputePlan],
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(&json!({
            "rows": counts.iter().map(|(t, n)| (t.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "compute_plans": plans,
        })),
        OutputFormat::Table => {
            let mut rows = table(&["table", "rows"]);
            for (name, count) in counts {
                rows.add_row(vec![name.clone(), count.to_string()]);
            }
            out.line(rows);
            if plans.is_empty() {
                out.line("no compute plan yet: `baton demo` submits one");
                return Ok(());
            }
            let mut listing = table(&["plan", "name", "status", "tasks", "created"]);
            for plan in plans {
                listing.add_row(plan_row(plan));
            }
            out.line(listing);
            Ok(())
        }
    }
}

/// Prints a stored plan and its tasks.
pub(crate) fn print_plan(
    out: &Output,
    format: OutputFormat,
    plan: &ComputePlan,
    tasks: &[Task],
    function_names: &std::collections::HashMap<models::FunctionKey, String>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(&json!({
            "compute_plan": plan,
            "tasks": public_tasks(tasks)?,
        })),
        OutputFormat::Table => {
            let mut summary = table(&["plan", "name", "status", "tasks", "created"]);
            summary.add_row(plan_row(plan));
            out.line(summary);
            let mut listing = table(&[
                "rank", "task", "key", "function", "worker", "status", "queue", "ran on",
            ]);
            for task in tasks {
                let status = match task.waiting_reason {
                    Some(reason) => format!("{} ({reason})", task.status),
                    None => task.status.to_string(),
                };
                listing.add_row(vec![
                    task.rank.to_string(),
                    task.name.clone().unwrap_or_else(|| "-".to_owned()),
                    task.key.to_string(),
                    function_names
                        .get(&task.function_key)
                        .cloned()
                        .unwrap_or_else(|| task.function_key.to_string()),
                    task.worker.to_string(),
                    status,
                    format!("baton.tasks.{}", task.requirements.routing_key()),
                    task.worker_id
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), ToString::to_string),
                ]);
            }
            out.line(listing);
            Ok(())
        }
    }
}

/// Prints a plan that ran: the plan and its tasks, then its performance table (round, task,
/// metric, organization, output, value); one JSON document with all three for scripts.
pub(crate) fn print_plan_run(
    out: &Output,
    format: OutputFormat,
    plan: &ComputePlan,
    tasks: &[Task],
    function_names: &std::collections::HashMap<models::FunctionKey, String>,
    performances: &[PerformanceRow],
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return out.json(&json!({
            "compute_plan": plan,
            "tasks": public_tasks(tasks)?,
            "performances": performances,
        }));
    }
    print_plan(out, format, plan, tasks, function_names)?;
    if performances.is_empty() {
        out.line("no performance reported");
        return Ok(());
    }
    out.line(performance_table(performances, tasks));
    Ok(())
}

/// The performance table of a plan, naming each task from `tasks`.
fn performance_table(performances: &[PerformanceRow], tasks: &[Task]) -> Table {
    let mut listing = table(&["round", "task", "metric", "organization", "output", "value"]);
    for row in performances {
        let task = tasks
            .iter()
            .find(|task| task.key == row.task_key)
            .and_then(|task| task.name.clone())
            .unwrap_or_else(|| row.task_key.to_string());
        listing.add_row(vec![
            row.round_idx.to_string(),
            task,
            row.function_name.clone(),
            row.worker.to_string(),
            row.identifier.clone(),
            row.performance.to_string(),
        ]);
    }
    listing
}

/// `task` as the HTTP API shows it: its lease without the token, which only the worker holding
/// the lease may know.
pub(crate) fn public_task(task: &Task) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(task)?;
    if let Some(serde_json::Value::Object(lease)) = value.get_mut("lease") {
        lease.remove("token");
    }
    Ok(value)
}

fn public_tasks(tasks: &[Task]) -> anyhow::Result<Vec<serde_json::Value>> {
    tasks.iter().map(public_task).collect()
}

fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

fn date(timestamp: Option<models::Timestamp>) -> String {
    or_dash(timestamp.map(|at| at.format("%Y-%m-%d %H:%M:%S UTC")))
}

/// "page 2 of 3 (120 plans)", or nothing when one page holds everything.
fn page_footer<T>(page: &Paginated<T>, what: &str) -> Option<String> {
    let size = u64::from(page.page_size.max(1));
    let pages = page.count.div_ceil(size).max(1);
    (pages > 1 || u64::from(page.page) > pages).then(|| {
        format!(
            "page {} of {pages} ({} {what}); --page and --page-size show others",
            page.page, page.count
        )
    })
}

/// Prints the table of a page of a listing: a line saying so when it is empty, else a table of
/// `header` with `row` of each item, and a footer pointing at the other pages.
pub(crate) fn print_page_table<T>(
    out: &Output,
    page: &Paginated<T>,
    (singular, plural): (&str, &str),
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) {
    if page.results.is_empty() {
        out.line(format!(
            "no {singular} on page {} ({} in all)",
            page.page, page.count
        ));
        return;
    }
    let mut listing = table(header);
    for item in &page.results {
        listing.add_row(row(item));
    }
    out.line(listing);
    if let Some(footer) = page_footer(page, plural) {
        out.line(footer);
    }
}

/// A page of a listing as the API answered it, with `results` as given.
fn page_json<T>(page: &Paginated<T>, results: serde_json::Value) -> serde_json::Value {
    json!({
        "count": page.count,
        "page": page.page,
        "page_size": page.page_size,
        "results": results,
    })
}

/// Prints a plan: one line of its key, name, status and counters (the stored document for
/// scripts).
pub(crate) fn print_plan_summary(
    out: &Output,
    format: OutputFormat,
    plan: &ComputePlan,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(plan),
        OutputFormat::Table => {
            let mut summary = table(&["plan", "name", "status", "tasks", "created"]);
            summary.add_row(plan_row(plan));
            out.line(summary);
            Ok(())
        }
    }
}

/// Prints a page of plans.
pub(crate) fn print_plan_page(
    out: &Output,
    format: OutputFormat,
    page: &Paginated<ComputePlan>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(page),
        OutputFormat::Table => {
            print_page_table(
                out,
                page,
                ("compute plan", "plans"),
                &["plan", "name", "status", "tasks", "created"],
                plan_row,
            );
            Ok(())
        }
    }
}

/// Prints a page of tasks.
pub(crate) fn print_task_page(
    out: &Output,
    format: OutputFormat,
    page: &Paginated<Task>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(&page_json(
            page,
            serde_json::Value::Array(public_tasks(&page.results)?),
        )),
        OutputFormat::Table => {
            print_page_table(
                out,
                page,
                ("task", "tasks"),
                &[
                    "task", "name", "plan", "rank", "status", "worker", "ran on", "attempts",
                ],
                |task| {
                    vec![
                        task.key.to_string(),
                        task.name.clone().unwrap_or_else(|| "-".to_owned()),
                        task.compute_plan_key.to_string(),
                        task.rank.to_string(),
                        task.status.to_string(),
                        task.worker.to_string(),
                        or_dash(task.worker_id.as_ref()),
                        task.attempt_count.to_string(),
                    ]
                },
            );
            Ok(())
        }
    }
}

/// Prints a task, field by field (its function by name when given), and its state changes.
pub(crate) fn print_task(
    out: &Output,
    format: OutputFormat,
    task: &Task,
    function_name: Option<&str>,
    history: &[TaskStateChange],
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return out.json(&json!({ "task": public_task(task)?, "history": history }));
    }
    let mut fields = table(&["task", &task.key.to_string()]);
    let status = match task.waiting_reason {
        Some(reason) => format!("{} ({reason})", task.status),
        None => task.status.to_string(),
    };
    let error = task.error_type.map(|kind| {
        format!(
            "{kind}: {}",
            task.error_message.as_deref().unwrap_or("no message")
        )
    });
    let rows: Vec<(&str, String)> = vec![
        ("name", or_dash(task.name.as_ref())),
        ("plan", task.compute_plan_key.to_string()),
        (
            "function",
            match function_name {
                Some(name) => format!("{name} ({})", task.function_key),
                None => task.function_key.to_string(),
            },
        ),
        ("rank", task.rank.to_string()),
        ("status", status),
        ("error", or_dash(error)),
        ("owner", task.owner.to_string()),
        ("worker", task.worker.to_string()),
        (
            "queue",
            format!("baton.tasks.{}", task.requirements.routing_key()),
        ),
        ("ran on", or_dash(task.worker_id.as_ref())),
        ("device", or_dash(task.device_id.as_ref())),
        ("attempts", task.attempt_count.to_string()),
        ("tag", task.tag.clone()),
        (
            "parameters",
            serde_json::Value::Object(task.parameters.clone()).to_string(),
        ),
        ("created", date(Some(task.creation_date))),
        ("started", date(task.start_date)),
        ("ended", date(task.end_date)),
    ];
    for (name, value) in rows {
        fields.add_row(vec![name.to_owned(), value]);
    }
    for step in &task.steps {
        fields.add_row(vec![
            format!("step {}", step.index),
            format!(
                "{} {}{}",
                step.name,
                step.status,
                step.exit_code
                    .map(|code| format!(" (exit {code})"))
                    .unwrap_or_default()
            ),
        ]);
    }
    out.line(fields);
    if history.is_empty() {
        return Ok(());
    }
    let mut changes = table(&["when", "status", "attempt", "why"]);
    for change in history {
        changes.add_row(vec![
            date(Some(change.timestamp)),
            change.status.to_string(),
            or_dash(change.attempt),
            change.reason.clone(),
        ]);
    }
    out.line(changes);
    Ok(())
}

/// Prints task log lines: for people, each line with its time and stream (and a heading when
/// the attempt changes); for scripts, one JSON object per line.
#[derive(Debug, Default)]
pub(crate) struct LogPrinter {
    attempt: Option<models::Attempt>,
}

impl LogPrinter {
    /// Prints `line`.
    pub(crate) fn print(
        &mut self,
        out: &Output,
        format: OutputFormat,
        line: &LogLine,
    ) -> anyhow::Result<()> {
        if format == OutputFormat::Json {
            out.line(serde_json::to_string(line)?);
            return Ok(());
        }
        if self.attempt != Some(line.attempt) {
            out.line(format!("── attempt {} ──", line.attempt));
            self.attempt = Some(line.attempt);
        }
        let stream = match line.stream {
            LogStream::Stdout => "out",
            LogStream::Stderr => "err",
            LogStream::System => "baton",
        };
        out.line(format!(
            "{} {stream:<5} {}{}",
            line.timestamp.format("%H:%M:%S%.3f"),
            line.text,
            if line.truncated { " [truncated]" } else { "" }
        ));
        Ok(())
    }
}

/// Prints a plan's performances: a table naming each task from `tasks`, or the API's columnar
/// document for scripts.
pub(crate) fn print_performances(
    out: &Output,
    format: OutputFormat,
    performances: &models::Performances,
    tasks: &[Task],
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return out.json(performances);
    }
    let rows = performance_rows(performances);
    if rows.is_empty() {
        out.line("no performance reported");
        return Ok(());
    }
    out.line(performance_table(&rows, tasks));
    Ok(())
}

/// The rows of a columnar performance table (columns shorter than the values column end the
/// table where they end).
pub(crate) fn performance_rows(performances: &models::Performances) -> Vec<PerformanceRow> {
    let columns = performances;
    (0..columns.performance.len())
        .map_while(|row| {
            Some(PerformanceRow {
                compute_plan_key: *columns.compute_plan_key.get(row)?,
                compute_plan_tag: columns.compute_plan_tag.get(row)?.clone(),
                compute_plan_status: *columns.compute_plan_status.get(row)?,
                compute_plan_start_date: *columns.compute_plan_start_date.get(row)?,
                compute_plan_end_date: *columns.compute_plan_end_date.get(row)?,
                compute_plan_metadata: columns.compute_plan_metadata.get(row)?.clone(),
                worker: columns.worker.get(row)?.clone(),
                task_key: *columns.task_key.get(row)?,
                function_name: columns.function_name.get(row)?.clone(),
                task_rank: *columns.task_rank.get(row)?,
                round_idx: *columns.round_idx.get(row)?,
                identifier: columns.identifier.get(row)?.clone(),
                performance: *columns.performance.get(row)?,
            })
        })
        .collect()
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The performance table as CSV, with a header line.
pub(crate) fn performances_csv(rows: &[PerformanceRow]) -> String {
    let mut csv = String::from(
        "compute_plan_key,round_idx,task_rank,task_key,function_name,worker,identifier,performance\n",
    );
    for row in rows {
        let fields = [
            row.compute_plan_key.to_string(),
            row.round_idx.to_string(),
            row.task_rank.to_string(),
            row.task_key.to_string(),
            row.function_name.clone(),
            row.worker.to_string(),
            row.identifier.clone(),
            row.performance.to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|field| csv_field(field)).collect();
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    csv
}

/// Prints a page of workers.
pub(crate) fn print_worker_page(
    out: &Output,
    format: OutputFormat,
    page: &Paginated<Worker>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(page),
        OutputFormat::Table => {
            let header = [
                "worker",
                "organization",
                "owner",
                "active",
                "slots",
                "properties",
                "last heartbeat",
            ];
            print_page_table(out, page, ("worker", "workers"), &header, |worker| {
                let properties: Vec<String> = worker
                    .properties
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                let active = match (worker.is_active, worker.is_enabled) {
                    (_, false) => "disabled",
                    (true, true) => "yes",
                    (false, true) => "no",
                };
                vec![
                    worker.identifier.to_string(),
                    worker.organization.to_string(),
                    worker.owner.to_string(),
                    active.to_owned(),
                    worker.executor_limit.to_string(),
                    properties.join(", "),
                    date(worker.last_heartbeat),
                ]
            });
            Ok(())
        }
    }
}

/// Prints a page of devices.
pub(crate) fn print_device_page(
    out: &Output,
    format: OutputFormat,
    page: &Paginated<Device>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => out.json(page),
        OutputFormat::Table => {
            let header = ["worker", "device", "type", "input", "active", "last seen"];
            print_page_table(out, page, ("device", "devices"), &header, |device| {
                vec![
                    device.worker.to_string(),
                    device.id.to_string(),
                    device.device_type.clone(),
                    or_dash(device.input_type.as_ref()),
                    if device.is_active { "yes" } else { "no" }.to_owned(),
                    date(device.last_seen),
                ]
            });
            Ok(())
        }
    }
}

/// Prints the broker benchmark: a table for people, then one JSON line per figure.
pub(crate) fn print_broker_bench(
    out: &Output,
    format: OutputFormat,
    figures: &crate::bench::BrokerFigures,
) -> anyhow::Result<()> {
    let lines = [
        json!({"scenario": "broker", "figure": "lapin_msgs_per_s", "value": figures.lapin_median, "runs": figures.lapin_runs, "messages": figures.messages}),
        json!({"scenario": "broker", "figure": "baton_msgs_per_s", "value": figures.baton_median, "runs": figures.baton_runs, "messages": figures.messages}),
        json!({"scenario": "broker", "figure": "baton_to_lapin_ratio", "value": figures.ratio}),
    ];
    if format == OutputFormat::Table {
        let mut summary = table(&[
            "broker: confirmed publish + consume",
            "median msgs/s",
            "runs",
        ]);
        let runs = |values: &[f64]| {
            values
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        summary.add_row(vec![
            "plain lapin".to_owned(),
            format!("{:.0}", figures.lapin_median),
            runs(&figures.lapin_runs),
        ]);
        summary.add_row(vec![
            "baton broker layer".to_owned(),
            format!("{:.0}", figures.baton_median),
            runs(&figures.baton_runs),
        ]);
        summary.add_row(vec![
            "ratio baton / lapin".to_owned(),
            format!("{:.3}", figures.ratio),
            String::new(),
        ]);
        out.line(summary);
    }
    for line in lines {
        out.line(serde_json::to_string(&line)?);
    }
    Ok(())
}

/// Prints the large-plan benchmark: a table for people, then one JSON line per figure.
pub(crate) fn print_large_plan_bench(
    out: &Output,
    format: OutputFormat,
    figures: &crate::bench_plan::LargePlanFigures,
) -> anyhow::Result<()> {
    if format == OutputFormat::Table {
        let mut summary = table(&["large plan", "value"]);
        summary.add_row(vec![
            "tasks / layers".to_owned(),
            format!("{} / {}", figures.tasks, figures.layers),
        ]);
        summary.add_row(vec![
            "load references + validate".to_owned(),
            format!("{:.2} s", figures.validate_secs),
        ]);
        summary.add_row(vec![
            "validate + store (one transaction)".to_owned(),
            format!("{:.2} s", figures.store_secs),
        ]);
        summary.add_row(vec![
            "validate + store + first publish".to_owned(),
            format!(
                "{:.2} s (runs {}; goal ≤ {:.0} s)",
                figures.first_publish_secs,
                figures
                    .first_publish_runs
                    .iter()
                    .map(|secs| format!("{secs:.2}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                figures.goal_secs
            ),
        ]);
        summary.add_row(vec![
            "statistics refresh afterwards".to_owned(),
            format!("{:.2} s", figures.analyze_secs),
        ]);
        summary.add_row(vec![
            "rebuild dispatcher state".to_owned(),
            format!("{:.2} s", figures.load_state_secs),
        ]);
        summary.add_row(vec![
            "dispatcher state per task".to_owned(),
            format!("{:.0} bytes", figures.state_bytes_per_task),
        ]);
        out.line(summary);
    }
    for (figure, value) in [
        ("validate_secs", figures.validate_secs),
        ("store_secs", figures.store_secs),
        ("first_publish_secs", figures.first_publish_secs),
        ("analyze_secs", figures.analyze_secs),
        ("load_state_secs", figures.load_state_secs),
        ("state_bytes_per_task", figures.state_bytes_per_task),
    ] {
        let line = json!({"scenario": "large_plan", "figure": figure, "value": value, "tasks": figures.tasks});
        out.line(serde_json::to_string(&line)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{performance_table, redact_url};

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://baton:s3cret@127.0.0.1:5432/baton"),
            "postgres://baton:***@127.0.0.1:5432/baton"
        );
        assert_eq!(
            redact_url("postgres://baton@127.0.0.1/baton"),
            "postgres://baton@127.0.0.1/baton"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn the_performance_table_names_tasks_and_rounds() {
        let task_key = models::TaskKey(uuid::Uuid::from_u128(7));
        let row = models::PerformanceRow {
            compute_plan_key: models::PlanKey(uuid::Uuid::from_u128(1)),
            compute_plan_tag: "demo".into(),
            compute_plan_status: models::PlanStatus::Done,
            compute_plan_start_date: None,
            compute_plan_end_date: None,
            compute_plan_metadata: models::Metadata::new(),
            worker: "hospital-a".into(),
            task_key,
            function_name: "evaluate".into(),
            task_rank: 2,
            round_idx: 0,
            identifier: "accuracy".into(),
            performance: 0.62,
        };
        let unnamed = performance_table(std::slice::from_ref(&row), &[]).to_string();
        assert!(unnamed.contains(&task_key.to_string()), "{unnamed}");
        for text in ["evaluate", "hospital-a", "accuracy", "0.62"] {
            assert!(unnamed.contains(text), "{text} in {unnamed}");
        }
    }
}
