//! GGUF tensor data to f32, block by block, with the same operations in the same order as the
//! `gguf` Python package's `dequantize` (llama.cpp's `gguf-py/gguf/quants.py`), so the values
//! are bit for bit its values: a product and a sum are two roundings there (NumPy), and two
//! here (Rust does not fuse them).

use half::{bf16, f16};

use super::GgmlType;
use crate::error::{Error, Result};

/// Values of a K-quant block.
const QK_K: usize = 256;

/// `data`, of `ggml_type`, as f32 into `out` (one value per element: `out.len()` values,
/// `data` their blocks' bytes exactly).
pub fn dequantize(ggml_type: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let (block, block_bytes) = ggml_type.block();
    if !out.len().is_multiple_of(block) || data.len() != out.len() / block * block_bytes {
        return Err(Error::InvalidWeights(format!(
            "{} bytes of {ggml_type:?} data cannot hold {} values",
            data.len(),
            out.len()
        )));
    }
    let blocks = data
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block));
    match ggml_type {
        GgmlType::F32 => {
            blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = half(b)),
        GgmlType::BF16 => {
            blocks.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| q4_1(b, o)),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| q5_0(b, o)),
        GgmlType::Q5_1 => blocks.for_each(|(b, o)| q5_1(b, o)),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| q8_0(b, o)),
        GgmlType::Q4_K => blocks.for_each(|(b, o)| q4_k(b, o)),
        GgmlType::Q5_K => blocks.for_each(|(b, o)| q5_k(b, o)),
        GgmlType::Q6_K => blocks.for_each(|(b, o)| q6_k(b, o)),
        GgmlType::Q8_1 | GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q8_K => {
            return Err(Error::InvalidWeights(format!(
                "{ggml_type:?} weights are not read yet (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, \
                 Q8_0, Q4_K, Q5_K and Q6_K are): convert the model to one of those"
            )))
        }
    }
    Ok(())
}

/// The little-endian f16 at the start of `bytes`, as f32.
fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// 32 4-bit values: the low nibbles of `qs` are the first 16, the high nibbles the next 16.
fn nibble(qs: &[u8], i: usize) -> u8 {
    (qs[i % 16] >> (4 * (i / 16))) & 0x0F
}

/// The fifth bit of value `i` of a Q5 block, from its 32-bit `qh`.
fn fifth_bit(qh: &[u8], i: usize) -> u8 {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    ((qh >> i) & 1) as u8
}

fn q4_0(block: &[u8], out: &mut [f32]) {
    let (d, qs) = (half(block), &block[2..]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = d * f32::from(nibble(qs, i) as i8 - 8);
    }
}

fn q4_1(block: &[u8], out: &mut [f32]) {
    let (d, m, qs) = (half(block), half(&block[2..]), &block[4..]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = d * f32::from(nibble(qs, i)) + m;
    }
}

fn q5_0(block: &[u8], out: &mut [f32]) {
    let (d, qh, qs) = (half(block), &block[2..6], &block[6..]);
    for (i, o) in out.iter_mut().enumerate() {
        let q = (nibble(qs, i) | fifth_bit(qh, i) << 4) as i8 - 16;
        *o = d * f32::from(q);
    }
}

fn q5_1(block: &[u8], out: &mut [f32]) {
    let (d, m, qh, qs) = (half(block), half(&block[2..]), &block[4..8], &block[8..]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = d * f32::from(nibble(qs, i) | fifth_bit(qh, i) << 4) + m;
    }
}

fn q8_0(block: &[u8], out: &mut [f32]) {
    let d = half(block);
    for (o, &q) in out.iter_mut().zip(&block[2..]) {
        *o = f32::from(q as i8) * d;
    }
}

/// The 6-bit scales and minimums of a Q4_K or Q5_K block's eight sub-blocks, packed in 12
/// bytes: the first four of each in the low six bits of bytes 0–3 (scales) and 4–7
/// (minimums), the last four in the nibbles of bytes 8–11 with their top two bits in the top
/// bits of bytes 0–7.
pub(crate) fn scales_and_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut scales, mut mins) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        scales[j] = packed[j] & 0x3F;
        mins[j] = packed[j + 4] & 0x3F;
        scales[j + 4] = (packed[j + 8] & 0x0F) | ((packed[j] >> 2) & 0x30);
        mins[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 2) & 0x30);
    }
    (scales, mins)
}

/// Value `i` (of 256) of a K-quant block's 4-bit part: sub-blocks of 32, two per 32 bytes
/// of `qs` (low nibbles, then high).
fn k_nibble(qs: &[u8], i: usize) -> u8 {
    let (sub, l) = (i / 32, i % 32);
    (qs[(sub / 2) * 32 + l] >> (4 * (sub % 2))) & 0x0F
}

fn q4_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half(block), half(&block[2..]));
    let (scales, mins) = scales_and_mins(&block[4..16]);
    let qs = &block[16..16 + QK_K / 2];
    for (i, o) in out.iter_mut().enumerate() {
        let sub = i / 32;
        let (scale, min) = (d * f32::from(scales[sub]), dmin * f32::from(mins[sub]));
        *o = scale * f32::from(k_nibble(qs, i)) - min;
    }
}

fn q5_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (half(block), half(&block[2..]));
    let (scales, mins) = scales_and_mins(&block[4..16]);
    let qh = &block[16..16 + QK_K / 8];
    let qs = &block[16 + QK_K / 8..];
    for (i, o) in out.iter_mut().enumerate() {
        let sub = i / 32;
        let (scale, min) = (d * f32::from(scales[sub]), dmin * f32::from(mins[sub]));
        let high = (qh[i % 32] >> sub) & 1;
        *o = scale * f32::from(k_nibble(qs, i) | high << 4) - min;
    }
}

fn q6_k(block: &[u8], out: &mut [f32]) {
    let ql = &block[..QK_K / 2];
    let qh = &block[QK_K / 2..QK_K / 2 + QK_K / 4];
    let scales = &block[QK_K / 2 + QK_K / 4..QK_K / 2 + QK_K / 4 + QK_K / 16];
    let d = half(&block[QK_K / 2 + QK_K / 4 + QK_K / 16..]);
    for (i, o) in out.iter_mut().enumerate() {
        // Two halves of 128 values; in each, the low four bits come from 64 bytes of `ql`
        // (low nibbles, then high) and the top two from 32 bytes of `qh` (four 2-bit fields).
        let (half_index, r) = (i / 128, i % 128);
        let low = (ql[half_index * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[half_index * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = (low | high << 4) as i8 - 32;
        let scale = d * f32::from(scales[i / 16] as i8);
        *o = scale * f32::from(q);
    }
}
