//! Gemma 3's text model (`"model_type": "gemma3_text"`), as an encoder of hidden states: what
//! EmbeddingGemma's sentence-transformers modules pool.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/gemma3/modeling_gemma3.py` and
//! `configuration_gemma3.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py>).
//! Module and field names follow the checkpoint keys (`layers.0.self_attn.q_proj.weight`, at the
//! root as `Gemma3TextModel` saves them, or under `model.`).
//!
//! The Llama block's parts (grouped-query attention, per-head q/k norms before the rotation as
//! Qwen3's, a gated MLP), with Gemma's own choices, each read where it acts:
//! - the token embeddings are multiplied by `sqrt(hidden_size)`, rounded to the table's dtype;
//! - every RMSNorm scales by `1 + weight`, and each layer has four: before and after the
//!   attention, before and after the MLP;
//! - attention scores are scaled by `query_pre_attn_scalar^-0.5`, not `head_dim^-0.5`;
//! - `layer_types` makes each layer full or sliding; sliding layers rotate with
//!   `rope_local_base_freq` (no scaling), full ones with `rope_theta` and `rope_scaling`, or,
//!   as transformers 5 writes the config, each with its entry of `rope_parameters`;
//! - the MLP is `down(act(gate(x)) · up(x))` with `hidden_activation` (GeGLU with the tanh GELU);
//! - `use_bidirectional_attention` (EmbeddingGemma) makes attention non-causal: full layers see
//!   every real token, sliding layers the tokens within the window on both sides.

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::{decoder_attention, rotated_heads, HeadNorms, RotatedHeads};
use crate::models::config::Labels;
use crate::models::layers::{
    gated, require_divisible, require_positive, Activation, Embedding, Linear, RmsNorm,
};
use crate::models::rope::{RopeScaling, RotaryEmbedding};
use crate::models::weights::ModelWeights;
use crate::models::{base_model_weights, EncoderOutput, ModelInput};

/// What a layer's attention spans (`layer_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// `full_attention`: every key (every earlier one, when causal); the global rotation.
    FullAttention,
    /// `sliding_attention`: the keys within the sliding window; the local rotation.
    SlidingAttention,
}

/// `Gemma3TextConfig` from `config.json`, with transformers' defaults.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/configuration_gemma3.py#L169-L242>
///
/// `attn_logit_softcapping` is not read: transformers 4.57.6 keeps it on `Gemma3Attention` but
/// never passes it to the attention function, so Gemma 3's scores are not capped
/// (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L327-L337>;
/// scripts/make_fixtures.py checks it). `final_logit_softcapping` only acts on the LM head.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3TextConfig {
    /// Rows of `embed_tokens`.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Width of the gated MLP.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers (`layers.*`).
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Key and value heads, each shared by a group of query heads.
    #[serde(default = "default_num_key_value_heads")]
    pub num_key_value_heads: usize,
    /// Width of a head, given outright (not `hidden_size / num_attention_heads`).
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    /// The activation of the MLP's gate.
    #[serde(default = "default_hidden_activation")]
    pub hidden_activation: Activation,
    /// The longest input the model takes.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// The rotary base of the full-attention layers.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// The rotary scaling of the full-attention layers (transformers 4's form).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// The rotary base of the sliding layers, which are never scaled.
    #[serde(default = "default_rope_local_base_freq")]
    pub rope_local_base_freq: f64,
    /// Biases on q, k, v and o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5`.
    #[serde(default = "default_query_pre_attn_scalar")]
    pub query_pre_attn_scalar: f64,
    /// The sliding layers' window as `config.json` writes it; [`Gemma3TextConfig::window`] is
    /// what transformers makes of it.
    #[serde(default = "default_sliding_window")]
    pub sliding_window: Option<usize>,
    /// Without `layer_types`, every `sliding_window_pattern`-th layer is full, the others slide
    /// (older configs' form).
    #[serde(default = "default_sliding_window_pattern")]
    pub sliding_window_pattern: usize,
    /// Each layer's attention span.
    #[serde(default)]
    pub layer_types: Option<Vec<LayerType>>,
    /// Non-causal attention (EmbeddingGemma).
    #[serde(default)]
    pub use_bidirectional_attention: bool,
    /// transformers 5's rotary settings, one entry per layer type; where present they take the
    /// place of `rope_theta`, `rope_scaling` and `rope_local_base_freq`.
    #[serde(default)]
    pub rope_parameters: Option<Gemma3RopeParameters>,
    /// Class names, for a classification head (none is implemented for this model).
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

/// `rope_parameters` as transformers 5 saves Gemma 3's config: keyed by layer type, e.g.
/// `{"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
/// "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}`. transformers 5 builds
/// it from transformers 4's fields when a config has those (`rope_scaling` onto the full
/// layers, `rope_local_base_freq` as the sliding layers' base), and a missing entry or base
/// falls back to them.
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gemma3/configuration_gemma3.py#L132-L159>
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3RopeParameters {
    /// The full-attention layers' rotation.
    #[serde(default)]
    pub full_attention: Option<RopeScaling>,
    /// The sliding layers' rotation (which transformers 5 may scale too).
    #[serde(default)]
    pub sliding_attention: Option<RopeScaling>,
    /// Any other key: a flat `rope_parameters` (the form of single-rotation models), which
    /// transformers 5 does not read as Gemma 3's either; refused by `validate`.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

fn default_vocab_size() -> usize {
    262_208
}
fn default_hidden_size() -> usize {
    2304
}
fn default_intermediate_size() -> usize {
    9216
}
fn default_num_hidden_layers() -> usize {
    26
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_num_key_value_heads() -> usize {
    4
}
fn default_head_dim() -> usize {
    256
}
fn default_hidden_activation() -> Activation {
    Activation::GeluNew
}
fn default_max_position_embeddings() -> usize {
    131_072
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    1_000_000.0
}
fn default_rope_local_base_freq() -> f64 {
    10_000.0
}
fn default_query_pre_attn_scalar() -> f64 {
    256.0
}
fn default_sliding_window() -> Option<usize> {
    Some(4096)
}
fn default_sliding_window_pattern() -> usize {
    6
}

impl Gemma3TextConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        require_positive("vocab_size", self.vocab_size)?;
        require_positive("hidden_size", self.hidden_size)?;
        require_positive("intermediate_size", self.intermediate_size)?;
        require_positive("num_hidden_layers", self.num_hidden_layers)?;
        require_positive("num_attention_heads", self.num_attention_heads)?;
        require_positive("num_key_value_heads", self.num_key_value_heads)?;
        require_positive("head_dim", self.head_dim)?;
        require_positive("max_position_embeddings", self.max_position_embeddings)?;
        require_positive("sliding_window_pattern", self.sliding_window_pattern)?;
        require_divisible(
            "num_attention_heads",
            self.num_attention_heads,
            "num_key_value_heads",
            self.num_key_value_heads,
        )?;
        if !(self.query_pre_attn_scalar.is_finite() && self.query_pre_attn_scalar > 0.0) {
            return Err(Error::InvalidConfig(format!(
                "query_pre_attn_scalar must be a positive number, not {}",
                self.query_pre_attn_scalar
            )));
        }
        if let Some(key) = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.other.keys().next())
        {
            return Err(Error::InvalidConfig(format!(
                "gemma3_text's rope_parameters has `{key}`: it must be keyed by layer type \
                 (`full_attention`, `sliding_attention`), each entry with its rope_type and \
                 rope_theta, as transformers 5 saves it"
            )));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err(Error::InvalidConfig(format!(
                    "layer_types names {} layers, num_hidden_layers is {}",
                    types.len(),
                    self.num_hidden_layers
                )));
            }
        }
        let slides = (0..self.num_hidden_layers)
            .any(|layer| self.layer_type(layer) == LayerType::SlidingAttention);
        if slides && self.sliding_window.is_none_or(|window| window == 0) {
            return Err(Error::InvalidConfig(
                "sliding_attention layers need a sliding_window of at least 1".to_string(),
            ));
        }
        self.rotary(LayerType::FullAttention)?;
        self.rotary(LayerType::SlidingAttention)?;
        Ok(())
    }

    /// Number of classes of a classification head: `id2label`'s size, else transformers' 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }

    /// Layer `layer`'s span: `layer_types`, else every `sliding_window_pattern`-th layer full.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/configuration_gemma3.py#L236-L242>
    pub fn layer_type(&self, layer: usize) -> LayerType {
        match &self.layer_types {
            Some(types) => types
                .get(layer)
                .copied()
                .unwrap_or(LayerType::FullAttention),
            None if (layer + 1).is_multiple_of(self.sliding_window_pattern.max(1)) => {
                LayerType::FullAttention
            }
            None => LayerType::SlidingAttention,
        }
    }

    /// The sliding layers' window as transformers applies it. With bidirectional attention,
    /// `Gemma3TextConfig.__init__` turns `sliding_window` into `sliding_window // 2 + 1` ("due
    /// to fa we set exclusive bounds"), and does so on every load: EmbeddingGemma's 512 is 257,
    /// and a query sees the keys less than 257 positions away on either side.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/configuration_gemma3.py#L228-L229>
    pub fn window(&self) -> Option<usize> {
        let window = self.sliding_window?;
        Some(match self.use_bidirectional_attention {
            true => window / 2 + 1,
            false => window,
        })
    }

    /// The rotation of the layers of `kind`: transformers 5's `rope_parameters` entry for it
    /// where there is one (its base, else the transformers 4 field's); else the global one from
    /// `rope_theta` and `rope_scaling`, the local one from `rope_local_base_freq` unscaled
    /// (transformers 4 copies the config with `rope_scaling = {"rope_type": "default"}` for it).
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L472-L480>
    /// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gemma3/modeling_gemma3.py#L140-L159>
    fn rotary(&self, kind: LayerType) -> Result<RotaryEmbedding> {
        let entry = self.rope_parameters.as_ref().and_then(|p| match kind {
            LayerType::FullAttention => p.full_attention.as_ref(),
            LayerType::SlidingAttention => p.sliding_attention.as_ref(),
        });
        let (theta, scaling) = match kind {
            LayerType::FullAttention => (self.rope_theta, entry.or(self.rope_scaling.as_ref())),
            LayerType::SlidingAttention => (self.rope_local_base_freq, entry),
        };
        let theta = entry.and_then(|e| e.rope_theta).unwrap_or(theta);
        RotaryEmbedding::new(theta, self.head_dim, scaling, self.max_position_embeddings)
    }

    /// Whether a query at `query` sees the key at `key` in a layer of `kind` (padding aside):
    /// causal, within the window on sliding layers (`sliding_window_overlay`: `key > query -
    /// window`); or, bidirectional, every key on full layers and those with `|query - key| <
    /// window` on sliding ones (`_bidirectional_window_overlay`, OR-ed onto the causal window,
    /// which it contains).
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L442-L452>
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/masking_utils.py#L74-L90>
    fn sees(&self, kind: LayerType, query: usize, key: usize) -> bool {
        let window = match kind {
            LayerType::FullAttention => None,
            LayerType::SlidingAttention => self.window(),
        };
        let within = |distance: usize| window.is_none_or(|window| distance < window);
        match self.use_bidirectional_attention {
            true => within(query.abs_diff(key)),
            false => key <= query && within(query - key),
        }
    }
}

/// Cosines and sines of every row's positions, (batch, 1, seq, head_dim) each, in f32.
struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

/// What every layer of one forward reads: the rotations and the masks of each span.
struct Context {
    global: Rotation,
    local: Option<Rotation>,
    /// The full and the sliding layers' additive masks ([`attention_bias`]).
    full_mask: Option<Tensor>,
    sliding_mask: Option<Tensor>,
}

/// The additive f32 mask of a layer of `kind`: 0 where the query sees the key and it is a real
/// token, `f32::MIN` elsewhere, as transformers' eager masks hold `finfo.min` (one value, never a
/// sum of two, so that a row whose window holds only padding stays finite). (batch or 1, 1, seq,
/// seq); (batch, 1, 1, seq) when only padding is hidden (bidirectional full layers); `None`
/// when nothing is.
fn attention_bias(
    config: &Gemma3TextConfig,
    kind: LayerType,
    real: Option<&[Vec<bool>]>,
    seq: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    let real = real.filter(|rows| rows.iter().flatten().any(|&real| !real));
    let pattern_hides = (0..seq).any(|q| (0..seq).any(|k| !config.sees(kind, q, k)));
    let rows = real.map_or(1, <[Vec<bool>]>::len);
    let queries = match pattern_hides {
        true => seq,
        false if real.is_some() => 1,
        false => return Ok(None),
    };
    let mut values = Vec::with_capacity(rows * queries * seq);
    for row in 0..rows {
        for q in 0..queries {
            values.extend((0..seq).map(|k| {
                let padding = real.is_some_and(|real| !real[row][k]);
                let hidden = pattern_hides && !config.sees(kind, q, k);
                match padding || hidden {
                    true => f32::MIN,
                    false => 0.0,
                }
            }));
        }
    }
    Ok(Some(Tensor::from_vec(
        values,
        (rows, 1, queries, seq),
        device,
    )?))
}

/// `self_attn`: q, k and v in one product, `q_norm` and `k_norm` on each head, the rotation of
/// the layer's span, attention over its mask, `o_proj`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L263-L341>
#[derive(Debug, Clone)]
struct Gemma3Attention {
    qkv_proj: Linear,
    o_proj: Linear,
    head_norms: HeadNorms,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// `query_pre_attn_scalar^-0.5`.
    scale: f64,
}

impl Gemma3Attention {
    fn load(vb: ModelWeights, config: &Gemma3TextConfig) -> Result<Self> {
        let (hidden, head_dim) = (config.hidden_size, config.head_dim);
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let norm = |name: &str| RmsNorm::load_plus_one(vb.pp(name), head_dim, config.rms_norm_eps);
        let (q_norm, k_norm) = (norm("q_norm")?, norm("k_norm")?);
        Ok(Self {
            qkv_proj: Linear::stacked(
                &vb,
                &[
                    ("q_proj", heads * head_dim),
                    ("k_proj", kv_heads * head_dim),
                    ("v_proj", kv_heads * head_dim),
                ],
                hidden,
                config.attention_bias,
            )?,
            o_proj: Linear::load_with_bias(
                &vb.pp("o_proj"),
                heads * head_dim,
                hidden,
                config.attention_bias,
            )?,
            head_norms: HeadNorms::new(q_norm.scale(), k_norm.scale(), config.rms_norm_eps as f32)?,
            heads,
            kv_heads,
            head_dim,
            scale: config.query_pre_attn_scalar.powf(-0.5),
        })
    }

    /// The normed hidden states (batch, seq, hidden) -> the attention's output, before
    /// `post_attention_layernorm`.
    fn forward(
        &self,
        normed: &Tensor,
        rotation: &Rotation,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (rows, len, _) = normed.dims3()?;
        let qkv = self.qkv_proj.forward(normed)?;
        let RotatedHeads { q, k, v } = rotated_heads(
            &qkv,
            &rotation.cos,
            &rotation.sin,
            self.heads,
            self.kv_heads,
            Some(&self.head_norms),
        )?;
        let context = decoder_attention(&q, &k, &v, mask, self.scale)?
            .transpose(1, 2)?
            .reshape((rows, len, self.heads * self.head_dim))?;
        // candle's ops (off the CPU's kernels) norm and attend in f32: `o_proj` takes the
        // activations' dtype.
        self.o_proj.forward(&context.to_dtype(normed.dtype())?)
    }
}

/// `layers.N`: attention and MLP, each between two norms and added to its input.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L344-L400>
#[derive(Debug, Clone)]
struct Gemma3DecoderLayer {
    kind: LayerType,
    input_layernorm: RmsNorm,
    self_attn: Gemma3Attention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    /// `mlp.gate_proj` and `mlp.up_proj`, stacked.
    gate_up_proj: Linear,
    activation: Activation,
    down_proj: Linear,
    post_feedforward_layernorm: RmsNorm,
}

impl Gemma3DecoderLayer {
    fn load(vb: ModelWeights, config: &Gemma3TextConfig, layer: usize) -> Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let norm = |name: &str| RmsNorm::load_plus_one(vb.pp(name), hidden, config.rms_norm_eps);
        let mlp = vb.pp("mlp");
        Ok(Self {
            kind: config.layer_type(layer),
            input_layernorm: norm("input_layernorm")?,
            self_attn: Gemma3Attention::load(vb.pp("self_attn"), config)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            pre_feedforward_layernorm: norm("pre_feedforward_layernorm")?,
            gate_up_proj: Linear::stacked(
                &mlp,
                &[("gate_proj", inner), ("up_proj", inner)],
                hidden,
                false,
            )?,
            activation: config.hidden_activation,
            down_proj: Linear::load_with_bias(&mlp.pp("down_proj"), inner, hidden, false)?,
            post_feedforward_layernorm: norm("post_feedforward_layernorm")?,
        })
    }

    fn forward(&self, hidden: &Tensor, context: &Context) -> Result<Tensor> {
        let (rotation, mask) = match (self.kind, &context.local) {
            (LayerType::SlidingAttention, Some(local)) => (local, context.sliding_mask.as_ref()),
            _ => (&context.global, context.full_mask.as_ref()),
        };
        let attended =
            self.self_attn
                .forward(&self.input_layernorm.forward(hidden)?, rotation, mask)?;
        let hidden = (hidden + self.post_attention_layernorm.forward(&attended)?)?;
        // Gemma3MLP: `down_proj(act_fn(gate_proj(x)) * up_proj(x))`.
        let gate_up = self
            .gate_up_proj
            .forward(&self.pre_feedforward_layernorm.forward(&hidden)?)?;
        let mlp = self.down_proj.forward(&gated(self.activation, &gate_up)?)?;
        Ok((&hidden + self.post_feedforward_layernorm.forward(&mlp)?)?)
    }
}

/// `Gemma3TextModel`: `embed_tokens`, `layers.*`, `norm`; the hidden states after the final
/// norm. Loaded as [`AutoModel`](crate::AutoModel) for `gemma3_text` checkpoints, what
/// EmbeddingGemma's modules pool.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L456-L598>
#[derive(Debug, Clone)]
pub struct Gemma3TextModel {
    embed_tokens: Embedding,
    /// `sqrt(hidden_size)` as transformers multiplies by it: a float32 tensor cast to the
    /// table's dtype (`embed_scale.to(self.weight.dtype)`), so a bf16 table is scaled by the
    /// bf16 value (EmbeddingGemma's sqrt(768) = 27.71 becomes 27.75).
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gemma3/modeling_gemma3.py#L97-L107>
    embed_scale: f64,
    layers: Vec<Gemma3DecoderLayer>,
    norm: RmsNorm,
    global_rotary: RotaryEmbedding,
    local_rotary: RotaryEmbedding,
    /// Boxed: the auto classes' enums are as large as their largest variant.
    config: Box<Gemma3TextConfig>,
}

impl Gemma3TextModel {
    /// Load from the model's keys, at the checkpoint's root (`Gemma3TextModel.save_pretrained`,
    /// as EmbeddingGemma ships) or under `model.` (a `Gemma3ForCausalLM` checkpoint).
    pub fn load(vb: ModelWeights, config: &Gemma3TextConfig) -> Result<Self> {
        config.validate()?;
        let vb = base_model_weights(&vb, "model", "embed_tokens.weight")?;
        let table = vb
            .pp("embed_tokens")
            .get((config.vocab_size, config.hidden_size), "weight")?;
        let embed_scale = Tensor::new((config.hidden_size as f64).sqrt() as f32, &Device::Cpu)?
            .to_dtype(table.dtype())?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        let layers = vb.pp("layers");
        Ok(Self {
            embed_tokens: Embedding::new(table),
            embed_scale: f64::from(embed_scale),
            layers: (0..config.num_hidden_layers)
                .map(|i| Gemma3DecoderLayer::load(layers.pp(i), config, i))
                .collect::<Result<_>>()?,
            norm: RmsNorm::load_plus_one(vb.pp("norm"), config.hidden_size, config.rms_norm_eps)?,
            global_rotary: config.rotary(LayerType::FullAttention)?,
            local_rotary: config.rotary(LayerType::SlidingAttention)?,
            config: Box::new(config.clone()),
        })
    }

    /// The parsed `config.json` the model was loaded with.
    pub fn config(&self) -> &Gemma3TextConfig {
        &self.config
    }

    /// The hidden states after the final norm, (batch, seq, hidden), f32 on the CPU whatever
    /// the weights' dtype. Positions count from 0 in every row, as transformers counts them
    /// without `position_ids`; padding (`attention_mask` 0) is hidden from every query, and
    /// its own rows hold values no caller should read. Errors: [`Error::InputTooLong`] past
    /// `max_position_embeddings`, [`Error::InvalidInput`] for an empty input, a mask of
    /// another shape, or an id outside the vocabulary.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        crate::kernels::on_worker(|| self.forward_on_worker(input))
    }

    fn forward_on_worker(&self, input: &ModelInput) -> Result<EncoderOutput> {
        let (batch, seq) = input.input_ids.dims2()?;
        if seq == 0 {
            return Err(Error::InvalidInput("input_ids holds no token".to_string()));
        }
        let max = self.config.max_position_embeddings;
        if seq > max {
            return Err(Error::InputTooLong { length: seq, max });
        }
        let real = match &input.attention_mask {
            Some(mask) if mask.dims() != [batch, seq] => {
                return Err(Error::InvalidInput(format!(
                    "attention_mask has shape {:?}, input_ids {:?}",
                    mask.dims(),
                    [batch, seq]
                )))
            }
            Some(mask) => Some(
                mask.to_dtype(DType::F32)?
                    .to_vec2::<f32>()?
                    .into_iter()
                    .map(|row| row.into_iter().map(|m| m != 0.0).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
            ),
            None => None,
        };
        let device = self.embed_tokens.device().clone();
        // `cache_position` for every row: transformers counts positions from 0 whatever the
        // padding (RoPE depends on distances only, so a left-padded row's shift changes
        // nothing but rounding).
        let positions: Vec<u32> = (0..batch).flat_map(|_| 0..seq as u32).collect();
        let rotation = |rotary: &RotaryEmbedding| -> Result<Rotation> {
            let (cos, sin) = rotary.cos_sin(&positions, batch, &device)?;
            Ok(Rotation { cos, sin })
        };
        let slides = self
            .layers
            .iter()
            .any(|layer| layer.kind == LayerType::SlidingAttention);
        let mask = |kind| attention_bias(&self.config, kind, real.as_deref(), seq, &device);
        let context = Context {
            global: rotation(&self.global_rotary)?,
            local: slides.then(|| rotation(&self.local_rotary)).transpose()?,
            full_mask: mask(LayerType::FullAttention)?,
            sliding_mask: match slides {
                true => mask(LayerType::SlidingAttention)?,
                false => None,
            },
        };
        let mut hidden = (self.embed_tokens.forward(&input.input_ids)? * self.embed_scale)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &context)?;
        }
        Ok(EncoderOutput {
            last_hidden_state: self.norm.forward(&hidden)?,
            pooler_output: None,
        })
    }
}

from_pretrained_impls!(gemma3_text: Gemma3TextModel);
