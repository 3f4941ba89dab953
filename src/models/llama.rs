//! The Llama family of decoders: Llama 2 and 3 (SmolLM, TinyLlama), Mistral, Qwen2 (Qwen2.5)
//! and Qwen3, one block for all, with each family's variants read from `config.json` where
//! they act.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/llama/modeling_llama.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py>),
//! with the differences of `modular_mistral.py`, `modular_qwen2.py` and `modular_qwen3.py`:
//! - grouped-query attention: `num_key_value_heads` heads of keys and values, each shared by
//!   a group of query heads (one for multi-query attention);
//! - `head_dim` may differ from `hidden_size / num_attention_heads` (Qwen3-0.6B: 128, not 64);
//! - biases on q, k and v always (Qwen2), on q, k, v and o with `attention_bias` (Llama,
//!   Qwen3), on the MLP with `mlp_bias` (Llama), never (Mistral);
//! - Qwen3 normalises each head of q and k (RMSNorm over `head_dim`) before the rotation;
//! - a sliding window of `sliding_window` keys: always for Mistral; for Qwen2 and Qwen3 only
//!   with `use_sliding_window`, and then on the layers that `layer_types` (or
//!   `max_window_layers`) names;
//! - `lm_head` tied to `embed_tokens` with `tie_word_embeddings`, and then usually absent
//!   from the checkpoint.

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::{rotated_heads, swiglu, HeadNorms, RotatedHeads};
use crate::models::cache::{KvCache, LayerKv};
use crate::models::causal_lm::{DecoderStack, DecoderWithHead};
use crate::models::config::{token_ids, Labels};
use crate::models::decoder::{attention_bias, prepare, prepare_decode, rows_as_alone};
use crate::models::layers::{
    require_divisible, require_positive, Activation, Embedding, Linear, RmsNorm,
};
use crate::models::rope::{RopeScaling, RotaryEmbedding};
use crate::models::weight_type::WeightType;
use crate::models::weights::ModelWeights;
use crate::models::{EncoderOutput, ModelInput};

/// Which family a Llama-style `config.json` is of: the defaults and fixed choices that are not
/// in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LlamaFamily {
    /// `"model_type": "llama"`.
    #[default]
    Llama,
    /// `"model_type": "mistral"`.
    Mistral,
    /// `"model_type": "qwen2"`.
    Qwen2,
    /// `"model_type": "qwen3"`.
    Qwen3,
}

/// `LlamaConfig`, `MistralConfig`, `Qwen2Config` or `Qwen3Config` from `config.json`: the fields
/// the one block reads. The family (set from `model_type` when the file is read) decides what
/// a missing field means.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// Which of the four families the file is; from `model_type`.
    #[serde(skip)]
    pub family: LlamaFamily,
    /// Rows of `embed_tokens`, and the width of the logits.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers (`model.layers.*`).
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key and value heads (grouped-query attention); as many as query heads when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of a head; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Positions the model was made for: prompt plus generated tokens may not exceed it.
    pub max_position_embeddings: usize,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// The MLP's activation; SiLU in all four families.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: Activation,
    /// The rotary base (transformers 4's place for it).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// The rotary scaling of transformers 4.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// The rotary base and scaling of transformers 5.
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    /// Biases on q, k, v and o (Llama, Qwen3).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP's three projections (Llama).
    #[serde(default)]
    pub mlp_bias: bool,
    /// `lm_head` is `embed_tokens`.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Keys a query sees at most, itself included (Mistral; Qwen2 and Qwen3 with
    /// `use_sliding_window`).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2 and Qwen3: whether `sliding_window` applies at all.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Qwen2 and Qwen3: the layers from this one on use the window.
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// `full_attention` or `sliding_attention` per layer, as transformers 4.57 saves it.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Beginning-of-text token. The model does not read it.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End token(s), one id or a list. The model does not read them; generation takes its
    /// stop tokens from `generation_config.json`, else from here.
    #[serde(default, deserialize_with = "token_ids")]
    pub eos_token_id: Vec<u32>,
    /// Padding token, when the config names one.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// What each rotary frequency is divided by: how llama.cpp's converter stores llama3's
    /// scaling in a GGUF file (its `rope_freqs` tensor), in place of `rope_scaling`. Never in
    /// `config.json`.
    #[serde(skip)]
    pub rope_frequency_divisors: Option<Vec<f32>>,
    /// Class names, for a sequence-classification head (not implemented for this family).
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_hidden_act() -> Activation {
    Activation::Silu
}

impl LlamaConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        require_positive("vocab_size", self.vocab_size)?;
        require_positive("hidden_size", self.hidden_size)?;
        require_positive("intermediate_size", self.intermediate_size)?;
        require_positive("num_hidden_layers", self.num_hidden_layers)?;
        require_positive("num_attention_heads", self.num_attention_heads)?;
        require_positive("max_position_embeddings", self.max_position_embeddings)?;
        if self.head_dim.is_none() {
            require_divisible(
                "hidden_size",
                self.hidden_size,
                "num_attention_heads",
                self.num_attention_heads,
            )?;
        }
        require_positive("head_dim", self.head_dim())?;
        require_positive("num_key_value_heads", self.num_key_value_heads())?;
        require_divisible(
            "num_attention_heads",
            self.num_attention_heads,
            "num_key_value_heads",
            self.num_key_value_heads(),
        )?;
        if self.hidden_act != Activation::Silu {
            return Err(Error::InvalidConfig(format!(
                "hidden_act {:?} is not supported for Llama-style models: only silu",
                self.hidden_act
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
            if let Some(other) = types
                .iter()
                .find(|t| *t != "full_attention" && *t != "sliding_attention")
            {
                return Err(Error::InvalidConfig(format!(
                    "layer type `{other}` is not supported: full_attention or sliding_attention"
                )));
            }
        }
        if self.sliding_window == Some(0) {
            return Err(Error::InvalidConfig(
                "sliding_window must be at least 1".to_string(),
            ));
        }
        self.rotary_embedding().map(|_| ())
    }

    /// The rotary embedding the config describes.
    pub fn rotary_embedding(&self) -> Result<RotaryEmbedding> {
        let rotary = RotaryEmbedding::new(
            self.rope_theta(),
            self.head_dim(),
            self.rope_scaling(),
            self.max_position_embeddings,
        )?;
        match &self.rope_frequency_divisors {
            Some(divisors) => rotary.with_frequency_divisors(divisors),
            None => Ok(rotary),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Key and value heads.
    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The rotary base: `rope_parameters.rope_theta` (transformers 5), else `rope_theta`,
    /// else 10000 as all four families default.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// The rotary scaling, from either form of the config.
    pub fn rope_scaling(&self) -> Option<&RopeScaling> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// The window of layer `layer`, if it slides: transformers 4.57's `layer_types`, else the
    /// family's rule.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/qwen2/configuration_qwen2.py#L181>
    pub fn sliding_window_of(&self, layer: usize) -> Option<usize> {
        let window = self.sliding_window?;
        if let Some(types) = &self.layer_types {
            return (types.get(layer)? == "sliding_attention").then_some(window);
        }
        match self.family {
            LlamaFamily::Llama => None,
            LlamaFamily::Mistral => Some(window),
            LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => (self.use_sliding_window
                && layer >= self.max_window_layers.unwrap_or(28))
            .then_some(window),
        }
    }

    fn qkv_bias(&self) -> bool {
        match self.family {
            LlamaFamily::Qwen2 => true,
            LlamaFamily::Mistral => false,
            LlamaFamily::Llama | LlamaFamily::Qwen3 => self.attention_bias,
        }
    }

    fn o_bias(&self) -> bool {
        matches!(self.family, LlamaFamily::Llama | LlamaFamily::Qwen3) && self.attention_bias
    }

    fn mlp_bias(&self) -> bool {
        self.family == LlamaFamily::Llama && self.mlp_bias
    }
}

/// A linear layer whose bias the family may or may not have.
fn linear(vb: ModelWeights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    Linear::load_with_bias(&vb, in_dim, out_dim, bias)
}

/// `self_attn`: q, k and v projected in one product, Qwen3's per-head norms, the rotation,
/// attention over the cache (each key and value head serving its group of query heads), `o_proj`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L196>
#[derive(Debug, Clone)]
struct LlamaAttention {
    qkv_proj: Linear,
    o_proj: Linear,
    /// Qwen3's `q_norm` and `k_norm`.
    head_norms: Option<HeadNorms>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    /// The dtype keys and values are cached in: bf16 with bf16 weights (a cache in the
    /// weights' precision, as PyTorch's and llama.cpp's are, and half the bytes that each
    /// step reads from it), else as computed.
    cache_dtype: Option<DType>,
}

/// Cosines and sines of one forward's positions, (rows, 1, len, head_dim) each.
struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl LlamaAttention {
    fn load(vb: ModelWeights, config: &LlamaConfig, layer: usize) -> Result<Self> {
        let (hidden, head_dim) = (config.hidden_size, config.head_dim());
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads());
        let head_norms = (config.family == LlamaFamily::Qwen3)
            .then(|| -> Result<HeadNorms> {
                let weight = |name: &str| vb.pp(name).get(head_dim, "weight");
                let eps = config.rms_norm_eps as f32;
                Ok(HeadNorms::new(&weight("q_norm")?, &weight("k_norm")?, eps)?)
            })
            .transpose()?;
        Ok(Self {
            qkv_proj: Linear::stacked(
                &vb,
                &[
                    ("q_proj", heads * head_dim),
                    ("k_proj", kv_heads * head_dim),
                    ("v_proj", kv_heads * head_dim),
                ],
                hidden,
                config.qkv_bias(),
            )?,
            o_proj: linear(vb.pp("o_proj"), heads * head_dim, hidden, config.o_bias())?,
            head_norms,
            heads,
            kv_heads,
            head_dim,
            window: config.sliding_window_of(layer),
            cache_dtype: (vb.weight_type() == WeightType::Bf16).then_some(DType::BF16),
        })
    }

    /// The attention context, (rows, len, heads × head_dim), of the normed `hidden`, after
    /// appending its keys and values to `cache`.
    fn attend(
        &self,
        hidden: &Tensor,
        rotation: &Rotation,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let qkv = self.qkv_proj.forward(hidden)?;
        self.attend_projected(&qkv, rotation, mask, cache)
    }

    fn attend_projected(
        &self,
        qkv: &Tensor,
        rotation: &Rotation,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let (rows, len, _) = qkv.dims3()?;
        let d = self.head_dim;
        let RotatedHeads { q, k, v } = rotated_heads(
            qkv,
            &rotation.cos,
            &rotation.sin,
            self.heads,
            self.kv_heads,
            self.head_norms.as_ref(),
        )?;
        // Rounded to the cache's dtype with or without a cache, so that a cached step and a
        // full forward attend to the same keys.
        let (k, v) = match self.cache_dtype {
            Some(dtype) => (k.to_dtype(dtype)?, v.to_dtype(dtype)?),
            None => (k, v),
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (d as f64).sqrt();
        Ok(crate::kernels::decoder_attention(&q, &k, &v, mask, scale)?
            .transpose(1, 2)?
            .reshape((rows, len, self.heads * d))?)
    }
}

/// `model.layers.N`: pre-norm attention and SwiGLU MLP, each with its residual.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L263>
#[derive(Debug, Clone)]
struct LlamaDecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: LlamaAttention,
    post_attention_layernorm: RmsNorm,
    /// `mlp.gate_proj` and `mlp.up_proj`, stacked.
    gate_up_proj: Linear,
    down_proj: Linear,
}

impl LlamaDecoderLayer {
    fn load(vb: ModelWeights, config: &LlamaConfig, layer: usize) -> Result<Self> {
        let (hidden, inner, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.rms_norm_eps,
        );
        let mlp = vb.pp("mlp");
        Ok(Self {
            input_layernorm: RmsNorm::load(vb.pp("input_layernorm"), hidden, eps)?,
            self_attn: LlamaAttention::load(vb.pp("self_attn"), config, layer)?,
            post_attention_layernorm: RmsNorm::load(
                vb.pp("post_attention_layernorm"),
                hidden,
                eps,
            )?,
            gate_up_proj: Linear::stacked(
                &mlp,
                &[("gate_proj", inner), ("up_proj", inner)],
                hidden,
                config.mlp_bias(),
            )?,
            down_proj: linear(mlp.pp("down_proj"), inner, hidden, config.mlp_bias())?,
        })
    }

    /// `silu(gate) · up` of the stacked projections.
    fn swiglu(&self, gate_up: &Tensor) -> Result<Tensor> {
        Ok(swiglu(gate_up)?)
    }

    fn forward(
        &self,
        hidden: &Tensor,
        rotation: &Rotation,
        masks: &Masks,
        cache: Option<&mut LayerKv>,
    ) -> Result<Tensor> {
        let mask = masks.for_window(self.self_attn.window);
        let context = self.self_attn.attend(
            &self.input_layernorm.forward(hidden)?,
            rotation,
            mask,
            cache,
        )?;
        let hidden = self
            .self_attn
            .o_proj
            .forward_with(&context, None, Some(hidden))?;
        let gate_up = self
            .gate_up_proj
            .forward(&self.post_attention_layernorm.forward(&hidden)?)?;
        self.down_proj
            .forward_with(&self.swiglu(&gate_up)?, None, Some(&hidden))
    }

    /// [`LlamaDecoderLayer::forward`] of one new token per sequence, (rows, 1, hidden), each
    /// sequence over its own cache in `layers`, with products grouped so that every row is
    /// bitwise what it is alone.
    fn decode_step(
        &self,
        hidden: &Tensor,
        rows: &[(Rotation, Masks)],
        layers: &mut [&mut LayerKv],
    ) -> Result<Tensor> {
        let normed = self.input_layernorm.forward(hidden)?;
        let qkv = rows_as_alone(&self.self_attn.qkv_proj, &normed, None, None)?;
        // Attention per sequence: the caches differ in length, and padding them to one would
        // change the sums of the shorter ones.
        let contexts = layers
            .iter_mut()
            .zip(rows)
            .enumerate()
            .map(|(row, (layer, (rotation, masks)))| {
                self.self_attn.attend_projected(
                    &qkv.narrow(0, row, 1)?,
                    rotation,
                    masks.for_window(self.self_attn.window),
                    Some(layer),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let context = Tensor::cat(&contexts, 0)?;
        let hidden = rows_as_alone(&self.self_attn.o_proj, &context, None, Some(hidden))?;
        let normed = self.post_attention_layernorm.forward(&hidden)?;
        let gate_up = rows_as_alone(&self.gate_up_proj, &normed, None, None)?;
        rows_as_alone(
            &self.down_proj,
            &self.swiglu(&gate_up)?,
            None,
            Some(&hidden),
        )
    }
}

/// One forward's masks: the full causal (and padding) mask, and the windowed one when a layer
/// slides.
struct Masks {
    full: Option<Tensor>,
    windowed: Option<Tensor>,
}

impl Masks {
    fn for_window(&self, window: Option<usize>) -> Option<&Tensor> {
        match window {
            Some(_) => self.windowed.as_ref(),
            None => self.full.as_ref(),
        }
    }
}

/// The decoder: `model.embed_tokens`, `model.layers.*`, `model.norm`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L334>
#[derive(Debug, Clone)]
pub struct LlamaModel {
    embed_tokens: Embedding,
    layers: Vec<LlamaDecoderLayer>,
    norm: RmsNorm,
    rotary: RotaryEmbedding,
    config: LlamaConfig,
}

impl LlamaModel {
    /// Load from `model.*` (`embed_tokens`, `layers.N`, `norm`).
    pub fn load(vb: ModelWeights, config: &LlamaConfig) -> Result<Self> {
        Self::load_decoder(vb.pp("model"), config)
    }

    /// Load from the decoder's own keys under `vb` (`embed_tokens`, `layers.N`, `norm`).
    fn load_decoder(vb: ModelWeights, config: &LlamaConfig) -> Result<Self> {
        config.validate()?;
        let embed_tokens =
            Embedding::load(vb.pp("embed_tokens"), config.vocab_size, config.hidden_size)?;
        Self::load_with(vb, config, embed_tokens)
    }

    /// Load `layers.*` and `norm` under `vb` beside `embed_tokens`, already made.
    fn load_with(vb: ModelWeights, config: &LlamaConfig, embed_tokens: Embedding) -> Result<Self> {
        let layers = vb.pp("layers");
        Ok(Self {
            embed_tokens,
            layers: (0..config.num_hidden_layers)
                .map(|i| LlamaDecoderLayer::load(layers.pp(i), config, i))
                .collect::<Result<_>>()?,
            norm: RmsNorm::load(vb.pp("norm"), config.hidden_size, config.rms_norm_eps)?,
            rotary: config.rotary_embedding()?,
            config: config.clone(),
        })
    }

    /// The parsed `config.json` the model was loaded with.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers)
    }

    /// Bytes of the linear layers' weights, as stored.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.self_attn.qkv_proj.weight_bytes()
                    + l.self_attn.o_proj.weight_bytes()
                    + l.gate_up_proj.weight_bytes()
                    + l.down_proj.weight_bytes()
            })
            .sum()
    }

    /// Hidden states of the new tokens, (batch, new, hidden), as
    /// [`Gpt2Model::forward`](crate::models::gpt2::Gpt2Model::forward) takes them: `input_ids`
    /// (batch, new) after those in `cache`, `attention_mask` (batch, cached + new) with 0 for
    /// left padding; positions are counted from the mask.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        crate::kernels::on_worker(|| self.forward_on_worker(input_ids, attention_mask, cache))
    }

    /// Hidden states, (rows, 1, hidden), of one new token for each of several independent
    /// sequences, each over its own cache (of one sequence): the products run once over all
    /// the rows and attention per sequence, each row bitwise what [`LlamaModel::forward`]
    /// gives that sequence alone on the CPU kernels.
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        crate::kernels::on_worker(|| self.decode_step_on_worker(tokens, caches))
    }
}

impl DecoderStack for LlamaModel {
    fn forward_on_worker(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let step = prepare(
            input_ids,
            attention_mask,
            cache.as_deref(),
            self.layers.len(),
            self.config.max_position_embeddings,
        )?;
        let device = input_ids.device();
        let (cos, sin) = self.rotary.cos_sin(&step.positions, step.batch, device)?;
        let rotation = Rotation { cos, sin };
        let window = self.layers.iter().find_map(|l| l.self_attn.window);
        let masks = Masks {
            full: attention_bias(step.mask.as_deref(), step.past, step.new, None, device)?,
            windowed: match window {
                Some(window) => attention_bias(
                    step.mask.as_deref(),
                    step.past,
                    step.new,
                    Some(window),
                    device,
                )?,
                None => None,
            },
        };
        let mut hidden = self.embed_tokens.forward(input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer_mut(i));
            hidden = layer.forward(&hidden, &rotation, &masks, layer_cache)?;
        }
        self.norm.forward(&hidden)
    }

    fn decode_step_on_worker(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let positions = prepare_decode(
            tokens,
            caches,
            self.layers.len(),
            self.config.max_position_embeddings,
        )?;
        let rows = tokens.len();
        let device = self.embed_tokens.device();
        // Each sequence's rotation and, where a layer slides, the keys its window leaves out:
        // made once for the step, read by every layer.
        let window = self.layers.iter().find_map(|l| l.self_attn.window);
        let steps = positions
            .iter()
            .map(|&position| {
                let (cos, sin) = self.rotary.cos_sin(&[position], 1, device)?;
                let masks = Masks {
                    full: None,
                    windowed: match window {
                        Some(window) => {
                            attention_bias(None, position as usize, 1, Some(window), device)?
                        }
                        None => None,
                    },
                };
                Ok((Rotation { cos, sin }, masks))
            })
            .collect::<Result<Vec<_>>>()?;
        let ids = Tensor::from_vec(tokens.to_vec(), (rows, 1), device)?;
        let mut hidden = self.embed_tokens.forward(&ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut layers: Vec<&mut LayerKv> =
                caches.iter_mut().map(|cache| cache.layer_mut(i)).collect();
            hidden = layer.decode_step(&hidden, &steps, &mut layers)?;
        }
        self.norm.forward(&hidden)
    }

    fn weight_bytes_per_token(&self) -> usize {
        LlamaModel::weight_bytes_per_token(self)
    }
}

/// A Llama-family decoder as a text embedder (Qwen3-Embedding, gte-Qwen2): its last hidden
/// states, which sentence-transformers' last-token pooling reads. Checkpoints saved from the
/// base model (`Qwen3Model.save_pretrained`, as Qwen3-Embedding's are) keep its keys at the
/// root; those of a causal LM under `model.`: either loads.
#[derive(Debug, Clone)]
pub struct LlamaEmbeddingModel {
    /// Boxed: the encoders beside it in `AutoModel` are much smaller.
    model: Box<LlamaModel>,
}

impl LlamaEmbeddingModel {
    /// Load from the decoder's keys, at the root or under `model.`.
    pub fn load(vb: ModelWeights, config: &LlamaConfig) -> Result<Self> {
        let vb = crate::models::base_model_weights(&vb, "model", "embed_tokens.weight")?;
        Ok(Self {
            model: Box::new(LlamaModel::load_decoder(vb, config)?),
        })
    }

    /// The hidden states after the final norm, (batch, seq, hidden), of a right-padded batch
    /// (causal attention: a token never sees the padding after it).
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        let hidden = self
            .model
            .forward(&input.input_ids, input.attention_mask.as_ref(), None)?;
        Ok(EncoderOutput {
            last_hidden_state: hidden,
            pooler_output: None,
        })
    }
}

/// `LlamaForCausalLM` (and Mistral's, Qwen2's and Qwen3's): the decoder and `lm_head`, which
/// is `embed_tokens` when `tie_word_embeddings` says so.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L409>
#[derive(Debug, Clone)]
pub struct LlamaForCausalLM {
    lm: DecoderWithHead<LlamaModel>,
}

impl LlamaForCausalLM {
    /// Load `model.*` and `lm_head`, or, tied, `lm_head` from `model.embed_tokens`: then the
    /// embeddings are read from the packed head, so the table is held once, and the head is
    /// packed first, while the process holds nothing else (a bf16 Qwen2.5-0.5B: its 272 MB
    /// table would otherwise be held twice, and its load's peak hold a third copy).
    pub fn load(vb: ModelWeights, config: &LlamaConfig) -> Result<Self> {
        config.validate()?;
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed = vb.pp("model").pp("embed_tokens");
        if config.tie_word_embeddings {
            // Tied checkpoints usually leave `lm_head.weight` out; when it is there it is the
            // same tensor, as transformers' tying makes it. A GGUF file's quantized table is
            // the head's blocks, and the embeddings read their rows.
            let lm_head = Linear::from_matrix(
                embed.matrix((vocab, hidden), "weight")?,
                None,
                vb.weight_type(),
            )?;
            let embed_tokens = match Embedding::of_head(&lm_head, embed.device()) {
                Some(table) => table,
                None => Embedding::new(embed.get((vocab, hidden), "weight")?),
            };
            // The table as read is freed now; without this the heap would keep it resident
            // while every layer is loaded, the load's peak.
            crate::runtime::allocator::release_freed_memory();
            let decoder = LlamaModel::load_with(vb.pp("model"), config, embed_tokens)?;
            return Ok(Self {
                lm: DecoderWithHead { decoder, lm_head },
            });
        }
        let table = embed.get((vocab, hidden), "weight")?;
        let decoder = LlamaModel::load_with(vb.pp("model"), config, Embedding::new(table))?;
        let head = vb.pp("lm_head").matrix((vocab, hidden), "weight")?;
        Ok(Self {
            lm: DecoderWithHead {
                decoder,
                lm_head: Linear::from_matrix(head, None, vb.weight_type())?,
            },
        })
    }

    /// The parsed `config.json` the model was loaded with.
    pub fn config(&self) -> &LlamaConfig {
        self.lm.decoder.config()
    }

    /// An empty KV cache for one generation.
    pub fn new_cache(&self) -> KvCache {
        self.lm.decoder.new_cache()
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        self.lm.decoder.embed_tokens.device()
    }

    /// Prompt plus new tokens may not exceed this (`max_position_embeddings`).
    pub fn max_positions(&self) -> usize {
        self.config().max_position_embeddings
    }

    /// Logits of the new tokens, (batch, new, vocab). See [`LlamaModel::forward`].
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.lm.forward(input_ids, attention_mask, cache)
    }

    /// Logits of the last new token only, (batch, vocab): the LM head runs on one row per
    /// sequence.
    pub fn forward_last(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.lm.forward_last(input_ids, attention_mask, cache)
    }

    /// Logits, (rows, vocab), of one decoding step of several independent sequences; each row
    /// bitwise what [`LlamaForCausalLM::forward_last`] gives that sequence alone.
    pub fn decode_step(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        self.lm.decode_step(tokens, caches)
    }

    /// Bytes of weights one decoding step reads: every linear layer and the LM head.
    pub fn weight_bytes_per_token(&self) -> usize {
        self.lm.weight_bytes_per_token()
    }
}

from_pretrained_impls!(llama: LlamaModel, LlamaForCausalLM);
