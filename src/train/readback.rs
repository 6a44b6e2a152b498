//! Per-step loss and hit counts read back from the device a few steps at a time.
//!
//! Every read is a host/device sync: on a GPU the device idles from the moment the
//! read returns until the host has prepared the next step (batch, upload, the autodiff
//! graph). Kept on the device, `every` steps' scalars cost one sync and one transfer.
//! The values are the same bits either way (the loss is the device's f32 widened to f64,
//! the hit count an integer well below f32's 2^24 exact range); only when the host sees
//! them changes. CPU backends compute eagerly, so they read every step
//! ([`KernelBackend::READBACK_EVERY`](crate::model::KernelBackend::READBACK_EVERY)).

use burn::prelude::*;

/// The cadence of records written before the cadence was recorded: every step.
pub fn every_step() -> usize {
    1
}

/// Queued steps: their loss (`[1]`), their hit count (`[1]`, as float so that one
/// transfer carries both) and what the caller needs to report them (`M`).
pub struct Readback<B: Backend, M> {
    every: usize,
    values: Vec<Tensor<B, 1>>,
    meta: Vec<M>,
}

/// One step's values as the host sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRead<M> {
    pub meta: M,
    pub loss: f64,
    pub correct: u64,
}

impl<B: Backend, M> Readback<B, M> {
    /// Reads once every `every` steps (0 is taken as 1; `usize::MAX`: only on
    /// [`Readback::drain`]).
    pub fn new(every: usize) -> Self {
        let every = every.max(1);
        let capacity = every.min(64);
        Readback {
            every,
            values: Vec::with_capacity(2 * capacity),
            meta: Vec::with_capacity(capacity),
        }
    }

    pub fn every(&self) -> usize {
        self.every
    }

    /// Steps queued and not yet read.
    pub fn pending(&self) -> usize {
        self.meta.len()
    }

    /// Queues a step; once `every` steps are queued, reads them all (in step order).
    #[must_use = "the steps read must be reported"]
    pub fn push(
        &mut self,
        loss: Tensor<B, 1>,
        correct: Tensor<B, 1, Int>,
        meta: M,
    ) -> Vec<StepRead<M>> {
        self.values.push(loss);
        self.values.push(correct.float());
        self.meta.push(meta);
        if self.meta.len() >= self.every {
            self.drain()
        } else {
            Vec::new()
        }
    }

    /// Reads every queued step now (one sync; nothing when none is queued).
    #[must_use = "the steps read must be reported"]
    pub fn drain(&mut self) -> Vec<StepRead<M>> {
        if self.meta.is_empty() {
            return Vec::new();
        }
        let data = Tensor::cat(std::mem::take(&mut self.values), 0).into_data();
        let values: Vec<f64> = data.iter::<f64>().collect();
        debug_assert_eq!(values.len(), 2 * self.meta.len());
        self.meta
            .drain(..)
            .zip(values.chunks_exact(2))
            .map(|(meta, v)| StepRead {
                meta,
                loss: v[0],
                // An exact small integer stored as float; NaN cannot occur (a count).
                correct: v[1] as u64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{flex::FlexDevice, Flex};
    use burn::tensor::{ElementConversion, TensorData};

    type B = Flex;

    fn loss(v: f32) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(vec![v], [1]), &FlexDevice)
    }

    fn hits(v: i64) -> Tensor<B, 1, Int> {
        Tensor::from_data(TensorData::new(vec![v], [1]), &FlexDevice)
    }

    #[test]
    fn reads_come_in_step_order_once_every_steps_are_queued() {
        let mut r = Readback::<B, u64>::new(3);
        assert!(r.push(loss(0.5), hits(7), 1).is_empty());
        assert!(r.push(loss(f32::NAN), hits(0), 2).is_empty());
        assert_eq!(r.pending(), 2);
        let out = r.push(loss(2.25), hits(64), 3);
        assert_eq!(r.pending(), 0);
        assert_eq!(out.len(), 3);
        assert_eq!(out.iter().map(|s| s.meta).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((out[0].loss, out[0].correct), (0.5, 7));
        assert!(out[1].loss.is_nan());
        assert_eq!((out[2].loss, out[2].correct), (2.25, 64));
        assert!(r.drain().is_empty());
    }

    #[test]
    fn drain_reads_a_partial_queue_and_every_one_reads_each_step() {
        let mut r = Readback::<B, ()>::new(4);
        assert!(r.push(loss(1.0), hits(1), ()).is_empty());
        let out = r.drain();
        assert_eq!(out.len(), 1);
        assert_eq!(r.pending(), 0);
        let mut each = Readback::<B, ()>::new(0);
        assert_eq!(each.every(), 1);
        assert_eq!(each.push(loss(3.0), hits(2), ()).len(), 1);
    }

    #[test]
    fn values_are_the_same_bits_as_reading_each_tensor() {
        // The trainer used to read `into_scalar` per tensor; the batched read must agree.
        let l = 0.123_456_79_f32;
        let direct = loss(l).into_scalar().elem::<f64>();
        let mut r = Readback::<B, ()>::new(2);
        assert!(r.push(loss(l), hits(16_777_215), ()).is_empty());
        let out = r.push(loss(1e-30), hits(0), ());
        assert_eq!(out[0].loss.to_bits(), direct.to_bits());
        assert_eq!(out[0].correct, 16_777_215);
        assert_eq!(out[1].loss, 1e-30_f32 as f64);
    }
}
