//! The small steps of a Llama-style decoder block, each one pass over host memory: RMSNorm,
//! the split of the fused q/k/v projection into heads with Qwen3's per-head norms and the
//! rotation, and SwiGLU. A decoding step runs each of them on one row; as candle ops they were
//! some forty tensors (and allocations) per layer, a sixth of a Qwen2.5-0.5B step on 2 cores.
//! Other devices, dtypes and the reference mode run the same formulas as candle ops.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{exp, f32_slice, isa, map_rows, math, use_kernels, CHUNK};

/// `weight · x / sqrt(mean(x²) + eps)` over the last dimension of `x`, in f32 (`LlamaRMSNorm`:
/// the variance in f32, then the weight).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L52>
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    if use_kernels(&x) && weight.dtype() == DType::F32 {
        return x.contiguous()?.apply_op2_no_bwd(weight, &RmsNorm { eps });
    }
    let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_mul(&(variance + f64::from(eps))?.sqrt()?.recip()?)?;
    normed.broadcast_mul(weight)
}

struct RmsNorm {
    eps: f32,
}

dispatch! {
    /// RMSNorm of one row.
    fn rms_norm_row(isa: Isa, out: &mut [MaybeUninit<f32>], row: &[f32], weight: &[f32], eps: f32) {
        let inverse = math::inverse_rms(row, eps);
        for ((out, &x), &w) in out.iter_mut().zip(row).zip(weight) {
            out.write(x * inverse * w);
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, weight) = (
            f32_slice(x, x_layout, self.name())?,
            f32_slice(weight, weight_layout, self.name())?,
        );
        let size = x_layout.shape().dims().last().copied().unwrap_or(0);
        if size == 0 || weight.len() != size {
            candle_core::bail!(
                "rms-norm: input {:?} against weight {:?}",
                x_layout.shape(),
                weight_layout.shape()
            )
        }
        let isa = isa::Isa::current();
        // SAFETY: `rms_norm_row` writes each of its `size` outputs (the weight is `size`
        // long, checked above).
        let out = unsafe {
            map_rows(x, size, size, |out, row| {
                rms_norm_row(isa, out, row, weight, self.eps)
            })
        };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// `silu(gate) · up` of a stacked (…, 2·width) projection whose first half is the gate:
/// the Llama MLP's `act_fn(gate_proj(x)) * up_proj(x)`, (…, width).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L153>
pub fn swiglu(gate_up: &Tensor) -> candle_core::Result<Tensor> {
    let last = gate_up.rank() - 1;
    let width = gate_up.dim(last)? / 2;
    if use_kernels(gate_up) {
        return gate_up.contiguous()?.apply_op1_no_bwd(&Swiglu { width });
    }
    let gate = gate_up.narrow(last, 0, width)?;
    let up = gate_up.narrow(last, width, width)?;
    gate.silu()?.mul(&up)
}

struct Swiglu {
    width: usize,
}

dispatch! {
    /// `out = silu(gate) · up`, with `silu(g) = g / (1 + e^−g)` as candle and PyTorch write it.
    fn swiglu_row(isa: Isa, out: &mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) {
        for ((out, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            out.write(g / (1.0 + exp(-g)) * u);
        }
    }
}

impl CustomOp1 for Swiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let width = self.width;
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if width > 0 && *last == 2 * width => *last = width,
            _ => candle_core::bail!("swiglu: {:?} is not two halves", layout.shape()),
        }
        let isa = isa::Isa::current();
        // SAFETY: `swiglu_row` writes each of its `width` outputs (its gate and up halves are
        // `width` long); `width` is not 0 (checked above).
        let out = unsafe {
            map_rows(x, 2 * width, width, |out, row| {
                let (gate, up) = row.split_at(width);
                swiglu_row(isa, out, gate, up)
            })
        };
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// The heads of a fused q/k/v projection, ready for attention.
pub struct RotatedHeads {
    /// (rows, heads, len, head_dim), normed and rotated.
    pub q: Tensor,
    /// (rows, kv_heads, len, head_dim), normed and rotated.
    pub k: Tensor,
    /// (rows, kv_heads, len, head_dim).
    pub v: Tensor,
}

/// Per-head RMSNorm weights of q and of k (Qwen3), with their epsilon.
#[derive(Debug, Clone)]
pub struct HeadNorms {
    /// `q_norm.weight`, f32 (head_dim).
    q: Tensor,
    /// `k_norm.weight`, f32 (head_dim).
    k: Tensor,
    /// Their `rms_norm_eps`.
    eps: f32,
    /// Both weights on the host, for the CPU kernel: read once here, not at every forward.
    host: Arc<(Vec<f32>, Vec<f32>)>,
}

impl HeadNorms {
    /// The norms of `q_norm.weight` and `k_norm.weight` (head_dim each), with `eps`.
    pub fn new(q: &Tensor, k: &Tensor, eps: f32) -> candle_core::Result<Self> {
        let (q, k) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?);
        let host = Arc::new((q.to_vec1::<f32>()?, k.to_vec1::<f32>()?));
        Ok(Self { q, k, eps, host })
    }
}

/// Split `qkv` (rows, len, (heads + 2·kv_heads) · head_dim), q's heads then k's then v's, into
/// heads; norm each head of q and k where `norms` are given (Qwen3), then rotate q and k:
/// `x · cos + rotate_half(x) · sin` with `rotate_half(x) = cat(−x₂, x₁)`. `cos` and `sin`:
/// (rows, 1, len, head_dim).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L76>
pub fn rotated_heads(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
    kv_heads: usize,
    norms: Option<&HeadNorms>,
) -> candle_core::Result<RotatedHeads> {
    let (rows, len, width) = qkv.dims3()?;
    let all = heads + 2 * kv_heads;
    if all == 0 || !width.is_multiple_of(all) {
        candle_core::bail!("rotated-heads: {width} columns are not {all} heads")
    }
    let d = width / all;
    if use_kernels(qkv) {
        let all_heads = qkv.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &RotateHeads {
                heads,
                kv_heads,
                norms: norms.cloned(),
            },
        )?;
        return Ok(RotatedHeads {
            q: all_heads.narrow(1, 0, heads)?,
            k: all_heads.narrow(1, heads, kv_heads)?,
            v: all_heads.narrow(1, heads + kv_heads, kv_heads)?,
        });
    }
    let split = |start: usize, n: usize, norm: Option<&Tensor>| -> candle_core::Result<Tensor> {
        let mut x = qkv
            .narrow(2, start * d, n * d)?
            .reshape((rows, len, n, d))?;
        if let (Some(weight), Some(norms)) = (norm, norms) {
            x = rms_norm(&x, weight, norms.eps)?;
        }
        x.transpose(1, 2)?.contiguous()
    };
    let rotate = |x: &Tensor| -> candle_core::Result<Tensor> {
        let half = d / 2;
        let x1 = x.narrow(3, 0, half)?;
        let x2 = x.narrow(3, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        x.broadcast_mul(cos)?.add(&rotated.broadcast_mul(sin)?)
    };
    Ok(RotatedHeads {
        q: rotate(&split(0, heads, norms.map(|n| &n.q))?)?,
        k: rotate(&split(heads, kv_heads, norms.map(|n| &n.k))?)?,
        v: split(heads + kv_heads, kv_heads, None)?,
    })
}

struct RotateHeads {
    heads: usize,
    kv_heads: usize,
    /// Qwen3's per-head norms of q and k.
    norms: Option<HeadNorms>,
}

dispatch! {
    /// One head's row: normed with `norm` where given, then rotated.
    fn rotate_row(
        isa: Isa,
        out: &mut [f32],
        row: &[f32],
        cos: &[f32],
        sin: &[f32],
        norm: Option<(&[f32], f32)>
    ) {
        let half = row.len() / 2;
        let mut normed = [0f32; 512];
        let row = match norm {
            Some((weight, eps)) if row.len() <= normed.len() => {
                let inverse = math::inverse_rms(row, eps);
                for ((n, &x), &w) in normed.iter_mut().zip(row).zip(weight) {
                    *n = x * inverse * w;
                }
                &normed[..row.len()]
            }
            _ => row,
        };
        let (x1, x2) = row.split_at(half);
        let (out1, out2) = out.split_at_mut(half);
        let (cos1, cos2) = cos.split_at(half);
        let (sin1, sin2) = sin.split_at(half);
        for i in 0..half {
            out1[i] = x1[i] * cos1[i] + -x2[i] * sin1[i];
            out2[i] = x2[i] * cos2[i] + x1[i] * sin2[i];
        }
    }
}

impl CustomOp3 for RotateHeads {
    fn name(&self) -> &'static str {
        "rotated-heads"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_layout: &Layout,
        cos: &CpuStorage,
        cos_layout: &Layout,
        sin: &CpuStorage,
        sin_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (qkv, cos, sin) = (
            f32_slice(qkv, qkv_layout, self.name())?,
            f32_slice(cos, cos_layout, self.name())?,
            f32_slice(sin, sin_layout, self.name())?,
        );
        let (rows, len, width) = qkv_layout.shape().dims3()?;
        let all = self.heads + 2 * self.kv_heads;
        let d = width / all;
        let fits = cos_layout.shape().dims() == [rows, 1, len, d]
            && sin_layout.shape() == cos_layout.shape()
            && d.is_multiple_of(2)
            && d <= 512
            && self
                .norms
                .as_ref()
                .is_none_or(|norms| norms.host.0.len() == d && norms.host.1.len() == d);
        if !fits {
            candle_core::bail!(
                "rotated-heads: qkv {:?}, cos {:?}, sin {:?} do not fit",
                qkv_layout.shape(),
                cos_layout.shape(),
                sin_layout.shape()
            )
        }
        let isa = isa::Isa::current();
        let mut out = vec![0f32; rows * all * len * d];
        // One task per (row, head): its len · d outputs.
        out.par_chunks_mut(len * d)
            .with_min_len((CHUNK / (len * d)).max(1))
            .enumerate()
            .for_each(|(task, out)| {
                let (row, head) = (task / all, task % all);
                let norm = match &self.norms {
                    Some(norms) if head < self.heads => Some((&norms.host.0[..], norms.eps)),
                    Some(norms) if head < self.heads + self.kv_heads => {
                        Some((&norms.host.1[..], norms.eps))
                    }
                    _ => None,
                };
                for (position, out) in out.chunks_mut(d).enumerate() {
                    let at = (row * len + position) * width + head * d;
                    let source = &qkv[at..at + d];
                    if head >= self.heads + self.kv_heads {
                        out.copy_from_slice(source);
                        continue;
                    }
                    let angle = (row * len + position) * d;
                    let (cos, sin) = (&cos[angle..angle + d], &sin[angle..angle + d]);
                    rotate_row(isa, out, source, cos, sin, norm);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, all, len, d))))
    }
}
