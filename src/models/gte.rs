//! Alibaba's GTE (gte-multilingual-base, gte-base-en-v1.5, gte-large-en-v1.5 and their
//! rerankers): the encoder of `gated_bert` with rotary positions, biases
//! and a GeGLU feed-forward.
//!
//! Reference: transformers v5.25.0, `src/transformers/models/gte/modular_gte.py`
//! (<https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gte/modular_gte.py>).
//! Its checkpoints on the Hub were written by remote code (`"model_type": "new"`, the `NewModel`
//! class) and keep that code's key names, which transformers 5 maps to its own at load and
//! back at save (`conversion_mapping.py`, "gte"): `encoder.layer.N.attention.qkv_proj`,
//! `attention.o_proj`, `attn_ln`, `mlp.up_gate_proj` (up, then gate), `mlp.down_proj`, `mlp_ln`.
//! Both configs are read: transformers 5's (`"model_type": "gte"`, `rope_parameters`) and the
//! remote code's (`"new"`, `rope_theta` and `rope_scaling`).
//!
//! The heads are transformers 5's: `GteForMaskedLM`, `GteForSequenceClassification` and
//! `GteForTokenClassification`, the base model under `gte.` (or the remote code's `new.`).

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::config::Labels;
use crate::models::gated_bert::{EncoderShape, GatedBertEncoder, KeyNames, Positions, Qkv, UpGate};
use crate::models::layers::{require_encoder_sizes, Activation, LayerNorm, Linear};
use crate::models::rope::{RopeScaling, RotaryEmbedding};
use crate::models::task_heads::task_heads;
use crate::models::weights::ModelWeights;
use crate::models::{tied_weight, EncoderOutput, MaskedLmHead, ModelInput};

/// `GteConfig` (transformers 5) or the remote code's `NewConfig`, from `config.json`, with
/// transformers 5's defaults (gte-multilingual-base's).
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gte/configuration_gte.py>
#[derive(Debug, Clone, Deserialize)]
pub struct GteConfig {
    /// Rows of the token-embedding table.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Number of blocks (`encoder.layer.*`).
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads per block; must divide `hidden_size` into even head widths.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of each half of `up_gate_proj`.
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// The gate's activation.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: Activation,
    /// The longest input.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Token types; 0 (gte-base-en-v1.5) means the checkpoint has no type embeddings.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// transformers 5's rotary settings (`rope_theta`, `rope_type`).
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    /// The remote code's rotary base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// The remote code's rotary scaling: `{"type": "ntk", "factor": f}` in the v1.5 models.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// The remote code's switches, each read so that a checkpoint built otherwise is refused
    /// rather than run wrong: `rope` positions, `layer_norm`, packed q/k/v, no log-n scaling.
    #[serde(default = "default_position_embedding_type")]
    position_embedding_type: String,
    #[serde(default = "default_layer_norm_type")]
    layer_norm_type: String,
    #[serde(default = "default_true")]
    pack_qkv: bool,
    #[serde(default)]
    logn_attention_scale: bool,
    #[serde(default)]
    logn_attention_clip1: bool,
    /// Class names of the classification heads (rerankers: one logit).
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_vocab_size() -> usize {
    250048
}
fn default_hidden_size() -> usize {
    768
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    12
}
fn default_intermediate_size() -> usize {
    3072
}
fn default_hidden_act() -> Activation {
    Activation::Gelu
}
fn default_max_position_embeddings() -> usize {
    8192
}
fn default_type_vocab_size() -> usize {
    1
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "rope".to_string()
}
fn default_layer_norm_type() -> String {
    "layer_norm".to_string()
}
fn default_true() -> bool {
    true
}

/// transformers 5's `GteConfig.default_theta`.
const DEFAULT_ROPE_THETA: f64 = 160_000.0;

impl GteConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        require_encoder_sizes!(self)?;
        let unsupported = |what: String| {
            Err(Error::InvalidConfig(format!(
                "GTE with {what} is not supported: the released checkpoints use rotary \
                 positions, layer_norm, packed q/k/v and no log-n attention scaling"
            )))
        };
        if self.position_embedding_type != "rope" {
            return unsupported(format!(
                "position_embedding_type `{}`",
                self.position_embedding_type
            ));
        }
        if self.layer_norm_type != "layer_norm" {
            return unsupported(format!("layer_norm_type `{}`", self.layer_norm_type));
        }
        if !self.pack_qkv {
            return unsupported("pack_qkv false".to_string());
        }
        if self.logn_attention_scale || self.logn_attention_clip1 {
            return unsupported("logn_attention_scale".to_string());
        }
        // Builds the rotary embedding: a bad theta, head width or scaling fails here.
        self.rotary().map(|_| ())
    }

    /// Number of classes of a classification head: `id2label`'s size, else 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The rotary embedding: transformers 5's `rope_parameters`, or the remote code's
    /// `rope_theta` and `rope_scaling`. The remote code's `ntk` scaling is fixed NTK: the base
    /// times the factor, and every frequency then divided by `factor^(2 / head_dim)`, at every
    /// length (the remote code builds its table for `max_position_embeddings · factor`
    /// positions at load, which is past the trained length, so the scaled frequencies are the
    /// ones used). vLLM runs GTE's `new` checkpoints with the same frequencies:
    /// <https://github.com/vllm-project/vllm/blob/03587f553db4139402cc19f424c488c8e2fe25d1/vllm/model_executor/layers/rotary_embedding/ntk_scaling_rope.py#L32-L37>
    fn rotary(&self) -> Result<RotaryEmbedding> {
        let theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA);
        let scaling = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let head_dim = self.head_dim();
        match scaling.filter(|s| s.rope_type.as_deref() == Some("ntk")) {
            Some(ntk) => {
                let factor = ntk
                    .factor
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| {
                        Error::InvalidConfig(
                            "rope_scaling of type `ntk` needs a positive `factor`".to_string(),
                        )
                    })?;
                let divisor = factor.powf(2.0 / head_dim as f64) as f32;
                RotaryEmbedding::new(theta * factor, head_dim, None, self.max_position_embeddings)?
                    .with_frequency_divisors(&vec![divisor; head_dim / 2])
            }
            None => RotaryEmbedding::new(theta, head_dim, scaling, self.max_position_embeddings),
        }
    }

    fn shape(&self) -> EncoderShape {
        EncoderShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            vocab_rows: self.vocab_size,
            type_vocab_size: self.type_vocab_size,
            activation: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            biases: true,
            max_positions: self.max_position_embeddings,
        }
    }
}

/// GTE's key names (the remote code's, which transformers 5 also writes).
const KEY_NAMES: KeyNames = KeyNames {
    embeddings_norm: "embeddings.LayerNorm",
    layers: "encoder.layer",
    qkv: Qkv::Stacked("attention.qkv_proj"),
    attention_output: "attention.o_proj",
    attention_norm: "attn_ln",
    up_gate: UpGate::UpThenGate("mlp.up_gate_proj"),
    down: "mlp.down_proj",
    mlp_norm: "mlp_ln",
};

/// The base model's weights: at the root, or under `gte.` (transformers 5's heads) or `new.`
/// (the remote code's heads).
fn base_weights(vb: &ModelWeights) -> Result<ModelWeights> {
    let probe = "embeddings.word_embeddings.weight";
    for prefix in ["gte", "new"] {
        if vb.contains_tensor(&format!("{prefix}.{probe}")) {
            return Ok(vb.pp(prefix));
        }
    }
    if vb.contains_tensor(probe) {
        return Ok(vb.clone());
    }
    Err(Error::InvalidWeights(format!(
        "the checkpoint has no `{probe}`, at its root or under `gte.` or `new.`: is it a GTE \
         checkpoint?"
    )))
}

/// The GTE encoder.
#[derive(Debug, Clone)]
pub struct GteModel {
    encoder: GatedBertEncoder,
    config: Box<GteConfig>,
}

impl GteModel {
    /// Load the encoder from its keys, at the checkpoint's root or under `gte.` or `new.`.
    pub fn load(vb: ModelWeights, config: &GteConfig) -> Result<Self> {
        let vb = base_weights(&vb)?;
        Ok(Self {
            encoder: GatedBertEncoder::load(
                &vb,
                &config.shape(),
                &KEY_NAMES,
                Positions::Rotary(config.rotary()?),
            )?,
            config: Box::new(config.clone()),
        })
    }

    /// The parsed `config.json` the model was loaded with.
    pub fn config(&self) -> &GteConfig {
        &self.config
    }

    /// `last_hidden_state`, (batch, seq, hidden_size); no pooler output (GTE's base
    /// checkpoints have none). Errors: [`Error::InputTooLong`] past
    /// `max_position_embeddings`, [`Error::InvalidInput`] for an id outside the vocabulary or
    /// the token types.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        Ok(EncoderOutput {
            last_hidden_state: self.encoder.forward(input)?,
            pooler_output: None,
        })
    }

    fn word_embeddings(&self) -> Result<&Tensor> {
        self.encoder.word_embeddings()
    }

    fn last_hidden_state(&self, input: &ModelInput) -> Result<Tensor> {
        self.encoder.forward(input)
    }
}

/// `lm_head`, which is RoBERTa's head but for the decoder's own bias (`lm_head.decoder.bias`,
/// not `lm_head.bias`): `dense`, exact GELU whatever `hidden_act` says, `layer_norm`, then
/// `decoder` to the vocabulary, its weight tied to the word embeddings (and used from there
/// when the checkpoint omits it, as transformers 5 saves it). The layer norm is saved as
/// `lm_head.norm`, the remote code's name, which transformers 5 renames at load
/// (`conversion_mapping.py`, "gte").
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gte/modeling_gte.py#L423-L441>
fn masked_lm_head(
    vb: &ModelWeights,
    config: &GteConfig,
    word_embeddings: &Tensor,
) -> Result<MaskedLmHead> {
    let (hidden, vocab) = (config.hidden_size, config.vocab_size);
    let lm_head = vb.pp("lm_head");
    let decoder = lm_head.pp("decoder");
    Ok(MaskedLmHead {
        dense: Linear::load(lm_head.pp("dense"), hidden, hidden)?,
        activation: Activation::Gelu,
        layer_norm: LayerNorm::load(lm_head.pp("norm"), hidden, config.layer_norm_eps)?,
        decoder: Linear::new(
            tied_weight(&decoder, "weight", word_embeddings)?,
            Some(decoder.get(vocab, "bias")?),
            vb.weight_type(),
        )?,
    })
}

task_heads! {
    model: GteModel,
    config: GteConfig,
    under: "`gte.` or `new.`",
    num_labels: "[`GteConfig::num_labels`]",
    /// `GteForMaskedLM`: the encoder and `lm_head` (`masked_lm_head`).
    /// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gte/modeling_gte.py#L444-L506>
    masked_lm: GteForMaskedLM = masked_lm_head("`lm_head.*`"),
    /// `GteForSequenceClassification` (GTE's rerankers): BERT's pooler (dense and tanh on the
    /// first token) and a classifier.
    /// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gte/modular_gte.py#L230>
    sequence_classification: GteForSequenceClassification = pooler(base_weights),
    /// `GteForTokenClassification`: `classifier` on every token.
    /// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/gte/modeling_gte.py#L588-L641>
    token_classification: GteForTokenClassification,
}

from_pretrained_impls!(
    gte: GteModel,
    GteForMaskedLM,
    GteForSequenceClassification,
    GteForTokenClassification
);
