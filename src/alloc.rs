//! Allocator settings for training.
//!
//! Every Burn op on the CPU backend allocates its output, and a training step frees and
//! re-allocates the same few hundred kilobyte-to-megabyte buffers. glibc serves blocks
//! above its mmap threshold with fresh `mmap`s: each one costs page faults on first touch
//! and, with two threads, TLB-shootdown interrupts on `munmap` (a fifth of a CNN step in the
//! profile, BENCHMARKS.md). Raising the mmap and trim thresholds keeps those blocks in the
//! heap for reuse. Peak memory is unchanged; memory freed after the peak is kept by the
//! process instead of returned to the system.

/// Apply the settings; call once at start-up, before the first large allocation.
/// No-op on platforms without glibc.
pub fn tune_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LIMIT: libc::c_int = 512 << 20;
        // SAFETY: mallopt only changes allocator parameters; called before other threads
        // allocate. A zero return (rejected value) leaves glibc's defaults, which is fine.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, LIMIT);
            libc::mallopt(libc::M_TRIM_THRESHOLD, LIMIT);
        }
    }
}
