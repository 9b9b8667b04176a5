//! `gala-gpu plot RUN_DIR`: the learning curve (mean return over the last 100 games vs frames,
//! for every agent and their mean) as an SVG, from metrics.csv and metrics_agents.csv.
//! `gala-gpu plot RUN_A RUN_B … --out F.svg`: the runs' all-agents curves on one chart, to set
//! runs beside each other (e.g. lock-step, pipelined and asynchronous gossip).
//! An agent's curve averages its own last 100 games, which span more frames than the last 100
//! games of all agents together, so it lags the all-agents line; the legend says so.
//! plotters' SVG backend emits `<text>` elements, so no font library is needed.

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// (frames, value) points of one curve.
type Curve = Vec<(f64, f64)>;

/// A data row and its 1-based line number in the file (for error messages).
struct Row {
    line: usize,
    fields: Vec<String>,
}

fn read_csv(path: &Path) -> Result<(Vec<String>, Vec<Row>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("").split(',').map(str::to_string).collect();
    let rows = lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Row { line: i + 2, fields: l.split(',').map(str::to_string).collect() })
        .collect();
    Ok((header, rows))
}

/// Column `c` of `row` as a number; `Ok(None)` when the field is empty (`mean_return_100`
/// before the first finished game) or missing (a row cut short by a crash). Anything else
/// that is not a number is an error naming the file, line and column, rather than a row
/// silently dropped.
fn number<T: std::str::FromStr>(row: &Row, c: usize, name: &str, path: &Path) -> Result<Option<T>> {
    match row.fields.get(c).map(|f| f.trim()) {
        None | Some("") => Ok(None),
        Some(f) => f.parse().map(Some).map_err(|_| {
            Error::Config(format!("{}:{}: column `{name}` holds {f:?}, not a number; fix or delete that line", path.display(), row.line))
        }),
    }
}

fn column(header: &[String], name: &str, path: &Path) -> Result<usize> {
    header.iter().position(|h| h == name).ok_or_else(|| Error::Config(format!("{}: no `{name}` column; is this a gala-gpu run folder?", path.display())))
}

/// Mean curve and one curve per agent (agents with no finished game yet have no points).
pub fn learning_curves(run: &Path) -> Result<(Curve, Vec<Curve>)> {
    let mpath = run.join("metrics.csv");
    let (h, rows) = read_csv(&mpath)?;
    let (fc, rc) = (column(&h, "frames", &mpath)?, column(&h, "mean_return_100", &mpath)?);
    let point = |row: &Row, f: usize, r: usize, path: &Path| -> Result<Option<(f64, f64)>> {
        let x = number::<f64>(row, f, "frames", path)?;
        let y = number::<f64>(row, r, "mean_return_100", path)?;
        Ok(x.zip(y))
    };
    let mut mean: Curve = Vec::new();
    for row in &rows {
        mean.extend(point(row, fc, rc, &mpath)?);
    }
    let mut agents: Vec<Curve> = Vec::new();
    let apath = run.join("metrics_agents.csv");
    if apath.exists() {
        let (h, rows) = read_csv(&apath)?;
        let (fc, ac, rc) = (column(&h, "frames", &apath)?, column(&h, "agent", &apath)?, column(&h, "mean_return_100", &apath)?);
        for row in &rows {
            let Some(agent) = number::<usize>(row, ac, "agent", &apath)? else { continue };
            if let Some(p) = point(row, fc, rc, &apath)? {
                if agents.len() <= agent {
                    agents.resize(agent + 1, Vec::new());
                }
                agents[agent].push(p);
            }
        }
    }
    Ok((mean, agents))
}

/// A frame count as an axis label: `1M`, `2.5M`, `40k`, `500` (the full digits of 2,000,000
/// are hard to read at a glance and plotters would print `2000000.0`).
pub fn frames_label(x: f64) -> String {
    let (scaled, unit) = match x.abs() {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    // Up to two decimals, trailing zeros dropped: 1M, 1.5M, 1.25M.
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{unit}")
}

/// One line of a chart: its legend text, points, colour and width.
struct Series<'a> {
    label: String,
    points: &'a Curve,
    color: RGBAColor,
    width: u32,
}

/// Renders the SVG text of one run: every agent's curve and the all-agents mean.
pub fn render_svg(title: &str, mean: &Curve, agents: &[Curve]) -> Result<String> {
    let mut series: Vec<Series> = agents
        .iter()
        .enumerate()
        .map(|(r, points)| Series { label: format!("agent {r} (its own last 100 games)"), points, color: Palette99::pick(r).mix(0.5), width: 1 })
        .collect();
    series.push(Series { label: "all agents (last 100 games of any agent)".into(), points: mean, color: BLACK.to_rgba(), width: 3 });
    render_series(title, &series)
}

/// Renders the SVG text of several runs' all-agents curves, one colour each.
pub fn render_comparison_svg(title: &str, runs: &[(String, Curve)]) -> Result<String> {
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(i, (label, points))| Series { label: label.clone(), points, color: Palette99::pick(i).to_rgba(), width: 2 })
        .collect();
    render_series(title, &series)
}

fn render_series(title: &str, series: &[Series]) -> Result<String> {
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in series.iter().flat_map(|s| s.points.iter()) {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        (y0, y1) = (-1.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(0.05);
    let mut svg = String::new();
    let draw_err = |e: String| Error::Config(format!("cannot draw the plot: {e}"));
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| draw_err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("frames")
            .x_label_formatter(&|x| frames_label(*x))
            .y_desc("mean return (last 100 games)")
            .draw()
            .map_err(|e| draw_err(e.to_string()))?;
        for s in series {
            let style = s.color.stroke_width(s.width);
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(|e| draw_err(e.to_string()))?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    Ok(svg)
}

fn no_games_yet(run: &Path) -> Error {
    Error::Config(format!(
        "{}: no finished games logged yet, so there is no return to plot; train longer (or lower --metrics-every)",
        run.display()
    ))
}

fn run_name(run: &Path) -> String {
    run.file_name().and_then(|n| n.to_str()).unwrap_or("learning curve").to_string()
}

/// Writes `out` (default `RUN_DIR/learning_curve.svg`) and returns its path.
pub fn plot_run(run: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let (mean, agents) = learning_curves(run)?;
    if mean.is_empty() && agents.iter().all(Vec::is_empty) {
        return Err(no_games_yet(run));
    }
    let title = run_name(run);
    let svg = render_svg(&title, &mean, &agents)?;
    let path = out.map(Path::to_path_buf).unwrap_or_else(|| run.join("learning_curve.svg"));
    crate::run::write_atomic(&path, svg.as_bytes())?;
    Ok(path)
}

/// Writes the runs' all-agents curves side by side to `out`, each labelled by `labels[i]` (or
/// its folder's name when `labels` is empty) and cut at `until` frames if given (a 10M-frame
/// run beside a 40M one), and returns `out`.
pub fn plot_comparison(runs: &[PathBuf], labels: &[String], until: Option<f64>, out: &Path) -> Result<PathBuf> {
    if !labels.is_empty() && labels.len() != runs.len() {
        return Err(Error::Config(format!("{} --label values for {} runs; give one per run, in the same order, or none", labels.len(), runs.len())));
    }
    let mut curves = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        let (mut mean, _) = learning_curves(run)?;
        mean.retain(|&(x, _)| until.is_none_or(|u| x <= u));
        if mean.is_empty() {
            return Err(no_games_yet(run));
        }
        curves.push((labels.get(i).cloned().unwrap_or_else(|| run_name(run)), mean));
    }
    let svg = render_comparison_svg("mean return of the last 100 games (all agents)", &curves)?;
    crate::run::write_atomic(out, svg.as_bytes())?;
    Ok(out.to_path_buf())
}
