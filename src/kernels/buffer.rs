//! Output buffers that are not zeroed on the calling thread.
//!
//! `vec![0.0; n]` for a kernel's output is a pass over memory on the thread that calls the
//! kernel, while the pool's other threads wait: profiling a ResNet-20 step showed 4.6% of
//! all samples in those memsets (batch-norm and convolution outputs). Outputs start
//! uninitialised ([`uninit`], then [`assume_init`]): tasks that write their part in full
//! write it directly, tasks that accumulate zero their own part first ([`zero_init`]),
//! while it is in cache. (Zeroing whole convolution outputs in a parallel pass instead
//! measured 1.07x the forward's time.)

use std::mem::MaybeUninit;

/// `len` values to be written before they are read.
pub fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` needs no initialisation, and the capacity is `len`.
    unsafe { v.set_len(len) };
    v
}

/// `s` zeroed, as initialised values: for a slice of an [`uninit`] buffer that is then
/// accumulated into (zeroed by the task that writes it, while it is in cache).
pub fn zero_init(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    s.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written; same layout.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) }
}

/// The buffer as initialised values.
///
/// # Safety
/// Every element of `v` has been written.
pub unsafe fn assume_init(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, so pointer, length and capacity
    // describe the same allocation; the caller guarantees the values are initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// A written slice as initialised values.
///
/// # Safety
/// Every element of `s` has been written.
pub unsafe fn assume_init_ref(s: &[MaybeUninit<f32>]) -> &[f32] {
    // SAFETY: same layout; the caller guarantees the values are initialised.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) }
}

/// A written slice as initialised, mutable values.
///
/// # Safety
/// Every element of `s` has been written.
pub unsafe fn assume_init_mut(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: same layout; the caller guarantees the values are initialised.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_init_zeroes_the_whole_slice() {
        for len in [0, 1, 17, 1000] {
            let mut v = uninit(len + 3);
            for x in v.iter_mut() {
                x.write(7.0);
            }
            let part = zero_init(&mut v[1..len + 1]);
            assert_eq!(part.len(), len);
            assert!(part.iter().all(|x| x.to_bits() == 0));
            // SAFETY: all written above.
            let v = unsafe { assume_init(v) };
            assert_eq!((v[0], v[len + 1], v[len + 2]), (7.0, 7.0, 7.0));
        }
    }

    #[test]
    fn written_values_are_kept() {
        let mut v = uninit(100);
        for (i, x) in v.iter_mut().enumerate() {
            x.write(i as f32);
        }
        // SAFETY: all 100 written above.
        assert_eq!(unsafe { assume_init_ref(&v) }[99], 99.0);
        let v = unsafe { assume_init(v) };
        assert_eq!(v, (0..100).map(|i| i as f32).collect::<Vec<_>>());
    }
}
