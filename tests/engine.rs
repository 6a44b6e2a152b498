//! End-to-end tests of the training engine on small synthetic data (CPU, flex).

use std::sync::Arc;
use std::time::Duration;

use burn::backend::{flex::FlexDevice, Flex};
use burn::prelude::*;
use burn::tensor::{ElementConversion, TensorData};
use selfdistill::data;
use selfdistill::distill::correct_count;
use selfdistill::preset::Preset;
use selfdistill::store;
use selfdistill::train::events::{
    event_channel_with_capacity, Control, EvalMetrics, GenerationSummary, JobKey, Method,
    RunStatus, StepMetrics, TeacherSource, TrainEvent,
};
use selfdistill::train::{load_data, prepare, PreparedData, PreparedRun, RunOptions};

mod common;
use common::generation_numbers;

fn tiny(methods: &str, generations: usize, extra: &str) -> Preset {
    let text = format!(
        r#"
name = "tiny"
[data]
dataset = "synthetic"
val_fraction = 0.2
[data.synthetic]
train_size = 600
test_size = 200
image_size = 12
seed = 3
label_noise = 0.05
[model]
arch = "cnn"
width = 4
[train]
epochs = 3
batch_size = 32
lr = 0.1
{extra}
[run]
methods = [{methods}]
generations = {generations}
seeds = [5]
"#
    );
    Preset::from_toml(&text, "tiny (test)").unwrap()
}

/// Runs to completion on this thread and returns every event (no coalescing).
fn run_events(preset: &Preset, data: PreparedData) -> Vec<TrainEvent> {
    run_events_reading(preset, data, None)
}

/// As [`run_events`], reading loss and hits back every `read_every` steps.
fn run_events_reading(
    preset: &Preset,
    data: PreparedData,
    read_every: Option<usize>,
) -> Vec<TrainEvent> {
    let (tx, rx) = event_channel_with_capacity(usize::MAX);
    let (_controls, control_rx) = crossbeam_channel::unbounded();
    let run = PreparedRun {
        preset: preset.clone(),
        data: Arc::new(data),
        writer: None,
        resume: None,
        faults: Default::default(),
        read_every,
    };
    let status = run.run(tx, control_rx);
    let events: Vec<TrainEvent> = rx.try_iter().collect();
    assert_eq!(status, RunStatus::Finished, "{:?}", errors(&events));
    events
}

fn run_preset(preset: &Preset) -> Vec<TrainEvent> {
    let loaded = load_data(preset).unwrap();
    run_events(preset, PreparedData::new(loaded, preset))
}

/// `value` for each of `events` that matches `pattern`, in order, as a `Vec`.
macro_rules! matching {
    ($events:expr, $pattern:pat => $value:expr) => {
        $events
            .iter()
            .filter_map(|e| match e {
                $pattern => Some($value),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

fn errors(events: &[TrainEvent]) -> Vec<String> {
    matching!(events, TrainEvent::Error { message } => message.clone())
}

fn evals(events: &[TrainEvent]) -> Vec<EvalMetrics> {
    matching!(events, TrainEvent::Eval(m) => m.clone())
}

fn steps(events: &[TrainEvent]) -> Vec<StepMetrics> {
    matching!(events, TrainEvent::Step(m) => m.clone())
}

fn finished(events: &[TrainEvent]) -> Vec<GenerationSummary> {
    matching!(events, TrainEvent::GenerationFinished(g) => g.clone())
}

fn started(events: &[TrainEvent], key: JobKey) -> (TeacherSource, Option<f64>) {
    events
        .iter()
        .find_map(|e| match e {
            TrainEvent::GenerationStarted {
                key: k,
                teacher,
                teacher_val_acc,
            } if *k == key => Some((*teacher, *teacher_val_acc)),
            _ => None,
        })
        .expect("generation started")
}

fn key(method: Method, generation: usize) -> JobKey {
    JobKey {
        seed: 5,
        method,
        generation,
    }
}

/// (step, loss) of every step.
type StepLosses = Vec<(u64, f64)>;
/// (train loss, val loss, val acc, test acc) of every evaluation.
type EvalNumbers = Vec<(f64, f64, f64, f64)>;

/// Numbers that must not depend on wall-clock time.
fn trajectory(events: &[TrainEvent]) -> (StepLosses, EvalNumbers) {
    let s = steps(events).iter().map(|s| (s.step, s.loss)).collect();
    let e = evals(events)
        .iter()
        .map(|e| (e.train_loss, e.val_loss, e.val_acc, e.test_acc))
        .collect();
    (s, e)
}

#[test]
fn same_seed_gives_the_same_numbers() {
    let preset = tiny(r#""baseline", "self""#, 1, "");
    let a = run_preset(&preset);
    let b = run_preset(&preset);
    assert!(!steps(&a).is_empty());
    assert_eq!(trajectory(&a), trajectory(&b));
    // A different seed gives a different trajectory (the seed is really used).
    let mut other = preset.clone();
    other.run.seeds = vec![6];
    assert_ne!(trajectory(&a).0, trajectory(&run_preset(&other)).0);
}

/// What a step event says, loss bits included (wall time excluded).
type StepRecord = (JobKey, u64, u64, usize, u64, u64, u64, u64, bool);

fn step_records(events: &[TrainEvent]) -> Vec<StepRecord> {
    steps(events)
        .iter()
        .map(|s| {
            (
                s.key,
                s.step,
                s.run_step,
                s.epoch,
                s.loss.to_bits(),
                s.lr.to_bits(),
                s.temperature.to_bits(),
                s.alpha.to_bits(),
                s.has_teacher,
            )
        })
        .collect()
}

/// A GPU reads loss and hits every few steps (one sync per read): every step is still
/// reported, in order, with the same numbers, and every evaluation and replacement
/// is the same.
#[test]
fn reading_back_every_few_steps_reports_the_same_steps_and_numbers() {
    let preset = tiny(r#""conventional", "self""#, 2, "");
    let loaded = load_data(&preset).unwrap();
    let each = run_events_reading(&preset, PreparedData::new(loaded.clone(), &preset), None);
    let batched = run_events_reading(&preset, PreparedData::new(loaded, &preset), Some(5));
    let plan = |events: &[TrainEvent]| {
        events
            .iter()
            .find_map(|e| match e {
                TrainEvent::Plan(plan) => Some(plan.clone()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(plan(&each).read_every, 1, "the CPU reads every step");
    assert_eq!(plan(&batched).read_every, 5);
    // Reads of 5 straddle epochs and evaluations.
    assert_ne!(plan(&each).steps_per_epoch % 5, 0);
    let records = step_records(&each);
    assert_eq!(records.len() as u64, plan(&each).total_steps());
    assert_eq!(records, step_records(&batched));
    assert_eq!(trajectory(&each), trajectory(&batched));
    let train_acc =
        |events: &[TrainEvent]| -> Vec<f64> { evals(events).iter().map(|e| e.train_acc).collect() };
    assert_eq!(train_acc(&each), train_acc(&batched));
    let summaries = |events: &[TrainEvent]| -> Vec<String> {
        finished(events).iter().map(generation_numbers).collect()
    };
    assert_eq!(summaries(&each), summaries(&batched));
    // An evaluation comes after every step it covers, as when reading each step.
    let order = |events: &[TrainEvent]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::Step(s) => Some(format!("s{}", s.step)),
                TrainEvent::Eval(m) => Some(format!("e{}", m.step)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(order(&each), order(&batched));
}

#[test]
fn every_method_sees_the_same_initialisation_and_data_order() {
    // Until self-distillation's first replacement (after epoch 1), all three are CE on
    // the same data from the same weights, so their first-epoch losses coincide.
    let events = run_preset(&tiny(r#""baseline", "conventional", "self""#, 2, ""));
    let per_method = |m: Method| -> Vec<f64> {
        steps(&events)
            .iter()
            .filter(|s| s.key == key(m, 1) && s.epoch == 1)
            .map(|s| s.loss)
            .collect()
    };
    let base = per_method(Method::Baseline);
    assert!(base.len() > 5);
    assert_eq!(base, per_method(Method::Conventional));
    assert_eq!(base, per_method(Method::SelfDistill));
}

#[test]
fn test_labels_never_influence_training() {
    let preset = tiny(r#""conventional", "self""#, 2, "");
    let loaded = load_data(&preset).unwrap();
    let mut permuted = loaded.clone();
    permuted.test.labels.rotate_left(7);
    for l in permuted.test.labels.iter_mut().step_by(3) {
        *l = (*l + 1) % 10;
    }
    assert_ne!(loaded.test.labels, permuted.test.labels);
    let a = run_events(&preset, PreparedData::new(loaded, &preset));
    let b = run_events(&preset, PreparedData::new(permuted, &preset));
    let (sa, ea) = trajectory(&a);
    let (sb, eb) = trajectory(&b);
    assert_eq!(
        sa, sb,
        "training losses changed when only test labels changed"
    );
    let val = |e: &EvalNumbers| e.iter().map(|x| (x.0, x.1, x.2)).collect::<Vec<_>>();
    assert_eq!(val(&ea), val(&eb));
    // The test numbers do see the new labels (they are reported, not ignored).
    assert_ne!(
        ea.iter().map(|x| x.3).collect::<Vec<_>>(),
        eb.iter().map(|x| x.3).collect::<Vec<_>>()
    );
    // Teacher replacements (decisions) are identical.
    let repl = |ev: &[TrainEvent]| matching!(ev, TrainEvent::TeacherReplaced { key, step, .. } => (*key, *step));
    assert_eq!(repl(&a), repl(&b));
}

#[test]
fn conventional_generation_k_is_taught_by_generation_k_minus_1() {
    for (choice, source) in [
        ("final", TeacherSource::PreviousFinal),
        ("best", TeacherSource::PreviousBest),
    ] {
        // A high constant lr and frequent evaluations make the last evaluation worse
        // than the best one, so final != best.
        let mut preset = tiny(
            r#""conventional""#,
            5,
            "schedule = \"constant\"\neval_every = 2\n",
        )
        .with_teacher(choice);
        preset.train.lr = 0.3;
        let events = run_preset(&preset);
        let gens = finished(&events);
        assert_eq!(gens.len(), 5);
        assert_eq!(
            started(&events, key(Method::Conventional, 1)),
            (TeacherSource::None, None)
        );
        let mut distinguishes = false;
        for k in 2..=5 {
            let prev = &gens[k - 2];
            let (src, acc) = started(&events, key(Method::Conventional, k));
            assert_eq!(src, source);
            // The teacher is re-evaluated at the start: its accuracy identifies it.
            let want = if choice == "final" {
                prev.final_val_acc
            } else {
                prev.best_val_acc
            };
            assert_eq!(acc, Some(want), "{choice}: generation {k}");
            distinguishes |= prev.final_val_acc != prev.best_val_acc;
        }
        assert!(
            distinguishes,
            "{choice}: test setup must make final and best differ: {:?}",
            gens.iter()
                .map(|g| (g.final_val_acc, g.best_val_acc))
                .collect::<Vec<_>>()
        );
        // Generation 2 trains with a teacher: its first-step loss differs from gen 1's
        // CE loss at the same (seeded) step.
        let first = |g| {
            steps(&events)
                .into_iter()
                .find(|s| s.key == key(Method::Conventional, g))
                .unwrap()
        };
        assert!(!first(1).has_teacher && first(2).has_teacher);
    }
}

trait WithTeacher {
    fn with_teacher(self, choice: &str) -> Preset;
}
impl WithTeacher for Preset {
    fn with_teacher(mut self, choice: &str) -> Preset {
        self.distill.teacher = match choice {
            "final" => selfdistill::preset::TeacherChoice::Final,
            _ => selfdistill::preset::TeacherChoice::Best,
        };
        self
    }
}

#[test]
fn self_distillation_replaces_the_teacher_exactly_when_validation_improves() {
    let preset = tiny(r#""self""#, 2, "eval_every = 7\n");
    let events = run_preset(&preset);
    let mut replacements = 0;
    for g in 1..=2 {
        let k = key(Method::SelfDistill, g);
        let (_, initial) = started(&events, k);
        assert_eq!(
            initial.is_some(),
            g > 1,
            "generation 2 inherits generation 1's best network"
        );
        let mut threshold = initial;
        let job: Vec<&TrainEvent> = events
            .iter()
            .filter(|e| match e {
                TrainEvent::Eval(m) => m.key == k,
                TrainEvent::TeacherReplaced { key, .. } => *key == k,
                _ => false,
            })
            .collect();
        for (i, ev) in job.iter().enumerate() {
            let TrainEvent::Eval(m) = ev else { continue };
            let next = job.get(i + 1);
            let improved = threshold.is_none_or(|t| m.val_acc > t);
            match next {
                Some(TrainEvent::TeacherReplaced {
                    step,
                    old_acc,
                    new_acc,
                    ..
                }) => {
                    assert!(improved, "replaced without improvement at step {}", m.step);
                    assert_eq!((*step, *old_acc, *new_acc), (m.step, threshold, m.val_acc));
                    threshold = Some(m.val_acc);
                    replacements += 1;
                }
                _ => assert!(
                    !improved,
                    "improved to {} at step {} but no replacement",
                    m.val_acc, m.step
                ),
            }
        }
    }
    assert!(replacements >= 2);
    // Steps after the first replacement train with a teacher, those before without.
    let s = steps(&events);
    assert!(
        !s.iter()
            .find(|x| x.key == key(Method::SelfDistill, 1))
            .unwrap()
            .has_teacher
    );
    assert!(s
        .iter()
        .filter(|x| x.key == key(Method::SelfDistill, 1) && x.step > 7)
        .all(|x| x.has_teacher));
    let gens = finished(&events);
    assert_eq!(
        gens.iter().map(|g| g.teacher_replacements).sum::<usize>(),
        replacements
    );
}

#[test]
fn controls_take_effect_at_the_next_step_and_are_echoed() {
    controls_run(None);
}

/// With loss read back every 3 steps (as on a GPU), a control still finds every step run
/// before it reported, and a pause or stop leaves none unreported.
#[test]
fn controls_act_the_same_when_the_loss_is_read_every_few_steps() {
    controls_run(Some(3));
}

fn controls_run(read_every: Option<usize>) {
    let mut preset = tiny(r#""self""#, 1, "");
    preset.train.epochs = 4;
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        runs_dir: Some(dir.path().to_path_buf()),
        record: true,
        read_every,
        ..Default::default()
    };
    let handle = prepare(preset, &opts).unwrap();
    let handle = handle.spawn();
    let mut log: Vec<TrainEvent> = Vec::new();
    let mut sent_t = false;
    let mut paused_at = None;
    let recv = |log: &mut Vec<TrainEvent>| {
        let ev = handle
            .events
            .recv_timeout(Duration::from_secs(60))
            .expect("trainer alive");
        log.push(ev.clone());
        ev
    };
    // Change T after step 3, pause after step 10, then check nothing runs while paused.
    loop {
        match recv(&mut log) {
            TrainEvent::Step(s) if s.step >= 3 && !sent_t => {
                handle.controls.send(Control::SetTemperature(2.5)).unwrap();
                handle.controls.send(Control::SetAlpha(0.25)).unwrap();
                handle
                    .controls
                    .send(Control::SetTemperature(1000.0))
                    .unwrap(); // out of range
                sent_t = true;
            }
            TrainEvent::Step(s) if s.step >= 10 && paused_at.is_none() => {
                handle.controls.send(Control::Pause).unwrap();
                paused_at = Some(s.step);
            }
            TrainEvent::ControlApplied {
                control: Control::Pause,
                step,
                ..
            } => {
                // Every step that ran before the pause is reported before its echo.
                let last = steps(log.as_slice()).last().map(|s| s.step);
                assert_eq!(last, Some(step - 1), "steps reported before the pause");
                // While paused no step runs.
                let quiet = handle.events.recv_timeout(Duration::from_millis(700));
                assert!(quiet.is_err(), "event while paused: {quiet:?}");
                handle.controls.send(Control::SetTemperature(3.0)).unwrap();
                handle.controls.send(Control::Resume).unwrap();
                break;
            }
            TrainEvent::Finished { .. } => panic!("finished before the pause"),
            _ => {}
        }
    }
    // Stop after a few more steps.
    loop {
        match recv(&mut log) {
            TrainEvent::Step(s) if s.step >= paused_at.unwrap() + 5 => {
                handle.controls.send(Control::Stop).unwrap();
                break;
            }
            TrainEvent::Finished { .. } => panic!("finished before the stop"),
            _ => {}
        }
    }
    loop {
        if let TrainEvent::Finished { status, .. } = recv(&mut log) {
            assert_eq!(status, RunStatus::Stopped);
            break;
        }
    }
    assert_eq!(handle.thread.join().unwrap(), RunStatus::Stopped);

    let applied: Vec<(u64, Control)> =
        matching!(log, TrainEvent::ControlApplied { step, control, .. } => (*step, *control));
    let kinds: Vec<Control> = applied.iter().map(|a| a.1).collect();
    assert_eq!(
        kinds,
        vec![
            Control::SetTemperature(2.5),
            Control::SetAlpha(0.25),
            Control::Pause,
            Control::SetTemperature(3.0),
            Control::Resume,
            Control::Stop
        ]
    );
    assert!(log
        .iter()
        .any(|e| matches!(e, TrainEvent::Log { message } if message.contains("ignored"))));
    let all_steps = steps(&log);
    // Every step before the echoed step ran under the old value, every one from it on
    // under the new one.
    let t_step = applied[0].0;
    for s in &all_steps {
        let want_t = if s.step < t_step {
            4.0
        } else if s.step < applied[3].0 {
            2.5
        } else {
            3.0
        };
        assert_eq!(s.temperature, want_t, "step {}", s.step);
        assert_eq!(
            s.alpha,
            if s.step < applied[1].0 { 0.5 } else { 0.25 },
            "step {}",
            s.step
        );
    }
    // Pause, T change while paused and resume all take effect at the same next step.
    assert_eq!(applied[2].0, applied[4].0);
    assert!(
        all_steps.iter().any(|s| s.step == applied[2].0),
        "training resumed at the echoed step"
    );
    // Stop: the step named in the echo never ran; the generation ended stopped.
    let stop_step = applied[5].0;
    assert_eq!(all_steps.last().unwrap().step, stop_step - 1);
    let g = finished(&log);
    assert_eq!(g.len(), 1);
    assert!(g[0].stopped);
    assert_eq!(g[0].steps, stop_step - 1);
    // Checkpoint and summary written on a graceful stop.
    let run_dir = handle.run_dir.unwrap();
    assert!(store::checkpoint_path(&run_dir, g[0].key, "final").is_file());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join(store::SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(summary["status"], "stopped");
}

#[test]
fn run_folder_holds_preset_events_metrics_summary_and_loadable_checkpoints() {
    let preset = tiny(r#""baseline", "conventional""#, 2, "");
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        runs_dir: Some(dir.path().to_path_buf()),
        record: true,
        ..Default::default()
    };
    let prepared = prepare(preset.clone(), &opts).unwrap();
    let data = prepared.data.clone();
    let handle = prepared.spawn();
    let live: Vec<TrainEvent> = handle.events.iter().collect();
    assert_eq!(handle.thread.join().unwrap(), RunStatus::Finished);
    let run_dir = handle.run_dir.unwrap();
    assert!(run_dir.starts_with(dir.path()));

    let saved = Preset::from_toml(
        &std::fs::read_to_string(run_dir.join(store::PRESET_FILE)).unwrap(),
        "saved",
    )
    .unwrap();
    assert_eq!(saved, preset);
    let logged = store::read_events(&run_dir).unwrap();
    assert_eq!(
        evals(&logged),
        evals(&live),
        "every evaluation is in the log"
    );
    assert!(
        steps(&logged).len() >= steps(&live).len(),
        "the log holds every step"
    );
    let csv = std::fs::read_to_string(run_dir.join(store::METRICS_FILE)).unwrap();
    assert_eq!(csv.lines().count(), 1 + evals(&live).len());
    assert!(csv.starts_with("seed,method,generation,step,epoch"));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join(store::SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(summary["status"], "finished");
    assert_eq!(summary["generations"].as_array().unwrap().len(), 3);

    // Checkpoints reload and reproduce the recorded validation accuracy.
    let device = FlexDevice;
    let spec = data.model_spec(&preset);
    for g in finished(&live) {
        for (which, want) in [("final", g.final_val_acc), ("best", g.best_val_acc)] {
            let path = store::checkpoint_path(&run_dir, g.key, which);
            let net = store::load_checkpoint::<Flex>(&path, spec.init(&device), &device).unwrap();
            let (mut x, mut y) = (Vec::new(), Vec::new());
            data::fill_batch(
                &data.loaded.train,
                &data.split.val,
                &data.norm,
                None,
                &mut x,
                &mut y,
            );
            let n = data.split.val.len();
            let xs = Tensor::<Flex, 4>::from_data(TensorData::new(x, [n, 1, 12, 12]), &device);
            let ys = Tensor::<Flex, 1, Int>::from_data(TensorData::new(y, [n]), &device);
            let acc = correct_count(net.forward(xs), ys)
                .into_scalar()
                .elem::<i64>() as f64
                / n as f64;
            assert!(
                (acc - want).abs() < 1e-9,
                "{} {which}: {acc} vs {want}",
                g.key
            );
        }
    }
    // The listing finds it.
    let runs = store::list_runs(dir.path());
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].summary.generations.len(), 3);
}

#[test]
fn quick_preset_ends_well_above_chance_for_every_method() {
    let preset = selfdistill::preset::shipped("quick").unwrap();
    let events = run_preset(&preset);
    let gens = finished(&events);
    assert_eq!(
        gens.len(),
        5,
        "baseline + 2 conventional + 2 self generations"
    );
    for g in &gens {
        assert!(
            g.best_val_acc > 0.5,
            "{}: val {:.3} (chance is 0.1)",
            g.key,
            g.best_val_acc
        );
        assert!(
            g.test_acc_at_best > 0.5,
            "{}: test {:.3}",
            g.key,
            g.test_acc_at_best
        );
    }
    for m in Method::ALL {
        assert!(gens.iter().any(|g| g.key.method == m), "{m} missing");
    }
}

#[test]
fn a_diverging_method_is_marked_and_the_other_methods_go_on() {
    diverging_run(None);
}

/// Read back every 4 steps (as on a GPU), the NaN of step 5 arrives with steps 6-8; it is
/// still step 5 that is named, and steps 1-4 are reported.
#[test]
fn a_divergence_found_in_a_batch_of_reads_names_its_own_step() {
    diverging_run(Some(4));
}

fn diverging_run(read_every: Option<usize>) {
    // The loss of run step 5 reads as NaN (as a real blow-up would).
    let preset = tiny(r#""conventional", "self""#, 2, "");
    let data = PreparedData::new(load_data(&preset).unwrap(), &preset);
    let (tx, rx) = event_channel_with_capacity(usize::MAX);
    let (_controls, control_rx) = crossbeam_channel::unbounded();
    let run = PreparedRun {
        preset: preset.clone(),
        data: Arc::new(data),
        writer: None,
        resume: None,
        faults: selfdistill::train::Faults {
            nan_at_step: Some(5),
            ..Default::default()
        },
        read_every,
    };
    assert_eq!(run.run(tx, control_rx), RunStatus::Finished);
    let events: Vec<TrainEvent> = rx.try_iter().collect();
    let diverged: Vec<(JobKey, u64)> = matching!(events, TrainEvent::Diverged { key, step, loss } => {
        assert!(loss.is_nan());
        (*key, *step)
    });
    assert_eq!(diverged, vec![(key(Method::Conventional, 1), 5)]);
    let reported: Vec<u64> = steps(&events)
        .iter()
        .filter(|s| s.key == key(Method::Conventional, 1))
        .map(|s| s.step)
        .collect();
    assert_eq!(reported, [1, 2, 3, 4]);
    // Its later generation is skipped; the other method runs all its generations.
    let gens: Vec<JobKey> = finished(&events).iter().map(|g| g.key).collect();
    assert_eq!(
        gens,
        vec![key(Method::SelfDistill, 1), key(Method::SelfDistill, 2)]
    );
    let summary = selfdistill::train::summary::RunSummary::from_events(&events);
    assert_eq!(summary.diverged, diverged);
    assert_eq!(summary.status, Some(RunStatus::Finished));
    // The headless output says so.
    let mut printer = selfdistill::headless::HeadlessPrinter::default();
    let text: Vec<String> = events.iter().flat_map(|e| printer.feed(e)).collect();
    assert!(
        text.iter().any(|l| l.contains("DIVERGED at step 5")),
        "{text:?}"
    );
}

#[test]
fn another_process_controls_the_run_through_its_folder_and_follows_its_log() {
    use selfdistill::store::follow::{append_control, EventFollower};
    // Far longer than the test needs (thousands of steps): the trainer's process polls
    // the control file every 150 ms, and a run that ended first (6 epochs of this tiny
    // network take ~0.1 s on a fast machine) would never see the controls. The test
    // ends it with a Stop sent the same way.
    let mut preset = tiny(r#""self""#, 1, "");
    preset.train.epochs = 400;
    let dir = tempfile::tempdir().unwrap();
    let opts = RunOptions {
        runs_dir: Some(dir.path().to_path_buf()),
        record: true,
        ..Default::default()
    };
    let handle = prepare(preset, &opts).unwrap().spawn();
    let run_dir = handle.run_dir.clone().unwrap();
    let mut follower = EventFollower::new(&run_dir);
    let mut followed: Vec<TrainEvent> = Vec::new();
    let mut live: Vec<TrainEvent> = Vec::new();
    let mut sent = false;
    let mut resumed = false;
    loop {
        let ev = handle
            .events
            .recv_timeout(Duration::from_secs(60))
            .expect("trainer alive");
        live.push(ev.clone());
        match ev {
            TrainEvent::Step(s) if s.step >= 4 && !sent => {
                append_control(&run_dir, Control::Pause).unwrap();
                append_control(&run_dir, Control::SetTemperature(1.5)).unwrap();
                sent = true;
            }
            TrainEvent::ControlApplied {
                control: Control::SetTemperature(t),
                ..
            } if !resumed => {
                assert_eq!(t, 1.5);
                append_control(&run_dir, Control::Resume).unwrap();
                resumed = true;
            }
            TrainEvent::ControlApplied {
                control: Control::Resume,
                ..
            } => append_control(&run_dir, Control::Stop).unwrap(),
            TrainEvent::Finished { status, .. } => {
                assert_eq!(status, RunStatus::Stopped);
                break;
            }
            _ => {}
        }
        followed.extend(follower.poll().unwrap());
    }
    handle.thread.join().unwrap();
    followed.extend(follower.poll().unwrap());
    let controls: Vec<Control> =
        matching!(live, TrainEvent::ControlApplied { control, .. } => *control);
    assert_eq!(
        controls,
        vec![
            Control::Pause,
            Control::SetTemperature(1.5),
            Control::Resume,
            Control::Stop
        ]
    );
    // The follower saw every essential event the live consumer saw, in order.
    let essential = |v: &[TrainEvent]| -> Vec<String> {
        v.iter()
            .filter(|e| e.is_essential())
            .map(|e| serde_json::to_string(e).unwrap())
            .collect()
    };
    assert_eq!(essential(&followed), essential(&live));
}

/// Without augmentation the trainer serves a fixed teacher's logits from its cache after
/// the first epoch (Born-Again generation 2), and after each self-distillation
/// replacement it runs the new teacher until every sample has been seen; with
/// augmentation it always runs the teacher. (That the cached logits are the bits of a
/// forward pass is a unit test of `TeacherCache`.)
#[test]
fn teacher_logits_come_from_the_cache_only_when_inputs_do_not_change() {
    let preset = tiny(r#""conventional", "self""#, 2, "");
    let events = run_preset(&preset);
    let per_epoch = |g: &GenerationSummary| g.steps / 3;
    let counts = |g: &GenerationSummary| (g.teacher_cached_batches, g.teacher_forward_batches);
    let gens = finished(&events);
    let gen = |m: Method, n: usize| gens.iter().find(|g| g.key == key(m, n)).unwrap();
    assert_eq!(counts(gen(Method::Conventional, 1)), (0, 0), "no teacher");
    let born_again = gen(Method::Conventional, 2);
    assert_eq!(
        counts(born_again),
        (
            born_again.steps - per_epoch(born_again),
            per_epoch(born_again)
        )
    );
    for n in [1, 2] {
        let g = gen(Method::SelfDistill, n);
        let (cached, forwards) = counts(g);
        // Every step after the first teacher has one; each replacement costs at most an
        // epoch of forward passes.
        assert!(forwards >= per_epoch(g), "{n}: {forwards}");
        assert!(
            forwards <= per_epoch(g) * (g.teacher_replacements as u64 + 1),
            "{n}: {forwards} forwards, {} replacements",
            g.teacher_replacements
        );
        assert!(cached + forwards <= g.steps, "{n}");
    }
    let mut augmented = preset.clone();
    augmented.data.augment = Some(true);
    let events = run_preset(&augmented);
    let born_again = finished(&events)
        .into_iter()
        .find(|g| g.key == key(Method::Conventional, 2))
        .unwrap();
    assert_eq!(counts(&born_again), (0, born_again.steps));
}
