//! All UI state in one struct. Trainer events fold in through `RunView::apply`, a pure
//! function of the event and the time it arrived; keys go through `keys::reduce`.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use selfdistill::preset::{PresetEntry, PresetOrigin};
use selfdistill::store::RunInfo;
use selfdistill::train::events::{
    Control, JobKey, Method, RunPlan, RunStatus, TeacherSource, TrainEvent,
};
use selfdistill::train::summary::RunSummary;

use super::series::{Ema, Series};
use super::theme::Theme;

/// Lines kept in the event log.
pub const LOG_LINES: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Menu,
    Dashboard,
    Comparison,
}

impl Screen {
    pub const ALL: [Screen; 3] = [Screen::Menu, Screen::Dashboard, Screen::Comparison];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Menu => "Presets",
            Screen::Dashboard => "Run",
            Screen::Comparison => "Comparison",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmKind {
    Quit,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    Help,
    Confirm(ConfirmKind),
    /// Typing an exact temperature; `error` explains a rejected entry.
    TemperaturePrompt {
        buffer: String,
        error: Option<String>,
    },
    Error(String),
    /// Shown while something blocks the loop briefly (loading data, stopping).
    Busy(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuFocus {
    Presets,
    Runs,
}

pub struct MenuState {
    pub presets: Vec<PresetEntry>,
    pub runs: Vec<RunInfo>,
    pub runs_dir: PathBuf,
    pub focus: MenuFocus,
    pub preset_sel: usize,
    pub run_sel: usize,
}

impl MenuState {
    pub fn new(presets: Vec<PresetEntry>, runs: Vec<RunInfo>, runs_dir: PathBuf) -> MenuState {
        MenuState {
            presets,
            runs,
            runs_dir,
            focus: MenuFocus::Presets,
            preset_sel: 0,
            run_sel: 0,
        }
    }

    pub fn origin_label(entry: &PresetEntry) -> &'static str {
        match entry.origin {
            PresetOrigin::Shipped => "shipped",
            PresetOrigin::User(_) => "user",
            PresetOrigin::File(_) => "file",
        }
    }
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub kind: LogKind,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    Info,
    Eval,
    Teacher,
    Control,
    Error,
}

/// Curves of one method; x is epochs along the method's generations.
#[derive(Debug, Clone, Default)]
pub struct MethodCurves {
    pub loss: Series,
    pub loss_ema: Series,
    ema: Ema,
    pub val: Vec<(f64, f64)>,
    pub test: Vec<(f64, f64)>,
    /// Teacher replacements: (x, new teacher's validation accuracy).
    pub teacher: Vec<(f64, f64)>,
}

/// A marker on the loss chart: where a control took effect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub y: f64,
}

/// Wall clock of a live run, with paused time taken out for the ETA.
#[derive(Debug, Clone, Default)]
pub struct RunClock {
    pub started: Option<Instant>,
    pub ended: Option<Instant>,
    pub paused_since: Option<Instant>,
    pub paused_total: Duration,
    /// Past runs: the recorded wall time instead of a live clock.
    pub recorded_s: Option<f64>,
}

impl RunClock {
    pub fn elapsed(&self, now: Instant) -> Duration {
        if let Some(s) = self.recorded_s {
            return Duration::from_secs_f64(s.max(0.0));
        }
        match self.started {
            Some(start) => self.ended.unwrap_or(now).saturating_duration_since(start),
            None => Duration::ZERO,
        }
    }

    /// Time spent training (paused time excluded).
    pub fn active(&self, now: Instant) -> Duration {
        let paused_now = self
            .paused_since
            .map(|p| now.saturating_duration_since(p))
            .unwrap_or_default();
        self.elapsed(now)
            .saturating_sub(self.paused_total + paused_now)
    }
}

/// Everything known about one run, live or read back from its folder.
#[derive(Debug, Clone, Default)]
pub struct RunView {
    /// Controls go to the trainer (false for past runs).
    pub live: bool,
    pub title: String,
    pub plan: Option<RunPlan>,
    pub summary: RunSummary,
    pub current: Option<JobKey>,
    pub teacher_source: Option<TeacherSource>,
    pub step: u64,
    pub run_step: u64,
    pub epoch: usize,
    pub temperature: f64,
    pub alpha: f64,
    pub lr: f64,
    pub paused: bool,
    /// What the user asked for and the trainer has not confirmed yet.
    pub requested_pause: Option<bool>,
    pub requested_t: Option<f64>,
    pub requested_alpha: Option<f64>,
    pub stop_requested: bool,
    pub status: Option<RunStatus>,
    pub error: Option<String>,
    pub curves: BTreeMap<Method, MethodCurves>,
    pub t_changes: Vec<Marker>,
    pub alpha_changes: Vec<Marker>,
    pub pauses: Vec<Marker>,
    /// x of every generation start after the first.
    pub boundaries: Vec<f64>,
    pub log: VecDeque<LogLine>,
    pub clock: RunClock,
    pub events_seen: u64,
    pub steps_coalesced: u64,
}

impl RunView {
    pub fn live(title: impl Into<String>) -> RunView {
        RunView {
            live: true,
            title: title.into(),
            ..Default::default()
        }
    }

    /// A past run rebuilt from its event log.
    pub fn from_events(title: impl Into<String>, events: &[TrainEvent], now: Instant) -> RunView {
        let mut v = RunView {
            live: false,
            title: title.into(),
            ..Default::default()
        };
        for ev in events {
            v.apply(ev, now);
        }
        v.clock.recorded_s = Some(v.summary.wall_s);
        v.paused = false;
        v
    }

    pub fn is_running(&self) -> bool {
        self.plan.is_some() && self.status.is_none_or(|s| s == RunStatus::Running)
    }

    fn epochs(&self) -> f64 {
        self.plan.as_ref().map(|p| p.epochs as f64).unwrap_or(1.0)
    }

    fn steps_per_epoch(&self) -> f64 {
        self.plan
            .as_ref()
            .map(|p| p.steps_per_epoch.max(1) as f64)
            .unwrap_or(1.0)
    }

    /// x position (epochs along the method's generations) of a step of a job.
    pub fn x_of_step(&self, key: JobKey, step: u64) -> f64 {
        self.x_of_epoch(key, step as f64 / self.steps_per_epoch())
    }

    pub fn x_of_epoch(&self, key: JobKey, epoch: f64) -> f64 {
        (key.generation.saturating_sub(1)) as f64 * self.epochs() + epoch
    }

    /// Width of the x axis: every generation of the longest method.
    pub fn x_max(&self) -> f64 {
        let gens = self
            .plan
            .as_ref()
            .and_then(|p| p.jobs.iter().map(|j| j.generation).max())
            .unwrap_or(1);
        gens as f64 * self.epochs()
    }

    fn curves(&mut self, m: Method) -> &mut MethodCurves {
        self.curves.entry(m).or_default()
    }

    /// The latest loss of a method (smoothed when `ema`), for placing markers.
    fn loss_at_now(&self, m: Method) -> f64 {
        self.curves
            .get(&m)
            .and_then(|c| c.loss_ema.last())
            .map(|p| p.1)
            .unwrap_or(0.0)
    }

    fn log(&mut self, kind: LogKind, text: String) {
        if self.log.len() >= LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogLine { kind, text });
    }

    /// Folds one trainer event in; `now` is when it arrived (for the clock only).
    pub fn apply(&mut self, ev: &TrainEvent, now: Instant) {
        self.events_seen += 1;
        self.summary.apply(ev);
        match ev {
            TrainEvent::Plan(p) => {
                self.plan = Some(p.clone());
                self.temperature = p.temperature;
                self.alpha = p.alpha;
                self.clock.started = Some(now);
                self.log(
                    LogKind::Info,
                    format!(
                        "run {} · {} · {} · {} jobs x {} epochs",
                        p.run_id,
                        p.dataset,
                        p.model,
                        p.jobs.len(),
                        p.epochs
                    ),
                );
            }
            TrainEvent::GenerationStarted {
                key,
                teacher,
                teacher_val_acc,
            } => {
                self.current = Some(*key);
                self.teacher_source = Some(*teacher);
                self.step = 0;
                self.epoch = 1;
                if key.generation > 1 {
                    let x = self.x_of_epoch(*key, 0.0);
                    if !self.boundaries.contains(&x) {
                        self.boundaries.push(x);
                    }
                }
                self.curves(key.method).ema.reset();
                let t = match (teacher, teacher_val_acc) {
                    (TeacherSource::None, _) => "no teacher".to_string(),
                    (TeacherSource::PreviousFinal, Some(a)) => {
                        format!("teacher: previous final ({:.2}%)", 100.0 * a)
                    }
                    (TeacherSource::PreviousBest, Some(a)) => {
                        format!("teacher: previous best ({:.2}%)", 100.0 * a)
                    }
                    (_, None) => "teacher from previous generation".to_string(),
                };
                self.log(LogKind::Info, format!("[{key}] started, {t}"));
            }
            TrainEvent::Step(s) => {
                self.current = Some(s.key);
                self.step = s.step;
                self.run_step = s.run_step;
                self.epoch = s.epoch;
                self.lr = s.lr;
                self.temperature = s.temperature;
                self.alpha = s.alpha;
                if s.coalesced > 1 {
                    self.steps_coalesced += s.coalesced as u64 - 1;
                }
                let x = self.x_of_step(s.key, s.step);
                let c = self.curves(s.key.method);
                c.loss.push(x, s.loss);
                let smooth = c.ema.update(s.loss, s.coalesced);
                c.loss_ema.push(x, smooth);
            }
            TrainEvent::Eval(e) => {
                let x = self.x_of_epoch(e.key, e.epoch);
                let c = self.curves(e.key.method);
                c.val.push((x, e.val_acc));
                c.test.push((x, e.test_acc));
                self.lr = e.lr;
                self.log(
                    LogKind::Eval,
                    format!(
                        "[{}] ep {:.0} val {:.2}% test {:.2}% loss {:.3}",
                        e.key,
                        e.epoch,
                        100.0 * e.val_acc,
                        100.0 * e.test_acc,
                        e.train_loss
                    ),
                );
            }
            TrainEvent::TeacherReplaced {
                key,
                epoch,
                old_acc,
                new_acc,
                ..
            } => {
                let x = self.x_of_epoch(*key, *epoch);
                self.curves(key.method).teacher.push((x, *new_acc));
                let was = old_acc
                    .map(|a| format!("was {:.2}%", 100.0 * a))
                    .unwrap_or_else(|| "first".into());
                self.log(
                    LogKind::Teacher,
                    format!("[{key}] teacher ← {:.2}% ({was})", 100.0 * new_acc),
                );
            }
            TrainEvent::ControlApplied { key, step, control } => {
                let x = self.x_of_step(*key, step.saturating_sub(1));
                let y = self.loss_at_now(key.method);
                match control {
                    Control::Pause => {
                        self.paused = true;
                        self.requested_pause = None;
                        self.clock.paused_since = Some(now);
                        self.pauses.push(Marker { x, y });
                    }
                    Control::Resume => {
                        self.paused = false;
                        self.requested_pause = None;
                        if let Some(p) = self.clock.paused_since.take() {
                            self.clock.paused_total += now.saturating_duration_since(p);
                        }
                    }
                    Control::SetTemperature(t) => {
                        self.temperature = *t;
                        if self.requested_t == Some(*t) {
                            self.requested_t = None;
                        }
                        self.t_changes.push(Marker { x, y });
                    }
                    Control::SetAlpha(a) => {
                        self.alpha = *a;
                        if self.requested_alpha == Some(*a) {
                            self.requested_alpha = None;
                        }
                        self.alpha_changes.push(Marker { x, y });
                    }
                    Control::Stop => self.stop_requested = true,
                }
                self.log(
                    LogKind::Control,
                    format!("[{key}] {control} from step {step}"),
                );
            }
            TrainEvent::Diverged { key, step, loss } => {
                self.log(
                    LogKind::Error,
                    format!("[{key}] DIVERGED at step {step} (loss {loss}); other methods go on"),
                );
            }
            TrainEvent::Resumed { key, step } => {
                self.current = Some(*key);
                self.step = *step;
                self.log(LogKind::Info, format!("[{key}] resumed after step {step}"));
            }
            TrainEvent::GenerationFinished(g) => {
                let stopped = if g.stopped { " (stopped)" } else { "" };
                self.log(
                    LogKind::Info,
                    format!(
                        "[{}] done{stopped}: best val {:.2}%, test {:.2}%, {:.1}s, {} teacher repl.",
                        g.key,
                        100.0 * g.best_val_acc,
                        100.0 * g.test_acc_at_best,
                        g.wall_s,
                        g.teacher_replacements
                    ),
                );
            }
            TrainEvent::Log { message } => {
                // A rejected control means the pending request will never be confirmed.
                if message.contains("ignored") {
                    self.requested_t = None;
                    self.requested_alpha = None;
                    self.requested_pause = None;
                }
                self.log(LogKind::Info, message.clone());
            }
            TrainEvent::Finished { status, wall_s } => {
                self.status = Some(*status);
                self.paused = false;
                self.requested_pause = None;
                if let Some(p) = self.clock.paused_since.take() {
                    self.clock.paused_total += now.saturating_duration_since(p);
                }
                self.clock.ended = Some(now);
                self.log(
                    LogKind::Info,
                    format!("run {status} after {wall_s:.1}s · Tab: comparison"),
                );
            }
            TrainEvent::Error { message } => {
                self.error = Some(message.clone());
                self.log(LogKind::Error, format!("error: {message}"));
            }
        }
    }

    /// Fraction of the current epoch, generation and run done.
    pub fn progress(&self) -> (f64, f64, f64) {
        let Some(p) = &self.plan else {
            return (0.0, 0.0, 0.0);
        };
        let spe = p.steps_per_epoch.max(1);
        let in_epoch = self
            .step
            .saturating_sub((self.epoch.saturating_sub(1)) as u64 * spe);
        let frac = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                (a as f64 / b as f64).clamp(0.0, 1.0)
            }
        };
        let done = matches!(self.status, Some(RunStatus::Finished));
        let run = if done {
            1.0
        } else {
            frac(self.run_step, p.total_steps())
        };
        (
            frac(in_epoch, spe),
            frac(self.step, p.steps_per_generation()),
            run,
        )
    }

    /// Remaining time from the pace so far (paused time excluded).
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        let p = self.plan.as_ref()?;
        if !self.is_running() || self.run_step == 0 {
            return None;
        }
        let active = self.clock.active(now).as_secs_f64();
        let left = p.total_steps().saturating_sub(self.run_step) as f64;
        Some(Duration::from_secs_f64(
            active / self.run_step as f64 * left,
        ))
    }

    /// Temperature the next `+`/`-` starts from: the pending request, else the current value.
    pub fn target_t(&self) -> f64 {
        self.requested_t.unwrap_or(self.temperature)
    }

    pub fn target_alpha(&self) -> f64 {
        self.requested_alpha.unwrap_or(self.alpha)
    }

    /// Paused now or about to be (the request is on its way).
    pub fn target_paused(&self) -> bool {
        self.requested_pause.unwrap_or(self.paused)
    }
}

/// The whole UI.
pub struct AppState {
    pub screen: Screen,
    pub overlay: Option<Overlay>,
    pub menu: MenuState,
    /// The live run (controls go to it).
    pub run: Option<RunView>,
    /// A past run opened from the menu; shown instead of the live one until closed.
    pub past: Option<RunView>,
    pub ema: bool,
    /// Accuracy chart shows test instead of validation accuracy.
    pub show_test: bool,
    /// Lines scrolled up from the newest in the event log.
    pub log_scroll: usize,
    /// A one-line note in the footer (e.g. why a key did nothing).
    pub flash: Option<String>,
    /// Quit once the live run has stopped.
    pub quit_after_stop: bool,
    pub should_quit: bool,
    pub theme: Theme,
    pub now: Instant,
}

impl AppState {
    pub fn new(menu: MenuState, theme: Theme) -> AppState {
        AppState {
            screen: Screen::Menu,
            overlay: None,
            menu,
            run: None,
            past: None,
            ema: true,
            show_test: false,
            log_scroll: 0,
            flash: None,
            quit_after_stop: false,
            should_quit: false,
            theme,
            now: Instant::now(),
        }
    }

    /// The run the dashboard and comparison show.
    pub fn shown(&self) -> Option<&RunView> {
        self.past.as_ref().or(self.run.as_ref())
    }

    pub fn live_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| r.is_running())
    }

    /// Applies a trainer event of the live run; errors open the error screen.
    pub fn apply(&mut self, ev: &TrainEvent) {
        let now = Instant::now();
        self.apply_at(ev, now);
    }

    pub fn apply_at(&mut self, ev: &TrainEvent, now: Instant) {
        let Some(run) = self.run.as_mut() else { return };
        run.apply(ev, now);
        if let TrainEvent::Error { message } = ev {
            self.overlay = Some(Overlay::Error(format!("Training failed: {message}")));
        }
        if matches!(ev, TrainEvent::Finished { .. }) {
            if matches!(
                self.overlay,
                Some(Overlay::Confirm(_)) | Some(Overlay::TemperaturePrompt { .. })
            ) {
                self.overlay = None;
            }
            if self.quit_after_stop {
                self.should_quit = true;
            }
        }
    }
}
