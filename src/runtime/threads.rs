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
