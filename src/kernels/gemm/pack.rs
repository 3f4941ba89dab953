//! Packing: weights into panels at load time, rows of activations into micro-panels (and
//! into 16-bit pairs, bf16 pairs or u8 quads) before each product.

use super::block::micro_panels;
use super::tile::MR;
use super::weights::{PackedWeights, Panels, WeightFormat};
use super::{Isa, NR};
use crate::runtime::buffer::{Plain, StreamBuffer};
use rayon::prelude::*;

/// f32 → bf16 bits, rounded to nearest even (as `torch.Tensor.to(torch.bfloat16)`).
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// Two bf16 values as one 32-bit group of the `Bf16Pairs` layout: `low` (the even input) in
/// the low half, `high` in the high half.
fn bf16_pair(low: u16, high: u16) -> i32 {
    (u32::from(low) | u32::from(high) << 16) as i32
}

pub(crate) fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Where column j (0..16) sits in a bf16 panel row: columns 0–3, 8–11, 4–7, 12–15, so that
/// unpacking the low and high 64 bits of each 128-bit half gives columns 0–7 and 8–15.
/// (Swapping bits 2 and 3 of j; its own inverse.)
pub(super) fn bf16_lane(j: usize) -> usize {
    (j & 0b0011) | ((j & 0b0100) << 1) | ((j & 0b1000) >> 1)
}

/// Bytes per input pair in an int8 panel: two inputs for each of the NR columns.
pub(super) const INT8_PANEL_ROW: usize = 2 * NR;

/// The (column, which input of the pair) that byte `lane` of an int8 panel row holds: the
/// first 16 bytes are columns 0–7, the next 16 columns 8–15, each as (even, odd) input.
fn int8_lane_column(lane: usize) -> (usize, usize) {
    (8 * (lane / 16) + (lane % 16) / 2, lane % 2)
}

/// The byte of an int8 panel row that holds `column`'s even (`odd` = 0) or odd input.
pub(super) fn int8_lane(column: usize, odd: usize) -> usize {
    16 * (column / 8) + 2 * (column % 8) + odd
}

/// Values per 32-bit lane of a grouped panel row: a panel row holds, for each of its NR
/// columns, `group` consecutive inputs side by side (64 bytes for bf16 pairs and int8 quads:
/// one AVX-512 register).
/// Panel p, group q, column j, element e ↦ W[p·NR + j, q·group + e]; zero past the edges.
fn grouped_panels<T: Plain + Default>(
    inner: usize,
    outer: usize,
    group: usize,
    weight: impl Fn(usize, usize) -> T + Sync,
) -> StreamBuffer<T> {
    let groups = inner.div_ceil(group);
    let panel_len = groups * NR * group;
    StreamBuffer::from_fn(outer.div_ceil(NR) * panel_len, |index| {
        let (panel, rest) = (index / panel_len, index % panel_len);
        let (q, rest) = (rest / (NR * group), rest % (NR * group));
        let (column, e) = (rest / group, rest % group);
        let (o, i) = (panel * NR + column, q * group + e);
        match o < outer && i < inner {
            true => weight(o, i),
            false => T::default(),
        }
    })
}

/// The index of W[o, i] in a grouped layout of `inner` inputs (see `grouped_panels`).
pub(super) fn grouped_index(inner: usize, group: usize, o: usize, i: usize) -> usize {
    let groups = inner.div_ceil(group);
    (((o / NR) * groups + i / group) * NR + o % NR) * group + i % group
}

impl PackedWeights {
    /// Pack `weight(o, i)` for `o < outer`, `i < inner` (a row-major (out, in) matrix is
    /// `|o, i| w[o * inner + i]`; a transposed (in, out) one, GPT-2's Conv1D, swaps them), in
    /// the layout of the kernels that run now ([`Isa::current`]).
    pub fn pack(
        inner: usize,
        outer: usize,
        format: WeightFormat,
        weight: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        Self::pack_for(Isa::current(), inner, outer, format, weight)
    }

    /// [`PackedWeights::pack`] in the layout that `isa`'s kernels read: on AVX-512, bf16 and
    /// int8 weights are stored in groups of inputs per column (pairs for `vdpbf16ps`, quads
    /// for `vpdpbusd`); elsewhere one input per panel row. Any kernel can still run any
    /// layout (portable code where its own cannot), so a product never fails on a layout.
    pub fn pack_for(
        isa: Isa,
        inner: usize,
        outer: usize,
        format: WeightFormat,
        weight: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        let grouped = isa.has_avx512();
        let panels = outer.div_ceil(NR);
        // Panel p, input i, lane j ↦ W[p·NR + j, i]; lanes past `outer` are zero.
        let packed_index = |index: usize| {
            let (panel, rest) = (index / (inner * NR), index % (inner * NR));
            let (i, lane) = (rest / NR, rest % NR);
            (panel * NR + lane, i)
        };
        let len = panels * inner * NR;
        let panels =
            match format {
                WeightFormat::F32 => Panels::F32(StreamBuffer::from_fn(len, |index| {
                    match packed_index(index) {
                        (o, i) if o < outer => weight(o, i),
                        _ => 0.0,
                    }
                })),
                WeightFormat::Bf16 if grouped => {
                    Panels::Bf16Pairs(grouped_panels(inner, outer, 2, |o, i| {
                        bf16_bits(weight(o, i))
                    }))
                }
                WeightFormat::Bf16 => Panels::Bf16(StreamBuffer::from_fn(len, |index| {
                    // Position `index` holds the column that `bf16_lane` puts there.
                    let lane = bf16_lane(index % NR);
                    match packed_index(index - index % NR + lane) {
                        (o, i) if o < outer => bf16_bits(weight(o, i)),
                        _ => 0,
                    }
                })),
                WeightFormat::Int8 => {
                    let scales: Vec<f32> = (0..outer)
                        .into_par_iter()
                        .map(|o| (0..inner).fold(0f32, |m, i| m.max(weight(o, i).abs())) / 127.0)
                        .collect();
                    let quantized = |o: usize, i: usize| match scales[o] > 0.0 {
                        true => (weight(o, i) / scales[o]).round().clamp(-127.0, 127.0) as i8,
                        false => 0,
                    };
                    if grouped {
                        // Whole panels of sums (zero past `outer`): kernels read NR at a time.
                        let column_sums = (0..outer.div_ceil(NR) * NR)
                            .into_par_iter()
                            .map(|o| match o < outer {
                                true => (0..inner).map(|i| i32::from(quantized(o, i))).sum(),
                                false => 0,
                            })
                            .collect();
                        let values = grouped_panels(inner, outer, 4, quantized);
                        return Self {
                            inner,
                            outer,
                            panels: Panels::Int8Quads {
                                values,
                                scales,
                                column_sums,
                            },
                        };
                    }
                    // Panel p, input pair q, lane l ↦ W[p·NR + column, 2q + l % 2]: pairs of
                    // inputs side by side, as `vpmaddwd` multiplies them.
                    let pairs = inner.div_ceil(2);
                    let len = outer.div_ceil(NR) * pairs * INT8_PANEL_ROW;
                    let values = StreamBuffer::from_fn(len, |index| {
                        let (panel, rest) = (
                            index / (pairs * INT8_PANEL_ROW),
                            index % (pairs * INT8_PANEL_ROW),
                        );
                        let (pair, lane) = (rest / INT8_PANEL_ROW, rest % INT8_PANEL_ROW);
                        let (column, odd) = int8_lane_column(lane);
                        let (o, i) = (panel * NR + column, 2 * pair + odd);
                        match o < outer && i < inner {
                            true => quantized(o, i),
                            false => 0,
                        }
                    });
                    Panels::Int8 { values, scales }
                }
            };
        Self {
            inner,
            outer,
            panels,
        }
    }
}

/// The rows of `x` as 16-bit integers, `x ≈ value · scale` with one scale per row, stored
/// as pairs of inputs (even input in the low half, odd in the high half), as the int8
/// kernel multiplies them. An odd row length gets a zero to fill its last pair.
pub(super) struct QuantizedRows {
    pub(super) pairs: Vec<i32>,
    pub(super) pairs_per_row: usize,
    pub(super) scales: Vec<f32>,
}

impl QuantizedRows {
    pub(super) fn new(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        let pairs_per_row = k.div_ceil(2);
        let mut pairs = vec![0i32; m * pairs_per_row];
        let mut scales = vec![0f32; m];
        let rows = x
            .chunks(k.max(1))
            .zip(pairs.chunks_mut(pairs_per_row.max(1)));
        for ((row, out), scale) in rows.zip(&mut scales) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max > 0.0 && max.is_finite() {
                *scale = max / 32767.0;
                let inverse = 32767.0 / max;
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA.
                    Isa::Avx2 | Isa::Avx512 => unsafe {
                        super::avx2::quantize_pairs(row, inverse, out)
                    },
                    _ => quantize_pairs(row, inverse, out),
                }
            }
        }
        Self {
            pairs,
            pairs_per_row,
            scales,
        }
    }
}

/// `values · inverse` rounded half away from zero to 16 bits (|value · inverse| <= 32767),
/// two to an i32: even input in the low half, odd in the high half (zero past the end).
#[inline(always)]
pub(super) fn quantize_pairs(values: &[f32], inverse: f32, pairs: &mut [i32]) {
    let quantize = |v: f32| {
        let scaled = v * inverse;
        (scaled + 0.5f32.copysign(scaled)) as i32 as u16 as u32
    };
    let (whole, tail) = values.as_chunks::<2>();
    for (pair, &[even, odd]) in pairs.iter_mut().zip(whole) {
        *pair = (quantize(even) | quantize(odd) << 16) as i32;
    }
    if let ([last], Some(pair)) = (tail, pairs.get_mut(whole.len())) {
        *pair = quantize(*last) as i32;
    }
}

/// `row` rounded to bf16 (to nearest even), two to an i32: even input in the low half, odd in
/// the high half, the last pair's high half zero when `row` is odd. `out` holds
/// `row.len().div_ceil(2)` pairs.
pub(crate) fn bf16_pairs_row(isa: Isa, row: &[f32], out: &mut [i32]) {
    assert!(out.len() >= row.len().div_ceil(2));
    let done = match isa.has_avx512() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the AVX-512 features; `out` holds row.len() / 2 pairs.
        true => unsafe { super::avx512::bf16_pairs(row, out) },
        _ => 0,
    };
    let (row, out) = (&row[done..], &mut out[done / 2..]);
    let (whole, tail) = row.as_chunks::<2>();
    for (pair, &[even, odd]) in out.iter_mut().zip(whole) {
        *pair = bf16_pair(bf16_bits(even), bf16_bits(odd));
    }
    if let ([last], Some(pair)) = (tail, out.get_mut(whole.len())) {
        *pair = bf16_pair(bf16_bits(*last), 0);
    }
}

/// `values`, columns `first_column ..` of rows `row_len` long, rounded to bf16 bits exactly
/// as [`bf16_pairs_row`] rounds those columns of a row: by the AVX-512 conversion up to the
/// row's last whole 32 columns (which flushes denormals to zero), by [`bf16_bits`] after.
/// `first_column` is a multiple of 16.
pub(super) fn bf16_round_columns(
    isa: Isa,
    values: &[f32],
    first_column: usize,
    row_len: usize,
    out: &mut [std::mem::MaybeUninit<u16>],
) {
    assert!(out.len() >= values.len() && first_column.is_multiple_of(16));
    let vector_end = match isa.has_avx512() {
        true => (row_len / 32 * 32)
            .saturating_sub(first_column)
            .min(values.len()),
        false => 0,
    };
    #[cfg(target_arch = "x86_64")]
    if vector_end > 0 {
        // SAFETY: the CPU has the AVX-512 features; `out` holds `values.len()` values.
        unsafe { super::avx512::bf16_values(&values[..vector_end], out) };
    }
    for (out, &v) in out[vector_end..].iter_mut().zip(&values[vector_end..]) {
        out.write(bf16_bits(v));
    }
}

/// `out[c]` = the bf16 pair (`even[c]`, `odd[c]`): two rows interleaved column by column, as
/// the `Bf16Pairs` layout holds a column's two consecutive inputs.
pub(crate) fn bf16_column_pairs(isa: Isa, even: &[f32], odd: &[f32], out: &mut [i32]) {
    assert!(even.len() == odd.len() && out.len() >= even.len());
    let done = match isa.has_avx512() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the AVX-512 features; the slices are as long as asserted.
        true => unsafe { super::avx512::bf16_column_pairs(even, odd, out) },
        _ => 0,
    };
    for ((pair, &e), &o) in out[done..].iter_mut().zip(&even[done..]).zip(&odd[done..]) {
        *pair = bf16_pair(bf16_bits(e), bf16_bits(o));
    }
}

/// The rows of `x` as the grouped kernels take them: consecutive inputs packed into 32 bits,
/// either two bf16 (`vdpbf16ps`) or four u8 with a scale and a zero point per row
/// (`vpdpbusd`). A row's last group is filled with zeros.
pub(super) struct GroupedRows<'a> {
    pub(super) values: GroupedValues<'a>,
    pub(super) per_row: usize,
    /// int8: `x ≈ (q − zero point) · scale`, per row; empty for bf16.
    pub(super) scales: Vec<f32>,
    pub(super) zero_points: Vec<i32>,
}

thread_local! {
    /// The calling thread's buffer for `GroupedRows::values`, taken by each product and given
    /// back when it ends. A fresh zeroed vector per product cost a memset and, for the large
    /// ones, page faults: 2% of a bf16 BERT-base 32×128 forward pass on the 2-core Zen 5.
    static GROUPED_VALUES: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The thread's buffer for grouped rows (empty when a product on this thread holds it),
/// `len` values long. Every value is written before it is read: the conversions write every
/// group of every row.
fn grouped_values(len: usize) -> Vec<i32> {
    let mut values = GROUPED_VALUES.with(|buffer| std::mem::take(&mut *buffer.borrow_mut()));
    values.resize(len, 0);
    values
}

/// Grouped rows made for a product (in the thread's buffer), or a bf16 input read as pairs.
pub(super) enum GroupedValues<'a> {
    Owned(Vec<i32>),
    Borrowed(&'a [i32]),
}

impl std::ops::Deref for GroupedValues<'_> {
    type Target = [i32];

    fn deref(&self) -> &[i32] {
        match self {
            GroupedValues::Owned(values) => values,
            GroupedValues::Borrowed(values) => values,
        }
    }
}

impl Drop for GroupedRows<'_> {
    fn drop(&mut self) {
        let GroupedValues::Owned(values) =
            std::mem::replace(&mut self.values, GroupedValues::Borrowed(&[]))
        else {
            return;
        };
        GROUPED_VALUES.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            if values.capacity() > buffer.capacity() {
                *buffer = values;
            }
        });
    }
}

impl GroupedRows<'_> {
    /// Rows of bf16 bits as pairs: the bits themselves when k is even and they lie on 4-byte
    /// boundaries (a bf16 tensor's rows do), else copied pair by pair.
    pub(super) fn bf16_bits(bits: &[u16], m: usize, k: usize) -> GroupedRows<'_> {
        let per_row = k.div_ceil(2);
        let bits = &bits[..m * k];
        // SAFETY: any two u16 make a valid i32; `align_to` gives the aligned middle part.
        let (head, pairs, _) = unsafe { bits.align_to::<i32>() };
        let values = match head.is_empty() && k.is_multiple_of(2) {
            true => GroupedValues::Borrowed(&pairs[..m * per_row]),
            false => {
                let mut values = grouped_values(m * per_row);
                for (out, row) in values.chunks_mut(per_row.max(1)).zip(bits.chunks(k.max(1))) {
                    for (pair, halves) in out.iter_mut().zip(row.chunks(2)) {
                        let odd = halves.get(1).copied().unwrap_or(0);
                        *pair = bf16_pair(halves[0], odd);
                    }
                }
                GroupedValues::Owned(values)
            }
        };
        GroupedRows {
            values,
            per_row,
            scales: Vec::new(),
            zero_points: Vec::new(),
        }
    }

    /// Each value rounded to bf16 (to nearest even, as PyTorch rounds a bf16 activation).
    pub(super) fn bf16_pairs(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        let per_row = k.div_ceil(2);
        let mut values = grouped_values(m * per_row);
        values
            .par_chunks_mut(per_row.max(1))
            .zip(x.par_chunks(k.max(1)))
            .for_each(|(out, row)| bf16_pairs_row(isa, row, out));
        Self {
            values: GroupedValues::Owned(values),
            per_row,
            scales: Vec::new(),
            zero_points: Vec::new(),
        }
    }

    /// Each row quantized to u8 over its own range, which is widened to hold 0 so that zero
    /// is exact: `scale = (max − min) / 255`, `q = round(x / scale) + zero point`, ties to
    /// even, clamped to 0..=255. Eight bits over the row's actual range, not ±max: a GELU
    /// output (≥ −0.17) keeps nearly all 256 steps. A row that is all zeros, or holds an
    /// infinity or NaN, gets scale 0 (its products are 0, as in the 16-bit int8 path).
    pub(super) fn u8_quads(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
        let per_row = k.div_ceil(4);
        let mut values = grouped_values(m * per_row);
        let mut scales = vec![0f32; m];
        let mut zero_points = vec![0i32; m];
        values
            .par_chunks_mut(per_row.max(1))
            .zip(x.par_chunks(k.max(1)))
            .zip(scales.par_iter_mut().zip(zero_points.par_iter_mut()))
            .for_each(|((out, row), (scale, zero_point))| {
                let (low, high, finite) = match isa.has_avx512() {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has the AVX-512 features.
                    true => unsafe { super::avx512::range(row) },
                    _ => row.iter().fold((0f32, 0f32, true), |(lo, hi, f), &v| {
                        (lo.min(v), hi.max(v), f && v.is_finite())
                    }),
                };
                let step = (high - low) / 255.0;
                if !(finite && step > 0.0 && step.is_finite()) {
                    out.fill(0);
                    return;
                }
                let inverse = 1.0 / step;
                let zero = (-low * inverse).round_ties_even().clamp(0.0, 255.0);
                (*scale, *zero_point) = (step, zero as i32);
                let done = match isa.has_avx512() {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above; `out` holds k/4 quads.
                    true => unsafe { super::avx512::quantize_quads(row, inverse, zero, out) },
                    _ => 0,
                };
                quantize_quads(&row[done..], inverse, zero, &mut out[done / 4..]);
            });
        Self {
            values: GroupedValues::Owned(values),
            per_row,
            scales,
            zero_points,
        }
    }
}

/// `round(v · inverse + zero)` (ties to even) clamped to 0..=255, NaN to 0, four to an i32,
/// first input in the low byte (zeros past the end): as `_mm512_cvtps_epi32` and a clamp
/// would give them, so a vector form can give the same bits.
pub(super) fn quantize_quads(values: &[f32], inverse: f32, zero: f32, quads: &mut [i32]) {
    let quantize = |v: f32| {
        let q = (v * inverse + zero).round_ties_even();
        match q >= 0.0 {
            true => q.min(255.0) as u32,
            false => 0,
        }
    };
    let (whole, tail) = values.as_chunks::<4>();
    for (quad, values) in quads.iter_mut().zip(whole) {
        let [a, b, c, d] = values.map(quantize);
        *quad = (a | b << 8 | c << 16 | d << 24) as i32;
    }
    if let Some(quad) = quads.get_mut(whole.len()) {
        *quad = tail
            .iter()
            .enumerate()
            .fold(0u32, |acc, (e, &v)| acc | quantize(v) << (8 * e)) as i32;
    }
}

/// Copy columns `k0 .. k0 + kc` of `rows` of `x` (row length `k`) into micro-panels of up to
/// MR rows each: for each column, the panel's rows side by side.
pub(super) fn pack_rows(
    x: &[f32],
    k: usize,
    rows: std::ops::Range<usize>,
    k0: usize,
    kc: usize,
    a_pack: &mut [f32],
    isa: Isa,
) {
    let mut offset = 0;
    for (r0, mr) in micro_panels(rows) {
        let panel = &mut a_pack[offset..offset + kc * mr];
        if mr == MR {
            let sources: [&[f32]; MR] =
                std::array::from_fn(|i| &x[(r0 + i) * k + k0..(r0 + i) * k + k0 + kc]);
            let done = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the AVX2 kernels are only chosen when the CPU has AVX2.
                Isa::Avx2 | Isa::Avx512 => unsafe { super::avx2::pack_six_rows(&sources, panel) },
                Isa::Portable => 0,
            };
            for (p, column) in panel.chunks_exact_mut(MR).enumerate().skip(done) {
                for (slot, source) in column.iter_mut().zip(&sources) {
                    *slot = source[p];
                }
            }
        } else {
            for i in 0..mr {
                let row = &x[(r0 + i) * k + k0..][..kc];
                for (slot, &v) in panel[i..].iter_mut().step_by(mr).zip(row) {
                    *slot = v;
                }
            }
        }
        offset += kc * mr;
    }
}

/// Copy groups `p0 .. p0 + pc` of `rows` (each row `per_row` groups of inputs, 32 bits
/// each: 16-bit pairs, bf16 pairs or u8 quads) into micro-panels of up to MR rows: for each
/// group, the rows side by side.
pub(super) fn pack_groups(
    values: &[i32],
    per_row: usize,
    rows: std::ops::Range<usize>,
    p0: usize,
    pc: usize,
    a_pack: &mut [i32],
) {
    let mut offset = 0;
    for (r0, mr) in micro_panels(rows) {
        let panel = &mut a_pack[offset..offset + pc * mr];
        for i in 0..mr {
            let start = (r0 + i) * per_row + p0;
            let row = &values[start..start + pc];
            for (slot, &pair) in panel[i..].iter_mut().step_by(mr).zip(row) {
                *slot = pair;
            }
        }
        offset += pc * mr;
    }
}
