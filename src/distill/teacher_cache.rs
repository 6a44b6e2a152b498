//! Teacher logits kept per training sample while neither the teacher nor the sample's
//! input changes.
//!
//! Without augmentation a sample's input is the same every epoch, and the teacher only
//! changes when it is replaced (self-distillation) or at a new generation, so its forward
//! pass over a sample the second time computes what the first did. The cache keeps each
//! sample's logits on the device (`[samples, classes]`; no host round trip) from the first
//! forward pass after the teacher was set; a batch whose rows are all there is a gather
//! instead of a forward pass.

use burn::prelude::*;
use burn::tensor::{IndexingUpdateOp, TensorData};

pub struct TeacherCache<B: Backend> {
    /// Rows not `valid` are zero, so that adding a fresh row stores it exactly (Burn's
    /// `select_assign` adds; it has no overwrite).
    logits: Tensor<B, 2>,
    valid: Vec<bool>,
    /// Teacher replacements the rows belong to (see [`TeacherCache::logits`]).
    teacher_version: u64,
    hits: u64,
    misses: u64,
}

impl<B: Backend> TeacherCache<B> {
    /// An empty cache for sample indices `0..samples` of `classes` logits each.
    pub fn new(samples: usize, classes: usize, device: &B::Device) -> Self {
        TeacherCache {
            logits: Tensor::zeros([samples, classes], device),
            valid: vec![false; samples],
            teacher_version: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The teacher's logits for the samples `indices` (a batch, no repeats), whose input
    /// is `x`: gathered when every row is cached for `teacher_version`, otherwise
    /// `forward(x)`, whose rows not yet cached are stored. A different `teacher_version`
    /// (a replaced teacher) empties the cache first.
    pub fn logits<I>(
        &mut self,
        teacher_version: u64,
        indices: &[usize],
        x: I,
        forward: impl FnOnce(I) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        if teacher_version != self.teacher_version {
            self.clear();
            self.teacher_version = teacher_version;
        }
        let device = self.logits.device();
        let rows = |ids: &[usize]| {
            let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            let n = ids.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &device)
        };
        if indices.iter().all(|&i| self.valid[i]) {
            self.hits += 1;
            return self.logits.clone().select(0, rows(indices));
        }
        self.misses += 1;
        let fresh = forward(x);
        let missing: Vec<usize> = (0..indices.len())
            .filter(|&p| !self.valid[indices[p]])
            .collect();
        let (samples, values): (Vec<usize>, Tensor<B, 2>) = if missing.len() == indices.len() {
            (indices.to_vec(), fresh.clone())
        } else {
            let samples = missing.iter().map(|&p| indices[p]).collect();
            (samples, fresh.clone().select(0, rows(&missing)))
        };
        for &s in &samples {
            self.valid[s] = true;
        }
        self.logits =
            self.logits
                .clone()
                .select_assign(0, rows(&samples), values, IndexingUpdateOp::Add);
        fresh
    }

    /// Forgets every row.
    fn clear(&mut self) {
        if self.valid.iter().any(|&v| v) {
            let device = self.logits.device();
            self.logits = Tensor::zeros(self.logits.dims(), &device);
            self.valid.fill(false);
        }
    }

    /// Batches served from the cache, and batches that ran the teacher.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{flex::FlexDevice, Flex};

    type B = Flex;

    /// A stand-in teacher: row i of the batch is [10 * sample, 10 * sample + 1] + offset,
    /// so a wrong row, a stale version or a missed store shows in the values.
    fn teacher(offset: f32) -> impl Fn(Vec<usize>) -> Tensor<B, 2> {
        move |ids: Vec<usize>| {
            let v: Vec<f32> = ids
                .iter()
                .flat_map(|&s| [10.0 * s as f32 + offset, 10.0 * s as f32 + 1.0 + offset])
                .collect();
            Tensor::from_data(TensorData::new(v, [ids.len(), 2]), &FlexDevice)
        }
    }

    fn values(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_batch_is_gathered_once_every_row_is_cached_for_the_same_teacher() {
        let mut cache = TeacherCache::<B>::new(6, 2, &FlexDevice);
        let t = teacher(0.5);
        let calls = std::cell::Cell::new(0);
        let mut get = |version: u64, ids: &[usize], t: &dyn Fn(Vec<usize>) -> Tensor<B, 2>| {
            values(cache.logits(version, ids, ids.to_vec(), |x| {
                calls.set(calls.get() + 1);
                t(x)
            }))
        };
        // Epoch 1: every batch runs the teacher.
        assert_eq!(get(0, &[4, 1], &t), [40.5, 41.5, 10.5, 11.5]);
        assert_eq!(get(0, &[0, 5, 2], &t), [0.5, 1.5, 50.5, 51.5, 20.5, 21.5]);
        assert_eq!(calls.get(), 2);
        // Epoch 2, another order: gathered, same values.
        assert_eq!(get(0, &[2, 4], &t), [20.5, 21.5, 40.5, 41.5]);
        assert_eq!(calls.get(), 2);
        // A batch with one row never seen (3) runs the teacher and stores that row only.
        assert_eq!(get(0, &[3, 5], &t), [30.5, 31.5, 50.5, 51.5]);
        assert_eq!(calls.get(), 3);
        assert_eq!(get(0, &[5, 3, 1], &t), [50.5, 51.5, 30.5, 31.5, 10.5, 11.5]);
        assert_eq!(
            calls.get(),
            3,
            "row 5 was not added twice: served from the cache"
        );
        // A replaced teacher (version 1): nothing from the old one is served.
        let t2 = teacher(-7.0);
        assert_eq!(get(1, &[2, 4], &t2), [13.0, 14.0, 33.0, 34.0]);
        assert_eq!(calls.get(), 4);
        assert_eq!(get(1, &[4], &t2), [33.0, 34.0]);
        assert_eq!(get(1, &[0], &t2), [-7.0, -6.0]);
        assert_eq!(calls.get(), 5);
        assert_eq!(cache.counts(), (3, 5));
    }

    /// The CPU kernels compute each sample alone, so logits gathered from the cache (made
    /// in other batches) are the bits a forward pass over this batch gives: caching changes
    /// no number on the CPU backend.
    #[test]
    fn cached_logits_of_real_networks_are_the_bits_of_a_forward_pass() {
        use crate::model::{Arch, ModelSpec};
        use burn::tensor::Distribution;
        for (arch, channels, side) in [(Arch::Cnn, 1, 28), (Arch::Resnet20, 3, 32)] {
            let spec = ModelSpec {
                arch,
                width: arch.default_width(),
                channels,
                height: side,
                width_px: side,
                num_classes: 10,
            };
            let net = spec.init_seeded::<B>(&FlexDevice, 9);
            let n = 10;
            let x = Tensor::<B, 4>::random(
                [n, channels, side, side],
                Distribution::Uniform(-1.0, 1.0),
                &FlexDevice,
            );
            let whole = values(net.forward(x.clone()));
            let rows = |ids: &[usize]| {
                let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
                let len = ids.len();
                x.clone().select(
                    0,
                    Tensor::from_data(TensorData::new(ids, [len]), &FlexDevice),
                )
            };
            let mut cache = TeacherCache::<B>::new(n, 10, &FlexDevice);
            for batch in [&[3usize, 7, 1][..], &[0, 2, 4, 5, 6, 8, 9]] {
                let _ = cache.logits(0, batch, rows(batch), |x| net.forward(x));
            }
            let all: Vec<usize> = (0..n).collect();
            let gathered = values(cache.logits(0, &all, (), |_| unreachable!("all cached")));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&gathered), bits(&whole), "{arch:?}");
        }
    }
}
