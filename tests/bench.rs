//! `selfdistill bench` runs and writes the JSON that bench/compare.py reads. No timing
//! assertions: benchmarks are measured by bench/compare.sh, not by CI.

use std::process::Command;

use selfdistill::bench::{BenchReport, SCHEMA};

fn selfdistill(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_selfdistill"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A short `selfdistill bench` on one thread (2 steps, 1 warm-up, 2 repetitions) with
/// `args` added; its exit code, stdout, stderr and JSON report (when it wrote one).
fn short_bench(args: &[&str]) -> (i32, String, String, Option<BenchReport>) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut all = vec![
        "bench",
        "--threads",
        "1",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--reps",
        "2",
        // Exactly --steps steps per repetition (the default goes on for half a second).
        "--min-time",
        "0",
        "--json",
        json.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = selfdistill(&all);
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|text| serde_json::from_str(&text).unwrap());
    (code, stdout, stderr, report)
}

#[test]
fn bench_runs_every_case_and_writes_json() {
    let (code, stdout, stderr, report) =
        short_bench(&["--batch", "2,3", "--models", "cnn,resnet20"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("steps/s"), "{stdout}");
    let report = report.expect("a JSON report");
    assert_eq!(report.schema, SCHEMA);
    assert_eq!(report.framework, "selfdistill");
    assert_eq!(report.backend, "cpu");
    assert_eq!(report.threads, 1);
    assert_eq!((report.steps, report.warmup, report.reps), (2, 1, 2));
    assert_eq!(report.min_rep_s, 0.0);
    // The CPU trainer reads loss and hits back every step; the bench does as it does.
    assert_eq!(report.read_every, 1);
    // 2 models x 2 batches x 3 cases, in that nesting order.
    assert_eq!(report.results.len(), 12);
    let first = &report.results[0];
    assert_eq!(
        (first.model.as_str(), first.case.as_str(), first.batch),
        ("cnn", "train", 2)
    );
    for r in &report.results {
        assert_eq!(r.reps_steps_per_s.len(), 2, "{r:?}");
        assert_eq!(r.reps_steps, [2, 2], "{r:?}");
        assert!(r.steps_per_s.is_finite() && r.steps_per_s > 0.0, "{r:?}");
        assert!((r.images_per_s - r.steps_per_s * r.batch as f64).abs() < 1e-6 * r.images_per_s);
        match r.case.as_str() {
            "infer" => assert!(r.last_loss.is_none(), "{r:?}"),
            _ => assert!(r.last_loss.is_some_and(f64::is_finite), "{r:?}"),
        }
    }
    assert!(report
        .results
        .iter()
        .any(|r| r.model == "resnet20" && r.case == "train-kd"));
}

/// With reads every 3 steps, a 2-step repetition still reads its steps (before its clock
/// stops), so the last loss is there, and the report says how it read.
#[test]
fn bench_reads_queued_steps_at_the_end_of_a_repetition() {
    let (code, stdout, stderr, report) = short_bench(&[
        "--batch",
        "2",
        "--models",
        "cnn",
        "--cases",
        "train,train-kd",
        "--read-every",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("loss read every 3 step(s)"), "{stdout}");
    let report = report.expect("a JSON report");
    assert_eq!(report.read_every, 3);
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        assert_eq!(r.reps_steps, [2, 2], "{r:?}");
        assert!(r.last_loss.is_some_and(f64::is_finite), "{r:?}");
    }
    let (code, _, stderr) = selfdistill(&["bench", "--read-every", "0", "--steps", "1"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--read-every must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn bench_rejects_unknown_names() {
    let (code, _, stderr) = selfdistill(&["bench", "--models", "vgg", "--steps", "1"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown model \"vgg\""), "{stderr}");
    let (code, _, stderr) = selfdistill(&["bench", "--cases", "eval", "--steps", "1"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("unknown case \"eval\""), "{stderr}");
}

#[test]
fn bench_rejects_a_min_time_out_of_range() {
    for bad in ["--min-time=-1", "--min-time=nan", "--min-time=1e9"] {
        let (code, _, stderr) = selfdistill(&["bench", bad, "--steps", "1"]);
        assert_ne!(code, 0, "{bad}");
        assert!(
            stderr.contains("--min-time must be between 0 and 600 seconds"),
            "{bad}: {stderr}"
        );
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn bench_on_cuda_without_the_feature_is_a_clear_error() {
    let (code, _, stderr) = selfdistill(&["bench", "--backend", "cuda", "--steps", "1"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--features cuda"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A bench JSON report with one result per `(model, case, batch, repetitions)`.
fn report(framework: &str, results: &[(&str, &str, usize, &[f64])]) -> String {
    report_reading(framework, results, None)
}

/// As [`report`], with a `read_every` field when given (older reports have none).
fn report_reading(
    framework: &str,
    results: &[(&str, &str, usize, &[f64])],
    read_every: Option<usize>,
) -> String {
    let results: Vec<serde_json::Value> = results
        .iter()
        .map(|(model, case, batch, reps)| {
            serde_json::json!({
                "model": model, "case": case, "batch": batch,
                "steps_per_s": reps[0], "images_per_s": reps[0] * *batch as f64,
                "reps_steps_per_s": reps, "last_loss": null,
            })
        })
        .collect();
    let mut report = serde_json::json!({
        "schema": 1, "framework": framework, "version": framework, "backend": "cpu",
        "threads": 2, "date": "2026-11-30T00:00:00Z", "steps": 5, "warmup": 1, "reps": 1,
        "machine": {"cpu": "test cpu", "logical_cpus": 2},
        "results": results,
    });
    if let Some(n) = read_every {
        report["read_every"] = n.into();
    }
    report.to_string()
}

/// bench/compare.py run with `args`: whether it succeeded, its stdout and stderr.
fn compare_py<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/compare.py"))
        .args(args)
        .output()
        .expect("python3 runs (scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// compare.py's stdout for `args`, which must succeed.
fn compare<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let (ok, stdout, stderr) = compare_py(args);
    assert!(ok, "{stdout}{stderr}");
    stdout
}

/// The ratio table says how often each side read its loss back, and warns when the two
/// sides did not do the same work.
#[test]
fn compare_script_states_the_read_cadence_and_flags_a_mismatch() {
    let case: &[(&str, &str, usize, &[f64])] = &[("cnn", "train", 64, &[10.0])];
    let write = |dir: &std::path::Path, sd: Option<usize>, pt: Option<usize>| {
        std::fs::write(
            dir.join("selfdistill-1.json"),
            report_reading("selfdistill", case, sd),
        )
        .unwrap();
        std::fs::write(
            dir.join("pytorch-1.json"),
            report_reading("pytorch", case, pt),
        )
        .unwrap();
    };
    let same = tempfile::tempdir().unwrap();
    write(same.path(), Some(8), Some(8));
    let out = compare(&[same.path()]);
    assert!(
        out.contains("every 8 training step(s), both sides"),
        "{out}"
    );
    assert!(!out.contains("WARNING"), "{out}");
    let differ = tempfile::tempdir().unwrap();
    // A report without the field read every step.
    write(differ.path(), Some(8), None);
    let out = compare(&[differ.path()]);
    assert!(
        out.contains("WARNING: loss and hits read back every 8 step(s) by selfdistill but every 1 by PyTorch"),
        "{out}"
    );
}

/// bench/compare.py pools every repetition per side for the ratio, pairs files by id
/// (also across directories) for the per-pair spread, and counts pairs below 1.
#[test]
fn compare_script_pools_sides_and_counts_pairs_below_one() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // (dir, id, selfdistill steps/s, PyTorch steps/s) for cnn/train/64; the second
    // directory has the whole-run naming of PAIR=run.
    let pairs = [
        (0, "1-cnn-64-train", 10.0, 8.0),
        (0, "2-cnn-64-train", 9.0, 10.0),
        (1, "1", 12.0, 10.0),
    ];
    for (d, id, sd, pt) in pairs {
        let dir = dirs[d].path();
        let write = |side: &str, v: f64| {
            std::fs::write(
                dir.join(format!("{side}-{id}.json")),
                report(side, &[("cnn", "train", 64, &[v])]),
            )
            .unwrap()
        };
        write("selfdistill", sd);
        write("pytorch", pt);
    }
    let stdout = compare(&[dirs[0].path(), dirs[1].path()]);
    assert!(stdout.contains("3 rounds in 2 run(s)"), "{stdout}");
    assert!(
        stdout.contains("every 1 training step(s), both sides"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("cnn"))
        .expect(&stdout);
    let cols: Vec<&str> = row.split_whitespace().collect();
    // Pooled: median(10, 9, 12) / median(8, 10, 10) = 10 / 10; pairs 1.25, 0.9, 1.2.
    assert_eq!(
        &cols[..6],
        ["cnn", "train", "64", "10.000", "10.000", "1.000x"],
        "{row}"
    );
    assert_eq!(cols[6], "1.200", "median pair ratio: {row}");
    assert_eq!(cols.last(), Some(&"1/3"), "pairs below 1: {row}");
}

/// `compare.py --cadence` (bench/gpu.sh's read-back step) puts selfdistill's steps/s at
/// each read cadence side by side, as a ratio to the most frequent reads.
#[test]
fn compare_script_puts_read_cadences_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, every: usize, results: &[(&str, &str, usize, &[f64])]| {
        std::fs::write(
            dir.path().join(name),
            report_reading("selfdistill", results, Some(every)),
        )
        .unwrap()
    };
    write(
        "every1-1.json",
        1,
        &[
            ("cnn", "train", 64, &[10.0, 12.0]),
            ("cnn", "infer", 64, &[5.0]),
        ],
    );
    write("every1-2.json", 1, &[("cnn", "train", 64, &[11.0])]);
    write("every8-1.json", 8, &[("cnn", "train", 64, &[16.5])]);
    let cadence = [std::ffi::OsStr::new("--cadence"), dir.path().as_os_str()];
    let stdout = compare(&cadence);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("cnn"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // median(10, 12, 11) = 11 against 16.5; the case measured at one cadence only is left out.
    assert_eq!(
        rows,
        [["cnn", "train", "64", "11.000", "16.500", "1.500x"]],
        "{stdout}"
    );
    // One cadence only: nothing to compare, said so.
    std::fs::remove_file(dir.path().join("every8-1.json")).unwrap();
    let (ok, _, stderr) = compare_py(&cadence);
    assert!(!ok);
    assert!(
        stderr.contains("at least two read_every values"),
        "{stderr}"
    );
}

/// The PyTorch script shares the schema: its field names must stay those of `BenchReport`.
#[test]
fn pytorch_script_writes_the_same_fields() {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bench/pytorch_bench.py"
    ))
    .unwrap();
    for field in [
        "\"schema\"",
        "\"framework\"",
        "\"version\"",
        "\"backend\"",
        "\"threads\"",
        "\"machine\"",
        "\"date\"",
        "\"steps\"",
        "\"min_rep_s\"",
        "\"warmup\"",
        "\"reps\"",
        "\"read_every\"",
        "\"results\"",
        "\"model\"",
        "\"case\"",
        "\"batch\"",
        "\"steps_per_s\"",
        "\"images_per_s\"",
        "\"reps_steps_per_s\"",
        "\"reps_steps\"",
        "\"last_loss\"",
        "\"logical_cpus\"",
    ] {
        assert!(script.contains(field), "pytorch_bench.py lacks {field}");
    }
}

/// The models' batch norm (`BatchNorm2d`, the CPU kernel) gives burn-nn's training-mode
/// result, forward and gradients. Prints both timings (run with --nocapture); no
/// timing assertion.
#[test]
fn fast_batch_norm_matches_burn_and_reports_timing() {
    use burn::backend::{flex::FlexDevice, Autodiff, Flex};
    use burn::nn::BatchNormConfig;
    use burn::prelude::*;
    use burn::tensor::Distribution;
    use selfdistill::model::BatchNorm2d;
    use std::time::Instant;
    type A = Autodiff<Flex>;
    let dev = FlexDevice;
    A::seed(&dev, 3);
    let shape = [64, 32, 32, 32];
    let x0 = Tensor::<A, 4>::random(shape, Distribution::Normal(0.5, 2.0), &dev);
    let bn = BatchNormConfig::new(shape[1]).init::<A>(&dev);
    // Both start at gamma = 1, beta = 0.
    let ours = BatchNorm2d::<A>::new(shape[1], &dev);
    let weights = Tensor::<A, 4>::random(shape, Distribution::Uniform(-1.0, 1.0), &dev);
    let run = |fast: bool| {
        let x = x0.clone().detach().require_grad();
        let start = Instant::now();
        let y = if fast {
            ours.forward(x.clone())
        } else {
            bn.forward(x.clone())
        };
        let loss = (y.clone() * weights.clone()).sum();
        let grads = loss.backward();
        let gx = x.grad(&grads).unwrap();
        let secs = start.elapsed().as_secs_f64();
        (
            y.inner().into_data().to_vec::<f32>().unwrap(),
            gx.into_data().to_vec::<f32>().unwrap(),
            secs,
        )
    };
    // Each twice, timing the second (first calls pay for allocations).
    let _ = (run(false), run(true));
    let (y_ref, g_ref, t_ref) = run(false);
    let (y_fast, g_fast, t_fast) = run(true);
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        max_diff(&y_ref, &y_fast) < 1e-4,
        "forward {}",
        max_diff(&y_ref, &y_fast)
    );
    assert!(
        max_diff(&g_ref, &g_fast) < 1e-4,
        "grad {}",
        max_diff(&g_ref, &g_fast)
    );
    println!("batch norm fwd+bwd {shape:?}: burn-nn {t_ref:.3}s, selfdistill {t_fast:.3}s");
}
