//! What `ferroformers bench` and the criterion benches (`benches/`) share: the token ids they
//! time, and the memory-bandwidth ceiling that decoding speed is measured against.

use crate::runtime::buffer::StreamBuffer;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// `count` spread-out token ids from 5 up, clear of the special and padding tokens at the
/// start of a vocabulary of `vocab` ids: a fixed sequence, so every run and every tool
/// (scripts/bench_compare.py builds the same one) sees the same input.
pub fn token_ids(count: usize, vocab: usize) -> Vec<u32> {
    (0..count)
        .map(|i| 5 + ((i as u64 * 2_654_435_761) % (vocab.max(6) as u64 - 5)) as u32)
        .collect()
}

/// STREAM's triad, `a = b + s·c` on every core: the memory-bandwidth probe.
///
/// Each array is 128 MiB, four times a 32 MiB L3 (STREAM's sizing rule; a Zen 3 or Zen 4 CCD's L3),
/// so that the caches hold a negligible part of it. The arrays live in the same kind of
/// buffer as packed weights (2 MiB pages where Linux gives them), so the ceiling is measured
/// the way the weights are read.
pub struct Triad {
    a: StreamBuffer<f32>,
    b: StreamBuffer<f32>,
    c: StreamBuffer<f32>,
}

impl Triad {
    const LEN: usize = 32 << 20;

    pub fn new() -> Self {
        Self {
            a: StreamBuffer::from_fn(Self::LEN, |_| 0.0),
            b: StreamBuffer::from_fn(Self::LEN, |_| 1.0),
            c: StreamBuffer::from_fn(Self::LEN, |_| 2.0),
        }
    }

    /// Bytes one pass moves as STREAM counts them: 12 per element (two reads, one write).
    pub fn bytes(&self) -> usize {
        12 * Self::LEN
    }

    /// One pass over the arrays.
    pub fn pass(&mut self) {
        const CHUNK: usize = 1 << 16;
        self.a
            .par_chunks_mut(CHUNK)
            .zip(self.b.par_chunks(CHUNK).zip(self.c.par_chunks(CHUNK)))
            .for_each(|(a, (b, c))| {
                for ((a, &b), &c) in a.iter_mut().zip(b).zip(c) {
                    *a = b + 3.0 * c;
                }
            });
    }
}

impl Default for Triad {
    fn default() -> Self {
        Self::new()
    }
}

/// Memory bandwidth in GB/s by [`Triad`]: the best of six passes, as STREAM reports it.
///
/// Its 384 MiB of arrays are not counted in [`resident_memory`]'s peak: the peak before it is
/// kept, and the kernel's high-water mark is reset once the arrays are gone (Linux), so that
/// a benchmark's peak is its model's (a 0.5B model in bf16 peaked at 1.79 GB, of which the
/// triad's arrays were 0.4).
pub fn triad_gb_per_second() -> f64 {
    let before = resident_memory().map_or(0, |memory| memory.peak);
    PEAK_BESIDE_TRIAD.fetch_max(before, Ordering::Relaxed);
    let mut triad = Triad::new();
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let start = Instant::now();
        triad.pass();
        best = best.min(start.elapsed().as_secs_f64());
    }
    let bytes = triad.bytes();
    drop(triad);
    // "5" resets VmHWM to the current RSS (proc(5), /proc/pid/clear_refs); where it cannot
    // be written the peak keeps counting the arrays, as it did before.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    bytes as f64 / best / 1e9
}

/// The highest peak RSS seen before a triad, which resetting the kernel's mark would lose.
static PEAK_BESIDE_TRIAD: AtomicU64 = AtomicU64::new(0);

/// The process's resident memory (RSS), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentMemory {
    /// Resident now (`VmRSS`).
    pub current: u64,
    /// The most that has been resident at once since the process started (`VmHWM`), not
    /// counting [`triad_gb_per_second`]'s arrays.
    pub peak: u64,
}

/// This process's resident memory, from `/proc/self/status`; `None` where there is no such
/// file (not Linux).
pub fn resident_memory() -> Option<ResidentMemory> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let memory = parse_resident_memory(&status)?;
    Some(ResidentMemory {
        peak: memory.peak.max(PEAK_BESIDE_TRIAD.load(Ordering::Relaxed)),
        ..memory
    })
}

/// `VmRSS` and `VmHWM` of a `/proc/<pid>/status` text, in bytes (the file counts kB).
fn parse_resident_memory(status: &str) -> Option<ResidentMemory> {
    let field = |name: &str| {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let mut words = line[name.len()..].split_whitespace();
        let kilobytes: u64 = words.next()?.parse().ok()?;
        (words.next() == Some("kB")).then_some(kilobytes * 1024)
    };
    Some(ResidentMemory {
        current: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_its_peak_from_proc_status() {
        let status = "Name:\tferroformers\nVmPeak:\t 9000 kB\nVmHWM:\t  944824 kB\n\
                      VmRSS:\t  577256 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(
            parse_resident_memory(status),
            Some(ResidentMemory {
                current: 577_256 * 1024,
                peak: 944_824 * 1024
            })
        );
        assert_eq!(parse_resident_memory("VmRSS:\t 12 kB\n"), None);
        assert_eq!(
            parse_resident_memory("VmRSS:\t x kB\nVmHWM:\t 1 kB\n"),
            None
        );
        #[cfg(target_os = "linux")]
        {
            let memory = resident_memory().unwrap();
            assert!(memory.current > 0 && memory.peak >= memory.current);
        }
    }
}
