//! Distillation: the Hinton KD loss and who teaches whom.

mod loss;
mod teacher_cache;

pub use loss::{correct_count, cross_entropy, kd_loss, kl_batchmean};
pub use teacher_cache::TeacherCache;
