//! Rows of activations quantized to int8 per block, as llama.cpp's CPU product quantizes
//! them before its integer dot products: blocks of 32 with an f16 scale (`block_q8_0`,
//! rounded as the llama.cpp built for the same CPU rounds them, see `q8_row`) beside Q8_0,
//! Q4_0, Q4_1 and Q5_0 weights, and blocks of
//! 256 with an f32 scale and sums of 16 (`block_q8_K`, rounded as `quantize_row_q8_K_ref`)
//! beside the K-quants:
//! <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/ggml/src/ggml-quants.c#L276-L299>
//! and
//! <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/ggml/src/ggml-quants.c#L2768-L2805>.
//!
//! The layout is ours, not ggml's: a row's int8 values are contiguous, and its scales and
//! block sums are arrays beside them, so that a kernel loads 32 values with one aligned-free
//! load and no block header in the way. The sums (of the integer values) let a kernel take
//! out the offsets of the weights' unsigned values (Q4_0's 8, Q5_0's 16, Q6_K's 32) and add
//! the minimums of Q4_1 and the K-quants once per block instead of once per value.

use super::{Isa, QK, QK_K};
use rayon::prelude::*;

/// One row's blocks of 32: `values` (k), and per block its scale (f16-rounded, as f32) and the
/// sum of its values.
#[derive(Clone, Copy, Default)]
pub(super) struct Q8Row<'a> {
    pub(super) values: &'a [i8],
    pub(super) scales: &'a [f32],
    pub(super) sums: &'a [i32],
}

/// One row's blocks of 256: `values` (k), per block its f32 scale, and the sums of its values
/// over each 16 (`sums16`, Q6_K's sub-blocks) and each 32 (`sums32`, Q4_K's and Q5_K's).
#[derive(Clone, Copy, Default)]
pub(super) struct Q8KRow<'a> {
    pub(super) values: &'a [i8],
    pub(super) scales: &'a [f32],
    pub(super) sums16: &'a [i32],
    pub(super) sums32: &'a [i32],
}

/// One row of activations in the forms the weights' types need (a form not needed is empty).
#[derive(Clone, Copy, Default)]
pub(super) struct ActRow<'a> {
    pub(super) q8: Q8Row<'a>,
    pub(super) q8k: Q8KRow<'a>,
}

/// m rows quantized in blocks of 32.
#[derive(Default)]
pub(super) struct Q8Rows {
    k: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

/// m rows quantized in blocks of 256.
#[derive(Default)]
pub(super) struct Q8KRows {
    k: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    sums16: Vec<i32>,
    sums32: Vec<i32>,
}

/// Rows at least this many are quantized in parallel.
const PARALLEL_ROWS: usize = 8;

impl Q8Rows {
    /// The first m rows of `x` (m × k, k a multiple of 32).
    pub(super) fn quantize(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        let blocks = k / QK;
        let mut rows = Self {
            k,
            values: vec![0; m * k],
            scales: vec![0.0; m * blocks],
            sums: vec![0; m * blocks],
        };
        let parts = x[..m * k]
            .chunks(k)
            .zip(rows.values.chunks_mut(k))
            .zip(rows.scales.chunks_mut(blocks))
            .zip(rows.sums.chunks_mut(blocks));
        // llama.cpp's x86 rounding on our x86 paths, its reference on portable code.
        let x86 = isa != Isa::Portable;
        let quantize = |(((x, values), scales), sums)| q8_row(isa, x86, x, values, scales, sums);
        if m >= PARALLEL_ROWS {
            parts.par_bridge().for_each(quantize);
        } else {
            parts.for_each(quantize);
        }
        rows
    }

    pub(super) fn row(&self, r: usize) -> Q8Row<'_> {
        let blocks = self.k / QK;
        Q8Row {
            values: &self.values[r * self.k..(r + 1) * self.k],
            scales: &self.scales[r * blocks..(r + 1) * blocks],
            sums: &self.sums[r * blocks..(r + 1) * blocks],
        }
    }
}

impl Q8KRows {
    /// The first m rows of `x` (m × k, k a multiple of 256).
    pub(super) fn quantize(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        let blocks = k / QK_K;
        let mut rows = Self {
            k,
            values: vec![0; m * k],
            scales: vec![0.0; m * blocks],
            sums16: vec![0; m * k / 16],
            sums32: vec![0; m * k / 32],
        };
        let parts = x[..m * k]
            .chunks(k)
            .zip(rows.values.chunks_mut(k))
            .zip(rows.scales.chunks_mut(blocks))
            .zip(rows.sums16.chunks_mut(k / 16))
            .zip(rows.sums32.chunks_mut(k / 32));
        let quantize = |((((x, values), scales), sums16), sums32)| {
            q8k_row(isa, x, values, scales, sums16, sums32)
        };
        if m >= PARALLEL_ROWS {
            parts.par_bridge().for_each(quantize);
        } else {
            parts.for_each(quantize);
        }
        rows
    }

    pub(super) fn row(&self, r: usize) -> Q8KRow<'_> {
        let blocks = self.k / QK_K;
        Q8KRow {
            values: &self.values[r * self.k..(r + 1) * self.k],
            scales: &self.scales[r * blocks..(r + 1) * blocks],
            sums16: &self.sums16[r * self.k / 16..(r + 1) * self.k / 16],
            sums32: &self.sums32[r * self.k / 32..(r + 1) * self.k / 32],
        }
    }
}

dispatch! {
    /// One row in blocks of 32: `d = max|x| / 127` (stored rounded to f16, as `block_q8_0`
    /// holds it), values `x` times an inverse scale, rounded, as the llama.cpp built for the
    /// same CPU computes them: its x86 build (AVX and up) multiplies by `127 / max|x|` and
    /// rounds halves to even (`quantize_row_q8_0` in `ggml-cpu/arch/x86/quants.c`); its
    /// reference multiplies by `1 / d` and rounds halves away from zero (C's `roundf`,
    /// `quantize_row_q8_0_ref`). The two differ in the last bit of a few values, which can
    /// turn a greedy token.
    fn q8_row(
        isa: Isa,
        x86: bool,
        x: &[f32],
        values: &mut [i8],
        scales: &mut [f32],
        sums: &mut [i32],
    ) {
        let blocks = x
            .chunks_exact(QK)
            .zip(values.chunks_exact_mut(QK))
            .zip(scales.iter_mut().zip(sums.iter_mut()));
        for ((x, values), (scale, sum)) in blocks {
            // C's MAX(amax, fabsf(v)), in its order.
            let amax = x.iter().fold(0f32, |amax, &v| if amax > v.abs() { amax } else { v.abs() });
            let d = amax / 127.0;
            let inverse = match (x86, amax != 0.0) {
                (_, false) => 0.0,
                (true, true) => 127.0 / amax,
                (false, true) => 1.0 / d,
            };
            *scale = half::f16::from_f32(d).to_f32();
            let mut total = 0i32;
            for (q, &v) in values.iter_mut().zip(x) {
                let product = v * inverse;
                let rounded = if x86 { product.round_ties_even() } else { product.round() } as i32;
                *q = rounded as i8;
                total += rounded;
            }
            *sum = total;
        }
    }
}

dispatch! {
    /// One row in blocks of 256: the value of largest magnitude (the first, if several)
    /// sets `iscale = -127 / max`, values are `min(127, nearest(iscale · x))` with ties to
    /// even (ggml's `nearest_int`), and the scale kept is `1 / iscale`.
    fn q8k_row(
        isa: Isa,
        x: &[f32],
        values: &mut [i8],
        scales: &mut [f32],
        sums16: &mut [i32],
        sums32: &mut [i32],
    ) {
        let blocks = x
            .chunks_exact(QK_K)
            .zip(values.chunks_exact_mut(QK_K))
            .zip(scales.iter_mut())
            .zip(sums16.chunks_exact_mut(QK_K / 16).zip(sums32.chunks_exact_mut(QK_K / 32)));
        for (((x, values), scale), (sums16, sums32)) in blocks {
            let amax = x.iter().fold(0f32, |amax, &v| amax.max(v.abs()));
            if amax == 0.0 {
                *scale = 0.0;
                values.fill(0);
                sums16.fill(0);
                sums32.fill(0);
                continue;
            }
            // The reference keeps the first value whose magnitude beats all before it: the
            // first of largest magnitude.
            let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
            let iscale = -127.0 / max;
            for (q, &v) in values.iter_mut().zip(x) {
                // Adding 1.5 · 2^23 leaves the integer nearest to the product, ties to even, in
                // the low mantissa bits (|product| <= 127 here, far below 2^22).
                let bits = (iscale * v + 12_582_912.0).to_bits();
                let nearest = (bits & 0x007F_FFFF) as i32 - 0x0040_0000;
                *q = nearest.min(127) as i8;
            }
            for (sum, values) in sums16.iter_mut().zip(values.chunks_exact(16)) {
                *sum = values.iter().map(|&q| i32::from(q)).sum();
            }
            for (sum, pair) in sums32.iter_mut().zip(sums16.chunks_exact(2)) {
                *sum = pair[0] + pair[1];
            }
            *scale = 1.0 / iscale;
        }
    }
}
