//! Overlays drawn on top of the screen: help, questions, the temperature prompt,
//! error and busy messages.

use ratatui::layout::{Alignment, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};
use ratatui::Frame;
use selfdistill::preset::limits;

use super::centered;
use crate::tui::state::{AppState, ConfirmKind, Overlay};

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let t = &state.theme;
    let Some(overlay) = &state.overlay else {
        return;
    };
    let (title, lines, style, w): (&str, Vec<Line>, _, u16) = match overlay {
        Overlay::Help => return super::help::render(frame, area, state),
        Overlay::Confirm(kind) => {
            let q = match kind {
                ConfirmKind::Quit => "A run is going. Stop it and quit?",
                ConfirmKind::Stop => "Stop the run now?",
            };
            let lines = vec![
                Line::from(q),
                Line::styled("The checkpoint and summary are written first.", t.dim()),
                Line::raw(""),
                Line::from(vec![
                    Span::styled("y", t.key()),
                    Span::raw(" yes   "),
                    Span::styled("n", t.key()),
                    Span::raw(" no"),
                ]),
            ];
            (" Confirm ", lines, t.key(), 52)
        }
        Overlay::TemperaturePrompt { buffer, error } => {
            let (lo, hi) = limits::TEMPERATURE;
            let mut lines = vec![
                Line::from(format!("New temperature ({lo} to {hi}):")),
                Line::from(vec![
                    Span::styled(format!("> {buffer}"), t.title()),
                    Span::styled("█", t.dim()),
                ]),
            ];
            if let Some(e) = error {
                lines.push(Line::styled(e.clone(), t.error()));
            }
            lines.push(Line::styled("Enter apply · Esc cancel", t.dim()));
            (" Temperature ", lines, t.temperature(), 44)
        }
        Overlay::Error(msg) => {
            let lines = vec![
                Line::styled(msg.clone(), t.error()),
                Line::raw(""),
                Line::styled("Esc dismiss · Tab screens · q quit", t.dim()),
            ];
            (" Error ", lines, t.error(), 76)
        }
        Overlay::Busy(msg) => (" Please wait ", vec![Line::from(msg.clone())], t.dim(), 60),
    };
    let inner_w = w.saturating_sub(2).max(1) as usize;
    let rows: usize = lines
        .iter()
        .map(|l| l.width().div_ceil(inner_w).max(1))
        .sum();
    let popup = centered(area, w, rows as u16 + 2);
    frame.render_widget(Clear, popup);
    let p = Paragraph::new(lines)
        .alignment(Alignment::Left)
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(title).border_style(style));
    frame.render_widget(p, popup);
}
