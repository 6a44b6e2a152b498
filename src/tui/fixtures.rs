//! Scripted trainer events and states for tests (no Burn, no terminal).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use selfdistill::preset;
use selfdistill::train::events::{
    Control, EvalMetrics, GenerationSummary, JobKey, Method, RunPlan, RunStatus, StepMetrics,
    TeacherSource, TrainEvent,
};

use super::render;
use super::state::{AppState, MenuState, RunView, Screen, WatchInfo};
use super::theme::Theme;
use selfdistill::store::RunInfo;
use selfdistill::train::summary::RunSummary;

pub fn key(method: Method, generation: usize) -> JobKey {
    JobKey {
        seed: 1,
        method,
        generation,
    }
}

pub fn plan() -> RunPlan {
    RunPlan {
        run_id: "20260101-000000-quick".into(),
        preset: "quick".into(),
        dataset: "synthetic (generated)".into(),
        model: "cnn w8".into(),
        backend: "cpu".into(),
        jobs: vec![
            key(Method::Baseline, 1),
            key(Method::Conventional, 1),
            key(Method::Conventional, 2),
            key(Method::SelfDistill, 1),
            key(Method::SelfDistill, 2),
        ],
        epochs: 3,
        steps_per_epoch: 10,
        evals_per_generation: 3,
        train_size: 640,
        val_size: 100,
        test_size: 100,
        temperature: 4.0,
        alpha: 0.5,
        run_dir: None,
        autotune_cache: None,
        read_every: 1,
    }
}

pub fn step(k: JobKey, step: u64, run_step: u64, loss: f64, temperature: f64) -> TrainEvent {
    // StepMetrics has a crate-private field: build it through serde like a past run.
    let m = serde_json::json!({
        "event": "step", "key": k, "step": step, "run_step": run_step, "epoch": (step - 1) / 10 + 1,
        "loss": loss, "lr": 0.05, "temperature": temperature, "alpha": 0.5, "has_teacher": false, "coalesced": 1
    });
    let ev: TrainEvent = serde_json::from_value(m).expect("valid step event");
    debug_assert!(matches!(ev, TrainEvent::Step(StepMetrics { .. })));
    ev
}

pub fn eval(k: JobKey, epoch: usize, val: f64, test: f64, elapsed: f64) -> TrainEvent {
    TrainEvent::Eval(EvalMetrics {
        key: k,
        step: epoch as u64 * 10,
        epoch: epoch as f64,
        train_loss: 1.0,
        train_acc: val,
        val_loss: 1.0,
        val_acc: val,
        test_loss: 1.0,
        test_acc: test,
        best_val_acc: val,
        lr: 0.05,
        temperature: 4.0,
        alpha: 0.5,
        elapsed_s: elapsed,
    })
}

pub fn finished_gen(k: JobKey, best: f64, test: f64, wall: f64, repl: usize) -> TrainEvent {
    TrainEvent::GenerationFinished(GenerationSummary {
        key: k,
        best_val_acc: best,
        best_step: 30,
        test_acc_at_best: test,
        final_val_acc: best,
        final_test_acc: test,
        epochs: 3.0,
        steps: 30,
        wall_s: wall,
        teacher_replacements: repl,
        stopped: false,
        teacher_cached_batches: 0,
        teacher_forward_batches: 0,
    })
}

/// A whole scripted run: every method and generation, a temperature change and a pause
/// in self g1, teacher replacements, and (when `finish`) the end. Distinct accuracies
/// per generation so tests can look for the numbers.
pub fn scripted_run(finish: bool) -> Vec<TrainEvent> {
    let mut evs = vec![TrainEvent::Plan(plan())];
    let mut run_step = 0;
    let gens = [
        (Method::Baseline, 1, 0.701, 0.695, 10.0),
        (Method::Conventional, 1, 0.702, 0.690, 11.0),
        (Method::Conventional, 2, 0.7345, 0.7211, 12.0),
        (Method::SelfDistill, 1, 0.7512, 0.7433, 13.0),
        (Method::SelfDistill, 2, 0.7688, 0.7601, 14.0),
    ];
    for (i, (m, g, best, test, wall)) in gens.into_iter().enumerate() {
        let k = key(m, g);
        let teacher = if g > 1 {
            TeacherSource::PreviousFinal
        } else {
            TeacherSource::None
        };
        evs.push(TrainEvent::GenerationStarted {
            key: k,
            teacher,
            teacher_val_acc: (g > 1).then_some(0.7),
        });
        let last = !finish && i == 4;
        let steps = if last { 15 } else { 30 };
        for s in 1..=steps {
            run_step += 1;
            let t = if m == Method::SelfDistill && g == 1 && s > 12 {
                6.0
            } else {
                4.0
            };
            evs.push(step(k, s, run_step, 2.3 / (1.0 + s as f64 * 0.1), t));
            if m == Method::SelfDistill && g == 1 && s == 12 {
                evs.push(TrainEvent::ControlApplied {
                    key: k,
                    step: 13,
                    control: Control::SetTemperature(6.0),
                });
                evs.push(TrainEvent::ControlApplied {
                    key: k,
                    step: 13,
                    control: Control::Pause,
                });
                evs.push(TrainEvent::ControlApplied {
                    key: k,
                    step: 13,
                    control: Control::Resume,
                });
            }
            if s % 10 == 0 {
                let e = (s / 10) as usize;
                let val = best - 0.1 + 0.1 * e as f64 / 3.0;
                evs.push(eval(
                    k,
                    e,
                    val,
                    test - 0.1 + 0.1 * e as f64 / 3.0,
                    wall * e as f64 / 3.0,
                ));
                if m == Method::SelfDistill {
                    evs.push(TrainEvent::TeacherReplaced {
                        key: k,
                        step: s,
                        epoch: e as f64,
                        old_acc: (e > 1).then_some(val - 0.03),
                        new_acc: val,
                    });
                }
            }
        }
        if !last {
            evs.push(finished_gen(
                k,
                best,
                test,
                wall,
                if m == Method::SelfDistill { 3 } else { 0 },
            ));
        }
    }
    if finish {
        evs.push(TrainEvent::Finished {
            status: RunStatus::Finished,
            wall_s: 60.0,
        });
    }
    evs
}

pub fn menu() -> MenuState {
    MenuState::new(
        preset::list_all(),
        Vec::new(),
        PathBuf::from("/tmp/runs-for-tests"),
    )
}

pub fn state_with_run(events: &[TrainEvent], screen: Screen) -> AppState {
    let mut s = AppState::new(menu(), Theme::default());
    let t0 = Instant::now();
    s.run = Some(RunView::live("quick"));
    for (i, ev) in events.iter().enumerate() {
        s.apply_at(ev, t0 + Duration::from_millis(10 * i as u64));
    }
    s.now = t0 + Duration::from_secs(30);
    s.screen = screen;
    s
}

/// Draws the state and returns the screen as lines of text.
pub fn render_text(state: &AppState, w: u16, h: u16) -> Vec<String> {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| render::draw(f, state)).unwrap();
    let buf = term.backend().buffer();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect()
}

pub fn screen_contains(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

/// `selfdistill watch` of a run whose log holds `events`, its writer live or not.
pub fn watch_state(events: &[TrainEvent], writer_live: bool) -> AppState {
    let mut s = AppState::new(menu(), Theme::default());
    let t0 = Instant::now();
    s.run = Some(RunView::watched(
        "20260101-000000-quick",
        events,
        writer_live,
        t0,
    ));
    s.watch = Some(WatchInfo {
        run_id: "20260101-000000-quick".into(),
        dir: PathBuf::from("/tmp/runs-for-tests/20260101-000000-quick"),
        writer_live,
    });
    s.now = t0 + Duration::from_secs(1);
    s.screen = Screen::Dashboard;
    s
}

/// A finished scripted run with every accuracy and wall time scaled (distinct numbers
/// per run), as the menu lists it.
pub fn past_run(id: &str, acc_shift: f64, wall_scale: f64) -> RunInfo {
    let events: Vec<TrainEvent> = scripted_run(true)
        .into_iter()
        .map(|ev| match ev {
            TrainEvent::GenerationFinished(mut g) => {
                g.best_val_acc += acc_shift;
                g.test_acc_at_best += acc_shift;
                g.wall_s *= wall_scale;
                TrainEvent::GenerationFinished(g)
            }
            TrainEvent::Eval(mut e) => {
                e.val_acc += acc_shift;
                e.elapsed_s *= wall_scale;
                TrainEvent::Eval(e)
            }
            ev => ev,
        })
        .collect();
    RunInfo {
        dir: PathBuf::from("/tmp/runs-for-tests").join(id),
        id: id.into(),
        summary: RunSummary::from_events(events.iter().filter(|e| e.is_essential())),
    }
}
