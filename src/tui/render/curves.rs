//! Loss and accuracy charts. Lines per method; markers as their own scatter series:
//! teacher replacements (accuracy chart, own colour, in the legend), temperature /
//! alpha changes and pauses (loss chart), generation boundaries as vertical lines.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::Span;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, LegendPosition};
use ratatui::Frame;
use selfdistill::train::events::Method;

use super::progress::num;
use crate::tui::state::{AppState, RunView};

/// One series to draw; owns its points so the chart can borrow them.
pub struct Series {
    pub name: Option<String>,
    pub style: Style,
    pub marker: Marker,
    pub kind: GraphType,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    fn line(name: Option<String>, style: Style, marker: Marker, points: Vec<(f64, f64)>) -> Series {
        Series {
            name,
            style,
            marker,
            kind: GraphType::Line,
            points,
        }
    }
    fn scatter(
        name: Option<String>,
        style: Style,
        marker: Marker,
        points: Vec<(f64, f64)>,
    ) -> Series {
        Series {
            name,
            style,
            marker,
            kind: GraphType::Scatter,
            points,
        }
    }
}

pub fn datasets(series: &[Series]) -> Vec<Dataset<'_>> {
    series
        .iter()
        .map(|s| {
            let d = Dataset::default()
                .style(s.style)
                .marker(s.marker)
                .graph_type(s.kind)
                .data(&s.points);
            match &s.name {
                Some(n) => d.name(n.clone()),
                None => d,
            }
        })
        .collect()
}

/// Vertical lines at generation starts, the first named for the legend.
fn boundaries(state: &AppState, run: &RunView, y: (f64, f64), named: bool) -> Vec<Series> {
    run.boundaries
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let name = (named && i == 0).then(|| "generation".to_string());
            Series::line(
                name,
                state.theme.boundary(),
                Marker::Dot,
                vec![(*x, y.0), (*x, y.1)],
            )
        })
        .collect()
}

fn x_axis<'a>(state: &AppState, run: &RunView) -> Axis<'a> {
    let max = run.x_max();
    Axis::default()
        .bounds([0.0, max])
        .labels(vec![
            Span::raw("0"),
            Span::raw(num(max / 2.0)),
            Span::raw(format!("{} ep", num(max))),
        ])
        .style(state.theme.dim())
}

fn chart<'a>(
    title: String,
    data: Vec<Dataset<'a>>,
    x: Axis<'a>,
    y: Axis<'a>,
    pos: LegendPosition,
    state: &AppState,
) -> Chart<'a> {
    Chart::new(data)
        .block(
            Block::bordered()
                .title(title)
                .border_style(state.theme.dim()),
        )
        .x_axis(x)
        .y_axis(y)
        .legend_position(Some(pos))
        // The default (1/4 each way) silently drops the legend on small charts.
        .hidden_legend_constraints((Constraint::Percentage(70), Constraint::Percentage(80)))
}

pub fn render_loss(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let t = &state.theme;
    let mut series = Vec::new();
    let mut y_max: f64 = 0.0;
    // Name methods here only when the chart is tall enough for both legends.
    let name_methods = area.height >= 20;
    for (m, c) in &run.curves {
        let pts = if state.ema {
            c.loss_ema.points()
        } else {
            c.loss.points()
        };
        y_max = pts.iter().map(|p| p.1).fold(y_max, f64::max);
        series.push(Series::line(
            name_methods.then(|| m.name().to_string()),
            t.method(*m),
            t.method_marker(*m),
            pts,
        ));
    }
    let y_top = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    series.extend(boundaries(state, run, (0.0, y_top), true));
    // Teacher replacements as ticks along the top edge.
    let ticks: Vec<(f64, f64)> = run
        .curves
        .values()
        .flat_map(|c| c.teacher.iter().map(|p| (p.0, y_top)))
        .collect();
    if !ticks.is_empty() {
        series.push(Series::scatter(None, t.teacher(), Marker::Block, ticks));
    }
    let clamp = |y: f64| y.min(y_top);
    for (name, style, marker, marks) in [
        ("T change", t.temperature(), Marker::Dot, &run.t_changes),
        ("α change", t.alpha(), Marker::Dot, &run.alpha_changes),
        ("pause", t.pause(), Marker::Bar, &run.pauses),
    ] {
        if !marks.is_empty() {
            let pts = marks.iter().map(|m| (m.x, clamp(m.y))).collect();
            series.push(Series::scatter(Some(name.to_string()), style, marker, pts));
        }
    }
    let y = Axis::default()
        .bounds([0.0, y_top])
        .labels(vec![
            Span::raw("0"),
            Span::raw(format!("{:.2}", y_top / 2.0)),
            Span::raw(format!("{y_top:.2}")),
        ])
        .style(t.dim());
    let title = if state.ema {
        " Train loss (EMA, e) "
    } else {
        " Train loss (raw, e) "
    };
    let c = chart(
        title.into(),
        datasets(&series),
        x_axis(state, run),
        y,
        LegendPosition::TopRight,
        state,
    );
    frame.render_widget(c, area);
}

/// y range that shows accuracy curves well: whole tens of percent around the data.
pub fn acc_bounds<'a>(values: impl Iterator<Item = &'a f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let lo = ((lo * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let hi = ((hi * 10.0).ceil() / 10.0).clamp(lo + 0.1, 1.0);
    (lo, hi)
}

pub fn render_accuracy(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let t = &state.theme;
    let mut series = Vec::new();
    let which = |c: &crate::tui::state::MethodCurves| {
        if state.show_test {
            c.test.clone()
        } else {
            c.val.clone()
        }
    };
    let all: Vec<f64> = run
        .curves
        .values()
        .flat_map(|c| {
            which(c)
                .into_iter()
                .map(|p| p.1)
                .chain(c.teacher.iter().map(|p| p.1))
        })
        .collect();
    let (lo, hi) = acc_bounds(all.iter());
    for (m, c) in &run.curves {
        series.push(Series::line(
            Some(m.name().to_string()),
            t.method(*m),
            t.method_marker(*m),
            which(c),
        ));
    }
    series.extend(boundaries(state, run, (lo, hi), false));
    for (m, c) in &run.curves {
        if !c.teacher.is_empty() {
            series.push(Series::scatter(
                Some(teacher_series_name(*m)),
                t.teacher(),
                Marker::Block,
                c.teacher.clone(),
            ));
        }
    }
    let pct = |v: f64| format!("{:.0}%", 100.0 * v);
    let y = Axis::default()
        .bounds([lo, hi])
        .labels(vec![
            Span::raw(pct(lo)),
            Span::raw(pct((lo + hi) / 2.0)),
            Span::raw(pct(hi)),
        ])
        .style(t.dim());
    let title = if state.show_test {
        " Test accuracy (v) "
    } else {
        " Validation accuracy (v) "
    };
    let c = chart(
        title.into(),
        datasets(&series),
        x_axis(state, run),
        y,
        LegendPosition::BottomRight,
        state,
    );
    frame.render_widget(c, area);
}

/// Legend name of a method's teacher-replacement markers.
pub fn teacher_series_name(m: Method) -> String {
    format!("teacher ← {}", m.name())
}
