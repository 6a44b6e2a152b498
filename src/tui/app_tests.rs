//! Event-loop tests with `TestBackend`, a fake launcher and scripted trainer events.

use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use selfdistill::preset::Preset;
use selfdistill::train::events::{Control, Method, RunStatus, TrainEvent};

use super::app::{App, Input, Launcher, LoopConfig, RunLink};
use super::fixtures::{key, menu, scripted_run, step};
use super::series::DEFAULT_CAP;
use super::state::{AppState, Overlay, Screen};
use super::theme::Theme;

/// Hands out a prepared link, or fails like a missing dataset would.
struct FakeLauncher {
    link: Option<RunLink>,
    started: Vec<String>,
}

impl Launcher for FakeLauncher {
    fn launch(&mut self, preset: Preset) -> anyhow::Result<RunLink> {
        self.started.push(preset.name.clone());
        self.link
            .take()
            .ok_or_else(|| anyhow::anyhow!("dataset files not found in /nowhere"))
    }
}

fn fake_link() -> (RunLink, Sender<TrainEvent>, Receiver<Control>) {
    let (etx, erx) = unbounded();
    let (ctx, crx) = unbounded();
    (
        RunLink {
            events: erx,
            controls: ctx,
            thread: None,
            drained: false,
        },
        etx,
        crx,
    )
}

fn k(c: KeyCode) -> Input {
    Input::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn cfg() -> LoopConfig {
    LoopConfig {
        refresh: Duration::from_millis(20),
        sync: false,
        stop_grace: Duration::from_secs(5),
    }
}

/// Iterates until `done` or a timeout.
fn pump<B: ratatui::backend::Backend>(
    app: &mut App<B>,
    inputs: &Receiver<Input>,
    done: impl Fn(&App<B>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(app) {
        assert!(Instant::now() < deadline, "timed out");
        if !app.iterate(inputs).unwrap() {
            break;
        }
    }
}

#[test]
fn menu_start_runs_the_preset_and_controls_reach_the_trainer() {
    let (link, etx, crx) = fake_link();
    let mut launcher = FakeLauncher {
        link: Some(link),
        started: vec![],
    };
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let (itx, irx) = unbounded();
    let state = AppState::new(menu(), Theme::default());
    let mut app = App::new(&mut term, state, None, &mut launcher, cfg());
    itx.send(k(KeyCode::Enter)).unwrap();
    pump(&mut app, &irx, |a| a.state.screen == Screen::Dashboard);
    for ev in scripted_run(false) {
        etx.send(ev).unwrap();
    }
    pump(&mut app, &irx, |a| {
        a.state
            .run
            .as_ref()
            .is_some_and(|r| r.current == Some(key(Method::SelfDistill, 2)) && r.step == 15)
    });
    itx.send(Input::Key(KeyEvent::new(
        KeyCode::Char('p'),
        KeyModifiers::NONE,
    )))
    .unwrap();
    itx.send(Input::Key(KeyEvent::new(
        KeyCode::Char('+'),
        KeyModifiers::SHIFT,
    )))
    .unwrap();
    pump(&mut app, &irx, |_| crx.len() >= 2);
    assert_eq!(crx.try_recv().unwrap(), Control::Pause);
    assert_eq!(crx.try_recv().unwrap(), Control::SetTemperature(4.5));
    // q asks; y stops the trainer and waits for it to finish.
    itx.send(Input::Key(KeyEvent::new(
        KeyCode::Char('q'),
        KeyModifiers::NONE,
    )))
    .unwrap();
    itx.send(Input::Key(KeyEvent::new(
        KeyCode::Char('y'),
        KeyModifiers::NONE,
    )))
    .unwrap();
    pump(&mut app, &irx, |_| !crx.is_empty());
    assert_eq!(crx.try_recv().unwrap(), Control::Stop);
    assert!(!app.state.should_quit, "still waiting for the trainer");
    etx.send(TrainEvent::Finished {
        status: RunStatus::Stopped,
        wall_s: 9.0,
    })
    .unwrap();
    drop(etx);
    pump(&mut app, &irx, |a| a.state.should_quit);
    assert!(app.stats.frames >= 2);
    drop(app);
    assert_eq!(launcher.started, vec!["quick".to_string()]);
}

#[test]
fn a_failing_start_shows_an_error_instead_of_crashing() {
    let mut launcher = FakeLauncher {
        link: None,
        started: vec![],
    };
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let (itx, irx) = unbounded();
    let mut app = App::new(
        &mut term,
        AppState::new(menu(), Theme::default()),
        None,
        &mut launcher,
        cfg(),
    );
    itx.send(k(KeyCode::Enter)).unwrap();
    pump(&mut app, &irx, |a| {
        matches!(a.state.overlay, Some(Overlay::Error(_)))
    });
    app.maybe_draw(true).unwrap();
    let buf = app.terminal.backend().buffer().clone();
    let text: String = buf.content().iter().map(|c| c.symbol()).collect();
    assert!(text.contains("Cannot start quick"), "{text}");
    assert!(text.contains("dataset files not found"), "{text}");
    // The UI still works: Esc dismisses, q quits (no run going).
    itx.send(k(KeyCode::Esc)).unwrap();
    itx.send(Input::Key(KeyEvent::new(
        KeyCode::Char('q'),
        KeyModifiers::NONE,
    )))
    .unwrap();
    pump(&mut app, &irx, |a| a.state.should_quit);
    assert_eq!(app.state.overlay, None);
}

#[test]
fn a_flood_of_steps_keeps_every_evaluation_and_bounded_curves_with_capped_frames() {
    let (link, etx, _crx) = fake_link();
    let mut launcher = FakeLauncher {
        link: None,
        started: vec![],
    };
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let (_itx, irx) = unbounded::<Input>();
    let mut state = AppState::new(menu(), Theme::default());
    state.run = Some(super::state::RunView::live("quick"));
    state.screen = Screen::Dashboard;
    let config = LoopConfig {
        refresh: Duration::from_millis(50),
        ..cfg()
    };
    let mut app = App::new(&mut term, state, Some(link), &mut launcher, config);
    let script = scripted_run(true);
    let evals = script
        .iter()
        .filter(|e| matches!(e, TrainEvent::Eval(_)))
        .count();
    let teachers = script
        .iter()
        .filter(|e| matches!(e, TrainEvent::TeacherReplaced { .. }))
        .count();
    let kb = key(Method::Baseline, 1);
    let producer = std::thread::spawn(move || {
        etx.send(script[0].clone()).unwrap();
        etx.send(script[1].clone()).unwrap();
        // 50k steps of the first job, then the rest of the script.
        for s in 1..=50_000u64 {
            etx.send(step(kb, 1 + s % 29, s, 1.0 + (s % 7) as f64, 4.0))
                .unwrap();
        }
        for ev in &script[2..] {
            etx.send(ev.clone()).unwrap();
        }
    });
    let started = Instant::now();
    pump(&mut app, &irx, |a| {
        a.link.as_ref().is_some_and(|l| l.drained)
    });
    let elapsed = started.elapsed();
    producer.join().unwrap();
    let run = app.state.run.as_ref().unwrap();
    let got_evals: usize = run.curves.values().map(|c| c.val.len()).sum();
    let got_teachers: usize = run.curves.values().map(|c| c.teacher.len()).sum();
    assert_eq!(got_evals, evals, "no evaluation lost");
    assert_eq!(got_teachers, teachers, "no teacher replacement lost");
    assert_eq!(run.status, Some(RunStatus::Finished));
    for c in run.curves.values() {
        assert!(
            c.loss.points().len() <= DEFAULT_CAP,
            "bounded: {}",
            c.loss.points().len()
        );
    }
    let max_frames = (elapsed.as_millis() / 50) as u64 + 3;
    assert!(
        app.stats.frames <= max_frames,
        "{} frames in {elapsed:?}",
        app.stats.frames
    );
}
