//! Where training runs: on a thread of a compute pool, not beside it.
//!
//! The kernels and Burn's flex ops split their work over the current rayon pool. Called
//! from a thread outside it, every parallel region injects a job, wakes a worker and puts
//! the caller to sleep until the last task wakes it again: two context switches and two
//! wake-ups on the critical path of each of the ~150 regions of a ResNet-20 training step,
//! which at batch 4 put a quarter of the step in the kernel's scheduler (BENCHMARKS.md,
//! item 37). Running on a worker, a region starts on the current thread and the others
//! steal from it; the caller of [`run_on_pool`] sleeps once, for the whole run.

/// Runs `f` on a thread of a pool of its own, as many threads as the global pool (sized by
/// `--threads` / `RAYON_NUM_THREADS`), and returns its result; a panic in `f` resumes on
/// the caller. Already on a pool thread, runs `f` there.
///
/// A pool of its own, not the global one: a thread of the global pool that waits for a
/// task may start another caller's whole job inside that wait, so two runs in one process
/// (tests) would hold each other up. `f` may block (a paused run waits for a control
/// message) while holding one thread.
pub fn run_on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("selfdistill-compute-{i}"))
        .build();
    match pool {
        Ok(pool) => pool.install(f),
        // No threads to be had: the global pool (which exists, having been sized above).
        Err(_) => rayon::scope(|_| f()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_a_pool_thread_and_returns_the_result() {
        // The test harness's threads are not rayon workers.
        assert_eq!(rayon::current_thread_index(), None);
        let (index, value) = run_on_pool(|| (rayon::current_thread_index(), 6 * 7));
        assert!(index.is_some(), "ran outside the pool");
        assert_eq!(value, 42);
        // Nested calls stay on the same worker.
        let nested = run_on_pool(|| {
            let outer = rayon::current_thread_index();
            (outer, run_on_pool(rayon::current_thread_index))
        });
        assert_eq!(nested.0, nested.1);
        // As many threads as the global pool.
        let global = rayon::current_num_threads();
        assert_eq!(run_on_pool(rayon::current_num_threads), global);
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let _one_at_a_time = crate::train::backend::PANIC_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let caught = std::panic::catch_unwind(|| run_on_pool(|| panic!("inside the pool")));
        let message = caught.expect_err("the panic was lost");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"inside the pool"));
    }
}
