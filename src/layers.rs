//! Building blocks shared by every architecture.
//!
//! The hot paths are single free functions — [`linear`], [`layer_norm`], [`Activation::forward`]
//! and [`attention`] — so that a fused or SIMD kernel can replace one of them in one place.
//! The device comes from the weights (the `VarBuilder`), the dtype from the activations; softmax
//! and layer norm accumulate in f32 whatever the dtype.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{Error, Result};

/// `x @ weight.T + bias`, with `weight` stored `(out, in)` as `torch.nn.Linear` stores it.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (rows, inner) = (x.elem_count() / x.dim(D::Minus1)?, x.dim(D::Minus1)?);
    let mut out_shape = x.dims().to_vec();
    if let Some(last) = out_shape.last_mut() {
        *last = weight.dim(0)?;
    }
    let y = x.reshape((rows, inner))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    };
    y.reshape(out_shape)
}

/// Layer normalisation over the last dimension, computed in f32.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let y = candle_nn::ops::layer_norm(
        &x.contiguous()?,
        &weight.to_dtype(DType::F32)?,
        &bias.to_dtype(DType::F32)?,
        eps as f32,
    )?;
    y.to_dtype(dtype)
}

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
    let probs = crate::kernels::scaled_masked_softmax(&scores, scale, mask)?.to_dtype(dtype)?;
    // (batch, heads, q_seq, head_dim)
    probs.matmul(&v.contiguous()?)
}

/// Turn a (batch, seq) 0/1 padding mask into the additive (batch, 1, 1, seq) f32 mask that
/// [`attention`] takes: 0 to attend, `f32::MIN` to ignore, as transformers'
/// `get_extended_attention_mask` does with `torch.finfo(dtype).min`.
pub fn padding_mask(attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, seq) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?;
    let blocked = (1.0 - keep)?;
    (blocked * f32::MIN as f64)?.reshape((batch, 1, 1, seq))
}

/// A linear layer loaded from `weight` (out, in) and optional `bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: Some(vb.get(out_dim, "bias")?),
        })
    }

    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(linear(x, &self.weight, self.bias.as_ref())?)
    }
}

/// Query, key and value projections and multi-head attention over them: the self-attention of
/// the BERT-style encoders, whose checkpoints differ only in the projections' key names.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    /// The three projections as one: weights stacked at load, so one GEMM makes q, k and v.
    qkv: Linear,
    heads: usize,
    scale: f64,
}

impl SelfAttention {
    /// `names`: the checkpoint keys of the query, key and value projections under `vb`.
    pub fn load(vb: VarBuilder, names: [&str; 3], hidden: usize, heads: usize) -> Result<Self> {
        let mut weights = Vec::with_capacity(3);
        let mut biases = Vec::with_capacity(3);
        for name in names {
            weights.push(vb.pp(name).get((hidden, hidden), "weight")?);
            biases.push(vb.pp(name).get(hidden, "bias")?);
        }
        Ok(Self {
            qkv: Linear::new(Tensor::cat(&weights, 0)?, Some(Tensor::cat(&biases, 0)?)),
            heads,
            scale: 1.0 / ((hidden / heads) as f64).sqrt(),
        })
    }

    /// (batch, seq, hidden) in and out; the heads are split inside.
    pub fn forward(&self, hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = self.qkv.forward(hidden)?;
        Ok(crate::kernels::multi_head_attention(
            &qkv, self.heads, mask, self.scale,
        )?)
    }
}

/// Layer norm with learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// An embedding table, looked up by token ids of any integer dtype.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: candle_nn::Embedding,
}

impl Embedding {
    pub fn load(vb: VarBuilder, count: usize, size: usize) -> Result<Self> {
        let weight = vb.get((count, size), "weight")?;
        Ok(Self {
            table: candle_nn::Embedding::new(weight, size),
        })
    }

    pub fn weight(&self) -> &Tensor {
        self.table.embeddings()
    }

    /// Look up `ids`. An id outside the table is an error on every device (GPU gathers do
    /// not check bounds), which catches a tokenizer that does not match the model.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.table.embeddings().dim(0)?;
        if ids.elem_count() > 0 {
            let max = ids
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::U32)?
                .to_scalar::<u32>()?;
            if max as usize >= rows {
                return Err(Error::InvalidInput(format!(
                    "id {max} is outside an embedding table of {rows} rows: the tokenizer (or the \
                     token ids) do not match the model's config"
                )));
            }
        }
        Ok(self.table.forward(ids)?)
    }
}

/// Activation functions, named as transformers names them in `hidden_act` / `activation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU with erf (`gelu` in transformers).
    Gelu,
    /// The tanh approximation (`gelu_new`, also `gelu_pytorch_tanh` and `gelu_fast`).
    #[serde(alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluNew,
    Relu,
    #[serde(alias = "swish")]
    Silu,
    Tanh,
}

impl Activation {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => crate::kernels::gelu_erf(x)?,
            Activation::GeluNew => x.gelu()?,
            Activation::Relu => x.relu()?,
            Activation::Silu => x.silu()?,
            Activation::Tanh => x.tanh()?,
        })
    }
}

/// Check that `total` (e.g. the hidden size) splits evenly into `parts` (e.g. heads).
pub(crate) fn require_divisible(
    total_name: &str,
    total: usize,
    parts_name: &str,
    parts: usize,
) -> Result<()> {
    if parts == 0 || !total.is_multiple_of(parts) {
        return Err(Error::InvalidConfig(format!(
            "{total_name} {total} is not divisible by {parts_name} {parts}"
        )));
    }
    Ok(())
}

/// Check that a size from a config is positive.
pub(crate) fn require_positive(name: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::InvalidConfig(format!(
            "`{name}` must be greater than 0"
        )));
    }
    Ok(())
}
