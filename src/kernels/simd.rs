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

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
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
}
