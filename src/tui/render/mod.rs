//! Drawing: one module per screen region; each is a pure function of the state.

mod comparison;
mod curves;
mod dashboard;
mod footer;
mod help;
mod log;
mod menu;
mod popup;
mod progress;
mod too_small;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::state::{AppState, Screen};

pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 24;

pub fn draw(frame: &mut Frame, state: &AppState) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        too_small::render(frame, area, state);
        return;
    }
    let [tabs, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    render_tabs(frame, tabs, state);
    match state.screen {
        Screen::Menu => menu::render(frame, body, state),
        Screen::Dashboard => dashboard::render(frame, body, state),
        Screen::Comparison => comparison::render(frame, body, state),
    }
    footer::render(frame, foot, state);
    popup::render(frame, area, state);
}

/// The top line: product name, screen tabs, and what the live run is doing.
fn render_tabs(frame: &mut Frame, area: Rect, state: &AppState) {
    let t = &state.theme;
    let mut spans = vec![Span::styled(" selfdistill ", t.title())];
    for s in Screen::ALL {
        let style = if s == state.screen {
            t.selected()
        } else {
            t.dim()
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!(" {} ", s.title()), style));
    }
    if let Some(w) = &state.watch {
        spans.push(Span::styled(format!("   watching {}", w.run_id), t.title()));
    } else if let Some(run) = &state.run {
        let status = match (run.status, run.paused) {
            (None, _) if run.plan.is_none() => "starting".to_string(),
            (None, true) | (Some(_), true) if run.is_running() => "paused".to_string(),
            (None, _) => "running".to_string(),
            (Some(s), _) => s.to_string(),
        };
        let name = run
            .plan
            .as_ref()
            .map(|p| p.preset.as_str())
            .unwrap_or(&run.title);
        spans.push(Span::styled(format!("   run: {name} ({status})"), t.dim()));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// `m:ss`, or `h:mm:ss` from an hour.
pub fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A rectangle of at most `w` x `h` centred in `area`.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

#[cfg(test)]
mod tests;
