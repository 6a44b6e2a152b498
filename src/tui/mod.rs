//! The terminal dashboard (binary only: UI edits never recompile the training code).
//!
//! `state` holds everything, `keys` maps keys to actions (a pure reducer over a binding
//! table), `render/` draws one screen region per module, `app` is the event loop
//! (generic over ratatui's `Backend`), `terminal` owns the real terminal.

pub mod app;
pub mod keys;
pub mod render;
pub mod series;
pub mod state;
pub mod terminal;
pub mod theme;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use selfdistill::preset::{self, Preset};
use selfdistill::store;
use selfdistill::train::events::RunStatus;
use selfdistill::train::{prepare, PreparedRun, RunOptions};

use app::{App, Launcher, LoopConfig, Remote, RunLink};
use state::{AppState, MenuState, RunView, Screen, WatchInfo};
use theme::{LineMarker, Theme};

/// Dashboard settings from the command line.
#[derive(Debug, Clone)]
pub struct UiOptions {
    pub refresh: Duration,
    pub marker: LineMarker,
    /// Overrides applied to runs started from the menu.
    pub run: RunOptions,
}

/// Starts menu-chosen presets for real: `prepare` (data, backend, run folder) + `spawn`.
struct RealLauncher {
    opts: RunOptions,
}

impl Launcher for RealLauncher {
    fn launch(&mut self, preset: Preset) -> Result<RunLink> {
        Ok(prepare(preset, &self.opts)?.spawn().into())
    }
}

/// `selfdistill` with no arguments: the preset menu.
pub fn open_menu(opts: UiOptions) -> Result<ExitCode> {
    open(opts, None)
}

/// `selfdistill run` on a terminal: straight onto the (already prepared) run.
pub fn open_run(opts: UiOptions, prepared: PreparedRun) -> Result<ExitCode> {
    open(opts, Some(prepared))
}

/// `selfdistill watch`: the dashboard on a run another process writes (or wrote).
/// Controls go through the run's control file; quitting detaches.
pub fn open_watch(opts: UiOptions, run_dir: PathBuf) -> Result<ExitCode> {
    let mut follower = store::follow::EventFollower::new(&run_dir);
    let history = follower.poll()?;
    let live = store::is_live(&run_dir);
    let run_id = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run_dir.display().to_string());
    let mut state = new_state(&opts);
    state.run = Some(RunView::watched(
        run_id.clone(),
        &history,
        live,
        Instant::now(),
    ));
    state.watch = Some(WatchInfo {
        run_id,
        dir: run_dir.clone(),
        writer_live: live,
    });
    state.screen = Screen::Dashboard;
    let link = Remote::follow(run_dir, follower, live);
    run_loop(opts, state, Some(link))
}

fn new_state(opts: &UiOptions) -> AppState {
    let dir = runs_dir(&opts.run);
    let menu = MenuState::new(preset::list_all(), store::list_runs(&dir), dir);
    AppState::new(menu, Theme::from_env(opts.marker))
}

fn runs_dir(opts: &RunOptions) -> std::path::PathBuf {
    opts.runs_dir
        .clone()
        .unwrap_or_else(store::default_runs_dir)
}

fn open(opts: UiOptions, prepared: Option<PreparedRun>) -> Result<ExitCode> {
    let mut state = new_state(&opts);
    let link = prepared.map(|p| {
        let name = p.preset.name.clone();
        if let Some(i) = state.menu.presets.iter().position(|e| e.name == name) {
            state.menu.preset_sel = i;
        }
        state.run = Some(RunView::live(name));
        state.screen = Screen::Dashboard;
        RunLink::from(p.spawn())
    });
    run_loop(opts, state, link)
}

/// Owns the terminal while the event loop runs; restores it whatever happens.
fn run_loop(opts: UiOptions, state: AppState, link: Option<RunLink>) -> Result<ExitCode> {
    let (tx, inputs) = crossbeam_channel::unbounded();
    // Outside raw mode (or from `kill -INT`) Ctrl-C is a signal: same path as the key.
    let signal_tx = tx.clone();
    let _ = ctrlc::set_handler(move || {
        let _ = signal_tx.send(app::Input::Interrupt);
    });
    let (guard, mut terminal) = terminal::TerminalGuard::enter()?;
    let stop_input = Arc::new(AtomicBool::new(false));
    let reader = terminal::spawn_input(tx, stop_input.clone())?;
    let mut launcher = RealLauncher {
        opts: opts.run.clone(),
    };
    let cfg = LoopConfig {
        refresh: opts.refresh,
        sync: true,
        ..LoopConfig::default()
    };
    let started = Instant::now();
    let cpu_before = ui_thread_cpu();
    let mut app = App::new(&mut terminal, state, link, &mut launcher, cfg);
    let result = app.run(&inputs);
    let (stats, cpu) = (
        app.stats.clone(),
        ui_thread_cpu().zip(cpu_before).map(|(a, b)| a - b),
    );
    let watching = app.state.watch.is_some();
    let status = app.state.run.as_ref().and_then(|r| r.status);
    let link = app.link.take();
    drop(app);
    // Stop reading keys before the shell gets the terminal back, so that nothing typed
    // after the screen is restored is swallowed.
    stop_input.store(true, Ordering::Relaxed);
    let _ = reader.join();
    // Quitting while the trainer still writes its checkpoint: let it finish (briefly).
    // A watcher has no trainer thread here (its follower stops with the link): the
    // other process's run goes on.
    let trainer = link.and_then(|mut l| {
        let thread = l.thread.take()?;
        let _ = l
            .controls
            .deliver(selfdistill::train::events::Control::Stop);
        Some(thread)
    });
    drop(guard);
    if let Some(thread) = trainer {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(path) = std::env::var_os("SELFDISTILL_UI_STATS") {
        write_stats(Path::new(&path), &stats, started.elapsed(), cpu);
    }
    result?;
    Ok(match status {
        // Detaching from a failed run is not a failure of `watch`.
        Some(RunStatus::Failed) if !watching => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

/// CPU seconds the calling thread has used (Linux; None elsewhere).
fn ui_thread_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the ")" of the command name: utime and stime are 14 and 15 overall.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Frame rate and UI-thread CPU, for checking that the UI stays cheap.
fn write_stats(path: &Path, stats: &app::Stats, wall: Duration, cpu: Option<f64>) {
    let secs = wall.as_secs_f64().max(1e-9);
    let text = format!(
        "{{\"wall_s\":{secs:.2},\"frames\":{},\"fps\":{:.2},\"mean_draw_ms\":{:.3},\"events\":{},\"max_batch\":{},\"ui_cpu_s\":{},\"ui_cpu_percent\":{}}}\n",
        stats.frames,
        stats.frames as f64 / secs,
        stats.draw_time.as_secs_f64() * 1000.0 / stats.frames.max(1) as f64,
        stats.events,
        stats.max_batch,
        cpu.map(|c| format!("{c:.2}")).unwrap_or_else(|| "null".into()),
        cpu.map(|c| format!("{:.2}", 100.0 * c / secs)).unwrap_or_else(|| "null".into()),
    );
    let _ = std::fs::write(path, text);
}

#[cfg(test)]
mod app_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod keys_tests;
#[cfg(test)]
mod state_tests;
