//! The typed event stream from the trainer thread, and the controls that flow back.
//!
//! Every consumer (dashboard, headless printer, run store, tests) sees the same events.
//! Per-step metrics are the only events that may be coalesced: when the consumer lags,
//! the trainer folds steps together instead of queueing without bound. Everything else
//! (evaluations, teacher replacements, controls, lifecycle, errors) is always delivered.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

/// A distillation method (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// One generation, cross-entropy only.
    Baseline,
    /// Born-Again generations: generation k is taught by generation k-1.
    Conventional,
    /// Best-so-far network of the running generation is the teacher.
    #[serde(rename = "self")]
    SelfDistill,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Baseline, Method::Conventional, Method::SelfDistill];

    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Conventional => "conventional",
            Method::SelfDistill => "self",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which training job an event belongs to: one (seed, method, generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobKey {
    pub seed: u64,
    pub method: Method,
    /// 1-based.
    pub generation: usize,
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} g{} s{}", self.method, self.generation, self.seed)
    }
}

/// Where a generation's initial teacher comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherSource {
    /// CE only (until a self-distillation replacement).
    None,
    /// The final network of the previous generation.
    PreviousFinal,
    /// The best-validation snapshot of the previous generation.
    PreviousBest,
}

/// A control sent from the UI to the trainer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "kebab-case")]
pub enum Control {
    Pause,
    Resume,
    SetTemperature(f64),
    SetAlpha(f64),
    /// Finish the current step, write checkpoints and summary, end the run.
    Stop,
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Control::Pause => f.write_str("pause"),
            Control::Resume => f.write_str("resume"),
            Control::SetTemperature(t) => write!(f, "T={t}"),
            Control::SetAlpha(a) => write!(f, "alpha={a}"),
            Control::Stop => f.write_str("stop"),
        }
    }
}

/// What the run will do, sent first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub run_id: String,
    pub preset: String,
    pub dataset: String,
    pub model: String,
    pub backend: String,
    pub jobs: Vec<JobKey>,
    pub epochs: usize,
    pub steps_per_epoch: u64,
    /// Evaluations per generation (epochs, or more with `eval_every`).
    pub evals_per_generation: usize,
    pub train_size: usize,
    pub val_size: usize,
    pub test_size: usize,
    pub temperature: f64,
    pub alpha: f64,
    pub run_dir: Option<PathBuf>,
    /// CubeCL's autotune picks this run used (GPU runs only): same picks, same numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autotune_cache: Option<PathBuf>,
    /// Training steps per read of loss and hit count from the device (a sync each); the
    /// numbers do not depend on it. 1 in runs recorded before the field existed.
    #[serde(default = "super::readback::every_step")]
    pub read_every: usize,
}

impl RunPlan {
    pub fn steps_per_generation(&self) -> u64 {
        self.steps_per_epoch * self.epochs as u64
    }

    pub fn total_steps(&self) -> u64 {
        self.steps_per_generation() * self.jobs.len() as u64
    }
}

/// Loss of one optimiser step (or the mean of several coalesced steps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub key: JobKey,
    /// Step within the generation (1-based, after the update).
    pub step: u64,
    /// Steps completed in the whole run, for progress.
    pub run_step: u64,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub temperature: f64,
    pub alpha: f64,
    pub has_teacher: bool,
    /// How many steps this event stands for (> 1 when the consumer lagged).
    pub coalesced: u32,
    #[serde(skip)]
    pub(crate) ticket: Ticket,
}

/// One evaluation: train metrics since the previous evaluation, validation and test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub key: JobKey,
    pub step: u64,
    /// Epochs completed, fractional when evaluating every N steps.
    pub epoch: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub best_val_acc: f64,
    pub lr: f64,
    pub temperature: f64,
    pub alpha: f64,
    pub elapsed_s: f64,
}

/// Results of one finished generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub key: JobKey,
    pub best_val_acc: f64,
    pub best_step: u64,
    /// Test accuracy of the best-validation snapshot (what one would report).
    pub test_acc_at_best: f64,
    pub final_val_acc: f64,
    pub final_test_acc: f64,
    pub epochs: f64,
    pub steps: u64,
    pub wall_s: f64,
    pub teacher_replacements: usize,
    /// True when a stop control ended it early.
    pub stopped: bool,
    /// Training steps whose teacher logits came from the teacher cache (no augmentation:
    /// the logits of an unchanged teacher on an unchanged input), and steps that ran the
    /// teacher's forward pass; counted since the job started or resumed (0 and 0 in runs
    /// recorded before the fields existed).
    #[serde(default)]
    pub teacher_cached_batches: u64,
    #[serde(default)]
    pub teacher_forward_batches: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Finished,
    Stopped,
    Failed,
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Stopped => "stopped",
            RunStatus::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum TrainEvent {
    Plan(RunPlan),
    GenerationStarted {
        key: JobKey,
        teacher: TeacherSource,
        /// Validation accuracy of the initial teacher, when there is one.
        teacher_val_acc: Option<f64>,
    },
    Step(StepMetrics),
    Eval(EvalMetrics),
    TeacherReplaced {
        key: JobKey,
        step: u64,
        epoch: f64,
        /// Validation accuracy of the replaced teacher; None when there was none.
        old_acc: Option<f64>,
        new_acc: f64,
    },
    /// A control took effect: `step` is the first step that ran under it.
    ControlApplied {
        key: JobKey,
        step: u64,
        control: Control,
    },
    GenerationFinished(GenerationSummary),
    /// The loss became NaN or infinite: this method's remaining generations are
    /// skipped, the other methods go on.
    Diverged {
        key: JobKey,
        step: u64,
        loss: f64,
    },
    /// The run continues from a resume point: events of `key` after `step` that an
    /// interrupted process logged are superseded by what follows.
    Resumed {
        key: JobKey,
        step: u64,
    },
    /// Informational message (checkpoint written, data loaded, ...).
    Log {
        message: String,
    },
    Finished {
        status: RunStatus,
        wall_s: f64,
    },
    Error {
        message: String,
    },
}

impl TrainEvent {
    /// Events a consumer must never miss (everything but per-step metrics).
    pub fn is_essential(&self) -> bool {
        !matches!(self, TrainEvent::Step(_))
    }
}

/// Marks a step event as in flight; dropping the event frees its slot.
#[derive(Debug, Default)]
pub(crate) struct Ticket(Option<Arc<AtomicUsize>>);

impl Clone for Ticket {
    /// A copy does not hold a slot: only the delivered original counts.
    fn clone(&self) -> Self {
        Ticket(None)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Most step events allowed in the channel before the trainer starts coalescing.
pub const MAX_STEPS_IN_FLIGHT: usize = 256;

/// The trainer's side of the event channel. Never blocks.
#[derive(Clone)]
pub struct EventSender {
    tx: Sender<TrainEvent>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

impl EventSender {
    /// Sends an essential event. A disconnected consumer is not an error for the
    /// trainer: the run store still records everything.
    pub fn send(&self, ev: TrainEvent) {
        let _ = self.tx.send(ev);
    }

    /// Offers a step event; returns it back when the consumer is lagging so the
    /// caller can fold the next step into it.
    pub fn offer_step(&self, mut m: StepMetrics) -> Result<(), StepMetrics> {
        if self.in_flight.load(Ordering::Acquire) >= self.max_in_flight {
            return Err(m);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        m.ticket = Ticket(Some(self.in_flight.clone()));
        match self.tx.send(TrainEvent::Step(m)) {
            Ok(()) => Ok(()),
            Err(_) => Ok(()), // nobody listening: dropping is fine (ticket released)
        }
    }
}

/// Creates the event channel with the default coalescing threshold.
pub fn event_channel() -> (EventSender, Receiver<TrainEvent>) {
    event_channel_with_capacity(MAX_STEPS_IN_FLIGHT)
}

/// Creates the event channel; step events beyond `max_steps_in_flight` unread ones
/// are coalesced by the trainer.
pub fn event_channel_with_capacity(
    max_steps_in_flight: usize,
) -> (EventSender, Receiver<TrainEvent>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        EventSender {
            tx,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: max_steps_in_flight.max(1),
        },
        rx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_recorded_before_the_read_cadence_existed_read_every_step() {
        let mut plan = serde_json::json!({
            "run_id": "r", "preset": "quick", "dataset": "synthetic", "model": "cnn",
            "backend": "cuda", "jobs": [], "epochs": 1, "steps_per_epoch": 1,
            "evals_per_generation": 1, "train_size": 1, "val_size": 1, "test_size": 1,
            "temperature": 4.0, "alpha": 0.5, "run_dir": null, "read_every": 8,
        });
        let read = |v: &serde_json::Value| serde_json::from_value::<RunPlan>(v.clone()).unwrap();
        assert_eq!(read(&plan).read_every, 8);
        plan.as_object_mut().unwrap().remove("read_every");
        assert_eq!(read(&plan).read_every, 1);
    }

    fn step(n: u64) -> StepMetrics {
        StepMetrics {
            key: JobKey {
                seed: 1,
                method: Method::Baseline,
                generation: 1,
            },
            step: n,
            run_step: n,
            epoch: 1,
            loss: 1.0,
            lr: 0.1,
            temperature: 4.0,
            alpha: 0.5,
            has_teacher: false,
            coalesced: 1,
            ticket: Ticket::default(),
        }
    }

    #[test]
    fn step_events_are_refused_while_consumer_lags_and_accepted_after_it_reads() {
        let (tx, rx) = event_channel_with_capacity(2);
        assert!(tx.offer_step(step(1)).is_ok());
        assert!(tx.offer_step(step(2)).is_ok());
        let back = tx.offer_step(step(3)).unwrap_err();
        assert_eq!(back.step, 3);
        // Essential events are never refused.
        tx.send(TrainEvent::Log {
            message: "x".into(),
        });
        drop(rx.recv().unwrap()); // consumer reads one step: a slot frees up
        assert!(tx.offer_step(step(4)).is_ok());
        assert!(tx.offer_step(step(5)).is_err());
        let rest: Vec<_> = rx.try_iter().collect();
        assert_eq!(rest.len(), 3);
    }

    #[test]
    fn events_round_trip_through_json() {
        let ev = TrainEvent::ControlApplied {
            key: JobKey {
                seed: 3,
                method: Method::SelfDistill,
                generation: 2,
            },
            step: 17,
            control: Control::SetTemperature(2.5),
        };
        let s = serde_json::to_string(&ev).unwrap();
        assert!(s.contains("\"self\""), "{s}");
        let back: TrainEvent = serde_json::from_str(&s).unwrap();
        match back {
            TrainEvent::ControlApplied { step, control, .. } => {
                assert_eq!(step, 17);
                assert_eq!(control, Control::SetTemperature(2.5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
