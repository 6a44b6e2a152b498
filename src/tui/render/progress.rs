//! Headline (what trains now, knobs, clock) and the epoch / generation / run gauges.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{LineGauge, Paragraph};
use ratatui::Frame;
use selfdistill::train::events::{RunStatus, TeacherSource};

use super::fmt_duration;
use crate::tui::state::{AppState, RunView};

/// Three rows: status, knobs, gauges.
pub fn render(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let t = &state.theme;
    let [status, knobs, gauges] = Layout::vertical([Constraint::Length(1); 3]).areas(area);
    let now = state.now;

    // Line 1: preset, job, epoch, step, badge, clock.
    let mut s: Vec<Span> = Vec::new();
    let preset = run
        .plan
        .as_ref()
        .map(|p| p.preset.clone())
        .unwrap_or_else(|| run.title.clone());
    s.push(Span::styled(format!(" {preset} "), t.title()));
    if !run.live {
        s.push(Span::styled("[past run] ", t.dim()));
    }
    if let (Some(key), Some(plan)) = (run.current, &run.plan) {
        let gens = plan
            .jobs
            .iter()
            .filter(|j| j.method == key.method && j.seed == key.seed)
            .count();
        s.push(Span::styled(
            key.method.name().to_string(),
            t.method(key.method),
        ));
        s.push(Span::raw(format!(
            " g{}/{gens} s{} · ep {}/{} · step {}/{} ",
            key.generation,
            key.seed,
            run.epoch,
            plan.epochs,
            run.step,
            plan.steps_per_generation()
        )));
    }
    if run.live && run.is_running() && run.paused {
        s.push(Span::styled(" PAUSED ", t.badge_paused()));
        s.push(Span::raw(" "));
    } else if run.live && run.is_running() && run.requested_pause == Some(true) {
        s.push(Span::styled("pausing… ", t.dim()));
    }
    match run.status {
        Some(RunStatus::Running) | None => {}
        Some(RunStatus::Finished) => s.push(Span::styled("FINISHED ", t.good())),
        Some(RunStatus::Stopped) => s.push(Span::styled("STOPPED ", t.temperature())),
        Some(RunStatus::Failed) => s.push(Span::styled("FAILED ", t.error())),
    }
    if run.live && run.stop_requested && run.is_running() {
        s.push(Span::styled("stopping… ", t.dim()));
    }
    s.push(Span::raw(format!(
        "· {}",
        fmt_duration(run.clock.elapsed(now).as_secs_f64())
    )));
    if let Some(eta) = run.eta(now) {
        s.push(Span::raw(format!(
            " ETA {}",
            fmt_duration(eta.as_secs_f64())
        )));
    }
    frame.render_widget(Paragraph::new(Line::from(s)), status);

    // Line 2: T, alpha, lr, teacher.
    let mut k: Vec<Span> = vec![Span::raw(" ")];
    k.push(Span::styled(
        format!("T {}", num(run.temperature)),
        t.temperature(),
    ));
    if let Some(want) = run.requested_t.filter(|v| *v != run.temperature) {
        k.push(Span::styled(format!(" → {}", num(want)), t.dim()));
    }
    k.push(Span::raw("  "));
    k.push(Span::styled(format!("α {:.2}", run.alpha), t.alpha()));
    if let Some(want) = run.requested_alpha.filter(|v| *v != run.alpha) {
        k.push(Span::styled(format!(" → {want:.2}"), t.dim()));
    }
    k.push(Span::raw(format!("  lr {:.4}", run.lr)));
    let teacher = match run.teacher_source {
        Some(TeacherSource::PreviousFinal) => "prev. final",
        Some(TeacherSource::PreviousBest) => "prev. best",
        Some(TeacherSource::None) => "none yet",
        None => "-",
    };
    let repl = run.summary.teacher_replacements;
    k.push(Span::raw(format!("  teacher {teacher} · {repl} repl.")));
    if run.steps_coalesced > 0 {
        k.push(Span::styled(
            format!("  ({} steps merged)", run.steps_coalesced),
            t.dim(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(k)), knobs);

    // Line 3: gauges.
    let (ep, gen, all) = run.progress();
    let cols = Layout::horizontal([Constraint::Ratio(1, 3); 3])
        .spacing(1)
        .split(gauges);
    let eta = run
        .eta(now)
        .map(|d| format!(" ETA {}", fmt_duration(d.as_secs_f64())))
        .unwrap_or_default();
    let labels = [
        format!("epoch {:>3.0}%", 100.0 * ep),
        format!("gen {:>3.0}%", 100.0 * gen),
        format!("run {:>3.0}%{eta}", 100.0 * all),
    ];
    for ((area, ratio), label) in cols.iter().zip([ep, gen, all]).zip(labels) {
        frame.render_widget(
            LineGauge::default()
                .ratio(ratio)
                .label(label)
                .filled_style(t.gauge())
                .unfilled_style(t.dim()),
            *area,
        );
    }
}

/// Watching another process's run: whether anyone writes it, and where controls go.
pub fn render_watch(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let t = &state.theme;
    let Some(w) = &state.watch else { return };
    // The tab line names the run; this one says who writes it.
    let mut s = vec![Span::raw(" ")];
    if w.writer_live {
        s.push(Span::styled("writer: live", t.good()));
        s.push(Span::styled(
            " · controls go through control.jsonl · q detaches, the run goes on",
            t.dim(),
        ));
    } else {
        s.push(Span::styled("writer: not running", t.error()));
        let why = match run.status {
            Some(RunStatus::Running) | None if run.plan.is_some() => {
                " · no process writes it (crashed or killed?): `selfdistill resume` continues it"
            }
            _ => " · no process writes it: showing what it recorded",
        };
        s.push(Span::styled(why, t.dim()));
    }
    frame.render_widget(Paragraph::new(Line::from(s)), area);
}

/// Compact number: 4, 4.5, 0.25.
pub fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
