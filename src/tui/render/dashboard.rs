//! The run screen: headline + gauges, loss and accuracy charts, event log.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::{curves, log, progress};
use crate::tui::state::AppState;

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let Some(run) = state.shown() else {
        frame.render_widget(
            Paragraph::new(
                "\n  No run yet. Tab to the preset menu, pick a preset and press Enter.",
            ),
            area,
        );
        return;
    };
    let log_rows = if area.height >= 36 { 9 } else { 5 };
    let watch_rows = u16::from(state.watch.is_some() && state.past.is_none());
    let [watch, head, charts, events] = Layout::vertical([
        Constraint::Length(watch_rows),
        Constraint::Length(3),
        Constraint::Min(8),
        Constraint::Length(log_rows),
    ])
    .areas(area);
    if watch_rows > 0 {
        progress::render_watch(frame, watch, state, run);
    }
    progress::render(frame, head, state, run);
    let [loss, acc] = Layout::horizontal([Constraint::Percentage(50); 2]).areas(charts);
    curves::render_loss(frame, loss, state, run);
    curves::render_accuracy(frame, acc, state, run);
    log::render(frame, events, state, run);
}
