//! How many threads run the models.
//!
//! Every parallel kernel, ours and candle's, runs on rayon's global pool (a forward pass runs
//! on one of its workers, `kernels::on_worker`). rayon builds that pool once per process, the
//! first time anything uses it, with `RAYON_NUM_THREADS` threads or one per logical CPU; so
//! the count can only be chosen before the first model is loaded or run.

use crate::error::{Error, Result};

/// Run every model of this process on `threads` threads. Call it before loading or running a
/// model: the thread pool is built once, at first use. Calling it again with the same count is
/// fine; another count once the pool exists is [`Error::InvalidInput`].
///
/// Without this call the count is `RAYON_NUM_THREADS`, else one thread per logical CPU.
pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Err(Error::InvalidInput(
            "the thread count must be at least 1".to_string(),
        ));
    }
    if rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .is_ok()
    {
        tracing::debug!(threads, "thread pool built");
        return Ok(());
    }
    // The pool exists already (outside any pool, this is the global pool's size).
    let running = rayon::current_num_threads();
    if running == threads {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "the thread pool already runs {running} threads, so it cannot run {threads}: call \
         set_num_threads before loading or running any model (or set RAYON_NUM_THREADS)"
    )))
}

/// Run candle's own element-wise operations (adds, multiplies, the gradient sums of a backward
/// pass) on the thread that calls them, instead of on candle's second thread pool.
///
/// Since 0.11 candle splits each element-wise operation over a barrier pool of its own, beside
/// rayon's, and its caller spins until the pool's threads are done. With as many rayon workers
/// as cores, the two pools' threads compete for the cores; a backward pass, which sums every
/// gradient with a candle add, spent much of its time spinning at that barrier. These
/// operations are memory-bound, and our kernels do the heavy work on rayon's pool, so one
/// thread gives up little.
///
/// For training: on 2 cores of a Zen 4, in alternating pairs of runs, a MiniLM training step
/// (32 × 128) took 3–10% less time with it, while inference lost 1–2% (BERT-base, batch 8) and
/// decoding more, where candle's pool still pays.
///
/// Like [`allocator::keep_freed_memory`](super::allocator::keep_freed_memory), this changes the
/// whole process (it sets `CANDLE_NUM_THREADS=1`, which candle reads once, when its pool is
/// first used), so the library never calls it itself; `ferroformers train` does. Call it first
/// thing in `main`, before threads start. A `CANDLE_NUM_THREADS` already set wins.
pub fn run_candle_ops_inline() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Only `main` calls this, before any other thread reads the environment.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
