//! A second direct-convolution micro-kernel, transposed from [`super::direct`]'s: output
//! *channels* in the AVX-512 registers and input values broadcast, for strided layers with
//! many taps, and for stride-1 layers with 8-wide outputs.
//!
//! Why: [`super::direct`] puts output positions in the vectors, which needs the positions a
//! tap reads to be consecutive: a strided layer's input is first split into phase planes
//! (a copy per sample), and every output row carries junk columns (the CNN's 64 -> 128
//! layer computes 80 positions for 64 outputs, with a last tile two thirds full). Here a
//! tile is [`ROW`] consecutive outputs of one output row by [`BLOCK`] output channels (two
//! vectors, 16 accumulators): each tap loads two vectors of weights and broadcasts one input
//! value per position straight from the padded planes, `stride` apart. No phase split, no
//! junk, no partial tiles; the price is a transpose of each tile's `ROW x BLOCK` sums into
//! the NCHW output (in registers), small against the taps when there are many. A stride-1 layer with 8x8
//! outputs has the same junk on the direct kernel's padded-width grid (72 positions, 80
//! computed, for 64 outputs).
//!
//! Each output is one chain of multiply-adds over the taps in the weight's order, as in
//! [`super::direct`], so both kernels give the same bits.

use std::mem::MaybeUninit;

use super::OutputMap;

/// Output channels per tile (and per packed weight block): two vectors.
pub const BLOCK: usize = 32;

/// Output positions per tile, all in one output row.
pub const ROW: usize = 8;

const LANES: usize = 16;

/// Whether the CPU runs the kernel (AVX-512F).
pub fn available() -> bool {
    super::direct::available()
}

/// `weight` (`[c_out, k]` row-major) as blocks of [`BLOCK`] channels, each `[k, BLOCK]`: the
/// kernel loads one block row (two vectors) per tap. `c_out` must be a multiple of BLOCK.
pub fn pack(weight: &[f32], c_out: usize, k: usize) -> Vec<f32> {
    assert!(c_out.is_multiple_of(BLOCK) && weight.len() == c_out * k);
    let mut out = vec![0.0f32; weight.len()];
    for (block, dst) in out.chunks_exact_mut(k * BLOCK).enumerate() {
        for (kk, row) in dst.chunks_exact_mut(BLOCK).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = weight[(block * BLOCK + c) * k + kk];
            }
        }
    }
    out
}

/// Where the outputs of one sample are read from: output `(oh, ow)` under tap `kk` reads
/// `x[oh * row_step + ow * stride + offsets[kk]]`.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub ho: usize,
    /// A multiple of [`ROW`].
    pub wo: usize,
    /// Input elements between output rows (`stride_h * padded row length`).
    pub row_step: usize,
    /// Input elements between neighbouring outputs of a row.
    pub stride: usize,
}

/// One sample's convolution into `y` (`[c_out, ho, wo]`, every element written), mapped by
/// `map`. `packed` from [`pack`] with `offsets.len()` taps.
///
/// Panics unless [`available`], `wo` is a multiple of [`ROW`], and every read falls in `x`.
pub fn conv(
    x: &[f32],
    offsets: &[usize],
    packed: &[f32],
    grid: Grid,
    map: &OutputMap,
    y: &mut [MaybeUninit<f32>],
) {
    let k = offsets.len();
    assert!(available(), "chanvec conv kernel needs AVX-512F");
    assert!(k > 0 && packed.len().is_multiple_of(k * BLOCK));
    let c_out = packed.len() / k;
    let Grid {
        ho,
        wo,
        row_step,
        stride,
    } = grid;
    let plane = ho * wo;
    assert!(
        wo.is_multiple_of(ROW) && y.len() == c_out * plane,
        "chanvec: shapes"
    );
    if plane == 0 {
        return;
    }
    let max_off = offsets.iter().copied().max().unwrap_or(0);
    assert!(
        (ho - 1) * row_step + (wo - 1) * stride + max_off < x.len(),
        "chanvec conv: input too short"
    );
    map.check("chanvec", c_out, y.len());
    #[cfg(target_arch = "x86_64")]
    match (map.epilogue.residual.is_some(), map.epilogue.relu) {
        (false, false) => blocks::<false, false>(x, offsets, packed, grid, map, y),
        (false, true) => blocks::<false, true>(x, offsets, packed, grid, map, y),
        (true, false) => blocks::<true, false>(x, offsets, packed, grid, map, y),
        (true, true) => blocks::<true, true>(x, offsets, packed, grid, map, y),
    }
}

/// [`conv`]'s tiles, block by block, with the residual add (`RES`) and ReLU chosen at
/// compile time; the caller checked the shapes.
#[cfg(target_arch = "x86_64")]
fn blocks<const RES: bool, const RELU: bool>(
    x: &[f32],
    offsets: &[usize],
    packed: &[f32],
    grid: Grid,
    map: &OutputMap,
    y: &mut [MaybeUninit<f32>],
) {
    let k = offsets.len();
    let Grid {
        ho,
        wo,
        row_step,
        stride,
    } = grid;
    let plane = ho * wo;
    for (block, w) in packed.chunks_exact(k * BLOCK).enumerate() {
        // The block's scale and shift as the tile's transposed registers hold channels:
        // register r has channel `x86::channels(r).0` in its low eight lanes and `.1` in
        // its high eight.
        let lanes = |of: Option<&[f32]>, absent: f32| -> [[f32; LANES]; BLOCK / 2] {
            std::array::from_fn(|r| {
                let (lo, hi) = x86::channels(r);
                let v = |c: usize| of.map_or(absent, |s| s[block * BLOCK + c]);
                std::array::from_fn(|l| if l < ROW { v(lo) } else { v(hi) })
            })
        };
        let (scale, shift) = (lanes(map.scale, 1.0), lanes(map.shift, 0.0));
        for oh in 0..ho {
            for ow in (0..wo).step_by(ROW) {
                let base = oh * row_step + ow * stride;
                let at = block * BLOCK * plane + oh * wo + ow;
                let residual = map
                    .epilogue
                    .residual
                    .map_or(std::ptr::null(), |r| r[at..].as_ptr());
                // SAFETY: the asserts in `conv` bound every load of x (up to the last
                // output's base plus the largest offset); the tile writes (and reads of the
                // residual, shaped like y) ROW values of each of the block's channels from
                // `at`, inside y (`wo` a multiple of ROW). AVX-512F is available.
                unsafe {
                    let out = x86::Out {
                        y: y.as_mut_ptr().cast::<f32>().add(at),
                        plane,
                        scale: &scale,
                        shift: &shift,
                        residual,
                    };
                    x86::tile::<RES, RELU>(x.as_ptr().add(base), stride, offsets, w.as_ptr(), &out)
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, LANES, ROW};
    use std::arch::x86_64::*;

    /// Channels (low, high) of transposed register `r` of a tile (see [`tile`]): half
    /// `h = r / 8` of the block, lane pair `p = r / 4 % 2`, column `j = r % 4`.
    pub fn channels(r: usize) -> (usize, usize) {
        let (h, p, j) = (r / 8, r / 4 % 2, r % 4);
        let lo = 16 * h + 8 * p + j;
        (lo, lo + 4)
    }

    /// Where a tile's outputs go: channel `c`'s ROW values at `y + c * plane`, each
    /// `v * scale + shift` (per channel, laid out as [`channels`] says), `+ residual` at the
    /// same offset (with `RES`), then the ReLU (with `RELU`).
    pub struct Out<'a> {
        pub y: *mut f32,
        pub plane: usize,
        pub scale: &'a [[f32; LANES]; BLOCK / 2],
        pub shift: &'a [[f32; LANES]; BLOCK / 2],
        pub residual: *const f32,
    }

    /// One tile: ROW positions (`stride` apart from `x`) by BLOCK channels, the full
    /// reduction over the taps, then transposed in registers (an 8 x 16 transpose per half
    /// of the block: unpack, shuffle, and one two-source permute per result) so that each
    /// result register holds two channels' ROW outputs, mapped and stored as `out` says.
    /// The map is the batch-norm epilogue's expressions in the same order (mul, add, add
    /// the residual, ReLU), so the bits are those of `Epilogue::write`.
    #[target_feature(enable = "avx512f,avx2")]
    pub unsafe fn tile<const RES: bool, const RELU: bool>(
        x: *const f32,
        stride: usize,
        offsets: &[usize],
        w: *const f32,
        out: &Out,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; ROW];
        for (kk, off) in offsets.iter().enumerate() {
            let w0 = _mm512_loadu_ps(w.add(kk * BLOCK));
            let w1 = _mm512_loadu_ps(w.add(kk * BLOCK + LANES));
            let xp = x.add(*off);
            for (q, a) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*xp.add(q * stride));
                a[0] = _mm512_fmadd_ps(w0, b, a[0]);
                a[1] = _mm512_fmadd_ps(w1, b, a[1]);
            }
        }
        let zero = _mm512_setzero_ps();
        // Each half of the block: its 16 channels at the ROW positions.
        let halves: [[__m512; ROW]; 2] =
            std::array::from_fn(|h| std::array::from_fn(|q| acc[q][h]));
        for (h, p) in halves.iter().enumerate() {
            // Per 128-bit lane L (channels 4L..4L+4 of the half): t holds pairs of
            // positions, u[j] channel 4L + j at positions 0-3 (j < 4) or 4-7 (j >= 4).
            let t = [
                _mm512_unpacklo_ps(p[0], p[1]),
                _mm512_unpackhi_ps(p[0], p[1]),
                _mm512_unpacklo_ps(p[2], p[3]),
                _mm512_unpackhi_ps(p[2], p[3]),
                _mm512_unpacklo_ps(p[4], p[5]),
                _mm512_unpackhi_ps(p[4], p[5]),
                _mm512_unpacklo_ps(p[6], p[7]),
                _mm512_unpackhi_ps(p[6], p[7]),
            ];
            let u = [
                _mm512_shuffle_ps::<0x44>(t[0], t[2]),
                _mm512_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm512_shuffle_ps::<0x44>(t[1], t[3]),
                _mm512_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm512_shuffle_ps::<0x44>(t[4], t[6]),
                _mm512_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm512_shuffle_ps::<0x44>(t[5], t[7]),
                _mm512_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            for lp in 0..2i32 {
                // Lanes 2lp and 2lp + 1 of u[j] and u[j + 4]: channel 8lp + j's eight
                // outputs, then channel 8lp + 4 + j's.
                let b = 8 * lp;
                let pick = _mm512_setr_epi32(
                    b,
                    b + 1,
                    b + 2,
                    b + 3,
                    16 + b,
                    17 + b,
                    18 + b,
                    19 + b,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    20 + b,
                    21 + b,
                    22 + b,
                    23 + b,
                );
                for j in 0..4 {
                    let r = h * 8 + lp as usize * 4 + j;
                    let (lo, hi) = channels(r);
                    let mut v = _mm512_permutex2var_ps(u[j], pick, u[j + 4]);
                    v = _mm512_add_ps(
                        _mm512_mul_ps(v, _mm512_loadu_ps(out.scale[r].as_ptr())),
                        _mm512_loadu_ps(out.shift[r].as_ptr()),
                    );
                    if RES {
                        let low = _mm256_loadu_ps(out.residual.add(lo * out.plane));
                        let high = _mm256_loadu_ps(out.residual.add(hi * out.plane));
                        let both = _mm512_insertf64x4::<1>(
                            _mm512_castpd256_pd512(_mm256_castps_pd(low)),
                            _mm256_castps_pd(high),
                        );
                        v = _mm512_add_ps(v, _mm512_castpd_ps(both));
                    }
                    if RELU {
                        // v <= 0 (false for NaN) becomes +0.
                        v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, zero), zero);
                    }
                    _mm256_storeu_ps(out.y.add(lo * out.plane), _mm512_castps512_ps256(v));
                    let top = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v));
                    _mm256_storeu_ps(out.y.add(hi * out.plane), _mm256_castpd_ps(top));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::batch_norm::Epilogue;

    /// Every output is the sum it defines (small integers and halves: exact whatever the
    /// order), mapped as the batch-norm epilogue maps it, and every output is written.
    #[test]
    fn matches_the_sum_it_defines() {
        if !available() {
            return;
        }
        let (c_out, k) = (64, 7);
        for (ho, wo, stride) in [(1, 8, 1), (3, 16, 2), (2, 24, 3)] {
            let row_step = wo * stride + 5;
            let offsets: Vec<usize> = (0..k).map(|kk| kk * 4 + kk % 3).collect();
            let x_len = (ho - 1) * row_step + (wo - 1) * stride + offsets.iter().max().unwrap() + 1;
            let x: Vec<f32> = (0..x_len).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
            let w: Vec<f32> = (0..c_out * k)
                .map(|i| ((i * 11) % 9) as f32 * 0.5 - 2.0)
                .collect();
            let scale: Vec<f32> = (0..c_out).map(|c| 0.5 + (c % 4) as f32).collect();
            let shift: Vec<f32> = (0..c_out).map(|c| (c % 5) as f32 - 2.0).collect();
            let residual: Vec<f32> = (0..c_out * ho * wo).map(|i| (i % 7) as f32 - 3.0).collect();
            let grid = Grid {
                ho,
                wo,
                row_step,
                stride,
            };
            for (mapped, with_residual, relu) in [
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
                        residual: with_residual.then_some(&residual[..]),
                        relu,
                    },
                };
                let mut y = vec![MaybeUninit::new(f32::NAN); c_out * ho * wo];
                conv(&x, &offsets, &pack(&w, c_out, k), grid, &map, &mut y);
                for co in 0..c_out {
                    for (q, got) in y[co * ho * wo..][..ho * wo].iter().enumerate() {
                        let (oh, ow) = (q / wo, q % wo);
                        let base = oh * row_step + ow * stride;
                        let sum: f32 = (0..k)
                            .map(|kk| w[co * k + kk] * x[base + offsets[kk]])
                            .sum();
                        let mut want = if mapped {
                            sum * scale[co] + shift[co]
                        } else {
                            sum
                        };
                        if with_residual {
                            want += residual[co * ho * wo + q];
                        }
                        if relu && want <= 0.0 {
                            want = 0.0;
                        }
                        // SAFETY: initialised above (NaN), overwritten by the kernel.
                        let got = unsafe { got.assume_init() };
                        assert_eq!(
                            got, want,
                            "{ho}x{wo} stride {stride}, channel {co}, output {q}"
                        );
                    }
                }
            }
        }
    }
}
