//! Distillation: the Hinton KD loss and who teaches whom.

mod loss;

pub use loss::{correct_count, cross_entropy, kd_loss, kl_batchmean};
