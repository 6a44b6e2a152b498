//! The headless runner: prints one line per evaluation and, at the end, the
//! per-generation comparison table. It consumes the same events as the dashboard.

use std::io::Write;

use crate::train::events::{RunStatus, TeacherSource, TrainEvent};
use crate::train::summary::{format_table, RunSummary};

/// Turns events into text lines. Evaluation lines are held back one event so that a
/// teacher replacement triggered by that evaluation lands on the same line.
#[derive(Default)]
pub struct HeadlessPrinter {
    held: Option<(crate::train::events::JobKey, u64, String)>,
    pub summary: RunSummary,
    epochs: usize,
}

impl HeadlessPrinter {
    /// Feeds one event; returns the lines to print now.
    pub fn feed(&mut self, ev: &TrainEvent) -> Vec<String> {
        self.summary.apply(ev);
        let mut out = Vec::new();
        if let TrainEvent::TeacherReplaced {
            key,
            step,
            old_acc,
            new_acc,
            ..
        } = ev
        {
            let note = match old_acc {
                Some(old) => format!(
                    "  teacher <- {:.2}% (was {:.2}%)",
                    100.0 * new_acc,
                    100.0 * old
                ),
                None => format!("  teacher <- {:.2}% (first)", 100.0 * new_acc),
            };
            match self.held.take() {
                Some((k, s, line)) if k == *key && s == *step => out.push(line + &note),
                other => {
                    out.extend(other.map(|(_, _, l)| l));
                    out.push(format!("[{key}] step {step}{note}"));
                }
            }
            return out;
        }
        if ev.is_essential() {
            out.extend(self.held.take().map(|(_, _, l)| l));
        }
        match ev {
            TrainEvent::Plan(p) => {
                self.epochs = p.epochs;
                out.push(format!(
                    "run {} · preset {} · {} · {} · backend {}",
                    p.run_id, p.preset, p.dataset, p.model, p.backend
                ));
                out.push(format!(
                    "train {} / val {} / test {} images · {} jobs x {} epochs x {} steps · T={} alpha={}",
                    p.train_size,
                    p.val_size,
                    p.test_size,
                    p.jobs.len(),
                    p.epochs,
                    p.steps_per_epoch,
                    p.temperature,
                    p.alpha
                ));
                if let Some(dir) = &p.run_dir {
                    out.push(format!("run folder: {}", dir.display()));
                }
                if let Some(dir) = &p.autotune_cache {
                    out.push(format!("GPU autotune picks: {}", dir.display()));
                }
            }
            TrainEvent::GenerationStarted {
                key,
                teacher,
                teacher_val_acc,
            } => {
                let t = match (teacher, teacher_val_acc) {
                    (TeacherSource::None, _) | (_, None) => "no teacher".to_string(),
                    (TeacherSource::PreviousFinal, Some(a)) => {
                        format!(
                            "teacher: previous generation's final network (val {:.2}%)",
                            100.0 * a
                        )
                    }
                    (TeacherSource::PreviousBest, Some(a)) => {
                        format!(
                            "teacher: previous generation's best network (val {:.2}%)",
                            100.0 * a
                        )
                    }
                };
                out.push(format!("[{key}] start · {t}"));
            }
            TrainEvent::Eval(e) => {
                let line = format!(
                    "[{}] ep {:>5.2}/{} step {:>6}  loss {:.4}  train {:6.2}%  val {:6.2}%  test {:6.2}%  T={} a={} lr {:.4}",
                    e.key,
                    e.epoch,
                    self.epochs,
                    e.step,
                    e.train_loss,
                    100.0 * e.train_acc,
                    100.0 * e.val_acc,
                    100.0 * e.test_acc,
                    e.temperature,
                    e.alpha,
                    e.lr
                );
                self.held = Some((e.key, e.step, line));
            }
            TrainEvent::ControlApplied { key, step, control } => {
                out.push(format!("[{key}] control applied at step {step}: {control}"));
            }
            TrainEvent::GenerationFinished(g) => {
                out.push(format!(
                    "[{}] done · best val {:.2}% (step {}) · test at best {:.2}% · {:.1}s · {} teacher replacements{}",
                    g.key,
                    100.0 * g.best_val_acc,
                    g.best_step,
                    100.0 * g.test_acc_at_best,
                    g.wall_s,
                    g.teacher_replacements,
                    if g.stopped { " · stopped early" } else { "" }
                ));
            }
            TrainEvent::Diverged { key, step, loss } => {
                out.push(format!(
                    "[{key}] DIVERGED at step {step} (loss {loss}); its remaining generations are skipped, other methods go on"
                ));
            }
            TrainEvent::Resumed { key, step } => {
                out.push(format!("[{key}] resumed after step {step}"));
            }
            TrainEvent::Log { message } => out.push(format!("note: {message}")),
            TrainEvent::Error { message } => out.push(format!("error: {message}")),
            TrainEvent::Finished { status, wall_s } => {
                out.push(format!("run {status} after {wall_s:.1}s"));
                if !self.summary.generations.is_empty() {
                    out.push(String::new());
                    out.extend(format_table(&self.summary).lines().map(str::to_string));
                }
            }
            TrainEvent::Step(_) | TrainEvent::TeacherReplaced { .. } => {}
        }
        out
    }
}

/// Prints a running trainer's events until it finishes; returns its final status.
pub fn print_run(
    events: &crossbeam_channel::Receiver<TrainEvent>,
    out: &mut impl Write,
) -> std::io::Result<RunStatus> {
    print_run_after(events, out, RunSummary::default())
}

/// Like [`print_run`] for a resumed run: `past` is what earlier processes recorded,
/// so the final table covers the whole run.
pub fn print_run_after(
    events: &crossbeam_channel::Receiver<TrainEvent>,
    out: &mut impl Write,
    past: RunSummary,
) -> std::io::Result<RunStatus> {
    let mut printer = HeadlessPrinter {
        summary: past,
        ..Default::default()
    };
    let mut status = RunStatus::Failed;
    for ev in events.iter() {
        for line in printer.feed(&ev) {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        if let TrainEvent::Finished { status: s, .. } = ev {
            status = s;
            break;
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_lines_name_the_run_folder_and_a_gpu_runs_autotune_picks() {
        let mut plan = crate::train::events::RunPlan {
            run_id: "r1".into(),
            preset: "quick".into(),
            dataset: "synthetic".into(),
            model: "cnn".into(),
            backend: "cuda".into(),
            jobs: Vec::new(),
            epochs: 1,
            steps_per_epoch: 1,
            evals_per_generation: 1,
            train_size: 1,
            val_size: 1,
            test_size: 1,
            temperature: 4.0,
            alpha: 0.5,
            run_dir: Some("/runs/r1".into()),
            autotune_cache: None,
            read_every: 1,
        };
        let lines = HeadlessPrinter::default().feed(&TrainEvent::Plan(plan.clone()));
        assert!(
            lines.iter().any(|l| l == "run folder: /runs/r1"),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.contains("autotune")), "{lines:?}");
        plan.autotune_cache = Some("/home/u/.cache/selfdistill/autotune".into());
        let lines = HeadlessPrinter::default().feed(&TrainEvent::Plan(plan));
        assert!(
            lines
                .iter()
                .any(|l| l == "GPU autotune picks: /home/u/.cache/selfdistill/autotune"),
            "{lines:?}"
        );
    }
}
