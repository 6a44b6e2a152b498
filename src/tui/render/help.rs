//! The help overlay: every binding of the table, grouped by where it applies.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;

use crate::tui::keys::{Context, BINDINGS};
use crate::tui::state::AppState;

/// Contexts per column, so everything fits in 80x24.
const COLUMNS: [&[Context]; 2] = [
    &[Context::Menu, Context::Run, Context::Dashboard],
    &[
        Context::Global,
        Context::Prompt,
        Context::Confirm,
        Context::Overlay,
        Context::Compare,
    ],
];

/// The help of `contexts`, with a blank line between them when `height` allows.
pub fn lines(
    state: &AppState,
    contexts: &[Context],
    label_w: usize,
    height: usize,
) -> Vec<Line<'static>> {
    let t = &state.theme;
    let mut out = Vec::new();
    let needed: usize = contexts
        .iter()
        .map(|c| 1 + BINDINGS.iter().filter(|b| b.context == *c).count())
        .sum::<usize>()
        + contexts.len().saturating_sub(1);
    let gaps = needed <= height;
    for (i, c) in contexts.iter().enumerate() {
        if i > 0 && gaps {
            out.push(Line::raw(""));
        }
        out.push(Line::styled(c.title(), t.title()));
        for b in BINDINGS.iter().filter(|b| b.context == *c) {
            out.push(Line::from(vec![
                Span::styled(format!(" {:<label_w$}", b.label), t.key()),
                Span::raw(format!(" {}", b.description)),
            ]));
        }
    }
    out
}

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let popup = super::centered(area, 100, 26);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" Keys (Esc or ? closes) ")
        .border_style(state.theme.key());
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let cols = Layout::horizontal([Constraint::Percentage(50); 2])
        .spacing(1)
        .split(inner);
    for (col, contexts) in cols.iter().zip(COLUMNS) {
        frame.render_widget(
            Paragraph::new(lines(state, contexts, 9, col.height as usize)),
            *col,
        );
    }
}
