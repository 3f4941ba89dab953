//! How many 256-bit FMAs (`vfmadd`) and 16-bit multiply-adds (`vpmaddwd`) one core issues per
//! nanosecond: the ceilings that the README's arithmetic sets the f32 and the AVX2 int8 products
//! against. Each loop runs 12 independent chains, more than the units' latency × width, so that
//! only their throughput limits it.
//!
//!     cargo build --release --example issue_rates
//!     taskset -c 1 target/release/examples/issue_rates
//!
//! A 256-bit FMA is 8 multiply-adds (16 FLOP); a `vpmaddwd` is 16 (two 16-bit products per i32
//! lane, summed). Needs AVX2 and FMA; says so and exits on a CPU without them.

use std::time::Instant;

/// Instructions per loop: 12 chains × this many rounds.
const ROUNDS: usize = 10_000_000;

#[cfg(target_arch = "x86_64")]
mod loops {
    use std::arch::x86_64::*;

    /// Seconds for 12 × `rounds` FMAs, and a value that depends on every chain.
    #[target_feature(enable = "avx2,fma")]
    pub fn fma(rounds: usize) -> f32 {
        // Operands the compiler cannot see, so that it computes every chain as written.
        let (m, c) = std::hint::black_box((_mm256_set1_ps(0.999), _mm256_set1_ps(0.001)));
        let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        for _ in 0..rounds {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        acc.iter().map(|a| _mm256_cvtss_f32(*a)).sum()
    }

    /// As [`fma`], with `vpmaddwd`.
    #[target_feature(enable = "avx2,fma")]
    pub fn madd(rounds: usize) -> f32 {
        let w = std::hint::black_box(_mm256_set1_epi16(3));
        let mut acc: [__m256i; 12] = std::array::from_fn(|i| _mm256_set1_epi32(i as i32));
        for _ in 0..rounds {
            for a in &mut acc {
                *a = _mm256_madd_epi16(*a, w);
            }
        }
        acc.iter().map(|a| _mm256_cvtsi256_si32(*a) as f32).sum()
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        println!("this CPU has no AVX2 and FMA: nothing to measure");
        return;
    }
    let time = |name: &str, macs: f64, run: unsafe fn(usize) -> f32| {
        // Best of 5: the host's stalls only ever slow a run down.
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                std::hint::black_box(unsafe { run(ROUNDS) });
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let per_ns = (12 * ROUNDS) as f64 / best / 1e9;
        println!(
            "{name}: {per_ns:.2} per ns, {:.1} G multiply-adds/s",
            per_ns * macs
        );
    };
    time("vfmadd ymm (f32)", 8.0, loops::fma);
    time("vpmaddwd ymm (i16 pairs)", 16.0, loops::madd);
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}
