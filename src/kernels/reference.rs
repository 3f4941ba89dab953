//! The hot paths in candle's own ops: what the kernels fall back to on other devices and
//! dtypes, and with `FERROFORMERS_KERNELS=reference`.

use candle_core::{DType, Tensor};

/// Scaled dot-product attention.
///
/// `q`, `k`, `v`: (batch, heads, seq, head_dim). `mask`: additive, f32, broadcastable to
/// (batch, heads, q_seq, k_seq), 0 where attention is allowed and a large negative value where
/// it is not. The softmax runs in f32.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let dtype = q.dtype();
    // (batch, heads, q_seq, k_seq)
    let scores = q
        .contiguous()?
        .matmul(&k.t()?.contiguous()?)?
        .to_dtype(DType::F32)?;
    let probs = super::scaled_masked_softmax(&scores, scale, mask)?.to_dtype(dtype)?;
    // (batch, heads, q_seq, head_dim)
    probs.matmul(&v.contiguous()?)
}
