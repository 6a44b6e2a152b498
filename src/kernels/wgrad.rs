//! A weight-gradient micro-kernel of our own: output channels in AVX-512 registers, input
//! taps broadcast straight from the zero-padded plane.
//!
//! Why: the weight gradient `dW[co, (ci, i, j)] = sum_p dy[co, p] * xpad[base(p) + (ci, i)
//! + j]` ran as `gemm` calls on row copies of the input, and `gemm` packs both operands on
//! every call: with the row copies and the wide output gradients they need, that was about
//! 30% of a ResNet-20 training step. Here the only copy is the output gradient transposed
//! (`dy_t[p, co]`, channels contiguous), the input is read in place, and a tile holds
//! `MV` vectors of output channels by `R` rows `(ci, i)` by the kernel's `KW` columns: 24
//! accumulators that stay in registers over every position of a sample. Per position it
//! loads `MV` vectors of the output gradient and broadcasts `R * KW` input values, one
//! multiply-add per accumulator. Strided convolutions work the same way (only the bases
//! `base(p)` change), so there is no im2col matrix either.
//!
//! (Positions in the vector lanes instead, with horizontal sums at the end, was measured
//! 1.6-2.2x slower than `gemm` for 32 and 64 channels: see BENCHMARKS.md.)
//!
//! Each weight gradient is one chain of multiply-adds over the positions in order, so
//! results do not depend on threads or tiling.

use super::direct;

/// Output channels per vector.
pub const LANES: usize = 16;

/// Whether the kernel runs for `c_out` output channels and `kw` kernel columns: AVX-512,
/// whole vectors of channels, and the kernel widths it is instantiated for (3 and 1).
pub fn takes(c_out: usize, kw: usize) -> bool {
    direct::available() && c_out > 0 && c_out.is_multiple_of(LANES) && matches!(kw, 1 | 3)
}

/// `dw_t[(r * kw + j) * c_out + co] (+)= sum_p x[rows[r] + bases[p] + j] * dy_t[p *
/// c_out + co]`, accumulating into `dw_t` when `accumulate`, else overwriting it. `dy_t`
/// is `[bases.len(), c_out]`, `dw_t` is `[rows.len() * kw, c_out]`.
///
/// Panics unless [`takes`]`(c_out, kw)` and the lengths fit.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad(
    x: &[f32],
    rows: &[usize],
    kw: usize,
    bases: &[usize],
    dy_t: &[f32],
    c_out: usize,
    dw_t: &mut [f32],
    accumulate: bool,
) {
    assert!(
        takes(c_out, kw),
        "weight-gradient kernel: {c_out} channels, kw {kw}"
    );
    assert_eq!(
        dy_t.len(),
        bases.len() * c_out,
        "weight gradient: dy_t length"
    );
    assert_eq!(
        dw_t.len(),
        rows.len() * kw * c_out,
        "weight gradient: dw_t length"
    );
    if rows.is_empty() {
        return;
    }
    if bases.is_empty() {
        if !accumulate {
            dw_t.fill(0.0);
        }
        return;
    }
    let reach = rows.iter().max().unwrap() + bases.iter().max().unwrap() + kw;
    assert!(reach <= x.len(), "weight gradient: input too short");
    #[cfg(target_arch = "x86_64")]
    {
        let mv = if c_out.is_multiple_of(4 * LANES) {
            4
        } else if c_out.is_multiple_of(2 * LANES) {
            2
        } else {
            1
        };
        // SAFETY: `takes` checked AVX-512F and the tile shapes; the asserts above bound
        // every load of x (rows + bases + j < reach), dy_t and dw_t.
        unsafe {
            match (mv, kw) {
                (4, 3) => tiles::<4, 2, 3>(x, rows, bases, dy_t, c_out, dw_t, accumulate),
                (2, 3) => tiles::<2, 4, 3>(x, rows, bases, dy_t, c_out, dw_t, accumulate),
                (1, 3) => tiles::<1, 8, 3>(x, rows, bases, dy_t, c_out, dw_t, accumulate),
                (4, _) => tiles::<4, 6, 1>(x, rows, bases, dy_t, c_out, dw_t, accumulate),
                (2, _) => tiles::<2, 8, 1>(x, rows, bases, dy_t, c_out, dw_t, accumulate),
                _ => tiles::<1, 8, 1>(x, rows, bases, dy_t, c_out, dw_t, accumulate),
            }
        }
    }
}

/// Every tile of [`weight_grad`]: blocks of `MV` channel vectors by `R` rows; the last row
/// block repeats row 0 in its missing places and does not store them.
///
/// # Safety
/// AVX-512F, and the bounds [`weight_grad`] asserts.
#[cfg(target_arch = "x86_64")]
unsafe fn tiles<const MV: usize, const R: usize, const KW: usize>(
    x: &[f32],
    rows: &[usize],
    bases: &[usize],
    dy_t: &[f32],
    c_out: usize,
    dw_t: &mut [f32],
    accumulate: bool,
) {
    for co in (0..c_out).step_by(MV * LANES) {
        for (block, chunk) in rows.chunks(R).enumerate() {
            let mut offs = [chunk[0]; R];
            offs[..chunk.len()].copy_from_slice(chunk);
            x86::tile::<MV, R, KW>(
                x.as_ptr(),
                &offs,
                chunk.len(),
                bases,
                dy_t.as_ptr().add(co),
                c_out,
                dw_t.as_mut_ptr().add(block * R * KW * c_out + co),
                accumulate,
            );
        }
    }
}

/// `dy_t[p * c_out + co] = dy[co * n + p]`: the output gradient `[c_out, n]` transposed,
/// in 16x16 blocks through registers. `c_out` must be a multiple of [`LANES`].
pub fn transpose(dy: &[f32], c_out: usize, n: usize, dy_t: &mut [f32]) {
    assert!(c_out.is_multiple_of(LANES) && dy.len() == c_out * n && dy_t.len() == c_out * n);
    let whole = n - n % LANES;
    #[cfg(target_arch = "x86_64")]
    if direct::available() {
        for co in (0..c_out).step_by(LANES) {
            for p in (0..whole).step_by(LANES) {
                // SAFETY: AVX-512F; rows co..co + 16 of dy and columns p..p + 16 are in
                // bounds (p + 16 <= n), as are dy_t's rows p..p + 16 at columns co..co + 16.
                unsafe {
                    x86::transpose16(
                        dy.as_ptr().add(co * n + p),
                        n,
                        dy_t.as_mut_ptr().add(p * c_out + co),
                        c_out,
                    )
                };
            }
        }
        transpose_scalar(dy, c_out, n, whole..n, dy_t);
        return;
    }
    transpose_scalar(dy, c_out, n, 0..n, dy_t);
}

fn transpose_scalar(
    dy: &[f32],
    c_out: usize,
    n: usize,
    cols: std::ops::Range<usize>,
    dy_t: &mut [f32],
) {
    for p in cols {
        for co in 0..c_out {
            dy_t[p * c_out + co] = dy[co * n + p];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// One tile: `MV` vectors of channels by `R` rows by `KW` columns, summed over every
    /// position. `valid` of the `R` rows are loaded (when `accumulate`) and stored.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const MV: usize, const R: usize, const KW: usize>(
        x: *const f32,
        rows: &[usize; R],
        valid: usize,
        bases: &[usize],
        dy: *const f32,
        c_out: usize,
        dw: *mut f32,
        accumulate: bool,
    ) {
        let mut acc = [[[_mm512_setzero_ps(); MV]; KW]; R];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate().take(valid) {
                for (j, acc) in acc.iter_mut().enumerate() {
                    for (v, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_loadu_ps(dw.add((r * KW + j) * c_out + v * LANES));
                    }
                }
            }
        }
        let mut xr = [x; R];
        for (p, off) in xr.iter_mut().zip(rows) {
            *p = x.add(*off);
        }
        for (p, base) in bases.iter().enumerate() {
            let d = dy.add(p * c_out);
            let mut dv = [_mm512_setzero_ps(); MV];
            for (v, dv) in dv.iter_mut().enumerate() {
                *dv = _mm512_loadu_ps(d.add(v * LANES));
            }
            for (acc, xr) in acc.iter_mut().zip(&xr) {
                let xp = xr.add(*base);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*xp.add(j));
                    for (a, dv) in acc.iter_mut().zip(&dv) {
                        *a = _mm512_fmadd_ps(*dv, b, *a);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(valid) {
            for (j, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(dw.add((r * KW + j) * c_out + v * LANES), *a);
                }
            }
        }
    }

    /// Transposes the 16x16 block at `src` (row stride `ls`) into `dst` (row stride `ld`):
    /// 32-bit, then 64-bit interleaves within 128-bit lanes, then two rounds of lane
    /// shuffles.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose16(src: *const f32, ls: usize, dst: *mut f32, ld: usize) {
        let mut r = [_mm512_setzero_ps(); LANES];
        for (i, r) in r.iter_mut().enumerate() {
            *r = _mm512_loadu_ps(src.add(i * ls));
        }
        // t[2k], t[2k+1]: rows 2k and 2k+1 interleaved (columns 4l, 4l+1 | 4l+2, 4l+3).
        let mut t = [_mm512_setzero_ps(); LANES];
        for k in 0..LANES / 2 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // u[4g + c]: column 4l + c of rows 4g..4g+4 in 128-bit lane l.
        let mut u = [_mm512_setzero_ps(); LANES];
        for g in 0..LANES / 4 {
            let (a, b) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 2]));
            let (c, d) = (
                _mm512_castps_pd(t[4 * g + 1]),
                _mm512_castps_pd(t[4 * g + 3]),
            );
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
        }
        // v[c] (c < 4): lanes 0 and 2 of u[c], u[c + 4] (columns c, c + 8 of rows 0..8);
        // v[c + 4]: lanes 1 and 3 (columns c + 4, c + 12); v[8..16] the same for rows 8..16.
        let mut v = [_mm512_setzero_ps(); LANES];
        for h in 0..2 {
            for c in 0..4 {
                let (a, b) = (u[8 * h + c], u[8 * h + c + 4]);
                v[8 * h + c] = _mm512_shuffle_f32x4::<0x88>(a, b);
                v[8 * h + c + 4] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        // Column c of all 16 rows: v[c] with v[c + 8] (lanes 0, 2 for c < 8, else 1, 3).
        for c in 0..8 {
            let (a, b) = (v[c], v[c + 8]);
            _mm512_storeu_ps(dst.add(c * ld), _mm512_shuffle_f32x4::<0x88>(a, b));
            _mm512_storeu_ps(dst.add((c + 8) * ld), _mm512_shuffle_f32x4::<0xdd>(a, b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_the_definition() {
        for (c_out, n) in [(16, 16), (32, 40), (16, 7), (64, 33)] {
            let dy: Vec<f32> = (0..c_out * n).map(|i| i as f32).collect();
            let mut dy_t = vec![f32::NAN; c_out * n];
            transpose(&dy, c_out, n, &mut dy_t);
            for co in 0..c_out {
                for p in 0..n {
                    assert_eq!(
                        dy_t[p * c_out + co],
                        dy[co * n + p],
                        "{c_out}x{n} at {co}, {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn weight_grad_matches_the_sum_it_defines() {
        for (c_out, kw, n_rows) in [
            (16, 3, 9),
            (32, 3, 6),
            (64, 3, 3),
            (16, 1, 11),
            (32, 1, 8),
            (64, 1, 7),
            (48, 3, 8),
        ] {
            if !takes(c_out, kw) {
                return;
            }
            let rows: Vec<usize> = (0..n_rows).map(|r| r * 29 + r % 3).collect();
            let bases: Vec<usize> = (0..37).map(|p| p * 2 + p / 5).collect();
            let x_len = rows.iter().max().unwrap() + bases.iter().max().unwrap() + kw;
            let x: Vec<f32> = (0..x_len).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
            let dy_t: Vec<f32> = (0..bases.len() * c_out)
                .map(|i| ((i * 11) % 9) as f32 * 0.5)
                .collect();
            let start: Vec<f32> = (0..n_rows * kw * c_out).map(|i| (i % 5) as f32).collect();
            for accumulate in [false, true] {
                let mut dw_t = start.clone();
                weight_grad(&x, &rows, kw, &bases, &dy_t, c_out, &mut dw_t, accumulate);
                for r in 0..n_rows {
                    for j in 0..kw {
                        for co in 0..c_out {
                            let k = (r * kw + j) * c_out + co;
                            let sum: f32 = bases
                                .iter()
                                .enumerate()
                                .map(|(p, b)| x[rows[r] + b + j] * dy_t[p * c_out + co])
                                .sum();
                            let want = if accumulate { start[k] + sum } else { sum };
                            // Small integers and halves: exact in f32 whatever the order.
                            assert_eq!(
                                dw_t[k], want,
                                "{c_out} channels, kw {kw}, row {r}, column {j}, channel {co}"
                            );
                        }
                    }
                }
            }
        }
    }
}
