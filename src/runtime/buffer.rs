//! Buffers of values that are streamed from memory: packed weights, and the bandwidth probe.
//!
//! Decoding one token reads every weight once, so how fast memory streams into the cores sets
//! the speed. Two things help: rows that never straddle a cache line (the start is aligned to
//! 64 bytes), and, on Linux, 2 MiB pages. With 4 KiB pages a core streaming hundreds of MB
//! misses the TLB every 4 KiB and its prefetchers stop at each page edge; on this project's
//! 2-core Zen 3 VM, GPT-2 small's bf16 decode went from ~93 to ~104 tokens/s (median of six
//! interleaved runs each) with transparent huge pages for the weights. The pages are asked
//! for with `madvise(MADV_HUGEPAGE)`, which takes effect under the kernel's default
//! `transparent_hugepage=madvise` setting; where the kernel says no, the buffer is unchanged.
//! A buffer's tail under 2 MiB stays on 4 KiB pages: backed whole as a huge page it held up to
//! 2 MiB that the buffer does not use, 29 MB of a Qwen2.5-0.5B in Q8_0 (its 24 stacked gate/up
//! projections of 9.3 MB each on 10 MiB of huge pages, and the token embeddings), for no
//! decoding speed measured on the Zen 3 VM (`bench --generate`, six alternating pairs of runs:
//! ratio 1.01, spread ±4%). Buffers from 64 KiB to 8 MiB (every matrix of BERT-base and GPT-2
//! small in int8 and bf16) are carved one after another from shared 16 MiB regions of huge
//! pages, so they waste no more than the region's last page: int8 weight products for a GPT-2
//! small token ran 2% faster on the Zen 3 VM (same-process A/B, 300 interleaved steps) than
//! with the matrices under 2 MiB on 4 KiB pages. Matrices of 2 to 8 MiB had regions of their
//! own until a BERT-base in int8 held 38 MiB of rounding (2.4 MB matrices on 4 MiB of pages)
//! out of a 269 MiB peak; they are on the same huge pages either way. A region is unmapped with
//! the last buffer in it; the one being filled stays mapped (at most the pages already touched
//! are resident). Smaller buffers stay on the heap.

use rayon::prelude::*;
use std::ptr::NonNull;

/// Element types that any bit pattern, all zeros included, is a valid value of.
///
/// # Safety
/// Implement only for such types: buffers start zeroed and are read as `T`.
pub unsafe trait Plain: Copy + Send + Sync {}
// SAFETY: plain numbers; every bit pattern is one.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}
// SAFETY: as above (GGUF blocks are held as their bytes).
unsafe impl Plain for u8 {}

const CACHE_LINE: usize = 64;
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;
/// Buffers from this size up to `SHARED_MAX` share regions (see the module's documentation).
#[cfg(target_os = "linux")]
const SHARED_MIN: usize = 64 << 10;
#[cfg(target_os = "linux")]
const REGION: usize = 16 << 20;
/// Half a region: larger buffers would leave most of one unused.
#[cfg(target_os = "linux")]
const SHARED_MAX: usize = REGION / 2;

/// A fixed-length buffer of `T` starting on a cache line (on a 2 MiB page boundary, with huge
/// pages asked for, when it is at least that large on Linux).
pub struct StreamBuffer<T: Plain> {
    start: NonNull<T>,
    len: usize,
    memory: Memory,
}

enum Memory {
    /// Nothing allocated: an empty buffer.
    None,
    Heap(std::alloc::Layout),
    /// Inside a mapped region: one of its own, or a part of one that other buffers share.
    /// Held for its drop only: the region is unmapped with the last buffer in it.
    #[cfg(target_os = "linux")]
    Mapped(#[allow(dead_code)] std::sync::Arc<Region>),
}

/// A 2 MiB-aligned anonymous mapping advised as huge pages: `start .. start + len` inside
/// the mapping `base .. base + map_len`, unmapped on drop.
#[cfg(target_os = "linux")]
struct Region {
    base: *mut libc::c_void,
    map_len: usize,
    start: NonNull<u8>,
}

// SAFETY: the region is plain memory owned by this value; the buffers carved from it hand
// out references to their own disjoint parts only.
#[cfg(target_os = "linux")]
unsafe impl Send for Region {}
#[cfg(target_os = "linux")]
unsafe impl Sync for Region {}

#[cfg(target_os = "linux")]
impl Region {
    /// Fresh zero pages for `bytes`, 2 MiB aligned, advised as huge pages before they are
    /// first touched (pages already faulted in would stay 4 KiB). `None` if mmap fails.
    fn map(bytes: usize) -> Option<Self> {
        let map_len = bytes.checked_add(HUGE_PAGE)?;
        // SAFETY: a new private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let offset = (HUGE_PAGE - base as usize % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: offset < HUGE_PAGE, so `start .. start + bytes` lies inside the mapping.
        let start = unsafe { base.cast::<u8>().add(offset) };
        // SAFETY: advice on memory this region mapped; a refusal (EINVAL where THP is compiled
        // out) leaves ordinary pages, so the result is ignored on purpose.
        unsafe {
            libc::madvise(
                start.cast(),
                bytes / HUGE_PAGE * HUGE_PAGE,
                libc::MADV_HUGEPAGE,
            );
        }
        Some(Self {
            base,
            map_len,
            start: NonNull::new(start)?,
        })
    }
}

#[cfg(target_os = "linux")]
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base, self.map_len);
        }
    }
}

/// The region buffers under 2 MiB are being carved from, and how many bytes of it are used.
/// Only never-used bytes are handed out, so they are still the kernel's zeros.
#[cfg(target_os = "linux")]
static SHARED_REGION: std::sync::Mutex<Option<(std::sync::Arc<Region>, usize)>> =
    std::sync::Mutex::new(None);

// SAFETY: the buffer owns its memory and hands out `&[T]` / `&mut [T]` only through `&self` /
// `&mut self`, like a `Vec<T>`; T is `Send + Sync` (`Plain`).
unsafe impl<T: Plain> Send for StreamBuffer<T> {}
unsafe impl<T: Plain> Sync for StreamBuffer<T> {}

impl<T: Plain> StreamBuffer<T> {
    /// `len` zeros. Panics if `len` values cannot fit in the address space (callers size
    /// buffers after data that already exists in memory).
    pub fn zeroed(len: usize) -> Self {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .expect("buffer size overflows usize");
        if bytes == 0 {
            return Self {
                start: NonNull::dangling(),
                len,
                memory: Memory::None,
            };
        }
        #[cfg(target_os = "linux")]
        if bytes > SHARED_MAX {
            if let Some(buffer) = Self::mapped(len, bytes) {
                return buffer;
            }
        } else if bytes >= SHARED_MIN {
            if let Some(buffer) = Self::shared(len, bytes) {
                return buffer;
            }
        }
        let layout = std::alloc::Layout::from_size_align(bytes, CACHE_LINE)
            .expect("buffer size overflows isize");
        // SAFETY: `layout` has a non-zero size.
        let start = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(start) = NonNull::new(start.cast::<T>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self {
            start,
            len,
            memory: Memory::Heap(layout),
        }
    }

    /// A region of its own. `None` if mmap fails.
    #[cfg(target_os = "linux")]
    fn mapped(len: usize, bytes: usize) -> Option<Self> {
        let region = Region::map(bytes)?;
        Some(Self {
            start: region.start.cast::<T>(),
            len,
            memory: Memory::Mapped(std::sync::Arc::new(region)),
        })
    }

    /// The next cache-line-aligned `bytes` (under `REGION`) of the shared region, or of a new
    /// one when they do not fit. `None` if mmap fails.
    #[cfg(target_os = "linux")]
    fn shared(len: usize, bytes: usize) -> Option<Self> {
        // A poisoned lock only means another thread panicked while holding it; the (region,
        // used) pair it guards is always consistent.
        let mut current = SHARED_REGION
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fits = |(_, used): &(std::sync::Arc<Region>, usize)| {
            used.next_multiple_of(CACHE_LINE) + bytes <= REGION
        };
        if !current.as_ref().is_some_and(fits) {
            *current = Some((std::sync::Arc::new(Region::map(REGION)?), 0));
        }
        let (region, used) = current.as_mut()?;
        let offset = used.next_multiple_of(CACHE_LINE);
        *used = offset + bytes;
        // SAFETY: offset + bytes <= REGION, inside the region's mapping, and no other buffer
        // has these bytes.
        let start = unsafe { region.start.add(offset) }.cast::<T>();
        Some(Self {
            start,
            len,
            memory: Memory::Mapped(region.clone()),
        })
    }

    /// `len` values, `value(index)` each, computed in parallel (and each page first touched
    /// by the thread that fills it).
    pub fn from_fn(len: usize, value: impl Fn(usize) -> T + Sync) -> Self {
        let mut buffer = Self::zeroed(len);
        const CHUNK: usize = 1 << 14;
        buffer
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, values)| {
                for (offset, slot) in values.iter_mut().enumerate() {
                    *slot = value(chunk * CHUNK + offset);
                }
            });
        buffer
    }
}

impl<T: Plain> Drop for StreamBuffer<T> {
    fn drop(&mut self) {
        match self.memory {
            Memory::None => {}
            // SAFETY: allocated in `zeroed` with this layout, and freed once.
            Memory::Heap(layout) => unsafe {
                std::alloc::dealloc(self.start.as_ptr().cast(), layout)
            },
            // The region goes with its last buffer (the `Arc`).
            #[cfg(target_os = "linux")]
            Memory::Mapped(_) => {}
        }
    }
}

impl<T: Plain> std::ops::Deref for StreamBuffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `start` points at `len` initialised values (zeroed at allocation, and any
        // bits are a valid T), or is dangling with `len` 0.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for StreamBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len) }
    }
}

impl<T: Plain> Clone for StreamBuffer<T> {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl<T: Plain> std::fmt::Debug for StreamBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamBuffer({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_values_aligned_at_every_size() {
        for len in [0, 1, 17, 1 << 16, (3 << 20) + 5] {
            let buffer = StreamBuffer::<f32>::from_fn(len, |i| i as f32);
            assert_eq!(buffer.len(), len);
            if len > 0 {
                assert_eq!(buffer.as_ptr() as usize % CACHE_LINE, 0, "len {len}");
            }
            assert!(buffer.iter().enumerate().all(|(i, &v)| v == i as f32));
            let copy = buffer.clone();
            assert_eq!(&copy[..], &buffer[..]);
        }
        #[cfg(target_os = "linux")]
        {
            let large = StreamBuffer::<i8>::zeroed(SHARED_MAX + 1);
            assert_eq!(large.as_ptr() as usize % HUGE_PAGE, 0);
            assert!(large.iter().all(|&v| v == 0));
        }
    }

    /// Buffers carved from shared regions: zeros at first, each its own memory (filled
    /// together, then checked after the others were written and some dropped), across more
    /// than one region.
    #[cfg(target_os = "linux")]
    #[test]
    fn shared_buffers_do_not_overlap() {
        let sizes = [
            SHARED_MIN,
            SHARED_MIN + 3,
            HUGE_PAGE - 1,
            HUGE_PAGE + 5,
            SHARED_MAX,
            300_000,
            HUGE_PAGE / 2 + 7,
        ];
        let mut buffers: Vec<StreamBuffer<i8>> = (0..30)
            .map(|i| StreamBuffer::zeroed(sizes[i % sizes.len()]))
            .collect();
        for (i, buffer) in buffers.iter_mut().enumerate() {
            assert!(buffer.iter().all(|&v| v == 0));
            assert_eq!(buffer.as_ptr() as usize % CACHE_LINE, 0);
            buffer.fill(i as i8 + 1);
        }
        let total: usize = buffers.iter().map(|b| b.len()).sum();
        assert!(total > REGION, "the test should span regions");
        buffers.retain(|b| b[0] % 3 != 0);
        for buffer in &buffers {
            assert!(buffer.iter().all(|&v| v == buffer[0]));
        }
    }

    /// The flags (`VmFlags` of /proc/self/smaps) of the mapping that holds `address`.
    #[cfg(target_os = "linux")]
    fn mapping_flags(address: usize) -> Vec<String> {
        let mappings = crate::runtime::smaps::mappings();
        let Some(mapping) = mappings.iter().find(|m| m.range.contains(&address)) else {
            panic!("no mapping holds {address:#x}")
        };
        let flags = mapping.field("VmFlags").unwrap_or("");
        flags.split_whitespace().map(str::to_string).collect()
    }

    /// A buffer of its own region is advised as huge pages (`hg`) only over the whole 2 MiB
    /// pages it fills: its tail is not, so it never backs a huge page it uses in part.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_buffer_tail_under_a_huge_page_is_not_advised_huge() {
        let bytes = 4 * HUGE_PAGE + 12_345;
        assert!(
            bytes > SHARED_MAX,
            "the buffer should have a region of its own"
        );
        let mut buffer = StreamBuffer::<u8>::zeroed(bytes);
        buffer.fill(1);
        let start = buffer.as_ptr() as usize;
        let tail = mapping_flags(start + bytes - 1);
        assert!(
            !tail.iter().any(|f| f == "hg"),
            "tail advised huge: {tail:?}"
        );
        // Where the kernel takes the advice at all, the whole pages have it.
        let head = mapping_flags(start);
        let middle = mapping_flags(start + 4 * HUGE_PAGE - 1);
        assert_eq!(head, middle, "the whole pages are one advised mapping");
    }
}
