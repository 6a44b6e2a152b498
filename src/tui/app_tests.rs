//! Event-loop tests with `TestBackend`, a fake launcher and scripted trainer events.

use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use selfdistill::preset::Preset;
use selfdistill::train::events::{Control, Method, RunStatus, TrainEvent};

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::app::{App, ControlFile, ControlSink, Input, Launcher, LoopConfig, Remote, RunLink};
use super::fixtures::{key, menu, scripted_run, step, watch_state};
use super::keys::WATCH_STALLED;
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
    (RunLink::local(erx, ctx), etx, crx)
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

/// Records what a watcher would append to the run's control file.
#[derive(Clone, Default)]
struct RecordingSink(Arc<Mutex<Vec<Control>>>);

impl ControlSink for RecordingSink {
    fn deliver(&self, control: Control) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(control);
        Ok(())
    }
}

impl RecordingSink {
    fn sent(&self) -> Vec<Control> {
        self.0.lock().unwrap().clone()
    }
}

fn watch_link(writer_live: bool) -> (RunLink, Sender<TrainEvent>, RecordingSink) {
    let (etx, erx) = unbounded();
    let sink = RecordingSink::default();
    let link = RunLink {
        events: erx,
        controls: Box::new(sink.clone()),
        thread: None,
        drained: false,
        remote: Some(Remote::manual(writer_live)),
    };
    (link, etx, sink)
}

fn ch(c: char) -> Input {
    Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

#[test]
fn watch_sends_controls_to_the_control_file_and_quit_detaches_without_stop() {
    let (link, etx, sink) = watch_link(true);
    let mut launcher = FakeLauncher {
        link: None,
        started: vec![],
    };
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let (itx, irx) = unbounded();
    let script = scripted_run(false);
    // The first half was logged before `watch` opened, the rest arrives live.
    let (history, live) = script.split_at(script.len() / 2);
    let state = watch_state(history, true);
    let mut app = App::new(&mut term, state, Some(link), &mut launcher, cfg());
    for ev in live {
        etx.send(ev.clone()).unwrap();
    }
    pump(&mut app, &irx, |a| {
        a.state
            .run
            .as_ref()
            .is_some_and(|r| r.current == Some(key(Method::SelfDistill, 2)) && r.step == 15)
    });
    for c in ['p', '+', 'A'] {
        itx.send(ch(c)).unwrap();
    }
    pump(&mut app, &irx, |_| sink.sent().len() >= 3);
    assert_eq!(
        sink.sent(),
        vec![
            Control::Pause,
            Control::SetTemperature(4.5),
            Control::SetAlpha(0.6)
        ]
    );
    // The trainer echoes the pause through the log: the badge shows.
    etx.send(TrainEvent::ControlApplied {
        key: key(Method::SelfDistill, 2),
        step: 16,
        control: Control::Pause,
    })
    .unwrap();
    pump(&mut app, &irx, |a| a.state.run.as_ref().unwrap().paused);
    app.maybe_draw(true).unwrap();
    let text: String = app
        .terminal
        .backend()
        .buffer()
        .content()
        .iter()
        .map(|c| c.symbol())
        .collect();
    assert!(text.contains("PAUSED"), "{text}");
    assert!(text.contains("watching 20260101-000000-quick"), "{text}");
    // Stop still asks, then goes through the control file.
    itx.send(ch('s')).unwrap();
    pump(&mut app, &irx, |a| a.state.overlay.is_some());
    itx.send(ch('y')).unwrap();
    pump(&mut app, &irx, |_| sink.sent().len() >= 4);
    assert_eq!(sink.sent()[3], Control::Stop);
    // q leaves at once, without asking and without another Stop.
    itx.send(ch('q')).unwrap();
    pump(&mut app, &irx, |a| a.state.should_quit);
    assert_eq!(app.state.overlay, None);
    assert_eq!(sink.sent().len(), 4);
}

#[test]
fn ctrl_c_and_a_closed_terminal_detach_a_watcher() {
    for input in [Input::Interrupt, Input::Closed] {
        let (link, _etx, sink) = watch_link(true);
        let mut launcher = FakeLauncher {
            link: None,
            started: vec![],
        };
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let (itx, irx) = unbounded();
        let state = watch_state(&scripted_run(false), true);
        let mut app = App::new(&mut term, state, Some(link), &mut launcher, cfg());
        itx.send(input.clone()).unwrap();
        pump(&mut app, &irx, |a| a.state.should_quit);
        assert!(sink.sent().is_empty(), "{input:?} sent {:?}", sink.sent());
    }
}

#[test]
fn watching_a_run_nobody_writes_explains_and_follows_the_writer_coming_back() {
    let (link, _etx, sink) = watch_link(false);
    let live = link.remote.as_ref().unwrap().writer_live.clone();
    let mut launcher = FakeLauncher {
        link: None,
        started: vec![],
    };
    let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let (itx, irx) = unbounded();
    let state = watch_state(&scripted_run(false), false);
    assert!(!state.live_running(), "nobody writes it: not running");
    let mut app = App::new(&mut term, state, Some(link), &mut launcher, cfg());
    for c in ['p', '+', 'a', 's', 'T'] {
        app.state.flash = None;
        itx.send(ch(c)).unwrap();
        pump(&mut app, &irx, |a| a.state.flash.is_some());
        assert_eq!(app.state.flash.as_deref(), Some(WATCH_STALLED), "{c}");
        assert_eq!(app.state.overlay, None);
    }
    assert!(sink.sent().is_empty());
    app.maybe_draw(true).unwrap();
    let text: String = app
        .terminal
        .backend()
        .buffer()
        .content()
        .iter()
        .map(|c| c.symbol())
        .collect();
    assert!(text.contains("writer: not running"), "{text}");
    // `selfdistill resume` took the run up again: controls work.
    live.store(true, Ordering::Release);
    pump(&mut app, &irx, |a| {
        a.state.watch.as_ref().is_some_and(|w| w.writer_live)
    });
    assert!(app.state.live_running());
    itx.send(ch('p')).unwrap();
    pump(&mut app, &irx, |_| !sink.sent().is_empty());
    assert_eq!(sink.sent(), vec![Control::Pause]);
}

#[test]
fn control_file_sink_appends_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sink = ControlFile {
        run_dir: dir.path().to_path_buf(),
    };
    sink.deliver(Control::Pause).unwrap();
    sink.deliver(Control::SetTemperature(2.0)).unwrap();
    let text = std::fs::read_to_string(dir.path().join("control.jsonl")).unwrap();
    assert_eq!(
        text,
        "{\"kind\":\"pause\"}\n{\"kind\":\"set-temperature\",\"value\":2.0}\n"
    );
    let gone = ControlFile {
        run_dir: dir.path().join("missing"),
    };
    assert!(gone.deliver(Control::Pause).is_err());
}

#[test]
fn remote_follower_feeds_new_log_lines_into_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let line = |ev: &TrainEvent| serde_json::to_string(ev).unwrap() + "\n";
    let script = scripted_run(false);
    std::fs::write(&log, line(&script[0])).unwrap();
    let mut follower = selfdistill::store::follow::EventFollower::new(dir.path());
    assert_eq!(follower.poll().unwrap().len(), 1, "history read up front");
    let link = Remote::follow(dir.path().to_path_buf(), follower, false);
    let more: String = script[1..4].iter().map(line).collect();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, more.as_bytes()).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            link.events
                .recv_timeout(Duration::from_secs(10))
                .expect("followed events"),
        );
    }
    assert!(matches!(got[0], TrainEvent::GenerationStarted { .. }));
    assert!(!link
        .remote
        .as_ref()
        .unwrap()
        .writer_live
        .load(Ordering::Acquire));
    drop(link); // stops the follower thread
}
