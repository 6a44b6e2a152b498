//! `selfdistill export`: a tiny run trained through the library, then exported to every
//! format and read back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use selfdistill::preset::Preset;
use selfdistill::report::{self, charts, tables, Format, RunData};
use selfdistill::store;
use selfdistill::train::events::{Control, EvalMetrics, Method, RunStatus, TrainEvent};
use selfdistill::train::{prepare, RunOptions};

fn tiny() -> Preset {
    let text = r#"
name = "tiny-export"
[data]
dataset = "synthetic"
val_fraction = 0.2
[data.synthetic]
train_size = 480
test_size = 160
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
[distill]
temperature = 4.0
alpha = 0.5
[run]
methods = ["baseline", "conventional", "self"]
generations = 2
seeds = [5]
"#;
    Preset::from_toml(text, "tiny (test)").unwrap()
}

/// Trains the tiny preset into `runs_dir`, changing T once; returns the run folder.
fn train(runs_dir: &Path) -> PathBuf {
    let opts = RunOptions {
        runs_dir: Some(runs_dir.to_path_buf()),
        record: true,
        ..Default::default()
    };
    let handle = prepare(tiny(), &opts).unwrap().spawn();
    handle.controls.send(Control::SetTemperature(2.0)).unwrap();
    // Bounded: the run takes seconds; a hung trainer fails the test instead of blocking.
    loop {
        match handle.events.recv_timeout(Duration::from_secs(120)) {
            Ok(TrainEvent::Finished { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("trainer stopped talking: {e}"),
        }
    }
    assert_eq!(handle.thread.join().unwrap(), RunStatus::Finished);
    handle.run_dir.unwrap()
}

fn logged_evals(run: &RunData) -> Vec<EvalMetrics> {
    run.events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Eval(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn check_csv(run: &RunData, out: &Path) {
    let written = report::export(run, Format::Csv, &out.join("metrics.csv")).unwrap();
    assert_eq!(
        written,
        vec![out.join("metrics.csv"), out.join("metrics-generations.csv")]
    );
    let evals = logged_evals(run);
    let mut reader = csv::Reader::from_path(&written[0]).unwrap();
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(headers, tables::EVAL_COLUMNS);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), evals.len(), "one row per evaluation");
    // 3 epochs x (1 baseline + 2 conventional + 2 self generations).
    assert_eq!(rows.len(), 15);
    let num = |row: &csv::StringRecord, name: &str| row[col(name)].parse::<f64>().unwrap();
    for (row, e) in rows.iter().zip(&evals) {
        assert_eq!(&row[col("method")], e.key.method.name());
        assert_eq!(num(row, "seed"), e.key.seed as f64);
        assert_eq!(num(row, "generation"), e.key.generation as f64);
        assert_eq!(num(row, "step"), e.step as f64);
        // Written with round-trip formatting: exactly the logged numbers.
        assert_eq!(num(row, "val_acc"), e.val_acc);
        assert_eq!(num(row, "test_acc"), e.test_acc);
        assert_eq!(num(row, "train_loss"), e.train_loss);
        assert_eq!(num(row, "lr"), e.lr);
        assert_eq!(num(row, "temperature"), e.temperature);
        assert_eq!(num(row, "elapsed_s"), e.elapsed_s);
        assert!(num(row, "cumulative_s") >= e.elapsed_s);
    }
    // Conventional generation 2 starts its clock after generation 1's wall time.
    let g1 = run
        .summary
        .generations
        .iter()
        .find(|g| g.key.method == Method::Conventional && g.key.generation == 1)
        .unwrap();
    let (row, e) = rows
        .iter()
        .zip(&evals)
        .find(|(_, e)| e.key.method == Method::Conventional && e.key.generation == 2)
        .unwrap();
    assert!((num(row, "cumulative_s") - (g1.wall_s + e.elapsed_s)).abs() < 1e-9);

    let mut gens = csv::Reader::from_path(&written[1]).unwrap();
    let gen_headers: Vec<String> = gens.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(gen_headers, tables::GENERATION_COLUMNS);
    assert_eq!(gens.records().count(), 5);

    // An existing folder as --out receives two fixed names.
    let folder = out.join("csv-folder");
    std::fs::create_dir(&folder).unwrap();
    let written = report::export(run, Format::Csv, &folder).unwrap();
    assert_eq!(
        written,
        vec![
            folder.join("evaluations.csv"),
            folder.join("generations.csv")
        ]
    );
}

fn check_json(run: &RunData, out: &Path) {
    let path = out.join("run.json");
    report::export(run, Format::Json, &path).unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["run_id"], run.id.as_str());
    let replaced = doc["teacher_replacements"].as_array().unwrap();
    assert!(
        !replaced.is_empty(),
        "self-distillation replaced its teacher"
    );
    assert_eq!(replaced.len(), run.summary.teacher_replacements);
    assert!(replaced.iter().all(|r| r["key"]["method"] == "self"));
    assert_eq!(
        doc["evaluations"].as_array().unwrap().len(),
        logged_evals(run).len()
    );
    assert_eq!(doc["comparison"].as_array().unwrap().len(), 5);
    assert_eq!(doc["summary"]["status"], "finished");
    let controls = doc["controls"].as_array().unwrap();
    assert!(
        controls
            .iter()
            .any(|c| c["control"]["kind"] == "set-temperature" && c["control"]["value"] == 2.0),
        "{controls:?}"
    );
    assert!(doc["preset_toml"].as_str().unwrap().contains("tiny-export"));
}

fn check_svg(run: &RunData, out: &Path) {
    let dir = out.join("svg");
    let written = report::export(run, Format::Svg, &dir).unwrap();
    assert_eq!(written.len(), 3);
    for name in charts::CHARTS {
        assert!(dir.join(format!("{name}.svg")).is_file(), "{name}");
    }
    let accuracy = std::fs::read_to_string(dir.join("accuracy.svg")).unwrap();
    assert!(accuracy.starts_with("<svg"), "{}", &accuracy[..80]);
    assert!(accuracy.contains(charts::REPLACEMENT_LABEL));
    assert!(accuracy.contains(charts::TEMPERATURE_LABEL));
    assert!(accuracy.contains("generation boundary"));
    for m in ["baseline", "conventional", "self"] {
        assert!(accuracy.contains(&format!("{m} validation")), "{m}");
    }
    let loss = std::fs::read_to_string(dir.join("loss.svg")).unwrap();
    assert!(loss.contains("conventional") && loss.contains("Training loss"));
    let gens = std::fs::read_to_string(dir.join("generations.svg")).unwrap();
    assert!(
        gens.contains(">g2<") || gens.contains("g2"),
        "generation labels"
    );
    assert!(gens.contains("cumulative wall time"));
}

/// Decodes a PNG; returns (width, height, number of distinct colours).
fn decode_png(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let channels = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = bytes.chunks(channels).collect();
    (info.width, info.height, colours.len())
}

fn check_png(run: &RunData, out: &Path) {
    let dir = out.join("png");
    let written = report::export(run, Format::Png, &dir).unwrap();
    assert_eq!(written.len(), 3);
    for path in &written {
        let head = std::fs::read(path).unwrap();
        assert_eq!(&head[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h, colours) = decode_png(path);
        assert_eq!((w, h), charts::SIZE, "{}", path.display());
        // Lines in several colours plus anti-aliased text: far from a blank image.
        assert!(colours > 20, "{}: {colours} colours", path.display());
    }
}

#[test]
fn a_trained_run_exports_to_every_format() {
    let runs = tempfile::tempdir().unwrap();
    let run_dir = train(runs.path());
    let id = run_dir.file_name().unwrap().to_string_lossy().into_owned();

    // Found by path, by id, by prefix and as the latest run.
    for name in [
        run_dir.display().to_string(),
        id.clone(),
        id[..10].to_string(),
    ] {
        assert_eq!(report::resolve_run(&name, runs.path()).unwrap(), run_dir);
    }
    assert_eq!(report::resolve_run("latest", runs.path()).unwrap(), run_dir);

    let run = RunData::load(&run_dir).unwrap();
    assert_eq!(run.id, id);
    let out = tempfile::tempdir().unwrap();
    check_csv(&run, out.path());
    check_json(&run, out.path());
    check_svg(&run, out.path());
    check_png(&run, out.path());

    // The command line, end to end.
    let cli_out = out.path().join("cli");
    let output = Command::new(env!("CARGO_BIN_EXE_selfdistill"))
        .args(["export", &id, "--format", "json", "--runs-dir"])
        .arg(runs.path())
        .arg("--out")
        .arg(&cli_out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("cli"));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cli_out).unwrap()).unwrap();
    assert_eq!(doc["run_id"], id.as_str());
}

#[test]
fn unknown_run_is_an_error_naming_the_runs_dir() {
    let runs = tempfile::tempdir().unwrap();
    let msg = format!(
        "{:#}",
        report::resolve_run("no-such-run", runs.path()).unwrap_err()
    );
    assert!(msg.contains("no-such-run"), "{msg}");
    assert!(msg.contains(&runs.path().display().to_string()), "{msg}");

    let output = Command::new(env!("CARGO_BIN_EXE_selfdistill"))
        .args(["export", "no-such-run", "--format", "csv", "--runs-dir"])
        .arg(runs.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains(&runs.path().display().to_string()), "{err}");
}

/// A run folder written by hand: two evaluations and a finish.
fn hand_made_run(dir: &Path) -> RunData {
    let key = selfdistill::train::events::JobKey {
        seed: 1,
        method: Method::Baseline,
        generation: 1,
    };
    let eval = |epoch: f64, acc: f64| {
        TrainEvent::Eval(EvalMetrics {
            key,
            step: (10.0 * epoch) as u64,
            epoch,
            train_loss: 1.0 / epoch,
            train_acc: acc,
            val_loss: 1.0,
            val_acc: acc,
            test_loss: 1.0,
            test_acc: acc,
            best_val_acc: acc,
            lr: 0.1,
            temperature: 4.0,
            alpha: 0.5,
            elapsed_s: epoch,
        })
    };
    let events = [
        eval(1.0, 0.5),
        eval(2.0, 0.6),
        TrainEvent::Finished {
            status: RunStatus::Finished,
            wall_s: 2.0,
        },
    ];
    std::fs::create_dir_all(dir).unwrap();
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    std::fs::write(dir.join(store::EVENTS_FILE), text).unwrap();
    RunData::load(dir).unwrap()
}

#[test]
fn unwritable_out_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run = hand_made_run(&tmp.path().join("run"));
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    for format in Format::ALL {
        let out = blocker.join("sub").join("out");
        let msg = format!("{:#}", report::export(&run, format, &out).unwrap_err());
        assert!(msg.contains("cannot"), "{format}: {msg}");
        assert!(
            msg.contains(&blocker.display().to_string()),
            "{format}: {msg}"
        );
    }
}

#[test]
fn a_run_without_plan_or_steps_still_charts() {
    let tmp = tempfile::tempdir().unwrap();
    let run = hand_made_run(&tmp.path().join("run"));
    for format in [Format::Svg, Format::Png] {
        let written = report::export(&run, format, &tmp.path().join(format.name())).unwrap();
        assert_eq!(written.len(), 3);
    }
    let csv = tmp.path().join("m.csv");
    report::export(&run, Format::Csv, &csv).unwrap();
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3);
}
