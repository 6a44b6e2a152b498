//! The event loop, generic over ratatui's `Backend` so tests drive it with
//! `TestBackend` and fake channels. One `select!` over input, trainer events and a
//! timer; trainer events are drained eagerly (the trainer must never wait on us) and
//! frames are drawn at most once per refresh interval.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{never, select, Receiver, Sender};
use crossterm::event::KeyEvent;
use ratatui::backend::Backend;
use ratatui::Terminal;
use selfdistill::preset::Preset;
use selfdistill::store;
use selfdistill::train::events::{Control, RunStatus, TrainEvent};
use selfdistill::train::RunHandle;

use super::keys::{self, Action, Effect};
use super::render;
use super::state::{AppState, Overlay, RunView, Screen};

/// What the input thread (or a test) sends.
#[derive(Debug, Clone)]
pub enum Input {
    Key(KeyEvent),
    Resize,
    /// SIGINT from outside the terminal (e.g. `kill -INT`).
    Interrupt,
    /// The terminal went away (e.g. the SSH connection dropped).
    Closed,
}

/// Where controls go: the trainer thread of this process, or the control file of a run
/// another process trains (`selfdistill watch`).
pub trait ControlSink: Send {
    fn deliver(&self, control: Control) -> Result<()>;
}

impl ControlSink for Sender<Control> {
    fn deliver(&self, control: Control) -> Result<()> {
        // A trainer that already ended just ignores it.
        let _ = self.send(control);
        Ok(())
    }
}

/// Appends controls to `<run>/control.jsonl`; the training process picks them up.
pub struct ControlFile {
    pub run_dir: PathBuf,
}

impl ControlSink for ControlFile {
    fn deliver(&self, control: Control) -> Result<()> {
        store::follow::append_control(&self.run_dir, control)
    }
}

/// The UI's end of a running trainer.
pub struct RunLink {
    pub events: Receiver<TrainEvent>,
    pub controls: Box<dyn ControlSink>,
    pub thread: Option<JoinHandle<RunStatus>>,
    /// The trainer dropped its sender: every event has been read.
    pub drained: bool,
    /// Watching another process's run: its follower thread.
    pub remote: Option<Remote>,
}

impl RunLink {
    /// A link to a trainer thread of this process.
    pub fn local(events: Receiver<TrainEvent>, controls: Sender<Control>) -> RunLink {
        RunLink {
            events,
            controls: Box::new(controls),
            thread: None,
            drained: false,
            remote: None,
        }
    }
}

impl From<RunHandle> for RunLink {
    fn from(h: RunHandle) -> RunLink {
        RunLink {
            thread: Some(h.thread),
            ..RunLink::local(h.events, h.controls)
        }
    }
}

/// The follower thread of a watched run: it feeds new events of the run's log into the
/// link's channel and keeps `writer_live` up to date; dropping this stops it.
pub struct Remote {
    pub writer_live: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How often the follower checks whether a process still writes the run.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

impl Remote {
    /// Without a thread: a test sets `writer_live` by hand.
    pub fn manual(writer_live: bool) -> Remote {
        Remote {
            writer_live: Arc::new(AtomicBool::new(writer_live)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Follows `run_dir` from where `follower` left off: a link whose controls go to the
    /// run's control file.
    pub fn follow(
        run_dir: PathBuf,
        mut follower: store::follow::EventFollower,
        writer_live: bool,
    ) -> RunLink {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut remote = Remote::manual(writer_live);
        let (live, stop, dir) = (
            remote.writer_live.clone(),
            remote.stop.clone(),
            run_dir.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("selfdistill-watch".into())
            .spawn(move || {
                let mut last_check = Instant::now();
                let mut last_error: Option<String> = None;
                while !stop.load(Ordering::Acquire) {
                    match follower.poll() {
                        Ok(events) => {
                            last_error = None;
                            for ev in events {
                                if tx.send(ev).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            // Say it once, not every poll.
                            let msg = format!("{e:#}");
                            if last_error.as_ref() != Some(&msg) {
                                let ev = TrainEvent::Log {
                                    message: format!("watch: {msg}"),
                                };
                                if tx.send(ev).is_err() {
                                    return;
                                }
                                last_error = Some(msg);
                            }
                        }
                    }
                    if last_check.elapsed() >= LIVENESS_INTERVAL {
                        live.store(store::is_live(&dir), Ordering::Release);
                        last_check = Instant::now();
                    }
                    std::thread::sleep(store::follow::POLL_INTERVAL);
                }
            })
            .expect("spawning a thread");
        remote.thread = Some(thread);
        RunLink {
            events: rx,
            controls: Box::new(ControlFile { run_dir }),
            thread: None,
            drained: false,
            remote: Some(remote),
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts runs chosen in the menu (the real one calls `prepare` + `spawn`).
pub trait Launcher {
    fn launch(&mut self, preset: Preset) -> Result<RunLink>;
}

#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Minimum time between frames.
    pub refresh: Duration,
    /// Wrap frames in synchronized-update escapes (real terminals only).
    pub sync: bool,
    /// How long `q` / Ctrl-C waits for the trainer to write its checkpoint and summary.
    pub stop_grace: Duration,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            refresh: Duration::from_millis(100),
            sync: false,
            stop_grace: Duration::from_secs(60),
        }
    }
}

/// Measured by the loop, reported with `SELFDISTILL_UI_STATS`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub frames: u64,
    pub draw_time: Duration,
    pub events: u64,
    pub max_batch: usize,
}

/// Most trainer events folded in before input is looked at again.
const MAX_EVENTS_PER_ITERATION: usize = 20_000;
/// Redraw this often with nothing new, so the clock moves.
const CLOCK_TICK: Duration = Duration::from_millis(1000);

pub struct App<'a, B: Backend> {
    pub terminal: &'a mut Terminal<B>,
    pub state: AppState,
    pub link: Option<RunLink>,
    pub launcher: &'a mut dyn Launcher,
    pub cfg: LoopConfig,
    pub stats: Stats,
    dirty: bool,
    last_draw: Option<Instant>,
    stop_deadline: Option<Instant>,
}

impl<'a, B: Backend> App<'a, B> {
    pub fn new(
        terminal: &'a mut Terminal<B>,
        state: AppState,
        link: Option<RunLink>,
        launcher: &'a mut dyn Launcher,
        cfg: LoopConfig,
    ) -> Self {
        App {
            terminal,
            state,
            link,
            launcher,
            cfg,
            stats: Stats::default(),
            dirty: true,
            last_draw: None,
            stop_deadline: None,
        }
    }

    /// Runs until the user quits (and a stopping run has finished, within the grace time).
    pub fn run(&mut self, inputs: &Receiver<Input>) -> Result<()> {
        while self.iterate(inputs)? {}
        Ok(())
    }

    /// One pass: draw if due, wait for input / an event / the timer, fold in everything
    /// pending. Returns false once the app should exit.
    pub fn iterate(&mut self, inputs: &Receiver<Input>) -> Result<bool> {
        {
            self.maybe_draw(false)?;
            if self.state.should_quit {
                return Ok(false);
            }
            let wait = self.wait_time();
            let no_events = never();
            let events = match &self.link {
                Some(l) if !l.drained => l.events.clone(),
                _ => no_events,
            };
            select! {
                recv(inputs) -> msg => match msg {
                    Ok(input) => self.on_input(input)?,
                    // The input source is gone (terminal closed): leave as Ctrl-C would.
                    Err(_) => self.interrupt_gone()?,
                },
                recv(events) -> msg => match msg {
                    Ok(ev) => self.on_event(ev),
                    Err(_) => self.on_disconnect(),
                },
                default(wait) => {
                    if self.state.live_running() || self.state.overlay.is_some() {
                        self.dirty = true;
                    }
                }
            }
            self.drain_events();
            self.check_writer();
            while let Ok(input) = inputs.try_recv() {
                self.on_input(input)?;
            }
            if self.state.quit_after_stop {
                let deadline = *self
                    .stop_deadline
                    .get_or_insert_with(|| Instant::now() + self.cfg.stop_grace);
                if !self.state.live_running() || Instant::now() >= deadline {
                    self.state.should_quit = true;
                }
            }
        }
        Ok(!self.state.should_quit)
    }

    fn wait_time(&self) -> Duration {
        let since = self.last_draw.map(|t| t.elapsed()).unwrap_or(Duration::MAX);
        if self.dirty {
            self.cfg.refresh.saturating_sub(since)
        } else {
            CLOCK_TICK
                .saturating_sub(since)
                .max(Duration::from_millis(10))
        }
    }

    /// Draws when something changed and the refresh interval has passed (or `force`).
    pub fn maybe_draw(&mut self, force: bool) -> Result<()> {
        let due = self
            .last_draw
            .is_none_or(|t| t.elapsed() >= self.cfg.refresh);
        if !(force || (self.dirty && due)) {
            return Ok(());
        }
        let start = Instant::now();
        self.state.now = start;
        if self.cfg.sync {
            super::terminal::begin_sync();
        }
        let state = &self.state;
        let result = self
            .terminal
            .draw(|f| render::draw(f, state))
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("drawing: {e}"));
        if self.cfg.sync {
            super::terminal::end_sync();
        }
        result?;
        self.stats.frames += 1;
        self.stats.draw_time += start.elapsed();
        self.last_draw = Some(start);
        self.dirty = false;
        Ok(())
    }

    fn drain_events(&mut self) {
        let Some(link) = &self.link else { return };
        if link.drained {
            return;
        }
        let rx = link.events.clone();
        let mut n = 0;
        while n < MAX_EVENTS_PER_ITERATION {
            match rx.try_recv() {
                Ok(ev) => {
                    self.on_event(ev);
                    n += 1;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.on_disconnect();
                    break;
                }
            }
        }
        self.stats.max_batch = self.stats.max_batch.max(n + 1);
    }

    /// Watching: picks up what the follower learnt about the run's writer.
    fn check_writer(&mut self) {
        let Some(remote) = self.link.as_ref().and_then(|l| l.remote.as_ref()) else {
            return;
        };
        let live = remote.writer_live.load(Ordering::Acquire);
        if self
            .state
            .watch
            .as_ref()
            .is_some_and(|w| w.writer_live != live)
        {
            self.state.set_writer_live(live, Instant::now());
            self.dirty = true;
        }
    }

    fn on_event(&mut self, ev: TrainEvent) {
        self.stats.events += 1;
        self.state.apply(&ev);
        if matches!(ev, TrainEvent::Finished { .. }) {
            // The new run folder belongs in the menu's list now.
            self.state.menu.runs = store::list_runs(&self.state.menu.runs_dir);
            if let Some(link) = &mut self.link {
                if let Some(t) = link.thread.take() {
                    // Finished is the trainer's last event; the thread is ending.
                    let _ = t.join();
                }
            }
        }
        self.dirty = true;
    }

    fn on_disconnect(&mut self) {
        if let Some(link) = &mut self.link {
            link.drained = true;
        }
        // A trainer that vanished without `Finished` must not leave a frozen "running" UI.
        if let Some(run) = self.state.run.as_mut() {
            if run.is_running() {
                let now = Instant::now();
                run.apply(
                    &TrainEvent::Error {
                        message: "the trainer thread ended without finishing".into(),
                    },
                    now,
                );
                run.apply(
                    &TrainEvent::Finished {
                        status: RunStatus::Failed,
                        wall_s: 0.0,
                    },
                    now,
                );
                self.state.overlay = Some(Overlay::Error(
                    "Training failed: the trainer thread ended unexpectedly".into(),
                ));
                if self.state.quit_after_stop {
                    self.state.should_quit = true;
                }
            }
        }
        self.dirty = true;
    }

    fn interrupt_gone(&mut self) -> Result<()> {
        // A watcher detaches: the other process's run goes on.
        if let Some(link) = self.link.as_ref().filter(|l| l.remote.is_none()) {
            let _ = link.controls.deliver(Control::Stop);
        }
        self.state.should_quit = true;
        Ok(())
    }

    pub fn on_input(&mut self, input: Input) -> Result<()> {
        self.dirty = true;
        let effects = match input {
            Input::Resize => Vec::new(),
            Input::Closed => {
                self.interrupt_gone()?;
                Vec::new()
            }
            Input::Key(k) => keys::reduce(&mut self.state, k),
            Input::Interrupt => {
                let k = keys::Key::Ctrl('c').example();
                keys::apply_action(&mut self.state, Action::Interrupt, &k)
            }
        };
        for fx in effects {
            self.effect(fx)?;
        }
        Ok(())
    }

    fn effect(&mut self, fx: Effect) -> Result<()> {
        match fx {
            Effect::Control(c) => {
                if let Some(link) = &self.link {
                    if let Err(e) = link.controls.deliver(c) {
                        self.state.flash = Some(format!("cannot send {c}: {e:#}"));
                        if let Some(run) = self.state.run.as_mut() {
                            run.requested_pause = None;
                            run.requested_t = None;
                            run.requested_alpha = None;
                        }
                    }
                }
            }
            Effect::StartPreset(i) => {
                let Some(Ok(preset)) = self.state.menu.presets.get(i).map(|e| e.preset.clone())
                else {
                    return Ok(());
                };
                let name = preset.name.clone();
                self.state.overlay = Some(Overlay::Busy(format!("Loading data for {name}…")));
                self.maybe_draw(true)?;
                self.state.overlay = None;
                match self.launcher.launch(preset) {
                    Ok(link) => {
                        self.link = Some(link);
                        self.state.watch = None;
                        self.state.run = Some(RunView::live(name));
                        self.state.past = None;
                        self.state.log_scroll = 0;
                        self.state.screen = Screen::Dashboard;
                    }
                    Err(e) => {
                        self.state.overlay =
                            Some(Overlay::Error(format!("Cannot start {name}: {e:#}")))
                    }
                }
            }
            Effect::OpenRun(i) => {
                let Some(info) = self.state.menu.runs.get(i) else {
                    return Ok(());
                };
                let (id, dir) = (info.id.clone(), info.dir.clone());
                match store::read_events(&dir) {
                    Ok(events) => {
                        self.state.past = Some(RunView::from_events(id, &events, Instant::now()));
                        self.state.log_scroll = 0;
                        self.state.screen = Screen::Dashboard;
                    }
                    Err(e) => {
                        self.state.overlay =
                            Some(Overlay::Error(format!("Cannot open {id}: {e:#}")))
                    }
                }
            }
        }
        Ok(())
    }
}
