//! `selfdistill export`: a run folder turned into files for analysis and papers.
//!
//! - CSV: one row per evaluation (tidy, ready for pandas), plus a second file with one
//!   row per (seed, method, generation);
//! - JSON: summary, comparison, evaluations, teacher replacements and controls in one
//!   document;
//! - SVG / PNG: three charts drawn with plotters (see [`charts`]).
//!
//! Everything is read back from the run's `events.jsonl` with [`store::read_events`] and
//! folded with [`RunSummary::from_events`], so exports work on finished, stopped and
//! still-running runs alike.

pub mod charts;
pub mod tables;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::store;
use crate::train::events::{
    Control, EvalMetrics, GenerationSummary, JobKey, TeacherSource, TrainEvent,
};
use crate::train::summary::RunSummary;

/// Output formats of `selfdistill export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Svg,
    Png,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Csv, Format::Json, Format::Svg, Format::Png];

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        let s = s.trim().to_ascii_lowercase();
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Charts are written as one file per chart into a folder.
    pub fn is_chart(self) -> bool {
        matches!(self, Format::Svg | Format::Png)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A run read back from its folder.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    /// The folder name.
    pub id: String,
    pub events: Vec<TrainEvent>,
    pub summary: RunSummary,
}

/// One evaluation with its place on the method's cumulative wall-clock axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    #[serde(flatten)]
    pub eval: EvalMetrics,
    /// Seconds since the method's first generation started (earlier generations included).
    pub cumulative_s: f64,
}

/// A teacher replacement (self-distillation's best-so-far teacher moved forward).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replacement {
    pub key: JobKey,
    pub step: u64,
    pub epoch: f64,
    pub old_acc: Option<f64>,
    pub new_acc: f64,
}

/// A control that took effect at `step`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlRow {
    pub key: JobKey,
    pub step: u64,
    pub control: Control,
}

/// A generation start with its initial teacher.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationStart {
    pub key: JobKey,
    pub teacher: TeacherSource,
    pub teacher_val_acc: Option<f64>,
}

/// One finished generation of one seed, with its cumulative wall time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRow {
    #[serde(flatten)]
    pub generation: GenerationSummary,
    pub cumulative_s: f64,
}

impl RunData {
    /// Reads a run folder (it must hold `events.jsonl`).
    pub fn load(dir: &Path) -> Result<RunData> {
        let events = store::read_events(dir)
            .with_context(|| format!("cannot read the run in {}", dir.display()))?;
        let events = effective_events(events);
        let summary = RunSummary::from_events(events.iter().filter(|e| e.is_essential()));
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(RunData {
            dir: dir.to_path_buf(),
            id,
            events,
            summary,
        })
    }

    /// Every evaluation, in log order, placed after the generations of the same seed and
    /// method that had finished when it was logged.
    pub fn evals(&self) -> Vec<EvalRow> {
        let mut finished: Vec<&GenerationSummary> = Vec::new();
        let mut rows = Vec::new();
        for ev in &self.events {
            match ev {
                TrainEvent::Eval(m) => {
                    let before: f64 = finished
                        .iter()
                        .filter(|g| {
                            g.key.seed == m.key.seed
                                && g.key.method == m.key.method
                                && g.key.generation < m.key.generation
                        })
                        .map(|g| g.wall_s)
                        .sum();
                    rows.push(EvalRow {
                        eval: m.clone(),
                        cumulative_s: before + m.elapsed_s,
                    });
                }
                TrainEvent::GenerationFinished(g) => {
                    finished.retain(|f| f.key != g.key);
                    finished.push(g);
                }
                _ => {}
            }
        }
        rows
    }

    pub fn replacements(&self) -> Vec<Replacement> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::TeacherReplaced {
                    key,
                    step,
                    epoch,
                    old_acc,
                    new_acc,
                } => Some(Replacement {
                    key: *key,
                    step: *step,
                    epoch: *epoch,
                    old_acc: *old_acc,
                    new_acc: *new_acc,
                }),
                _ => None,
            })
            .collect()
    }

    pub fn controls(&self) -> Vec<ControlRow> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::ControlApplied { key, step, control } => Some(ControlRow {
                    key: *key,
                    step: *step,
                    control: *control,
                }),
                _ => None,
            })
            .collect()
    }

    /// The last start of each generation (a resumed generation starts again).
    pub fn generation_starts(&self) -> Vec<GenerationStart> {
        let mut starts: Vec<GenerationStart> = self
            .events
            .iter()
            .filter_map(|e| match e {
                TrainEvent::GenerationStarted {
                    key,
                    teacher,
                    teacher_val_acc,
                } => Some(GenerationStart {
                    key: *key,
                    teacher: *teacher,
                    teacher_val_acc: *teacher_val_acc,
                }),
                _ => None,
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        starts.reverse();
        starts.retain(|s| seen.insert(s.key));
        starts.reverse();
        starts
    }

    /// Finished generations per seed, in log order, with cumulative wall time.
    pub fn generations(&self) -> Vec<GenerationRow> {
        let gens = &self.summary.generations;
        gens.iter()
            .map(|g| {
                let before: f64 = gens
                    .iter()
                    .filter(|o| {
                        o.key.seed == g.key.seed
                            && o.key.method == g.key.method
                            && o.key.generation < g.key.generation
                    })
                    .map(|o| o.wall_s)
                    .sum();
                GenerationRow {
                    generation: g.clone(),
                    cumulative_s: before + g.wall_s,
                }
            })
            .collect()
    }

    /// Nominal epochs per generation: the plan's, else the largest evaluated epoch.
    pub fn epochs_per_generation(&self) -> f64 {
        match &self.summary.plan {
            Some(p) if p.epochs > 0 => p.epochs as f64,
            _ => self
                .summary
                .evals
                .iter()
                .map(|e| e.epoch)
                .fold(1.0, f64::max),
        }
    }

    /// Optimiser steps per epoch: the plan's, else estimated from the evaluations.
    pub fn steps_per_epoch(&self) -> f64 {
        match &self.summary.plan {
            Some(p) if p.steps_per_epoch > 0 => p.steps_per_epoch as f64,
            _ => self
                .summary
                .evals
                .iter()
                .filter(|e| e.epoch > 0.0)
                .map(|e| e.step as f64 / e.epoch)
                .fold(1.0, f64::max),
        }
    }
}

/// The job and step an event belongs to (generation ends sort after every step).
fn job_step(ev: &TrainEvent) -> Option<(JobKey, u64)> {
    match ev {
        TrainEvent::Step(s) => Some((s.key, s.step)),
        TrainEvent::Eval(e) => Some((e.key, e.step)),
        TrainEvent::TeacherReplaced { key, step, .. }
        | TrainEvent::ControlApplied { key, step, .. }
        | TrainEvent::Diverged { key, step, .. } => Some((*key, *step)),
        TrainEvent::GenerationFinished(g) => Some((g.key, u64::MAX)),
        _ => None,
    }
}

/// The log with what a resume superseded removed: after `Resumed { key, step }`, earlier
/// events of `key` past `step` (logged by the interrupted process) are dropped.
pub fn effective_events(events: Vec<TrainEvent>) -> Vec<TrainEvent> {
    let mut out: Vec<TrainEvent> = Vec::with_capacity(events.len());
    for ev in events {
        if let TrainEvent::Resumed { key, step } = &ev {
            out.retain(|e| match job_step(e) {
                Some((k, s)) => k != *key || s <= *step,
                None => true,
            });
        }
        out.push(ev);
    }
    out
}

/// Finds a run: a folder holding `events.jsonl`, a run id (folder name) in `runs_dir`,
/// a unique prefix of one, or `latest`.
pub fn resolve_run(run: &str, runs_dir: &Path) -> Result<PathBuf> {
    let as_path = Path::new(run);
    if as_path.join(store::EVENTS_FILE).is_file() {
        return Ok(as_path.to_path_buf());
    }
    let in_dir = runs_dir.join(run);
    if !run.is_empty() && in_dir.join(store::EVENTS_FILE).is_file() {
        return Ok(in_dir);
    }
    let runs = store::list_runs(runs_dir);
    if run == "latest" {
        if let Some(r) = runs.first() {
            return Ok(r.dir.clone());
        }
    }
    let matching: Vec<_> = runs
        .iter()
        .filter(|r| !run.is_empty() && r.id.starts_with(run))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.dir.clone()),
        [] => {
            let what = if as_path.is_dir() {
                format!("{run} is a folder without {}", store::EVENTS_FILE)
            } else {
                format!("no run folder {run:?}")
            };
            anyhow::bail!(
                "{what}, and no run with that id in the runs directory {} ({} run(s) there; \
                 `selfdistill runs --runs-dir {}` lists them)",
                runs_dir.display(),
                runs.len(),
                runs_dir.display()
            )
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|r| r.id.as_str()).collect();
            anyhow::bail!(
                "{run:?} matches {} runs in {}: {}",
                many.len(),
                runs_dir.display(),
                ids.join(", ")
            )
        }
    }
}

/// Where an export goes without `--out`: `<run id>.csv`, `<run id>.json` or a folder
/// `<run id>-charts` in the current directory.
pub fn default_out(run: &RunData, format: Format) -> PathBuf {
    match format {
        Format::Csv => PathBuf::from(format!("{}.csv", run.id)),
        Format::Json => PathBuf::from(format!("{}.json", run.id)),
        Format::Svg | Format::Png => PathBuf::from(format!("{}-charts", run.id)),
    }
}

/// Writes `run` as `format` to `out` and returns the files written.
///
/// csv: `out` is the evaluations file (`<out stem>-generations.csv` is written beside it),
/// or an existing folder that receives `evaluations.csv` and `generations.csv`;
/// json: `out` is the file, or an existing folder that receives `<run id>.json`;
/// svg/png: `out` is a folder (created) that receives `accuracy`, `loss` and `generations`.
pub fn export(run: &RunData, format: Format, out: &Path) -> Result<Vec<PathBuf>> {
    match format {
        Format::Csv => {
            let (evals, gens) = if out.is_dir() {
                (out.join("evaluations.csv"), out.join("generations.csv"))
            } else {
                let stem = out
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| run.id.clone());
                let gens = out.with_file_name(format!("{stem}-generations.csv"));
                (out.to_path_buf(), gens)
            };
            write_file(&evals, tables::evaluations_csv(run)?.as_bytes())?;
            write_file(&gens, tables::generations_csv(run)?.as_bytes())?;
            Ok(vec![evals, gens])
        }
        Format::Json => {
            let path = if out.is_dir() {
                out.join(format!("{}.json", run.id))
            } else {
                out.to_path_buf()
            };
            write_file(&path, tables::json_document(run)?.as_bytes())?;
            Ok(vec![path])
        }
        Format::Svg | Format::Png => {
            std::fs::create_dir_all(out).with_context(|| {
                format!(
                    "cannot create the output folder {} (is its parent writable?)",
                    out.display()
                )
            })?;
            charts::write_all(run, format, out)
        }
    }
}

/// Writes through a temporary file and a rename, with a message naming the path.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| {
            format!(
                "cannot write {}: cannot create its folder {}",
                path.display(),
                parent.display()
            )
        })?;
    }
    store::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {} (is it writable?)", path.display()))
}
