//! The blocking and threading of a product: its split into tasks of rows × panels, spread
//! over the cores, and in each task ([`Block`]) the K blocks, the micro-panels of rows, the
//! calls to the tile kernels (or to the one-row kernels) and the stores into the output.

use super::pack::{pack_groups, pack_rows, GroupedRows, QuantizedRows, INT8_PANEL_ROW};
use super::tile::{
    tile_bf16, tile_f32, tile_grouped, tile_int8, Ahead, GroupedA, GroupedBlock, Target, MR,
    MR_WIDE, ROW_STREAMS,
};
use super::weights::{PackedWeights, Panels};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use super::{pack, Epilogue, Isa, Output, NR};
use crate::kernels::{add_on, gelu_erf_on, gelu_tanh_on};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per task.
const MC: usize = 72;
/// Input columns per block. 768 (a 48 KiB f32 panel block, read from L2 by each micro-panel
/// of rows) makes the hidden size of base models one block, so each output tile is written
/// once instead of written and re-read per block. Against 384 (a panel block that fits the
/// 32 KiB L1), same-process paired runs on the 2-core Zen 3 VM: BERT-base 1×128 +2.4%, +7.1%,
/// +3.0%; BERT-base 32×128 +7.7%; MiniLM 32×128 +3.9%, +0.7% (256: −1.4%; 1024–1536 no better).
const KC: usize = 768;

/// Output rows written by parallel tasks, each to its own block of rows × columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint blocks (see `product`), and the buffer outlives them.
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

/// The product of [`matmul_into`](super::matmul_into) once its arguments are checked and its
/// activations are rows that the weights' kernels read: f32 rows `x` (m × k), or bf16 pairs
/// `bf16_rows` as they are. Cuts it into tasks of rows × panels, spread over the cores, each
/// run as a [`Block`].
#[allow(clippy::too_many_arguments)]
pub(super) fn product(
    x: &[f32],
    bf16_rows: Option<GroupedRows>,
    m: usize,
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    out: Output,
    isa: Isa,
) {
    let (k, n) = (weights.inner, weights.outer);
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
    pub(super) static SHARED_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The same for 32-bit groups of inputs: 16-bit pairs, bf16 pairs, u8 quads.
    static A_PACK_GROUPS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's buffer for groups packed once and shared by a product's tasks.
    pub(super) static SHARED_GROUPS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each worker's f32 block for a product with a bf16 output.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

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
                Epilogue::GeluErf => gelu_erf_on(isa, out),
                Epilogue::GeluTanh => gelu_tanh_on(isa, out),
            }
            if let Some(residual) = residual {
                let res = &residual[r * self.n + columns.start..r * self.n + columns.end];
                add_on(isa, out, res);
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
pub(super) fn micro_panels(rows: std::ops::Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    micro_panels_of(rows, MR)
}

/// [`micro_panels`] of up to `most` rows each.
pub(super) fn micro_panels_of(
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
