//! Charts for papers, drawn with plotters into SVG or PNG (one file per chart):
//!
//! - `accuracy`: validation (solid) and test (dashed) accuracy against epoch, generations
//!   laid end to end, with generation boundaries, teacher-replacement markers and
//!   temperature-change markers;
//! - `loss`: training loss per step (bucket-averaged to at most [`MAX_LOSS_POINTS`] points
//!   per generation);
//! - `generations`: best validation accuracy against cumulative wall time, one point per
//!   generation joined per method and labelled `g1`, `g2`, ...
//!
//! Text uses DejaVu Sans, compiled into the program and registered with plotters at run
//! time, so PNGs render the same on machines without fontconfig or system fonts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::{Format, RunData};
use crate::train::events::{Control, JobKey, Method, TrainEvent};

/// Width and height in pixels (PNG) or user units (SVG) of every chart.
pub const SIZE: (u32, u32) = (1200, 750);
/// Most points drawn per generation in the loss chart.
pub const MAX_LOSS_POINTS: usize = 400;
/// Chart names, in the order they are written.
pub const CHARTS: [&str; 3] = ["accuracy", "loss", "generations"];
/// Legend text of the teacher-replacement markers.
pub const REPLACEMENT_LABEL: &str = "teacher replaced";
/// Legend text of the temperature-change markers.
pub const TEMPERATURE_LABEL: &str = "T changed";

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

const REPLACEMENT_COLOR: RGBColor = RGBColor(230, 120, 0);
const TEMPERATURE_COLOR: RGBColor = RGBColor(128, 0, 160);
const BOUNDARY_COLOR: RGBColor = RGBColor(110, 110, 110);
const GRID_COLOR: RGBColor = RGBColor(228, 228, 228);

fn method_color(m: Method) -> RGBColor {
    match m {
        Method::Baseline => RGBColor(90, 90, 90),
        Method::Conventional => RGBColor(31, 119, 180),
        Method::SelfDistill => RGBColor(44, 160, 44),
    }
}

/// Registers the shipped font once; charts cannot place text without it.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the built-in chart font could not be loaded"))
    }
}

fn drawing<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Writes every chart of `run` into `dir` as `format` (svg or png).
pub fn write_all(run: &RunData, format: Format, dir: &Path) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let mut written = Vec::new();
    for name in CHARTS {
        let path = dir.join(format!("{name}.{}", format.name()));
        match format {
            Format::Svg => {
                let mut text = String::new();
                {
                    let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
                    draw(name, run, &root)?;
                    root.present().map_err(drawing)?;
                }
                super::write_file(&path, text.as_bytes())?;
            }
            Format::Png => {
                let mut rgb = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
                {
                    let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                    draw(name, run, &root)?;
                    root.present().map_err(drawing)?;
                }
                super::write_file(&path, &encode_png(&rgb, SIZE)?)?;
            }
            Format::Csv | Format::Json => anyhow::bail!("{format} is not a chart format"),
        }
        written.push(path);
    }
    Ok(written)
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().context("PNG encoding failed")?;
        writer
            .write_image_data(rgb)
            .context("PNG encoding failed")?;
        writer.finish().context("PNG encoding failed")?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(
    name: &str,
    run: &RunData,
    root: &DrawingArea<DB, Shift>,
) -> Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    match name {
        "accuracy" => accuracy(run, root),
        "loss" => loss(run, root),
        _ => generations(run, root),
    }
}

type Axes<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The frame every chart shares: caption, margins, grid, axis descriptions and ticks.
fn axes<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: String,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_desc: &str,
    y_desc: &str,
) -> Result<Axes<'a, DB>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 26))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .bold_line_style(GRID_COLOR)
        .light_line_style(WHITE)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()
        .map_err(drawing)?;
    Ok(chart)
}

fn title(run: &RunData, what: &str) -> String {
    match &run.summary.plan {
        Some(p) => format!("{what} · {} · {} · {}", p.preset, p.dataset, p.model),
        None => format!("{what} · {}", run.id),
    }
}

/// Axis labels without needless decimals: 10 rather than 10.0, but 0.25 kept.
fn tick(v: &f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Room above the data for the legend: `share` of the plot height stays free.
fn headroom(y0: f64, y1: f64, share: f64) -> f64 {
    y1 + (y1 - y0) * share / (1.0 - share)
}

/// `[lo, hi]` padded, never empty.
fn padded(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return (0.0, 1.0);
    }
    let (lo, hi) = (lo - pad, hi + pad);
    if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Methods in a fixed order, each with its series keyed by (seed, generation).
type Series = BTreeMap<Method, BTreeMap<(u64, usize), Vec<(f64, f64)>>>;

fn max_generation(run: &RunData) -> usize {
    let from_plan = run
        .summary
        .plan
        .as_ref()
        .and_then(|p| p.jobs.iter().map(|k| k.generation).max());
    let from_evals = run.summary.evals.iter().map(|e| e.key.generation).max();
    from_plan.or(from_evals).unwrap_or(1).max(1)
}

fn accuracy<DB: DrawingBackend>(run: &RunData, root: &DrawingArea<DB, Shift>) -> Result<()> {
    let per_gen = run.epochs_per_generation();
    let steps_per_epoch = run.steps_per_epoch().max(1.0);
    let x_of = |key: JobKey, epoch: f64| (key.generation.max(1) - 1) as f64 * per_gen + epoch;
    let mut val: Series = BTreeMap::new();
    let mut test: Series = BTreeMap::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for r in run.evals() {
        let e = &r.eval;
        let x = x_of(e.key, e.epoch);
        for (series, acc) in [(&mut val, e.val_acc), (&mut test, e.test_acc)] {
            if acc.is_finite() {
                series
                    .entry(e.key.method)
                    .or_default()
                    .entry((e.key.seed, e.key.generation))
                    .or_default()
                    .push((x, 100.0 * acc));
                lo = lo.min(100.0 * acc);
                hi = hi.max(100.0 * acc);
            }
        }
    }
    let replacements: Vec<(f64, f64)> = run
        .replacements()
        .iter()
        .filter(|r| r.new_acc.is_finite())
        .map(|r| (x_of(r.key, r.epoch), 100.0 * r.new_acc))
        .collect();
    let t_changes: Vec<(f64, f64)> = run
        .controls()
        .iter()
        .filter_map(|c| match c.control {
            Control::SetTemperature(t) => Some((x_of(c.key, c.step as f64 / steps_per_epoch), t)),
            _ => None,
        })
        .collect();
    for &(_, a) in &replacements {
        lo = lo.min(a);
        hi = hi.max(a);
    }
    let (y0, y1) = padded(lo, hi.min(100.0), 2.0);
    let y0 = y0.max(0.0);
    // Up to 9 legend entries: keep the top 40% free for them.
    let y1 = headroom(y0, y1, 0.4);
    let generations = max_generation(run);
    let x1 = (generations as f64 * per_gen).max(1e-3);

    let mut chart = axes(
        root,
        title(run, "Accuracy"),
        0.0..x1,
        y0..y1,
        "epoch (generations end to end)",
        "accuracy (%)",
    )?;

    // Generation boundaries.
    let boundaries: Vec<f64> = (1..generations).map(|g| g as f64 * per_gen).collect();
    for (i, &x) in boundaries.iter().enumerate() {
        let s = chart
            .draw_series(DashedLineSeries::new(
                vec![(x, y0), (x, y1)],
                6,
                4,
                BOUNDARY_COLOR.stroke_width(1),
            ))
            .map_err(drawing)?;
        if i == 0 {
            s.label("generation boundary").legend(|(x, y)| {
                DashedPathElement::new(
                    vec![(x, y), (x + 20, y)],
                    4,
                    3,
                    BOUNDARY_COLOR.stroke_width(1),
                )
            });
        }
    }
    for (method, series) in &val {
        let color = method_color(*method);
        for (i, points) in series.values().enumerate() {
            let s = chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(drawing)?;
            if i == 0 {
                s.label(format!("{method} validation"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
        }
    }
    for (method, series) in &test {
        let color = method_color(*method);
        for (i, points) in series.values().enumerate() {
            let s = chart
                .draw_series(DashedLineSeries::new(
                    points.clone(),
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(drawing)?;
            if i == 0 {
                s.label(format!("{method} test (dashed)"))
                    .legend(move |(x, y)| {
                        DashedPathElement::new(
                            vec![(x, y), (x + 20, y)],
                            4,
                            3,
                            color.stroke_width(1),
                        )
                    });
            }
        }
    }
    if !replacements.is_empty() {
        chart
            .draw_series(
                replacements
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 7, REPLACEMENT_COLOR.filled())),
            )
            .map_err(drawing)?
            .label(REPLACEMENT_LABEL)
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 7, REPLACEMENT_COLOR.filled()));
    }
    if !t_changes.is_empty() {
        let top = y1 - 0.03 * (y1 - y0);
        chart
            .draw_series(
                t_changes
                    .iter()
                    .map(|&(x, _)| Cross::new((x, top), 7, TEMPERATURE_COLOR.stroke_width(2))),
            )
            .map_err(drawing)?
            .label(TEMPERATURE_LABEL)
            .legend(|(x, y)| Cross::new((x + 10, y), 6, TEMPERATURE_COLOR.stroke_width(2)));
        chart
            .draw_series(t_changes.iter().map(|&(x, t)| {
                Text::new(
                    format!("T={t}"),
                    (x, top - 0.04 * (y1 - y0)),
                    (FONT, 14).into_font().color(&TEMPERATURE_COLOR),
                )
            }))
            .map_err(drawing)?;
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 15))
        .draw()
        .map_err(drawing)
}

/// Averages consecutive points into at most `max` buckets.
pub fn decimate(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    let max = max.max(1);
    if points.len() <= max {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

fn loss<DB: DrawingBackend>(run: &RunData, root: &DrawingArea<DB, Shift>) -> Result<()> {
    let per_gen_steps = (run.epochs_per_generation() * run.steps_per_epoch()).max(1.0);
    let x_of = |key: JobKey, step: f64| (key.generation.max(1) - 1) as f64 * per_gen_steps + step;
    let mut series: Series = BTreeMap::new();
    for ev in &run.events {
        if let TrainEvent::Step(s) = ev {
            if s.loss.is_finite() {
                series
                    .entry(s.key.method)
                    .or_default()
                    .entry((s.key.seed, s.key.generation))
                    .or_default()
                    .push((x_of(s.key, s.step as f64), s.loss));
            }
        }
    }
    let from_steps = !series.is_empty();
    if !from_steps {
        // No per-step lines logged: fall back to the train loss of each evaluation.
        for r in run.evals() {
            let e = &r.eval;
            if e.train_loss.is_finite() {
                series
                    .entry(e.key.method)
                    .or_default()
                    .entry((e.key.seed, e.key.generation))
                    .or_default()
                    .push((x_of(e.key, e.step as f64), e.train_loss));
            }
        }
    }
    for s in series.values_mut() {
        for points in s.values_mut() {
            *points = decimate(points, MAX_LOSS_POINTS);
        }
    }
    let all = series.values().flat_map(|s| s.values()).flatten();
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (y0, y1) = padded(lo.min(0.0), hi, 0.05 * (hi - lo.min(0.0)).abs());
    let y1 = headroom(y0.max(0.0), y1, 0.18);
    let generations = max_generation(run);
    let x1 = generations as f64 * per_gen_steps;
    let mut chart = axes(
        root,
        title(run, "Training loss"),
        0.0..x1,
        y0.max(0.0)..y1,
        if from_steps {
            "step (generations end to end; bucket means)"
        } else {
            "step (generations end to end; per evaluation)"
        },
        "training loss",
    )?;
    for g in 1..generations {
        let x = g as f64 * per_gen_steps;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, y0.max(0.0)), (x, y1)],
                6,
                4,
                BOUNDARY_COLOR.stroke_width(1),
            ))
            .map_err(drawing)?;
    }
    for (method, s) in &series {
        let color = method_color(*method);
        for (i, points) in s.values().enumerate() {
            let drawn = chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(1)))
                .map_err(drawing)?;
            if i == 0 {
                drawn.label(method.name()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font((FONT, 15))
        .draw()
        .map_err(drawing)
}

fn generations<DB: DrawingBackend>(run: &RunData, root: &DrawingArea<DB, Shift>) -> Result<()> {
    let rows = run.summary.comparison();
    let mut by_method: BTreeMap<Method, Vec<(f64, f64, usize)>> = BTreeMap::new();
    for r in &rows {
        if r.best_val_acc.is_finite() && r.cumulative_s.is_finite() {
            by_method.entry(r.method).or_default().push((
                r.cumulative_s,
                100.0 * r.best_val_acc,
                r.generation,
            ));
        }
    }
    let (mut x_hi, mut lo, mut hi) = (0.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for p in by_method.values().flatten() {
        x_hi = x_hi.max(p.0);
        lo = lo.min(p.1);
        hi = hi.max(p.1);
    }
    let (y0, y1) = padded(lo, hi, 2.0);
    let y0 = y0.max(0.0);
    let y1 = headroom(y0, y1, 0.2);
    let x1 = if x_hi > 0.0 { x_hi * 1.12 } else { 1.0 };
    let mut chart = axes(
        root,
        title(run, "Best validation accuracy per generation"),
        0.0..x1,
        y0..y1,
        "cumulative wall time (s)",
        "best validation accuracy (%)",
    )?;
    for (method, points) in &mut by_method {
        points.sort_by_key(|p| p.2);
        let color = method_color(*method);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(drawing)?
            .label(method.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        // A one-generation method (baseline) is named by the legend alone.
        let label = points.len() > 1;
        chart
            .draw_series(points.iter().map(|p| {
                EmptyElement::at((p.0, p.1))
                    + Circle::new((0, 0), 5, color.filled())
                    + Text::new(
                        if label {
                            format!("g{}", p.2)
                        } else {
                            String::new()
                        },
                        (7, -20),
                        (FONT, 15).into_font().color(&color),
                    )
            }))
            .map_err(drawing)?;
    }
    legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimation_keeps_short_series_and_averages_long_ones() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0 * i as f64)).collect();
        assert_eq!(decimate(&pts, 20), pts);
        let d = decimate(&pts, 5);
        assert_eq!(d.len(), 5);
        assert_eq!(d[0], (0.5, 1.0));
        assert!(decimate(&pts, 3).len() <= 3);
    }

    #[test]
    fn font_registers() {
        ensure_font().unwrap();
    }
}
