//! ModernBERT and its task heads, on candle tensors.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/modernbert/modeling_modernbert.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py>).
//! Module and field names follow the checkpoint keys (`model.layers.0.attn.Wqkv.weight`).
//!
//! What sets it apart from BERT: pre-norm blocks whose layer norms and linear layers have no
//! biases (by default), one fused `Wqkv` product, rotary positions instead of a position table,
//! with a global theta on every `global_attn_every_n_layers`-th layer and a local theta on the
//! others, which attend only to the keys within `local_attention / 2` positions of each query,
//! and a GeGLU feed-forward.
//!
//! The encoder runs unpadded, as transformers' flash-attention path does
//! (`_unpad_modernbert_input`, `_pad_modernbert_output`): the real tokens of every row are
//! gathered into one (tokens, hidden) matrix, so the linear layers never see padding, and each
//! sequence attends over its own tokens alone, its positions counted from 0. Per-token outputs
//! come back padded with zeros, as that path returns them.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L691-L761>

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::{decoder_attention, rotated_heads, RotatedHeads};
use crate::models::config::Labels;
use crate::models::layers::{
    gated, require_encoder_sizes, require_positive, Activation, Embedding, LayerNorm, Linear,
};
use crate::models::rope::{RopeScaling, RotaryEmbedding};
use crate::models::weights::ModelWeights;
use crate::models::{base_model_weights, tied_weight, EncoderOutput, MaskedLmHead, ModelInput};

/// How sequence classification pools the tokens (`classifier_pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierPooling {
    /// The first token (`[CLS]`).
    Cls,
    /// The mean of the real tokens.
    Mean,
}

/// `ModernBertConfig` from `config.json`, with transformers' defaults (ModernBERT-base's).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/configuration_modernbert.py#L135>
#[derive(Debug, Clone, Deserialize)]
pub struct ModernBertConfig {
    /// Rows of the token-embedding table; every token id must be below it.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Width of the GeGLU's gated half (`mlp.Wi` makes twice as many).
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Number of blocks (`model.layers.*`).
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per block; must divide `hidden_size` into even head widths.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Activation of the GeGLU's input half.
    #[serde(default = "default_activation")]
    pub hidden_activation: Activation,
    /// The longest input the model takes (the rotary embedding has no table to bound it).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Whether the layer norms have a shift (`bias`); not in ModernBERT's checkpoints.
    #[serde(default)]
    pub norm_bias: bool,
    /// The rotary base of the global layers.
    #[serde(default = "default_global_rope_theta")]
    pub global_rope_theta: f64,
    /// The rotary base of the local layers; `null` means the global one.
    #[serde(default = "default_local_rope_theta")]
    pub local_rope_theta: Option<f64>,
    /// Rotary scaling, as the Llama family's `rope_scaling` (none in ModernBERT's checkpoints).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Whether `Wqkv` and `attn.Wo` have biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Layer `i` attends globally when `i % global_attn_every_n_layers == 0`, else locally.
    #[serde(default = "default_global_attn_every_n_layers")]
    pub global_attn_every_n_layers: usize,
    /// The local layers' window: each query sees the keys within `local_attention / 2`
    /// positions on either side.
    #[serde(default = "default_local_attention")]
    pub local_attention: usize,
    /// Whether `mlp.Wi` and `mlp.Wo` have biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Whether the masked-LM `decoder` has a bias.
    #[serde(default = "default_true")]
    pub decoder_bias: bool,
    /// Pooling of sequence classification: `cls` or `mean`.
    #[serde(default = "default_classifier_pooling")]
    pub classifier_pooling: ClassifierPooling,
    /// Whether the heads' `head.dense` has a bias.
    #[serde(default)]
    pub classifier_bias: bool,
    /// Activation of the heads' `head.dense`.
    #[serde(default = "default_activation")]
    pub classifier_activation: Activation,
    /// Class names of classification heads.
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_vocab_size() -> usize {
    50368
}
fn default_hidden_size() -> usize {
    768
}
fn default_intermediate_size() -> usize {
    1152
}
fn default_num_hidden_layers() -> usize {
    22
}
fn default_num_attention_heads() -> usize {
    12
}
fn default_activation() -> Activation {
    Activation::Gelu
}
fn default_max_position_embeddings() -> usize {
    8192
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_global_rope_theta() -> f64 {
    160_000.0
}
fn default_local_rope_theta() -> Option<f64> {
    Some(10_000.0)
}
fn default_global_attn_every_n_layers() -> usize {
    3
}
fn default_local_attention() -> usize {
    128
}
fn default_true() -> bool {
    true
}
fn default_classifier_pooling() -> ClassifierPooling {
    ClassifierPooling::Cls
}

impl ModernBertConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        // Before the shared sizes, which would refuse 0 heads as a divisor rather than name them.
        require_positive("num_attention_heads", self.num_attention_heads)?;
        require_positive(
            "global_attn_every_n_layers",
            self.global_attn_every_n_layers,
        )?;
        require_encoder_sizes!(self)?;
        // Builds both rotary embeddings: an odd head width, a theta of 1 or less or an
        // unknown rope_type is an error here, when config.json is read.
        self.rotary(AttentionSpan::Global)?;
        self.rotary(AttentionSpan::Local)?;
        Ok(())
    }

    /// Number of classes of a classification head: `id2label`'s size, else transformers' default 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Which span layer `layer` attends over.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L464-L471>
    fn span(&self, layer: usize) -> AttentionSpan {
        if layer.is_multiple_of(self.global_attn_every_n_layers) {
            AttentionSpan::Global
        } else {
            AttentionSpan::Local
        }
    }

    /// The rotary embedding of the layers of `span`: the global theta, or the local one (the
    /// global one when it is `null`). transformers' sdpa and eager paths build both from the
    /// config with `max_position_embeddings` (its flash-attention path gives the local ones
    /// `local_attention`, which only sizes a cache).
    fn rotary(&self, span: AttentionSpan) -> Result<RotaryEmbedding> {
        let theta = match span {
            AttentionSpan::Global => self.global_rope_theta,
            AttentionSpan::Local => self.local_rope_theta.unwrap_or(self.global_rope_theta),
        };
        RotaryEmbedding::new(
            theta,
            self.head_dim(),
            self.rope_scaling.as_ref(),
            self.max_position_embeddings,
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttentionSpan {
    /// Every key of the sequence.
    Global,
    /// The keys within `local_attention / 2` positions of the query.
    Local,
}

/// A linear layer whose bias the config may or may not give.
fn linear(vb: ModelWeights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
    Linear::new(weight, bias, vb.weight_type())
}

fn layer_norm(vb: ModelWeights, config: &ModernBertConfig) -> Result<LayerNorm> {
    LayerNorm::load_with_bias(vb, config.hidden_size, config.norm_eps, config.norm_bias)
}

/// What every layer reads about the unpadded batch: where each sequence's tokens are, the
/// rotations of their positions, and the local layers' window masks.
struct Batch {
    /// Each sequence's first token and length in the (tokens, hidden) matrix.
    sequences: Vec<(usize, usize)>,
    global: Rotation,
    /// Absent when the model has no local layer.
    local: Option<Rotation>,
    /// The local window's additive mask, (1, 1, len, len), for each sequence length the window
    /// does not cover whole.
    window_masks: HashMap<usize, Tensor>,
}

/// Cosines and sines of every token's position within its sequence, (1, 1, tokens, head_dim).
struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl Rotation {
    /// Computed in f32 and applied in `dtype`, the activations' (bf16 off the CPU's kernels),
    /// as transformers casts them (`cos.to(dtype=x.dtype)`).
    fn new(
        rotary: &RotaryEmbedding,
        positions: &[u32],
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let (cos, sin) = rotary.cos_sin(positions, 1, device)?;
        Ok(Self {
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
        })
    }
}

/// The sliding window of a local layer over `len` tokens: 0 where `|query - key| <=
/// half_window`, `f32::MIN` elsewhere, as transformers' `_update_attention_mask` fills it.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L930-L941>
fn window_mask(len: usize, half_window: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..len * len)
        .map(|at| match (at / len).abs_diff(at % len) <= half_window {
            true => 0.0,
            false => f32::MIN,
        })
        .collect();
    Ok(Tensor::from_vec(values, (1, 1, len, len), device)?)
}

/// The real tokens of a padded batch, in order, and the way back to the batch's shape.
struct Unpadded {
    /// (tokens, hidden)
    hidden: Tensor,
    /// Each sequence's first token and length in `hidden`.
    sequences: Vec<(usize, usize)>,
    /// Each token's place in the flattened (batch · seq) batch, u32 (tokens,).
    places: Tensor,
    batch: usize,
    seq: usize,
}

impl Unpadded {
    /// (tokens, features) to (batch, seq, features) with zeros at the padding, as
    /// `_pad_modernbert_output` scatters it.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L732>
    fn pad(&self, x: &Tensor) -> Result<Tensor> {
        let features = x.dim(D::Minus1)?;
        let zeros = Tensor::zeros((self.batch * self.seq, features), x.dtype(), x.device())?;
        Ok(zeros
            .index_add(&self.places, x, 0)?
            .reshape((self.batch, self.seq, features))?)
    }
}

/// `attn`: the fused q/k/v product, the rotation, attention within each sequence (and within
/// the window on local layers), and `Wo`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L437>
#[derive(Debug, Clone)]
struct ModernBertAttention {
    /// `Wqkv`: its output is q, k and v side by side, each `heads · head_dim` wide (the
    /// checkpoint's `view(bs, -1, 3, heads, head_dim)`).
    wqkv: Linear,
    /// `Wo`.
    wo: Linear,
    span: AttentionSpan,
    heads: usize,
    hidden: usize,
    scale: f64,
}

impl ModernBertAttention {
    fn load(vb: ModelWeights, config: &ModernBertConfig, layer: usize) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            wqkv: linear(vb.pp("Wqkv"), hidden, 3 * hidden, config.attention_bias)?,
            wo: linear(vb.pp("Wo"), hidden, hidden, config.attention_bias)?,
            span: config.span(layer),
            heads: config.num_attention_heads,
            hidden,
            scale: 1.0 / (config.head_dim() as f64).sqrt(),
        })
    }

    /// `x`: the normed (tokens, hidden); returns `residual` plus the attention's output.
    fn forward(&self, x: &Tensor, residual: &Tensor, batch: &Batch) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        // (1, tokens, 3 · hidden): the tokens of all sequences in one row.
        let qkv = self.wqkv.forward(x)?.unsqueeze(0)?;
        let rotation = match (self.span, &batch.local) {
            (AttentionSpan::Local, Some(local)) => local,
            _ => &batch.global,
        };
        // (1, heads, tokens, head_dim) each, q and k rotated.
        let RotatedHeads { q, k, v } = rotated_heads(
            &qkv,
            &rotation.cos,
            &rotation.sin,
            self.heads,
            self.heads,
            None,
        )?;
        let mut attended = Vec::with_capacity(batch.sequences.len());
        for &(start, len) in &batch.sequences {
            let mask = match self.span {
                AttentionSpan::Local => batch.window_masks.get(&len),
                AttentionSpan::Global => None,
            };
            // (1, heads, len, head_dim)
            attended.push(decoder_attention(
                &q.narrow(2, start, len)?,
                &k.narrow(2, start, len)?,
                &v.narrow(2, start, len)?,
                mask,
                self.scale,
            )?);
        }
        let attended = Tensor::cat(&attended, 2)?
            .transpose(1, 2)?
            .reshape((tokens, self.hidden))?;
        self.wo.forward_with(&attended, None, Some(residual))
    }
}

/// `mlp`: GeGLU. `Wi` makes the input and the gate side by side; `Wo(act(input) * gate)`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L225-L242>
#[derive(Debug, Clone)]
struct ModernBertMlp {
    wi: Linear,
    activation: Activation,
    wo: Linear,
}

impl ModernBertMlp {
    fn load(vb: ModelWeights, config: &ModernBertConfig) -> Result<Self> {
        let (hidden, intermediate) = (config.hidden_size, config.intermediate_size);
        Ok(Self {
            wi: linear(vb.pp("Wi"), hidden, 2 * intermediate, config.mlp_bias)?,
            activation: config.hidden_activation,
            wo: linear(vb.pp("Wo"), intermediate, hidden, config.mlp_bias)?,
        })
    }

    /// `x`: the normed (tokens, hidden); returns `residual` plus the MLP's output.
    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let gated = gated(self.activation, &self.wi.forward(x)?)?;
        self.wo.forward_with(&gated, None, Some(residual))
    }
}

/// `model.layers.N`: pre-norm attention and MLP, each added to its input. Layer 0 has no
/// `attn_norm` (an `Identity`): the embeddings were just normed.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L516-L560>
#[derive(Debug, Clone)]
struct ModernBertEncoderLayer {
    attn_norm: Option<LayerNorm>,
    attn: ModernBertAttention,
    mlp_norm: LayerNorm,
    mlp: ModernBertMlp,
}

impl ModernBertEncoderLayer {
    fn load(vb: ModelWeights, config: &ModernBertConfig, layer: usize) -> Result<Self> {
        Ok(Self {
            attn_norm: match layer {
                0 => None,
                _ => Some(layer_norm(vb.pp("attn_norm"), config)?),
            },
            attn: ModernBertAttention::load(vb.pp("attn"), config, layer)?,
            mlp_norm: layer_norm(vb.pp("mlp_norm"), config)?,
            mlp: ModernBertMlp::load(vb.pp("mlp"), config)?,
        })
    }

    fn forward(&self, hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(hidden)?,
            None => hidden.clone(),
        };
        let hidden = self.attn.forward(&normed, hidden, batch)?;
        self.mlp.forward(&self.mlp_norm.forward(&hidden)?, &hidden)
    }
}

/// The ModernBERT encoder: `embeddings` (token embeddings and a norm; positions are rotary),
/// `layers.*`, `final_norm`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L764>
#[derive(Debug, Clone)]
pub struct ModernBertModel {
    tok_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<ModernBertEncoderLayer>,
    final_norm: LayerNorm,
    global_rotary: RotaryEmbedding,
    local_rotary: RotaryEmbedding,
    /// Boxed: with its rope settings the config is most of the model's size, and the auto
    /// classes' enums are as large as their largest variant.
    config: Box<ModernBertConfig>,
}

impl ModernBertModel {
    /// Load from the encoder's own keys (`embeddings.*`, `layers.*`, `final_norm.*`), found at
    /// the checkpoint's root or under `model.`.
    pub fn load(vb: ModelWeights, config: &ModernBertConfig) -> Result<Self> {
        let vb = base_model_weights(&vb, "model", "embeddings.tok_embeddings.weight")?;
        let embeddings = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| ModernBertEncoderLayer::load(vb.pp("layers").pp(i), config, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tok_embeddings: Embedding::load(
                embeddings.pp("tok_embeddings"),
                config.vocab_size,
                config.hidden_size,
            )?,
            embeddings_norm: layer_norm(embeddings.pp("norm"), config)?,
            layers,
            final_norm: layer_norm(vb.pp("final_norm"), config)?,
            global_rotary: config.rotary(AttentionSpan::Global)?,
            local_rotary: config.rotary(AttentionSpan::Local)?,
            config: Box::new(config.clone()),
        })
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &ModernBertConfig {
        &self.config
    }

    /// Run the encoder. `last_hidden_state` is (batch, seq, hidden_size), zero at padded
    /// positions, f32 on the CPU whatever the weights' dtype. Errors:
    /// [`Error::InputTooLong`] past `max_position_embeddings`, [`Error::InvalidInput`] for an
    /// id outside the vocabulary or a row without a real token.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        let unpadded = self.forward_unpadded(input)?;
        Ok(EncoderOutput {
            last_hidden_state: unpadded.pad(&unpadded.hidden)?,
            pooler_output: None,
        })
    }

    /// The final hidden states of the batch's real tokens.
    fn forward_unpadded(&self, input: &ModelInput) -> Result<Unpadded> {
        crate::kernels::on_worker(|| self.forward_unpadded_on_worker(input))
    }

    fn forward_unpadded_on_worker(&self, input: &ModelInput) -> Result<Unpadded> {
        let (batch_size, seq) = input.input_ids.dims2()?;
        let max = self.config.max_position_embeddings;
        if seq > max {
            return Err(Error::InputTooLong { length: seq, max });
        }
        let device = self.tok_embeddings.device().clone();
        let ids = input.input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mask = match &input.attention_mask {
            Some(mask) => Some(mask.to_dtype(DType::U32)?.to_vec2::<u32>()?),
            None => None,
        };
        // Gather the real tokens, as `_unpad_modernbert_input` does with the mask's nonzero
        // places; positions count from 0 in each sequence, as its `cu_seqlens` make them.
        let mut token_ids = Vec::new();
        let mut places = Vec::new();
        let mut positions = Vec::new();
        let mut sequences = Vec::with_capacity(batch_size);
        for (row, row_ids) in ids.iter().enumerate() {
            let start = token_ids.len();
            for (column, &id) in row_ids.iter().enumerate() {
                if mask.as_ref().is_some_and(|mask| mask[row][column] == 0) {
                    continue;
                }
                positions.push((token_ids.len() - start) as u32);
                token_ids.push(id);
                places.push((row * seq + column) as u32);
            }
            let len = token_ids.len() - start;
            if len == 0 {
                return Err(Error::InvalidInput(format!(
                    "input {row} has no token: its attention mask is all 0"
                )));
            }
            sequences.push((start, len));
        }
        let tokens = token_ids.len();
        let token_ids = Tensor::from_vec(token_ids, tokens, &device)?;
        let places = Tensor::from_vec(places, tokens, &device)?;

        let has_local = (0..self.layers.len()).any(|i| self.config.span(i) == AttentionSpan::Local);
        let half_window = self.config.local_attention / 2;
        let mut window_masks = HashMap::new();
        if has_local {
            for &(_, len) in &sequences {
                // A window that covers the whole sequence masks nothing.
                if len > half_window + 1 && !window_masks.contains_key(&len) {
                    window_masks.insert(len, window_mask(len, half_window, &device)?);
                }
            }
        }
        let embedded = self.tok_embeddings.forward(&token_ids)?;
        let mut hidden = self.embeddings_norm.forward(&embedded)?;
        let dtype = hidden.dtype();
        let context = Batch {
            sequences,
            global: Rotation::new(&self.global_rotary, &positions, &device, dtype)?,
            local: has_local
                .then(|| Rotation::new(&self.local_rotary, &positions, &device, dtype))
                .transpose()?,
            window_masks,
        };

        for layer in &self.layers {
            hidden = layer.forward(&hidden, &context)?;
        }
        Ok(Unpadded {
            hidden: self.final_norm.forward(&hidden)?,
            sequences: context.sequences,
            places,
            batch: batch_size,
            seq,
        })
    }

    fn tok_embeddings(&self) -> Result<&Tensor> {
        self.tok_embeddings.weight()
    }
}

/// `head`: `dense`, the classifier activation and `norm`, before every task's output layer.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L946-L960>
#[derive(Debug, Clone)]
struct ModernBertPredictionHead {
    dense: Linear,
    activation: Activation,
    norm: LayerNorm,
}

impl ModernBertPredictionHead {
    fn load(vb: ModelWeights, config: &ModernBertConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            dense: linear(vb.pp("dense"), hidden, hidden, config.classifier_bias)?,
            activation: config.classifier_activation,
            norm: layer_norm(vb.pp("norm"), config)?,
        })
    }

    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let dense = self.activation.forward(&self.dense.forward(hidden)?)?;
        self.norm.forward(&dense)
    }
}

/// `ModernBertForMaskedLM`: the encoder, `head` and `decoder`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L963>
#[derive(Debug, Clone)]
pub struct ModernBertForMaskedLM {
    model: ModernBertModel,
    head: MaskedLmHead,
}

impl ModernBertForMaskedLM {
    /// Load the encoder (under `model.`), `head.*` and `decoder.*`. The decoder weight is tied
    /// to the token embeddings (`_tied_weights_keys`) and used from there when the checkpoint
    /// omits it; its bias is its own (`decoder.bias`, when `decoder_bias`).
    pub fn load(vb: ModelWeights, config: &ModernBertConfig) -> Result<Self> {
        let model = ModernBertModel::load(vb.clone(), config)?;
        let head = ModernBertPredictionHead::load(vb.pp("head"), config)?;
        let decoder = vb.pp("decoder");
        let bias = config
            .decoder_bias
            .then(|| decoder.get(config.vocab_size, "bias"))
            .transpose()?;
        let decoder = Linear::new(
            tied_weight(&vb, "decoder.weight", model.tok_embeddings()?)?,
            bias,
            vb.weight_type(),
        )?;
        Ok(Self {
            model,
            head: MaskedLmHead {
                dense: head.dense,
                activation: head.activation,
                layer_norm: head.norm,
                decoder,
            },
        })
    }

    /// Vocabulary logits, (batch, seq, vocab), zero at padded positions: the head runs on the
    /// real tokens only, as transformers' unpadded path runs it.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L1086-L1089>
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        let unpadded = self.model.forward_unpadded(input)?;
        unpadded.pad(&self.head.forward(&unpadded.hidden)?)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &ModernBertConfig {
        self.model.config()
    }
}

/// `ModernBertForSequenceClassification`: the tokens pooled (`classifier_pooling`), `head`,
/// `classifier`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L1118>
#[derive(Debug, Clone)]
pub struct ModernBertForSequenceClassification {
    model: ModernBertModel,
    head: ModernBertPredictionHead,
    classifier: Linear,
}

impl ModernBertForSequenceClassification {
    /// Load the encoder, `head.*` and `classifier` (with a bias) with
    /// [`ModernBertConfig::num_labels`] outputs.
    pub fn load(vb: ModelWeights, config: &ModernBertConfig) -> Result<Self> {
        Ok(Self {
            model: ModernBertModel::load(vb.clone(), config)?,
            head: ModernBertPredictionHead::load(vb.pp("head"), config)?,
            classifier: Linear::load(vb.pp("classifier"), config.hidden_size, config.num_labels())?,
        })
    }

    /// Class logits, (batch, num_labels). `cls` pools each sequence's first token, `mean` the
    /// mean of its real tokens.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L1204-L1209>
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        let unpadded = self.model.forward_unpadded(input)?;
        let pooled = unpadded
            .sequences
            .iter()
            .map(|&(start, len)| {
                let tokens = unpadded.hidden.narrow(0, start, len)?;
                match self.model.config.classifier_pooling {
                    ClassifierPooling::Cls => tokens.narrow(0, 0, 1),
                    ClassifierPooling::Mean => tokens.mean_keepdim(0),
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = self.head.forward(&Tensor::cat(&pooled, 0)?)?;
        self.classifier.forward(&pooled)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &ModernBertConfig {
        self.model.config()
    }
}

/// `ModernBertForTokenClassification`: `head` and `classifier` on every token.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/modernbert/modeling_modernbert.py#L1255>
#[derive(Debug, Clone)]
pub struct ModernBertForTokenClassification {
    model: ModernBertModel,
    head: ModernBertPredictionHead,
    classifier: Linear,
}

impl ModernBertForTokenClassification {
    /// Load the encoder, `head.*` and `classifier` (with a bias) with
    /// [`ModernBertConfig::num_labels`] outputs.
    pub fn load(vb: ModelWeights, config: &ModernBertConfig) -> Result<Self> {
        Ok(Self {
            model: ModernBertModel::load(vb.clone(), config)?,
            head: ModernBertPredictionHead::load(vb.pp("head"), config)?,
            classifier: Linear::load(vb.pp("classifier"), config.hidden_size, config.num_labels())?,
        })
    }

    /// Per-token class logits, (batch, seq, num_labels), zero at padded positions.
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        let unpadded = self.model.forward_unpadded(input)?;
        let logits = self
            .classifier
            .forward(&self.head.forward(&unpadded.hidden)?)?;
        unpadded.pad(&logits)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &ModernBertConfig {
        self.model.config()
    }
}

from_pretrained_impls!(
    modernbert:
    ModernBertModel,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification,
    ModernBertForTokenClassification
);
