//! Training-mode batch normalisation on f32 `[n, c, hw]` slices, one task per channel:
//! forward and backward each compute the channel's sums and then write its output while
//! the channel's values are still in cache (a channel of a 64-sample, 16x32x32 batch is
//! 256 KiB), so each tensor crosses memory about once. Burn's version is a chain of a
//! dozen tensor ops, each a pass over the activations on one thread; see BENCHMARKS.md.
//!
//! Sums run in f64 in a fixed order per channel: results do not depend on the thread
//! count.

use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::buffer::{assume_init, assume_init_ref, uninit};
use super::simd::vectorized;

/// `[n, c, hw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnShape {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl BnShape {
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the plane of channel `ch` in sample `sample` starts.
    #[inline(always)]
    fn plane_at(&self, sample: usize, ch: usize) -> usize {
        (sample * self.c + ch) * self.hw
    }

    /// The plane (`hw` values) of channel `ch` in sample `sample`.
    #[inline(always)]
    fn plane<'a>(&self, data: &'a [f32], sample: usize, ch: usize) -> &'a [f32] {
        let at = self.plane_at(sample, ch);
        &data[at..at + self.hw]
    }

    /// The planes (`hw` values) of channel `ch`, one per sample.
    fn planes<'a>(&self, data: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let s = *self;
        (0..s.n).map(move |sample| s.plane(data, sample, ch))
    }
}

/// Output of [`forward`]: normalised, scaled and shifted values, and the batch statistics
/// (mean and biased variance per channel).
pub struct BnForward {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Interleaved partial sums per f64 sum: a single running sum is one long chain of
/// dependent additions (the compiler may not reorder float adds), which was a tenth of a
/// ResNet step. Fixed lanes keep the order fixed, so results stay bit-identical run to run
/// and for any thread count.
const LANES: usize = 8;

/// `(sum f(a, b), sum g(a, b))` over paired values, in f64 with [`LANES`] partial sums each.
#[inline(always)]
fn sum2(
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f64,
    g: impl Fn(f32, f32) -> f64,
) -> (f64, f64) {
    let (mut fa, mut ga) = ([0.0f64; LANES], [0.0f64; LANES]);
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (a, b) in ac.zip(bc) {
        for l in 0..LANES {
            fa[l] += f(a[l], b[l]);
            ga[l] += g(a[l], b[l]);
        }
    }
    for (l, (a, b)) in ar.iter().zip(br).enumerate() {
        fa[l] += f(*a, *b);
        ga[l] += g(*a, *b);
    }
    (fa.iter().sum(), ga.iter().sum())
}

/// `sum f(v)` in f64 with [`LANES`] partial sums.
#[inline(always)]
fn sum1(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    sum2(x, x, |v, _| f(v), |_, _| 0.0).0
}

/// `(sum d, sum d * (x - m) * k)` over paired values: [`sum2`]'s lanes and order, so the
/// same bits, with explicit AVX-512 where the CPU has it. The compiler leaves this loop
/// scalar (two f64 chains per element), and as the backward's sums it was a third of a
/// batch-norm backward.
#[inline(always)]
fn centred_sums(x: &[f32], d: &[f32], m: f64, k: f64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { x86::centred_sums(x, d, m, k) };
    }
    sum2(x, d, |_, d| d as f64, |x, d| d as f64 * (x as f64 - m) * k)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// [`super::centred_sums`] on AVX-512: `LANES` (8) f64 partial sums in one register
    /// each, element `i` going to lane `i % 8` as in [`super::sum2`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn centred_sums(x: &[f32], d: &[f32], m: f64, k: f64) -> (f64, f64) {
        assert_eq!(x.len(), d.len());
        let whole = x.len() - x.len() % LANES;
        let (mv, kv) = (_mm512_set1_pd(m), _mm512_set1_pd(k));
        let (mut fb, mut gb) = (_mm512_setzero_pd(), _mm512_setzero_pd());
        for i in (0..whole).step_by(LANES) {
            // SAFETY: i + 8 <= whole <= the slices' length.
            let xv = _mm512_cvtps_pd(_mm256_loadu_ps(x.as_ptr().add(i)));
            let dv = _mm512_cvtps_pd(_mm256_loadu_ps(d.as_ptr().add(i)));
            fb = _mm512_add_pd(fb, dv);
            let t = _mm512_mul_pd(_mm512_mul_pd(dv, _mm512_sub_pd(xv, mv)), kv);
            gb = _mm512_add_pd(gb, t);
        }
        let (mut fa, mut ga) = ([0.0f64; LANES], [0.0f64; LANES]);
        _mm512_storeu_pd(fa.as_mut_ptr(), fb);
        _mm512_storeu_pd(ga.as_mut_ptr(), gb);
        for (l, (x, d)) in x[whole..].iter().zip(&d[whole..]).enumerate() {
            fa[l] += *d as f64;
            ga[l] += *d as f64 * (*x as f64 - m) * k;
        }
        (fa.iter().sum(), ga.iter().sum())
    }

    /// [`super::Epilogue::write_affine`]: `y = relu?(x * k + b (+ residual))`, masked
    /// loads and stores of 16 values; mul then add as the scalar code rounds (no fused
    /// multiply-add), and the ReLU as [`super::relu`] (NaN kept, -0 and below to +0).
    /// The caller checked the lengths (`residual` is read only with `RES`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn write_affine<const RES: bool, const RELU: bool>(
        y: &mut [std::mem::MaybeUninit<f32>],
        x: &[f32],
        residual: &[f32],
        k: f32,
        b: f32,
    ) {
        let (n, xp, rp, yp) = (
            x.len(),
            x.as_ptr(),
            residual.as_ptr(),
            y.as_mut_ptr() as *mut f32,
        );
        let (kv, bv, zero) = (_mm512_set1_ps(k), _mm512_set1_ps(b), _mm512_setzero_ps());
        let mut i = 0;
        while i < n {
            let m = ((1u32 << (n - i).min(16)) - 1) as __mmask16;
            let mut v = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xp.add(i)), kv), bv);
            if RES {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, rp.add(i)));
            }
            if RELU {
                // v <= 0 (false for NaN) becomes +0.
                let off = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, zero);
                v = _mm512_mask_mov_ps(v, off, zero);
            }
            _mm512_mask_storeu_ps(yp.add(i), m, v);
            i += 16;
        }
    }
}

/// Mean and biased variance of channel `ch` (two passes over its planes, f64 sums).
#[inline(always)]
fn channel_statistics(s: &BnShape, x: &[f32], ch: usize) -> (f32, f32) {
    let count = (s.n * s.hw) as f64;
    let mut sum = 0.0f64;
    for p in s.planes(x, ch) {
        sum += sum1(p, |v| v as f64);
    }
    let mean = sum / count;
    let mut sq = 0.0f64;
    for p in s.planes(x, ch) {
        sq += sum1(p, |v| (v as f64 - mean).powi(2));
    }
    (mean as f32, (sq / count) as f32)
}

/// `max(v, 0)` as Burn's ReLU computes it: NaN stays NaN (divergence must stay visible).
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v <= 0.0 {
        0.0
    } else {
        v
    }
}

/// What follows the normalisation in the same pass: `+ residual` (a ResNet shortcut, same
/// shape as the input), then a ReLU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// `y[i] = epilogue(f(x[i]))` over one plane, `residual` being that plane of the
    /// residual. One loop per epilogue variant, so each is a straight, vectorised pass.
    /// Writes every element of `y` (`x.len()` of them).
    #[inline(always)]
    pub(crate) fn write(
        &self,
        y: &mut [MaybeUninit<f32>],
        x: &[f32],
        residual: &[f32],
        f: impl Fn(f32) -> f32,
    ) {
        assert_eq!(y.len(), x.len());
        match (self.residual.is_some(), self.relu) {
            (false, false) => y.iter_mut().zip(x).for_each(|(y, x)| {
                y.write(f(*x));
            }),
            (false, true) => y.iter_mut().zip(x).for_each(|(y, x)| {
                y.write(relu(f(*x)));
            }),
            (true, false) => y
                .iter_mut()
                .zip(x.iter().zip(residual))
                .for_each(|(y, (x, r))| {
                    y.write(f(*x) + r);
                }),
            (true, true) => y
                .iter_mut()
                .zip(x.iter().zip(residual))
                .for_each(|(y, (x, r))| {
                    y.write(relu(f(*x) + r));
                }),
        }
    }

    /// [`Epilogue::write`] with `f(x) = x * k + b`, the same bits, 16 values per masked
    /// AVX-512 step where the CPU has it: the compiler's loop does whole vectors and leaves
    /// the rest to a scalar loop, and the rows this writes are short (7 to 32 values in the
    /// presets' and benchmarks' layers), so much of each ran there.
    #[inline(always)]
    pub(crate) fn write_affine(
        &self,
        y: &mut [MaybeUninit<f32>],
        x: &[f32],
        residual: &[f32],
        k: f32,
        b: f32,
    ) {
        assert_eq!(y.len(), x.len());
        if self.residual.is_some() {
            assert_eq!(residual.len(), x.len(), "epilogue: residual length");
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available, and the lengths were checked.
            unsafe {
                match (self.residual.is_some(), self.relu) {
                    (false, false) => x86::write_affine::<false, false>(y, x, residual, k, b),
                    (false, true) => x86::write_affine::<false, true>(y, x, residual, k, b),
                    (true, false) => x86::write_affine::<true, false>(y, x, residual, k, b),
                    (true, true) => x86::write_affine::<true, true>(y, x, residual, k, b),
                }
            }
            return;
        }
        self.write(y, x, residual, |v| v * k + b);
    }

    fn plane<'b>(&'b self, s: &BnShape, plane: usize) -> &'b [f32] {
        self.residual
            .map_or(&[][..], |r| &r[plane * s.hw..(plane + 1) * s.hw])
    }

    fn check(&self, s: &BnShape) {
        if let Some(r) = self.residual {
            assert_eq!(r.len(), s.len(), "batch norm: residual length");
        }
    }
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` with the batch's statistics, followed
/// by the epilogue (residual add, ReLU). One task per channel computes the statistics and
/// then writes the channel's output while its input is still in cache.
pub fn forward(
    s: &BnShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    epilogue: Epilogue,
) -> BnForward {
    epilogue.check(s);
    assert_eq!(x.len(), s.len(), "batch norm: input length");
    assert!(
        gamma.len() == s.c && beta.len() == s.c,
        "batch norm: parameter length"
    );
    if s.is_empty() {
        return BnForward {
            y: vec![0.0; x.len()],
            mean: vec![0.0; s.c],
            var: vec![0.0; s.c],
        };
    }
    let mut y = uninit(x.len());
    let (mean, var): (Vec<f32>, Vec<f32>) = channel_planes_mut(s, &mut y)
        .into_par_iter()
        .enumerate()
        .map(|(ch, ys)| {
            vectorized(
                #[inline(always)]
                || {
                    let (m, v) = channel_statistics(s, x, ch);
                    let k = forward_scale(gamma[ch], v, eps);
                    let b = beta[ch];
                    for (sample, (y, x)) in ys.into_iter().zip(s.planes(x, ch)).enumerate() {
                        let r = epilogue.plane(s, sample * s.c + ch);
                        epilogue.write(y, x, r, |x| (x - m) * k + b);
                    }
                    (m, v)
                },
            )
        })
        .unzip();
    // SAFETY: each channel's task wrote every plane of its channel (`write` fills a plane).
    let y = unsafe { assume_init(y) };
    BnForward { y, mean, var }
}

/// The planes of `data` (`[n, c, hw]`) grouped by channel: `out[ch][sample]`, so that one
/// task can write a whole channel.
fn channel_planes_mut<'a, T>(s: &BnShape, data: &'a mut [T]) -> Vec<Vec<&'a mut [T]>> {
    let mut out: Vec<Vec<&mut [T]>> = (0..s.c).map(|_| Vec::with_capacity(s.n)).collect();
    if s.hw > 0 {
        for (plane, p) in data.chunks_exact_mut(s.hw).enumerate() {
            out[plane % s.c].push(p);
        }
    }
    out
}

/// `y = x * scale[c] + shift[c]`: inference-mode batch norm with the running statistics
/// folded into one scale and shift per channel, then the epilogue; one parallel pass.
pub fn scale_shift(
    s: &BnShape,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    epilogue: Epilogue,
) -> Vec<f32> {
    epilogue.check(s);
    assert_eq!(x.len(), s.len(), "batch norm: input length");
    assert!(
        scale.len() == s.c && shift.len() == s.c,
        "batch norm: parameter length"
    );
    if s.is_empty() {
        return vec![0.0; x.len()];
    }
    let mut y = uninit(x.len());
    {
        y.par_chunks_mut(s.hw)
            .zip(x.par_chunks(s.hw))
            .enumerate()
            .for_each(|(plane, (y, x))| {
                let ch = plane % s.c;
                let (k, b) = (scale[ch], shift[ch]);
                let r = epilogue.plane(s, plane);
                vectorized(
                    #[inline(always)]
                    || epilogue.write_affine(y, x, r, k, b),
                );
            });
    }
    // SAFETY: `write` filled every plane.
    unsafe { assume_init(y) }
}

/// Gradients of [`forward`] given the output gradient `dy`: input, gamma and beta.
pub struct BnBackward {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
    /// With a ReLU epilogue: `dy` zeroed where the output was not positive, i.e. the
    /// gradient of the value before the ReLU (and of a residual added there).
    pub masked_dy: Option<Vec<f32>>,
}

/// Where [`backward`] finds the forward's ReLU mask: `dy` is zeroed where the value the
/// ReLU received was not positive (Burn's ReLU gradient).
#[derive(Clone, Copy, Debug)]
pub enum Relu<'a> {
    /// The forward's output, zero exactly where the ReLU zeroed.
    Output(&'a [f32]),
    /// No residual was added, so the ReLU received `(x - mean) * k + beta` with the
    /// forward's own `k = gamma / sqrt(var + eps)`, rounded as [`forward`] rounds it:
    /// recomputed from `x` to the same bits, which saves reading the output (one of the
    /// backward's four to five streams when a channel no longer fits in cache, as at
    /// batch 128).
    Recompute { beta: &'a [f32] },
}

/// The forward's per-channel scale `gamma / sqrt(var + eps)`; [`Relu::Recompute`] must
/// round it exactly as the forward did.
#[inline(always)]
fn forward_scale(gamma: f32, var: f32, eps: f64) -> f32 {
    gamma / (var as f64 + eps).sqrt() as f32
}

/// One plane's ReLU mask in [`backward`].
#[derive(Clone, Copy)]
enum PlaneMask<'a> {
    /// Keep `dy` where this plane of the forward's output is positive (or NaN).
    Output(&'a [f32]),
    /// Keep `dy` where `(x - m) * k + b` is positive (or NaN).
    Affine { m: f32, k: f32, b: f32 },
}

impl PlaneMask<'_> {
    /// Writes `dy`, or +0 where the ReLU zeroed, into `out` (every element) and returns it.
    /// One straight loop per kind of mask, so each vectorises.
    #[inline(always)]
    fn write<'o>(self, out: &'o mut [MaybeUninit<f32>], x: &[f32], d: &[f32]) -> &'o [f32] {
        assert!(out.len() == d.len() && x.len() == d.len());
        let keep = |v: f32, d: f32| if v <= 0.0 { 0.0 } else { d };
        match self {
            PlaneMask::Output(y) => {
                assert_eq!(y.len(), d.len());
                out.iter_mut().zip(y.iter().zip(d)).for_each(|(o, (y, d))| {
                    o.write(keep(*y, *d));
                });
            }
            PlaneMask::Affine { m, k, b } => {
                out.iter_mut().zip(x.iter().zip(d)).for_each(|(o, (x, d))| {
                    o.write(keep((x - m) * k + b, *d));
                });
            }
        }
        // SAFETY: every element was written just above.
        unsafe { assume_init_ref(out) }
    }
}

/// With `xhat = (x - mean) * inv_std` and `M = n * hw`:
/// `dbeta = sum(dy)`, `dgamma = sum(dy * xhat)`,
/// `dx = gamma * inv_std * (dy - dbeta / M - xhat * dgamma / M)`.
/// `relu`: where the forward ended with a ReLU, where to find its mask; `dy` is then first
/// zeroed where the ReLU zeroed, and that masked `dy` is returned too when `want_masked`
/// (a residual's gradient).
///
/// One task per channel, in two passes over the channel while its values are in cache:
/// each sample's plane masked and then summed (while it is in L1), then `dx`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &BnShape,
    x: &[f32],
    mean: &[f32],
    var: &[f32],
    gamma: &[f32],
    relu: Option<Relu>,
    dy: &[f32],
    eps: f64,
    want_masked: bool,
) -> BnBackward {
    assert_eq!(x.len(), s.len(), "batch norm backward: input length");
    assert_eq!(dy.len(), s.len(), "batch norm backward: gradient length");
    match relu {
        Some(Relu::Output(y)) => {
            assert_eq!(y.len(), s.len(), "batch norm backward: output length")
        }
        Some(Relu::Recompute { beta }) => {
            assert_eq!(beta.len(), s.c, "batch norm backward: beta length")
        }
        None => {}
    }
    assert!(mean.len() == s.c && var.len() == s.c && gamma.len() == s.c);
    let count = (s.n * s.hw) as f32;
    let want_masked = want_masked && relu.is_some();
    if s.is_empty() {
        return BnBackward {
            dx: vec![0.0; x.len()],
            dgamma: vec![0.0; s.c],
            dbeta: vec![0.0; s.c],
            masked_dy: want_masked.then(|| vec![0.0; x.len()]),
        };
    }
    let mut dx = uninit(x.len());
    let mut masked_dy = want_masked.then(|| uninit(x.len()));
    let mut masked_planes = match masked_dy.as_deref_mut() {
        Some(m) => channel_planes_mut(s, m).into_iter().map(Some).collect(),
        None => (0..s.c).map(|_| None).collect::<Vec<_>>(),
    };
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = channel_planes_mut(s, &mut dx)
        .into_par_iter()
        .zip(masked_planes.par_drain(..))
        .enumerate()
        .map(|(ch, (dxs, masked))| {
            vectorized(
                #[inline(always)]
                || {
                    let plane = |data, sample| s.plane(data, sample, ch);
                    let forward_k = forward_scale(gamma[ch], var[ch], eps);
                    let mask = |sample| match relu? {
                        Relu::Output(y) => Some(PlaneMask::Output(plane(y, sample))),
                        Relu::Recompute { beta } => Some(PlaneMask::Affine {
                            m: mean[ch],
                            k: forward_k,
                            b: beta[ch],
                        }),
                    };
                    // The channel's masked `dy`, plane by plane: in the returned copy when
                    // it is asked for, else in a buffer of this task's own.
                    let mut own = if relu.is_some() && masked.is_none() {
                        uninit(s.n * s.hw)
                    } else {
                        Vec::new()
                    };
                    let mut targets = match masked {
                        Some(planes) => Some(planes),
                        None => relu.map(|_| own.chunks_exact_mut(s.hw).collect::<Vec<_>>()),
                    };
                    let (m, k) = (mean[ch] as f64, 1.0 / (var[ch] as f64 + eps).sqrt());
                    let (mut g, mut b) = (0.0f64, 0.0f64);
                    for sample in 0..s.n {
                        let (xp, dp) = (plane(x, sample), plane(dy, sample));
                        // Masked and summed while the plane is in L1.
                        let dm = match (mask(sample), targets.as_mut()) {
                            (Some(mask), Some(t)) => mask.write(t[sample], xp, dp),
                            _ => dp,
                        };
                        let (pb, pg) = centred_sums(xp, dm, m, k);
                        b += pb;
                        g += pg;
                    }
                    let (dgamma, dbeta) = (g as f32, b as f32);
                    let k = k as f32;
                    let m = mean[ch];
                    let a = gamma[ch] * k;
                    let (db, dg) = (dbeta / count, dgamma / count);
                    for (sample, dx) in dxs.into_iter().enumerate() {
                        let xp = plane(x, sample);
                        let dm = match targets.as_deref() {
                            // SAFETY: the first pass wrote every plane of the targets.
                            Some(t) => unsafe { assume_init_ref(t[sample]) },
                            None => plane(dy, sample),
                        };
                        assert!(dx.len() == xp.len() && dm.len() == xp.len());
                        for ((dx, x), dy) in dx.iter_mut().zip(xp).zip(dm) {
                            let xhat = (x - m) * k;
                            dx.write(a * (dy - db - xhat * dg));
                        }
                    }
                    (dgamma, dbeta)
                },
            )
        })
        .unzip();
    // SAFETY: each channel's task wrote every plane of its channel in `dx`, and in
    // `masked_dy` (which exists only with a ReLU, when its first pass writes each plane).
    let (dx, masked_dy) = unsafe { (assume_init(dx), masked_dy.map(|m| assume_init(m))) };
    BnBackward {
        dx,
        dgamma,
        dbeta,
        masked_dy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % 2001) as f32 / 500.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn vector_sums_are_the_portable_sums_bit_for_bit() {
        // Lengths around the 8 lanes and a plane's; the portable `sum2` is the reference.
        for len in [0usize, 1, 7, 8, 9, 16, 23, 64, 1000, 1027] {
            let (x, d) = (values(len, len as u64), values(len, 7 + len as u64));
            let (m, k) = (0.123_456_789_f64, 1.987_654_321_f64);
            let want = sum2(
                &x,
                &d,
                |_, d| d as f64,
                |x, d| d as f64 * (x as f64 - m) * k,
            );
            let got = centred_sums(&x, &d, m, k);
            assert_eq!(
                (got.0.to_bits(), got.1.to_bits()),
                (want.0.to_bits(), want.1.to_bits()),
                "length {len}"
            );
        }
    }

    /// The loss `sum(y * w)` for fixed weights `w`, in f64, for finite differences.
    fn loss(s: &BnShape, x: &[f32], gamma: &[f32], beta: &[f32], w: &[f32]) -> f64 {
        let y = forward(s, x, gamma, beta, 1e-5, Epilogue::default()).y;
        y.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    #[test]
    fn forward_normalises_each_channel() {
        let s = BnShape { n: 4, c: 3, hw: 5 };
        let x = values(s.len(), 1);
        let out = forward(&s, &x, &[1.0; 3], &[0.0; 3], 0.0, Epilogue::default());
        for ch in 0..3 {
            let vals: Vec<f64> = s.planes(&out.y, ch).flatten().map(|v| *v as f64).collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            assert!(mean.abs() < 1e-5, "channel {ch} mean {mean}");
            assert!((var - 1.0).abs() < 1e-4, "channel {ch} var {var}");
            // Statistics are those of the input channel.
            let xs: Vec<f64> = s.planes(&x, ch).flatten().map(|v| *v as f64).collect();
            let xm = xs.iter().sum::<f64>() / xs.len() as f64;
            assert!((out.mean[ch] as f64 - xm).abs() < 1e-5);
        }
        // gamma and beta scale and shift.
        let affine = forward(
            &s,
            &x,
            &[2.0, 0.5, -1.0],
            &[1.0, 0.0, 3.0],
            0.0,
            Epilogue::default(),
        );
        for (i, (a, b)) in affine.y.iter().zip(&out.y).enumerate() {
            let ch = i / s.hw % s.c;
            let want = [2.0, 0.5, -1.0][ch] * b + [1.0, 0.0, 3.0][ch];
            assert!((a - want).abs() < 1e-5);
        }
    }

    #[test]
    fn scale_shift_applies_per_channel_terms() {
        let s = BnShape { n: 2, c: 3, hw: 4 };
        let x = values(s.len(), 9);
        let y = scale_shift(
            &s,
            &x,
            &[2.0, -1.0, 0.5],
            &[0.0, 1.0, -3.0],
            Epilogue::default(),
        );
        let r = scale_shift(&s, &x, &[2.0, -1.0, 0.5], &[0.0, 1.0, -3.0], RELU);
        assert!(r.iter().zip(&y).all(|(r, y)| *r == y.max(0.0)));
        assert!(r.contains(&0.0) && r.iter().any(|v| *v > 0.0));
        for (i, (y, x)) in y.iter().zip(&x).enumerate() {
            let ch = i / s.hw % s.c;
            let want = x * [2.0, -1.0, 0.5][ch] + [0.0, 1.0, -3.0][ch];
            assert_eq!(*y, want, "element {i}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let s = BnShape { n: 3, c: 2, hw: 4 };
        let x = values(s.len(), 2);
        let gamma = [1.5f32, -0.7];
        let beta = [0.2f32, 0.4];
        let w = values(s.len(), 3);
        let f = forward(&s, &x, &gamma, &beta, 1e-5, Epilogue::default());
        let g = backward(&s, &x, &f.mean, &f.var, &gamma, None, &w, 1e-5, false);
        let h = 1e-2f32;
        for i in 0..s.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let num = (loss(&s, &xp, &gamma, &beta, &w) - loss(&s, &xm, &gamma, &beta, &w))
                / (2.0 * h as f64);
            assert!(
                (g.dx[i] as f64 - num).abs() < 2e-2,
                "dx[{i}] {} vs {num}",
                g.dx[i]
            );
        }
        for ch in 0..2 {
            let (mut gp, mut gm) = (gamma, gamma);
            gp[ch] += h;
            gm[ch] -= h;
            let num =
                (loss(&s, &x, &gp, &beta, &w) - loss(&s, &x, &gm, &beta, &w)) / (2.0 * h as f64);
            assert!((g.dgamma[ch] as f64 - num).abs() < 1e-2, "dgamma[{ch}]");
            let (mut bp, mut bm) = (beta, beta);
            bp[ch] += h;
            bm[ch] -= h;
            let num =
                (loss(&s, &x, &gamma, &bp, &w) - loss(&s, &x, &gamma, &bm, &w)) / (2.0 * h as f64);
            assert!((g.dbeta[ch] as f64 - num).abs() < 1e-2, "dbeta[{ch}]");
        }
    }

    /// The fused ReLU equals a ReLU after the plain batch norm, forward and backward, and
    /// keeps NaN (so divergence is still detected).
    #[test]
    fn fused_relu_is_relu_after_batch_norm() {
        let s = BnShape { n: 3, c: 4, hw: 6 };
        let x = values(s.len(), 11);
        let dy = values(s.len(), 12);
        let gamma = values(4, 13);
        let beta = values(4, 14);
        let plain = forward(&s, &x, &gamma, &beta, 1e-5, Epilogue::default());
        let fused = forward(&s, &x, &gamma, &beta, 1e-5, RELU);
        assert_eq!(plain.mean, fused.mean);
        assert_eq!(plain.var, fused.var);
        let want: Vec<f32> = plain.y.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(fused.y, want);
        assert!(fused.y.contains(&0.0) && fused.y.iter().any(|v| *v > 0.0));
        let masked = relu_masked(&plain.y, &dy);
        let b = backward(
            &s,
            &x,
            &plain.mean,
            &plain.var,
            &gamma,
            None,
            &masked,
            1e-5,
            false,
        );
        // The mask is applied in the same pass whether or not the masked gradient is kept.
        for want_masked in [false, true] {
            let a = backward(
                &s,
                &x,
                &fused.mean,
                &fused.var,
                &gamma,
                Some(Relu::Output(&fused.y)),
                &dy,
                1e-5,
                want_masked,
            );
            assert_eq!((&a.dx, &a.dgamma, &a.dbeta), (&b.dx, &b.dgamma, &b.dbeta));
            assert_eq!(a.masked_dy, want_masked.then(|| masked.clone()));
        }
        let mut nan = x.clone();
        nan[0] = f32::NAN;
        assert!(forward(&s, &nan, &gamma, &beta, 1e-5, RELU).y[0].is_nan());
    }

    /// Without a residual, the mask recomputed from `x` is the one read from the output, to
    /// the bit, including where the ReLU's input is exactly 0 (beta chosen to put some
    /// values there), NaN and infinities; and both give the gradients of the masked `dy`
    /// through the plain backward, to the bit. Planes of 1 to 40 values: whole vectors and
    /// tails.
    #[test]
    fn recomputed_relu_mask_is_the_outputs() {
        for hw in [1usize, 7, 8, 16, 17, 40] {
            let s = BnShape { n: 5, c: 3, hw };
            let mut x = values(s.len(), 31 + hw as u64);
            let dy = values(s.len(), 32);
            let gamma = [1.25f32, -0.75, 2.0];
            let stats = forward(&s, &x, &gamma, &[0.0; 3], 1e-5, Epilogue::default());
            // beta such that the first value of each channel (and its duplicates
            // elsewhere) lands on 0 exactly.
            let beta: Vec<f32> = (0..3)
                .map(|ch| {
                    let k = forward_scale(gamma[ch], stats.var[ch], 1e-5);
                    -((s.plane(&x, 0, ch)[0] - stats.mean[ch]) * k)
                })
                .collect();
            if s.hw > 2 {
                // Non-finite inputs (their channel's statistics become non-finite too).
                x[s.plane_at(4, 2) + 1] = f32::NAN;
                x[s.plane_at(3, 1) + 2] = f32::INFINITY;
            }
            let f = forward(&s, &x, &gamma, &beta, 1e-5, RELU);
            assert!(f.y.iter().filter(|v| **v == 0.0).count() >= 3);
            // Burn's ReLU gradient: `dy` kept where the output is NaN (unlike `relu_masked`).
            let masked: Vec<f32> =
                f.y.iter()
                    .zip(&dy)
                    .map(|(y, d)| if *y <= 0.0 { 0.0 } else { *d })
                    .collect();
            let plain = backward(&s, &x, &f.mean, &f.var, &gamma, None, &masked, 1e-5, false);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for want_masked in [false, true] {
                for relu in [Relu::Output(&f.y), Relu::Recompute { beta: &beta }] {
                    let g = backward(
                        &s,
                        &x,
                        &f.mean,
                        &f.var,
                        &gamma,
                        Some(relu),
                        &dy,
                        1e-5,
                        want_masked,
                    );
                    let what = format!("hw {hw}, {relu:?}, masked {want_masked}");
                    assert_eq!(bits(&g.dx), bits(&plain.dx), "{what}");
                    assert_eq!(bits(&g.dgamma), bits(&plain.dgamma), "{what}");
                    assert_eq!(bits(&g.dbeta), bits(&plain.dbeta), "{what}");
                    let kept = g.masked_dy.as_deref().map(bits);
                    assert_eq!(kept, want_masked.then(|| bits(&masked)), "{what}");
                }
            }
        }
    }

    /// `dy` where `y` (a ReLU's input or output) is positive, else 0: the ReLU's gradient.
    fn relu_masked(y: &[f32], dy: &[f32]) -> Vec<f32> {
        y.iter()
            .zip(dy)
            .map(|(y, d)| if *y > 0.0 { *d } else { 0.0 })
            .collect()
    }

    const RELU: Epilogue = Epilogue {
        residual: None,
        relu: true,
    };

    /// A residual added before the ReLU: forward is relu(bn(x) + r); its gradient is the
    /// masked output gradient, and the batch-norm gradients use that same mask.
    #[test]
    fn fused_residual_add_and_relu() {
        let s = BnShape { n: 2, c: 3, hw: 5 };
        let x = values(s.len(), 21);
        let r = values(s.len(), 22);
        let dy = values(s.len(), 23);
        let (gamma, beta) = (values(3, 24), values(3, 25));
        let epi = Epilogue {
            residual: Some(&r),
            relu: true,
        };
        let plain = forward(&s, &x, &gamma, &beta, 1e-5, Epilogue::default());
        let fused = forward(&s, &x, &gamma, &beta, 1e-5, epi);
        let want: Vec<f32> = plain
            .y
            .iter()
            .zip(&r)
            .map(|(y, r)| (y + r).max(0.0))
            .collect();
        assert_eq!(fused.y, want);
        let g = backward(
            &s,
            &x,
            &fused.mean,
            &fused.var,
            &gamma,
            Some(Relu::Output(&fused.y)),
            &dy,
            1e-5,
            true,
        );
        let masked = relu_masked(&want, &dy);
        assert_eq!(g.masked_dy.as_deref(), Some(&masked[..]));
        let b = backward(
            &s,
            &x,
            &plain.mean,
            &plain.var,
            &gamma,
            None,
            &masked,
            1e-5,
            false,
        );
        assert_eq!((g.dx, g.dgamma, g.dbeta), (b.dx, b.dgamma, b.dbeta));
        assert!(b.masked_dy.is_none());
        let inf = scale_shift(&s, &x, &gamma, &beta, epi);
        let inf_plain = scale_shift(&s, &x, &gamma, &beta, Epilogue::default());
        let want: Vec<f32> = inf_plain
            .iter()
            .zip(&r)
            .map(|(y, r)| (y + r).max(0.0))
            .collect();
        assert_eq!(inf, want);
    }

    /// The vector version against the plain loop, bit for bit: every epilogue, rows of 0
    /// to 40 values (whole vectors and masked tails), NaN, -0, and values on both sides of 0.
    #[test]
    fn write_affine_is_write_bit_for_bit() {
        let special = [
            f32::NAN,
            -0.0,
            0.0,
            -1e-30,
            1e-30,
            f32::INFINITY,
            -3.5,
            2.25,
        ];
        for n in 0..=40usize {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    special
                        .get(i % 11)
                        .copied()
                        .unwrap_or((i as f32 * 0.37).sin())
                })
                .collect();
            let r: Vec<f32> = (0..n).map(|i| (i as f32 * 0.91).cos() - 0.2).collect();
            for (residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
                let e = Epilogue {
                    residual: residual.then_some(&r[..]),
                    relu,
                };
                let (k, b) = (-1.75f32, 0.125f32);
                let mut want = vec![MaybeUninit::new(7.0f32); n];
                e.write(&mut want, &x, &r, |v| v * k + b);
                let mut got = vec![MaybeUninit::new(7.0f32); n];
                e.write_affine(&mut got, &x, &r, k, b);
                // SAFETY: both were initialised above.
                let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
                    v.iter()
                        .map(|v| unsafe { v.assume_init() }.to_bits())
                        .collect()
                };
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "n {n}, residual {residual}, relu {relu}"
                );
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let s = BnShape { n: 7, c: 5, hw: 33 };
        let x = values(s.len(), 4);
        let dy = values(s.len(), 5);
        let gamma = values(5, 6);
        let beta = values(5, 7);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let f = forward(&s, &x, &gamma, &beta, 1e-5, RELU);
                let b = backward(
                    &s,
                    &x,
                    &f.mean,
                    &f.var,
                    &gamma,
                    Some(Relu::Output(&f.y)),
                    &dy,
                    1e-5,
                    true,
                );
                let r = Relu::Recompute { beta: &beta };
                let c = backward(&s, &x, &f.mean, &f.var, &gamma, Some(r), &dy, 1e-5, false);
                (
                    f.y, f.mean, f.var, b.dx, b.dgamma, b.dbeta, c.dx, c.dgamma, c.dbeta,
                )
            })
        };
        assert_eq!(run(1), run(4));
    }
}
