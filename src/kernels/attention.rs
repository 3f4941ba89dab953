//! Fused multi-head self-attention for encoders on the CPU: for each (batch, head) pair, in
//! parallel, `softmax(Q Kᵀ · scale + mask) V` with the head's rows read in place from the
//! packed (batch, seq, 3 · hidden) projections and the result written in place into a
//! (batch, seq, hidden) output. No head transposes, no (batch, heads, seq, seq) score tensor:
//! each task keeps one head's scores in a buffer of its own.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{f32_slice, softmax_row};

/// Attention over packed projections `qkv`: (batch, seq, 3 · heads · head_dim), query, key
/// and value side by side as one GEMM makes them. Returns (batch, seq, heads · head_dim).
/// `mask`: additive f32, (batch, 1, 1, seq), as `layers::padding_mask` makes it. On the CPU in
/// f32 this is one fused kernel; elsewhere the heads are split and `layers::attention` runs.
pub fn multi_head_attention(
    qkv: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let fused = super::use_kernels(qkv)
        && mask.is_none_or(|m| m.dims().len() == 4 && m.dim(2).ok() == Some(1));
    if !fused {
        return split_heads_attention(qkv, heads, mask, scale);
    }
    let mask = mask
        .map(|m| m.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let op = FusedAttention {
        heads,
        scale: scale as f32,
        mask,
    };
    qkv.contiguous()?.apply_op1_no_bwd(&op)
}

/// The portable path: each of q, k, v to (batch, heads, seq, d), attention, and back.
fn split_heads_attention(
    qkv: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (batch, len, packed) = qkv.dims3()?;
    let width = packed / 3;
    let split = |i: usize| -> candle_core::Result<Tensor> {
        qkv.narrow(D::Minus1, i * width, width)?
            .reshape((batch, len, heads, width / heads))?
            .transpose(1, 2)
    };
    let context = crate::layers::attention(&split(0)?, &split(1)?, &split(2)?, mask, scale)?;
    context.transpose(1, 2)?.reshape((batch, len, width))
}

struct FusedAttention {
    heads: usize,
    scale: f32,
    /// (batch, k_seq) additive mask, on the host.
    mask: Option<Vec<f32>>,
}

/// A pointer that parallel tasks write through, each to its own disjoint (rows, head) block.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `cpu_fwd`), and the buffer outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` places in. (A method, so closures capture the whole `Send` value,
    /// not its raw-pointer field.)
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(qkv, layout, self.name())?;
        let (batch, len, packed) = layout.shape().dims3()?;
        if packed % 3 != 0 || (packed / 3) % self.heads != 0 {
            candle_core::bail!(
                "fused-attention: packed width {packed} does not split into 3 x {} heads",
                self.heads
            )
        }
        let width = packed / 3;
        if let Some(mask) = &self.mask {
            if mask.len() != batch * len {
                candle_core::bail!(
                    "fused-attention: mask of {} values for {batch} x {len}",
                    mask.len()
                )
            }
        }
        let head_dim = width / self.heads;
        let no_mask = vec![0f32; len];
        let isa = super::isa::Isa::current();
        // Not zero-filled: the heads' products write every value (`read_dst` false).
        let mut out = Vec::<f32>::with_capacity(batch * len * width);
        let shared = SharedOut(out.as_mut_ptr());
        (0..batch * self.heads).into_par_iter().for_each_init(
            || vec![0f32; len * len],
            |scores, task| {
                let (b, h) = (task / self.heads, task % self.heads);
                let q = b * len * packed + h * head_dim;
                let (k, v) = (q + width, q + 2 * width);
                let out_offset = b * len * width + h * head_dim;
                // SAFETY: every pointer stays inside its buffer: rows b·len .. (b+1)·len, and
                // the head's d columns of the q, k or v part of a row. This task alone writes
                // the (rows, head) block of `out`.
                unsafe {
                    // scores (len × len) = scale · Q_bh (len × d) · K_bhᵀ (d × len)
                    gemm::gemm(
                        len,
                        len,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        qkv.as_ptr().add(q),
                        1,
                        packed as isize,
                        qkv.as_ptr().add(k),
                        packed as isize,
                        1,
                        0.0,
                        self.scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                let mask_row = match &self.mask {
                    Some(mask) => &mask[b * len..(b + 1) * len],
                    None => &no_mask[..],
                };
                for row in scores.chunks_mut(len) {
                    softmax_row(isa, row, mask_row, 1.0);
                }
                unsafe {
                    // out rows (len × d) = P (len × len) · V_bh (len × d)
                    gemm::gemm(
                        len,
                        head_dim,
                        len,
                        shared.at(out_offset),
                        1,
                        width as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        qkv.as_ptr().add(v),
                        1,
                        packed as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            },
        );
        // SAFETY: the (batch, head) tasks wrote every row of every head's columns.
        unsafe { out.set_len(batch * len * width) };
        Ok((CpuStorage::F32(out), Shape::from((batch, len, width))))
    }
}
