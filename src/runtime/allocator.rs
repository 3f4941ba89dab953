//! Allocator tuning for inference loops.
//!
//! Every forward pass allocates the same large activation buffers again. glibc serves buffers
//! above 128 KiB with fresh `mmap`s and gives freed memory back to the kernel, so each pass
//! page-faults all of it in again; on a 2-core machine that was a fifth of an encoder's time.
//! Raising glibc's thresholds keeps freed buffers for reuse.
//!
//! One arena for every thread: a forward pass runs on whichever rayon worker picks it up
//! (`kernels::on_worker`), and with glibc's arena per thread each worker kept its own copy of
//! the activations' high-water mark. BERT-base in int8, batch 8×128, on 2 workers: the runs
//! added 80 MiB to the 191 MiB resident after the load; with one arena, 40 MiB. The buffers
//! are few and large (hundreds of allocations per pass), so the arena's lock is not contended.

/// Tune glibc's allocator for inference loops: keep freed memory for reuse instead of
/// handing it back to the kernel, and use one arena for all threads.
///
/// The library never calls this itself (it changes the allocator of the whole process); the
/// `ferroformers` command does. Call it once, first thing in `main`, before threads start:
///
/// ```no_run
/// // First thing in `main`:
/// ferroformers::runtime::allocator::keep_freed_memory();
/// // ... then load and run models.
/// ```
///
/// It sets `M_MMAP_THRESHOLD` (1 GiB), `M_TRIM_THRESHOLD` (never trim), `M_TOP_PAD`
/// (512 MiB) and `M_ARENA_MAX` (1). The gain: repeated forward passes no longer page-fault
/// their activations in again (a fifth of an encoder's time on 2 cores), and worker threads
/// share one high-water mark instead of one each. The cost: the process keeps its peak
/// memory until it exits, and every thread allocates from one arena (fine for a model's few
/// large buffers; a program that allocates heavily on many threads may prefer not to call
/// this). On other platforms and allocators (musl, macOS, Windows, a custom
/// `#[global_allocator]`) it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before threads start
    // allocating heavily, and any value is valid for these options.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 512 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hand the heap's free memory back to the kernel (`malloc_trim`), once: after a load, whose
/// tensors were read, packed and freed one by one. With [`keep_freed_memory`] glibc would
/// otherwise keep the largest of them resident for good, though inference reuses little of
/// it: a tied Qwen2.5-0.5B in bf16 kept its 272 MB embedding table read from the checkpoint.
/// Elsewhere it does nothing.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; allocated memory is
    // untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}
