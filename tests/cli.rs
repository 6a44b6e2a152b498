//! The command line as a user meets it: exit codes and messages.

use std::process::Command;

fn selfdistill(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_selfdistill"))
        .args(args)
        .env("SELFDISTILL_RUNS_DIR", dir.path().join("runs"))
        .env("SELFDISTILL_CONFIG_DIR", dir.path().join("config"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_backend_without_the_feature_is_a_clear_error() {
    let (code, stdout, stderr) = selfdistill(&[
        "run",
        "--preset",
        "quick",
        "--headless",
        "--backend",
        "cuda",
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("backend `cuda` is not available in this build"),
        "{stderr}"
    );
    assert!(stderr.contains("--features cuda"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.is_empty(), "nothing trained: {stdout}");
}

#[test]
fn presets_lists_every_shipped_preset_with_a_description() {
    let (code, stdout, _) = selfdistill(&["presets"]);
    assert_eq!(code, 0);
    for (name, _) in selfdistill::preset::SHIPPED {
        assert!(stdout.contains(name), "{name} missing:\n{stdout}");
    }
    assert!(stdout.contains("baseline/conventional/self"), "{stdout}");
}

#[test]
fn bad_preset_file_names_file_key_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = selfdistill::preset::SHIPPED[0]
        .1
        .replacen("alpha = 0.5", "alpha = 2.0", 1);
    std::fs::write(&path, text).unwrap();
    let (code, _, stderr) = selfdistill(&["run", "--preset", path.to_str().unwrap(), "--headless"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("distill.alpha") && stderr.contains("0..=1"),
        "{stderr}"
    );
}

#[test]
fn missing_dataset_names_the_path_and_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = selfdistill(&[
        "run",
        "--preset",
        "cifar10-resnet20",
        "--headless",
        "--backend",
        "cpu",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains(dir.path().to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("binary version"), "{stderr}");
    let (code, _, stderr) = selfdistill(&[
        "data",
        "inspect",
        "mnist",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("train-images-idx3-ubyte") && stderr.contains("hint"),
        "{stderr}"
    );
}

#[test]
fn data_inspect_prints_split_sizes_and_class_counts() {
    let (code, stdout, stderr) =
        selfdistill(&["data", "inspect", "digits", "--val-fraction", "0.2"]);
    assert_eq!(code, 0, "{stderr}");
    // 1797 digits: 359 carved off as the fixed test split, 20% of the rest for validation.
    assert!(stdout.contains("test 359"), "{stdout}");
    let line = stdout.lines().find(|l| l.contains("validation")).unwrap();
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(nums[0] + nums[1], 1797 - 359, "{line}");
    // Ten class rows whose three counts add up to the digits' class sizes.
    let want = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180];
    for (c, total) in want.iter().enumerate() {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{c} ")))
            .unwrap();
        let n: Vec<usize> = row
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        let counts = &n[n.len() - 3..];
        assert_eq!(counts.iter().sum::<usize>(), *total, "{row}");
    }
}

#[test]
fn dashboard_refuses_a_non_terminal_stdout_with_a_pointer_to_headless() {
    let (code, stdout, stderr) = selfdistill(&["run", "--preset", "quick"]);
    assert_ne!(code, 0);
    assert!(
        stdout.is_empty(),
        "no escape sequences on a pipe: {stdout:?}"
    );
    assert!(
        stderr.contains("not a terminal") && stderr.contains("--headless"),
        "{stderr}"
    );
}

#[test]
fn headless_run_prints_evaluations_and_the_comparison_table() {
    let dir = tempfile::tempdir().unwrap();
    let preset = dir.path().join("mini.toml");
    let text = selfdistill::preset::SHIPPED[0]
        .1
        .replacen("name = \"quick\"", "name = \"mini\"", 1)
        .replacen("train_size = 4000", "train_size = 500", 1)
        .replacen("epochs = 12", "epochs = 2", 1);
    std::fs::write(&preset, text).unwrap();
    let runs = dir.path().join("runs");
    let (code, stdout, stderr) = selfdistill(&[
        "run",
        "--preset",
        preset.to_str().unwrap(),
        "--headless",
        "--seed",
        "9",
        "--runs-dir",
        runs.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    // One line per evaluation: 5 jobs x 2 epochs.
    let eval_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("] ep ") && l.contains(" val ") && l.contains(" test "))
        .collect();
    assert_eq!(eval_lines.len(), 10, "{stdout}");
    assert!(eval_lines
        .iter()
        .all(|l| l.contains("T=4") && l.contains("loss")));
    assert!(
        stdout.contains("teacher <-"),
        "self-distillation replacements are shown:\n{stdout}"
    );
    assert!(
        stdout.contains("cumulative") && stdout.contains("conventional    2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[self g1 s9]"),
        "the --seed override is used"
    );
    // The run folder is where --runs-dir says.
    let entries: Vec<_> = std::fs::read_dir(&runs).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].file_name().to_string_lossy().ends_with("-mini"));
    let (code, listing, _) = selfdistill(&["runs", "--runs-dir", runs.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        listing.contains("mini") && listing.contains("finished"),
        "{listing}"
    );
}

#[test]
fn a_zero_read_cadence_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let out = Command::new(env!("CARGO_BIN_EXE_selfdistill"))
        .args([
            "run",
            "--preset",
            "quick",
            "--headless",
            "--read-every",
            "0",
        ])
        .env("SELFDISTILL_RUNS_DIR", &runs)
        .env("SELFDISTILL_CONFIG_DIR", dir.path().join("config"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("--read-every must be at least 1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let written = std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0, "no run folder for a refused run");
}
