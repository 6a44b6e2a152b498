//! The run folder: everything a run produced, readable at any moment.
//!
//! Layout of `<runs dir>/<YYYYmmdd-HHMMSS>-<preset>/`:
//! - `preset.toml`: the resolved preset (after command-line overrides);
//! - `events.jsonl`: every event, one JSON object per line, append-only;
//! - `metrics.csv`: one row per evaluation;
//! - `summary.json`: the run summary, rewritten atomically (write, then rename);
//! - `checkpoints/s<seed>-<method>-g<gen>-{best,final}.mpk`: Burn records;
//! - `autotune/` (GPU runs): a copy of the kernel picks the run used, taken when it ends.

pub mod follow;
pub mod resume;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};

use crate::model::{KernelBackend, Net};
use crate::preset::Preset;
use crate::train::events::{EvalMetrics, JobKey, RunStatus, TrainEvent};
use crate::train::summary::RunSummary;

pub const EVENTS_FILE: &str = "events.jsonl";
pub const METRICS_FILE: &str = "metrics.csv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const PRESET_FILE: &str = "preset.toml";
pub const CHECKPOINT_DIR: &str = "checkpoints";
/// A GPU run's copy of CubeCL's autotune picks: with `SELFDISTILL_CACHE_DIR` set to the run
/// folder, a rerun loads them (CubeCL reads `$SELFDISTILL_CACHE_DIR/autotune`).
pub const AUTOTUNE_DIR: &str = "autotune";

/// `--runs-dir` default: `$SELFDISTILL_RUNS_DIR`, else `<user data dir>/selfdistill/runs`.
pub fn default_runs_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SELFDISTILL_RUNS_DIR") {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("", "", "selfdistill")
        .map(|d| d.data_dir().join("runs"))
        .unwrap_or_else(|| PathBuf::from("selfdistill-runs"))
}

/// Writes one run folder from the trainer thread.
pub struct RunWriter {
    dir: PathBuf,
    run_id: String,
    events: BufWriter<File>,
    metrics: csv::Writer<File>,
    /// Every evaluation so far, to rewrite `metrics.csv` when a resume supersedes rows.
    evals: Vec<EvalMetrics>,
    summary: RunSummary,
    resume_seq: u64,
    last_flush: std::time::Instant,
    /// Held for the writer's lifetime: one process writes a run at a time. The OS
    /// releases it when the process dies, even by kill -9.
    _lock: File,
}

pub const LOCK_FILE: &str = "run.lock";

/// How long per-step lines may sit in the write buffer.
const STEP_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Takes the run folder's writer lock, or says who holds it.
fn lock_run(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "run {} is being written by another selfdistill process; wait for it or stop it first",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Whether a process is writing the run now (its lock is held).
pub fn is_live(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join(LOCK_FILE)) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

impl RunWriter {
    /// Creates a fresh folder; fails with a clear message when the runs directory is
    /// not writable, before any training starts.
    pub fn create(runs_dir: &Path, preset: &Preset) -> Result<RunWriter> {
        fs::create_dir_all(runs_dir)
            .with_context(|| format!("cannot create the runs directory {}", runs_dir.display()))?;
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        let (dir, run_id) = (0..1000)
            .find_map(|i| {
                let id = if i == 0 {
                    format!("{stamp}-{}", preset.name)
                } else {
                    format!("{stamp}-{}-{i}", preset.name)
                };
                let dir = runs_dir.join(&id);
                // create_dir (not _all) fails if it exists: no two runs share a folder.
                match fs::create_dir(&dir) {
                    Ok(()) => Some(Ok((dir, id))),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .unwrap_or_else(|| {
                Err(io::Error::other(
                    "too many runs with the same name this second",
                ))
            })
            .with_context(|| {
                format!(
                    "cannot create a run folder in {} (is it writable?)",
                    runs_dir.display()
                )
            })?;
        // Keep the folder inside the runs directory whatever the preset name says.
        debug_assert!(dir.starts_with(runs_dir));
        let lock = lock_run(&dir)?;
        fs::create_dir(dir.join(CHECKPOINT_DIR))?;
        write_atomic(&dir.join(PRESET_FILE), preset.to_toml().as_bytes())?;
        let open = |name: &str| -> Result<File> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .with_context(|| format!("cannot write {}", dir.join(name).display()))
        };
        let events = BufWriter::new(open(EVENTS_FILE)?);
        let mut metrics = csv::Writer::from_writer(open(METRICS_FILE)?);
        metrics.write_record(METRIC_COLUMNS)?;
        metrics.flush()?;
        Ok(RunWriter {
            dir,
            run_id,
            events,
            metrics,
            evals: Vec::new(),
            summary: RunSummary::default(),
            resume_seq: 0,
            last_flush: std::time::Instant::now(),
            _lock: lock,
        })
    }

    /// Reopens an existing run folder to append to it (resume).
    pub fn reopen(dir: &Path) -> Result<RunWriter> {
        let lock = lock_run(dir)?;
        let past = read_events(dir)?;
        let summary = RunSummary::from_events(past.iter().filter(|e| e.is_essential()));
        let mut evals = Vec::new();
        for ev in &past {
            apply_to_evals(&mut evals, ev);
        }
        let run_id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let events_path = dir.join(EVENTS_FILE);
        let mut file = OpenOptions::new()
            .append(true)
            .open(&events_path)
            .with_context(|| format!("cannot append to {}", events_path.display()))?;
        // A process killed mid-line left a torn last line: end it so the next event
        // starts on a line of its own (readers skip the torn one).
        let text = fs::read(&events_path)?;
        if text.last().is_some_and(|b| *b != b'\n') {
            file.write_all(b"\n")?;
        }
        let metrics_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(METRICS_FILE))?;
        let mut writer = RunWriter {
            dir: dir.to_path_buf(),
            run_id,
            events: BufWriter::new(file),
            metrics: csv::Writer::from_writer(metrics_file),
            evals,
            summary,
            resume_seq: resume::next_seq(dir),
            last_flush: std::time::Instant::now(),
            _lock: lock,
        };
        writer.rewrite_metrics()?;
        Ok(writer)
    }

    /// Rewrites `metrics.csv` from the evaluations in memory (write, then rename).
    fn rewrite_metrics(&mut self) -> Result<()> {
        let tmp = self.dir.join("metrics.csv.tmp");
        let mut w = csv::Writer::from_writer(File::create(&tmp)?);
        w.write_record(METRIC_COLUMNS)?;
        for e in &self.evals {
            w.write_record(metric_row(e))?;
        }
        w.flush()?;
        drop(w);
        fs::rename(&tmp, self.dir.join(METRICS_FILE))?;
        let file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(METRICS_FILE))?;
        self.metrics = csv::Writer::from_writer(file);
        Ok(())
    }

    /// Creates the folder for the next resume point.
    pub fn begin_resume_point(&mut self) -> Result<PathBuf> {
        let dir = resume::begin(&self.dir, self.resume_seq)?;
        self.resume_seq += 1;
        Ok(dir)
    }

    pub fn commit_resume_point(&self, dir: &Path, state: &resume::ResumeState) -> Result<()> {
        resume::commit(&self.dir, dir, state)
    }

    /// Makes sure summary.json carries the final status even when the event log
    /// could not take the last events.
    pub fn write_summary_status(&mut self, status: RunStatus) -> Result<()> {
        if self.summary.status != Some(status) {
            self.summary.status = Some(status);
            write_atomic(
                &self.dir.join(SUMMARY_FILE),
                &serde_json::to_vec_pretty(&self.summary)?,
            )?;
        }
        Ok(())
    }

    /// The summary of everything recorded so far (past processes included).
    pub fn summary(&self) -> &RunSummary {
        &self.summary
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Appends the event; essential events are flushed at once so a killed process
    /// loses at most the per-step lines since the last one.
    pub fn record(&mut self, ev: &TrainEvent) -> Result<()> {
        serde_json::to_writer(&mut self.events, ev)?;
        self.events.write_all(b"\n")?;
        if !ev.is_essential() {
            // Steps reach the disk a few times a second, so `watch` sees progress
            // without a syscall per step.
            if self.last_flush.elapsed() >= STEP_FLUSH_INTERVAL {
                self.events.flush()?;
                self.last_flush = std::time::Instant::now();
            }
            return Ok(());
        }
        self.events.flush()?;
        self.last_flush = std::time::Instant::now();
        self.summary.apply(ev);
        apply_to_evals(&mut self.evals, ev);
        match ev {
            TrainEvent::Eval(e) => {
                self.metrics.write_record(metric_row(e))?;
                self.metrics.flush()?;
            }
            TrainEvent::Resumed { .. } => self.rewrite_metrics()?,
            TrainEvent::Plan(_)
            | TrainEvent::GenerationFinished(_)
            | TrainEvent::Finished { .. }
            | TrainEvent::Error { .. } => {
                write_atomic(
                    &self.dir.join(SUMMARY_FILE),
                    &serde_json::to_vec_pretty(&self.summary)?,
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Saves a network as `checkpoints/s<seed>-<method>-g<gen>-<which>.mpk`.
    pub fn save_checkpoint<B: KernelBackend>(
        &self,
        key: JobKey,
        which: &str,
        net: Net<B>,
    ) -> Result<PathBuf> {
        let path = checkpoint_path(&self.dir, key, which);
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        net.save_file(path.with_extension(""), &recorder)
            .with_context(|| format!("cannot write checkpoint {}", path.display()))?;
        Ok(path)
    }
}

/// Keeps the evaluation list in step with the log, honouring resumes.
fn apply_to_evals(evals: &mut Vec<EvalMetrics>, ev: &TrainEvent) {
    match ev {
        TrainEvent::Eval(e) => evals.push(e.clone()),
        TrainEvent::Resumed { key, step } => evals.retain(|e| e.key != *key || e.step <= *step),
        _ => {}
    }
}

fn metric_row(e: &EvalMetrics) -> [String; 16] {
    [
        e.key.seed.to_string(),
        e.key.method.name().to_string(),
        e.key.generation.to_string(),
        e.step.to_string(),
        format!("{:.4}", e.epoch),
        format!("{:.6}", e.train_loss),
        format!("{:.6}", e.train_acc),
        format!("{:.6}", e.val_loss),
        format!("{:.6}", e.val_acc),
        format!("{:.6}", e.test_loss),
        format!("{:.6}", e.test_acc),
        format!("{:.6}", e.best_val_acc),
        format!("{:.6}", e.lr),
        format!("{}", e.temperature),
        format!("{}", e.alpha),
        format!("{:.3}", e.elapsed_s),
    ]
}

/// Saves any Burn record (network, optimiser state) as named MessagePack, full precision.
pub fn save_record<B: Backend, R: Record<B>>(path: &Path, record: R) -> Result<()> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(record, path.with_extension(""))
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn load_record<B: Backend, R: Record<B>>(path: &Path, device: &B::Device) -> Result<R> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(path.with_extension(""), device)
        .with_context(|| format!("cannot load {}", path.display()))
}

/// Finds a run by folder path or by id under `runs_dir`.
pub fn find_run(runs_dir: &Path, run: &str) -> Result<PathBuf> {
    let as_path = Path::new(run);
    if as_path.join(EVENTS_FILE).is_file() {
        return Ok(as_path.to_path_buf());
    }
    let by_id = runs_dir.join(run);
    if !run.contains('/') && by_id.join(EVENTS_FILE).is_file() {
        return Ok(by_id);
    }
    anyhow::bail!(
        "no run {run:?}: not a run folder, and no run with that id in {} (see `selfdistill runs`)",
        runs_dir.display()
    )
}

pub const METRIC_COLUMNS: [&str; 16] = [
    "seed",
    "method",
    "generation",
    "step",
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "best_val_acc",
    "lr",
    "temperature",
    "alpha",
    "elapsed_s",
];

pub fn checkpoint_path(run_dir: &Path, key: JobKey, which: &str) -> PathBuf {
    run_dir.join(CHECKPOINT_DIR).join(format!(
        "s{}-{}-g{}-{which}.mpk",
        key.seed,
        key.method.name(),
        key.generation
    ))
}

/// Loads a checkpoint into a network of the same architecture.
pub fn load_checkpoint<B: KernelBackend>(
    path: &Path,
    template: Net<B>,
    device: &B::Device,
) -> Result<Net<B>> {
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    template
        .load_file(path.with_extension(""), &recorder, device)
        .with_context(|| format!("cannot load checkpoint {}", path.display()))
}

/// Write to a temporary file in the same folder, then rename over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Copies the tree of CubeCL's autotune picks `src` into `run_dir/autotune` (each file
/// written atomically, so a copy cut short leaves whole files) and returns how many files
/// it copied; a missing `src` (nothing was tuned) copies none.
pub fn keep_autotune_picks(src: &Path, run_dir: &Path) -> io::Result<usize> {
    fn copy_tree(src: &Path, dst: &Path) -> io::Result<usize> {
        fs::create_dir_all(dst)?;
        let mut copied = 0;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            let to = dst.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copied += copy_tree(&entry.path(), &to)?;
            } else {
                write_atomic(&to, &fs::read(entry.path())?)?;
                copied += 1;
            }
        }
        Ok(copied)
    }
    if !src.is_dir() {
        return Ok(0);
    }
    copy_tree(src, &run_dir.join(AUTOTUNE_DIR))
}

/// Reads a run's event log; a torn last line (process killed mid-write) is skipped.
pub fn read_events(run_dir: &Path) -> Result<Vec<TrainEvent>> {
    let path = run_dir.join(EVENTS_FILE);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    let lines: Vec<String> = BufReader::new(file).lines().collect::<io::Result<_>>()?;
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(ev) => out.push(ev),
            Err(_) if i == last => break,
            Err(e) => anyhow::bail!(
                "{}: line {} is not a valid event: {e}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

/// A run found in the runs directory.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub dir: PathBuf,
    pub id: String,
    pub summary: RunSummary,
}

/// Lists run folders (newest first), summarised from their event logs.
pub fn list_runs(runs_dir: &Path) -> Vec<RunInfo> {
    let Ok(read) = fs::read_dir(runs_dir) else {
        return Vec::new();
    };
    let mut runs: Vec<RunInfo> = read
        .flatten()
        .filter(|e| e.path().join(EVENTS_FILE).is_file())
        .filter_map(|e| {
            let dir = e.path();
            let events = read_events(&dir).ok()?;
            Some(RunInfo {
                id: e.file_name().to_string_lossy().into_owned(),
                summary: RunSummary::from_events(events.iter().filter(|e| e.is_essential())),
                dir,
            })
        })
        .collect();
    runs.sort_by(|a, b| b.id.cmp(&a.id));
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autotune_picks_are_copied_tree_and_all_into_the_run_folder() {
        let src = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let device = src.path().join("0.10.0").join("device-0-cuda");
        fs::create_dir_all(&device).unwrap();
        fs::write(device.join("matmul-tune.json.log"), "{\"pick\":3}\n").unwrap();
        fs::write(device.join("conv-tune.json.log"), "{\"pick\":1}\n").unwrap();
        fs::write(src.path().join("top.json.log"), "x").unwrap();
        assert_eq!(keep_autotune_picks(src.path(), run.path()).unwrap(), 3);
        let kept = run.path().join(AUTOTUNE_DIR);
        assert_eq!(
            fs::read_to_string(kept.join("0.10.0/device-0-cuda/matmul-tune.json.log")).unwrap(),
            "{\"pick\":3}\n"
        );
        assert_eq!(fs::read_to_string(kept.join("top.json.log")).unwrap(), "x");
        // Copying again (a resumed run ending) overwrites with the newer picks.
        fs::write(device.join("conv-tune.json.log"), "{\"pick\":2}\n").unwrap();
        assert_eq!(keep_autotune_picks(src.path(), run.path()).unwrap(), 3);
        assert_eq!(
            fs::read_to_string(kept.join("0.10.0/device-0-cuda/conv-tune.json.log")).unwrap(),
            "{\"pick\":2}\n"
        );
        // Nothing tuned: nothing copied, no folder made.
        let other = tempfile::tempdir().unwrap();
        assert_eq!(
            keep_autotune_picks(&src.path().join("none"), other.path()).unwrap(),
            0
        );
        assert!(!other.path().join(AUTOTUNE_DIR).exists());
    }

    #[test]
    fn torn_last_line_is_skipped_but_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&TrainEvent::Log {
            message: "a".into(),
        })
        .unwrap();
        fs::write(
            dir.path().join(EVENTS_FILE),
            format!("{good}\n{good}\n{{\"event\":\"lo"),
        )
        .unwrap();
        assert_eq!(read_events(dir.path()).unwrap().len(), 2);
        fs::write(
            dir.path().join(EVENTS_FILE),
            format!("{good}\nnot json\n{good}\n"),
        )
        .unwrap();
        let msg = read_events(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn unwritable_runs_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let preset = crate::preset::shipped("quick").unwrap();
        let msg = format!(
            "{:#}",
            RunWriter::create(&file.join("runs"), &preset)
                .err()
                .unwrap()
        );
        assert!(msg.contains("not-a-dir"), "{msg}");
    }
}
