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
//! On AVX-512 (with BF16 and VNNI) the tile kernels read two panels side by side (6 × 32
//! outputs in twelve 16-lane registers), and bf16 and int8 weights are packed in groups of
//! inputs per column, as `vdpbf16ps` and `vpdpbusd` multiply them: bf16 products then round
//! each activation to bf16 too (as PyTorch's bf16 matmul does), and int8 products quantize
//! each row of activations to u8 over its range (as ONNX Runtime's dynamic quantization does),
//! with the zero point's share taken out through per-column sums of the weights.
//!
//! Packed weights live in `StreamBuffer`s: cache-line aligned, on 2 MiB pages where Linux
//! gives them.
//!
//! Layout: this file holds the API, the split into tasks, the blocking and the stores each
//! task makes; `pack` the packing of weights and rows; `portable`, `avx2` and `avx512` the
//! micro-kernels of each instruction set, reached only through the dispatchers at the end of
//! this file, which check the [`Isa`] first.

use crate::runtime::buffer::StreamBuffer;
use pack::{pack_groups, pack_rows, GroupedRows, QuantizedRows, INT8_PANEL_ROW};
use rayon::prelude::*;
use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
mod portable;
#[cfg(test)]
pub(crate) mod tests;

pub use pack::bf16_bits;
pub(crate) use pack::{bf16_column_pairs, bf16_pairs_row, bf16_value};

/// Output columns per panel: two AVX2 registers, one AVX-512 register.
pub const NR: usize = 16;
/// Rows per micro-kernel call: 6 × 2 accumulators + 2 weight registers + 1 broadcast fit the
/// 16 AVX2 registers.
const MR: usize = 6;
/// Rows per micro-kernel call of the AVX-512 kernels over grouped layouts: 12 × 2
/// accumulators + 2 weight registers + 1 broadcast of its 32 registers.
const MR_WIDE: usize = 12;
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
/// works, one every [`AHEAD_STEP`] input steps: its share of the panel blocks that its task
/// reads next (see `Block::run_float`), lines `first ..` of them, taken from each of the
/// `panels` blocks in turn. A model's weights come from memory once per forward
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
    /// The next K block of the first next panel.
    start: *const u8,
    /// Bytes from one panel to the next.
    panel_bytes: usize,
    /// log2 of the panels the lines are taken from in turn (0 or 1): a shift, since the
    /// kernels compute an address every few steps and a division would cost more than the
    /// steps in between (it cost 4–5% of an AVX2 f32 forward pass).
    panels_log2: u32,
    first: usize,
    lines: usize,
}

impl Ahead {
    const NONE: Ahead = Ahead {
        start: std::ptr::null(),
        panel_bytes: 0,
        panels_log2: 0,
        first: 0,
        lines: 0,
    };

    /// Line `line` of this call's share (possibly past the weights: only prefetched).
    #[inline(always)]
    fn address(&self, line: usize) -> *const u8 {
        let line = self.first + line;
        let panel = line & ((1 << self.panels_log2) - 1);
        let row = line >> self.panels_log2;
        self.start
            .wrapping_add(panel * self.panel_bytes)
            .wrapping_add(row * 64)
    }
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

/// The packed weights, in the layout of the kernels they were packed for.
#[derive(Debug, Clone)]
enum Panels {
    F32(StreamBuffer<f32>),
    /// One input per panel row, columns in `bf16_lane` order (widened to f32 by AVX2).
    Bf16(StreamBuffer<u16>),
    /// Pairs of inputs per column (`grouped_panels`), for `vdpbf16ps`.
    Bf16Pairs(StreamBuffer<u16>),
    /// Pairs of inputs per column, as `vpmaddwd` takes them beside 16-bit activations.
    Int8 {
        values: StreamBuffer<i8>,
        scales: Vec<f32>,
    },
    /// Quads of inputs per column (`grouped_panels`), for `vpdpbusd`; `column_sums`: each
    /// column's sum of its integer weights, to take the activations' zero points out.
    Int8Quads {
        values: StreamBuffer<i8>,
        scales: Vec<f32>,
        column_sums: Vec<i32>,
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

impl PackedWeights {
    pub fn inner(&self) -> usize {
        self.inner
    }

    pub fn outer(&self) -> usize {
        self.outer
    }

    pub fn format(&self) -> WeightFormat {
        match self.panels {
            Panels::F32(_) => WeightFormat::F32,
            Panels::Bf16(_) | Panels::Bf16Pairs(_) => WeightFormat::Bf16,
            Panels::Int8 { .. } | Panels::Int8Quads { .. } => WeightFormat::Int8,
        }
    }

    /// Whether the kernels read bf16 activations as they are ([`Activations::Bf16`]): the
    /// AVX-512 layout of bf16 weights, pairs of inputs per column.
    pub fn reads_bf16_rows(&self) -> bool {
        matches!(self.panels, Panels::Bf16Pairs(_))
    }

    /// Inputs per 32-bit group of the activations this layout multiplies: 2 (16-bit int8
    /// pairs, bf16 pairs), 4 (int8 quads), or 1 (f32 activations).
    fn group(&self) -> usize {
        match self.panels {
            Panels::F32(_) | Panels::Bf16(_) => 1,
            Panels::Int8 { .. } | Panels::Bf16Pairs(_) => 2,
            Panels::Int8Quads { .. } => 4,
        }
    }

    /// Bytes of weights streamed per product (what one decoded token reads).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::Bf16(v) | Panels::Bf16Pairs(v) => v.len() * 2,
            Panels::Int8 { values, scales } => values.len() + scales.len() * 4,
            Panels::Int8Quads {
                values,
                scales,
                column_sums,
            } => values.len() + scales.len() * 4 + column_sums.len() * 4,
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
                    Panels::Bf16(v) => pack::bf16_value(v[index - lane + pack::bf16_lane(lane)]),
                    Panels::Int8 { values, scales } => {
                        let pairs = self.inner.div_ceil(2);
                        let row = (panel * pairs + i / 2) * INT8_PANEL_ROW;
                        values[row + pack::int8_lane(lane, i % 2)] as f32 * scales[o]
                    }
                    Panels::Bf16Pairs(v) => {
                        pack::bf16_value(v[pack::grouped_index(self.inner, 2, o, i)])
                    }
                    Panels::Int8Quads { values, scales, .. } => {
                        values[pack::grouped_index(self.inner, 4, o, i)] as f32 * scales[o]
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

/// The same for a bf16 output.
#[derive(Clone, Copy)]
struct SharedBits(*mut u16);
// SAFETY: as for `SharedOut`.
unsafe impl Send for SharedBits {}
unsafe impl Sync for SharedBits {}

/// Where a task sums its block: the product's output (`stride` n, first row and column 0),
/// or a scratch block of its own for a bf16 output.
#[derive(Clone, Copy)]
struct BlockOut {
    values: SharedOut,
    stride: usize,
    first_row: usize,
    first_column: usize,
}

impl BlockOut {
    /// The value of output row `r`, column `c` (in this task's block).
    fn at(self, r: usize, c: usize) -> *mut f32 {
        self.values
            .0
            .wrapping_add((r - self.first_row) * self.stride + c - self.first_column)
    }
}

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
    let (x, out) = (Activations::F32(x), Output::F32(out));
    matmul_into(x, m, weights, bias, epilogue, residual, out, isa)
}

/// The input of a product: f32, or bf16 bits (`half::bf16`'s, as a bf16 tensor holds them).
#[derive(Clone, Copy)]
pub enum Activations<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// Where a product writes: f32, or bf16 bits rounded as a product over bf16 pairs rounds its
/// input (each value to nearest even, denormals flushed where AVX-512 converts), so that a
/// bf16 output fed to such a product gives the bits that the f32 output would have given.
pub enum Output<'a> {
    F32(&'a mut [MaybeUninit<f32>]),
    Bf16(&'a mut [MaybeUninit<u16>]),
}

/// [`matmul_uninit`] from f32 or bf16 activations into f32 or bf16.
///
/// A bf16 input over weights packed as bf16 pairs (AVX-512) is read as it is: its rows already
/// are the pairs that the kernels would round an f32 input to. A bf16 output is summed into a
/// scratch block per task, which the epilogue and residual finish in cache before it is
/// rounded out: between the two products of a feed-forward layer, the intermediate then
/// crosses memory once, in bf16, instead of being written in f32, read, rounded and written
/// again (the two products give the same bits either way).
#[allow(clippy::too_many_arguments)]
pub fn matmul_into(
    x: Activations,
    m: usize,
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    out: Output,
    isa: Isa,
) {
    let (k, n) = (weights.inner, weights.outer);
    let x_len = match x {
        Activations::F32(x) => x.len(),
        Activations::Bf16(x) => x.len(),
    };
    let out_len = match &out {
        Output::F32(out) => out.len(),
        Output::Bf16(out) => out.len(),
    };
    assert!(x_len >= m * k && out_len >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n) && residual.is_none_or(|r| r.len() >= m * n));
    if m == 0 || n == 0 {
        return;
    }
    // bf16 rows that the weights' kernels cannot read as they are, widened to f32.
    let widened: Vec<f32>;
    let (x, bf16_rows) = match x {
        Activations::F32(x) => (x, None),
        Activations::Bf16(bits) => match weights.panels {
            Panels::Bf16Pairs(_) => (&[][..], Some(GroupedRows::bf16_bits(bits, m, k))),
            _ => {
                widened = bits[..m * k].iter().map(|&b| bf16_value(b)).collect();
                (&widened[..], None)
            }
        },
    };
    let panels = n.div_ceil(NR);
    // Blocks of rows as even as whole micro-panels allow (128 rows: 66 + 62, not 72 + 56),
    // so that tasks take about the same time.
    let rows_per_block = m.div_ceil(m.div_ceil(MC)).next_multiple_of(MR).min(MC);
    let row_blocks = m.div_ceil(rows_per_block);
    // Enough tasks to balance the cores; whole rows of panels when the rows alone give that.
    let target = rayon::current_num_threads() * if m == 1 { 8 } else { 4 };
    let mut panels_per_task = if row_blocks >= target {
        panels
    } else if m == 1 {
        // Whole groups of streams for the one-row kernel (`Block::row_groups`).
        panels.div_ceil(target).next_multiple_of(ROW_STREAMS)
    } else {
        (panels * row_blocks).div_ceil(target).max(1)
    };
    if isa.has_avx512() && panels_per_task > 1 {
        // The AVX-512 tile kernels take panels two at a time.
        panels_per_task = panels_per_task.next_multiple_of(2);
    }
    let column_tasks = panels.div_ceil(panels_per_task);
    let (shared, bf16_out) = match out {
        Output::F32(out) => (SharedOut(out.as_mut_ptr().cast::<f32>()), None),
        Output::Bf16(out) => (
            SharedOut(std::ptr::null_mut()),
            Some(SharedBits(out.as_mut_ptr().cast())),
        ),
    };
    let rows = match (bf16_rows, &weights.panels) {
        (Some(rows), _) => Rows::Grouped(rows),
        (None, Panels::Int8 { .. }) => Rows::Pairs(QuantizedRows::new(x, m, k, isa)),
        (None, Panels::Bf16Pairs(_)) => Rows::Grouped(GroupedRows::bf16_pairs(x, m, k, isa)),
        (None, Panels::Int8Quads { .. }) => Rows::Grouped(GroupedRows::u8_quads(x, m, k, isa)),
        (None, Panels::F32(_) | Panels::Bf16(_)) => Rows::Float,
    };
    let block_rows =
        |row_block: usize| row_block * rows_per_block..m.min((row_block + 1) * rows_per_block);
    let run = |packed_rows: Option<&[f32]>, packed_groups: Option<&[i32]>| {
        (0..row_blocks * column_tasks)
            .into_par_iter()
            .for_each(|task| {
                let (row_block, column_task) = (task / column_tasks, task % column_tasks);
                let first_panel = column_task * panels_per_task;
                let mut block = Block {
                    x,
                    packed_rows,
                    packed_groups,
                    k,
                    n,
                    rows: block_rows(row_block),
                    panels: first_panel..panels.min(first_panel + panels_per_task),
                    weights,
                    bias,
                    out: BlockOut {
                        values: shared,
                        stride: n,
                        first_row: 0,
                        first_column: 0,
                    },
                };
                match bf16_out {
                    None => {
                        block.run(&rows, isa);
                        block.finish(epilogue, residual, isa);
                    }
                    Some(bits) => SCRATCH.with(|scratch| {
                        let mut scratch = scratch.borrow_mut();
                        let columns = block.columns();
                        scratch.resize(block.rows.len() * columns.len(), 0.0);
                        block.out = BlockOut {
                            values: SharedOut(scratch.as_mut_ptr()),
                            stride: columns.len(),
                            first_row: block.rows.start,
                            first_column: columns.start,
                        };
                        block.run(&rows, isa);
                        block.finish(epilogue, residual, isa);
                        block.round_out(&scratch, bits, isa);
                    }),
                }
            })
    };
    // Several column tasks on the same rows (few rows: a short batch) would each pack them:
    // pack every block of rows once, up front, and share it. A product nested in one running
    // on this thread (a caller's own rayon work) finds the buffer taken and packs per task.
    if column_tasks > 1 && m > MR {
        let blocks = (0..row_blocks).map(block_rows);
        let groups = match &rows {
            Rows::Float => None,
            Rows::Pairs(pairs) => Some((&pairs.pairs[..], pairs.pairs_per_row, 2)),
            // The AVX-512 kernels read grouped rows in place (`GroupedA::InPlace`).
            Rows::Grouped(_) if isa.has_avx512() => None,
            Rows::Grouped(grouped) => Some((&grouped.values[..], grouped.per_row, weights.group())),
        };
        match groups {
            None if !matches!(rows, Rows::Float) => run(None, None),
            None => SHARED_ROWS.with(|buffer| match buffer.try_borrow_mut() {
                Ok(mut buffer) => {
                    let step = |rows| k_step(rows, k, KC);
                    pack_blocks(m, k, blocks, step, &mut buffer, |rows, k0, kc, region| {
                        pack_rows(x, k, rows, k0, kc, region, isa)
                    });
                    run(Some(&buffer), None)
                }
                Err(_) => run(None, None),
            }),
            Some((values, per_row, group)) => {
                SHARED_GROUPS.with(|buffer| match buffer.try_borrow_mut() {
                    Ok(mut buffer) => {
                        let step = |rows| group_step(rows, per_row, group);
                        pack_blocks(
                            m,
                            per_row,
                            blocks,
                            step,
                            &mut buffer,
                            |rows, g0, gc, region| {
                                pack_groups(values, per_row, rows, g0, gc, region)
                            },
                        );
                        run(None, Some(&buffer))
                    }
                    Err(_) => run(None, None),
                })
            }
        }
    } else {
        run(None, None)
    }
}

/// The activations as the weights' kernels read them.
enum Rows<'a> {
    /// f32, read in place or packed by `pack_rows`.
    Float,
    /// 16-bit integer pairs, for `Panels::Int8`.
    Pairs(QuantizedRows),
    /// bf16 pairs or u8 quads, for `Panels::Bf16Pairs` and `Panels::Int8Quads`.
    Grouped(GroupedRows<'a>),
}

/// Inputs per K block for a block of `rows` rows of `len` inputs: `max_block` at most, as
/// even as the blocks can be; one block for a single micro-panel of rows (see
/// `Block::run_float`). Float rows use `KC` columns, int8 rows `KC / 2` pairs, grouped rows
/// `KC / group` groups.
fn k_step(rows: usize, len: usize, max_block: usize) -> usize {
    let blocks = if rows <= MR {
        1
    } else {
        len.div_ceil(max_block).max(1)
    };
    len.div_ceil(blocks).max(1)
}

/// The most rows one product may take while each row's outputs stay bitwise what the row
/// gets in a product of its own (`m = 1`), for `inner` inputs: each output is then one chain
/// of fused multiply-adds over the inputs in order, whatever kernel runs it. A task of more
/// than one micro-panel of rows cuts inputs longer than `KC` into K blocks (`k_step`) and
/// adds their partial sums, which rounds differently; shorter inputs are one block for any
/// number of rows. What continuous batching needs to decode a sequence among others exactly
/// as alone.
pub fn rows_summed_as_alone(inner: usize) -> usize {
    if inner <= KC {
        usize::MAX
    } else {
        MR
    }
}

/// Every block of rows packed for every K block by `pack(rows, k0, kc, region)`, into
/// `buffer`: rows of `per_row` values (inputs, or 32-bit groups of them), K blocks of
/// `step(rows in the block)`; block `rows`, K block at `k0`, at offset
/// `rows.start · per_row + rows.len() · k0` (the blocks in order, each K block after the
/// last), the layout `Block` reads through `packed_rows` and `packed_groups`.
fn pack_blocks<T: Clone + Default + Send>(
    m: usize,
    per_row: usize,
    blocks: impl Iterator<Item = std::ops::Range<usize>>,
    step: impl Fn(usize) -> usize,
    buffer: &mut Vec<T>,
    pack: impl Fn(std::ops::Range<usize>, usize, usize, &mut [T]) + Sync,
) {
    if buffer.len() < m * per_row {
        buffer.resize(m * per_row, T::default());
    }
    let mut rest = &mut buffer[..m * per_row];
    let mut regions = Vec::new();
    for rows in blocks {
        let step = step(rows.len());
        for k0 in (0..per_row).step_by(step) {
            let kc = step.min(per_row - k0);
            let (region, tail) = std::mem::take(&mut rest).split_at_mut(rows.len() * kc);
            regions.push((rows.clone(), k0, kc, region));
            rest = tail;
        }
    }
    regions
        .into_par_iter()
        .for_each(|(rows, k0, kc, region)| pack(rows, k0, kc, region));
}

/// Groups per K block for a block of `rows` rows of `groups` groups of `group` inputs: as
/// [`k_step`] over `KC / group`, and at most [`INT8_QUADS_PER_SUM`].
fn group_step(rows: usize, groups: usize, group: usize) -> usize {
    k_step(rows, groups, KC / group).min(INT8_QUADS_PER_SUM)
}

thread_local! {
    /// Each worker's buffer for packed rows of `x`, kept between products: grown when a
    /// product needs more, never zeroed (every value read is written first).
    static A_PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's buffer for rows packed once and shared by a product's tasks.
    static SHARED_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for 32-bit groups of inputs: 16-bit pairs, bf16 pairs, u8 quads.
    static A_PACK_GROUPS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's buffer for groups packed once and shared by a product's tasks.
    static SHARED_GROUPS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker's f32 block for a product with a bf16 output.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Pairs of inputs summed in i32 before going to f32: 128 pairs of |16-bit · 8-bit| products
/// stay below 2^31 (128 · 2 · 32767 · 127 ≈ 1.07e9).
const INT8_PAIRS_PER_SUM: usize = 128;

/// Quads of inputs per K block at most, for u8 × i8 sums in i32: 16384 quads of
/// |255 · 127| products stay below 2^31 (65536 · 32385 ≈ 2.12e9).
const INT8_QUADS_PER_SUM: usize = 16384;

/// One task: `rows` × the columns of `panels`.
struct Block<'a> {
    x: &'a [f32],
    /// `x` packed for every block of rows (`pack_blocks`), when the product did that.
    packed_rows: Option<&'a [f32]>,
    /// The same for 32-bit groups of inputs.
    packed_groups: Option<&'a [i32]>,
    k: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    weights: &'a PackedWeights,
    bias: Option<&'a [f32]>,
    out: BlockOut,
}

/// The weights of a product over grouped layouts.
#[derive(Clone, Copy)]
enum Grouped<'a> {
    Bf16Pairs(&'a [u16]),
    Int8Quads {
        values: &'a [i8],
        scales: &'a [f32],
        column_sums: &'a [i32],
    },
}

impl Grouped<'_> {
    /// Inputs per 32-bit lane.
    fn group(&self) -> usize {
        match self {
            Grouped::Bf16Pairs(_) => 2,
            Grouped::Int8Quads { .. } => 4,
        }
    }
}

impl Block<'_> {
    fn columns(&self) -> std::ops::Range<usize> {
        self.panels.start * NR..self.n.min(self.panels.end * NR)
    }

    fn run(&self, rows: &Rows, isa: Isa) {
        match (&self.weights.panels, rows) {
            (Panels::F32(w), _) => {
                A_PACK.with(|a| self.run_float(FloatPanels::F32(w), &mut a.borrow_mut(), isa))
            }
            (Panels::Bf16(w), _) => {
                A_PACK.with(|a| self.run_float(FloatPanels::Bf16(w), &mut a.borrow_mut(), isa))
            }
            (Panels::Int8 { values, scales }, Rows::Pairs(rows)) => A_PACK_GROUPS
                .with(|a| self.run_int8(values, scales, rows, &mut a.borrow_mut(), isa)),
            (Panels::Bf16Pairs(values), Rows::Grouped(rows)) => A_PACK_GROUPS.with(|a| {
                let weights = Grouped::Bf16Pairs(values);
                self.run_grouped(weights, rows, &mut a.borrow_mut(), isa)
            }),
            (
                Panels::Int8Quads {
                    values,
                    scales,
                    column_sums,
                },
                Rows::Grouped(rows),
            ) => A_PACK_GROUPS.with(|a| {
                let weights = Grouped::Int8Quads {
                    values,
                    scales,
                    column_sums,
                };
                self.run_grouped(weights, rows, &mut a.borrow_mut(), isa)
            }),
            // `matmul` prepares the rows that the weights' layout needs.
            (Panels::Int8 { .. } | Panels::Bf16Pairs(_) | Panels::Int8Quads { .. }, _) => {}
        }
    }

    /// Panels the tile kernel takes at once from `panel` on: two on AVX-512 while two whole
    /// panels of this task remain, else one.
    fn width(&self, wide: bool, panel: usize) -> usize {
        match wide && panel + 2 <= self.panels.end && (panel + 2) * NR <= self.n {
            true => 2,
            false => 1,
        }
    }

    /// What the micro-panel `tile_index` of `tiles` asks L2 for while it works on `width`
    /// panels from `panel`: its share of the same K block of the panels after them, whose
    /// first is at `next` (`block_bytes` per panel, `panel_bytes` apart).
    #[allow(clippy::too_many_arguments)]
    fn ahead(
        &self,
        panel: usize,
        width: usize,
        next: *const u8,
        block_bytes: usize,
        panel_bytes: usize,
        tile_index: usize,
        tiles: usize,
    ) -> Ahead {
        // One panel, or two when two follow (the AVX-512 kernels' pairs).
        let count = self.panels.end.saturating_sub(panel + width).min(width);
        if count == 0 {
            return Ahead::NONE;
        }
        let lines = block_bytes.div_ceil(64) * count;
        let per_tile = lines.div_ceil(tiles);
        let first = tile_index * per_tile;
        Ahead {
            start: next,
            panel_bytes,
            panels_log2: (count == 2) as u32,
            first,
            lines: per_tile.min(lines.saturating_sub(first)),
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
        let tiles = self.rows.len().div_ceil(MR);
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
            let mut panel = self.panels.start;
            #[cfg(target_arch = "x86_64")]
            if single_row && isa.has_avx2() {
                // Reading one row is bound by memory: the AVX2 kernels keep up with it.
                let a = &self.x[self.rows.start * k..][..k];
                panel = self.row_groups(
                    |_, target| target,
                    |first_panel, targets| {
                        let b = first_panel * k * NR..(first_panel + targets.len()) * k * NR;
                        match &weights {
                            FloatPanels::F32(w) => avx2::row_f32(a, &w[b], targets),
                            FloatPanels::Bf16(w) => avx2::row_bf16(a, &w[b], targets),
                        }
                    },
                );
            }
            let first = block_index == 0;
            let panel_bytes = k * NR * weights.value_bytes();
            // Only f32 weights have an AVX-512 kernel in this layout.
            let wide = isa.has_avx512() && matches!(weights, FloatPanels::F32(_));
            while panel < self.panels.end {
                let width = self.width(wide, panel);
                let b_start = (panel * k + k0) * NR;
                let b = b_start..b_start + ((width - 1) * k + kc) * NR;
                let next = weights.byte_ptr(((panel + width) * k + k0) * NR);
                let block_bytes = kc * NR * weights.value_bytes();
                let mut offset = 0;
                for (tile_index, (r0, mr)) in micro_panels(self.rows.clone()).enumerate() {
                    let a = match single_row {
                        true => &self.x[r0 * k + k0..][..kc],
                        false => &a_pack[offset..offset + kc * mr],
                    };
                    offset += kc * mr;
                    let direct = self.direct_target(isa.has_avx2(), r0, panel, width, first);
                    let target = direct.unwrap_or_else(|| Target::tile(&mut tile));
                    // Each micro-panel of rows asks for its share of the next panel block.
                    let ahead = self.ahead(
                        panel,
                        width,
                        next,
                        block_bytes,
                        panel_bytes,
                        tile_index,
                        tiles,
                    );
                    let stride = k * NR;
                    match &weights {
                        FloatPanels::F32(w) => {
                            tile_f32(isa, mr, width, a, &w[b.clone()], stride, target, ahead)
                        }
                        FloatPanels::Bf16(w) => tile_bf16(isa, mr, a, &w[b.clone()], target, ahead),
                    }
                    if direct.is_none() {
                        self.store(&tile, r0, mr, panel, first, None);
                    }
                }
                panel += width;
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
        let pair_step = group_step(self.rows.len(), pairs, 2);
        if a_pack.len() < self.rows.len() * pair_step {
            a_pack.resize(self.rows.len() * pair_step, 0);
        }
        let mut tile = [[0f32; NR]; MR];
        for (block_index, p0) in (0..pairs).step_by(pair_step).enumerate() {
            let pc = pair_step.min(pairs - p0);
            // As in `run_float`: one row is read in place.
            let single_row = self.rows.len() == 1;
            let a_pack: &[i32] = match self.packed_groups {
                Some(all) => &all[self.rows.start * pairs + self.rows.len() * p0..],
                None => {
                    if !single_row {
                        let per_row = rows.pairs_per_row;
                        pack_groups(&rows.pairs, per_row, self.rows.clone(), p0, pc, a_pack);
                    }
                    a_pack
                }
            };
            let mut panels = self.panels.clone();
            #[cfg(target_arch = "x86_64")]
            if single_row && isa.has_avx2() {
                let r0 = self.rows.start;
                let a = &rows.pairs[r0 * rows.pairs_per_row..][..pairs];
                let scaled = |p: usize, target| Target {
                    scales: column_scales[p * NR..].as_ptr(),
                    row_scales: rows.scales[r0..].as_ptr(),
                    ..target
                };
                panels.start = self.row_groups(scaled, |first_panel, targets| {
                    let b = first_panel * pairs * INT8_PANEL_ROW
                        ..(first_panel + targets.len()) * pairs * INT8_PANEL_ROW;
                    avx2::row_int8(a, &weights[b], targets)
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
                    let direct =
                        self.direct_target(isa.has_avx2(), r0, panel, 1, first)
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

    /// As `run_float`, over grouped layouts (bf16 pairs, int8 quads) and the rows in the same
    /// groups. The AVX-512 kernels run them; other instruction sets run the portable kernels.
    fn run_grouped(&self, weights: Grouped, rows: &GroupedRows, a_pack: &mut Vec<i32>, isa: Isa) {
        let group = weights.group();
        let groups = self.k.div_ceil(group);
        let step = group_step(self.rows.len(), groups, group);
        if a_pack.len() < self.rows.len() * step {
            a_pack.resize(self.rows.len() * step, 0);
        }
        // Elements per panel and bytes per element.
        let panel_len = groups * NR * group;
        let value_bytes = match weights {
            Grouped::Bf16Pairs(_) => 2,
            Grouped::Int8Quads { .. } => 1,
        };
        let wide = isa.has_avx512();
        // The AVX-512 kernels read the rows where they are: packing them into micro-panels
        // first cost a pass over every product's input (5% of a bf16 BERT-base 32×128
        // forward pass on the 2-core Zen 5) and bought nothing, since a block of rows stays
        // in L2 either way and six rows are six prefetch streams.
        let in_place = wide;
        // Twelve rows per call for bf16 pairs: each panel row of weights loaded from L2
        // then serves twice the products. Same-binary A/B on the 2-core Zen 5: bf16
        // BERT-base 32×128 −3% to −6% time, a 4096×3072×768 product 768 → 861 GFLOP/s; int8
        // quads 1–3% slower, so they keep six.
        let panel_rows = match (in_place, weights) {
            (true, Grouped::Bf16Pairs(_)) => MR_WIDE,
            _ => MR,
        };
        let tiles = self.rows.len().div_ceil(panel_rows);
        let mut tile = [[0f32; NR]; MR];
        for (block_index, g0) in (0..groups).step_by(step).enumerate() {
            let gc = step.min(groups - g0);
            let first = block_index == 0;
            // Scales, zero points and (first K block only) column sums for rows from `r0`
            // and the columns of panel `p`: into a target of the kernel's own (`scaled`), or
            // into a stack tile that `store` scales (`corrected`).
            let corrected = |p: usize, r0: usize, target: Target| match weights {
                Grouped::Int8Quads { column_sums, .. } => Target {
                    zero_points: rows.zero_points[r0..].as_ptr(),
                    column_sums: match first {
                        true => column_sums[p * NR..].as_ptr(),
                        false => std::ptr::null(),
                    },
                    ..target
                },
                Grouped::Bf16Pairs(_) => target,
            };
            let scaled = |p: usize, r0: usize, target: Target| match weights {
                Grouped::Int8Quads { scales, .. } => Target {
                    scales: scales[p * NR..].as_ptr(),
                    row_scales: rows.scales[r0..].as_ptr(),
                    ..corrected(p, r0, target)
                },
                Grouped::Bf16Pairs(_) => target,
            };
            let single_row = self.rows.len() == 1;
            let a_pack: &[i32] = match self.packed_groups {
                Some(all) => &all[self.rows.start * groups + self.rows.len() * g0..],
                None => {
                    if !(single_row || in_place) {
                        pack_groups(&rows.values, groups, self.rows.clone(), g0, gc, a_pack);
                    }
                    a_pack
                }
            };
            let mut panel = self.panels.start;
            #[cfg(target_arch = "x86_64")]
            if single_row && wide && gc == groups {
                let r0 = self.rows.start;
                let a = &rows.values[r0 * rows.per_row..][..groups];
                panel = self.row_groups(
                    |p, target| scaled(p, r0, target),
                    |first_panel, targets| {
                        let b = first_panel * panel_len..(first_panel + targets.len()) * panel_len;
                        match weights {
                            Grouped::Bf16Pairs(w) => avx512::row_bf16(a, &w[b], targets),
                            Grouped::Int8Quads { values, .. } => {
                                avx512::row_int8(a, &values[b], targets)
                            }
                        }
                    },
                );
            }
            while panel < self.panels.end {
                let width = self.width(wide, panel);
                let b_start = (panel * groups + g0) * NR * group;
                let b = b_start..b_start + ((width - 1) * groups + gc) * NR * group;
                let next_index = ((panel + width) * groups + g0) * NR * group;
                let next = match weights {
                    Grouped::Bf16Pairs(w) => w.as_ptr().wrapping_add(next_index).cast(),
                    Grouped::Int8Quads { values, .. } => {
                        values.as_ptr().wrapping_add(next_index).cast()
                    }
                };
                let block_bytes = gc * NR * group * value_bytes;
                let mut offset = 0;
                let panels_of_rows = micro_panels_of(self.rows.clone(), panel_rows);
                for (tile_index, (r0, mr)) in panels_of_rows.enumerate() {
                    let a = match (in_place, single_row) {
                        (true, _) => GroupedA::InPlace {
                            values: &rows.values[r0 * rows.per_row + g0..],
                            lda: rows.per_row,
                        },
                        (false, true) => {
                            GroupedA::Packed(&rows.values[r0 * rows.per_row + g0..][..gc])
                        }
                        (false, false) => GroupedA::Packed(&a_pack[offset..offset + gc * mr]),
                    };
                    offset += gc * mr;
                    let direct = self
                        .direct_target(wide, r0, panel, width, first)
                        .map(|target| scaled(panel, r0, target));
                    let target =
                        direct.unwrap_or_else(|| corrected(panel, r0, Target::tile(&mut tile)));
                    let panel_bytes = panel_len * value_bytes;
                    let ahead = self.ahead(
                        panel,
                        width,
                        next,
                        block_bytes,
                        panel_bytes,
                        tile_index,
                        tiles,
                    );
                    let stride = panel_len;
                    let block = match weights {
                        Grouped::Bf16Pairs(w) => GroupedBlock::Bf16Pairs(&w[b.clone()]),
                        Grouped::Int8Quads { values, .. } => {
                            GroupedBlock::Int8Quads(&values[b.clone()])
                        }
                    };
                    if direct.is_some() {
                        tile_grouped(isa, mr, width, gc, a, block, stride, target, ahead);
                        continue;
                    }
                    // A panel cut short by the matrix's edge: through the stack tile, MR rows
                    // at a time.
                    for (r1, mr) in micro_panels_of(r0..r0 + mr, MR) {
                        let a = match a {
                            GroupedA::InPlace { values, lda } => GroupedA::InPlace {
                                values: &values[(r1 - r0) * lda..],
                                lda,
                            },
                            packed => packed,
                        };
                        let target = corrected(panel, r1, Target::tile(&mut tile));
                        tile_grouped(isa, mr, width, gc, a, block, stride, target, ahead);
                        let scales = match weights {
                            Grouped::Int8Quads { scales, .. } => {
                                Some((scales, &rows.scales[r1..r1 + mr]))
                            }
                            Grouped::Bf16Pairs(_) => None,
                        };
                        self.store(&tile, r1, mr, panel, first, scales);
                    }
                }
                panel += width;
            }
        }
    }

    /// Where a kernel writes `width` whole panels' rows itself (when `enabled`: the AVX2 or
    /// AVX-512 kernels): the output at (r0, panel), with the bias on the first K block. `None`
    /// for the portable kernels and for a panel cut short by the matrix's edge, which go
    /// through a tile and [`Block::store`].
    fn direct_target(
        &self,
        enabled: bool,
        r0: usize,
        panel: usize,
        width: usize,
        first: bool,
    ) -> Option<Target> {
        #[cfg(target_arch = "x86_64")]
        if enabled && (panel + width) * NR <= self.n {
            return Some(self.panel_target(r0, panel, first));
        }
        let _ = (enabled, r0, panel, width, first);
        None
    }

    /// The output at (r0, panel) of whole panels (`(panel + 1) · NR <= n`), for a kernel
    /// that stores its sums itself.
    #[cfg(target_arch = "x86_64")]
    fn panel_target(&self, r0: usize, panel: usize, first: bool) -> Target {
        let c0 = panel * NR;
        debug_assert!(c0 + NR <= self.n && self.rows.contains(&r0));
        Target {
            // Row r0 and column c0 are in this task's block (of the output or of its
            // scratch); the kernel writes up to MR rows × its panels' columns from there,
            // which no other task writes.
            c: self.out.at(r0, c0),
            ldc: self.out.stride,
            first,
            bias: self.bias.map_or(std::ptr::null(), |b| b[c0..].as_ptr()),
            ..Target::NONE
        }
    }

    /// This task's one row, on AVX2 or AVX-512: its whole panels in groups of up to
    /// [`ROW_STREAMS`], `kernel(first panel, one target per panel)` for each group, each
    /// target as `decorate(panel, target)` makes it (scales, zero points). Returns the first
    /// panel it left (the matrix's last panel when cut short), for the tile kernels.
    #[cfg(target_arch = "x86_64")]
    fn row_groups(
        &self,
        decorate: impl Fn(usize, Target) -> Target,
        mut kernel: impl FnMut(usize, &[Target]),
    ) -> usize {
        let r0 = self.rows.start;
        let whole_end = self.panels.end.min(self.n / NR);
        let mut panel = self.panels.start;
        while panel < whole_end {
            let count = (whole_end - panel).min(ROW_STREAMS);
            let targets: [Target; ROW_STREAMS] = std::array::from_fn(|j| {
                let p = panel + j.min(count - 1);
                decorate(p, self.panel_target(r0, p, true))
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
                    self.out.at(r0 + i, c0).cast::<MaybeUninit<f32>>(),
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

    /// This task's finished scratch block, rounded into the bf16 output `bits` (n wide).
    fn round_out(&self, scratch: &[f32], bits: SharedBits, isa: Isa) {
        let columns = self.columns();
        for r in self.rows.clone() {
            let row = &scratch[(r - self.rows.start) * columns.len()..][..columns.len()];
            // SAFETY: row r < m and `columns` (< n) lie in the output, in this task's block,
            // which no other task writes.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    bits.0
                        .add(r * self.n + columns.start)
                        .cast::<MaybeUninit<u16>>(),
                    columns.len(),
                )
            };
            pack::bf16_round_columns(isa, row, columns.start, self.n, out);
        }
    }

    /// The epilogue and the residual, on this task's block while it is still in cache.
    fn finish(&self, epilogue: Epilogue, residual: Option<&[f32]>, isa: Isa) {
        if epilogue == Epilogue::None && residual.is_none() {
            return;
        }
        let columns = self.columns();
        for r in self.rows.clone() {
            // SAFETY: as in `store`: this task's own block.
            let out = unsafe {
                std::slice::from_raw_parts_mut(self.out.at(r, columns.start), columns.len())
            };
            match epilogue {
                Epilogue::None => {}
                Epilogue::GeluErf => super::gelu_erf_on(isa, out),
                Epilogue::GeluTanh => super::gelu_tanh_on(isa, out),
            }
            if let Some(residual) = residual {
                let res = &residual[r * self.n + columns.start..r * self.n + columns.end];
                super::add_on(isa, out, res);
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
    micro_panels_of(rows, MR)
}

/// [`micro_panels`] of up to `most` rows each.
fn micro_panels_of(
    rows: std::ops::Range<usize>,
    most: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let len = rows.len();
    let short_tail = len > most && !len.is_multiple_of(most) && len % most <= 2;
    // Rows before the tail of two panels, when there is one.
    let even_end = if short_tail {
        rows.start + (len / most - 1) * most
    } else {
        rows.end
    };
    let tail = rows.end - even_end;
    let even = (rows.start..even_end)
        .step_by(most)
        .map(move |r0| (r0, most.min(even_end - r0)));
    let split = [
        (even_end, tail.div_ceil(2)),
        (even_end + tail.div_ceil(2), tail / 2),
    ];
    even.chain(split.into_iter().filter(move |_| short_tail))
}

/// Where a micro-kernel puts its mr × (NR · panels) results: `c[i·ldc + j] = acc · scale[j] +
/// bias[j]` on the first K block, `c[i·ldc + j] += acc · scale[j]` on the others (null
/// `scales` and `bias` are 1 and 0). Integer sums over u8 quads first lose their zero
/// point's share, `acc − zero_points[i] · column_sums[j]`, where `column_sums` is not null
/// (the first K block).
#[derive(Clone, Copy)]
struct Target {
    c: *mut f32,
    ldc: usize,
    first: bool,
    bias: *const f32,
    scales: *const f32,
    /// One scale per row (int8 products), or null.
    row_scales: *const f32,
    /// One zero point per row (int8 quads), or null.
    zero_points: *const i32,
    /// One sum of weights per column (int8 quads, first K block), or null.
    column_sums: *const i32,
}

impl Target {
    const NONE: Target = Target {
        c: std::ptr::null_mut(),
        ldc: 0,
        first: true,
        bias: std::ptr::null(),
        scales: std::ptr::null(),
        row_scales: std::ptr::null(),
        zero_points: std::ptr::null(),
        column_sums: std::ptr::null(),
    };

    /// The raw sums, into a tile on the stack (one panel wide).
    fn tile(tile: &mut [[f32; NR]; MR]) -> Self {
        Self {
            c: tile.as_mut_ptr().cast(),
            ldc: NR,
            ..Target::NONE
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

/// `$call` with the const `$m` = `$mr` rows: one of the literals listed, or else `$most`.
macro_rules! with_rows_of {
    ($mr:expr, $m:ident => $call:expr; $($rows:literal)*; $most:expr) => {
        match $mr {
            $($rows => {
                const $m: usize = $rows;
                $call
            })*
            _ => {
                const $m: usize = $most;
                $call
            }
        }
    };
}

/// `$call` with the const `$m` = `$mr` rows (1 ..= MR; more is MR).
macro_rules! with_rows {
    ($mr:expr, $m:ident => $call:expr) => {
        with_rows_of!($mr, $m => $call; 1 2 3 4 5; MR)
    };
}

/// `$call` with the const `$m` = `$mr` rows (1 ..= MR_WIDE; more is MR_WIDE).
#[cfg(target_arch = "x86_64")]
macro_rules! with_wide_rows {
    ($mr:expr, $m:ident => $call:expr) => {
        with_rows_of!($mr, $m => $call; 1 2 3 4 5 6 7 8 9 10 11; MR_WIDE)
    };
}

/// `avx512::$kernel::<M, P>(args)` for M = `$mr` rows (up to MR_WIDE) and P = `$width`
/// panels (1 or 2).
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_wide_tile {
    ($kernel:ident, $mr:expr, $width:expr, ($($arg:expr),*)) => {
        with_wide_rows!($mr, M => match $width {
            2 => avx512::$kernel::<M, 2>($($arg),*),
            _ => avx512::$kernel::<M, 1>($($arg),*),
        })
    };
}

/// `avx512::$kernel::<M, P>(args)` for M = `$mr` rows and P = `$width` panels (1 or 2).
#[cfg(target_arch = "x86_64")]
macro_rules! avx512_tile {
    ($kernel:ident, $mr:expr, $width:expr, ($($arg:expr),*)) => {
        with_rows!($mr, M => match $width {
            2 => avx512::$kernel::<M, 2>($($arg),*),
            _ => avx512::$kernel::<M, 1>($($arg),*),
        })
    };
}

/// The f32 micro-kernels: `mr` packed rows `a` × `width` panels of `b` (`stride` values
/// apart), by instruction set. Only AVX-512 takes two panels.
#[allow(clippy::too_many_arguments)]
fn tile_f32(
    isa: Isa,
    mr: usize,
    width: usize,
    a: &[f32],
    b: &[f32],
    stride: usize,
    target: Target,
    ahead: Ahead,
) {
    let kc = a.len() / mr;
    debug_assert!(b.len() == (width - 1) * stride + kc * NR);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ahead, stride);
    match isa {
        // SAFETY (each arm): the CPU has the instruction set's features (`Isa` is only
        // chosen when it does); `a` holds kc·mr values and `b` `width` panels of kc·NR values
        // `stride` apart, which is what the kernels read; a direct target holds mr rows of
        // the panels' columns, a tile target is one panel wide (width 1).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            let (a, b) = (a.as_ptr(), b.as_ptr());
            avx512_tile!(tile_f32, mr, width, (kc, a, b, stride, target, ahead))
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            with_rows!(mr, M => avx2::tile_f32::<M>(kc, a.as_ptr(), b.as_ptr(), target, ahead))
        },
        Isa::Portable => {
            with_rows!(mr, M => portable::tile::<M, f32>(a, b, target, |row, j| row[j]))
        }
    }
}

/// The bf16 micro-kernels over `Panels::Bf16` (one panel, f32 activations).
fn tile_bf16(isa: Isa, mr: usize, a: &[f32], b: &[u16], target: Target, ahead: Ahead) {
    debug_assert!(a.len() == (b.len() / NR) * mr);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ahead;
    if isa.has_avx2() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA; `a` holds kc·mr values and `b` kc·NR.
        return unsafe {
            let kc = b.len() / NR;
            with_rows!(mr, M => avx2::tile_bf16::<M>(kc, a.as_ptr(), b.as_ptr(), target, ahead))
        };
    }
    let load = |row: &[u16], j| pack::bf16_value(row[pack::bf16_lane(j)]);
    with_rows!(mr, M => portable::tile::<M, u16>(a, b, target, load))
}

/// The int8 micro-kernels over `Panels::Int8`: `Σ_q even·w_even + odd·w_odd` per row and
/// column, exact in i32 per [`INT8_PAIRS_PER_SUM`] pairs, then f32.
fn tile_int8(isa: Isa, mr: usize, a: &[i32], b: &[i8], target: Target) {
    debug_assert!(a.len() == (b.len() / INT8_PANEL_ROW) * mr);
    if isa.has_avx2() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA; the slices hold pc·mr pairs and pc panel rows,
        // which is what the kernel reads.
        return unsafe {
            let pc = b.len() / INT8_PANEL_ROW;
            with_rows!(mr, M => avx2::tile_int8::<M>(pc, a.as_ptr(), b.as_ptr(), target))
        };
    }
    with_rows!(mr, M => portable::tile_int8::<M>(a, b, target))
}

/// The weights of one micro-kernel call over a grouped layout.
#[derive(Clone, Copy)]
enum GroupedBlock<'a> {
    Bf16Pairs(&'a [u16]),
    Int8Quads(&'a [i8]),
}

/// `out = a · b` for a small product made inside a task of its own (attention's per-head
/// products), on this thread, by the AVX-512 `vdpbf16ps` tile kernels: `a` is `m` rows of
/// `groups` bf16 pairs, `lda` pairs apart (`bf16_pairs_row`); `b` is `panels` panels of
/// `groups` pair rows × `NR` columns, one pair per column (`bf16_column_pairs`); `out` gets
/// `m` rows of `panels · NR` f32 sums from `out`, `ldc` apart, overwritten. Only for an `isa`
/// with AVX-512 BF16 (panics otherwise: callers choose this product only there).
///
/// # Safety
/// `out` is valid for writes of `m` rows of `panels · NR` values, `ldc` apart, that no one
/// else reads or writes meanwhile. Panics if `a` or `b` is shorter than its shape says.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn bf16_pairs_product(
    isa: Isa,
    a: &[i32],
    lda: usize,
    m: usize,
    b: &[i32],
    groups: usize,
    panels: usize,
    out: *mut f32,
    ldc: usize,
) {
    assert!(isa.has_avx512(), "bf16 pair products need AVX-512 BF16");
    if m == 0 || panels == 0 {
        return;
    }
    assert!(lda >= groups && ldc >= panels * NR);
    assert!(a.len() >= (m - 1) * lda + groups && b.len() >= panels * groups * NR);
    #[cfg(target_arch = "x86_64")]
    for (r0, mr) in micro_panels_of(0..m, MR_WIDE) {
        let mut panel = 0;
        while panel < panels {
            let width = if panel + 2 <= panels { 2 } else { 1 };
            let target = Target {
                // SAFETY: rows r0 .. r0 + mr and columns panel·NR .. (panel + width)·NR are
                // the caller's to write.
                c: unsafe { out.add(r0 * ldc + panel * NR) },
                ldc,
                ..Target::NONE
            };
            // SAFETY: the CPU has the AVX-512 features (checked above); rows r0 .. r0 + mr of
            // `a` and panels panel .. panel + width of `b` lie in the slices (asserted above),
            // and the target holds mr rows of width·NR columns.
            unsafe {
                let a = a.as_ptr().add(r0 * lda);
                let b = b.as_ptr().add(panel * groups * NR).cast::<u16>();
                let stride = groups * NR * 2;
                avx512_wide_tile!(
                    tile_bf16,
                    mr,
                    width,
                    (groups, a, lda, b, stride, target, Ahead::NONE)
                )
            }
            panel += width;
        }
    }
}

/// The rows of one micro-kernel call over a grouped layout: `mr` rows of `gc` groups.
#[derive(Clone, Copy)]
enum GroupedA<'a> {
    /// Packed side by side (`pack_groups`), for the portable kernels.
    Packed(&'a [i32]),
    /// Where they are, `lda` groups apart, for the AVX-512 kernels.
    InPlace { values: &'a [i32], lda: usize },
}

/// The micro-kernels over grouped layouts: on AVX-512 `vdpbf16ps` (bf16 pairs) or
/// `vpdpbusd` (int8 quads and u8 rows), reading rows in place; else portable code over packed
/// rows, one panel at a time (for int8 the same integer sums).
#[allow(clippy::too_many_arguments)]
fn tile_grouped(
    isa: Isa,
    mr: usize,
    width: usize,
    gc: usize,
    a: GroupedA,
    b: GroupedBlock,
    stride: usize,
    target: Target,
    ahead: Ahead,
) {
    let a = match a {
        GroupedA::Packed(a) => {
            debug_assert!(a.len() == gc * mr);
            a
        }
        #[cfg(target_arch = "x86_64")]
        GroupedA::InPlace { values, lda } if isa.has_avx512() => {
            assert!(mr <= MR_WIDE && values.len() >= (mr - 1) * lda + gc);
            // SAFETY: as in `tile_f32`, with mr rows of gc groups `lda` apart in `values`
            // (checked above) and gc group rows per panel.
            return unsafe {
                let a = values.as_ptr();
                match b {
                    GroupedBlock::Bf16Pairs(b) => {
                        debug_assert!(b.len() == (width - 1) * stride + gc * NR * 2);
                        let b = b.as_ptr();
                        avx512_wide_tile!(
                            tile_bf16,
                            mr,
                            width,
                            (gc, a, lda, b, stride, target, ahead)
                        )
                    }
                    GroupedBlock::Int8Quads(b) => {
                        debug_assert!(b.len() == (width - 1) * stride + gc * NR * 4);
                        let b = b.as_ptr();
                        avx512_wide_tile!(
                            tile_int8,
                            mr,
                            width,
                            (gc, a, lda, b, stride, target, ahead)
                        )
                    }
                }
            };
        }
        GroupedA::InPlace { .. } => unreachable!("rows in place are for the AVX-512 kernels"),
    };
    let _ = (isa, width, stride, ahead);
    match b {
        GroupedBlock::Bf16Pairs(b) => {
            with_rows!(mr, M => portable::tile_bf16_pairs::<M>(a, b, target))
        }
        GroupedBlock::Int8Quads(b) => {
            with_rows!(mr, M => portable::tile_int8_quads::<M>(a, b, target))
        }
    }
}
