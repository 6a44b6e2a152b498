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

use super::series::{pop_tail_after, Ema, Series};
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
    /// Ids of past runs marked for the side-by-side comparison, in marking order.
    pub marked: Vec<String>,
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
            marked: Vec::new(),
        }
    }

    pub fn is_marked(&self, id: &str) -> bool {
        self.marked.iter().any(|m| m == id)
    }

    /// Marked runs still in the list, in marking order.
    pub fn marked_runs(&self) -> Vec<&RunInfo> {
        self.marked
            .iter()
            .filter_map(|id| self.runs.iter().find(|r| &r.id == id))
            .collect()
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
    /// Seconds into the current job at its latest evaluation (for a watcher's clock).
    pub job_elapsed_s: f64,
    /// Watching another process's run that no process writes any more (finished,
    /// stopped or crashed): nothing will come, so it is not "running" whatever the log says.
    pub stalled: bool,
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

    /// Another process's run, rebuilt from the events it has logged so far. The clock
    /// starts from the recorded training time (the replayed events all arrive `now`).
    pub fn watched(
        title: impl Into<String>,
        events: &[TrainEvent],
        writer_live: bool,
        now: Instant,
    ) -> RunView {
        let mut v = RunView::live(title);
        for ev in events {
            v.apply(ev, now);
        }
        if v.status.is_some_and(|s| s != RunStatus::Running) {
            v.clock.recorded_s = Some(v.summary.wall_s);
        } else if v.clock.started.is_some() {
            let done: f64 = v.summary.generations.iter().map(|g| g.wall_s).sum();
            let so_far = Duration::from_secs_f64((done + v.job_elapsed_s).max(0.0));
            v.clock.started = Some(now.checked_sub(so_far).unwrap_or(now));
        }
        v.set_stalled(!writer_live, now);
        v
    }

    /// A watched run's writer went away (or came back, e.g. `selfdistill resume`).
    pub fn set_stalled(&mut self, stalled: bool, now: Instant) {
        if stalled == self.stalled {
            return;
        }
        self.stalled = stalled;
        if stalled {
            if self.clock.recorded_s.is_none() && self.clock.started.is_some() {
                self.clock.recorded_s = Some(self.clock.elapsed(now).as_secs_f64());
            }
            self.requested_pause = None;
            self.requested_t = None;
            self.requested_alpha = None;
        } else if self.status.is_none_or(|s| s == RunStatus::Running) {
            if let Some(s) = self.clock.recorded_s.take() {
                let d = Duration::from_secs_f64(s.max(0.0));
                self.clock.started = Some(now.checked_sub(d).unwrap_or(now));
                self.clock.ended = None;
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.plan.is_some() && self.status.is_none_or(|s| s == RunStatus::Running) && !self.stalled
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
                self.job_elapsed_s = 0.0;
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
                self.job_elapsed_s = e.elapsed_s;
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
                self.supersede(*key, *step);
                self.current = Some(*key);
                self.step = *step;
                self.status = None;
                self.error = None;
                self.stop_requested = false;
                self.paused = false;
                self.requested_pause = None;
                self.requested_t = None;
                self.requested_alpha = None;
                self.clock.ended = None;
                self.clock.paused_since = None;
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

    /// A resume redoes `key` after `step`: drop what the interrupted process drew past
    /// it. `key` is the newest job, so its points are the tail of its method's curves
    /// (and of the control markers).
    fn supersede(&mut self, key: JobKey, step: u64) {
        let cut = self.x_of_step(key, step) + 1e-9;
        if let Some(c) = self.curves.get_mut(&key.method) {
            c.loss.truncate_tail_after(cut);
            c.loss_ema.truncate_tail_after(cut);
            for pts in [&mut c.val, &mut c.test, &mut c.teacher] {
                pop_tail_after(pts, cut, f64::INFINITY, |p| p.0);
            }
        }
        for marks in [
            &mut self.t_changes,
            &mut self.alpha_changes,
            &mut self.pauses,
        ] {
            pop_tail_after(marks, cut, f64::INFINITY, |m| m.x);
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
    /// `selfdistill watch`: the live run is another process's, controls go to its
    /// control file, and quitting detaches.
    pub watch: Option<WatchInfo>,
    /// Past runs side by side (replaces the one-run comparison until closed).
    pub compare: Option<RunsComparison>,
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
            watch: None,
            compare: None,
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

    /// Watching a run that no process writes now: controls cannot reach anyone.
    pub fn watch_stalled(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| !w.writer_live)
    }

    /// The follower saw the watched run's writer come or go.
    pub fn set_writer_live(&mut self, live: bool, now: Instant) {
        let Some(w) = self.watch.as_mut() else { return };
        w.writer_live = live;
        if let Some(run) = self.run.as_mut() {
            run.set_stalled(!live, now);
        }
        if !live && matches!(self.overlay, Some(Overlay::Confirm(ConfirmKind::Stop))) {
            self.overlay = None;
        }
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
        if matches!(ev, TrainEvent::Resumed { .. })
            && matches!(&self.overlay, Some(Overlay::Error(m)) if m.starts_with("Training failed"))
        {
            self.overlay = None;
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

/// What `selfdistill watch` attached to.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchInfo {
    pub run_id: String,
    pub dir: PathBuf,
    /// A process holds the run's writer lock (polled about once a second).
    pub writer_live: bool,
}

/// One run of a side-by-side comparison.
#[derive(Debug, Clone)]
pub struct ComparedRun {
    /// Short, unique among the compared runs: the end of the run id.
    pub label: String,
    pub summary: RunSummary,
}

#[derive(Debug, Clone)]
pub struct RunsComparison {
    pub runs: Vec<ComparedRun>,
}

/// Longest label kept whole; longer ones keep their end.
pub const LABEL_MAX: usize = 14;

impl RunsComparison {
    pub fn new(runs: Vec<(String, RunSummary)>) -> RunsComparison {
        let ids: Vec<String> = runs.iter().map(|r| r.0.clone()).collect();
        let labels = short_labels(&ids);
        RunsComparison {
            runs: runs
                .into_iter()
                .zip(labels)
                .map(|((_, summary), label)| ComparedRun { label, summary })
                .collect(),
        }
    }
}

/// Run ids without the dash-separated parts they all start with (the date, when the
/// runs are from one day). Longer than `LABEL_MAX`, they are cut at the end, or else at
/// the start, whichever keeps them apart.
pub fn short_labels(ids: &[String]) -> Vec<String> {
    let parts: Vec<Vec<&str>> = ids.iter().map(|id| id.split('-').collect()).collect();
    let mut common = 0;
    if ids.len() > 1 {
        'outer: while let Some(first) = parts[0].get(common) {
            for p in &parts {
                // Keep at least one part of every id.
                if p.len() <= common + 1 || p[common] != *first {
                    break 'outer;
                }
            }
            common += 1;
        }
    }
    let full: Vec<String> = parts.iter().map(|p| p[common..].join("-")).collect();
    let cut = |keep_start: bool| -> Vec<String> {
        full.iter()
            .map(|l| {
                let n = l.chars().count();
                if n <= LABEL_MAX {
                    l.clone()
                } else if keep_start {
                    let head: String = l.chars().take(LABEL_MAX - 1).collect();
                    format!("{head}…")
                } else {
                    let tail: String = l.chars().skip(n - (LABEL_MAX - 1)).collect();
                    format!("…{tail}")
                }
            })
            .collect()
    };
    let distinct = |labels: &[String]| {
        let set: std::collections::BTreeSet<&String> = labels.iter().collect();
        set.len() == labels.len()
    };
    for keep_start in [false, true] {
        let labels = cut(keep_start);
        if distinct(&labels) {
            return labels;
        }
    }
    (1..=ids.len()).map(|i| format!("run {i}")).collect()
}
