//! The floor under everything: the threads that run the models, the allocator, memory that
//! weights and benchmarks live in, and what `ferroformers bench` measures with.

pub mod allocator;
// Public only for the `ferroformers` command (`bench`: the bandwidth ceiling, token ids) and
// the criterion benches; not part of the API.
#[doc(hidden)]
pub mod benchmark;
pub(crate) mod buffer;
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod smaps;
pub mod threads;
