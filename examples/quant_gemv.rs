//! Speed of the quantized block kernels (`kernels::quant`) beside the int8 GEMM
//! (`kernels::gemm`, `WeightFormat::Int8`) on Qwen2.5-0.5B's shapes: decoding one token
//! (896 → 4864, 4864 → 896, and the 151936 × 896 LM head; and Llama-3.2-1B's 2048 → 8192)
//! and a 512-token prefill (896 → 4864, 4864 → 896), per block type and instruction set.
//!
//!     cargo build --release --example quant_gemv
//!     taskset -c 0,1 target/release/examples/quant_gemv [ROUNDS]
//!
//! Decode figures stream the weights from memory, not from cache: each product reads the next
//! of enough copies of the matrix to exceed the last-level cache (at least 256 MB in all).
//! GB/s counts the weight bytes a product reads; GFLOP/s counts 2 · m · in · out.

use ferroformers::kernels::gemm::{self, Epilogue, PackedWeights, WeightFormat};
use ferroformers::kernels::isa::Isa;
use ferroformers::kernels::quant::{self, GgmlType, QuantizedWeights};
use std::time::Instant;

/// Copies of a matrix until they hold this many bytes (past a 32 MB L3).
const STREAM_BYTES: usize = 256 << 20;

/// Values in [-1, 1] from an xorshift sequence.
fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// A random matrix of `ty`: random bytes with each block's f16 scales set to small values
/// (any bytes are valid blocks; the speed does not depend on the values).
fn random_weights(ty: GgmlType, inner: usize, outer: usize, seed: u32) -> QuantizedWeights {
    let (block, block_bytes) = ty.block();
    let noise = pseudo_random(inner / block * outer * block_bytes, seed);
    let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    let fields: &[usize] = match ty {
        GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in bytes.chunks_exact_mut(block_bytes) {
        for &offset in fields {
            block[offset..offset + 2].copy_from_slice(&scale);
        }
    }
    QuantizedWeights::from_blocks(ty, inner, outer, &bytes).expect("whole blocks")
}

/// Seconds per call of `run(copy)`, cycling over `copies`, the median of `rounds` rounds
/// of `calls` calls.
fn seconds_per_call(copies: usize, calls: usize, rounds: usize, mut run: impl FnMut(usize)) -> f64 {
    for c in 0..copies.min(calls) {
        run(c);
    }
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for c in 0..calls {
                run(c % copies);
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[rounds / 2]
}

fn report(what: &str, isa: &str, bytes: usize, flops: f64, seconds: f64) {
    println!(
        "{what:<32} {isa:<8} {:>8.3} ms {:>7.1} GB/s {:>7.1} GFLOP/s",
        seconds * 1e3,
        bytes as f64 / seconds / 1e9,
        flops / seconds / 1e9
    );
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q5_K,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
    ];
    println!("threads: {}", rayon::current_num_threads());
    // Qwen2.5-0.5B's, and Llama-3.2-1B's feed-forward (2048 → 8192): 896 is no whole number
    // of K-quant blocks (llama-quantize stores such matrices in Q5_0 or Q8_0 instead).
    let shapes = [
        (896, 4864, 1),
        (4864, 896, 1),
        (896, 151936, 1),
        (2048, 8192, 1),
        (896, 4864, 512),
        (4864, 896, 512),
    ];
    for (inner, outer, m) in shapes {
        let x = pseudo_random(m * inner, 7);
        let mut out = vec![0f32; m * outer];
        let flops = 2.0 * (m * inner * outer) as f64;
        let calls = if m == 1 { 200.max(outer / 100) } else { 4 }.min(if outer > 100_000 {
            20
        } else {
            usize::MAX
        });
        // Portable code is for CPUs without AVX2: timed on the first shape only.
        let portable = (inner, outer, m) == shapes[0];
        let isas = Isa::available()
            .into_iter()
            .filter(|&isa| portable || isa != Isa::Portable);
        for isa in isas {
            for ty in types.into_iter().filter(|ty| inner % ty.block().0 == 0) {
                let first = random_weights(ty, inner, outer, 1);
                let copies = if m == 1 {
                    STREAM_BYTES.div_ceil(first.bytes())
                } else {
                    1
                };
                let weights: Vec<QuantizedWeights> = std::iter::once(first)
                    .chain((1..copies).map(|c| random_weights(ty, inner, outer, c as u32 + 1)))
                    .collect();
                let seconds = seconds_per_call(copies, calls, rounds, |c| {
                    quant::matmul(&x, m, &weights[c], None, None, &mut out, isa)
                });
                let what = format!("{m}×{inner}→{outer} {ty:?}");
                report(&what, isa.name(), weights[0].bytes(), flops, seconds);
            }
            let w = pseudo_random(inner * outer, 3);
            let first = PackedWeights::pack_for(isa, inner, outer, WeightFormat::Int8, |o, i| {
                w[o * inner + i]
            });
            let copies = if m == 1 {
                STREAM_BYTES.div_ceil(first.bytes())
            } else {
                1
            };
            let weights: Vec<PackedWeights> = std::iter::once(first)
                .chain((1..copies).map(|_| {
                    PackedWeights::pack_for(isa, inner, outer, WeightFormat::Int8, |o, i| {
                        w[o * inner + i]
                    })
                }))
                .collect();
            let seconds = seconds_per_call(copies, calls, rounds, |c| {
                gemm::matmul(
                    &x,
                    m,
                    &weights[c],
                    None,
                    Epilogue::None,
                    None,
                    &mut out,
                    isa,
                )
            });
            let what = format!("{m}×{inner}→{outer} gemm int8");
            report(&what, isa.name(), weights[0].bytes(), flops, seconds);
        }
    }
}
