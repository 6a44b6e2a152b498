//! Fault tests: kill -9 at random moments, injected panics, a full disk, an unwritable
//! runs directory, Ctrl-C. Every time the run folder stays readable and `resume`
//! finishes with the numbers of a run that was never interrupted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use selfdistill::store;
use selfdistill::train::events::{RunStatus, TrainEvent};
use selfdistill::train::summary::RunSummary;

mod common;
use common::generation_numbers;

const BIN: &str = env!("CARGO_BIN_EXE_selfdistill");

/// Small but complete: two methods x two generations, augmentation on (so the RNG
/// position must be restored), evaluation (and so a resume point) every 5 steps.
const MINI: &str = r#"
name = "mini"
[data]
dataset = "synthetic"
val_fraction = 0.2
augment = true
[data.synthetic]
train_size = 600
test_size = 200
image_size = 12
seed = 3
[model]
arch = "cnn"
width = 4
[train]
epochs = 6
batch_size = 32
lr = 0.1
eval_every = 5
[run]
methods = ["conventional", "self"]
generations = 2
seeds = [5]
"#;

/// Steps per generation of MINI: 6 epochs x ceil(480 / 32).
const LAST_STEP: u64 = 96;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    preset: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let preset = root.join("mini.toml");
        std::fs::write(&preset, MINI).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            preset,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("SELFDISTILL_CONFIG_DIR", self.root.join("config"))
            .stdin(Stdio::null());
        c
    }

    fn run_args(&self, runs: &Path) -> Vec<String> {
        vec![
            "run".into(),
            "--preset".into(),
            self.preset.display().to_string(),
            "--headless".into(),
            "--runs-dir".into(),
            runs.display().to_string(),
        ]
    }

    fn run_to_end(&self, runs: &Path) -> PathBuf {
        let args = self.run_args(runs);
        let out = self
            .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        only_run(runs)
    }

    fn resume(&self, run: &Path) -> Command {
        self.cmd(&["resume", run.to_str().unwrap(), "--headless"])
    }
}

fn only_run(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The numbers a run ends with (no wall-clock times).
fn numbers(run: &Path) -> Vec<String> {
    let events = store::read_events(run).unwrap();
    let s = RunSummary::from_events(events.iter().filter(|e| e.is_essential()));
    assert_eq!(s.status, Some(RunStatus::Finished));
    let mut out: Vec<String> = s.generations.iter().map(generation_numbers).collect();
    out.sort();
    // A graceful stop adds one report-only evaluation off the schedule; compare the
    // scheduled ones (every 5 steps and the last).
    out.extend(
        s.evals
            .iter()
            .filter(|e| e.step % 5 == 0 || e.step == LAST_STEP)
            .map(|e| {
                format!(
                    "{} {} {} {} {}",
                    e.key, e.step, e.val_acc, e.test_acc, e.replaced
                )
            }),
    );
    out
}

/// Every command that reads a run folder can read this one.
fn assert_readable(f: &Fixture, runs: &Path, run: &Path) {
    store::read_events(run).unwrap_or_else(|e| panic!("events unreadable: {e:#}"));
    if run.join(store::SUMMARY_FILE).exists() {
        let _: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join(store::SUMMARY_FILE)).unwrap()).unwrap();
    }
    let out = f
        .cmd(&["runs", "--runs-dir", runs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("mini"));
}

/// Waits up to `after`; returns true when the process ended by itself, else kills it
/// with SIGKILL.
fn wait_or_kill(child: &mut Child, after: Duration) -> bool {
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    let _ = child.wait();
    false
}

#[test]
fn kill_9_at_random_points_then_resume_gives_the_uninterrupted_numbers() {
    let f = Fixture::new();
    let started = Instant::now();
    let reference = numbers(&f.run_to_end(&f.root.join("ref")));
    // Kill delays scale with this machine's speed: 5% to 25% of a whole run, so
    // several kills land before the run can finish.
    let whole = started.elapsed().as_millis() as u64;

    let runs = f.root.join("killed");
    let args = f.run_args(&runs);
    let mut child = f
        .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Deterministic "random" kill delays (xorshift).
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut kills = 0;
    let mut run: Option<PathBuf> = None;
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(whole / 20 + x % (whole / 5).max(1));
        if wait_or_kill(&mut child, delay) {
            break; // it finished before the kill
        }
        kills += 1;
        let dir = run.get_or_insert_with(|| only_run(&runs)).clone();
        assert_readable(&f, &runs, &dir);
        child = f
            .resume(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    }
    let dir = run.unwrap_or_else(|| only_run(&runs));
    // While the last process runs, a second writer is refused (the folder is locked).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store::is_live(&dir) && child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the last process never took the run"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = f.resume(&dir).output().unwrap();
    let second_err = String::from_utf8_lossy(&second.stderr);
    if !second.status.success() && !second_err.contains("already finished") {
        assert!(
            second_err.contains("another selfdistill process"),
            "{second_err}"
        );
    }
    // Let the last process finish, then make sure the run is complete. A kill can land
    // after the run recorded its end but before the process exited; the resume that
    // follows then rightly refuses ("already finished") and the checks below still hold.
    let last = child.wait_with_output().unwrap();
    let last_err = String::from_utf8_lossy(&last.stderr);
    assert!(
        last.status.success() || last_err.contains("already finished"),
        "{last_err}"
    );
    let out = f.resume(&dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already finished"), "{stderr}");
    assert_readable(&f, &runs, &dir);
    assert!(
        kills >= 3,
        "the test must really interrupt the run ({kills} kills)"
    );
    assert_eq!(
        numbers(&dir),
        reference,
        "resumed run differs from the uninterrupted one"
    );

    // Work lost per kill: steps a killed process had logged past the point it was
    // resumed from (steps still in its write buffer are not counted: a lower bound).
    let events = store::read_events(&dir).unwrap();
    let plan = events
        .iter()
        .find_map(|e| match e {
            TrainEvent::Plan(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    let mut lost = 0;
    let mut seen: std::collections::HashMap<_, u64> = Default::default();
    for e in &events {
        match e {
            TrainEvent::Step(s) => {
                seen.insert(s.key, s.step);
            }
            TrainEvent::Resumed { key, step } => {
                lost += seen.get(key).map_or(0, |s| s.saturating_sub(*step))
            }
            _ => {}
        }
    }
    eprintln!(
        "kill -9: {kills} kills; steps seen re-run: {lost}; each kill loses at most the steps since \
         the last evaluation (< 5 of {} per epoch), so at most {:.2} epochs in total",
        plan.steps_per_epoch,
        (kills * 4) as f64 / plan.steps_per_epoch as f64
    );
}

#[test]
fn injected_panic_is_reported_marks_the_run_failed_and_resume_finishes_it() {
    let f = Fixture::new();
    let reference = numbers(&f.run_to_end(&f.root.join("ref")));
    let runs = f.root.join("panic");
    let args = f.run_args(&runs);
    let out = f
        .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .env(selfdistill::train::FAULT_PANIC_ENV, "70")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("error: trainer panicked") && stdout.contains("fault injected"),
        "{stdout}"
    );
    assert!(stdout.contains("run failed"), "{stdout}");
    let dir = only_run(&runs);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(store::SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(summary["status"], "failed");
    assert!(summary["error"]
        .as_str()
        .unwrap()
        .contains("fault injected"));
    let out = f.resume(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(numbers(&dir), reference);
}

#[test]
fn ctrl_c_stops_gracefully_and_resume_finishes_with_the_same_numbers() {
    let f = Fixture::new();
    let reference = numbers(&f.run_to_end(&f.root.join("ref")));
    let runs = f.root.join("sigint");
    let args = f.run_args(&runs);
    let child = f
        .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way, then SIGINT.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let steps = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::read_to_string(e.ok()?.path().join(store::EVENTS_FILE)).ok())
            .map_or(0, |t| t.matches("\"event\":\"step\"").count());
        if steps >= 23 {
            break;
        }
        assert!(Instant::now() < deadline, "training did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("run stopped"), "{stdout}");
    let dir = only_run(&runs);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(store::SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(summary["status"], "stopped");
    let out = f.resume(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(numbers(&dir), reference);
    // A finished run is not resumed again.
    let out = f.resume(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already finished"));
}

#[test]
fn full_disk_fails_cleanly_and_keeps_what_was_recorded() {
    let f = Fixture::new();
    let runs = f.root.join("full");
    // The shell limits file size to 48 KiB (the event log outgrows it) and ignores
    // SIGXFSZ, so writes fail with EFBIG as they would on a full disk.
    let script = format!(
        "trap '' XFSZ; ulimit -f 48; exec {BIN} run --preset {} --headless --runs-dir {}",
        f.preset.display(),
        runs.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("SELFDISTILL_CONFIG_DIR", f.root.join("config"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("error: writing the run folder"), "{stdout}");
    let dir = only_run(&runs);
    let events = store::read_events(&dir).unwrap();
    assert!(
        events.iter().any(|e| matches!(e, TrainEvent::Eval(_))),
        "evaluations before the failure are kept"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(store::SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(summary["status"], "failed");
}

#[test]
fn unwritable_runs_directory_is_a_clear_error_before_training() {
    let f = Fixture::new();
    let blocker = f.root.join("a-file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let runs = blocker.join("runs");
    let args = f.run_args(&runs);
    let out = f
        .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot create the runs directory") && stderr.contains("a-file"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing trained");
}
