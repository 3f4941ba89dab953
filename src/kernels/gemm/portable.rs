//! Portable micro-kernels: plain Rust that the compiler vectorises for the target; each
//! writes a stack tile of raw sums (`Target::tile`) that `Block::store` finishes.

use super::pack::{bf16_value, int8_lane, INT8_PANEL_ROW};
use super::tile::{Target, INT8_PAIRS_PER_SUM};
use super::NR;

/// Portable micro-kernel: `tile[i][j] = Σ_p a[p·mr + i] · w(p, j)`, where `load(row, j)`
/// reads column j's weight from a panel row.
#[inline(always)]
pub(super) fn tile<const M: usize, T: Copy>(
    a: &[f32],
    b: &[T],
    target: Target,
    load: impl Fn(&[T], usize) -> f32,
) {
    let mut acc = [[0f32; NR]; M];
    for (a, b) in a.chunks_exact(M).zip(b.chunks_exact(NR)) {
        let mut w = [0f32; NR];
        for (j, w) in w.iter_mut().enumerate() {
            *w = load(b, j);
        }
        for (acc, &a) in acc.iter_mut().zip(a) {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc += a * w;
            }
        }
    }
    write_tile(&acc, target);
}

/// The portable int8 micro-kernel: the same integer sums in the same order as the AVX2 one,
/// so both give the same f32 sums; into a stack tile, unscaled.
pub(super) fn tile_int8<const M: usize>(a: &[i32], b: &[i8], target: Target) {
    let mut sums = [[0f32; NR]; M];
    let blocks = a
        .chunks(INT8_PAIRS_PER_SUM * M)
        .zip(b.chunks(INT8_PAIRS_PER_SUM * INT8_PANEL_ROW));
    for (a, b) in blocks {
        let mut acc = [[0i32; NR]; M];
        for (a, b) in a.chunks_exact(M).zip(b.chunks_exact(INT8_PANEL_ROW)) {
            for (acc, &pair) in acc.iter_mut().zip(a) {
                let (even, odd) = (pair as i16 as i32, (pair >> 16) as i16 as i32);
                for (column, acc) in acc.iter_mut().enumerate() {
                    *acc += even * b[int8_lane(column, 0)] as i32
                        + odd * b[int8_lane(column, 1)] as i32;
                }
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            for (sum, &acc) in sums.iter_mut().zip(acc) {
                *sum += acc as f32;
            }
        }
    }
    write_tile(&sums, target);
}

/// Raw sums to a stack tile: the portable kernels' only target.
fn write_tile<const M: usize>(sums: &[[f32; NR]; M], target: Target) {
    for (i, sums) in sums.iter().enumerate() {
        // SAFETY: the portable path always targets a stack tile (`Target::tile`), MR × NR.
        let row = unsafe { std::slice::from_raw_parts_mut(target.c.add(i * target.ldc), NR) };
        row.copy_from_slice(sums);
    }
}

/// The portable kernel over bf16 pairs: each pair's two products (exact in f32: 8-bit
/// mantissas) added in turn, in f32.
pub(super) fn tile_bf16_pairs<const M: usize>(a: &[i32], b: &[u16], target: Target) {
    let value = |bits: u32| f32::from_bits(bits << 16);
    let mut acc = [[0f32; NR]; M];
    for (a, b) in a.chunks_exact(M).zip(b.chunks_exact(2 * NR)) {
        for (acc, &pair) in acc.iter_mut().zip(a) {
            let (even, odd) = (value(pair as u32 & 0xffff), value(pair as u32 >> 16));
            for (acc, w) in acc.iter_mut().zip(b.chunks_exact(2)) {
                *acc += even * bf16_value(w[0]) + odd * bf16_value(w[1]);
            }
        }
    }
    write_tile(&acc, target);
}

/// The portable kernel over int8 quads and u8 rows: the same integer sums as `vpdpbusd`
/// (exact in i32 within a K block), less the zero points' share where the target asks.
pub(super) fn tile_int8_quads<const M: usize>(a: &[i32], b: &[i8], target: Target) {
    let mut acc = [[0i32; NR]; M];
    for (a, b) in a.chunks_exact(M).zip(b.chunks_exact(4 * NR)) {
        for (acc, &quad) in acc.iter_mut().zip(a) {
            let inputs = (quad as u32).to_le_bytes();
            for (acc, w) in acc.iter_mut().zip(b.chunks_exact(4)) {
                for (&x, &w) in inputs.iter().zip(w) {
                    *acc += i32::from(x) * i32::from(w);
                }
            }
        }
    }
    let mut sums = [[0f32; NR]; M];
    for (i, (sums, acc)) in sums.iter_mut().zip(&acc).enumerate() {
        for (j, (sum, &acc)) in sums.iter_mut().zip(acc).enumerate() {
            let mut acc = acc;
            if !target.column_sums.is_null() {
                // SAFETY: a target with column sums holds NR of them and a zero point per row.
                let (zero_point, column_sum) =
                    unsafe { (*target.zero_points.add(i), *target.column_sums.add(j)) };
                // Within i32 (|zero point · column sum| ≤ 255 · 127 · k); wrapping, as
                // `vpmulld` and `vpsubd` are.
                acc = acc.wrapping_sub(zero_point.wrapping_mul(column_sum));
            }
            *sum = acc as f32;
        }
    }
    write_tile(&sums, target);
}
