//! The run folder: everything a run produced, readable at any moment.
//!
//! Layout of `<runs dir>/<YYYYmmdd-HHMMSS>-<preset>/`:
//! - `preset.toml`: the resolved preset (after command-line overrides);
//! - `events.jsonl`: every event, one JSON object per line, append-only;
//! - `metrics.csv`: one row per evaluation;
//! - `summary.json`: the run summary, rewritten atomically (write, then rename);
//! - `checkpoints/s<seed>-<method>-g<gen>-{best,final}.mpk`: Burn records.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};

use crate::model::Net;
use crate::preset::Preset;
use crate::train::events::{JobKey, TrainEvent};
use crate::train::summary::RunSummary;

pub const EVENTS_FILE: &str = "events.jsonl";
pub const METRICS_FILE: &str = "metrics.csv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const PRESET_FILE: &str = "preset.toml";
pub const CHECKPOINT_DIR: &str = "checkpoints";

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
    summary: RunSummary,
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
            summary: RunSummary::default(),
        })
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
            return Ok(());
        }
        self.events.flush()?;
        self.summary.apply(ev);
        match ev {
            TrainEvent::Eval(e) => {
                self.metrics.write_record(&[
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
                ])?;
                self.metrics.flush()?;
            }
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
    pub fn save_checkpoint<B: Backend>(
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
pub fn load_checkpoint<B: Backend>(
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
