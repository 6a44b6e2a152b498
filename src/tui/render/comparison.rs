//! Generation comparison: per (method, generation) numbers, accuracy against cumulative
//! wall time, and which method first reached the conventional method's best.

use std::collections::BTreeMap;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, LegendPosition, Paragraph, Row, Table};
use ratatui::Frame;
use selfdistill::train::events::Method;

use super::curves::{acc_bounds, datasets, Series};
use super::fmt_duration;
use crate::tui::state::{AppState, RunView, RunsComparison};
use crate::tui::Theme;

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    if let Some(cmp) = &state.compare {
        render_runs(frame, area, state, cmp);
        return;
    }
    let Some(run) = state.shown() else {
        frame.render_widget(
            Paragraph::new("\n  No run yet: the comparison fills in as generations finish."),
            area,
        );
        return;
    };
    let rows = run.summary.comparison();
    let table_h = (rows.len() as u16 + 3).clamp(4, area.height / 2);
    let [table, reached, chart] = Layout::vertical([
        Constraint::Length(table_h),
        Constraint::Length(2),
        Constraint::Min(6),
    ])
    .areas(area);
    render_table(frame, table, state, run);
    render_reached(frame, reached, state, run);
    render_chart(frame, chart, state, run);
}

fn render_table(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let t = &state.theme;
    let rows = run.summary.comparison();
    let multi_seed = rows.iter().any(|r| r.seeds > 1);
    let header = Row::new([
        "method",
        "gen",
        "best val",
        "test",
        "epochs",
        "wall",
        "cumulative",
        "repl.",
    ])
    .style(t.title());
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let best = r.best_val_text(multi_seed);
            Row::new(vec![
                Span::styled(r.method.name(), t.method(r.method)),
                Span::raw(r.generation.to_string()),
                Span::raw(best),
                Span::raw(format!("{:.2}%", 100.0 * r.test_acc)),
                Span::raw(format!("{:.1}", r.epochs)),
                Span::raw(format!("{:.1}s", r.wall_s)),
                Span::raw(format!("{:.1}s", r.cumulative_s)),
                Span::raw(format!("{:.1}", r.teacher_replacements)),
            ])
        })
        .collect();
    let title = if rows.is_empty() {
        " Generations (none finished yet) ".to_string()
    } else {
        " Generations (test = at best validation) ".to_string()
    };
    let widths = [
        Constraint::Length(13),
        Constraint::Length(4),
        Constraint::Length(if multi_seed { 14 } else { 9 }),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(6),
    ];
    let table = Table::new(body, widths)
        .header(header)
        .block(Block::bordered().title(title).border_style(t.dim()));
    frame.render_widget(table, area);
}

/// The answer to the question the tool is about, in words.
pub fn reached_text(run: &RunView) -> String {
    let Some(target) = run.summary.conventional_best() else {
        return "First to reach conventional's best: waiting for a conventional generation to finish.".into();
    };
    let reached = run.summary.first_to_reach(target);
    if reached.is_empty() {
        return format!(
            "Conventional's best: {:.2}%; no method has reached it yet.",
            100.0 * target
        );
    }
    let list: Vec<String> = reached
        .iter()
        .map(|r| {
            format!(
                "{} g{} at {}",
                r.method,
                r.generation,
                fmt_duration(r.cumulative_s)
            )
        })
        .collect();
    format!(
        "First to reach conventional's best ({:.2}%): {}",
        100.0 * target,
        list.join(", then ")
    )
}

fn render_reached(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let text = reached_text(run);
    let style = if run.summary.conventional_best().is_some() {
        state.theme.good()
    } else {
        state.theme.dim()
    };
    frame.render_widget(
        Paragraph::new(Line::styled(format!(" {text}"), style))
            .wrap(ratatui::widgets::Wrap { trim: true }),
        area,
    );
}

fn render_chart(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let t = &state.theme;
    let first_seed = run.summary.evals.first().map(|e| e.key.seed);
    let mut per_method: BTreeMap<Method, Vec<(f64, f64)>> = BTreeMap::new();
    for e in run
        .summary
        .evals
        .iter()
        .filter(|e| Some(e.key.seed) == first_seed)
    {
        per_method
            .entry(e.key.method)
            .or_default()
            .push((e.cumulative_s, e.val_acc));
    }
    let x_max = per_method
        .values()
        .flatten()
        .map(|p| p.0)
        .fold(1.0_f64, f64::max);
    let mut values: Vec<f64> = per_method.values().flatten().map(|p| p.1).collect();
    let mut series: Vec<Series> = per_method
        .iter()
        .map(|(m, pts)| Series {
            name: Some(m.name().to_string()),
            style: t.method(*m),
            marker: t.method_marker(*m),
            kind: ratatui::widgets::GraphType::Line,
            points: pts.clone(),
        })
        .collect();
    if let Some(best) = run.summary.conventional_best() {
        values.push(best);
        series.push(Series {
            name: Some("conv. best".into()),
            style: t.teacher(),
            marker: Marker::Dot,
            kind: ratatui::widgets::GraphType::Line,
            points: vec![(0.0, best), (x_max, best)],
        });
    }
    let (lo, hi) = acc_bounds(values.iter());
    let chart = time_chart(
        datasets(&series),
        " Validation accuracy vs cumulative wall time ",
        x_max,
        (lo, hi),
        80,
        t,
    );
    frame.render_widget(chart, area);
}

/// Marked past runs side by side: one row per (method, generation, run), then the
/// accuracy-vs-cumulative-time chart with one line per (run, method).
fn render_runs(frame: &mut Frame, area: Rect, state: &AppState, cmp: &RunsComparison) {
    let t = &state.theme;
    let mut rows: Vec<(usize, selfdistill::train::summary::ComparisonRow)> = cmp
        .runs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.summary.comparison().into_iter().map(move |row| (i, row)))
        .collect();
    rows.sort_by_key(|(i, r)| (r.method, r.generation, *i));
    let multi_seed = rows.iter().any(|(_, r)| r.seeds > 1);
    let table_h = (rows.len() as u16 + 3).clamp(4, area.height.saturating_sub(8).max(4));
    let [table, best, chart] = Layout::vertical([
        Constraint::Length(table_h),
        Constraint::Length(1),
        Constraint::Min(6),
    ])
    .areas(area);

    let header = Row::new([
        "run",
        "method",
        "gen",
        "best val",
        "test",
        "epochs",
        "wall",
        "cumulative",
    ])
    .style(t.title());
    let body: Vec<Row> = rows
        .iter()
        .map(|(i, r)| {
            let best = r.best_val_text(multi_seed);
            Row::new(vec![
                Span::raw(cmp.runs[*i].label.clone()),
                Span::styled(r.method.name(), t.method(r.method)),
                Span::raw(r.generation.to_string()),
                Span::raw(best),
                Span::raw(format!("{:.2}%", 100.0 * r.test_acc)),
                Span::raw(format!("{:.1}", r.epochs)),
                Span::raw(format!("{:.1}s", r.wall_s)),
                Span::raw(format!("{:.1}s", r.cumulative_s)),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(crate::tui::state::LABEL_MAX as u16),
        Constraint::Length(12),
        Constraint::Length(3),
        Constraint::Length(if multi_seed { 14 } else { 8 }),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(10),
    ];
    let title = format!(
        " {} runs side by side (test = at best validation; Esc closes) ",
        cmp.runs.len()
    );
    frame.render_widget(
        Table::new(body, widths)
            .header(header)
            .block(Block::bordered().title(title).border_style(t.dim())),
        table,
    );

    // Each run's best generation, in one line.
    let mut spans = vec![Span::styled(" best:", t.dim())];
    for r in &cmp.runs {
        let top = r
            .summary
            .generations
            .iter()
            .max_by(|a, b| a.best_val_acc.total_cmp(&b.best_val_acc));
        let text = match top {
            Some(g) => format!(
                " {} {} g{} {:.2}% ·",
                r.label,
                g.key.method,
                g.key.generation,
                100.0 * g.best_val_acc
            ),
            None => format!(" {} none finished ·", r.label),
        };
        spans.push(Span::raw(text));
    }
    if let Some(Span { content, .. }) = spans.last_mut() {
        *content = content.trim_end_matches(" ·").to_string().into();
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), best);

    // One line per (run, method): method colour, a marker per run.
    let run_markers = [
        t.line.marker(),
        Marker::Dot,
        Marker::HalfBlock,
        Marker::Block,
    ];
    let mut series: Vec<Series> = Vec::new();
    for (i, r) in cmp.runs.iter().enumerate() {
        let first_seed = r.summary.evals.first().map(|e| e.key.seed);
        let mut per_method: BTreeMap<Method, Vec<(f64, f64)>> = BTreeMap::new();
        for e in r
            .summary
            .evals
            .iter()
            .filter(|e| Some(e.key.seed) == first_seed)
        {
            per_method
                .entry(e.key.method)
                .or_default()
                .push((e.cumulative_s, e.val_acc));
        }
        for (m, pts) in per_method {
            series.push(Series {
                name: Some(format!("{} {}", r.label, m.name())),
                style: t.method(m),
                marker: run_markers[i % run_markers.len()],
                kind: ratatui::widgets::GraphType::Line,
                points: pts,
            });
        }
    }
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let (lo, hi) = acc_bounds(values.iter());
    let c = time_chart(
        datasets(&series),
        " Validation accuracy vs cumulative wall time, per run and method ",
        x_max,
        (lo, hi),
        90,
        t,
    );
    frame.render_widget(c, chart);
}

/// Accuracy (y, as percent) against cumulative wall time (x, seconds from 0).
fn time_chart<'a>(
    datasets: Vec<ratatui::widgets::Dataset<'a>>,
    title: &'a str,
    x_max: f64,
    (lo, hi): (f64, f64),
    legend_height_pct: u16,
    t: &Theme,
) -> Chart<'a> {
    let pct = |v: f64| format!("{:.0}%", 100.0 * v);
    Chart::new(datasets)
        .block(Block::bordered().title(title).border_style(t.dim()))
        .x_axis(
            Axis::default()
                .bounds([0.0, x_max])
                .labels(vec![
                    Span::raw("0s"),
                    Span::raw(fmt_duration(x_max / 2.0)),
                    Span::raw(fmt_duration(x_max)),
                ])
                .style(t.dim()),
        )
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .labels(vec![
                    Span::raw(pct(lo)),
                    Span::raw(pct((lo + hi) / 2.0)),
                    Span::raw(pct(hi)),
                ])
                .style(t.dim()),
        )
        .legend_position(Some(LegendPosition::BottomRight))
        .hidden_legend_constraints((
            Constraint::Percentage(70),
            Constraint::Percentage(legend_height_pct),
        ))
}
