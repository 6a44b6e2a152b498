//! The preset menu: presets and past runs on the left, details of the highlighted one
//! on the right.

use std::collections::BTreeMap;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;
use selfdistill::data::DatasetKind;
use selfdistill::preset::{Preset, PresetEntry};
use selfdistill::store::RunInfo;
use selfdistill::train::events::Method;

use super::fmt_duration;
use crate::tui::state::{AppState, MenuFocus, MenuState};

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let t = &state.theme;
    let m = &state.menu;
    let left_w = (area.width * 2 / 5).clamp(30, 48);
    let [left, right] =
        Layout::horizontal([Constraint::Length(left_w), Constraint::Min(20)]).areas(area);
    let presets_h = (m.presets.len() as u16 + 2).min(left.height / 2).max(4);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(presets_h), Constraint::Min(3)]).areas(left);

    let focus_style = |f: MenuFocus| if m.focus == f { t.key() } else { t.dim() };
    let items: Vec<ListItem> = m
        .presets
        .iter()
        .map(|e| {
            let origin = MenuState::origin_label(e);
            let (tag, style) = if e.preset.is_ok() {
                (origin, t.dim())
            } else {
                ("INVALID", t.error())
            };
            ListItem::new(Line::from(vec![
                Span::raw(format!("{:<20}", e.name)),
                Span::styled(tag, style),
            ]))
        })
        .collect();
    let mut ls =
        ListState::default().with_selected((!m.presets.is_empty()).then_some(m.preset_sel));
    let list = List::new(items)
        .block(
            Block::bordered()
                .title(" Presets ")
                .border_style(focus_style(MenuFocus::Presets)),
        )
        .highlight_style(if m.focus == MenuFocus::Presets {
            t.selected()
        } else {
            t.title()
        })
        .highlight_symbol("▶ ");
    frame.render_stateful_widget(list, top, &mut ls);

    let run_items: Vec<ListItem> = m
        .runs
        .iter()
        .map(|r| ListItem::new(run_line(r, m.is_marked(&r.id))))
        .collect();
    let mut rs =
        ListState::default().with_selected((m.focus == MenuFocus::Runs).then_some(m.run_sel));
    let marked = m.marked_runs().len();
    let title = if marked > 0 {
        format!(
            " Past runs ({}) · {marked} marked, c compares ",
            m.runs.len()
        )
    } else {
        format!(" Past runs ({}) ", m.runs.len())
    };
    let runs = List::new(run_items)
        .block(
            Block::bordered()
                .title(title)
                .border_style(focus_style(MenuFocus::Runs)),
        )
        .highlight_style(t.selected())
        .highlight_symbol("▶ ");
    if m.runs.is_empty() {
        let p = Paragraph::new(vec![Line::styled(
            format!("none yet in {}", m.runs_dir.display()),
            t.dim(),
        )])
        .wrap(Wrap { trim: true })
        .block(Block::bordered().title(" Past runs ").border_style(t.dim()));
        frame.render_widget(p, bottom);
    } else {
        frame.render_stateful_widget(runs, bottom, &mut rs);
    }

    let details = match m.focus {
        MenuFocus::Presets => m
            .presets
            .get(m.preset_sel)
            .map(|e| preset_details(e, state))
            .unwrap_or_default(),
        MenuFocus::Runs => m
            .runs
            .get(m.run_sel)
            .map(|r| run_details(r, state))
            .unwrap_or_default(),
    };
    let title = match m.focus {
        MenuFocus::Presets => " Details · Enter starts ",
        MenuFocus::Runs => " Run · Enter opens · m marks to compare ",
    };
    frame.render_widget(
        Paragraph::new(details)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title).border_style(t.dim())),
        right,
    );
}

fn run_line(r: &RunInfo, marked: bool) -> Line<'static> {
    let status = r
        .summary
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "?".into());
    // Id is "<date>-<time>-<preset>": show time and preset.
    let mark = if marked { "✓ " } else { "  " };
    Line::from(format!("{mark}{} {}", r.id, status))
}

/// Training images after the validation split, for the size estimate.
fn train_images(p: &Preset) -> usize {
    let total = match p.data.dataset {
        DatasetKind::Synthetic => p.data.synthetic.train_size,
        DatasetKind::Digits => 1438,
        DatasetKind::Mnist | DatasetKind::FashionMnist => 60_000,
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => 50_000,
    };
    let n = (total as f64 * (1.0 - p.data.val_fraction)).round() as usize;
    p.data.train_limit.map_or(n, |l| l.min(n))
}

fn kv(key: &str, value: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(
            format!("{key:<12}"),
            ratatui::style::Style::default().add_modifier(ratatui::style::Modifier::BOLD),
        ),
        Span::raw(value),
    ])
}

pub fn preset_details(e: &PresetEntry, state: &AppState) -> Vec<Line<'static>> {
    let t = &state.theme;
    let p = match &e.preset {
        Ok(p) => p,
        Err(err) => {
            return vec![
                Line::styled(format!("{} cannot be used:", e.name), t.error()),
                Line::raw(err.to_string()),
            ]
        }
    };
    let methods: Vec<&str> = p.run.methods.iter().map(|m| m.name()).collect();
    let jobs: usize = p
        .run
        .methods
        .iter()
        .map(|m| p.generations_for(*m))
        .sum::<usize>()
        * p.run.seeds.len();
    let images = train_images(p);
    let spe = p.steps_per_epoch(images);
    let steps = spe * p.train.epochs as u64 * jobs as u64;
    let data = match p.data.dataset {
        DatasetKind::Synthetic => format!(
            "synthetic {}px {}/{}",
            p.data.synthetic.image_size, p.data.synthetic.train_size, p.data.synthetic.test_size
        ),
        d => d.name().to_string(),
    };
    let seeds: Vec<String> = p.run.seeds.iter().map(|s| s.to_string()).collect();
    let mut lines = vec![
        Line::styled(
            format!("{} ({})", p.name, MenuState::origin_label(e)),
            t.title(),
        ),
        Line::raw(p.description.clone()),
        Line::raw(""),
        kv(
            "dataset",
            format!("{data}, val {:.0}%", 100.0 * p.data.val_fraction),
        ),
        kv(
            "model",
            format!("{} width {}", p.model.arch.name(), p.model.width()),
        ),
        kv("methods", methods.join(", ")),
        kv(
            "generations",
            format!("{} (baseline runs 1)", p.run.generations),
        ),
        kv(
            "epochs",
            format!(
                "{} per gen · batch {} · lr {}",
                p.train.epochs, p.train.batch_size, p.train.lr
            ),
        ),
        kv(
            "T / alpha",
            format!(
                "{} / {} · teacher {:?}",
                p.distill.temperature, p.distill.alpha, p.distill.teacher
            )
            .to_lowercase(),
        ),
        kv("seeds", seeds.join(", ")),
        kv("backend", p.backend.name().to_string()),
        kv(
            "size",
            format!(
                "{jobs} jobs · {} epochs · ≈{steps} steps",
                jobs * p.train.epochs
            ),
        ),
    ];
    if p.data.dataset.needs_files() {
        lines.push(Line::styled(
            "needs dataset files (see --data-dir)",
            t.dim(),
        ));
    }
    lines
}

fn run_details(r: &RunInfo, state: &AppState) -> Vec<Line<'static>> {
    let t = &state.theme;
    let s = &r.summary;
    let mut lines = vec![Line::styled(r.id.clone(), t.title())];
    if let Some(p) = &s.plan {
        lines.push(kv("preset", p.preset.clone()));
        lines.push(kv("data", p.dataset.clone()));
        lines.push(kv("model", p.model.clone()));
        lines.push(kv("T / alpha", format!("{} / {}", p.temperature, p.alpha)));
    }
    let status = s
        .status
        .map(|x| x.to_string())
        .unwrap_or_else(|| "unknown (killed?)".into());
    lines.push(kv(
        "status",
        format!("{status} · {}", fmt_duration(s.wall_s)),
    ));
    let mut best: BTreeMap<Method, f64> = BTreeMap::new();
    for g in &s.generations {
        let b = best.entry(g.key.method).or_insert(0.0);
        *b = b.max(g.best_val_acc);
    }
    for (m, a) in best {
        lines.push(Line::from(vec![
            Span::styled(format!("{:<12}", m.name()), t.method(m)),
            Span::raw(format!("best val {:.2}%", 100.0 * a)),
        ]));
    }
    lines.push(kv(
        "teachers",
        format!("{} replacements", s.teacher_replacements),
    ));
    if let Some(e) = &s.error {
        lines.push(Line::styled(format!("error: {e}"), t.error()));
    }
    lines.push(Line::styled(r.dir.display().to_string(), t.dim()));
    lines
}
