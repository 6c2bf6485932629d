//! `baton perf PLAN`: a plan's performances as a table, CSV or JSON, and drawn per round with
//! `plotters` to a PNG or SVG file.
//!
//! Text in plots is drawn with DejaVu Sans, bundled in the binary (`cli/assets/`) and given to
//! plotters through its `ab_glyph` feature, so a plot looks the same on every host and needs
//! no system font or fontconfig.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use plotters::coord::Shift;
use plotters::prelude::*;

use models::{PerformanceRow, PlanKey};

use crate::client::ApiClient;
use crate::output::{self, Output};
use crate::{OutputFormat, PerfArgs};

/// The font family plots are drawn with: the bundled font is registered under this name.
const FONT: &str = "sans-serif";

/// DejaVu Sans (license in `cli/assets/DejaVuSans.LICENSE`).
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// A plot's size in pixels (in user units for SVG).
const PLOT_SIZE: (u32, u32) = (1024, 640);

/// Runs `baton perf`.
pub(crate) async fn run(
    out: &Output,
    format: OutputFormat,
    client: &ApiClient,
    args: PerfArgs,
) -> anyhow::Result<()> {
    let key = PlanKey(args.plan);
    // Checked first, so that a bad file name fails before anything is read.
    let plot_format = args.plot.as_deref().map(PlotFormat::of).transpose()?;
    let plan = client.plan(key).await?;
    let performances = client
        .performances(key)
        .await
        .with_context(|| format!("reading the performances of plan {key}"))?;
    let rows = output::performance_rows(&performances);
    if args.csv {
        out.line(output::performances_csv(&rows).trim_end());
    } else {
        let tasks = if format == OutputFormat::Table && !rows.is_empty() {
            client
                .plan_tasks(key)
                .await
                .with_context(|| format!("reading the tasks of plan {key}"))?
        } else {
            Vec::new()
        };
        output::print_performances(out, format, &performances, &tasks)?;
    }
    if let (Some(path), Some(plot_format)) = (args.plot.as_deref(), plot_format) {
        if rows.is_empty() {
            bail!("plan {key} has no performance to plot yet");
        }
        let title = format!("{}: performance per round", plan.name);
        draw(path, plot_format, &title, &rows)?;
        if format == OutputFormat::Table && !args.csv {
            out.line(format!("plot written to {}", path.display()));
        }
    }
    Ok(())
}

/// The file formats a plot can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PlotFormat {
    Png,
    Svg,
}

impl PlotFormat {
    /// The format `path`'s extension names.
    fn of(path: &Path) -> anyhow::Result<PlotFormat> {
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("png") => Ok(PlotFormat::Png),
            Some("svg") => Ok(PlotFormat::Svg),
            _ => bail!(
                "--plot {}: the file name must end in .png or .svg",
                path.display()
            ),
        }
    }
}

/// One line of a plot: a metric as reported by a worker, by round.
#[derive(Debug, PartialEq)]
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// The plot's lines: one per metric (function and output) and worker, each point a round and
/// its value (several values in a round are all drawn), in round order.
fn series_of(rows: &[PerformanceRow]) -> Vec<Series> {
    let mut grouped: BTreeMap<(String, String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for row in rows {
        grouped
            .entry((
                row.function_name.clone(),
                row.identifier.clone(),
                row.worker.to_string(),
            ))
            .or_default()
            .push((row.round_idx as f64, row.performance));
    }
    let metrics: std::collections::BTreeSet<(&String, &String)> = grouped
        .keys()
        .map(|(function, identifier, _)| (function, identifier))
        .collect();
    let one_metric = metrics.len() == 1;
    grouped
        .iter()
        .map(|((function, identifier, worker), points)| {
            let mut points = points.clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let label = if one_metric {
                worker.clone()
            } else if function == identifier {
                format!("{function} @ {worker}")
            } else {
                format!("{function}/{identifier} @ {worker}")
            };
            Series { label, points }
        })
        .collect()
}

/// `[low, high]` widened by a margin, never empty.
fn padded(low: f64, high: f64, margin: f64) -> (f64, f64) {
    let span = high - low;
    if span.abs() < f64::EPSILON {
        let pad = if low.abs() > f64::EPSILON {
            low.abs() * 0.1
        } else {
            0.5
        };
        (low - pad, high + pad)
    } else {
        (low - span * margin, high + span * margin)
    }
}

/// Registers the bundled font with plotters, once per process.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if *registered {
        Ok(())
    } else {
        bail!("the bundled font cannot be read")
    }
}

/// Draws `rows` to `path`.
fn draw(
    path: &Path,
    format: PlotFormat,
    title: &str,
    rows: &[PerformanceRow],
) -> anyhow::Result<()> {
    register_font()?;
    let series = series_of(rows);
    let drawn = match format {
        PlotFormat::Png => {
            let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
            draw_on(&root, title, &series).and_then(|()| root.present().map_err(|e| e.to_string()))
        }
        PlotFormat::Svg => {
            let root = SVGBackend::new(path, PLOT_SIZE).into_drawing_area();
            draw_on(&root, title, &series).and_then(|()| root.present().map_err(|e| e.to_string()))
        }
    };
    drawn.map_err(|error| anyhow::anyhow!("drawing the plot to {}: {error}", path.display()))
}

/// Draws `series` on `root`: title, axes with their labels, a line and points per series, and
/// a legend.
fn draw_on<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
) -> Result<(), String> {
    let text = |error: DrawingAreaErrorKind<DB::ErrorType>| error.to_string();
    let points = series.iter().flat_map(|line| line.points.iter());
    let (x_low, x_high) = points
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), (x, _)| {
            (low.min(*x), high.max(*x))
        });
    let (y_low, y_high) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), (_, y)| {
        (low.min(*y), high.max(*y))
    });
    let (x_low, x_high) = (x_low - 0.25, x_high + 0.25);
    let (y_low, y_high) = padded(y_low, y_high, 0.1);
    root.fill(&WHITE).map_err(text)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_low..x_high, y_low..y_high)
        .map_err(text)?;
    let rounds = (x_high - x_low).round() as usize;
    let whole = |x: &f64| {
        if (x - x.round()).abs() < 1e-6 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("performance")
        .x_labels((rounds + 1).clamp(2, 20))
        .x_label_formatter(&whole)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(text)?;
    for (index, line) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(text)?
            .label(line.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&point| Circle::new(point, 4, color.filled())),
            )
            .map_err(text)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(text)?;
    Ok(())
}

#[cfg(test)]
mod tests;
