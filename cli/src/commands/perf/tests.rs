use models::{Metadata, OrganizationId, PerformanceRow, PlanKey, PlanStatus, TaskKey};

use super::{PlotFormat, Series, draw, series_of};

fn row(worker: &str, function: &str, round: i64, value: f64) -> PerformanceRow {
    PerformanceRow {
        compute_plan_key: PlanKey(uuid::Uuid::nil()),
        compute_plan_tag: String::new(),
        compute_plan_status: PlanStatus::Done,
        compute_plan_start_date: None,
        compute_plan_end_date: None,
        compute_plan_metadata: Metadata::new(),
        worker: OrganizationId::from(worker),
        task_key: TaskKey(uuid::Uuid::from_u128(round as u128)),
        function_name: function.into(),
        task_rank: round as u32,
        round_idx: round,
        identifier: "score".into(),
        performance: value,
    }
}

#[test]
fn one_line_per_metric_and_worker_in_round_order() {
    let rows = [
        row("b", "auc", 1, 0.7),
        row("a", "auc", 1, 0.6),
        row("a", "auc", 0, 0.5),
        row("a", "loss", 0, 1.5),
    ];
    assert_eq!(
        series_of(&rows),
        [
            Series {
                label: "auc/score @ a".into(),
                points: vec![(0.0, 0.5), (1.0, 0.6)],
            },
            Series {
                label: "auc/score @ b".into(),
                points: vec![(1.0, 0.7)],
            },
            Series {
                label: "loss/score @ a".into(),
                points: vec![(0.0, 1.5)],
            },
        ]
    );
    // With one metric, the workers name the lines.
    let labels: Vec<String> = series_of(&rows[..2])
        .into_iter()
        .map(|series| series.label)
        .collect();
    assert_eq!(labels, ["a", "b"]);
}

#[test]
fn the_plot_format_comes_from_the_file_name() {
    assert_eq!(PlotFormat::of("a/b.PNG".as_ref()).unwrap(), PlotFormat::Png);
    assert_eq!(PlotFormat::of("b.svg".as_ref()).unwrap(), PlotFormat::Svg);
    let message = PlotFormat::of("b.jpg".as_ref()).unwrap_err().to_string();
    assert_eq!(
        message,
        "--plot b.jpg: the file name must end in .png or .svg"
    );
}

#[test]
fn plots_are_drawn_with_the_bundled_font() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        row("a", "auc", 0, 0.5),
        row("a", "auc", 1, 0.6),
        row("a", "auc", 2, 0.55),
    ];
    let png = dir.path().join("p.png");
    draw(&png, PlotFormat::Png, "plan: performance per round", &rows).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(bytes.len() > 5_000, "{} bytes", bytes.len());
    let svg = dir.path().join("p.svg");
    // A single point still gets a range to be drawn in.
    draw(&svg, PlotFormat::Svg, "one point", &rows[..1]).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg"), "{text}");
    assert!(text.contains("one point"), "{text}");
    assert!(text.contains("round"), "{text}");
}
