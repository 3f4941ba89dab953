//! `y = x · Wᵀ + b` against weights packed once, at load time, for the CPU.
//!
//! `W` is (out, in), as `torch.nn.Linear` stores it. Packing cuts it into panels of [`NR`]
//! output columns; a panel holds, for every input index, the panel's [`NR`] weights side by
//! side, so the micro-kernel streams a panel front to back and every weight is read once per
//! block of rows (once per token when decoding: the GEMV case). Weights can stay f32, or be
//! stored as bf16 (half the bytes) or as int8 with one scale per output channel (a quarter).
//! With f32 and bf16 weights the activations and sums are f32. With int8 weights each row of
//! activations is rounded to 16-bit integers with a scale of its own (a relative error of at
//! most 1/65534 of the row's largest value), and the products are exact integer
//! multiply-adds (`vpmaddwd`), summed in i32 over at most 128 pairs of inputs and then in f32.
//!
//! The product runs in tasks of up to `MC` rows × a run of panels, spread over the cores;
//! inside a task the input is cut into blocks of up to `KC` columns (a panel block then
//! stays in L2 while every row of the task uses it) and the task's rows are copied into
//! micro-panels of `MR` rows, read in order by the micro-kernel. A single row (a decoded
//! token) is read in place, and on AVX2 reads up to `ROW_STREAMS` panels side by side.
//!
//! Packed weights live in `StreamBuffer`s: cache-line aligned, on 2 MiB pages where Linux
//! gives them.

use super::buffer::StreamBuffer;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output columns per panel: two AVX2 registers.
pub const NR: usize = 16;
/// Rows per micro-kernel call: 6 × 2 accumulators + 2 weight registers + 1 broadcast fit the
/// 16 AVX2 registers.
const MR: usize = 6;
/// Rows per task.
const MC: usize = 72;
/// Input columns per block. 768 (a 48 KiB f32 panel block, read from L2 by each micro-panel
/// of rows) makes the hidden size of base models one block, so each output tile is written
/// once instead of written and re-read per block. Against 384 (a panel block that fits the
/// 32 KiB L1), same-process paired runs on the 2-core Zen 3 VM: BERT-base 1×128 +2.4%, +7.1%,
/// +3.0%; BERT-base 32×128 +7.7%; MiniLM 32×128 +3.9%, +0.7% (256: −1.4%; 1024–1536 no better).
const KC: usize = 768;
/// Panels a one-row product (a decoded token) reads side by side: four streams from memory
/// per core instead of one. A core keeps more reads in flight across several streams: on the
/// 2-core Zen 3 VM, GPT-2 small's weight products for one token went from 66–79 to 69–92
/// tokens/s in f32 and from 126–143 to 132–154 in bf16 (2, 3 and 4 streams measured alike;
/// four keep eight FMA chains in flight).
const ROW_STREAMS: usize = 4;
/// How far ahead of its reads a one-row product of bf16 or int8 weights asks for them
/// (`prefetcht0`), in bytes. Measured on the 2-core Zen 3 VM, GPT-2 small's weight products
/// for one token (tokens/s, six interleaved runs each): bf16 111 → 130 and int8 ~220 → ~255
/// at 1024 bytes (512: about half the gain; 1536–2048: no better). Those kernels consume
/// weights faster per instruction than the hardware prefetchers fetch them for one core.
/// f32 weights stream at the same rate without it and lost ~20% with it, so they go without.
const PREFETCH_AHEAD: usize = 1024;

/// How far ahead of the weights at `offset` bytes into its panel (of `panel_bytes`) a
/// one-row kernel reading `streams` panels side by side prefetches: [`PREFETCH_AHEAD`], or,
/// near the panel's end, as far into the panel that the same stream reads next (`streams`
/// panels on), so that the next group of panels starts with its first lines on the way
/// instead of waiting for memory on four cold streams. A token of GPT-2 small starts ~2,000
/// such groups; same-process A/B on its weight products (300 interleaved steps): bf16 +4%,
/// int8 +9% (its panels are half as long, so a cold start weighs twice as much).
#[inline(always)]
fn prefetch_distance(offset: usize, panel_bytes: usize, streams: usize) -> usize {
    if offset + PREFETCH_AHEAD < panel_bytes {
        PREFETCH_AHEAD
    } else {
        PREFETCH_AHEAD + (streams - 1) * panel_bytes
    }
}

/// Cache lines of weights that a micro-kernel call asks L2 for (`prefetcht1`) while it
/// works, one every [`AHEAD_STEP`] input steps: its share of the panel block that its task
/// reads next (see `Block::run_float`). A model's weights come from memory once per forward
/// pass, and the first micro-panel of rows to read a panel block otherwise waits on memory
/// for it: the hardware prefetchers cannot fetch 48 KiB at the rate one core's FMAs consume
/// it. Same-process A/B on the 2-core Zen 3 VM: BERT-base 1×128 +3.8%, +4.2%, +2.2% and
/// +6.2% (T0, T1 and T2 hints alike); MiniLM 32×128 +1.5%. A product over weights that are
/// not in cache, 128×768 · 768×3072, one core: 87.0 → 93.3 GFLOP/s (median), as fast as
/// over weights already in L3 (90.1 without, 93.1 with).
#[derive(Clone, Copy)]
// Read by the AVX2 kernel only: the portable one does not prefetch.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Ahead {
    start: *const u8,
    lines: usize,
}

impl Ahead {
    const NONE: Ahead = Ahead {
        start: std::ptr::null(),
        lines: 0,
    };
}

/// Input steps of a micro-kernel per line asked for by [`Ahead`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AHEAD_STEP: usize = 8;

/// How the packed weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// bfloat16: the upper half of an f32, rounded to nearest even.
    Bf16,
    /// Symmetric int8 with one f32 scale per output channel: `w ≈ q · max|w_row| / 127`.
    Int8,
}

#[derive(Debug, Clone)]
enum Panels {
    F32(StreamBuffer<f32>),
    Bf16(StreamBuffer<u16>),
    Int8 {
        values: StreamBuffer<i8>,
        scales: Vec<f32>,
    },
}

/// A weight matrix packed for [`matmul`].
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Input features (`in`).
    inner: usize,
    /// Output features (`out`).
    outer: usize,
    panels: Panels,
}

/// f32 → bf16 bits, rounded to nearest even (as `torch.Tensor.to(torch.bfloat16)`).
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Where column j (0..16) sits in a bf16 panel row: columns 0–3, 8–11, 4–7, 12–15, so that
/// unpacking the low and high 64 bits of each 128-bit half gives columns 0–7 and 8–15.
/// (Swapping bits 2 and 3 of j; its own inverse.)
fn bf16_lane(j: usize) -> usize {
    (j & 0b0011) | ((j & 0b0100) << 1) | ((j & 0b1000) >> 1)
}

/// Bytes per input pair in an int8 panel: two inputs for each of the NR columns.
const INT8_PANEL_ROW: usize = 2 * NR;

/// The (column, which input of the pair) that byte `lane` of an int8 panel row holds: the
/// first 16 bytes are columns 0–7, the next 16 columns 8–15, each as (even, odd) input.
fn int8_lane_column(lane: usize) -> (usize, usize) {
    (8 * (lane / 16) + (lane % 16) / 2, lane % 2)
}

/// The byte of an int8 panel row that holds `column`'s even (`odd` = 0) or odd input.
fn int8_lane(column: usize, odd: usize) -> usize {
    16 * (column / 8) + 2 * (column % 8) + odd
}

impl PackedWeights {
    /// Pack `weight(o, i)` for `o < outer`, `i < inner` (a row-major (out, in) matrix is
    /// `|o, i| w[o * inner + i]`; a transposed (in, out) one, GPT-2's Conv1D, swaps them).
    pub fn pack(
        inner: usize,
        outer: usize,
        format: WeightFormat,
        weight: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
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
                        match o < outer && i < inner && scales[o] > 0.0 {
                            true => (weight(o, i) / scales[o]).round().clamp(-127.0, 127.0) as i8,
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

    pub fn inner(&self) -> usize {
        self.inner
    }

    pub fn outer(&self) -> usize {
        self.outer
    }

    pub fn format(&self) -> WeightFormat {
        match self.panels {
            Panels::F32(_) => WeightFormat::F32,
            Panels::Bf16(_) => WeightFormat::Bf16,
            Panels::Int8 { .. } => WeightFormat::Int8,
        }
    }

    /// Bytes of weights streamed per product (what one decoded token reads).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::Bf16(v) => v.len() * 2,
            Panels::Int8 { values, scales } => values.len() + scales.len() * 4,
        }
    }

    /// The weights as the product sees them, (out, in) row-major, for the tests.
    #[cfg(test)]
    fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.outer * self.inner];
        for (o, row) in out.chunks_mut(self.inner.max(1)).enumerate() {
            let (panel, lane) = (o / NR, o % NR);
            for (i, w) in row.iter_mut().enumerate() {
                let index = (panel * self.inner + i) * NR + lane;
                *w = match &self.panels {
                    Panels::F32(v) => v[index],
                    Panels::Bf16(v) => bf16_value(v[index - lane + bf16_lane(lane)]),
                    Panels::Int8 { values, scales } => {
                        let pairs = self.inner.div_ceil(2);
                        let row = (panel * pairs + i / 2) * INT8_PANEL_ROW;
                        values[row + int8_lane(lane, i % 2)] as f32 * scales[o]
                    }
                };
            }
        }
        out
    }
}

/// What happens to each output after bias: nothing, exact GELU, or GELU's tanh approximation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    GeluErf,
    GeluTanh,
}

pub use super::isa::Isa;

/// Output rows written by parallel tasks, each to its own block of rows × columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint blocks (see `matmul`), and the buffer outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `out (m × outer) = epilogue(x (m × inner) · Wᵀ + bias) + residual`, all row-major.
///
/// Panics if a slice is shorter than its shape says: callers check shapes first.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    x: &[f32],
    m: usize,
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    out: &mut [f32],
    isa: Isa,
) {
    // SAFETY: MaybeUninit<f32> has f32's layout, and `matmul_uninit` writes only f32 values.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) };
    matmul_uninit(x, m, weights, bias, epilogue, residual, out, isa)
}

/// [`matmul`] into memory that need not be initialised: every one of the first m × outer
/// values is written, so a fresh output buffer need not be zeroed first (zeroing it cost a
/// single-threaded pass over every layer's output).
#[allow(clippy::too_many_arguments)]
pub fn matmul_uninit(
    x: &[f32],
    m: usize,
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
    isa: Isa,
) {
    let (k, n) = (weights.inner, weights.outer);
    assert!(x.len() >= m * k && out.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n) && residual.is_none_or(|r| r.len() >= m * n));
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    // Blocks of rows as even as whole micro-panels allow (128 rows: 66 + 62, not 72 + 56),
    // so that tasks take about the same time.
    let rows_per_block = m.div_ceil(m.div_ceil(MC)).next_multiple_of(MR).min(MC);
    let row_blocks = m.div_ceil(rows_per_block);
    // Enough tasks to balance the cores; whole rows of panels when the rows alone give that.
    let target = rayon::current_num_threads() * if m == 1 { 8 } else { 4 };
    let panels_per_task = if row_blocks >= target {
        panels
    } else if m == 1 {
        // Whole groups of streams for the one-row kernel (`Block::row_groups`).
        panels.div_ceil(target).next_multiple_of(ROW_STREAMS)
    } else {
        (panels * row_blocks).div_ceil(target).max(1)
    };
    let column_tasks = panels.div_ceil(panels_per_task);
    let shared = SharedOut(out.as_mut_ptr().cast::<f32>());
    let quantized = match weights.panels {
        Panels::Int8 { .. } => Some(QuantizedRows::new(x, m, k, isa)),
        _ => None,
    };
    let block_rows =
        |row_block: usize| row_block * rows_per_block..m.min((row_block + 1) * rows_per_block);
    let run = |packed_rows: Option<&[f32]>| {
        (0..row_blocks * column_tasks)
            .into_par_iter()
            .for_each(|task| {
                let (row_block, column_task) = (task / column_tasks, task % column_tasks);
                let first_panel = column_task * panels_per_task;
                let block = Block {
                    x,
                    packed_rows,
                    quantized: quantized.as_ref(),
                    k,
                    n,
                    rows: block_rows(row_block),
                    panels: first_panel..panels.min(first_panel + panels_per_task),
                    weights,
                    bias,
                    out: shared,
                };
                block.run(isa);
                block.finish(epilogue, residual);
            })
    };
    // Several column tasks on the same rows (few rows: a short batch) would each pack them:
    // pack every block of rows once, up front, and share it (float weights; int8 products
    // pack their own).
    let float = matches!(weights.panels, Panels::F32(_) | Panels::Bf16(_));
    if column_tasks > 1 && m > MR && float {
        SHARED_ROWS.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut buffer) => {
                let blocks = (0..row_blocks).map(block_rows);
                pack_row_blocks(x, m, k, blocks, &mut buffer, isa);
                run(Some(&buffer))
            }
            // A product nested in one running on this thread (a caller's own rayon work).
            Err(_) => run(None),
        })
    } else {
        run(None)
    }
}

/// Inputs per K block for a block of `rows` rows of `len` inputs: `max_block` at most, as
/// even as the blocks can be; one block for a single micro-panel of rows (see
/// `Block::run_float`). Float rows use `KC` columns, int8 rows `KC / 2` pairs.
fn k_step(rows: usize, len: usize, max_block: usize) -> usize {
    let blocks = if rows <= MR {
        1
    } else {
        len.div_ceil(max_block).max(1)
    };
    len.div_ceil(blocks).max(1)
}

/// Every block of rows packed for every K block: block `rows`, K block at `k0`, at offset
/// `rows.start · k + rows.len() · k0` (the blocks in order, each K block after the last).
fn pack_row_blocks(
    x: &[f32],
    m: usize,
    k: usize,
    blocks: impl Iterator<Item = std::ops::Range<usize>>,
    buffer: &mut Vec<f32>,
    isa: Isa,
) {
    if buffer.len() < m * k {
        buffer.resize(m * k, 0.0);
    }
    let mut rest = &mut buffer[..m * k];
    let mut regions = Vec::new();
    for rows in blocks {
        let step = k_step(rows.len(), k, KC);
        for k0 in (0..k).step_by(step) {
            let kc = step.min(k - k0);
            let (region, tail) = std::mem::take(&mut rest).split_at_mut(rows.len() * kc);
            regions.push((rows.clone(), k0, kc, region));
            rest = tail;
        }
    }
    regions
        .into_par_iter()
        .for_each(|(rows, k0, kc, region)| pack_rows(x, k, rows, k0, kc, region, isa));
}

thread_local! {
    /// Each worker's buffer for packed rows of `x`, kept between products: grown when a
    /// product needs more, never zeroed (every value read is written first).
    static A_PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's buffer for rows packed once and shared by a product's tasks.
    static SHARED_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for int8 products: pairs of 16-bit inputs.
    static A_PACK_PAIRS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The rows of `x` as 16-bit integers, `x ≈ value · scale` with one scale per row, stored
/// as pairs of inputs (even input in the low half, odd in the high half), as the int8
/// kernel multiplies them. An odd row length gets a zero to fill its last pair.
struct QuantizedRows {
    pairs: Vec<i32>,
    pairs_per_row: usize,
    scales: Vec<f32>,
}

impl QuantizedRows {
    fn new(x: &[f32], m: usize, k: usize, isa: Isa) -> Self {
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
                    Isa::Avx2 | Isa::Avx512 => unsafe { quantize_pairs_avx2(row, inverse, out) },
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
fn quantize_pairs(values: &[f32], inverse: f32, pairs: &mut [i32]) {
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

/// [`quantize_pairs`] on AVX2, 16 values at a time: it runs before every int8 product, on
/// one core while the others wait (scalar, 3072 inputs took ~3.5 µs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_pairs_avx2(values: &[f32], inverse: f32, pairs: &mut [i32]) {
    use std::arch::x86_64::*;
    let whole = values.len() / 16 * 16;
    assert!(pairs.len() * 2 >= values.len());
    let (scale, half, sign) = (
        _mm256_set1_ps(inverse),
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(-0.0),
    );
    let quantize = |v: __m256| {
        let scaled = _mm256_mul_ps(v, scale);
        // + 0.5 with the value's sign, then truncate: half away from zero.
        let rounded = _mm256_add_ps(scaled, _mm256_or_ps(half, _mm256_and_ps(scaled, sign)));
        // NaN to 0, as the scalar `as` conversion does (`cvttps` would give i32::MIN).
        let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(rounded, rounded);
        _mm256_cvttps_epi32(_mm256_and_ps(rounded, ordered))
    };
    for i in (0..whole).step_by(16) {
        let low = quantize(_mm256_loadu_ps(values.as_ptr().add(i)));
        let high = quantize(_mm256_loadu_ps(values.as_ptr().add(i + 8)));
        // To 16 bits per 128-bit half (low 0–3, high 0–3 | low 4–7, high 4–7), then the
        // 64-bit quarters in input order: 16 values, two per i32, even input low.
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(low, high));
        _mm256_storeu_si256(pairs.as_mut_ptr().add(i / 2).cast(), packed);
    }
    quantize_pairs(&values[whole..], inverse, &mut pairs[whole / 2..]);
}

/// One task: `rows` × the columns of `panels`.
struct Block<'a> {
    x: &'a [f32],
    /// `x` packed for every block of rows (`pack_row_blocks`), when the product did that.
    packed_rows: Option<&'a [f32]>,
    /// `x` as 16-bit integers, for int8 weights.
    quantized: Option<&'a QuantizedRows>,
    k: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    weights: &'a PackedWeights,
    bias: Option<&'a [f32]>,
    out: SharedOut,
}

impl Block<'_> {
    fn columns(&self) -> std::ops::Range<usize> {
        self.panels.start * NR..self.n.min(self.panels.end * NR)
    }

    fn run(&self, isa: Isa) {
        match (&self.weights.panels, self.quantized) {
            (Panels::F32(w), _) => {
                A_PACK.with(|a| self.run_float(FloatPanels::F32(w), &mut a.borrow_mut(), isa))
            }
            (Panels::Bf16(w), _) => {
                A_PACK.with(|a| self.run_float(FloatPanels::Bf16(w), &mut a.borrow_mut(), isa))
            }
            (Panels::Int8 { values, scales }, Some(rows)) => {
                A_PACK_PAIRS.with(|a| self.run_int8(values, scales, rows, &mut a.borrow_mut(), isa))
            }
            // `matmul` quantizes the rows whenever the weights are int8.
            (Panels::Int8 { .. }, None) => {}
        }
    }

    fn run_float(&self, weights: FloatPanels, a_pack: &mut Vec<f32>, isa: Isa) {
        let k = self.k;
        // A block of rows shares each panel block from L2; a single micro-panel of rows (a
        // decoded token) has nothing to share and streams each panel whole instead.
        let kc_step = k_step(self.rows.len(), k, KC);
        if self.packed_rows.is_none() && a_pack.len() < self.rows.len() * kc_step {
            a_pack.resize(self.rows.len() * kc_step, 0.0);
        }
        let mut tile = [[0f32; NR]; MR];
        for (block_index, k0) in (0..k).step_by(kc_step).enumerate() {
            let kc = kc_step.min(k - k0);
            // Micro-panels of up to MR rows: for each input column, the rows side by side
            // (packed by this task, or once for all of them). One row is its own micro-panel
            // and is read in place.
            let single_row = self.rows.len() == 1;
            let a_pack: &[f32] = match self.packed_rows {
                Some(all) => &all[self.rows.start * k + self.rows.len() * k0..],
                None => {
                    if !single_row {
                        pack_rows(self.x, k, self.rows.clone(), k0, kc, a_pack, isa);
                    }
                    a_pack
                }
            };
            let mut panels = self.panels.clone();
            #[cfg(target_arch = "x86_64")]
            if single_row && isa.has_avx2() {
                let a = &self.x[self.rows.start * k..][..k];
                panels.start = self.row_groups(None, |first_panel, targets| {
                    let b = first_panel * k * NR..(first_panel + targets.len()) * k * NR;
                    match &weights {
                        FloatPanels::F32(w) => row_f32(a, &w[b], targets),
                        FloatPanels::Bf16(w) => row_bf16(a, &w[b], targets),
                    }
                });
            }
            let next_lines = (kc * NR * weights.value_bytes()).div_ceil(64);
            let per_tile = next_lines.div_ceil(self.rows.len().div_ceil(MR));
            for panel in panels {
                let mut offset = 0;
                for (tile_index, (r0, mr)) in micro_panels(self.rows.clone()).enumerate() {
                    let a = match single_row {
                        true => &self.x[r0 * k + k0..][..kc],
                        false => &a_pack[offset..offset + kc * mr],
                    };
                    offset += kc * mr;
                    let b_start = (panel * k + k0) * NR;
                    let b = b_start..b_start + kc * NR;
                    let first = block_index == 0;
                    let direct = self.direct_target(isa, r0, panel, first);
                    let target = direct.unwrap_or_else(|| Target::tile(&mut tile));
                    // Each micro-panel of rows asks for its share of the next panel block.
                    let ahead = match panel + 1 < self.panels.end {
                        true => {
                            let first_line = tile_index * per_tile;
                            let next = weights.byte_ptr(((panel + 1) * k + k0) * NR);
                            Ahead {
                                start: next.wrapping_add(first_line * 64),
                                lines: per_tile.min(next_lines.saturating_sub(first_line)),
                            }
                        }
                        false => Ahead::NONE,
                    };
                    match &weights {
                        FloatPanels::F32(w) => tile_f32(isa, mr, a, &w[b], target, ahead),
                        FloatPanels::Bf16(w) => tile_bf16(isa, mr, a, &w[b], target, ahead),
                    }
                    if direct.is_none() {
                        self.store(&tile, r0, mr, panel, first, None);
                    }
                }
            }
        }
    }

    /// As `run_float`, with int8 weights and the rows as 16-bit integers.
    fn run_int8(
        &self,
        weights: &[i8],
        column_scales: &[f32],
        rows: &QuantizedRows,
        a_pack: &mut Vec<i32>,
        isa: Isa,
    ) {
        let pairs = self.k.div_ceil(2);
        let pair_step = k_step(self.rows.len(), pairs, KC / 2);
        if a_pack.len() < self.rows.len() * pair_step {
            a_pack.resize(self.rows.len() * pair_step, 0);
        }
        let mut tile = [[0f32; NR]; MR];
        for (block_index, p0) in (0..pairs).step_by(pair_step).enumerate() {
            let pc = pair_step.min(pairs - p0);
            // As in `run_float`: one row is read in place.
            let single_row = self.rows.len() == 1;
            if !single_row {
                pack_pairs(rows, self.rows.clone(), p0, pc, a_pack);
            }
            let mut panels = self.panels.clone();
            #[cfg(target_arch = "x86_64")]
            if single_row && isa.has_avx2() {
                let r0 = self.rows.start;
                let a = &rows.pairs[r0 * rows.pairs_per_row..][..pairs];
                let scales = (column_scales, &rows.scales[r0..=r0]);
                panels.start = self.row_groups(Some(scales), |first_panel, targets| {
                    let b = first_panel * pairs * INT8_PANEL_ROW
                        ..(first_panel + targets.len()) * pairs * INT8_PANEL_ROW;
                    row_int8(a, &weights[b], targets)
                });
            }
            for panel in panels {
                let mut offset = 0;
                for (r0, mr) in micro_panels(self.rows.clone()) {
                    let a = match single_row {
                        true => &rows.pairs[r0 * rows.pairs_per_row + p0..][..pc],
                        false => &a_pack[offset..offset + pc * mr],
                    };
                    offset += pc * mr;
                    let b_start = (panel * pairs + p0) * INT8_PANEL_ROW;
                    let b = &weights[b_start..b_start + pc * INT8_PANEL_ROW];
                    let first = block_index == 0;
                    let c0 = panel * NR;
                    let row_scales = &rows.scales[r0..r0 + mr];
                    let direct = self
                        .direct_target(isa, r0, panel, first)
                        .map(|target| Target {
                            scales: column_scales[c0..].as_ptr(),
                            row_scales: row_scales.as_ptr(),
                            ..target
                        });
                    tile_int8(
                        isa,
                        mr,
                        a,
                        b,
                        direct.unwrap_or_else(|| Target::tile(&mut tile)),
                    );
                    if direct.is_none() {
                        let scales = Some((column_scales, row_scales));
                        self.store(&tile, r0, mr, panel, first, scales);
                    }
                }
            }
        }
    }

    /// Where the AVX2 kernel writes a whole panel's rows itself: the output at (r0, panel),
    /// with the bias on the first K block. `None` for the portable kernel and for a panel cut
    /// short by the matrix's edge, which go through a tile and [`Block::store`].
    fn direct_target(&self, isa: Isa, r0: usize, panel: usize, first: bool) -> Option<Target> {
        #[cfg(target_arch = "x86_64")]
        if isa.has_avx2() && (panel + 1) * NR <= self.n {
            return Some(self.panel_target(r0, panel, first));
        }
        let _ = (isa, r0, panel, first);
        None
    }

    /// The output at (r0, panel) of a whole panel (`(panel + 1) · NR <= n`), for a kernel
    /// that stores its sums itself.
    #[cfg(target_arch = "x86_64")]
    fn panel_target(&self, r0: usize, panel: usize, first: bool) -> Target {
        let c0 = panel * NR;
        debug_assert!(c0 + NR <= self.n && self.rows.contains(&r0));
        Target {
            // SAFETY: row r0 < m and column c0 < n are inside `out`; the kernel writes
            // up to MR rows of this task × NR columns from there, inside this task's block,
            // which no other task writes.
            c: unsafe { self.out.0.add(r0 * self.n + c0) },
            ldc: self.n,
            first,
            bias: self.bias.map_or(std::ptr::null(), |b| b[c0..].as_ptr()),
            scales: std::ptr::null(),
            row_scales: std::ptr::null(),
        }
    }

    /// This task's one row, on AVX2: its whole panels in groups of up to [`ROW_STREAMS`],
    /// `kernel(first panel, one target per panel)` for each group, column and row scales
    /// (int8) in the targets. Returns the first panel it left (the matrix's last panel when
    /// cut short), for the tile kernel.
    #[cfg(target_arch = "x86_64")]
    fn row_groups(
        &self,
        scales: Option<(&[f32], &[f32])>,
        mut kernel: impl FnMut(usize, &[Target]),
    ) -> usize {
        let r0 = self.rows.start;
        let whole_end = self.panels.end.min(self.n / NR);
        let mut panel = self.panels.start;
        while panel < whole_end {
            let count = (whole_end - panel).min(ROW_STREAMS);
            let targets: [Target; ROW_STREAMS] = std::array::from_fn(|j| {
                let p = panel + j.min(count - 1);
                let target = self.panel_target(r0, p, true);
                match scales {
                    Some((columns, rows)) => Target {
                        scales: columns[p * NR..].as_ptr(),
                        row_scales: rows.as_ptr(),
                        ..target
                    },
                    None => target,
                }
            });
            kernel(panel, &targets[..count]);
            panel += count;
        }
        panel
    }

    /// Write (first block: with bias) or add a tile to the output.
    fn store(
        &self,
        tile: &[[f32; NR]; MR],
        r0: usize,
        mr: usize,
        panel: usize,
        first: bool,
        scales: Option<(&[f32], &[f32])>,
    ) {
        let c0 = panel * NR;
        let cols = NR.min(self.n - c0);
        for (i, tile_row) in tile.iter().enumerate().take(mr) {
            let row_scale = scales.map_or(1.0, |(_, rows)| rows[i]);
            let scales = scales.map(|(columns, _)| columns);
            // SAFETY: row r0 + i < m and columns c0 .. c0 + cols < n lie in `out`, inside
            // this task's block, which no other task writes. Not yet initialised on the
            // first K block, hence MaybeUninit.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out
                        .0
                        .add((r0 + i) * self.n + c0)
                        .cast::<MaybeUninit<f32>>(),
                    cols,
                )
            };
            for (j, (out, &sum)) in out.iter_mut().zip(&tile_row[..cols]).enumerate() {
                let column = c0 + j;
                let mut value = match scales {
                    Some(scales) => sum * scales[column] * row_scale,
                    None => sum,
                };
                if !first {
                    // SAFETY: the first K block of this task wrote this value.
                    value += unsafe { out.assume_init_read() };
                } else if let Some(bias) = self.bias {
                    value += bias[column];
                }
                out.write(value);
            }
        }
    }

    /// The epilogue and the residual, on this task's block while it is still in cache.
    fn finish(&self, epilogue: Epilogue, residual: Option<&[f32]>) {
        if epilogue == Epilogue::None && residual.is_none() {
            return;
        }
        let columns = self.columns();
        for r in self.rows.clone() {
            // SAFETY: as in `store`: this task's own block.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out.0.add(r * self.n + columns.start),
                    columns.len(),
                )
            };
            match epilogue {
                Epilogue::None => {}
                Epilogue::GeluErf => super::gelu_in_place(out),
                Epilogue::GeluTanh => super::gelu_tanh_in_place(out),
            }
            if let Some(residual) = residual {
                let res = &residual[r * self.n + columns.start..r * self.n + columns.end];
                super::add_in_place(out, res);
            }
        }
    }
}

/// The micro-panels of a block of rows, as (first row, rows): MR rows each, except that
/// a block that would end in a panel of 1 or 2 rows ends in two of 3–4 rows instead (its
/// last 8 rows as 4 and 4, not 6 and 2). A panel of two rows streams its weights from L2
/// for a third of the multiply-adds, at about half the kernel's speed: 128 rows (62 and 66)
/// spent 2.9% of a BERT-base forward pass on the 2-row panel's 1.6% of the products.
/// Same-process A/B of that forward pass: +0.7%, +0.1%.
fn micro_panels(rows: std::ops::Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    let len = rows.len();
    let short_tail = len > MR && !len.is_multiple_of(MR) && len % MR <= 2;
    // Rows before the tail of two panels, when there is one.
    let even_end = if short_tail {
        rows.start + (len / MR - 1) * MR
    } else {
        rows.end
    };
    let tail = rows.end - even_end;
    let even = (rows.start..even_end)
        .step_by(MR)
        .map(move |r0| (r0, MR.min(even_end - r0)));
    let split = [
        (even_end, tail.div_ceil(2)),
        (even_end + tail.div_ceil(2), tail / 2),
    ];
    even.chain(split.into_iter().filter(move |_| short_tail))
}

/// Copy columns `k0 .. k0 + kc` of `rows` of `x` (row length `k`) into micro-panels of up to
/// MR rows each: for each column, the panel's rows side by side.
fn pack_rows(
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
                // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2.
                Isa::Avx2 | Isa::Avx512 => unsafe { pack_six_rows_avx2(&sources, panel) },
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

/// The first columns of six rows (`sources`, of equal length) into `panel` as `pack_rows`
/// lays them out, 8 columns at a time by an 8 × 8 transpose (the last two rows zero) with
/// 8-wide stores 6 values apart, each over the previous one's two zeros. Returns the columns
/// done: all but the last 1–8, whose last store would run past the panel. Scalar packing
/// took 1.3% of a BERT-base 1×128 forward pass.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pack_six_rows_avx2(sources: &[&[f32]; MR], panel: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let kc = sources[0].len();
    assert!(sources.iter().all(|s| s.len() == kc) && panel.len() >= kc * MR);
    let zero = _mm256_setzero_ps();
    let mut p0 = 0;
    // A group's last store ends at 6·p0 + 56 values: inside the panel while p0 + 9 <= kc.
    while p0 + 9 <= kc {
        // SAFETY: columns p0 .. p0 + 8 < kc of each source; stores end inside the panel.
        unsafe {
            let r: [__m256; MR] =
                std::array::from_fn(|i| _mm256_loadu_ps(sources[i].as_ptr().add(p0)));
            let (t0, t1) = (
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
            );
            let (t2, t3) = (
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
            );
            let (t4, t5) = (
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
            );
            // Columns (0, 4), (1, 5), (2, 6), (3, 7) of rows 0–3, then of rows 4–5.
            let low = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            let high = [
                _mm256_shuffle_ps::<0x44>(t4, zero),
                _mm256_shuffle_ps::<0xEE>(t4, zero),
                _mm256_shuffle_ps::<0x44>(t5, zero),
                _mm256_shuffle_ps::<0xEE>(t5, zero),
            ];
            let out = panel.as_mut_ptr().add(p0 * MR);
            for c in 0..4 {
                let column = _mm256_permute2f128_ps::<0x20>(low[c], high[c]);
                _mm256_storeu_ps(out.add(c * MR), column);
            }
            for c in 0..4 {
                let column = _mm256_permute2f128_ps::<0x31>(low[c], high[c]);
                _mm256_storeu_ps(out.add((c + 4) * MR), column);
            }
        }
        p0 += 8;
    }
    p0
}

/// Where a micro-kernel puts its mr × NR results: `c[i·ldc + j] = acc · scale[j] + bias[j]`
/// on the first K block, `c[i·ldc + j] += acc · scale[j]` on the others (null `scales` and
/// `bias` are 1 and 0).
#[derive(Clone, Copy)]
struct Target {
    c: *mut f32,
    ldc: usize,
    first: bool,
    bias: *const f32,
    scales: *const f32,
    /// One scale per row (int8 products), or null.
    row_scales: *const f32,
}

impl Target {
    /// The raw sums, into a tile on the stack.
    fn tile(tile: &mut [[f32; NR]; MR]) -> Self {
        Self {
            c: tile.as_mut_ptr().cast(),
            ldc: NR,
            first: true,
            bias: std::ptr::null(),
            scales: std::ptr::null(),
            row_scales: std::ptr::null(),
        }
    }
}

/// The weights of a floating-point product.
enum FloatPanels<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

impl FloatPanels<'_> {
    fn value_bytes(&self) -> usize {
        match self {
            FloatPanels::F32(_) => 4,
            FloatPanels::Bf16(_) => 2,
        }
    }

    /// The address of value `index` (possibly past the end: only prefetched).
    fn byte_ptr(&self, index: usize) -> *const u8 {
        match self {
            FloatPanels::F32(w) => w.as_ptr().wrapping_add(index).cast(),
            FloatPanels::Bf16(w) => w.as_ptr().wrapping_add(index).cast(),
        }
    }
}

/// Portable micro-kernel: `tile[i][j] = Σ_p a[p·mr + i] · w(p, j)`, where `load(row, j)`
/// reads column j's weight from a panel row.
#[inline(always)]
fn tile_portable<const M: usize, T: Copy>(
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
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: the portable path always targets a stack tile (`Target::tile`), MR × NR.
        let row = unsafe { std::slice::from_raw_parts_mut(target.c.add(i * target.ldc), NR) };
        row.copy_from_slice(acc);
    }
}

/// Instantiate the micro-kernels for one weight type: the portable one for each row count,
/// the AVX2 one (`$load` turns 16 packed weights at a pointer into two f32 registers), and
/// the AVX2 one-row kernel over up to [`ROW_STREAMS`] panels (`$prefetch`: whether it asks for
/// its weights [`PREFETCH_AHEAD`] bytes early).
macro_rules! tile_kernels {
    ($name:ident, $avx2:ident, $row:ident, $row_avx2:ident, $ty:ty, $to_f32:expr, $load:expr,
     $prefetch:expr) => {
        fn $name(isa: Isa, mr: usize, a: &[f32], b: &[$ty], target: Target, ahead: Ahead) {
            debug_assert!(a.len() == (b.len() / NR) * mr);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = ahead;
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA; the
                // slices hold kc·mr and kc·NR values, which is what the kernel reads.
                Isa::Avx2 | Isa::Avx512 => unsafe {
                    let kc = b.len() / NR;
                    match mr {
                        1 => $avx2::<1>(kc, a.as_ptr(), b.as_ptr(), target, ahead),
                        2 => $avx2::<2>(kc, a.as_ptr(), b.as_ptr(), target, ahead),
                        3 => $avx2::<3>(kc, a.as_ptr(), b.as_ptr(), target, ahead),
                        4 => $avx2::<4>(kc, a.as_ptr(), b.as_ptr(), target, ahead),
                        5 => $avx2::<5>(kc, a.as_ptr(), b.as_ptr(), target, ahead),
                        _ => $avx2::<6>(kc, a.as_ptr(), b.as_ptr(), target, ahead),
                    }
                },
                // The portable kernel does not prefetch (`ahead` is a hint).
                Isa::Portable => match mr {
                    1 => tile_portable::<1, $ty>(a, b, target, $to_f32),
                    2 => tile_portable::<2, $ty>(a, b, target, $to_f32),
                    3 => tile_portable::<3, $ty>(a, b, target, $to_f32),
                    4 => tile_portable::<4, $ty>(a, b, target, $to_f32),
                    5 => tile_portable::<5, $ty>(a, b, target, $to_f32),
                    _ => tile_portable::<6, $ty>(a, b, target, $to_f32),
                },
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<const M: usize>(
            kc: usize,
            a: *const f32,
            b: *const $ty,
            target: Target,
            ahead: Ahead,
        ) {
            use std::arch::x86_64::*;
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            let step = |acc: &mut [[__m256; 2]; M], p: usize| {
                let (w0, w1) = $load(b.add(p * NR));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(p * M + i));
                    acc[0] = _mm256_fmadd_ps(av, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, w1, acc[1]);
                }
            };
            let whole = kc / AHEAD_STEP * AHEAD_STEP;
            let mut line = 0;
            for p0 in (0..whole).step_by(AHEAD_STEP) {
                if line < ahead.lines {
                    // A hint only: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T1>(ahead.start.wrapping_add(line * 64).cast());
                    line += 1;
                }
                for p in p0..p0 + AHEAD_STEP {
                    step(&mut acc, p);
                }
            }
            for p in whole..kc {
                step(&mut acc, p);
            }
            store_avx2(&acc, target);
        }

        /// One row `a` (k inputs) times `targets.len()` whole panels that follow each other
        /// in `b`, each stored to its target. Only for `Isa::Avx2` (see `row_groups`).
        #[cfg(target_arch = "x86_64")]
        fn $row(a: &[f32], b: &[$ty], targets: &[Target]) {
            assert!(b.len() == targets.len() * a.len() * NR);
            // SAFETY: only called on the AVX2 path (`Isa::Avx2`: the CPU has AVX2 and FMA);
            // `b` holds P panels of k rows × NR, which is what the kernel reads.
            unsafe {
                match targets.len() {
                    1 => $row_avx2::<1>(a, b.as_ptr(), targets),
                    2 => $row_avx2::<2>(a, b.as_ptr(), targets),
                    3 => $row_avx2::<3>(a, b.as_ptr(), targets),
                    _ => $row_avx2::<ROW_STREAMS>(a, b.as_ptr(), targets),
                }
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $row_avx2<const P: usize>(a: &[f32], b: *const $ty, targets: &[Target]) {
            use std::arch::x86_64::*;
            let k = a.len();
            let row_bytes = NR * std::mem::size_of::<$ty>();
            let mut acc = [[_mm256_setzero_ps(); 2]; P];
            for (p, &x) in a.iter().enumerate() {
                let av = _mm256_set1_ps(x);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let w = b.add((j * k + p) * NR);
                    if $prefetch && (p * row_bytes) % 64 == 0 {
                        let distance = prefetch_distance(p * row_bytes, k * row_bytes, P);
                        let ahead = w.cast::<i8>().wrapping_add(distance);
                        _mm_prefetch::<_MM_HINT_T0>(ahead);
                    }
                    let (w0, w1) = $load(w);
                    acc[0] = _mm256_fmadd_ps(av, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, w1, acc[1]);
                }
            }
            for (acc, &target) in acc.iter().zip(targets) {
                store_avx2(&[*acc], target);
            }
        }
    };
}

tile_kernels!(
    tile_f32,
    tile_f32_avx2,
    row_f32,
    row_f32_avx2,
    f32,
    |row: &[f32], j| row[j],
    |b: *const f32| {
        use std::arch::x86_64::*;
        (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)))
    },
    false
);

tile_kernels!(
    tile_bf16,
    tile_bf16_avx2,
    row_bf16,
    row_bf16_avx2,
    u16,
    |row: &[u16], j| bf16_value(row[bf16_lane(j)]),
    |b: *const u16| {
        use std::arch::x86_64::*;
        // bf16 → f32: a zero below each 16-bit value. The unpacks interleave within each
        // 128-bit half, which the packed order (`bf16_lane`) undoes.
        let row = _mm256_loadu_si256(b as *const __m256i);
        let zero = _mm256_setzero_si256();
        (
            _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, row)),
            _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, row)),
        )
    },
    true
);

/// Copy input pairs `p0 .. p0 + pc` of `rows` into micro-panels of up to MR rows: for each
/// pair, the rows side by side.
fn pack_pairs(
    quantized: &QuantizedRows,
    rows: std::ops::Range<usize>,
    p0: usize,
    pc: usize,
    a_pack: &mut [i32],
) {
    let mut offset = 0;
    for (r0, mr) in micro_panels(rows) {
        let panel = &mut a_pack[offset..offset + pc * mr];
        for i in 0..mr {
            let start = (r0 + i) * quantized.pairs_per_row + p0;
            let row = &quantized.pairs[start..start + pc];
            for (slot, &pair) in panel[i..].iter_mut().step_by(mr).zip(row) {
                *slot = pair;
            }
        }
        offset += pc * mr;
    }
}

/// Pairs of inputs summed in i32 before going to f32: 128 pairs of |16-bit · 8-bit| products
/// stay below 2^31 (128 · 2 · 32767 · 127 ≈ 1.07e9).
const INT8_PAIRS_PER_SUM: usize = 128;

/// The int8 micro-kernel: `Σ_q even·w_even + odd·w_odd` per row and column, exact in i32 per
/// [`INT8_PAIRS_PER_SUM`] pairs, then f32; scaled by the column's and the row's scale.
fn tile_int8(isa: Isa, mr: usize, a: &[i32], b: &[i8], target: Target) {
    debug_assert!(a.len() == (b.len() / INT8_PANEL_ROW) * mr);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA; the slices hold
        // pc·mr pairs and pc panel rows, which is what the kernel reads.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            let pc = b.len() / INT8_PANEL_ROW;
            match mr {
                1 => tile_int8_avx2::<1>(pc, a.as_ptr(), b.as_ptr(), target),
                2 => tile_int8_avx2::<2>(pc, a.as_ptr(), b.as_ptr(), target),
                3 => tile_int8_avx2::<3>(pc, a.as_ptr(), b.as_ptr(), target),
                4 => tile_int8_avx2::<4>(pc, a.as_ptr(), b.as_ptr(), target),
                5 => tile_int8_avx2::<5>(pc, a.as_ptr(), b.as_ptr(), target),
                _ => tile_int8_avx2::<6>(pc, a.as_ptr(), b.as_ptr(), target),
            }
        },
        Isa::Portable => match mr {
            1 => tile_int8_portable::<1>(a, b, target),
            2 => tile_int8_portable::<2>(a, b, target),
            3 => tile_int8_portable::<3>(a, b, target),
            4 => tile_int8_portable::<4>(a, b, target),
            5 => tile_int8_portable::<5>(a, b, target),
            _ => tile_int8_portable::<6>(a, b, target),
        },
    }
}

/// The portable int8 micro-kernel: the same integer sums in the same order as the AVX2 one,
/// so both give the same f32 sums; into a stack tile, unscaled.
fn tile_int8_portable<const M: usize>(a: &[i32], b: &[i8], target: Target) {
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
    for (i, sums) in sums.iter().enumerate() {
        // SAFETY: the portable path always targets a stack tile (`Target::tile`), MR × NR.
        let row = unsafe { std::slice::from_raw_parts_mut(target.c.add(i * target.ldc), NR) };
        row.copy_from_slice(sums);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_int8_avx2<const M: usize>(pc: usize, a: *const i32, b: *const i8, target: Target) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm256_setzero_ps(); 2]; M];
    let mut q = 0;
    while q < pc {
        let end = pc.min(q + INT8_PAIRS_PER_SUM);
        let mut acc = [[_mm256_setzero_si256(); 2]; M];
        while q < end {
            // Columns 0–7 and 8–15, each as (even, odd) pairs of 16-bit weights.
            let row = b.add(q * INT8_PANEL_ROW);
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.add(16) as *const __m128i));
            for (i, acc) in acc.iter_mut().enumerate() {
                let pair = _mm256_set1_epi32(*a.add(q * M + i));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(pair, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(pair, w1));
            }
            q += 1;
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            sums[0] = _mm256_add_ps(sums[0], _mm256_cvtepi32_ps(acc[0]));
            sums[1] = _mm256_add_ps(sums[1], _mm256_cvtepi32_ps(acc[1]));
        }
    }
    store_avx2(&sums, target);
}

/// The int8 kernel for one row (`a`: its pairs of 16-bit inputs) and `targets.len()` whole
/// panels that follow each other in `b`: the same integer sums in the same order as
/// `tile_int8`, so the same results. Only for `Isa::Avx2` (see `Block::row_groups`).
#[cfg(target_arch = "x86_64")]
fn row_int8(a: &[i32], b: &[i8], targets: &[Target]) {
    assert!(b.len() == targets.len() * a.len() * INT8_PANEL_ROW);
    // SAFETY: only called on the AVX2 path (`Isa::Avx2`: the CPU has AVX2 and FMA); `b`
    // holds P panels of `a.len()` pair rows, which is what the kernel reads.
    unsafe {
        match targets.len() {
            1 => row_int8_avx2::<1>(a, b.as_ptr(), targets),
            2 => row_int8_avx2::<2>(a, b.as_ptr(), targets),
            3 => row_int8_avx2::<3>(a, b.as_ptr(), targets),
            _ => row_int8_avx2::<ROW_STREAMS>(a, b.as_ptr(), targets),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_int8_avx2<const P: usize>(a: &[i32], b: *const i8, targets: &[Target]) {
    use std::arch::x86_64::*;
    let pairs = a.len();
    let mut sums = [[_mm256_setzero_ps(); 2]; P];
    for (block, a) in a.chunks(INT8_PAIRS_PER_SUM).enumerate() {
        let mut acc = [[_mm256_setzero_si256(); 2]; P];
        for (offset, &pair) in a.iter().enumerate() {
            let q = block * INT8_PAIRS_PER_SUM + offset;
            let pair = _mm256_set1_epi32(pair);
            let ahead = prefetch_distance(q * INT8_PANEL_ROW, pairs * INT8_PANEL_ROW, P);
            for (j, acc) in acc.iter_mut().enumerate() {
                let row = b.add((j * pairs + q) * INT8_PANEL_ROW);
                if q.is_multiple_of(2) {
                    // Two panel rows are a cache line.
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(ahead));
                }
                let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row as *const __m128i));
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.add(16) as *const __m128i));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(pair, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(pair, w1));
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            sums[0] = _mm256_add_ps(sums[0], _mm256_cvtepi32_ps(acc[0]));
            sums[1] = _mm256_add_ps(sums[1], _mm256_cvtepi32_ps(acc[1]));
        }
    }
    for (sums, &target) in sums.iter().zip(targets) {
        store_avx2(&[*sums], target);
    }
}

/// Write a kernel's sums as `target` says: × column scale × row scale, then + bias on the
/// first K block or + what the output holds on the others.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_avx2<const M: usize>(sums: &[[std::arch::x86_64::__m256; 2]; M], target: Target) {
    use std::arch::x86_64::*;
    for (i, sums) in sums.iter().enumerate() {
        let row = target.c.add(i * target.ldc);
        for (h, &sum) in sums.iter().enumerate() {
            let mut v = sum;
            if !target.scales.is_null() {
                v = _mm256_mul_ps(v, _mm256_loadu_ps(target.scales.add(8 * h)));
            }
            if !target.row_scales.is_null() {
                v = _mm256_mul_ps(v, _mm256_set1_ps(*target.row_scales.add(i)));
            }
            if !target.first {
                v = _mm256_add_ps(v, _mm256_loadu_ps(row.add(8 * h)));
            } else if !target.bias.is_null() {
                v = _mm256_add_ps(v, _mm256_loadu_ps(target.bias.add(8 * h)));
            }
            _mm256_storeu_ps(row.add(8 * h), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 quantizer gives the scalar one's bits: ties (x.5) away from zero, the row's
    /// largest value at ±32767, NaN as 0, odd lengths with a zero high half in the last pair.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_quantizer_matches_scalar() {
        if !Isa::detect(false).has_avx2() {
            return;
        }
        for len in [1usize, 15, 16, 17, 33, 64, 101] {
            let mut values: Vec<f32> = (0..len)
                .map(|i| (i as f32 - 20.0) * 0.5 + if i % 3 == 0 { 0.25 } else { 0.0 })
                .collect();
            let inverse = 32767.0 / values.iter().fold(0f32, |m, v| m.max(v.abs()));
            values[len / 2] = f32::NAN;
            for inverse in [1.0, inverse] {
                let (mut scalar, mut avx2) = (vec![7; len.div_ceil(2)], vec![7; len.div_ceil(2)]);
                quantize_pairs(&values, inverse, &mut scalar);
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { quantize_pairs_avx2(&values, inverse, &mut avx2) };
                assert_eq!(scalar, avx2, "len {len}, inverse {inverse}");
            }
        }
    }

    fn reference(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for o in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum();
                out[r * n + o] = dot as f32 + bias[o];
            }
        }
        out
    }

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

    /// Every row count, ragged panels and several K blocks, on every kernel and format:
    /// against an f64 reference product of the weights each format stores.
    /// Micro-panels cover a block's rows in order, MR at most, and end in a panel of 1 or 2
    /// rows only when that is the whole block.
    #[test]
    fn micro_panels_cover_the_rows_without_a_short_tail() {
        for start in [0, 5] {
            for len in 1..50 {
                let panels: Vec<_> = micro_panels(start..start + len).collect();
                let mut next = start;
                for &(r0, mr) in &panels {
                    assert_eq!(r0, next, "{len} rows: {panels:?}");
                    assert!((1..=MR).contains(&mr), "{len} rows: {panels:?}");
                    assert!(mr >= 3 || len <= 2, "{len} rows: {panels:?}");
                    next += mr;
                }
                assert_eq!(next, start + len, "{len} rows: {panels:?}");
                assert_eq!(panels.len(), len.div_ceil(MR), "{len} rows: {panels:?}");
            }
        }
    }

    #[test]
    fn matches_reference_product() {
        for &(m, k, n) in &[
            (1, 7, 5),
            (7, 40, 33),
            (13, 800, 17),
            (80, 390, 48),
            // Blocks of 66 and 62 rows: the second ends in two panels of four.
            (128, 70, 40),
            (2, 1, 1),
            (1, 600, 40),
            // One row: panels in groups of four, three, two and one, edge panels, and
            // int8 sums over more than one block of pairs.
            (1, 300, 147),
            (1, 257, 208),
        ] {
            let x = pseudo_random(m * k, 1);
            let w = pseudo_random(n * k, 2);
            let bias = pseudo_random(n, 3);
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
                let packed = PackedWeights::pack(k, n, format, |o, i| w[o * k + i]);
                let stored = packed.unpack();
                let expected = reference(&x, m, &stored, k, n, &bias);
                // int8 products round each row of x to 16 bits: at most half a step of
                // max|x_row| / 32767 per input, times the weight it meets.
                let rounding = |r: usize, o: usize| match format {
                    WeightFormat::Int8 => {
                        let row = &x[r * k..(r + 1) * k];
                        let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
                        let weights = &stored[o * k..(o + 1) * k];
                        weights.iter().map(|w| w.abs()).sum::<f32>() * max / 65534.0
                    }
                    _ => 0.0,
                };
                let mut results = Vec::new();
                for isa in [Isa::Portable, Isa::detect(false)] {
                    let mut out = vec![f32::NAN; m * n];
                    let b = Some(bias.as_slice());
                    matmul(&x, m, &packed, b, Epilogue::None, None, &mut out, isa);
                    for (index, (o, e)) in out.iter().zip(&expected).enumerate() {
                        let bound = rounding(index / n, index % n) + 1e-4 * (1.0 + e.abs());
                        assert!(
                            (o - e).abs() <= bound,
                            "{m}x{k}x{n} {format:?} {isa:?}: {o} vs {e}"
                        );
                    }
                    results.push(out);
                }
                // Integer sums are exact: every int8 kernel gives the same sums, and the
                // same scaling order gives the same bits.
                if format == WeightFormat::Int8 {
                    assert_eq!(results[0], results[1], "{m}x{k}x{n}: int8 kernels differ");
                }
                // Storage error: bf16 keeps 8 bits, int8 a 127th of the row's largest weight.
                let bound = match format {
                    WeightFormat::F32 => 0.0,
                    WeightFormat::Bf16 => 1.0 / 256.0,
                    WeightFormat::Int8 => 0.5 / 127.0,
                };
                for (s, w) in stored.iter().zip(&w) {
                    assert!((s - w).abs() <= bound * 1.0001, "{format:?}: {s} vs {w}");
                }
            }
        }
    }

    /// GELU (both forms) and the residual are applied after the bias, on every kernel.
    #[test]
    fn epilogue_and_residual_follow_the_product() {
        let (m, k, n) = (9, 300, 40);
        let x = pseudo_random(m * k, 4);
        let w = pseudo_random(n * k, 5);
        let bias = pseudo_random(n, 6);
        let residual = pseudo_random(m * n, 7);
        let packed = PackedWeights::pack(k, n, WeightFormat::F32, |o, i| w[o * k + i]);
        let product = reference(&x, m, &w, k, n, &bias);
        for (epilogue, f) in [
            (Epilogue::None, (|v| v) as fn(f32) -> f32),
            (Epilogue::GeluErf, super::super::gelu_erf_scalar),
            (Epilogue::GeluTanh, super::super::gelu_tanh_scalar),
        ] {
            for isa in [Isa::Portable, Isa::detect(false)] {
                let mut out = vec![f32::NAN; m * n];
                let r = Some(residual.as_slice());
                matmul(&x, m, &packed, Some(&bias), epilogue, r, &mut out, isa);
                for ((o, p), r) in out.iter().zip(&product).zip(&residual) {
                    let e = f(*p) + r;
                    assert!(
                        (o - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{epilogue:?} {isa:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
    }
}
