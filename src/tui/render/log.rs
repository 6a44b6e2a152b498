//! The event log: newest at the bottom, scrollable.

use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

use crate::tui::state::{AppState, LogKind, RunView};

pub fn render(frame: &mut Frame, area: Rect, state: &AppState, run: &RunView) {
    let t = &state.theme;
    let rows = area.height.saturating_sub(2) as usize;
    let total = run.log.len();
    let scroll = state.log_scroll.min(total.saturating_sub(1));
    let end = total - scroll;
    let start = end.saturating_sub(rows);
    let lines: Vec<Line> = run
        .log
        .range(start..end)
        .map(|l| {
            let style = match l.kind {
                LogKind::Info | LogKind::Eval => ratatui::style::Style::default(),
                LogKind::Teacher => t.teacher(),
                LogKind::Control => t.temperature(),
                LogKind::Error => t.error(),
            };
            Line::styled(l.text.clone(), style)
        })
        .collect();
    let title = if scroll > 0 {
        format!(" Events (scrolled {scroll} up, ↓ to follow) ")
    } else {
        " Events ".into()
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title).border_style(t.dim())),
        area,
    );
}
