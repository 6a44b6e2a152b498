//! Runtime choice of the vector instruction set for the kernels' own loops.
//!
//! The crate is built for baseline x86-64 (SSE2) so that one binary runs on any x86-64
//! machine; `gemm` picks AVX-512 / AVX2 at run time, but our loops (batch-norm sums and
//! passes, im2col copies, bias adds) were compiled for SSE2 only: profiling showed the
//! batch-norm sums as scalar SSE code (a tenth of a ResNet step). [`vectorized`] runs a
//! closure inside a function compiled for the best instruction set the CPU has; the closure
//! must be `#[inline(always)]` so that its loops are compiled there.
//!
//! Results do not depend on the path taken: Rust never contracts `a * b + c` into a fused
//! multiply-add or reorders float operations, so the wider code computes the same values
//! in the same order.

use std::mem::MaybeUninit;

/// Runs `f` compiled for AVX-512 or AVX2 + FMA when the CPU has it (checked once and
/// cached by the standard library), else as built.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { x86::avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { x86::avx2(f) };
        }
    }
    f()
}

/// `even[i] = src[2 * i]`, `odd[i] = src[2 * i + 1]`: splits a row into the two column
/// phases of a stride-2 convolution. `even` holds `src.len().div_ceil(2)` values, `odd`
/// `src.len() / 2`. With AVX-512, two permutes per 32 values (and masked ones for the
/// rest); the compiler's version of the plain loop moved one pair at a time (6% of a CNN
/// inference step in the profile). Inlined into callers compiled for AVX-512 (a
/// [`vectorized`] closure): a call per image row cost up to 0.94x of a CNN inference.
#[inline]
pub fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    assert!(
        even.len() == src.len().div_ceil(2) && odd.len() == src.len() / 2,
        "deinterleave: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available, and the lengths were checked.
        unsafe { x86::deinterleave(src, even, odd) };
        return;
    }
    for (i, v) in src.iter().enumerate() {
        if i % 2 == 0 {
            even[i / 2] = *v;
        } else {
            odd[i / 2] = *v;
        }
    }
}

/// `dst.copy_from_slice(src)` for short slices (an image row into a padded plane). With
/// AVX-512, masked moves of 16 values inline: the compiler turns a plain copy loop into a
/// `memcpy` call per row, and those calls were 5-7% of a ResNet-20 training step. Inlined
/// into callers compiled for AVX-512 (a [`vectorized`] closure).
#[inline]
pub fn copy_short(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy_short: lengths");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available, and the lengths are equal.
        unsafe { x86::copy_short(dst, src) };
        return;
    }
    dst.copy_from_slice(src);
}

/// `out[2 * i] += even[i]`, `out[2 * i + 1] += odd[i]`: the adjoint of [`deinterleave`],
/// which adds a stride-2 layer's column phases back onto an input-gradient row. `even`
/// holds `out.len().div_ceil(2)` values, `odd` `out.len() / 2`. With AVX-512, two permutes
/// per 32 values; inlined into callers compiled for AVX-512 (a [`vectorized`] closure).
#[inline]
pub fn interleave_add(even: &[f32], odd: &[f32], out: &mut [f32]) {
    check_interleave(even, odd, out.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available, and the lengths were checked.
        unsafe { x86::interleave::<true>(even, odd, out.as_mut_ptr(), out.len()) };
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o += if i % 2 == 0 { even[i / 2] } else { odd[i / 2] };
    }
}

/// `out[2 * i] = even[i]`, `out[2 * i + 1] = odd[i]`: [`interleave_add`] without the add,
/// for a row that two column phases fill completely. Writes every element of `out`, which
/// may start uninitialised (an input gradient whose rows are all written this way needs no
/// zeroing first).
#[inline]
pub fn interleave(even: &[f32], odd: &[f32], out: &mut [MaybeUninit<f32>]) {
    check_interleave(even, odd, out.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available, the lengths were checked, and without ADD the
        // kernel only writes `out` (`MaybeUninit<f32>` has the layout of `f32`).
        unsafe { x86::interleave::<false>(even, odd, out.as_mut_ptr().cast(), out.len()) };
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        o.write(if i % 2 == 0 { even[i / 2] } else { odd[i / 2] });
    }
}

/// The lengths [`interleave`] and [`interleave_add`] need for an `n`-value row.
#[inline(always)]
fn check_interleave(even: &[f32], odd: &[f32], n: usize) {
    assert!(
        even.len() == n.div_ceil(2) && odd.len() == n / 2,
        "interleave: lengths"
    );
}

/// `dst[2 * i] = src[i]`, leaving the odd positions as they are: one column phase of a
/// stride-2 layer's input gradient written back into its row. `dst` must hold the last
/// even position, `2 * src.len() - 1` values or more. With AVX-512, one expand and one
/// masked store per 8 values; the plain loop (a strided scalar store with its bounds
/// checks) was 6-8% of a Fashion-MNIST training run. Inlined into callers compiled for
/// AVX-512 (a [`vectorized`] closure).
#[inline]
pub fn scatter_even(src: &[f32], dst: &mut [f32]) {
    assert!(
        src.is_empty() || dst.len() > 2 * (src.len() - 1),
        "scatter_even: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is available, and the lengths were checked.
        unsafe { x86::scatter_even(src, dst) };
        return;
    }
    for (i, v) in src.iter().enumerate() {
        dst[2 * i] = *v;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// See [`super::deinterleave`]; the caller checked the lengths.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
        let (n, s, e, o) = (src.len(), src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr());
        let pick_even =
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let pick_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let mask = |k: usize| -> __mmask16 { ((1u32 << k.min(16)) - 1) as __mmask16 };
        let mut i = 0;
        while i + 32 <= n {
            let (a, b) = (_mm512_loadu_ps(s.add(i)), _mm512_loadu_ps(s.add(i + 16)));
            _mm512_storeu_ps(e.add(i / 2), _mm512_permutex2var_ps(a, pick_even, b));
            _mm512_storeu_ps(o.add(i / 2), _mm512_permutex2var_ps(a, pick_odd, b));
            i += 32;
        }
        let left = n - i;
        if left > 0 {
            // Masked loads and stores: lanes past the ends are neither read nor written.
            let a = _mm512_maskz_loadu_ps(mask(left), s.add(i));
            let b = _mm512_maskz_loadu_ps(mask(left.saturating_sub(16)), s.add(i + 16));
            let (ev, od) = (
                _mm512_permutex2var_ps(a, pick_even, b),
                _mm512_permutex2var_ps(a, pick_odd, b),
            );
            _mm512_mask_storeu_ps(e.add(i / 2), mask(left.div_ceil(2)), ev);
            _mm512_mask_storeu_ps(o.add(i / 2), mask(left / 2), od);
        }
    }

    /// See [`super::copy_short`]; the caller checked the lengths.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn copy_short(dst: &mut [f32], src: &[f32]) {
        let (n, d, s) = (src.len(), dst.as_mut_ptr(), src.as_ptr());
        // Masked moves throughout (not just the tail): a loop of plain ones would again be
        // recognised as a `memcpy`.
        let mut i = 0;
        while i < n {
            let m = ((1u32 << (n - i).min(16)) - 1) as __mmask16;
            _mm512_mask_storeu_ps(d.add(i), m, _mm512_maskz_loadu_ps(m, s.add(i)));
            i += 16;
        }
    }

    /// [`super::interleave_add`] (`ADD`) or [`super::interleave`] into the `n` values at
    /// `d`, which are read only with `ADD`; the caller checked the lengths.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn interleave<const ADD: bool>(even: &[f32], odd: &[f32], d: *mut f32, n: usize) {
        let (e, o) = (even.as_ptr(), odd.as_ptr());
        // Lanes 0-15 of the result take even[0..8] and odd[0..8] in turn, lanes 16-31 the
        // next eight of each (index 16 + k picks lane k of the second operand).
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let mask = |k: usize| -> __mmask16 { ((1u32 << k.min(16)) - 1) as __mmask16 };
        // `v` (plus what `p` holds, with ADD) into the lanes of `m` at `p`; other lanes are
        // neither read nor written.
        let put = |p: *mut f32, m: __mmask16, v: __m512| {
            let v = if ADD {
                _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), v)
            } else {
                v
            };
            _mm512_mask_storeu_ps(p, m, v);
        };
        let mut i = 0;
        while i + 32 <= n {
            let (ev, od) = (_mm512_loadu_ps(e.add(i / 2)), _mm512_loadu_ps(o.add(i / 2)));
            put(d.add(i), 0xffff, _mm512_permutex2var_ps(ev, low, od));
            put(d.add(i + 16), 0xffff, _mm512_permutex2var_ps(ev, high, od));
            i += 32;
        }
        let left = n - i;
        if left > 0 {
            // Masked loads and stores: lanes past the ends are neither read nor written.
            let ev = _mm512_maskz_loadu_ps(mask(left.div_ceil(2)), e.add(i / 2));
            let od = _mm512_maskz_loadu_ps(mask(left / 2), o.add(i / 2));
            put(d.add(i), mask(left), _mm512_permutex2var_ps(ev, low, od));
            put(
                d.add(i + 16),
                mask(left.saturating_sub(16)),
                _mm512_permutex2var_ps(ev, high, od),
            );
        }
    }

    /// See [`super::scatter_even`]; the caller checked the lengths.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scatter_even(src: &[f32], dst: &mut [f32]) {
        let (n, s, d) = (src.len(), src.as_ptr(), dst.as_mut_ptr());
        const EVEN: __mmask16 = 0x5555;
        let mut i = 0;
        while i + 8 <= n {
            // Lanes 0-7 of the load go to the even lanes; the store writes only those.
            let v = _mm512_maskz_expand_ps(EVEN, _mm512_maskz_loadu_ps(0xff, s.add(i)));
            _mm512_mask_storeu_ps(d.add(2 * i), EVEN, v);
            i += 8;
        }
        let left = n - i;
        if left > 0 {
            // Even lanes below 2 * left - 1: lanes past the ends are neither read nor written.
            let v = _mm512_maskz_expand_ps(
                EVEN,
                _mm512_maskz_loadu_ps(((1u32 << left) - 1) as __mmask16, s.add(i)),
            );
            let m = EVEN & ((1u32 << (2 * left - 1)) - 1) as __mmask16;
            _mm512_mask_storeu_ps(d.add(2 * i), m, v);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorized_code_computes_what_plain_code_does() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let sum = |x: &[f32]| {
            let mut lanes = [0.0f64; 8];
            for (i, v) in x.iter().enumerate() {
                lanes[i % 8] += *v as f64 * 1.5 + 0.25;
            }
            lanes.iter().sum::<f64>()
        };
        let plain = sum(&x);
        let wide = vectorized(
            #[inline(always)]
            || sum(&x),
        );
        assert_eq!(plain.to_bits(), wide.to_bits());
    }

    #[test]
    fn interleave_add_is_the_adjoint_of_deinterleave() {
        for n in [0usize, 1, 2, 15, 16, 17, 31, 32, 33, 34, 63, 64, 65, 100] {
            let (ne, no) = (n.div_ceil(2), n / 2);
            let even: Vec<f32> = (0..ne).map(|i| (2 * i) as f32).collect();
            let odd: Vec<f32> = (0..no).map(|i| (2 * i + 1) as f32).collect();
            // Start from 1000 + i: the sum shows both terms; guards past the end stay.
            let mut out: Vec<f32> = (0..n + 20).map(|i| 1000.0 + i as f32).collect();
            interleave_add(&even, &odd, &mut out[..n]);
            for (i, v) in out.iter().enumerate() {
                let want = if i < n {
                    1000.0 + 2.0 * i as f32
                } else {
                    1000.0 + i as f32
                };
                assert_eq!(*v, want, "n {n}, element {i}");
            }
        }
    }

    #[test]
    fn interleave_writes_the_two_phases_in_turn() {
        for n in [
            0usize, 1, 2, 7, 14, 15, 16, 17, 28, 31, 32, 33, 63, 64, 65, 100,
        ] {
            let (ne, no) = (n.div_ceil(2), n / 2);
            let even: Vec<f32> = (0..ne).map(|i| (2 * i) as f32).collect();
            let odd: Vec<f32> = (0..no).map(|i| (2 * i + 1) as f32).collect();
            // Start from -1: every element up to n is overwritten; guards past the end stay.
            let mut out = vec![MaybeUninit::new(-1.0f32); n + 20];
            interleave(&even, &odd, &mut out[..n]);
            // SAFETY: every element was initialised above (and the first n overwritten).
            let out = unsafe { crate::kernels::buffer::assume_init(out) };
            for (i, v) in out.iter().enumerate() {
                let want = if i < n { i as f32 } else { -1.0 };
                assert_eq!(*v, want, "n {n}, element {i}");
            }
        }
    }

    #[test]
    fn copy_short_copies_exactly_the_slice() {
        for n in [0usize, 1, 7, 8, 15, 16, 17, 32, 33, 100] {
            let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let mut dst = vec![-1.0f32; n + 20];
            copy_short(&mut dst[..n], &src);
            assert_eq!(&dst[..n], &src[..], "n {n}");
            assert!(dst[n..].iter().all(|v| *v == -1.0), "n {n}");
        }
    }

    #[test]
    fn scatter_even_writes_only_the_even_positions() {
        for n in [0usize, 1, 2, 7, 8, 9, 15, 16, 17, 33, 100] {
            let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
            // The shortest allowed `dst` (ending on the last even position), guards after.
            let len = (2 * n).saturating_sub(1);
            let mut dst = vec![-1.0f32; len + 20];
            scatter_even(&src, &mut dst[..len]);
            for (i, v) in dst.iter().enumerate() {
                let want = if i < len && i % 2 == 0 {
                    (i / 2) as f32
                } else {
                    -1.0
                };
                assert_eq!(*v, want, "n {n}, element {i}");
            }
        }
    }

    #[test]
    fn deinterleave_splits_even_and_odd_positions() {
        for n in [0usize, 1, 2, 15, 16, 17, 31, 32, 33, 34, 63, 64, 65, 100] {
            let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
            // Guard values around the outputs: nothing past the ends is written.
            let (ne, no) = (n.div_ceil(2), n / 2);
            let mut even = vec![-1.0; ne + 20];
            let mut odd = vec![-1.0; no + 20];
            deinterleave(&src, &mut even[..ne], &mut odd[..no]);
            let want_even: Vec<f32> = (0..ne).map(|i| (2 * i) as f32).collect();
            let want_odd: Vec<f32> = (0..no).map(|i| (2 * i + 1) as f32).collect();
            assert_eq!(&even[..ne], &want_even[..], "n {n}");
            assert_eq!(&odd[..no], &want_odd[..], "n {n}");
            assert!(
                even[ne..].iter().chain(&odd[no..]).all(|v| *v == -1.0),
                "n {n}"
            );
        }
    }
}
