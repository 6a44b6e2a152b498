//! Key bindings as data: one table drives the reducer, the hint bar and the help
//! overlay, so they cannot disagree. `reduce` is pure: it changes the state and returns
//! the effects (controls to send, runs to start) for the event loop to carry out.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use selfdistill::preset::limits;
use selfdistill::train::events::Control;

use super::state::{AppState, ConfirmKind, MenuFocus, Overlay, RunsComparison, Screen};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Ctrl(char),
    /// Any digit or '.', for typed numbers.
    Number,
    Tab,
    BackTab,
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    Left,
    Right,
}

impl Key {
    fn matches(self, ev: &KeyEvent) -> bool {
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        match (self, ev.code) {
            (Key::Ctrl(c), KeyCode::Char(k)) => ctrl && k.eq_ignore_ascii_case(&c),
            (Key::Char(c), KeyCode::Char(k)) => !ctrl && k == c,
            (Key::Number, KeyCode::Char(k)) => !ctrl && (k.is_ascii_digit() || k == '.'),
            (Key::Tab, KeyCode::Tab) => !ev.modifiers.contains(KeyModifiers::SHIFT),
            (Key::BackTab, KeyCode::BackTab) => true,
            (Key::Enter, KeyCode::Enter) => true,
            (Key::Esc, KeyCode::Esc) => true,
            (Key::Backspace, KeyCode::Backspace) => true,
            (Key::Up, KeyCode::Up) => true,
            (Key::Down, KeyCode::Down) => true,
            (Key::Left, KeyCode::Left) => true,
            (Key::Right, KeyCode::Right) => true,
            _ => false,
        }
    }

    /// A key event that this key matches (tests drive every binding with it).
    pub fn example(self) -> KeyEvent {
        let (code, mods) = match self {
            Key::Char(c) => (KeyCode::Char(c), KeyModifiers::NONE),
            Key::Ctrl(c) => (KeyCode::Char(c), KeyModifiers::CONTROL),
            Key::Number => (KeyCode::Char('7'), KeyModifiers::NONE),
            Key::Tab => (KeyCode::Tab, KeyModifiers::NONE),
            Key::BackTab => (KeyCode::BackTab, KeyModifiers::SHIFT),
            Key::Enter => (KeyCode::Enter, KeyModifiers::NONE),
            Key::Esc => (KeyCode::Esc, KeyModifiers::NONE),
            Key::Backspace => (KeyCode::Backspace, KeyModifiers::NONE),
            Key::Up => (KeyCode::Up, KeyModifiers::NONE),
            Key::Down => (KeyCode::Down, KeyModifiers::NONE),
            Key::Left => (KeyCode::Left, KeyModifiers::NONE),
            Key::Right => (KeyCode::Right, KeyModifiers::NONE),
        };
        KeyEvent::new(code, mods)
    }
}

/// Where a binding applies. Overlays take the keyboard while open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Context {
    Global,
    Menu,
    /// Dashboard and comparison: run controls.
    Run,
    Dashboard,
    /// The side-by-side comparison of marked past runs.
    Compare,
    Prompt,
    Confirm,
    Overlay,
}

impl Context {
    pub fn title(self) -> &'static str {
        match self {
            Context::Global => "Everywhere",
            Context::Menu => "Preset menu",
            Context::Run => "Run (dashboard and comparison)",
            Context::Dashboard => "Dashboard",
            Context::Compare => "Comparing runs",
            Context::Prompt => "Typing a temperature",
            Context::Confirm => "Questions",
            Context::Overlay => "Help and error screens",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Help,
    NextScreen,
    PrevScreen,
    Quit,
    /// Ctrl-C: stop the run gracefully and leave without asking.
    Interrupt,
    Up,
    Down,
    SwitchPane,
    Select,
    /// Mark / unmark the highlighted past run for the side-by-side comparison.
    ToggleMark,
    /// Open the side-by-side comparison of the marked runs.
    CompareMarked,
    CloseCompare,
    Back,
    PauseResume,
    TempUp,
    TempDown,
    TempPrompt,
    AlphaDown,
    AlphaUp,
    Stop,
    ToggleEma,
    ToggleTest,
    PromptType,
    PromptErase,
    PromptApply,
    PromptCancel,
    Confirm,
    Cancel,
    CloseOverlay,
}

pub struct Binding {
    pub keys: &'static [Key],
    /// How the keys are written in the hint bar and help.
    pub label: &'static str,
    pub action: Action,
    pub description: &'static str,
    /// Short text for the hint bar; None keeps it out of the bar (help only).
    pub hint: Option<&'static str>,
    pub context: Context,
}

const fn b(
    keys: &'static [Key],
    label: &'static str,
    action: Action,
    description: &'static str,
    hint: Option<&'static str>,
    context: Context,
) -> Binding {
    Binding {
        keys,
        label,
        action,
        description,
        hint,
        context,
    }
}

use Context as C;
use Key as K;

/// Every key the dashboard knows. Order: as shown in the help and hint bar.
pub const BINDINGS: &[Binding] = &[
    b(&[K::Up], "↑", Action::Up, "move up", None, C::Menu),
    b(
        &[K::Down],
        "↓",
        Action::Down,
        "move down",
        Some("move"),
        C::Menu,
    ),
    b(
        &[K::Left, K::Right],
        "←/→",
        Action::SwitchPane,
        "presets ↔ past runs",
        Some("presets/runs"),
        C::Menu,
    ),
    b(
        &[K::Enter],
        "Enter",
        Action::Select,
        "start preset / open run(s)",
        Some("start"),
        C::Menu,
    ),
    b(
        &[K::Char('m'), K::Char(' ')],
        "m/space",
        Action::ToggleMark,
        "mark past run to compare",
        Some("mark"),
        C::Menu,
    ),
    b(
        &[K::Char('c')],
        "c",
        Action::CompareMarked,
        "compare marked runs",
        Some("compare"),
        C::Menu,
    ),
    b(
        &[K::Char('p'), K::Char(' ')],
        "p/space",
        Action::PauseResume,
        "pause / resume training",
        Some("pause"),
        C::Run,
    ),
    b(
        &[K::Char('+'), K::Char('=')],
        "+",
        Action::TempUp,
        "temperature up 0.5",
        Some("T+"),
        C::Run,
    ),
    b(
        &[K::Char('-')],
        "-",
        Action::TempDown,
        "temperature down 0.5",
        Some("T-"),
        C::Run,
    ),
    b(
        &[K::Char('T')],
        "T",
        Action::TempPrompt,
        "type an exact temperature",
        Some("set T"),
        C::Run,
    ),
    b(
        &[K::Char('a')],
        "a",
        Action::AlphaDown,
        "alpha down 0.1",
        Some("α-"),
        C::Run,
    ),
    b(
        &[K::Char('A')],
        "A",
        Action::AlphaUp,
        "alpha up 0.1",
        Some("α+"),
        C::Run,
    ),
    b(
        &[K::Char('s')],
        "s",
        Action::Stop,
        "stop: checkpoint + summary",
        Some("stop"),
        C::Run,
    ),
    b(
        &[K::Char('e')],
        "e",
        Action::ToggleEma,
        "loss EMA smoothing on/off",
        Some("EMA"),
        C::Dashboard,
    ),
    b(
        &[K::Char('v')],
        "v",
        Action::ToggleTest,
        "accuracy: validation/test",
        Some("val/test"),
        C::Dashboard,
    ),
    b(
        &[K::Up],
        "↑",
        Action::Up,
        "scroll event log up",
        None,
        C::Dashboard,
    ),
    b(
        &[K::Down],
        "↓",
        Action::Down,
        "scroll event log down",
        None,
        C::Dashboard,
    ),
    b(
        &[K::Esc],
        "Esc",
        Action::Back,
        "close past run / to menu",
        None,
        C::Dashboard,
    ),
    b(
        &[K::Esc],
        "Esc",
        Action::CloseCompare,
        "close the runs comparison",
        Some("close"),
        C::Compare,
    ),
    b(
        &[K::Tab],
        "Tab",
        Action::NextScreen,
        "next screen",
        Some("screens"),
        C::Global,
    ),
    b(
        &[K::BackTab],
        "Shift-Tab",
        Action::PrevScreen,
        "previous screen",
        None,
        C::Global,
    ),
    b(
        &[K::Char('?')],
        "?",
        Action::Help,
        "show / hide this help",
        Some("help"),
        C::Global,
    ),
    b(
        &[K::Char('q')],
        "q",
        Action::Quit,
        "quit (asks if a run is on)",
        Some("quit"),
        C::Global,
    ),
    b(
        &[K::Ctrl('c')],
        "Ctrl-C",
        Action::Interrupt,
        "stop gracefully and quit",
        None,
        C::Global,
    ),
    b(
        &[K::Number],
        "0-9 .",
        Action::PromptType,
        "type the value",
        None,
        C::Prompt,
    ),
    b(
        &[K::Backspace],
        "Backspace",
        Action::PromptErase,
        "erase",
        None,
        C::Prompt,
    ),
    b(
        &[K::Enter],
        "Enter",
        Action::PromptApply,
        "apply the temperature",
        Some("apply"),
        C::Prompt,
    ),
    b(
        &[K::Esc],
        "Esc",
        Action::PromptCancel,
        "cancel",
        Some("cancel"),
        C::Prompt,
    ),
    b(
        &[K::Char('y'), K::Enter],
        "y/Enter",
        Action::Confirm,
        "yes",
        Some("yes"),
        C::Confirm,
    ),
    b(
        &[K::Char('n'), K::Esc],
        "n/Esc",
        Action::Cancel,
        "no",
        Some("no"),
        C::Confirm,
    ),
    b(
        &[K::Esc, K::Char('?')],
        "Esc",
        Action::CloseOverlay,
        "close help / error",
        Some("close"),
        C::Overlay,
    ),
];

/// Side effects for the event loop to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Control(Control),
    /// Start the preset at this index of the menu.
    StartPreset(usize),
    /// Open the past run at this index of the menu.
    OpenRun(usize),
}

pub const T_STEP: f64 = 0.5;
/// What controls say while watching a run that no process writes.
pub const WATCH_STALLED: &str =
    "no process is writing this run (finished, stopped or crashed): controls cannot reach it";

/// Compares the marked past runs (their summaries from the menu's list).
fn open_compare(state: &mut AppState) {
    let runs = state
        .menu
        .marked_runs()
        .into_iter()
        .map(|r| (r.id.clone(), r.summary.clone()))
        .collect();
    state.compare = Some(RunsComparison::new(runs));
    state.screen = Screen::Comparison;
}
pub const ALPHA_STEP: f64 = 0.1;

/// Contexts that take keys now, most specific first.
pub fn active_contexts(state: &AppState) -> Vec<Context> {
    match &state.overlay {
        Some(Overlay::TemperaturePrompt { .. }) => vec![C::Prompt],
        Some(Overlay::Confirm(_)) => vec![C::Confirm],
        Some(Overlay::Help) | Some(Overlay::Error(_)) => vec![C::Overlay, C::Global],
        Some(Overlay::Busy(_)) => vec![],
        None => match state.screen {
            Screen::Menu => vec![C::Menu, C::Global],
            Screen::Dashboard => vec![C::Dashboard, C::Run, C::Global],
            Screen::Comparison if state.compare.is_some() => vec![C::Compare, C::Run, C::Global],
            Screen::Comparison => vec![C::Run, C::Global],
        },
    }
}

/// The binding a key triggers now, if any.
pub fn lookup(state: &AppState, key: &KeyEvent) -> Option<&'static Binding> {
    // Ctrl-C works everywhere, even in prompts and questions.
    if Key::Ctrl('c').matches(key) {
        return BINDINGS.iter().find(|b| b.action == Action::Interrupt);
    }
    let contexts = active_contexts(state);
    contexts.iter().find_map(|c| {
        BINDINGS
            .iter()
            .find(|b| b.context == *c && b.keys.iter().any(|k| k.matches(key)))
    })
}

/// The pure reducer: key in, state changed, effects out.
pub fn reduce(state: &mut AppState, key: KeyEvent) -> Vec<Effect> {
    state.flash = None;
    match lookup(state, &key) {
        Some(binding) => apply_action(state, binding.action, &key),
        None => Vec::new(),
    }
}

fn clamp_round(v: f64, (lo, hi): (f64, f64)) -> f64 {
    ((v * 100.0).round() / 100.0).clamp(lo, hi)
}

fn cycle(list_len: usize, sel: usize, down: bool) -> usize {
    if list_len == 0 {
        return 0;
    }
    if down {
        (sel + 1).min(list_len - 1)
    } else {
        sel.saturating_sub(1)
    }
}

pub fn apply_action(state: &mut AppState, action: Action, key: &KeyEvent) -> Vec<Effect> {
    let mut fx = Vec::new();
    match action {
        Action::Help => state.overlay = Some(Overlay::Help),
        Action::CloseOverlay => state.overlay = None,
        Action::NextScreen | Action::PrevScreen => {
            let i = Screen::ALL
                .iter()
                .position(|s| *s == state.screen)
                .unwrap_or(0);
            let n = Screen::ALL.len();
            let j = if action == Action::NextScreen {
                (i + 1) % n
            } else {
                (i + n - 1) % n
            };
            state.screen = Screen::ALL[j];
        }
        Action::Quit => {
            // Watching: leave the other process's run alone.
            if state.watch.is_some() {
                state.should_quit = true;
            } else if state.live_running() {
                state.overlay = Some(Overlay::Confirm(ConfirmKind::Quit));
            } else {
                state.should_quit = true;
            }
        }
        Action::Interrupt => {
            // A second Ctrl-C while stopping leaves at once; a watcher just detaches.
            if state.live_running() && !state.quit_after_stop && state.watch.is_none() {
                fx.push(Effect::Control(Control::Stop));
                state.quit_after_stop = true;
                state.overlay = Some(Overlay::Busy(
                    "Stopping the run (writing checkpoint and summary)…".into(),
                ));
            } else {
                state.should_quit = true;
            }
        }
        Action::Up | Action::Down => {
            let down = action == Action::Down;
            match state.screen {
                Screen::Menu => match state.menu.focus {
                    MenuFocus::Presets => {
                        state.menu.preset_sel =
                            cycle(state.menu.presets.len(), state.menu.preset_sel, down)
                    }
                    MenuFocus::Runs => {
                        state.menu.run_sel = cycle(state.menu.runs.len(), state.menu.run_sel, down)
                    }
                },
                _ => {
                    let lines = state.shown().map(|r| r.log.len()).unwrap_or(0);
                    state.log_scroll = if down {
                        state.log_scroll.saturating_sub(1)
                    } else {
                        (state.log_scroll + 1).min(lines.saturating_sub(1))
                    };
                }
            }
        }
        Action::SwitchPane => {
            state.menu.focus = match state.menu.focus {
                MenuFocus::Presets if !state.menu.runs.is_empty() => MenuFocus::Runs,
                MenuFocus::Presets => {
                    state.flash = Some("no past runs yet".into());
                    MenuFocus::Presets
                }
                MenuFocus::Runs => MenuFocus::Presets,
            }
        }
        Action::Select => match state.menu.focus {
            MenuFocus::Presets => {
                if state.live_running() {
                    state.flash = Some("a run is going: stop it first (s)".into());
                } else if let Some(entry) = state.menu.presets.get(state.menu.preset_sel) {
                    match &entry.preset {
                        Ok(_) => fx.push(Effect::StartPreset(state.menu.preset_sel)),
                        Err(e) => {
                            state.overlay = Some(Overlay::Error(format!("Cannot start: {e}")))
                        }
                    }
                }
            }
            MenuFocus::Runs => {
                if state.menu.marked_runs().len() >= 2 {
                    open_compare(state);
                } else if state.menu.run_sel < state.menu.runs.len() {
                    fx.push(Effect::OpenRun(state.menu.run_sel));
                }
            }
        },
        Action::ToggleMark => match state.menu.runs.get(state.menu.run_sel) {
            Some(r) if state.menu.focus == MenuFocus::Runs => {
                let id = r.id.clone();
                if state.menu.is_marked(&id) {
                    state.menu.marked.retain(|m| *m != id);
                } else {
                    state.menu.marked.push(id);
                }
            }
            _ => state.flash = Some("marks are for past runs: → to the list first".into()),
        },
        Action::CompareMarked => {
            if state.menu.marked_runs().len() >= 2 {
                open_compare(state);
            } else {
                state.flash = Some("mark two or more past runs (m) to compare them".into());
            }
        }
        Action::CloseCompare => {
            state.compare = None;
            state.screen = Screen::Menu;
        }
        Action::Back => {
            if state.past.take().is_none() {
                state.screen = Screen::Menu;
            }
            state.log_scroll = 0;
        }
        Action::PauseResume
        | Action::TempUp
        | Action::TempDown
        | Action::AlphaDown
        | Action::AlphaUp => {
            if state.watch_stalled() {
                state.flash = Some(WATCH_STALLED.into());
                return fx;
            }
            let Some(run) = state.run.as_mut().filter(|r| r.is_running()) else {
                state.flash = Some("no run is going".into());
                return fx;
            };
            let control = match action {
                Action::PauseResume => {
                    let pause = !run.target_paused();
                    run.requested_pause = Some(pause);
                    if pause {
                        Control::Pause
                    } else {
                        Control::Resume
                    }
                }
                Action::TempUp | Action::TempDown => {
                    let d = if action == Action::TempUp {
                        T_STEP
                    } else {
                        -T_STEP
                    };
                    let t = clamp_round(run.target_t() + d, limits::TEMPERATURE);
                    run.requested_t = Some(t);
                    Control::SetTemperature(t)
                }
                _ => {
                    let d = if action == Action::AlphaUp {
                        ALPHA_STEP
                    } else {
                        -ALPHA_STEP
                    };
                    let a = clamp_round(run.target_alpha() + d, limits::ALPHA);
                    run.requested_alpha = Some(a);
                    Control::SetAlpha(a)
                }
            };
            fx.push(Effect::Control(control));
        }
        Action::TempPrompt => {
            if state.watch_stalled() {
                state.flash = Some(WATCH_STALLED.into());
            } else if state.live_running() {
                state.overlay = Some(Overlay::TemperaturePrompt {
                    buffer: String::new(),
                    error: None,
                });
            } else {
                state.flash = Some("no run is going".into());
            }
        }
        Action::Stop => {
            if state.watch_stalled() {
                state.flash = Some(WATCH_STALLED.into());
            } else if state.live_running() {
                state.overlay = Some(Overlay::Confirm(ConfirmKind::Stop));
            } else {
                state.flash = Some("no run is going".into());
            }
        }
        Action::ToggleEma => state.ema = !state.ema,
        Action::ToggleTest => state.show_test = !state.show_test,
        Action::PromptType => {
            if let (Some(Overlay::TemperaturePrompt { buffer, error }), KeyCode::Char(c)) =
                (state.overlay.as_mut(), key.code)
            {
                if buffer.len() < 8 {
                    buffer.push(c);
                }
                *error = None;
            }
        }
        Action::PromptErase => {
            if let Some(Overlay::TemperaturePrompt { buffer, error }) = state.overlay.as_mut() {
                buffer.pop();
                *error = None;
            }
        }
        Action::PromptApply => {
            if let Some(Overlay::TemperaturePrompt { buffer, error }) = state.overlay.as_mut() {
                let (lo, hi) = limits::TEMPERATURE;
                match buffer.parse::<f64>() {
                    Ok(t) if t.is_finite() && (lo..=hi).contains(&t) => {
                        state.overlay = None;
                        if let Some(run) = state.run.as_mut() {
                            run.requested_t = Some(t);
                        }
                        fx.push(Effect::Control(Control::SetTemperature(t)));
                    }
                    _ => *error = Some(format!("enter a number from {lo} to {hi}")),
                }
            }
        }
        Action::PromptCancel | Action::Cancel => state.overlay = None,
        Action::Confirm => {
            let kind = match state.overlay {
                Some(Overlay::Confirm(k)) => k,
                _ => return fx,
            };
            state.overlay = None;
            if !state.live_running() {
                state.should_quit = kind == ConfirmKind::Quit;
                return fx;
            }
            fx.push(Effect::Control(Control::Stop));
            if let Some(run) = state.run.as_mut() {
                run.stop_requested = true;
            }
            if kind == ConfirmKind::Quit {
                state.quit_after_stop = true;
                state.overlay = Some(Overlay::Busy(
                    "Stopping the run (writing checkpoint and summary)…".into(),
                ));
            }
        }
    }
    fx
}

/// Hint-bar entries for what takes keys now: (keys, short text).
pub fn hints(state: &AppState) -> Vec<(&'static str, &'static str)> {
    let mut contexts = active_contexts(state);
    // Run controls first, view toggles last: the bar drops what does not fit.
    contexts.sort_by_key(|c| match c {
        C::Run => 0,
        C::Dashboard => 2,
        _ => 1,
    });
    let mut out = Vec::new();
    for c in contexts {
        for b in BINDINGS.iter().filter(|b| b.context == c) {
            if let Some(h) = b.hint {
                if !out.iter().any(|(l, _)| *l == b.label) {
                    out.push((b.label, h));
                }
            }
        }
    }
    out
}
