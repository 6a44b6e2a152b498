//! Learning-rate schedules as pure functions of the step, so a resumed run needs only
//! the step count (Burn's cosine scheduler also restarts after its horizon).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Constant,
    /// Cosine annealing from `lr` to 0 over the generation.
    #[default]
    Cosine,
    /// Multiply by `gamma` at each milestone epoch.
    MultiStep,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    pub milestones: Vec<usize>,
    pub gamma: f64,
}

impl Schedule {
    /// Learning rate for the optimiser step with 0-based index `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                let t = step.min(self.total_steps) as f64 / self.total_steps.max(1) as f64;
                0.5 * self.base_lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
            ScheduleKind::MultiStep => {
                let epoch = (step / self.steps_per_epoch.max(1)) as usize;
                let passed = self.milestones.iter().filter(|m| epoch >= **m).count();
                self.base_lr * self.gamma.powi(passed as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            base_lr: 0.1,
            total_steps: 100,
            steps_per_epoch: 10,
            milestones: vec![5, 8],
            gamma: 0.1,
        }
    }

    #[test]
    fn cosine_starts_at_base_halves_midway_and_never_restarts() {
        let s = sched(ScheduleKind::Cosine);
        assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(50) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(99) < 0.001);
        assert!(s.lr_at(150) < 1e-12, "must not restart after the horizon");
    }

    #[test]
    fn multistep_drops_at_milestone_epochs() {
        let s = sched(ScheduleKind::MultiStep);
        assert!((s.lr_at(49) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(50) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(80) - 0.001).abs() < 1e-12);
        assert_eq!(sched(ScheduleKind::Constant).lr_at(99), 0.1);
    }
}
