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
//! Layout: this file holds the API; `weights` the packed weights and their layouts; `pack`
//! the packing of weights and rows; `block` the split of a product into tasks, the blocking
//! of each task and the stores it makes; `tile` the micro-kernel dispatchers, which check the
//! [`Isa`] first, and the stack tile for panels cut short by the matrix's edge; `portable`,
//! `avx2` and `avx512` the micro-kernels of each instruction set, reached only after that
//! check (the tile kernels through `tile`, the one-row kernels from `block`).

use pack::GroupedRows;
use std::mem::MaybeUninit;
use weights::Panels;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod block;
mod pack;
mod portable;
#[cfg(test)]
pub(crate) mod tests;
mod tile;
mod weights;

pub use block::rows_summed_as_alone;
pub use pack::bf16_bits;
pub(crate) use pack::{bf16_column_pairs, bf16_pairs_row, bf16_value};
pub(crate) use tile::bf16_pairs_product;
pub use weights::{PackedWeights, WeightFormat};

/// Output columns per panel: two AVX2 registers, one AVX-512 register.
pub const NR: usize = 16;

/// What happens to each output after bias: nothing, exact GELU, or GELU's tanh approximation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    GeluErf,
    GeluTanh,
}

pub use super::isa::Isa;

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
    block::product(x, bf16_rows, m, weights, bias, epilogue, residual, out, isa)
}
