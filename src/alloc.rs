//! Allocator settings for training.
//!
//! Every Burn op on the CPU backend allocates its output, and a training step frees and
//! re-allocates the same few hundred kilobyte-to-megabyte buffers. glibc serves blocks
//! above its mmap threshold with fresh `mmap`s: each one costs page faults on first touch
//! and, with two threads, TLB-shootdown interrupts on `munmap` (a fifth of a CNN step in the
//! profile, BENCHMARKS.md). Raising the mmap and trim thresholds keeps those blocks in the
//! heap for reuse. Peak memory is unchanged; memory freed after the peak is kept by the
//! process instead of returned to the system.
//!
//! One arena for all threads: training runs on the threads of a compute pool (`pool`), and
//! glibc gives each new thread an arena of its own, a chain of separately mapped heaps, for
//! those same buffers. With one arena they come from the main heap as they did when the
//! step ran on the main thread (the CNN's inference at batch 128: 1.06x, median of 8
//! alternating process pairs; ResNet-20 training at batch 64: 1.00x; BENCHMARKS.md item 39).
//! Small blocks still come from each thread's cache without the arena's lock.

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
                && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
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
        // Allocations still work, large ones included, and from several threads at once
        // (one arena for all of them).
        let big = vec![1.0f32; 8 << 20];
        assert_eq!(big.iter().sum::<f32>(), (8 << 20) as f32);
        let sums: Vec<f32> = std::thread::scope(|s| {
            let tasks: Vec<_> = (0..4)
                .map(|t| s.spawn(move || vec![t as f32; 1 << 20].iter().sum::<f32>()))
                .collect();
            tasks.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(sums, [0.0, 1048576.0, 2097152.0, 3145728.0]);
    }
}
