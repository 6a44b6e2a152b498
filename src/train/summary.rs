//! The run summary: a pure fold over the event stream. The run store, the headless
//! printer and the dashboard all build it the same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::events::{GenerationSummary, JobKey, Method, RunPlan, RunStatus, TrainEvent};

/// One evaluation placed on the method's cumulative wall-clock axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub key: JobKey,
    pub step: u64,
    pub epoch: f64,
    /// Seconds since the method's first generation started (previous generations included).
    pub cumulative_s: f64,
    pub val_acc: f64,
    pub test_acc: f64,
    /// This evaluation replaced the teacher (self-distillation).
    #[serde(default)]
    pub replaced: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub plan: Option<RunPlan>,
    pub status: Option<RunStatus>,
    pub wall_s: f64,
    pub generations: Vec<GenerationSummary>,
    pub evals: Vec<EvalPoint>,
    pub teacher_replacements: usize,
    pub error: Option<String>,
    /// Jobs whose loss diverged, with the step.
    #[serde(default)]
    pub diverged: Vec<(JobKey, u64)>,
}

/// One row of the per-generation comparison, averaged over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub method: Method,
    pub generation: usize,
    pub seeds: usize,
    pub best_val_acc: f64,
    /// Standard deviation over seeds (0 for one seed).
    pub best_val_std: f64,
    pub test_acc: f64,
    pub epochs: f64,
    pub wall_s: f64,
    pub cumulative_s: f64,
    pub teacher_replacements: f64,
}

impl ComparisonRow {
    /// Best validation accuracy as a percentage, with its spread over seeds when a table
    /// has several seeds (`multi_seed`) so that its column lines up.
    pub fn best_val_text(&self, multi_seed: bool) -> String {
        if multi_seed {
            format!(
                "{:.2}±{:.2}%",
                100.0 * self.best_val_acc,
                100.0 * self.best_val_std
            )
        } else {
            format!("{:.2}%", 100.0 * self.best_val_acc)
        }
    }
}

/// When a method first matched a target accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reached {
    pub method: Method,
    pub generation: usize,
    pub cumulative_s: f64,
}

impl RunSummary {
    pub fn apply(&mut self, ev: &TrainEvent) {
        match ev {
            TrainEvent::Plan(plan) => {
                self.plan = Some(plan.clone());
                self.status = Some(RunStatus::Running);
            }
            TrainEvent::Eval(e) => {
                let before = self.cumulative_before(e.key);
                self.evals.push(EvalPoint {
                    key: e.key,
                    step: e.step,
                    epoch: e.epoch,
                    cumulative_s: before + e.elapsed_s,
                    val_acc: e.val_acc,
                    test_acc: e.test_acc,
                    replaced: false,
                });
            }
            TrainEvent::TeacherReplaced { key, step, .. } => {
                if let Some(p) = self
                    .evals
                    .iter_mut()
                    .rev()
                    .find(|p| p.key == *key && p.step == *step)
                {
                    p.replaced = true;
                }
                self.teacher_replacements += 1;
            }
            TrainEvent::Diverged { key, step, .. } => self.diverged.push((*key, *step)),
            TrainEvent::Resumed { key, step } => {
                // What an interrupted process logged past the resume point is redone.
                self.evals.retain(|p| p.key != *key || p.step <= *step);
                self.generations.retain(|g| g.key != *key);
                self.diverged.retain(|(k, _)| k != key);
                self.teacher_replacements = self.evals.iter().filter(|p| p.replaced).count();
                self.status = Some(RunStatus::Running);
                self.error = None;
            }
            TrainEvent::GenerationFinished(g) => {
                self.generations.retain(|x| x.key != g.key);
                self.generations.push(g.clone());
            }
            TrainEvent::Error { message } => self.error = Some(message.clone()),
            TrainEvent::Finished { status, wall_s } => {
                self.status = Some(*status);
                self.wall_s = *wall_s;
            }
            TrainEvent::GenerationStarted { .. }
            | TrainEvent::Step(_)
            | TrainEvent::ControlApplied { .. }
            | TrainEvent::Log { .. } => {}
        }
    }

    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a TrainEvent>) -> RunSummary {
        let mut s = RunSummary::default();
        for ev in events {
            s.apply(ev);
        }
        s
    }

    /// Wall time of the finished generations before `key` of the same seed and method.
    fn cumulative_before(&self, key: JobKey) -> f64 {
        self.generations
            .iter()
            .filter(|g| {
                g.key.seed == key.seed
                    && g.key.method == key.method
                    && g.key.generation < key.generation
            })
            .map(|g| g.wall_s)
            .sum()
    }

    /// Per (method, generation), averaged over seeds, in method then generation order.
    pub fn comparison(&self) -> Vec<ComparisonRow> {
        let mut groups: BTreeMap<(Method, usize), Vec<&GenerationSummary>> = BTreeMap::new();
        for g in &self.generations {
            groups
                .entry((g.key.method, g.key.generation))
                .or_default()
                .push(g);
        }
        groups
            .into_iter()
            .map(|((method, generation), gs)| {
                let n = gs.len() as f64;
                let mean = |f: &dyn Fn(&GenerationSummary) -> f64| {
                    gs.iter().map(|g| f(g)).sum::<f64>() / n
                };
                let best = mean(&|g| g.best_val_acc);
                let var = gs
                    .iter()
                    .map(|g| (g.best_val_acc - best).powi(2))
                    .sum::<f64>()
                    / n;
                ComparisonRow {
                    method,
                    generation,
                    seeds: gs.len(),
                    best_val_acc: best,
                    best_val_std: var.sqrt(),
                    test_acc: mean(&|g| g.test_acc_at_best),
                    epochs: mean(&|g| g.epochs),
                    wall_s: mean(&|g| g.wall_s),
                    cumulative_s: mean(&|g| self.cumulative_before(g.key) + g.wall_s),
                    teacher_replacements: mean(&|g| g.teacher_replacements as f64),
                }
            })
            .collect()
    }

    /// The best validation accuracy the conventional method reached in any generation.
    pub fn conventional_best(&self) -> Option<f64> {
        self.generations
            .iter()
            .filter(|g| g.key.method == Method::Conventional)
            .map(|g| g.best_val_acc)
            .max_by(f64::total_cmp)
    }

    /// For each method, the first evaluation (on its cumulative clock, first seed) whose
    /// validation accuracy reached `target`; sorted by time.
    pub fn first_to_reach(&self, target: f64) -> Vec<Reached> {
        let first_seed = self.evals.first().map(|e| e.key.seed);
        let mut out: Vec<Reached> = Vec::new();
        for e in self
            .evals
            .iter()
            .filter(|e| Some(e.key.seed) == first_seed && e.val_acc >= target)
        {
            if !out.iter().any(|r| r.method == e.key.method) {
                out.push(Reached {
                    method: e.key.method,
                    generation: e.key.generation,
                    cumulative_s: e.cumulative_s,
                });
            }
        }
        out.sort_by(|a, b| a.cumulative_s.total_cmp(&b.cumulative_s));
        out
    }
}

/// The per-generation comparison as a plain-text table.
pub fn format_table(summary: &RunSummary) -> String {
    let rows = summary.comparison();
    let multi_seed = rows.iter().any(|r| r.seeds > 1);
    let mut out = String::new();
    out.push_str(&format!(
        "{:<13} {:>3} {:>14} {:>9} {:>7} {:>9} {:>10} {:>5}\n",
        "method", "gen", "best val", "test", "epochs", "wall", "cumulative", "repl"
    ));
    for r in &rows {
        let best = r.best_val_text(multi_seed);
        out.push_str(&format!(
            "{:<13} {:>3} {:>14} {:>8.2}% {:>7.1} {:>8.1}s {:>9.1}s {:>5.1}\n",
            r.method.name(),
            r.generation,
            best,
            100.0 * r.test_acc,
            r.epochs,
            r.wall_s,
            r.cumulative_s,
            r.teacher_replacements
        ));
    }
    if let Some(target) = summary.conventional_best() {
        let reached = summary.first_to_reach(target);
        if let Some(first) = reached.first() {
            out.push_str(&format!(
                "first to reach conventional's best ({:.2}%): {} (generation {}, {:.1}s cumulative)\n",
                100.0 * target,
                first.method,
                first.generation,
                first.cumulative_s
            ));
        }
    }
    if multi_seed {
        out.push_str("(means over seeds; test = test accuracy of the best-validation snapshot)\n");
    } else {
        out.push_str("(test = test accuracy of the best-validation snapshot)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::events::EvalMetrics;

    fn key(method: Method, generation: usize) -> JobKey {
        JobKey {
            seed: 1,
            method,
            generation,
        }
    }

    fn gen(method: Method, generation: usize, best: f64, wall: f64) -> TrainEvent {
        TrainEvent::GenerationFinished(GenerationSummary {
            key: key(method, generation),
            best_val_acc: best,
            best_step: 10,
            test_acc_at_best: best - 0.01,
            final_val_acc: best,
            final_test_acc: best,
            epochs: 2.0,
            steps: 20,
            wall_s: wall,
            teacher_replacements: 0,
            stopped: false,
            teacher_cached_batches: 0,
            teacher_forward_batches: 0,
        })
    }

    fn eval(method: Method, generation: usize, acc: f64, elapsed: f64) -> TrainEvent {
        TrainEvent::Eval(EvalMetrics {
            key: key(method, generation),
            step: 10,
            epoch: 1.0,
            train_loss: 1.0,
            train_acc: 0.5,
            val_loss: 1.0,
            val_acc: acc,
            test_loss: 1.0,
            test_acc: acc,
            best_val_acc: acc,
            lr: 0.1,
            temperature: 4.0,
            alpha: 0.5,
            elapsed_s: elapsed,
        })
    }

    #[test]
    fn comparison_accumulates_wall_time_per_method_and_finds_first_to_reach() {
        let events = vec![
            eval(Method::Conventional, 1, 0.70, 5.0),
            gen(Method::Conventional, 1, 0.70, 10.0),
            eval(Method::Conventional, 2, 0.80, 5.0),
            gen(Method::Conventional, 2, 0.80, 10.0),
            eval(Method::SelfDistill, 1, 0.81, 8.0),
            gen(Method::SelfDistill, 1, 0.81, 10.0),
        ];
        let s = RunSummary::from_events(&events);
        let rows = s.comparison();
        assert_eq!(rows.len(), 3);
        let conv2 = rows
            .iter()
            .find(|r| r.method == Method::Conventional && r.generation == 2)
            .unwrap();
        assert!((conv2.cumulative_s - 20.0).abs() < 1e-9);
        assert_eq!(s.conventional_best(), Some(0.80));
        let reached = s.first_to_reach(0.80);
        assert_eq!(reached[0].method, Method::SelfDistill);
        assert!((reached[0].cumulative_s - 8.0).abs() < 1e-9);
        assert!(
            (reached[1].cumulative_s - 15.0).abs() < 1e-9,
            "conventional g2 at 10 + 5"
        );
        let table = format_table(&s);
        assert!(
            table.contains("81.00%") && table.contains("self"),
            "{table}"
        );
    }

    /// Several seeds: each row shows the mean best validation accuracy ± its spread (the
    /// population standard deviation over seeds), in the TUI's table and the text one.
    #[test]
    fn several_seeds_show_mean_and_spread() {
        let seeded = |seed: u64, best: f64| match gen(Method::SelfDistill, 1, best, 10.0) {
            TrainEvent::GenerationFinished(mut g) => {
                g.key.seed = seed;
                TrainEvent::GenerationFinished(g)
            }
            _ => unreachable!(),
        };
        let s = RunSummary::from_events(&[seeded(1, 0.80), seeded(2, 0.84)]);
        let rows = s.comparison();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].seeds, 2);
        assert_eq!(rows[0].best_val_text(true), "82.00±2.00%");
        assert_eq!(rows[0].best_val_text(false), "82.00%");
        let table = format_table(&s);
        assert!(table.contains("82.00±2.00%"), "{table}");
        let one = RunSummary::from_events(&[seeded(1, 0.80)]);
        assert!(!format_table(&one).contains('±'));
    }
}
