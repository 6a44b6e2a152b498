//! CSV and JSON exports. Numbers are written with Rust's shortest round-trip formatting,
//! so they read back exactly as logged.

use anyhow::Result;
use serde::Serialize;

use super::{ControlRow, EvalRow, GenerationRow, GenerationStart, Replacement, RunData};
use crate::store::METRIC_COLUMNS;
use crate::train::summary::{ComparisonRow, RunSummary};

/// Columns of the evaluations CSV, one row per evaluation: the run folder's
/// `metrics.csv` columns plus the cumulative time across generations.
pub const EVAL_COLUMNS: [&str; METRIC_COLUMNS.len() + 1] = {
    let mut cols = [""; METRIC_COLUMNS.len() + 1];
    let mut i = 0;
    while i < METRIC_COLUMNS.len() {
        cols[i] = METRIC_COLUMNS[i];
        i += 1;
    }
    cols[METRIC_COLUMNS.len()] = "cumulative_s";
    cols
};

/// Columns of the generations CSV, one row per (seed, method, generation).
pub const GENERATION_COLUMNS: [&str; 14] = [
    "seed",
    "method",
    "generation",
    "best_val_acc",
    "best_step",
    "test_acc_at_best",
    "final_val_acc",
    "final_test_acc",
    "epochs",
    "steps",
    "wall_s",
    "cumulative_s",
    "teacher_replacements",
    "stopped",
];

fn to_string(w: csv::Writer<Vec<u8>>) -> Result<String> {
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(String::from_utf8(bytes)?)
}

pub fn evaluations_csv(run: &RunData) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(EVAL_COLUMNS)?;
    for r in run.evals() {
        let e = &r.eval;
        w.write_record([
            e.key.seed.to_string(),
            e.key.method.name().to_string(),
            e.key.generation.to_string(),
            e.step.to_string(),
            e.epoch.to_string(),
            e.train_loss.to_string(),
            e.train_acc.to_string(),
            e.val_loss.to_string(),
            e.val_acc.to_string(),
            e.test_loss.to_string(),
            e.test_acc.to_string(),
            e.best_val_acc.to_string(),
            e.lr.to_string(),
            e.temperature.to_string(),
            e.alpha.to_string(),
            e.elapsed_s.to_string(),
            r.cumulative_s.to_string(),
        ])?;
    }
    to_string(w)
}

pub fn generations_csv(run: &RunData) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(GENERATION_COLUMNS)?;
    for r in run.generations() {
        let g = &r.generation;
        w.write_record([
            g.key.seed.to_string(),
            g.key.method.name().to_string(),
            g.key.generation.to_string(),
            g.best_val_acc.to_string(),
            g.best_step.to_string(),
            g.test_acc_at_best.to_string(),
            g.final_val_acc.to_string(),
            g.final_test_acc.to_string(),
            g.epochs.to_string(),
            g.steps.to_string(),
            g.wall_s.to_string(),
            r.cumulative_s.to_string(),
            g.teacher_replacements.to_string(),
            g.stopped.to_string(),
        ])?;
    }
    to_string(w)
}

/// The whole run as one JSON document.
#[derive(Serialize)]
struct Document<'a> {
    run_id: &'a str,
    run_dir: String,
    /// The resolved preset as saved in the run folder (TOML text), when present.
    preset_toml: Option<String>,
    summary: &'a RunSummary,
    /// Per (method, generation), averaged over seeds.
    comparison: Vec<ComparisonRow>,
    generations: Vec<GenerationRow>,
    evaluations: Vec<EvalRow>,
    teacher_replacements: Vec<Replacement>,
    controls: Vec<ControlRow>,
    generation_starts: Vec<GenerationStart>,
}

pub fn json_document(run: &RunData) -> Result<String> {
    let doc = Document {
        run_id: &run.id,
        run_dir: run.dir.display().to_string(),
        preset_toml: std::fs::read_to_string(run.dir.join(crate::store::PRESET_FILE)).ok(),
        summary: &run.summary,
        comparison: run.summary.comparison(),
        generations: run.generations(),
        evaluations: run.evals(),
        teacher_replacements: run.replacements(),
        controls: run.controls(),
        generation_starts: run.generation_starts(),
    };
    let mut s = serde_json::to_string_pretty(&doc)?;
    s.push('\n');
    Ok(s)
}
