//! Where training runs: on a thread of a compute pool, not beside it.
//!
//! The kernels and Burn's flex ops split their work over the current rayon pool. Called
//! from a thread outside it, every parallel region injects a job, wakes a worker and puts
//! the caller to sleep until the last task wakes it again: two context switches and two
//! wake-ups on the critical path of each of the ~150 regions of a ResNet-20 training step,
//! which at batch 4 put a quarter of the step in the kernel's scheduler (BENCHMARKS.md,
//! item 37). Running on a worker, a region starts on the current thread and the others
//! steal from it; the caller of [`run_on_pool`] sleeps once, for the whole run.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long a kept-warm thread goes on looking for work after it last found some, even
/// while its [`Warm`] guard lives (a long serial stretch): then it sleeps as rayon's
/// threads do.
const LINGER: Duration = Duration::from_millis(2);

/// Looks for work between two `sched_yield`s of a kept-warm thread.
const YIELD_EVERY: u32 = 64;

thread_local! {
    /// Whether this thread is kept warm already (a nested guard's call returns at once).
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps the pool's other threads looking for work until dropped: see [`keep_warm`].
#[must_use = "the other threads are kept warm only while the guard lives"]
pub struct Warm(Arc<WarmState>);

struct WarmState {
    live: AtomicBool,
    /// Threads in the loop now, and that entered it so far.
    spinning: AtomicUsize,
    started: AtomicUsize,
}

impl Warm {
    /// How many threads this guard keeps warm now.
    pub fn spinning(&self) -> usize {
        self.0.spinning.load(Ordering::Acquire)
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.0.live.store(false, Ordering::Release);
    }
}

/// Called on a pool thread before a stretch of many small parallel regions (a training
/// step, an evaluation batch): keeps the pool's other threads taking work as it appears
/// until the guard is dropped, instead of going to sleep between regions.
///
/// Why: a rayon thread that finds no work looks again for a few microseconds and then
/// sleeps, and the next region must wake it (a futex call, and the region waits for the
/// context switch). A training step is one to two hundred regions separated by the driving
/// thread's serial work (Burn's bookkeeping, the optimiser), which outlasts that; the
/// wake-ups were ~10% of the small presets' time in the profile (BENCHMARKS.md, item 44).
/// PyTorch's OpenMP threads keep spinning for a while after each region for the same
/// reason. A kept-warm thread looks for work with `rayon::yield_now` (stealing the tasks
/// the regions push), pauses between looks and yields the core to any other runnable
/// thread now and then; it stops when its guard is dropped, or after 2 ms without
/// work. One wake-up per guard instead of one per region.
///
/// `None` (nothing to do) off a pool, or on a pool of one thread. Results do not depend on
/// it: the work and its split are the same, only which thread takes a task changes.
pub fn keep_warm() -> Option<Warm> {
    keep_warm_for(LINGER)
}

fn keep_warm_for(linger: Duration) -> Option<Warm> {
    let me = rayon::current_thread_index()?;
    if rayon::current_num_threads() < 2 {
        return None;
    }
    let state = Arc::new(WarmState {
        live: AtomicBool::new(true),
        spinning: AtomicUsize::new(0),
        started: AtomicUsize::new(0),
    });
    let shared = Arc::clone(&state);
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == me || SPINNING.get() {
            return;
        }
        SPINNING.set(true);
        shared.spinning.fetch_add(1, Ordering::AcqRel);
        shared.started.fetch_add(1, Ordering::AcqRel);
        let (mut found, mut idle) = (Instant::now(), 0u32);
        while shared.live.load(Ordering::Acquire) {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => (found, idle) = (Instant::now(), 0),
                _ if found.elapsed() > linger => break,
                _ => {
                    idle = idle.wrapping_add(1);
                    // Now and then let another runnable thread (the dashboard's) have the
                    // core; this returns at once when there is none.
                    if idle.is_multiple_of(YIELD_EVERY) {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
        }
        shared.spinning.fetch_sub(1, Ordering::AcqRel);
        SPINNING.set(false);
    });
    Some(Warm(state))
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

    /// Waits up to 5 s for `cond`.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn keep_warm_holds_the_other_threads_until_dropped_or_idle() {
        use rayon::prelude::*;
        // Off a pool, and on a pool of one thread, there is nothing to keep warm.
        assert!(keep_warm().is_none());
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert!(one.install(keep_warm).is_none());

        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| {
            // Lingering for longer than the test takes.
            let warm = keep_warm_for(Duration::from_secs(60)).expect("a pool of three threads");
            // Both other threads take the guard's broadcast and stay in it.
            assert!(eventually(|| warm.spinning() == 2), "{}", warm.spinning());
            // Work done meanwhile is done (which threads take it is the scheduler's call:
            // on a loaded machine the caller may do it all).
            let sum: u64 = (0..100_000usize)
                .into_par_iter()
                .with_max_len(100)
                .map(|v| v as u64)
                .sum();
            assert_eq!(sum, 100_000 * 99_999 / 2);
            // A nested guard does not start a second loop on a thread already in one.
            let inner = keep_warm().expect("still on the pool");
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(inner.0.started.load(Ordering::Acquire), 0);
            drop(inner);
            // Dropping the guard releases them...
            let state = Arc::clone(&warm.0);
            drop(warm);
            assert!(eventually(|| state.spinning.load(Ordering::Acquire) == 0));
            // ...and so does idling past the linger time with the guard alive.
            let idle = keep_warm_for(Duration::from_millis(2)).unwrap();
            let state = Arc::clone(&idle.0);
            let left = || {
                state.started.load(Ordering::Acquire) == 2
                    && state.spinning.load(Ordering::Acquire) == 0
            };
            assert!(eventually(left), "still spinning");
            assert!(state.live.load(Ordering::Acquire));
        });
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
