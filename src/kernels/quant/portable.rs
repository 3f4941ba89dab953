//! The block formats, and the scalar dot products of one weight row against `R` rows of
//! quantized activations: the reference that the AVX2 and AVX-512 kernels are tested against,
//! and the path of CPUs without them.
//!
//! The layouts are ggml's (`ggml-common.h`,
//! <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/ggml/src/ggml-common.h#L195-L375>),
//! little-endian, with no padding; `d`, `m` and `dmin` are f16:
//!
//! | type | values | bytes | layout | value i |
//! |---|---|---|---|---|
//! | Q8_0 | 32 | 34 | `d`, `qs[32]` (i8) | `d · qs[i]` |
//! | Q4_0 | 32 | 18 | `d`, `qs[16]` | `d · (nibble(i) − 8)`; values 0–15 in the low nibbles, 16–31 in the high |
//! | Q4_1 | 32 | 20 | `d`, `m`, `qs[16]` | `d · nibble(i) + m` |
//! | Q5_0 | 32 | 22 | `d`, `qh` (u32), `qs[16]` | `d · ((nibble(i) \| bit i of qh << 4) − 16)` |
//! | Q4_K | 256 | 144 | `d`, `dmin`, `scales[12]`, `qs[128]` | `d · sc[s] · q − dmin · mn[s]`, s = i / 32: eight 6-bit scales and minimums packed in `scales`; each 32 bytes of `qs` hold two sub-blocks (low nibbles, then high) |
//! | Q5_K | 256 | 176 | `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]` | as Q4_K, with bit s of `qh[i % 32]` as the fifth bit |
//! | Q6_K | 256 | 210 | `ql[128]`, `qh[64]`, `scales[16]` (i8), `d` | `d · scales[i / 16] · (q − 32)`: per half of 128, the low four bits from 64 bytes of `ql` (low nibbles, then high), the top two from 32 bytes of `qh` (four 2-bit fields) |
//!
//! Each product sums the integer products of a block (or sub-block) exactly, in i32, and then
//! scales and sums the blocks in f32, as llama.cpp's `ggml_vec_dot_*` do.

use super::activations::{ActRow, Q8KRow, Q8Row};
use super::interleave::{row_of_group, ROWS};
use super::{GgmlType, QK, QK_K};
use crate::loading::gguf::scales_and_mins;

/// The little-endian f16 at the start of `bytes`, as f32.
pub(super) fn half(bytes: &[u8]) -> f32 {
    half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// `out[o][r]` = weight row o (of `w`, `row_bytes` each) · activation row r.
pub(super) fn dot_rows<const R: usize>(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[ActRow; R],
    out: &mut [[f32; R]],
) {
    let q8 = x.map(|row| row.q8);
    let q8k = x.map(|row| row.q8k);
    for (row, out) in w.chunks_exact(row_bytes).zip(out) {
        *out = match ty {
            GgmlType::Q8_0 => blocks32(row, 34, &q8, q8_0),
            GgmlType::Q4_0 => blocks32(row, 18, &q8, q4_0),
            GgmlType::Q4_1 => blocks32(row, 20, &q8, q4_1),
            GgmlType::Q5_0 => blocks32(row, 22, &q8, q5_0),
            GgmlType::Q4_K => blocks256(row, 144, &q8k, q4_k),
            GgmlType::Q5_K => blocks256(row, 176, &q8k, q5_k),
            GgmlType::Q6_K => blocks256(row, 210, &q8k, q6_k),
            other => unreachable!("QuantizedWeights holds no {other:?}"),
        };
    }
}

/// [`dot_rows`] for `w` holding whole groups of rows in the interleaved layout: each row
/// taken back out of its group and multiplied as [`dot_rows`] does, so that the reference
/// does not depend on the layout.
pub(super) fn dot_groups<const R: usize>(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[ActRow; R],
    out: &mut [[f32; R]],
) {
    let mut row = vec![0; row_bytes];
    for (group, out) in w
        .chunks_exact(ROWS * row_bytes)
        .zip(out.chunks_exact_mut(ROWS))
    {
        for (r, out) in out.iter_mut().enumerate() {
            row_of_group(ty, group, r, &mut row);
            dot_rows(ty, &row, row_bytes, x, std::slice::from_mut(out));
        }
    }
}

/// Σ over blocks of `block(bytes, x values, x scale, x sum)` for each row.
fn blocks32<const R: usize>(
    row: &[u8],
    block_bytes: usize,
    x: &[Q8Row; R],
    block: fn(&[u8], &[i8], f32, i32) -> f32,
) -> [f32; R] {
    let mut acc = [0f32; R];
    for (b, bytes) in row.chunks_exact(block_bytes).enumerate() {
        for (acc, x) in acc.iter_mut().zip(x) {
            *acc += block(bytes, &x.values[b * QK..][..QK], x.scales[b], x.sums[b]);
        }
    }
    acc
}

/// Σ over blocks of `block(bytes, x row, block index)` for each row.
fn blocks256<const R: usize>(
    row: &[u8],
    block_bytes: usize,
    x: &[Q8KRow; R],
    block: fn(&[u8], &Q8KRow, usize) -> f32,
) -> [f32; R] {
    let mut acc = [0f32; R];
    for (b, bytes) in row.chunks_exact(block_bytes).enumerate() {
        for (acc, x) in acc.iter_mut().zip(x) {
            *acc += block(bytes, x, b);
        }
    }
    acc
}

/// Σ q·x over 32 values, the weights given by `q(i)`.
fn dot32(x: &[i8], q: impl Fn(usize) -> i32) -> i32 {
    x.iter()
        .enumerate()
        .map(|(i, &x)| q(i) * i32::from(x))
        .sum()
}

/// Value i (0..32) of a 32-value block's 16 bytes of nibbles.
fn nibble(qs: &[u8], i: usize) -> i32 {
    i32::from((qs[i % 16] >> (4 * (i / 16))) & 0x0F)
}

fn q8_0(w: &[u8], x: &[i8], dx: f32, _: i32) -> f32 {
    let dot = dot32(x, |i| i32::from(w[2 + i] as i8));
    dot as f32 * (half(w) * dx)
}

fn q4_0(w: &[u8], x: &[i8], dx: f32, sum: i32) -> f32 {
    let dot = dot32(x, |i| nibble(&w[2..], i)) - 8 * sum;
    dot as f32 * (half(w) * dx)
}

fn q4_1(w: &[u8], x: &[i8], dx: f32, sum: i32) -> f32 {
    let dot = dot32(x, |i| nibble(&w[4..], i));
    dot as f32 * (half(w) * dx) + half(&w[2..]) * (dx * sum as f32)
}

fn q5_0(w: &[u8], x: &[i8], dx: f32, sum: i32) -> f32 {
    let qh = u32::from_le_bytes([w[2], w[3], w[4], w[5]]);
    let dot = dot32(x, |i| nibble(&w[6..], i) | (((qh >> i) & 1) << 4) as i32) - 16 * sum;
    dot as f32 * (half(w) * dx)
}

/// A Q4_K or Q5_K block: Σ over sub-blocks of `sc · Σ q·x`, and of `mn · Σ x`, with the
/// weights' unsigned values given by `q(i)`.
fn k_block(w: &[u8], x: &Q8KRow, b: usize, q: impl Fn(usize) -> i32) -> f32 {
    let (scales, mins) = scales_and_mins(&w[4..16]);
    let x_values = &x.values[b * QK_K..][..QK_K];
    let mut dot = 0i32;
    let mut min_dot = 0i32;
    for s in 0..8 {
        let sub = dot32(&x_values[s * 32..][..32], |i| q(s * 32 + i));
        dot += i32::from(scales[s]) * sub;
        min_dot += i32::from(mins[s]) * x.sums32[b * 8 + s];
    }
    let dx = x.scales[b];
    dot as f32 * (half(w) * dx) - min_dot as f32 * (half(&w[2..]) * dx)
}

fn q4_k(w: &[u8], x: &Q8KRow, b: usize) -> f32 {
    let qs = &w[16..144];
    k_block(w, x, b, |i| {
        let (s, l) = (i / 32, i % 32);
        i32::from((qs[(s / 2) * 32 + l] >> (4 * (s % 2))) & 0x0F)
    })
}

fn q5_k(w: &[u8], x: &Q8KRow, b: usize) -> f32 {
    let (qh, qs) = (&w[16..48], &w[48..176]);
    k_block(w, x, b, |i| {
        let (s, l) = (i / 32, i % 32);
        let low = (qs[(s / 2) * 32 + l] >> (4 * (s % 2))) & 0x0F;
        i32::from(low | ((qh[l] >> s) & 1) << 4)
    })
}

fn q6_k(w: &[u8], x: &Q8KRow, b: usize) -> f32 {
    let (ql, qh, scales) = (&w[..128], &w[128..192], &w[192..208]);
    let x_values = &x.values[b * QK_K..][..QK_K];
    let mut dot = 0i32;
    for (s, x16) in x_values.chunks_exact(16).enumerate() {
        let sub: i32 = x16
            .iter()
            .enumerate()
            .map(|(l, &x)| {
                let i = s * 16 + l;
                let (half_index, r) = (i / 128, i % 128);
                let low = (ql[half_index * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
                let high = (qh[half_index * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
                i32::from(low | high << 4) * i32::from(x)
            })
            .sum();
        // The offset 32 of every value, taken out through the sub-block's sum.
        dot += i32::from(scales[s] as i8) * (sub - 32 * x.sums16[b * 16 + s]);
    }
    dot as f32 * (half(&w[208..]) * x.scales[b])
}
