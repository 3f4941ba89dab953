//! Fused multi-head self-attention for encoders on the CPU: for each (batch, head) pair, in
//! parallel, `softmax(Q Kᵀ · scale + mask) V` with the head's rows read in place from the
//! (batch, seq, heads · head_dim) projections and the result written in place into the same
//! layout. No head transposes, no (batch, heads, seq, seq) score tensor: each task keeps one
//! head's scores in a buffer of its own.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::softmax_row;

/// Attention over `q`, `k`, `v` of shape (batch, seq, heads · head_dim), returning that shape.
/// `mask`: additive f32, (batch, 1, 1, k_seq), as `layers::padding_mask` makes it. On the CPU in
/// f32 this is one fused kernel; elsewhere the heads are split and `layers::attention` runs.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let fused = super::use_kernels(q)
        && mask.is_none_or(|m| m.dims().len() == 4 && m.dim(2).ok() == Some(1));
    if !fused {
        return split_heads_attention(q, k, v, heads, mask, scale);
    }
    let mask = mask
        .map(|m| m.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let op = FusedAttention {
        heads,
        scale: scale as f32,
        mask,
    };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

/// The portable path: (batch, seq, heads · d) -> (batch, heads, seq, d), attention, and back.
fn split_heads_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (batch, q_len, width) = q.dims3()?;
    let split = |x: &Tensor| -> candle_core::Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, heads, width / heads))?.transpose(1, 2)
    };
    let context = crate::layers::attention(&split(q)?, &split(k)?, &split(v)?, mask, scale)?;
    context.transpose(1, 2)?.reshape((batch, q_len, width))
}

/// The contiguous f32 data of one input.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("fused-attention: contiguous f32 inputs only"),
    }
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

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            slice(q, q_layout)?,
            slice(k, k_layout)?,
            slice(v, v_layout)?,
        );
        let (batch, q_len, width) = q_layout.shape().dims3()?;
        let (k_batch, k_len, k_width) = k_layout.shape().dims3()?;
        if k_batch != batch
            || k_width != width
            || v_layout.shape() != k_layout.shape()
            || width % self.heads != 0
        {
            candle_core::bail!(
                "fused-attention: q {:?}, k {:?}, v {:?} do not fit",
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape()
            )
        }
        if let Some(mask) = &self.mask {
            if mask.len() != batch * k_len {
                candle_core::bail!(
                    "fused-attention: mask of {} values for {batch} x {k_len}",
                    mask.len()
                )
            }
        }
        let head_dim = width / self.heads;
        let no_mask = vec![0f32; k_len];
        let mut out = vec![0f32; batch * q_len * width];
        let shared = SharedOut(out.as_mut_ptr());
        (0..batch * self.heads).into_par_iter().for_each_init(
            || vec![0f32; q_len * k_len],
            |scores, task| {
                let (b, h) = (task / self.heads, task % self.heads);
                let offset_q = b * q_len * width + h * head_dim;
                let offset_kv = b * k_len * width + h * head_dim;
                // SAFETY: every pointer stays inside its buffer: rows b·len .. (b+1)·len and
                // columns h·d .. (h+1)·d of (len, width) matrices. This task alone writes
                // those elements of `out`.
                unsafe {
                    // scores (q_len × k_len) = scale · Q_bh (q_len × d) · K_bhᵀ (d × k_len)
                    gemm::gemm(
                        q_len,
                        k_len,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        k_len as isize,
                        false,
                        q.as_ptr().add(offset_q),
                        1,
                        width as isize,
                        k.as_ptr().add(offset_kv),
                        width as isize,
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
                    Some(mask) => &mask[b * k_len..(b + 1) * k_len],
                    None => &no_mask[..],
                };
                for row in scores.chunks_mut(k_len) {
                    softmax_row(row, mask_row, 1.0);
                }
                unsafe {
                    // out rows (q_len × d) = P (q_len × k_len) · V_bh (k_len × d)
                    gemm::gemm(
                        q_len,
                        head_dim,
                        k_len,
                        shared.at(offset_q),
                        1,
                        width as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        k_len as isize,
                        v.as_ptr().add(offset_kv),
                        1,
                        width as isize,
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
        Ok((CpuStorage::F32(out), q_layout.shape().clone()))
    }
}
