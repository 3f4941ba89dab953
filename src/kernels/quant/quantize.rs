//! f32 weights to GGUF blocks at load time (`--dtype q8`, `q4`), with the operations of the
//! `gguf` Python package's `quantize` (gguf-py 0.19.0, `gguf/quants.py`, which follows
//! ggml's reference quantizers), in its order and with its f32 roundings, so that the blocks
//! are bit for bit the ones `gguf.quants.quantize` writes. gguf-py quantizes no K-quant,
//! so neither does this.

use super::{GgmlType, QK};

/// The blocks of `row` (a multiple of 32 values) in `ty` (Q8_0, Q4_0 or Q4_1), appended to
/// `out`. `None` for another type.
pub(super) fn quantize_row(ty: GgmlType, row: &[f32], out: &mut Vec<u8>) -> Option<()> {
    let block: fn(&[f32], &mut Vec<u8>) = match ty {
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        _ => return None,
    };
    row.chunks_exact(QK).for_each(|values| block(values, out));
    Some(())
}

fn f16_bytes(value: f32) -> [u8; 2] {
    half::f16::from_f32(value).to_le_bytes()
}

/// `1 / d`, or 0 where d is 0 (`np.where(d == 0, 0, 1 / d)`).
fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// `d = max|x| / 127`, values `round(x / d)`, halves away from zero (`np_roundf`).
fn q8_0(values: &[f32], out: &mut Vec<u8>) {
    let amax = values.iter().fold(0f32, |amax, &v| amax.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    out.extend(values.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// Two nibbles per byte: values 0–15 low, 16–31 high.
fn pack_nibbles(q: impl Fn(usize) -> u8, out: &mut Vec<u8>) {
    out.extend((0..QK / 2).map(|i| q(i) | q(i + QK / 2) << 4));
}

/// `d = max / −8`, where max is the (first) value of largest magnitude, sign kept; values
/// `trunc(x / d + 8.5)` clipped to 0..=15.
fn q4_0(values: &[f32], out: &mut Vec<u8>) {
    let mut max = 0f32;
    for &v in values {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -8.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    pack_nibbles(|i| ((values[i] * id + 8.5).trunc() as u8).min(15), out);
}

/// `d = (max − min) / 15`, `m = min`, values `trunc((x − min) / d + 0.5)` clipped to 0..=15.
fn q4_1(values: &[f32], out: &mut Vec<u8>) {
    let max = values.iter().copied().fold(f32::MIN, f32::max);
    let min = values.iter().copied().fold(f32::MAX, f32::min);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    out.extend(f16_bytes(d));
    out.extend(f16_bytes(min));
    pack_nibbles(
        |i| (((values[i] - min) * id + 0.5).trunc() as u8).min(15),
        out,
    );
}
