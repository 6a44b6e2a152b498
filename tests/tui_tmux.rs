//! End to end: the real binary in tmux, driven by `send-keys`, read by `capture-pane`.
//! Needs `tmux` (CI installs it: `apt-get install tmux`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_selfdistill");

/// A private tmux server, killed on drop (also when the test fails).
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(env: &[(&str, &Path)]) -> Tmux {
        let version = Command::new("tmux").arg("-V").output();
        if !version.is_ok_and(|o| o.status.success()) {
            panic!("tmux is not installed; this end-to-end test needs it: apt-get install tmux");
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let tmux = Tmux {
            socket: format!("selfdistill-test-{}-{nanos}", std::process::id()),
        };
        let mut shell = String::from("env HISTFILE=/dev/null PS1='$ ' TERM=xterm-256color");
        for (k, v) in env {
            shell.push_str(&format!(" {k}='{}'", v.display()));
        }
        shell.push_str(" bash --norc --noprofile");
        let out = tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            &shell,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running tmux")
    }

    /// Sends literal text (no key-name lookup).
    fn type_text(&self, text: &str) {
        assert!(self
            .cmd(&["send-keys", "-t", "t", "-l", text])
            .status
            .success());
    }

    /// Sends a named key (Enter, Escape, ...).
    fn key(&self, name: &str) {
        assert!(self.cmd(&["send-keys", "-t", "t", name]).status.success());
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Polls the pane until `ok` holds; fails with the last screen.
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The step counter of the headline ("step 57/240").
fn step_of(screen: &str) -> Option<u64> {
    let line = screen
        .lines()
        .find(|l| l.contains(" ep ") && l.contains("step "))?;
    let rest = line.split("step ").nth(1)?;
    rest.split('/').next()?.trim().parse().ok()
}

#[test]
fn menu_start_pause_temperature_resume_quit_in_tmux() {
    let runs = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(&[
        ("SELFDISTILL_RUNS_DIR", runs.path()),
        ("SELFDISTILL_CONFIG_DIR", config.path()),
    ]);
    tmux.wait_for("the shell prompt", Duration::from_secs(20), |s| {
        s.contains('$')
    });

    // Open the menu.
    tmux.type_text(BIN);
    tmux.key("Enter");
    let s = tmux.wait_for("the preset menu", Duration::from_secs(30), |s| {
        s.contains("Presets") && s.contains("quick") && s.contains("Details")
    });
    assert!(s.contains("Past runs"), "{s}");

    // Start `quick` (highlighted first) and wait for training steps.
    tmux.key("Enter");
    let s = tmux.wait_for("training steps", Duration::from_secs(180), |s| {
        step_of(s).is_some_and(|n| n >= 3)
    });
    assert!(
        s.contains("Train loss") && s.contains("Validation accuracy"),
        "{s}"
    );

    // Pause: the badge shows and the step counter stops.
    tmux.type_text("p");
    let s = tmux.wait_for("the PAUSED badge", Duration::from_secs(60), |s| {
        s.contains("PAUSED")
    });
    let paused_at = step_of(&s).expect("step counter");
    std::thread::sleep(Duration::from_millis(2500));
    let s = tmux.screen();
    assert!(s.contains("PAUSED"), "{s}");
    assert_eq!(
        step_of(&s),
        Some(paused_at),
        "steps went on while paused:\n{s}"
    );

    // Temperature up: the trainer confirms, the value, a log line and a marker series show.
    tmux.type_text("+");
    let s = tmux.wait_for("the new temperature", Duration::from_secs(30), |s| {
        s.contains("T 4.5") && s.contains("T=4.5 from step") && s.contains("T change")
    });
    assert!(s.contains("PAUSED"), "{s}");

    // Resume: the badge goes and steps move again.
    tmux.type_text("p");
    tmux.wait_for("training to resume", Duration::from_secs(120), |s| {
        !s.contains("PAUSED") && step_of(s).is_some_and(|n| n != paused_at)
    });

    // Quit asks first while the run goes on; yes stops gracefully and leaves.
    tmux.type_text("q");
    tmux.wait_for("the quit question", Duration::from_secs(30), |s| {
        s.contains("Stop it and quit?")
    });
    tmux.type_text("y");
    tmux.wait_for("the dashboard to close", Duration::from_secs(120), |s| {
        !s.contains("Presets") && !s.contains("Train loss")
    });

    // The shell works again (raw mode and alternate screen undone).
    tmux.type_text("echo done-$((40+2))");
    tmux.key("Enter");
    tmux.wait_for("the shell to answer", Duration::from_secs(30), |s| {
        s.contains("done-42")
    });

    // The run stopped gracefully: its folder records the stop.
    let dirs: Vec<_> = std::fs::read_dir(runs.path()).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "one run folder");
    let events = std::fs::read_to_string(dirs[0].path().join("events.jsonl")).unwrap();
    assert!(
        events.contains("\"stopped\""),
        "the run ended with a graceful stop"
    );
    assert!(
        events.contains("T=4.5") || events.contains("set-temperature"),
        "the control is recorded"
    );
}

#[test]
fn not_a_terminal_points_at_headless() {
    let out = Command::new(BIN).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no garbage on stdout");
    assert!(
        err.contains("not a terminal") && err.contains("--headless"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["run", "--preset", "quick"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("--headless"), "{err}");
}

/// A background process, killed on drop (also when the test fails).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A synthetic preset: about 20 s on an idle 2-core machine, longer under load.
const WATCH_PRESET: &str = r#"
name = "watch-e2e"
description = "tiny synthetic run for the watch end-to-end test"
backend = "cpu"

[data]
dataset = "synthetic"
val_fraction = 0.15

[data.synthetic]
train_size = 2000
test_size = 300
image_size = 16
seed = 7
label_noise = 0.05

[model]
arch = "cnn"
width = 8

[train]
epochs = 10
batch_size = 64
lr = 0.1
momentum = 0.9
weight_decay = 5e-4
schedule = "cosine"
eval_every = 0

[distill]
temperature = 4.0
alpha = 0.5
teacher = "final"

[run]
methods = ["baseline", "conventional", "self"]
generations = 2
seeds = [1]
"#;

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn watch_follows_and_steers_a_headless_run_then_detaches() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let config = tmp.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let preset = tmp.path().join("watch-e2e.toml");
    std::fs::write(&preset, WATCH_PRESET).unwrap();
    let out_path = tmp.path().join("headless.out");

    // The writer: a headless run in the background, its output in a file.
    let mut headless = ChildGuard(
        Command::new(BIN)
            .arg("run")
            .arg("--preset")
            .arg(&preset)
            .arg("--headless")
            .arg("--runs-dir")
            .arg(&runs)
            .env("SELFDISTILL_CONFIG_DIR", &config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the headless run"),
    );
    let out = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let run_dir: PathBuf = wait_until("the run folder", Duration::from_secs(120), || {
        std::fs::read_dir(&runs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("events.jsonl").is_file())
    });
    let run_id = run_dir.file_name().unwrap().to_string_lossy().into_owned();

    // The watcher, in tmux.
    let tmux = Tmux::start(&[("SELFDISTILL_CONFIG_DIR", config.as_path())]);
    tmux.wait_for("the shell prompt", Duration::from_secs(20), |s| {
        s.contains('$')
    });
    tmux.type_text(&format!(
        "{BIN} watch {run_id} --runs-dir {}",
        runs.display()
    ));
    tmux.key("Enter");
    let s = tmux.wait_for("the watched run's steps", Duration::from_secs(120), |s| {
        s.contains(&format!("watching {run_id}")) && step_of(s).is_some()
    });
    assert!(s.contains("writer: live"), "{s}");
    assert!(
        s.contains("Train loss") && s.contains("Validation accuracy"),
        "{s}"
    );
    let first = step_of(&s).unwrap();
    tmux.wait_for(
        "the step counter to advance",
        Duration::from_secs(120),
        |s| step_of(s).is_some_and(|n| n != first),
    );

    // Pause through the control file: the writer applies it and the log says so.
    tmux.type_text("p");
    let s = tmux.wait_for("the PAUSED badge", Duration::from_secs(60), |s| {
        s.contains("PAUSED")
    });
    let paused_at = step_of(&s).expect("step counter");
    let line = wait_until(
        "the headless run to apply the pause",
        Duration::from_secs(30),
        || {
            out()
                .lines()
                .find(|l| l.contains("control applied at step") && l.ends_with(": pause"))
                .map(str::to_string)
        },
    );
    assert!(
        headless.0.try_wait().unwrap().is_none(),
        "paused, the run must still be going"
    );
    std::thread::sleep(Duration::from_millis(2000));
    let s = tmux.screen();
    assert!(s.contains("PAUSED"), "{s}");
    assert_eq!(
        step_of(&s),
        Some(paused_at),
        "steps went on while paused:\n{s}\n{line}"
    );

    // Resume: the badge goes, steps move, the writer logs it.
    tmux.type_text("p");
    tmux.wait_for("training to resume", Duration::from_secs(120), |s| {
        !s.contains("PAUSED") && step_of(s).is_some_and(|n| n != paused_at)
    });
    wait_until(
        "the headless run to apply the resume",
        Duration::from_secs(30),
        || {
            out()
                .lines()
                .any(|l| l.contains("control applied at step") && l.ends_with(": resume"))
                .then_some(())
        },
    );

    // q detaches at once: no question, no stop.
    tmux.type_text("q");
    tmux.wait_for("the watcher to close", Duration::from_secs(30), |s| {
        !s.contains("watching")
            && !s.contains("Train loss")
            && s.lines().rfind(|l| !l.trim().is_empty()).map(str::trim) == Some("$")
    });
    tmux.type_text("echo done-$((40+2))");
    tmux.key("Enter");
    tmux.wait_for("the shell to answer", Duration::from_secs(30), |s| {
        s.contains("done-42")
    });

    // The headless run goes on and finishes by itself.
    let status = wait_until(
        "the headless run to finish",
        Duration::from_secs(600),
        || headless.0.try_wait().unwrap(),
    );
    let text = out();
    assert!(status.success(), "headless run failed: {status:?}\n{text}");
    assert!(text.contains("run finished"), "{text}");
    assert!(
        !text.contains(": stop"),
        "the watcher sent no stop:\n{text}"
    );
    let summary = std::fs::read_to_string(run_dir.join("summary.json")).unwrap();
    assert!(summary.contains("\"finished\""), "{summary}");

    // Not on a terminal: pointed at the commands for scripts.
    let out = Command::new(BIN)
        .args(["watch", &run_id, "--runs-dir"])
        .arg(&runs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty(), "no garbage on stdout");
    assert!(
        err.contains("not a terminal")
            && err.contains("selfdistill runs")
            && err.contains("export"),
        "{err}"
    );
}

#[test]
fn trainer_panic_shows_an_error_screen_and_the_terminal_comes_back() {
    let runs = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let tmux = Tmux::start(&[
        ("SELFDISTILL_RUNS_DIR", runs.path()),
        ("SELFDISTILL_CONFIG_DIR", config.path()),
    ]);
    tmux.wait_for("the shell prompt", Duration::from_secs(20), |s| {
        s.contains('$')
    });
    tmux.type_text(&format!(
        "{}=30 {BIN} run --preset quick",
        selfdistill::train::FAULT_PANIC_ENV
    ));
    tmux.key("Enter");
    let s = tmux.wait_for("the error screen", Duration::from_secs(90), |s| {
        s.contains("fault injected")
    });
    assert!(s.contains("panicked"), "{s}");
    tmux.type_text("q");
    // Whatever the dashboard asks on the way out, answer yes.
    std::thread::sleep(Duration::from_millis(500));
    if tmux.screen().contains("y yes") {
        tmux.type_text("y");
    }
    tmux.wait_for("the shell prompt back", Duration::from_secs(30), |s| {
        !s.contains("fault injected")
    });
    tmux.type_text("echo done-$((40+2))");
    tmux.key("Enter");
    tmux.wait_for("the shell to answer", Duration::from_secs(20), |s| {
        s.contains("done-42")
    });
    let dirs: Vec<_> = std::fs::read_dir(runs.path()).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "one run folder");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["status"], "failed");
}
