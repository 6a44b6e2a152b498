//! Allocator settings for training.
//!
//! Every Burn op on the CPU backend allocates its output, and a training step frees and
//! re-allocates the same few hundred kilobyte-to-megabyte buffers. glibc serves blocks
//! above its mmap threshold with fresh `mmap`s: each one costs page faults on first touch
//! and, with two threads, TLB-shootdown interrupts on `munmap` (a fifth of a CNN step in the
//! profile, BENCHMARKS.md). Raising the mmap and trim thresholds keeps those blocks in the
//! heap for reuse. Peak memory is unchanged; memory freed after the peak is kept by the
//! process instead of returned to the system.

/// Apply the settings; call once at start-up, before the first large allocation. Returns
/// whether the allocator took them (always `false` on platforms without glibc).
pub fn tune_for_training() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LIMIT: libc::c_int = 512 << 20;
        // SAFETY: mallopt only changes allocator parameters; it returns 0 for a rejected
        // value, which leaves glibc's defaults in place.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_thresholds() {
        assert!(super::tune_for_training());
        // Allocations still work, large ones included.
        let big = vec![1.0f32; 8 << 20];
        assert_eq!(big.iter().sum::<f32>(), (8 << 20) as f32);
    }
}
