//! `y = x · Wᵀ + b (+ residual)` with `W` held in llama.cpp's quantized block formats (GGUF's
//! Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K), computed as llama.cpp's CPU backend computes
//! it: each row of activations is quantized per block to int8 (blocks of 32 beside the
//! 32-value types, blocks of 256 with sums beside the K-quants, see `activations`), and each
//! output is a sum over blocks of exact integer dot products, scaled by the two blocks'
//! scales in f32.
//!
//! [`QuantizedWeights`] keeps a matrix's GGUF blocks (row-major, (out, in) like
//! `torch.nn.Linear`, each output row `in / block` blocks), in aligned `StreamBuffer`s. A
//! fused projection ([`QuantizedWeights::stack`]: q/k/v, gate/up) may join parts of different
//! types, as a Q4_K_M file stores some of its matrices in Q6_K: the matrix is then a list of
//! row segments, each of one type. [`matmul`] is the product a model calls (a model wires it
//! where it wires [`super::gemm::matmul`]); [`QuantizedWeights::unpack_row`] serves tied
//! embeddings.
//!
//! Q4_0, Q5_0 and Q4_K rows are held in groups of 8, interleaved block by block
//! (`interleave`: the same bytes, moved at load, in place), the rows past a segment's last
//! whole group as the file holds them. Per block of one row, the row-by-row kernels spend about 12 operations (a
//! scale conversion, a nibble unpack, the dot product, a conversion and a multiply-add) on
//! 18 bytes, which bounds decoding by the cores rather than memory: ~24 GB/s on the 2-core
//! Zen 4 (896 → 4864) where its memory streams ~37. With a row per 32-bit lane the 8 rows
//! share the activations' loads and the per-block work: 31 GB/s there, 36 on 2048 → 8192,
//! and Llama-3.2-1B's Q4_0 decodes 1.15× as fast. Q4_K's row-by-row kernels already
//! streamed its larger matrices at about the memory's speed; its groups gain on the smaller
//! ones (2048 → 2048: 28 → 37 GB/s) and Llama-3.2-1B's Q4_K_M decodes 1.27× as fast. Q5_0,
//! most of Qwen2.5's and SmolLM2's Q4_K_M files, went from 13–18 to 22–24 GB/s (896 → 4864,
//! 4864 → 896) and from ~60 to ~170 GFLOP/s in prefill. A row's product is the same in a
//! group or out of one: the row-by-row kernels of these types sum in the group kernels'
//! order.
//!
//! Threads take runs of output rows, whole groups. Decoding (one row of activations) streams
//! every weight once, spread over the cores in runs of a few rows, read front to back. With
//! several rows of activations, each task takes a run of weight rows (held in L1/L2) and
//! the activations four rows at a time: a weight block is unpacked into registers once and
//! multiplied with four rows. That prefill is bound by the per-block work (a scale, an int →
//! float conversion and a multiply-add per block of 32 and row), not by memory, and on the
//! 2-core Zen 4 the row-by-row kernels run at 60–120 GFLOP/s, where the int8 GEMM's tiles
//! reach ~340 (512 × 896 → 4864, `examples/quant_gemv`); the groups of Q4_0 and Q4_K reach
//! ~420 (512 × 2048 → 8192).
//!
//! Layout: this file holds the API and the split into tasks; `activations` the quantized
//! activations; `quantize` f32 weights to blocks; `portable` the block formats and the scalar
//! kernels (the reference of the others); `interleave` the groups' layout; `x86` and
//! `x86_groups` the AVX2 and AVX-512 kernels of rows and of groups, written once over the
//! integer dot product that `avx2` (`vpmaddubsw`) and `avx512` (`vpdpbusd`) each give them,
//! reached only after the CPU check.

mod activations;
mod interleave;
mod portable;
mod quantize;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
#[macro_use]
mod x86;
#[cfg(target_arch = "x86_64")]
#[macro_use]
mod x86_groups;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use activations::{ActRow, Q8KRows, Q8Rows};
use rayon::prelude::*;
use std::ops::Range;

pub use super::isa::Isa;
use crate::error::{Error, Result};
use crate::loading::gguf::dequantize;
pub use crate::loading::gguf::GgmlType;
use crate::runtime::buffer::StreamBuffer;

/// Values per block of the 32-value types.
const QK: usize = 32;
/// Values per block of the K-quants.
const QK_K: usize = 256;

/// Bytes copied between two calls of [`QuantizedWeights::stack_copied`]'s callback.
pub const COPY_PIECE: usize = 4 << 20;

/// The block types that have kernels.
pub const KERNEL_TYPES: [GgmlType; 7] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Rows of activations a kernel call multiplies with each weight block it unpacks.
const GROUP: usize = 4;

/// The GGUF blocks of `weights` (`outer` × `inner`, row-major) in `ty`, row after row, bit for
/// bit as `gguf.quants.quantize` makes them: Q8_0, Q4_0 or Q4_1 (the types gguf-py quantizes
/// that have kernels).
pub fn quantize_blocks(
    ty: GgmlType,
    weights: &[f32],
    inner: usize,
    outer: usize,
) -> Result<Vec<u8>> {
    if !matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1) {
        return Err(Error::InvalidInput(format!(
            "weights are quantized here to Q8_0, Q4_0 or Q4_1, not {ty:?}"
        )));
    }
    let row_bytes = row_bytes(ty, inner)?;
    if inner.checked_mul(outer) != Some(weights.len()) {
        return Err(Error::InvalidInput(format!(
            "{} weights for a {outer} × {inner} matrix",
            weights.len()
        )));
    }
    // Runs of rows quantized on the threads, each into its own part of the output.
    const ROWS_PER_TASK: usize = 64;
    let mut bytes = vec![0u8; outer * row_bytes];
    bytes
        .par_chunks_mut((ROWS_PER_TASK * row_bytes).max(1))
        .zip(weights.par_chunks((ROWS_PER_TASK * inner).max(1)))
        .for_each(|(out, rows)| {
            let mut blocks = Vec::with_capacity(out.len());
            for row in rows.chunks_exact(inner.max(1)) {
                quantize::quantize_row(ty, row, &mut blocks);
            }
            out.copy_from_slice(&blocks);
        });
    Ok(bytes)
}

/// Rows of one block type: `rows` of the matrix, `row_bytes` each, in `bytes`: the first
/// `grouped` of them in groups of [`interleave::ROWS`] (see `interleave`), the rest row after
/// row.
#[derive(Debug, Clone)]
struct Segment {
    ty: GgmlType,
    rows: Range<usize>,
    row_bytes: usize,
    grouped: usize,
    bytes: StreamBuffer<u8>,
}

impl Segment {
    /// Row `row` (counted from the segment's first) as the file holds it: its blocks.
    fn row_blocks(&self, row: usize) -> std::borrow::Cow<'_, [u8]> {
        if row >= self.grouped {
            let start = row * self.row_bytes;
            return self.bytes[start..start + self.row_bytes].into();
        }
        let group_bytes = interleave::ROWS * self.row_bytes;
        let group = &self.bytes[row / interleave::ROWS * group_bytes..][..group_bytes];
        let mut blocks = vec![0; self.row_bytes];
        interleave::row_of_group(self.ty, group, row % interleave::ROWS, &mut blocks);
        blocks.into()
    }

    /// `out[o][r]` = the segment's row `rows.start + o` · activation row r, with `isa`'s
    /// kernels (`isa` within what the CPU has: see [`kernel_isa`]). A range that starts in
    /// the groups starts at a group.
    fn dot<const R: usize>(
        &self,
        isa: Isa,
        rows: Range<usize>,
        x: &[ActRow; R],
        out: &mut [[f32; R]],
    ) {
        let split = rows.end.min(self.grouped).max(rows.start);
        let (grouped_out, plain_out) = out.split_at_mut(split - rows.start);
        if split > rows.start {
            let w = &self.bytes[rows.start * self.row_bytes..split * self.row_bytes];
            dot_groups(isa, self.ty, w, self.row_bytes, x, grouped_out);
        }
        if rows.end > split {
            let w = &self.bytes[split * self.row_bytes..rows.end * self.row_bytes];
            dot_rows(isa, self.ty, w, self.row_bytes, x, plain_out);
        }
    }
}

/// A matrix's rows in one GGUF block type, borrowed (or reordered from a file): a part of
/// [`QuantizedWeights::stack`].
#[derive(Debug, Clone)]
pub struct Blocks<'a> {
    /// The block type.
    pub ty: GgmlType,
    /// Values per row (inputs).
    pub inner: usize,
    /// Rows (outputs).
    pub outer: usize,
    /// The rows' blocks, row after row, exactly.
    pub bytes: std::borrow::Cow<'a, [u8]>,
}

/// A weight matrix (out = `outer` rows × `inner` inputs) in GGUF block formats, one or more
/// row segments of one type each.
#[derive(Debug, Clone)]
pub struct QuantizedWeights {
    inner: usize,
    outer: usize,
    segments: Vec<Segment>,
}

impl QuantizedWeights {
    /// A matrix of `outer` rows × `inner` inputs from its GGUF data: `bytes` holds the rows'
    /// blocks of `ty`, row after row, exactly.
    pub fn from_blocks(ty: GgmlType, inner: usize, outer: usize, bytes: &[u8]) -> Result<Self> {
        Self::stack(&[Blocks {
            ty,
            inner,
            outer,
            bytes: bytes.into(),
        }])
    }

    /// `weights` (`outer` × `inner`, row-major) quantized to `ty` ([`quantize_blocks`]).
    pub fn quantize(ty: GgmlType, weights: &[f32], inner: usize, outer: usize) -> Result<Self> {
        let bytes = quantize_blocks(ty, weights, inner, outer)?;
        Self::from_blocks(ty, inner, outer, &bytes)
    }

    /// The matrices of `parts`, one below the other (their rows in order): a fused q/k/v or
    /// gate/up projection. The parts must have the same `inner`; their types may differ. Each
    /// run of parts of one type is copied once into one stream: no part is held on its own
    /// first (the allocations of parts dropped after the join would be left as holes in the
    /// shared regions of `StreamBuffer`).
    pub fn stack(parts: &[Blocks]) -> Result<Self> {
        Self::stack_copied(parts, &mut |_| {})
    }

    /// [`QuantizedWeights::stack`], calling `copied` with each piece of a part's bytes (up to
    /// [`COPY_PIECE`]) once it has been copied: a loader hands the pages of a mapped file back
    /// as it goes, so that a large matrix is not resident twice at the load's peak.
    pub fn stack_copied(parts: &[Blocks], copied: &mut dyn FnMut(&[u8])) -> Result<Self> {
        let Some(inner) = parts.first().map(|part| part.inner) else {
            return Err(Error::InvalidInput("no matrix to stack".into()));
        };
        if let Some(part) = parts.iter().find(|part| part.inner != inner) {
            return Err(Error::InvalidInput(format!(
                "matrices of {inner} and {} inputs cannot be stacked",
                part.inner
            )));
        }
        for part in parts {
            let row_bytes = row_bytes(part.ty, inner)?;
            let expected = part.outer.checked_mul(row_bytes);
            if expected != Some(part.bytes.len()) {
                return Err(Error::InvalidWeights(format!(
                    "{} bytes of {:?} blocks for a {} × {inner} matrix, which takes {}",
                    part.bytes.len(),
                    part.ty,
                    part.outer,
                    expected.map_or("more than fits in memory".to_string(), |n| n.to_string())
                )));
            }
        }
        let mut outer = 0;
        let mut segments = Vec::new();
        for run in parts.chunk_by(|a, b| a.ty == b.ty) {
            let ty = run[0].ty;
            let rows: usize = run.iter().map(|part| part.outer).sum();
            let row_bytes = row_bytes(ty, inner)?;
            let mut bytes = StreamBuffer::zeroed(run.iter().map(|part| part.bytes.len()).sum());
            let mut at = 0;
            for part in run {
                for piece in part.bytes.chunks(COPY_PIECE) {
                    bytes[at..at + piece.len()].copy_from_slice(piece);
                    at += piece.len();
                    copied(piece);
                }
            }
            let grouped = match interleave::interleaved(ty) {
                true => rows / interleave::ROWS * interleave::ROWS,
                false => 0,
            };
            interleave::interleave(ty, &mut bytes[..grouped * row_bytes], row_bytes);
            segments.push(Segment {
                ty,
                rows: outer..outer + rows,
                row_bytes,
                grouped,
                bytes,
            });
            outer += rows;
        }
        Ok(Self {
            inner,
            outer,
            segments,
        })
    }

    /// Input features (`in`).
    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Output features (`out`).
    pub fn outer(&self) -> usize {
        self.outer
    }

    /// Bytes of weights streamed per product (what one decoded token reads).
    pub fn bytes(&self) -> usize {
        self.segments.iter().map(|s| s.bytes.len()).sum()
    }

    /// The block type of each run of output rows, in order.
    pub fn segments(&self) -> Vec<(GgmlType, Range<usize>)> {
        self.segments
            .iter()
            .map(|s| (s.ty, s.rows.clone()))
            .collect()
    }

    /// Output row `o`, dequantized (`inner` values): what a tied embedding table reads for
    /// token `o`, so that the table is not held a second time beside its LM head.
    ///
    /// Panics if `o` is not below `outer` or `out` is not `inner` long.
    pub fn unpack_row(&self, o: usize, out: &mut [f32]) {
        assert!(o < self.outer && out.len() == self.inner);
        let segment = self
            .segments
            .iter()
            .find(|s| s.rows.contains(&o))
            .expect("the segments cover every row");
        let blocks = segment.row_blocks(o - segment.rows.start);
        dequantize(segment.ty, &blocks, out).expect("a row holds inner values of its type");
    }

    /// Whether some segment's type is a K-quant (its activations go in blocks of 256), and
    /// whether some is not (blocks of 32).
    fn activation_forms(&self) -> (bool, bool) {
        let k_quant =
            |s: &Segment| matches!(s.ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K);
        (
            self.segments.iter().any(|s| !k_quant(s)),
            self.segments.iter().any(k_quant),
        )
    }
}

/// Bytes of a row of `inner` values of `ty`, or an error if `ty` has no kernels or `inner`
/// is not a whole number of its blocks.
fn row_bytes(ty: GgmlType, inner: usize) -> Result<usize> {
    if !KERNEL_TYPES.contains(&ty) {
        return Err(Error::InvalidWeights(format!(
            "{ty:?} weights have no quantized kernels (these have: {KERNEL_TYPES:?})"
        )));
    }
    let (block, block_bytes) = ty.block();
    if !inner.is_multiple_of(block) {
        return Err(Error::InvalidWeights(format!(
            "rows of {inner} values are not whole {ty:?} blocks of {block}"
        )));
    }
    (inner / block).checked_mul(block_bytes).ok_or_else(|| {
        Error::InvalidWeights(format!(
            "rows of {inner} {ty:?} values take more bytes than fit in memory"
        ))
    })
}

/// The instruction set the kernels run for `isa`: the best within it that the CPU has, the
/// x86 kernels needing F16C too (for the blocks' f16 scales), which every AVX2 CPU has.
fn kernel_isa(isa: Isa) -> Isa {
    let isa = isa.min(Isa::of_cpu());
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && !std::arch::is_x86_feature_detected!("f16c") {
        return Isa::Portable;
    }
    isa
}

/// The output, written by parallel tasks at disjoint (row, column) places.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint outputs (each its own output columns), and the buffer
// outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Where output `index` goes (a method, so that closures capture the whole `SharedOut`).
    fn at(self, index: usize) -> *mut f32 {
        self.0.wrapping_add(index)
    }
}

/// `out (m × outer) = x (m × inner) · Wᵀ + bias + residual`, all row-major, with `isa`'s
/// kernels (or the best below it that the CPU has).
///
/// Row i of the result does not depend on the other rows: it is bit for bit the product of
/// row i alone.
///
/// Panics if a slice is shorter than its shape says: callers check shapes first.
pub fn matmul(
    x: &[f32],
    m: usize,
    weights: &QuantizedWeights,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: &mut [f32],
    isa: Isa,
) {
    let (k, n) = (weights.inner, weights.outer);
    assert!(x.len() >= m * k && out.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n) && residual.is_none_or(|r| r.len() >= m * n));
    if m == 0 || n == 0 {
        return;
    }
    let isa = kernel_isa(isa);
    let (blocks32, blocks256) = weights.activation_forms();
    let q8 = if blocks32 {
        Q8Rows::quantize(x, m, k, isa)
    } else {
        Q8Rows::default()
    };
    let q8k = if blocks256 {
        Q8KRows::quantize(x, m, k, isa)
    } else {
        Q8KRows::default()
    };
    let act_row = |r: usize| ActRow {
        q8: if blocks32 {
            q8.row(r)
        } else {
            Default::default()
        },
        q8k: if blocks256 {
            q8k.row(r)
        } else {
            Default::default()
        },
    };
    let acts: Vec<ActRow> = (0..m).map(act_row).collect();

    let threads = rayon::current_num_threads();
    let tasks: Vec<(&Segment, Range<usize>)> = weights
        .segments
        .iter()
        .flat_map(|segment| {
            runs(segment.rows.len(), n, m, threads).map(move |run| {
                (
                    segment,
                    run.start + segment.rows.start..run.end + segment.rows.start,
                )
            })
        })
        .collect();
    let shared = SharedOut(out.as_mut_ptr());
    let task = |(segment, rows): &(&Segment, Range<usize>)| {
        let local = rows.start - segment.rows.start..rows.end - segment.rows.start;
        let mut sums = [[0f32; GROUP]; MAX_RUN];
        let sums = &mut sums[..rows.len()];
        let store = |r: usize, o: usize, value: f32| {
            let mut value = value;
            if let Some(bias) = bias {
                value += bias[o];
            }
            if let Some(residual) = residual {
                value += residual[r * n + o];
            }
            // SAFETY: r < m and o < n, inside `out` (checked above); this task alone writes
            // output column o.
            unsafe { *shared.at(r * n + o) = value };
        };
        let mut r0 = 0;
        while r0 < m {
            if m - r0 >= GROUP {
                let group: &[ActRow; GROUP] = acts[r0..r0 + GROUP].try_into().expect("GROUP rows");
                segment.dot(isa, local.clone(), group, sums);
                for (o, sums) in rows.clone().zip(sums.iter()) {
                    for (i, &sum) in sums.iter().enumerate() {
                        store(r0 + i, o, sum);
                    }
                }
                r0 += GROUP;
            } else {
                let mut single = [[0f32; 1]; MAX_RUN];
                let single = &mut single[..rows.len()];
                segment.dot(isa, local.clone(), &[acts[r0]], single);
                for (o, sum) in rows.clone().zip(single.iter()) {
                    store(r0, o, sum[0]);
                }
                r0 += 1;
            }
        }
    };
    if tasks.len() == 1 {
        task(&tasks[0]);
    } else {
        tasks.par_iter().for_each(task);
    }
}

/// Rows a task takes at most (the length of its sums on the stack).
const MAX_RUN: usize = 512;

/// The runs of a segment's `rows` (of a matrix of `n`) that tasks take, each whole groups of
/// [`interleave::ROWS`] (but the last), for `m` rows of activations on `threads` threads.
/// Decoding: about 8 runs per thread over the matrix (so that one slowed thread does not
/// hold the rest), as even as whole groups allow: runs of a fixed length would leave one
/// thread a run more than the other where the count does not divide evenly (SmolLM2's 960
/// rows in runs of 64: 15 runs). With more rows of activations, runs of two groups, short
/// enough that they stay in L1/L2 while every group of activation rows passes over them.
fn runs(rows: usize, n: usize, m: usize, threads: usize) -> impl Iterator<Item = Range<usize>> {
    let groups = rows.div_ceil(interleave::ROWS);
    let count = if m == 1 {
        (groups * threads * 8).div_ceil(n.div_ceil(interleave::ROWS))
    } else {
        groups.div_ceil(2)
    };
    let count = count
        .max(groups.div_ceil(MAX_RUN / interleave::ROWS))
        .clamp(1, groups.max(1));
    let end = move |i: usize| (i * groups / count * interleave::ROWS).min(rows);
    (0..count).map(move |i| end(i)..end(i + 1))
}

/// `out[o][r]` = weight row o (of `w`, `row_bytes` each, of type `ty`) · activation row r,
/// with `isa`'s kernels (`isa` within what the CPU has: see [`kernel_isa`]).
fn dot_rows<const R: usize>(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[ActRow; R],
    out: &mut [[f32; R]],
) {
    match isa {
        // SAFETY: `kernel_isa` chose AVX-512 only on a CPU with its features and F16C.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::dot_rows(ty, w, row_bytes, x, out) },
        // SAFETY: as above, for AVX2.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dot_rows(ty, w, row_bytes, x, out) },
        Isa::Portable => portable::dot_rows(ty, w, row_bytes, x, out),
    }
}

/// [`dot_rows`] for `w` holding whole groups of rows in the interleaved layout.
fn dot_groups<const R: usize>(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    x: &[ActRow; R],
    out: &mut [[f32; R]],
) {
    match isa {
        // SAFETY: as in `dot_rows`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::dot_groups(ty, w, row_bytes, x, out) },
        // SAFETY: as in `dot_rows`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::dot_groups(ty, w, row_bytes, x, out) },
        Isa::Portable => portable::dot_groups(ty, w, row_bytes, x, out),
    }
}
