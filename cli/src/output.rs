//! Printing results as tables for people or JSON for scripts.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde_json::json;

use models::{ComputePlan, PerformanceRow, Task};

use crate::OutputFormat;

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

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    table
}

// The CLI's purpose is to print for its user.
#[allow(clippy::print_stdout)]
fn print(text: impl std::fmt::Display) {
    println!("{text}");
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    print(serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints one JSON document.
pub(crate) fn print_json_value(value: &serde_json::Value) -> anyhow::Result<()> {
    print(serde_json::to_string(value)?);
    Ok(())
}

/// Prints the migrations just applied.
pub(crate) fn print_migrations(format: OutputFormat, applied: &[String]) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(&json!({ "applied": applied })),
        OutputFormat::Table if applied.is_empty() => {
            print("database schema is up to date");
            Ok(())
        }
        OutputFormat::Table => {
            for version in applied {
                print(format_args!("applied migration {version}"));
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
    format: OutputFormat,
    counts: &[(String, i64)],
    plans: &[ComputePlan],
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(&json!({
            "rows": counts.iter().map(|(t, n)| (t.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "compute_plans": plans,
        })),
        OutputFormat::Table => {
            let mut rows = table(&["table", "rows"]);
            for (name, count) in counts {
                rows.add_row(vec![name.clone(), count.to_string()]);
            }
            print(rows);
            if plans.is_empty() {
                print("no compute plan yet: `baton demo` submits one");
                return Ok(());
            }
            let mut listing = table(&["plan", "name", "status", "tasks", "created"]);
            for plan in plans {
                listing.add_row(plan_row(plan));
            }
            print(listing);
            Ok(())
        }
    }
}

/// Prints a stored plan and its tasks.
pub(crate) fn print_plan(
    format: OutputFormat,
    plan: &ComputePlan,
    tasks: &[Task],
    function_names: &std::collections::HashMap<models::FunctionKey, String>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(&json!({ "compute_plan": plan, "tasks": tasks })),
        OutputFormat::Table => {
            let mut summary = table(&["plan", "name", "status", "tasks", "created"]);
            summary.add_row(plan_row(plan));
            print(summary);
            let mut listing = table(&[
                "rank", "task", "function", "worker", "status", "queue", "ran on",
            ]);
            for task in tasks {
                let status = match task.waiting_reason {
                    Some(reason) => format!("{} ({reason})", task.status),
                    None => task.status.to_string(),
                };
                listing.add_row(vec![
                    task.rank.to_string(),
                    task.name.clone().unwrap_or_else(|| task.key.to_string()),
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
            print(listing);
            Ok(())
        }
    }
}

/// Prints a plan that ran: the plan and its tasks, then its performance table (round, task,
/// metric, organization, output, value); one JSON document with all three for scripts.
pub(crate) fn print_plan_run(
    format: OutputFormat,
    plan: &ComputePlan,
    tasks: &[Task],
    function_names: &std::collections::HashMap<models::FunctionKey, String>,
    performances: &[PerformanceRow],
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return print_json(&json!({
            "compute_plan": plan,
            "tasks": tasks,
            "performances": performances,
        }));
    }
    print_plan(format, plan, tasks, function_names)?;
    if performances.is_empty() {
        print("no performance reported");
        return Ok(());
    }
    print(performance_table(performances, tasks));
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

/// Prints the broker benchmark: a table for people, then one JSON line per figure.
pub(crate) fn print_broker_bench(
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
        print(summary);
    }
    for line in lines {
        print(serde_json::to_string(&line)?);
    }
    Ok(())
}

/// Prints the large-plan benchmark: a table for people, then one JSON line per figure.
pub(crate) fn print_large_plan_bench(
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
            "rebuild dispatcher state".to_owned(),
            format!("{:.2} s", figures.load_state_secs),
        ]);
        summary.add_row(vec![
            "dispatcher state per task".to_owned(),
            format!("{:.0} bytes", figures.state_bytes_per_task),
        ]);
        print(summary);
    }
    for (figure, value) in [
        ("validate_secs", figures.validate_secs),
        ("store_secs", figures.store_secs),
        ("load_state_secs", figures.load_state_secs),
        ("state_bytes_per_task", figures.state_bytes_per_task),
    ] {
        let line = json!({"scenario": "large_plan", "figure": figure, "value": value, "tasks": figures.tasks});
        print(serde_json::to_string(&line)?);
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
