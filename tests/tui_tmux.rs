//! End to end: the real binary in tmux, driven by `send-keys`, read by `capture-pane`.
//! Needs `tmux` (CI installs it: `apt-get install tmux`).

use std::path::Path;
use std::process::{Command, Output};
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
