//! The hint bar: generated from the binding table for what takes keys now.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::tui::keys;
use crate::tui::state::AppState;

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let t = &state.theme;
    let mut spans: Vec<Span> = Vec::new();
    let mut used = 0usize;
    let width = area.width as usize;
    if let Some(msg) = &state.flash {
        let text = format!(" {msg} ");
        used += text.chars().count();
        spans.push(Span::styled(text, t.error()));
    }
    let hints = keys::hints(state);
    // "? help" always shows: reserve its room and put it last.
    let help = hints.iter().find(|(l, _)| *l == "?").copied();
    let reserve = help
        .map(|(l, h)| l.chars().count() + h.chars().count() + 3)
        .unwrap_or(0);
    for (label, hint) in hints.iter().filter(|(l, _)| *l != "?").chain(help.iter()) {
        let w = label.chars().count() + hint.chars().count() + 3;
        let is_help = *label == "?";
        if !is_help && used + w + reserve > width {
            continue;
        }
        spans.push(Span::raw(" "));
        spans.push(Span::styled(*label, t.key()));
        spans.push(Span::raw(format!(" {hint} ")));
        used += w;
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}
