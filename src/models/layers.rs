//! Building blocks shared by every architecture.
//!
//! The hot paths are single free functions — [`linear`], [`layer_norm`], [`Activation::forward`]
//! and the kernels' attention (whose candle-ops reference is `kernels::reference::attention`) —
//! so that a fused or SIMD kernel can replace one of them in one place. The device comes from
//! the weights ([`ModelWeights`]), the dtype from the activations; softmax and layer norm
//! accumulate in f32 whatever the dtype.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Module, Shape, Tensor, D,
};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::gemm::{Activations, Epilogue, Isa, Output, PackedWeights, WeightFormat};
use crate::kernels::quant::QuantizedWeights;
use crate::kernels::{kernel_mode, AttentionProducts, KernelMode, PositionBias};
use crate::models::weight_type::WeightType;
use crate::models::weights::{Matrix, ModelWeights};

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
    let y = crate::kernels::layer_norm(
        &x,
        &weight.to_dtype(DType::F32)?,
        &bias.to_dtype(DType::F32)?,
        eps as f32,
    )?;
    y.to_dtype(dtype)
}

/// Turn a (batch, seq) 0/1 padding mask, where the input has one, into the additive
/// (batch, 1, 1, seq) f32 mask that the kernels' attention takes: 0 to attend, `f32::MIN` to
/// ignore, as transformers' `get_extended_attention_mask` does with `torch.finfo(dtype).min`.
pub fn padding_mask(attention_mask: Option<&Tensor>) -> candle_core::Result<Option<Tensor>> {
    let Some(attention_mask) = attention_mask else {
        return Ok(None);
    };
    let (batch, seq) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?;
    let blocked = (1.0 - keep)?;
    Ok(Some(
        (blocked * f32::MIN as f64)?.reshape((batch, 1, 1, seq))?,
    ))
}

/// A linear layer, `x @ weight.T + bias`, with `weight` (out, in) as `torch.nn.Linear`.
///
/// On the CPU (unless the kernels are set to `reference`) the weight is packed at load for
/// our GEMM, in int8 for [`WeightType::Int8`], else bf16 when it was read as bf16 and f32
/// otherwise, and activations are f32 whatever the weights' format. Elsewhere candle's
/// matmul runs.
#[derive(Debug, Clone)]
pub struct Linear {
    weights: LinearWeights,
}

#[derive(Debug, Clone)]
enum LinearWeights {
    Tensor {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Packed {
        weights: std::sync::Arc<PackedWeights>,
        bias: Option<std::sync::Arc<[f32]>>,
    },
    /// llama.cpp's quantized blocks, multiplied by the block kernels.
    Blocks {
        weights: std::sync::Arc<QuantizedWeights>,
        bias: Option<std::sync::Arc<[f32]>>,
    },
}

impl Linear {
    /// `weight` and `bias` under `vb`, stored as its [`WeightType`] (a GGUF file's quantized
    /// weight as its blocks).
    pub fn load(vb: ModelWeights, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::load_with_bias(&vb, in_dim, out_dim, true)
    }

    /// [`Linear::load`], with a bias or without.
    pub fn load_with_bias(
        vb: &ModelWeights,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let bias = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
        Self::from_matrix(
            vb.matrix((out_dim, in_dim), "weight")?,
            bias,
            vb.weight_type(),
        )
    }

    /// A layer of `matrix`: dense values stored as `weight_type` says ([`Linear::new`]), or
    /// quantized blocks as they are.
    pub fn from_matrix(
        matrix: Matrix,
        bias: Option<Tensor>,
        weight_type: WeightType,
    ) -> Result<Self> {
        match matrix {
            Matrix::Dense(weight) => Self::new(weight, bias, weight_type),
            Matrix::Blocks(weights) => Self::blocks(weights, bias),
        }
    }

    fn blocks(weights: QuantizedWeights, bias: Option<Tensor>) -> Result<Self> {
        let bias = bias
            .map(|bias| Self::bias_values(&bias, weights.outer()))
            .transpose()?;
        Ok(Self {
            weights: LinearWeights::Blocks {
                weights: std::sync::Arc::new(weights),
                bias,
            },
        })
    }

    /// A bias's values, checked against the layer's `outer` outputs.
    fn bias_values(bias: &Tensor, outer: usize) -> Result<std::sync::Arc<[f32]>> {
        if bias.dims() != [outer] {
            return Err(Error::InvalidWeights(format!(
                "a linear layer's bias has shape {:?}, its weight {outer} outputs",
                bias.dims()
            )));
        }
        Ok(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?.into())
    }

    /// `weight`: (out, in), any layout (GPT-2's Conv1D passes a transposed view), stored as
    /// `weight_type` says; [`WeightType::Int8`] off the CPU's kernels is an
    /// [`Error::InvalidInput`].
    pub fn new(weight: Tensor, bias: Option<Tensor>, weight_type: WeightType) -> Result<Self> {
        let quantized = weight_type == WeightType::Int8 || weight_type.block_type().is_some();
        if !weight.device().is_cpu() || kernel_mode() == KernelMode::Reference {
            if quantized {
                return Err(Error::InvalidInput(format!(
                    "{weight_type} quantization runs on the CPU with the kernels on; load on \
                     the CPU, or without quantization"
                )));
            }
            return Ok(Self {
                weights: LinearWeights::Tensor { weight, bias },
            });
        }
        let (outer, inner) = weight.dims2()?;
        if let Some(ty) = weight_type.block_type() {
            let values = weight
                .to_dtype(DType::F32)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            return Self::blocks(QuantizedWeights::quantize(ty, &values, inner, outer)?, bias);
        }
        let bias = bias
            .map(|bias| Self::bias_values(&bias, outer))
            .transpose()?;
        let format = match (weight_type, weight.dtype()) {
            (WeightType::Int8, _) => WeightFormat::Int8,
            (_, DType::BF16) => WeightFormat::Bf16,
            _ => WeightFormat::F32,
        };
        let weights = pack(&weight, format)?;
        Ok(Self {
            weights: LinearWeights::Packed {
                weights: std::sync::Arc::new(weights),
                bias,
            },
        })
    }

    /// Linear layers over the same input, `parts` (checkpoint name, outputs) under `vb`, stacked
    /// into one (their weights and, with `bias`, their biases concatenated): each row of input
    /// is read once, and the weights stream through one product (q, k and v; gate and up).
    pub fn stacked(
        vb: &ModelWeights,
        parts: &[(&str, usize)],
        in_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let biases = if bias {
            let biases = parts
                .iter()
                .map(|&(name, out)| vb.pp(name).get(out, "bias"))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Linear::from_matrix(vb.stacked_matrix(parts, in_dim)?, biases, vb.weight_type())
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, None, None)
    }

    /// The format the weight is packed in for our GEMM; `None` when candle's matmul or the
    /// block kernels run.
    pub fn weight_format(&self) -> Option<WeightFormat> {
        match &self.weights {
            LinearWeights::Tensor { .. } | LinearWeights::Blocks { .. } => None,
            LinearWeights::Packed { weights, .. } => Some(weights.format()),
        }
    }

    /// Bytes of the weight as stored (what one row of input makes the product read).
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            LinearWeights::Tensor { weight, .. } => {
                weight.elem_count() * weight.dtype().size_in_bytes()
            }
            LinearWeights::Packed { weights, .. } => weights.bytes(),
            LinearWeights::Blocks { weights, .. } => weights.bytes(),
        }
    }

    /// The most rows one call may take while each row's output stays bitwise what it is when
    /// the row goes alone ([`gemm::rows_summed_as_alone`](crate::kernels::gemm::rows_summed_as_alone));
    /// one for candle's matmul, which promises nothing of the kind; any number for the block
    /// kernels, which sum each row alone.
    pub fn rows_summed_as_alone(&self) -> usize {
        match &self.weights {
            LinearWeights::Tensor { .. } => 1,
            LinearWeights::Blocks { .. } => usize::MAX,
            LinearWeights::Packed { weights, .. } => {
                crate::kernels::gemm::rows_summed_as_alone(weights.inner())
            }
        }
    }

    /// `activation(x @ weight.T + bias) + residual`: on the CPU, exact GELU and the residual
    /// are applied by the GEMM to each block it has just written, while it is in cache.
    pub fn forward_with(
        &self,
        x: &Tensor,
        activation: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_as(x, activation, residual, DType::F32)
    }

    /// [`Linear::forward_with`] without a residual, for a product whose output only feeds
    /// another `Linear` (a feed-forward layer's first product). With bf16 weights in the
    /// AVX-512 layout the output is a bf16 tensor, rounded as the next product would round an
    /// f32 input, so the two products give the same bits; the intermediate then crosses
    /// memory once, in bf16, instead of in f32 and again as the rounded copy. Otherwise as
    /// `forward_with` (an f32 tensor on the CPU).
    pub fn forward_into_linear(
        &self,
        x: &Tensor,
        activation: Option<Activation>,
    ) -> Result<Tensor> {
        let output = match &self.weights {
            LinearWeights::Packed { weights, .. } if weights.reads_bf16_rows() => DType::BF16,
            _ => DType::F32,
        };
        self.forward_as(x, activation, None, output)
    }

    /// `forward_with` into `output` (F32, or BF16 where `forward_into_linear` says) on the
    /// CPU's packed path.
    fn forward_as(
        &self,
        x: &Tensor,
        activation: Option<Activation>,
        residual: Option<&Tensor>,
        output: DType,
    ) -> Result<Tensor> {
        match &self.weights {
            LinearWeights::Tensor { weight, bias } => {
                let mut y = linear(x, weight, bias.as_ref())?;
                if let Some(activation) = activation {
                    y = activation.forward(&y)?;
                }
                match residual {
                    Some(residual) => Ok((y + residual)?),
                    None => Ok(y),
                }
            }
            LinearWeights::Packed { weights, bias } => {
                let fused = match activation {
                    Some(Activation::Gelu) => Some(Epilogue::GeluErf),
                    Some(Activation::GeluNew) => Some(Epilogue::GeluTanh),
                    _ => None,
                };
                let epilogue = fused.unwrap_or(Epilogue::None);
                let fused = fused.is_some();
                let op = PackedLinear {
                    weights: weights.clone(),
                    bias: bias.clone(),
                    epilogue,
                    isa: Isa::detect(kernel_mode() == KernelMode::Portable),
                    // An activation the GEMM does not apply itself runs on the f32 output.
                    output: match activation.is_none() || fused {
                        true => output,
                        false => DType::F32,
                    },
                };
                // A bf16 input that the kernels read as it is stays bf16.
                let x = match x.dtype() == DType::BF16 && weights.reads_bf16_rows() {
                    true => x.contiguous()?,
                    false => x.to_dtype(DType::F32)?.contiguous()?,
                };
                let mut y = match (residual, activation.is_none() || fused) {
                    (Some(residual), true) => {
                        let residual = residual.to_dtype(DType::F32)?.contiguous()?;
                        x.apply_op2_no_bwd(&residual, &op)?
                    }
                    _ => x.apply_op1_no_bwd(&op)?,
                };
                if let Some(activation) = activation.filter(|_| !fused) {
                    y = activation.forward(&y)?;
                    if let Some(residual) = residual {
                        y = (y + residual)?;
                    }
                }
                Ok(y)
            }
            LinearWeights::Blocks { weights, bias } => {
                let op = BlockLinear {
                    weights: weights.clone(),
                    bias: bias.clone(),
                    isa: Isa::detect(kernel_mode() == KernelMode::Portable),
                };
                let x = x.to_dtype(DType::F32)?.contiguous()?;
                // The residual joins in the kernel unless an activation comes between.
                let y = match (residual, activation) {
                    (Some(residual), None) => {
                        let residual = residual.to_dtype(DType::F32)?.contiguous()?;
                        return Ok(x.apply_op2_no_bwd(&residual, &op)?);
                    }
                    _ => x.apply_op1_no_bwd(&op)?,
                };
                let y = match activation {
                    Some(activation) => activation.forward(&y)?,
                    None => y,
                };
                match residual {
                    Some(residual) => Ok((y + residual)?),
                    None => Ok(y),
                }
            }
        }
    }
}

/// Pack a CPU `weight` (out, in) for our GEMM straight from its storage, in any layout. No
/// f32 copy of the whole matrix is made first: there used to be one, two for bf16 weights and
/// three for GPT-2's transposed ones, on top of the packed weights (for a tied masked-LM
/// decoder in bf16, 188 MB).
fn pack(weight: &Tensor, format: WeightFormat) -> Result<PackedWeights> {
    let weight = match weight.dtype() {
        DType::F32 | DType::BF16 | DType::F16 => weight.clone(),
        _ => weight.to_dtype(DType::F32)?,
    };
    let (outer, inner) = weight.dims2()?;
    let (storage, layout) = weight.storage_and_layout();
    let (candle_core::Storage::Cpu(storage), &[row_stride, column_stride]) =
        (&*storage, layout.stride())
    else {
        return Err(Error::InvalidInput(
            "packed linear layers take a 2-D weight on the CPU".to_string(),
        ));
    };
    let start = layout.start_offset();
    let at = |o: usize, i: usize| start + o * row_stride + i * column_stride;
    Ok(match storage {
        CpuStorage::BF16(values) => {
            PackedWeights::pack(inner, outer, format, |o, i| values[at(o, i)].to_f32())
        }
        CpuStorage::F16(values) => {
            PackedWeights::pack(inner, outer, format, |o, i| values[at(o, i)].to_f32())
        }
        CpuStorage::F32(values) => {
            PackedWeights::pack(inner, outer, format, |o, i| values[at(o, i)])
        }
        _ => {
            return Err(Error::InvalidInput(format!(
                "packed linear layers take f32, bf16 or f16 weights, not {:?}",
                weight.dtype()
            )))
        }
    })
}

/// A bf16 tensor's values as their bits.
fn bf16_bits(values: &[half::bf16]) -> &[u16] {
    // SAFETY: `half::bf16` is a transparent u16.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) }
}

/// [`Linear`] on the CPU: our GEMM over packed weights, `(…, in)` to `(…, out)`; the
/// two-input form adds a residual of the output's shape.
struct PackedLinear {
    weights: std::sync::Arc<PackedWeights>,
    bias: Option<std::sync::Arc<[f32]>>,
    epilogue: Epilogue,
    isa: Isa,
    /// F32, or BF16 (see `Linear::forward_into_linear`).
    output: DType,
}

impl PackedLinear {
    fn run(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed linear: contiguous input only")
        };
        let x = match x {
            CpuStorage::F32(data) => Activations::F32(&data[start..end]),
            CpuStorage::BF16(data) => Activations::Bf16(bf16_bits(&data[start..end])),
            _ => candle_core::bail!("packed linear: f32 or bf16 input only"),
        };
        let outer = self.weights.outer();
        let (rows, shape) = product_shape(layout, self.weights.inner(), outer, residual)?;
        let product = |out| {
            crate::kernels::gemm::matmul_into(
                x,
                rows,
                &self.weights,
                self.bias.as_deref(),
                self.epilogue,
                residual,
                out,
                self.isa,
            )
        };
        let out = match self.output {
            DType::BF16 => {
                let mut out = Vec::<half::bf16>::with_capacity(rows * outer);
                let spare = &mut out.spare_capacity_mut()[..rows * outer];
                // SAFETY: `half::bf16` is a transparent u16, so its slots are u16 slots.
                let bits = unsafe {
                    std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), spare.len())
                };
                product(Output::Bf16(bits));
                // SAFETY: `matmul_into` wrote all rows × outer values.
                unsafe { out.set_len(rows * outer) };
                CpuStorage::BF16(out)
            }
            _ => {
                let mut out = Vec::with_capacity(rows * outer);
                product(Output::F32(&mut out.spare_capacity_mut()[..rows * outer]));
                // SAFETY: `matmul_into` wrote all rows × outer values.
                unsafe { out.set_len(rows * outer) };
                CpuStorage::F32(out)
            }
        };
        Ok((out, shape))
    }
}

linear_ops!(PackedLinear, "packed-linear", "packed-linear-residual");

/// The rows of a product's input (`…, inner`) and its output's shape (`…, outer`); an error
/// when the input does not end in `inner` features or the residual is not of the output's
/// size.
fn product_shape(
    layout: &Layout,
    inner: usize,
    outer: usize,
    residual: Option<&[f32]>,
) -> candle_core::Result<(usize, Shape)> {
    let dims = layout.shape().dims();
    if dims.last() != Some(&inner) {
        candle_core::bail!(
            "linear: input {:?} does not end in {inner} features",
            layout.shape()
        )
    }
    let rows = layout.shape().elem_count() / inner.max(1);
    if residual.is_some_and(|r| r.len() != rows * outer) {
        candle_core::bail!("linear: the residual is not of the output's shape")
    }
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = outer;
    }
    Ok((rows, Shape::from(out_dims)))
}

/// `CustomOp1` (the product) and `CustomOp2` (the product plus a contiguous f32 residual) for
/// a linear layer's op with a `run(x, layout, residual)`.
macro_rules! linear_ops {
    ($op:ty, $name:literal, $with_residual:literal) => {
        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                x: &CpuStorage,
                layout: &Layout,
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                self.run(x, layout, None)
            }
        }

        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $with_residual
            }

            fn cpu_fwd(
                &self,
                x: &CpuStorage,
                x_layout: &Layout,
                residual: &CpuStorage,
                residual_layout: &Layout,
            ) -> candle_core::Result<(CpuStorage, Shape)> {
                let (CpuStorage::F32(data), Some((start, end))) =
                    (residual, residual_layout.contiguous_offsets())
                else {
                    candle_core::bail!(concat!($name, ": contiguous f32 residual only"))
                };
                self.run(x, x_layout, Some(&data[start..end]))
            }
        }
    };
}
use linear_ops;

/// [`Linear`] over quantized blocks on the CPU: the block kernels, `(…, in)` f32 to `(…, out)`
/// f32; the two-input form adds a residual of the output's shape.
struct BlockLinear {
    weights: std::sync::Arc<QuantizedWeights>,
    bias: Option<std::sync::Arc<[f32]>>,
    isa: Isa,
}

impl BlockLinear {
    fn run(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (x, layout.contiguous_offsets()) else {
            candle_core::bail!("block linear: contiguous f32 input only")
        };
        let outer = self.weights.outer();
        let (rows, shape) = product_shape(layout, self.weights.inner(), outer, residual)?;
        let mut out = vec![0f32; rows * outer];
        crate::kernels::quant::matmul(
            &data[start..end],
            rows,
            &self.weights,
            self.bias.as_deref(),
            residual,
            &mut out,
            self.isa,
        );
        Ok((CpuStorage::F32(out), shape))
    }
}

linear_ops!(BlockLinear, "block-linear", "block-linear-residual");

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
    pub fn load(vb: ModelWeights, names: [&str; 3], hidden: usize, heads: usize) -> Result<Self> {
        let parts = names.map(|name| (name, hidden));
        Ok(Self {
            qkv: Linear::stacked(&vb, &parts, hidden, true)?,
            heads,
            scale: 1.0 / ((hidden / heads) as f64).sqrt(),
        })
    }

    /// (batch, seq, hidden) in and out; the heads are split inside.
    pub fn forward(&self, hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.forward_with_bias(hidden, mask, None)
    }

    /// [`SelfAttention::forward`] with `position_bias` added to every sequence's scores before
    /// the mask (MPNet's relative positions, JinaBERT's ALiBi).
    pub fn forward_with_bias(
        &self,
        hidden: &Tensor,
        mask: Option<&Tensor>,
        position_bias: Option<PositionBias>,
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(hidden)?;
        // bf16 weights get bf16 attention products, as PyTorch computes a bf16 model's.
        let products = match self.qkv.weight_format() {
            Some(WeightFormat::Bf16) => AttentionProducts::Bf16,
            _ => AttentionProducts::F32,
        };
        Ok(crate::kernels::multi_head_attention(
            &qkv,
            self.heads,
            mask,
            position_bias,
            self.scale,
            products,
        )?)
    }
}

/// `pooler`: a dense layer and tanh on the first token (`[CLS]`, `<s>`), as BERT has it and
/// the encoders built on it (MPNet, GTE, NomicBERT) keep it.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L691>
#[derive(Debug, Clone)]
pub(crate) struct Pooler {
    dense: Linear,
}

impl Pooler {
    /// `dense` under `vb` (the model's `pooler`).
    pub fn load(vb: ModelWeights, hidden: usize) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(vb.pp("dense"), hidden, hidden)?,
        })
    }

    /// The `pooler` under `vb` (the model's root), or `None` when the checkpoint has no pooler
    /// weights: the model then has no pooler output.
    pub fn load_if_present(vb: &ModelWeights, hidden: usize) -> Result<Option<Self>> {
        if vb.contains_tensor("pooler.dense.weight") {
            Ok(Some(Self::load(vb.pp("pooler"), hidden)?))
        } else {
            tracing::info!("no pooler weights (pooler.dense.*): the model has no pooler output");
            Ok(None)
        }
    }

    /// (batch, hidden) of the hidden states (batch, seq, hidden).
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.dense.forward(&first)?.tanh()?)
    }
}

/// RMS normalisation over the last dimension, `x / sqrt(mean(x²) + eps) · scale`, computed in
/// f32 and given back in `x`'s dtype (f32 on the CPU's kernels), as `LlamaRMSNorm` and
/// `Gemma3RMSNorm` both return `type_as(x)`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L52>
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    /// The scale, f32.
    scale: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// A norm whose checkpoint stores its scale (`LlamaRMSNorm`: `weight · x̂`).
    pub fn load(vb: ModelWeights, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            scale: vb.get(size, "weight")?.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    /// A norm whose checkpoint stores its scale less one: `Gemma3RMSNorm` multiplies by
    /// `1 + weight` (its weights start at 0), computed in f32 before the product, as here.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L126-L140>
    pub fn load_plus_one(vb: ModelWeights, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            scale: (vb.get(size, "weight")?.to_dtype(DType::F32)? + 1.0)?,
            eps: eps as f32,
        })
    }

    /// The scale, f32 (what [`HeadNorms`](crate::kernels::HeadNorms) takes).
    pub fn scale(&self) -> &Tensor {
        &self.scale
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::rms_norm(x, &self.scale, self.eps)?.to_dtype(x.dtype())?)
    }
}

/// `activation(a) · b` of a stacked projection `[a, b]`, (…, 2·width) to (…, width): GeGLU and
/// the gated MLPs (ModernBERT's `Wi`, Gemma's `gate_proj` and `up_proj` stacked).
pub(crate) fn gated(activation: Activation, stacked: &Tensor) -> Result<Tensor> {
    let last = stacked.rank().saturating_sub(1);
    let width = stacked.dim(last)? / 2;
    let activated = activation.forward(&stacked.narrow(last, 0, width)?.contiguous()?)?;
    Ok(activated.mul(&stacked.narrow(last, width, width)?)?)
}

/// Layer norm with learned scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(vb: ModelWeights, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    /// A layer norm whose checkpoint has a shift only when `bias` (`nn.LayerNorm(bias=False)`
    /// stores none, as ModernBERT's do): a zero shift stands in for it.
    pub fn load_with_bias(vb: ModelWeights, size: usize, eps: f64, bias: bool) -> Result<Self> {
        let weight = vb.get(size, "weight")?;
        let bias = match bias {
            true => vb.get(size, "bias")?,
            false => weight.zeros_like()?,
        };
        Ok(Self { weight, bias, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

/// An embedding table, looked up by token ids of any integer dtype.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: EmbeddingTable,
}

#[derive(Debug, Clone)]
enum EmbeddingTable {
    /// The table as loaded; rows come out as `output_dtype`.
    Tensor {
        table: candle_nn::Embedding,
        output_dtype: DType,
    },
    /// The rows of a tied output head's packed weights or blocks, in f32: the table is held
    /// once.
    Packed {
        weights: std::sync::Arc<dyn PackedRows>,
        device: Device,
    },
}

/// Weights packed for a product whose rows read back as f32: what a tied table reads.
trait PackedRows: std::fmt::Debug + Send + Sync {
    fn inner(&self) -> usize;
    fn outer(&self) -> usize;
    fn unpack_row(&self, o: usize, out: &mut [f32]);
}

impl PackedRows for PackedWeights {
    fn inner(&self) -> usize {
        PackedWeights::inner(self)
    }
    fn outer(&self) -> usize {
        PackedWeights::outer(self)
    }
    fn unpack_row(&self, o: usize, out: &mut [f32]) {
        PackedWeights::unpack_row(self, o, out)
    }
}

impl PackedRows for QuantizedWeights {
    fn inner(&self) -> usize {
        QuantizedWeights::inner(self)
    }
    fn outer(&self) -> usize {
        QuantizedWeights::outer(self)
    }
    fn unpack_row(&self, o: usize, out: &mut [f32]) {
        QuantizedWeights::unpack_row(self, o, out)
    }
}

impl Embedding {
    pub fn load(vb: ModelWeights, count: usize, size: usize) -> Result<Self> {
        Ok(Self::new(vb.get((count, size), "weight")?))
    }

    /// The table `weight` (count, size).
    pub fn new(weight: Tensor) -> Self {
        let size = weight.dims().last().copied().unwrap_or(0);
        // With packed linear layers the activations are f32 whatever the weights' dtype:
        // the sum of embeddings is where they start.
        let output_dtype = if weight.device().is_cpu() && kernel_mode() != KernelMode::Reference {
            DType::F32
        } else {
            weight.dtype()
        };
        Self {
            table: EmbeddingTable::Tensor {
                table: candle_nn::Embedding::new(weight, size),
                output_dtype,
            },
        }
    }

    /// The table of a tied model, read from `head` (the output head made from it) where the
    /// head packed it or holds its blocks, on `device`; `None` where candle's matmul runs the
    /// head (the table is then the tensor as loaded). A packed table reads as the head
    /// multiplies: bf16 as bf16, int8 and blocks dequantized (llama.cpp's files quantize
    /// their token embeddings alike).
    pub fn of_head(head: &Linear, device: &Device) -> Option<Self> {
        let weights: std::sync::Arc<dyn PackedRows> = match &head.weights {
            LinearWeights::Packed { weights, .. } => weights.clone(),
            LinearWeights::Blocks { weights, .. } => weights.clone(),
            LinearWeights::Tensor { .. } => return None,
        };
        Some(Self {
            table: EmbeddingTable::Packed {
                weights,
                device: device.clone(),
            },
        })
    }

    /// The table as loaded; none (an error) when it is read from its packed head.
    pub fn weight(&self) -> Result<&Tensor> {
        match &self.table {
            EmbeddingTable::Tensor { table, .. } => Ok(table.embeddings()),
            EmbeddingTable::Packed { .. } => Err(Error::InvalidInput(
                "this embedding table is read from its tied output head and has no tensor of \
                 its own"
                    .to_string(),
            )),
        }
    }

    /// The device the rows come out on.
    pub fn device(&self) -> &Device {
        match &self.table {
            EmbeddingTable::Tensor { table, .. } => table.embeddings().device(),
            EmbeddingTable::Packed { device, .. } => device,
        }
    }

    /// Rows of the table.
    fn rows(&self) -> Result<usize> {
        match &self.table {
            EmbeddingTable::Tensor { table, .. } => Ok(table.embeddings().dim(0)?),
            EmbeddingTable::Packed { weights, .. } => Ok(weights.outer()),
        }
    }

    /// Look up `ids`. An id outside the table is an error on every device (GPU gathers do
    /// not check bounds), which catches a tokenizer that does not match the model.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.rows()?;
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
        match &self.table {
            EmbeddingTable::Tensor {
                table,
                output_dtype,
            } => Ok(table.forward(ids)?.to_dtype(*output_dtype)?),
            EmbeddingTable::Packed { weights, device } => {
                let size = weights.inner();
                let ids = ids.to_dtype(DType::U32)?;
                let mut shape = ids.dims().to_vec();
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let mut out = vec![0f32; ids.len() * size];
                for (row, &id) in out.chunks_mut(size.max(1)).zip(&ids) {
                    weights.unpack_row(id as usize, row);
                }
                shape.push(size);
                Ok(Tensor::from_vec(out, shape, device)?)
            }
        }
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

/// The sizes that every BERT-like encoder's config has, named by transformers' BERT fields.
pub(crate) struct EncoderSizes {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
}

impl EncoderSizes {
    /// Each size but the heads' count positive, in this order, then `hidden_size` divisible by
    /// `num_attention_heads`. GTE's and NomicBERT's configs refuse 0 heads only there, as a
    /// divisor; the others name them with [`require_positive`] first.
    pub fn validate(&self) -> Result<()> {
        require_positive("vocab_size", self.vocab_size)?;
        require_positive("hidden_size", self.hidden_size)?;
        require_positive("num_hidden_layers", self.num_hidden_layers)?;
        require_positive("intermediate_size", self.intermediate_size)?;
        require_positive("max_position_embeddings", self.max_position_embeddings)?;
        require_divisible(
            "hidden_size",
            self.hidden_size,
            "num_attention_heads",
            self.num_attention_heads,
        )
    }
}

/// [`EncoderSizes::validate`] of a config that names its sizes as BERT's does (`vocab_size`,
/// `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `intermediate_size`,
/// `max_position_embeddings`); `intermediate_size: expr` where the config computes it.
macro_rules! require_encoder_sizes {
    ($config:expr) => {
        $crate::models::layers::require_encoder_sizes!(
            $config,
            intermediate_size: $config.intermediate_size
        )
    };
    ($config:expr, intermediate_size: $intermediate:expr) => {
        $crate::models::layers::EncoderSizes {
            vocab_size: $config.vocab_size,
            hidden_size: $config.hidden_size,
            num_hidden_layers: $config.num_hidden_layers,
            num_attention_heads: $config.num_attention_heads,
            intermediate_size: $intermediate,
            max_position_embeddings: $config.max_position_embeddings,
        }
        .validate()
    };
}

pub(crate) use require_encoder_sizes;
