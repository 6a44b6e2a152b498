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

use super::OutputMap;

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

/// Where the kernel's vectors of wide positions go in a dense output: on a grid of rows
/// `wp` wide whose first `wo` positions are outputs (the rest junk), per vector the lanes
/// that are outputs and the dense index of the first of them. The outputs of one vector are
/// consecutive in the dense plane (a row's last ones, then the next row's first ones), so
/// each vector is one compress and one masked store, with no compaction pass afterwards.
pub struct Dense {
    /// Wide positions computed (`ho * wp`).
    n: usize,
    /// Outputs per channel (`ho * wo`): the dense plane.
    plane: usize,
    masks: Vec<u16>,
    starts: Vec<usize>,
}

impl Dense {
    /// For `ho` rows of `wp` wide positions, the first `wo` of each an output.
    pub fn new(ho: usize, wp: usize, wo: usize) -> Self {
        assert!(wo <= wp, "dense output: row wider than the grid");
        let n = ho * wp;
        let vectors = n.div_ceil(LANES);
        let (mut masks, mut starts) = (Vec::with_capacity(vectors), Vec::with_capacity(vectors));
        for t in 0..vectors {
            let (mut mask, mut start) = (0u16, None);
            for lane in 0..LANES {
                let p = t * LANES + lane;
                if p < n && p % wp < wo {
                    mask |= 1 << lane;
                    start.get_or_insert((p / wp) * wo + p % wp);
                }
            }
            masks.push(mask);
            starts.push(start.unwrap_or(0));
        }
        Dense {
            n,
            plane: ho * wo,
            masks,
            starts,
        }
    }
}

/// [`conv`] over the `dense.n` wide positions of `dense`'s grid, each channel's outputs
/// mapped by `map` (with the batch-norm epilogue's operations in its order, so the bits are
/// those of mapping the wide output afterwards) and written straight into its dense plane of `out` (`[c_out, ho * wo]`,
/// every element written) instead of onto the wide grid: the junk columns are dropped as
/// the tile is stored, with no pass over the output afterwards. `x` must hold
/// `offsets.max() + dense.n` rounded up to a whole vector.
///
/// Panics unless [`available`] and the lengths fit.
pub fn conv_dense(
    x: &[f32],
    offsets: &[usize],
    packed: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    dense: &Dense,
    map: &OutputMap,
) {
    let k = offsets.len();
    assert!(available(), "direct conv kernel needs AVX-512F");
    assert!(k > 0 && packed.len().is_multiple_of(k * NR));
    let c_out = packed.len() / k;
    let n = dense.n;
    assert_eq!(
        out.len(),
        c_out * dense.plane,
        "direct conv: dense output length"
    );
    map.check("direct conv", c_out, out.len());
    let max_off = offsets.iter().copied().max().unwrap_or(0);
    assert!(
        n == 0 || max_off + padded_len(n) <= x.len(),
        "direct conv: input too short"
    );
    #[cfg(target_arch = "x86_64")]
    match (map.epilogue.residual.is_some(), map.epilogue.relu) {
        (false, false) => panels::<false, false>(x, offsets, packed, out, dense, map),
        (false, true) => panels::<false, true>(x, offsets, packed, out, dense, map),
        (true, false) => panels::<true, false>(x, offsets, packed, out, dense, map),
        (true, true) => panels::<true, true>(x, offsets, packed, out, dense, map),
    }
}

/// [`conv_dense`]'s tiles, panel by panel, with the residual add (`RES`) and ReLU chosen
/// at compile time; the caller checked the lengths.
#[cfg(target_arch = "x86_64")]
fn panels<const RES: bool, const RELU: bool>(
    x: &[f32],
    offsets: &[usize],
    packed: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    dense: &Dense,
    map: &OutputMap,
) {
    let k = offsets.len();
    let n = dense.n;
    for (panel, w) in packed.chunks_exact(k * NR).enumerate() {
        let channel = |c: usize| panel * NR + c;
        let scale: [f32; NR] = std::array::from_fn(|c| map.scale.map_or(1.0, |s| s[channel(c)]));
        let shift: [f32; NR] = std::array::from_fn(|c| map.shift.map_or(0.0, |s| s[channel(c)]));
        let first = panel * NR * dense.plane;
        let residual = map
            .epilogue
            .residual
            .map_or(std::ptr::null(), |r| r[first..].as_ptr());
        let mut p = 0;
        while p < n {
            let left = n - p;
            let t = p / LANES;
            // SAFETY: loads of x as in `conv`; each store (and residual load) covers the
            // outputs of one vector, `popcount(mask)` consecutive values from its start,
            // inside the channel's plane (`Dense::new`), the residual being shaped like
            // `out` (checked by `conv_dense`); the masks and starts read are those of the
            // tile's vectors, all below `n.div_ceil(LANES)`. AVX-512F is available.
            unsafe {
                let xp = x.as_ptr().add(p);
                let op = out.as_mut_ptr().cast::<f32>().add(first);
                let tile = x86::Tile {
                    plane: dense.plane,
                    masks: dense.masks.as_ptr().add(t),
                    starts: dense.starts.as_ptr().add(t),
                    scale: &scale,
                    shift: &shift,
                    residual,
                };
                if left > 2 * LANES {
                    x86::tile_dense::<3, RES, RELU>(xp, offsets, w.as_ptr(), op, &tile);
                } else if left > LANES {
                    x86::tile_dense::<2, RES, RELU>(xp, offsets, w.as_ptr(), op, &tile);
                } else {
                    x86::tile_dense::<1, RES, RELU>(xp, offsets, w.as_ptr(), op, &tile);
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

    /// The accumulators of one tile: `NV` vectors of positions by NR channels, the full
    /// reduction over the taps.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn accumulate<const NV: usize>(
        x: *const f32,
        offsets: &[usize],
        w: *const f32,
    ) -> [[__m512; NV]; NR] {
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
        acc
    }

    /// One tile onto the wide grid (rows `ld` apart).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const NV: usize>(
        x: *const f32,
        offsets: &[usize],
        w: *const f32,
        out: *mut f32,
        ld: usize,
    ) {
        let acc = accumulate::<NV>(x, offsets, w);
        for (c, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(c * ld + v * LANES), *a);
            }
        }
    }

    /// Where [`tile_dense`] stores a tile: its vectors' masks and starts (see
    /// [`super::Dense`]), the panel's per-channel scale and shift, and the panel's first
    /// residual value (null without `RES`).
    pub struct Tile<'a> {
        pub plane: usize,
        pub masks: *const u16,
        pub starts: *const usize,
        pub scale: &'a [f32; NR],
        pub shift: &'a [f32; NR],
        pub residual: *const f32,
    }

    /// One tile into dense planes (`plane` apart): vector `v`'s lanes in `masks[v]`,
    /// compressed (in a register: the memory form is slow on some CPUs), mapped as
    /// [`super::OutputMap`] says and stored from `starts[v]`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_dense<const NV: usize, const RES: bool, const RELU: bool>(
        x: *const f32,
        offsets: &[usize],
        w: *const f32,
        out: *mut f32,
        t: &Tile,
    ) {
        let acc = accumulate::<NV>(x, offsets, w);
        let zero = _mm512_setzero_ps();
        for v in 0..NV {
            let mask = *t.masks.add(v);
            if mask == 0 {
                continue;
            }
            let keep = ((1u32 << mask.count_ones()) - 1) as __mmask16;
            let start = *t.starts.add(v);
            for (c, acc) in acc.iter().enumerate() {
                let at = c * t.plane + start;
                let mut r = _mm512_maskz_compress_ps(mask, acc[v]);
                // Mul then add, rounded as the batch-norm kernel rounds (no fused add).
                r = _mm512_add_ps(
                    _mm512_mul_ps(r, _mm512_set1_ps(t.scale[c])),
                    _mm512_set1_ps(t.shift[c]),
                );
                if RES {
                    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(keep, t.residual.add(at)));
                }
                if RELU {
                    // v <= 0 (false for NaN) becomes +0.
                    r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(r, zero), zero);
                }
                _mm512_mask_storeu_ps(out.add(at), keep, r);
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

    #[test]
    fn dense_output_is_the_wide_output_without_junk() {
        use crate::kernels::batch_norm::Epilogue;
        use std::mem::MaybeUninit;
        if !available() {
            return;
        }
        let (c_out, k) = (16, 5);
        // Rows wider and narrower than a vector, junk wider than a vector, no junk, and
        // tails of one to three vectors.
        for (ho, wp, wo) in [
            (4, 6, 4),
            (3, 34, 32),
            (5, 18, 16),
            (2, 40, 3),
            (7, 5, 5),
            (1, 9, 8),
        ] {
            let (n, plane) = (ho * wp, ho * wo);
            let ld = padded_len(n);
            let offsets: Vec<usize> = (0..k).map(|kk| kk * 2 + kk % 3).collect();
            let x_len = offsets.iter().max().unwrap() + ld;
            let x: Vec<f32> = (0..x_len).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
            let w: Vec<f32> = (0..c_out * k)
                .map(|i| ((i * 11) % 9) as f32 * 0.5)
                .collect();
            let packed = pack(&w, c_out, k);
            let mut wide = vec![0.0; c_out * ld];
            conv(&x, &offsets, &packed, &mut wide, n, ld);
            // Shifts that put some outputs exactly on 0 and below it (the ReLU's cases).
            let scale: Vec<f32> = (0..c_out).map(|c| 0.3 + c as f32 * 0.1).collect();
            let shift: Vec<f32> = (0..c_out).map(|c| -(c as f32) * 7.5).collect();
            let residual: Vec<f32> = (0..c_out * plane).map(|i| (i % 7) as f32 - 3.0).collect();
            for (mapped, res, relu) in [
                (false, false, false),
                (true, false, false),
                (true, false, true),
                (true, true, false),
                (true, true, true),
            ] {
                let map = OutputMap {
                    scale: mapped.then_some(&scale[..]),
                    shift: mapped.then_some(&shift[..]),
                    epilogue: Epilogue {
                        residual: res.then_some(&residual[..]),
                        relu,
                    },
                };
                let mut dense = vec![MaybeUninit::new(f32::NAN); c_out * plane];
                conv_dense(
                    &x,
                    &offsets,
                    &packed,
                    &mut dense,
                    &Dense::new(ho, wp, wo),
                    &map,
                );
                // SAFETY: initialised as NaN above; a value left unwritten stays NaN.
                let dense = unsafe { super::super::buffer::assume_init(dense) };
                // What the separate pass wrote: each wide row through the batch-norm
                // kernel's affine epilogue.
                let epilogue = map.epilogue;
                let mut want = vec![MaybeUninit::new(f32::NAN); c_out * plane];
                for (co, rows) in want.chunks_exact_mut(plane).enumerate() {
                    let (kc, bc) = (scale[co], shift[co]);
                    let (kc, bc) = if mapped { (kc, bc) } else { (1.0, 0.0) };
                    for (r, row) in rows.chunks_exact_mut(wo).enumerate() {
                        let src = &wide[co * ld + r * wp..][..wo];
                        let at = co * plane + r * wo;
                        let rr = if res { &residual[at..at + wo] } else { &[][..] };
                        epilogue.write_affine(row, src, rr, kc, bc);
                    }
                }
                // SAFETY: every row was written above.
                let want = unsafe { super::super::buffer::assume_init(want) };
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&dense),
                    bits(&want),
                    "{ho}x{wp} ({wo} outputs), scale/shift {mapped}, residual {res}, relu {relu}"
                );
                if relu {
                    assert!(dense.contains(&0.0) && dense.iter().any(|v| *v > 0.0));
                }
            }
        }
    }
}
