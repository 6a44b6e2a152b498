//! Resume points: everything needed to continue a run exactly where its last
//! evaluation left it, written at every evaluation boundary and between generations.
//!
//! A resume point is a folder `resume-<n>/` (networks, optimiser state, `state.json`);
//! `resume.json` names the current one and is replaced atomically, so a process killed
//! at any moment leaves either the previous point or the new one, never half of one.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::write_atomic;
use crate::train::events::{JobKey, TeacherSource};

pub const POINTER_FILE: &str = "resume.json";
const STATE_FILE: &str = "state.json";

/// Network files inside a resume folder.
pub mod files {
    pub const STUDENT: &str = "student.mpk";
    pub const OPTIMIZER: &str = "optimizer.mpk";
    pub const TEACHER: &str = "teacher.mpk";
    pub const BEST: &str = "best.mpk";
    pub const PREV_FINAL: &str = "prev-final.mpk";
    pub const PREV_BEST: &str = "prev-best.mpk";
    pub const PREV_TEACHER: &str = "prev-teacher.mpk";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    /// Index into the plan's job list of the job to continue or start.
    pub job_index: usize,
    pub key: JobKey,
    pub run_step: u64,
    pub temperature: f64,
    pub alpha: f64,
    pub point: ResumePoint,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ResumePoint {
    /// Start `key` from scratch; `previous` describes the networks the previous
    /// generation of the same method left (files `prev-*.mpk`).
    JobStart { previous: Option<PreviousMeta> },
    /// Continue `key` right after its evaluation at `step`.
    MidJob(MidJobMeta),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousMeta {
    pub final_acc: f64,
    pub best_acc: f64,
    /// Self-distillation's teacher at the end of the generation.
    pub teacher_acc: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestMeta {
    pub val_acc: f64,
    pub step: u64,
    pub test_acc: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MidJobMeta {
    pub step: u64,
    /// The augmentation RNG of the epoch in progress, as a ChaCha word position.
    pub aug_epoch: usize,
    pub aug_word_pos: String,
    pub elapsed_s: f64,
    pub source: TeacherSource,
    pub teacher_acc: Option<f64>,
    pub best: Option<BestMeta>,
    pub replacements: usize,
    pub last_val_acc: f64,
    pub last_test_acc: f64,
}

/// Creates the next resume folder; fill it, then `commit`.
pub fn begin(run_dir: &Path, seq: u64) -> Result<PathBuf> {
    let dir = run_dir.join(format!("resume-{seq}"));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Makes `dir` the current resume point and deletes the one it replaces.
pub fn commit(run_dir: &Path, dir: &Path, state: &ResumeState) -> Result<()> {
    write_atomic(&dir.join(STATE_FILE), &serde_json::to_vec_pretty(state)?)?;
    let previous = current_dir(run_dir);
    let name = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    write_atomic(
        &run_dir.join(POINTER_FILE),
        &serde_json::to_vec(&serde_json::json!({ "dir": name }))?,
    )?;
    if let Some(old) = previous {
        if old != dir {
            let _ = fs::remove_dir_all(old);
        }
    }
    Ok(())
}

fn current_dir(run_dir: &Path) -> Option<PathBuf> {
    let text = fs::read(run_dir.join(POINTER_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let name = v.get("dir")?.as_str()?;
    // Only a plain folder name inside the run folder is accepted.
    if name.contains('/') || name.contains("..") || !name.starts_with("resume-") {
        return None;
    }
    Some(run_dir.join(name))
}

/// The current resume point, if the run got as far as one.
pub fn load(run_dir: &Path) -> Result<Option<(PathBuf, ResumeState)>> {
    let Some(dir) = current_dir(run_dir) else {
        return Ok(None);
    };
    let path = dir.join(STATE_FILE);
    let state = serde_json::from_slice(
        &fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a valid resume state", path.display()))?;
    Ok(Some((dir, state)))
}

/// Sequence number for the next resume folder (continues after a resume).
pub fn next_seq(run_dir: &Path) -> u64 {
    current_dir(run_dir)
        .and_then(|d| {
            d.file_name()?
                .to_str()?
                .strip_prefix("resume-")?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |n| n + 1)
}
