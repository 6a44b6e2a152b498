//! A convolution micro-kernel of our own for the padded-width stride-1 path: output
//! positions in AVX-512 registers, input read straight from the zero-padded plane.
//!
//! Why: `gemm` packs its operands on every call, and with the row copies the padded-width
//! path makes, a 64-channel 8x8 layer spent a third of its time outside the multiply-adds
//! (packing, row copies, and `gemm`'s one-vector kernel for the positions left over after
//! its 64-position tiles). Here the weights are packed once per layer call and shared by all
//! samples, the input is read in place (tap `(ci, i, j)` of output position `p` is element
//! `p + offset(ci, i, j)` of the padded plane), and a tile is [`NR`] output channels by up to
//! 48 positions (three vectors): 24 accumulators, the whole reduction in registers.
//!
//! Each output is one chain of multiply-adds over the taps in a fixed order, so results do
//! not depend on threads or tiling.

/// Output channels per tile (and per packed weight panel).
pub const NR: usize = 8;

/// Positions per vector.
const LANES: usize = 16;

/// Positions per full tile: three vectors.
pub const MR: usize = 3 * LANES;

/// `n` positions rounded up to whole vectors: the row length the kernel works on.
pub fn padded_len(n: usize) -> usize {
    n.next_multiple_of(LANES)
}

/// Whether the CPU runs the kernel (AVX-512F); callers fall back to `gemm` otherwise.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `weight` (`[c_out, k]` row-major) as panels of [`NR`] channels, each `[k, NR]`:
/// the kernel reads one panel row (NR weights) per tap. `c_out` must be a multiple of NR.
pub fn pack(weight: &[f32], c_out: usize, k: usize) -> Vec<f32> {
    assert!(c_out.is_multiple_of(NR) && weight.len() == c_out * k);
    let mut out = vec![0.0f32; weight.len()];
    for (panel, dst) in out.chunks_exact_mut(k * NR).enumerate() {
        for (kk, row) in dst.chunks_exact_mut(NR).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = weight[(panel * NR + c) * k + kk];
            }
        }
    }
    out
}

/// `out[co * ld + p] = sum_kk packed[co, kk] * x[p + offsets[kk]]` for `p < n` and every
/// output channel (`packed` from [`pack`], `offsets.len()` taps). `ld >= n` rounded up to
/// a whole vector; `x` must hold `offsets.max() + ld` values (positions up to the rounded
/// `ld` are computed, and the extra ones are junk). Positions `n..ld` of `out` get junk.
///
/// Panics unless [`available`] and the lengths fit.
pub fn conv(x: &[f32], offsets: &[usize], packed: &[f32], out: &mut [f32], n: usize, ld: usize) {
    let k = offsets.len();
    assert!(available(), "direct conv kernel needs AVX-512F");
    assert!(k > 0 && packed.len().is_multiple_of(k * NR));
    let c_out = packed.len() / k;
    let n_r = n.div_ceil(LANES) * LANES;
    assert!(ld >= n_r && out.len() >= (c_out - 1) * ld + n_r || c_out == 0);
    let max_off = offsets.iter().copied().max().unwrap_or(0);
    assert!(
        n == 0 || max_off + n_r <= x.len(),
        "direct conv: input too short"
    );
    #[cfg(target_arch = "x86_64")]
    for (panel, w) in packed.chunks_exact(k * NR).enumerate() {
        let mut p = 0;
        while p < n {
            let left = n - p;
            // SAFETY: the asserts above bound every load (x up to max_off + n_r) and store
            // (out up to (c_out - 1) * ld + n_r); AVX-512F is available.
            unsafe {
                let xp = x.as_ptr().add(p);
                let op = out.as_mut_ptr().add(panel * NR * ld + p);
                if left > 2 * LANES {
                    x86::tile::<3>(xp, offsets, w.as_ptr(), op, ld);
                } else if left > LANES {
                    x86::tile::<2>(xp, offsets, w.as_ptr(), op, ld);
                } else {
                    x86::tile::<1>(xp, offsets, w.as_ptr(), op, ld);
                }
            }
            p += MR;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{LANES, NR};
    use std::arch::x86_64::*;

    /// One tile: `NV` vectors of positions by NR channels, the full reduction over the taps.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const NV: usize>(
        x: *const f32,
        offsets: &[usize],
        w: *const f32,
        out: *mut f32,
        ld: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; NR];
        for (kk, off) in offsets.iter().enumerate() {
            let xp = x.add(*off);
            let mut xv = [_mm512_setzero_ps(); NV];
            for (v, xv) in xv.iter_mut().enumerate() {
                *xv = _mm512_loadu_ps(xp.add(v * LANES));
            }
            let wp = w.add(kk * NR);
            for (c, acc) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*wp.add(c));
                for (a, xv) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(*xv, b, *a);
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(c * ld + v * LANES), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_sum_it_defines() {
        if !available() {
            return;
        }
        let (c_out, k) = (16, 7);
        for n in [1usize, 15, 16, 17, 40, 48, 49, 100] {
            let ld = n.div_ceil(LANES) * LANES + LANES;
            let offsets: Vec<usize> = (0..k).map(|kk| kk * 3 + kk % 2).collect();
            let x_len = offsets.iter().max().unwrap() + ld;
            let x: Vec<f32> = (0..x_len).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
            let w: Vec<f32> = (0..c_out * k)
                .map(|i| ((i * 11) % 9) as f32 * 0.5)
                .collect();
            let mut out = vec![f32::NAN; c_out * ld];
            conv(&x, &offsets, &pack(&w, c_out, k), &mut out, n, ld);
            for co in 0..c_out {
                for p in 0..n {
                    let want: f32 = (0..k).map(|kk| w[co * k + kk] * x[p + offsets[kk]]).sum();
                    // Small integers and halves: exact in f32 whatever the order.
                    assert_eq!(out[co * ld + p], want, "n {n}, channel {co}, position {p}");
                }
            }
        }
    }
}
