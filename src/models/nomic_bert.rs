//! NomicBERT (nomic-embed-text v1 and v1.5, nomic-bert-2048): the encoder of
//! `gated_bert` with rotary positions, without biases, with a SwiGLU
//! feed-forward.
//!
//! Reference: transformers v5.25.0, `src/transformers/models/nomic_bert/modular_nomic_bert.py`
//! (<https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/nomic_bert/modular_nomic_bert.py>).
//! Nomic's checkpoints were written by its remote code, and keep that code's key names, which
//! transformers 5 maps to its own at load and back at save (`conversion_mapping.py`,
//! "nomic_bert"): `emb_ln`, `encoder.layers.N.attn.Wqkv`, `attn.out_proj`, `mlp.fc11` (up),
//! `mlp.fc12` (gate), `mlp.fc2`, `norm1`, `norm2`. Their `config.json` uses GPT-2's names
//! (`n_embd`, `n_head`, `n_layer`, `n_inner`, `rotary_emb_base`); transformers 5's uses BERT's.
//! Both are read.
//!
//! The heads are transformers 5's, BERT's over this encoder under `nomic_bert.`:
//! `NomicBertForMaskedLM` (`cls.predictions`), `NomicBertForSequenceClassification` (pooler
//! and classifier) and `NomicBertForTokenClassification`.

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::config::Labels;
use crate::models::gated_bert::{EncoderShape, GatedBertEncoder, KeyNames, Positions, Qkv, UpGate};
use crate::models::layers::{require_encoder_sizes, Activation, LayerNorm, Linear};
use crate::models::rope::{RopeScaling, RotaryEmbedding};
use crate::models::task_heads::task_heads;
use crate::models::weights::ModelWeights;
use crate::models::{base_model_weights, tied_weight, EncoderOutput, MaskedLmHead, ModelInput};

/// `NomicBertConfig` (transformers 5), or the remote code's config, from `config.json`, with
/// transformers 5's defaults (nomic-embed-text-v1.5's).
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/nomic_bert/configuration_nomic_bert.py>
#[derive(Debug, Clone, Deserialize)]
pub struct NomicBertConfig {
    /// Tokens in the vocabulary.
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// The remote code pads the embedding table to a multiple of this.
    #[serde(default)]
    pub pad_vocab_size_multiple: Option<usize>,
    /// Width of the hidden states (`n_embd` in Nomic's configs).
    #[serde(default = "default_hidden_size", alias = "n_embd")]
    pub hidden_size: usize,
    /// Number of blocks (`n_layer`).
    #[serde(default = "default_num_hidden_layers", alias = "n_layer")]
    pub num_hidden_layers: usize,
    /// Attention heads per block (`n_head`).
    #[serde(default = "default_num_attention_heads", alias = "n_head")]
    pub num_attention_heads: usize,
    /// Width of each of `fc11` and `fc12` (`n_inner`; 4 × hidden when absent, as GPT-2's).
    #[serde(default, alias = "n_inner")]
    pub intermediate_size: Option<usize>,
    /// transformers 5's name of the gate's activation.
    #[serde(default)]
    pub hidden_act: Option<Activation>,
    /// The remote code's: `swiglu` (SiLU gate) or `geglu` (GELU gate).
    #[serde(default)]
    pub activation_function: Option<String>,
    /// The longest input (`n_positions`).
    #[serde(default = "default_max_position_embeddings", alias = "n_positions")]
    pub max_position_embeddings: usize,
    /// Token types.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of every layer norm (`layer_norm_epsilon`).
    #[serde(default = "default_layer_norm_eps", alias = "layer_norm_epsilon")]
    pub layer_norm_eps: f64,
    /// transformers 5's rotary settings.
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    /// The remote code's rotary base.
    #[serde(default)]
    pub rotary_emb_base: Option<f64>,
    /// The remote code's switches, read so that a checkpoint built otherwise is refused
    /// rather than run wrong.
    #[serde(default)]
    rotary_emb_fraction: Option<f64>,
    #[serde(default)]
    rotary_emb_interleaved: bool,
    #[serde(default)]
    rotary_scaling_factor: Option<f64>,
    #[serde(default)]
    prenorm: bool,
    #[serde(default)]
    parallel_block: bool,
    #[serde(default)]
    causal: bool,
    #[serde(default)]
    use_rms_norm: bool,
    #[serde(default)]
    qkv_proj_bias: bool,
    #[serde(default)]
    mlp_fc1_bias: bool,
    #[serde(default)]
    mlp_fc2_bias: bool,
    /// Class names of classification heads.
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_vocab_size() -> usize {
    30528
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
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

/// transformers 5's `NomicBertConfig.default_theta`.
const DEFAULT_ROPE_THETA: f64 = 1000.0;

impl NomicBertConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        require_encoder_sizes!(self, intermediate_size: self.intermediate())?;
        let unsupported = |what: &str| {
            Err(Error::InvalidConfig(format!(
                "NomicBERT with {what} is not supported: the released checkpoints are post-norm, \
                 bidirectional, without biases, with every dimension rotated in halves"
            )))
        };
        let switches = [
            (self.prenorm, "prenorm"),
            (self.parallel_block, "parallel_block"),
            (self.causal, "causal"),
            (self.use_rms_norm, "use_rms_norm"),
            (self.qkv_proj_bias, "qkv_proj_bias"),
            (self.mlp_fc1_bias, "mlp_fc1_bias"),
            (self.mlp_fc2_bias, "mlp_fc2_bias"),
            (self.rotary_emb_interleaved, "rotary_emb_interleaved"),
        ];
        if let Some((_, name)) = switches.iter().find(|(on, _)| *on) {
            return unsupported(name);
        }
        if self.rotary_emb_fraction.is_some_and(|f| f != 1.0) {
            return unsupported("rotary_emb_fraction other than 1");
        }
        if self.rotary_scaling_factor.is_some() {
            return unsupported("rotary_scaling_factor");
        }
        self.activation()?;
        self.rotary().map(|_| ())
    }

    /// Number of classes of a classification head: `id2label`'s size, else 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }

    fn intermediate(&self) -> usize {
        self.intermediate_size.unwrap_or(4 * self.hidden_size)
    }

    /// The gate's activation: `hidden_act`, else the remote code's `activation_function`
    /// (whose `swiglu` and `geglu` gate with SiLU and GELU), else SiLU.
    fn activation(&self) -> Result<Activation> {
        match (self.hidden_act, self.activation_function.as_deref()) {
            (Some(activation), _) => Ok(activation),
            (None, None | Some("swiglu")) => Ok(Activation::Silu),
            (None, Some("geglu")) => Ok(Activation::Gelu),
            (None, Some(other)) => Err(Error::InvalidConfig(format!(
                "NomicBERT's activation_function `{other}` is not supported: swiglu or geglu"
            ))),
        }
    }

    fn rotary(&self) -> Result<RotaryEmbedding> {
        let theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(DEFAULT_ROPE_THETA);
        RotaryEmbedding::new(
            theta,
            self.hidden_size / self.num_attention_heads,
            self.rope_parameters.as_ref(),
            self.max_position_embeddings,
        )
    }

    fn shape(&self) -> Result<EncoderShape> {
        let multiple = self.pad_vocab_size_multiple.unwrap_or(1).max(1);
        Ok(EncoderShape {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate(),
            layers: self.num_hidden_layers,
            // The remote code's table has `vocab_size` rounded up to the multiple.
            vocab_rows: self.vocab_size.div_ceil(multiple) * multiple,
            type_vocab_size: self.type_vocab_size,
            activation: self.activation()?,
            layer_norm_eps: self.layer_norm_eps,
            biases: false,
            max_positions: self.max_position_embeddings,
        })
    }
}

/// Nomic's key names (the remote code's, which transformers 5 also writes).
const KEY_NAMES: KeyNames = KeyNames {
    embeddings_norm: "emb_ln",
    layers: "encoder.layers",
    qkv: Qkv::Stacked("attn.Wqkv"),
    attention_output: "attn.out_proj",
    attention_norm: "norm1",
    up_gate: UpGate::Apart {
        up: "mlp.fc11",
        gate: "mlp.fc12",
    },
    down: "mlp.fc2",
    mlp_norm: "norm2",
};

/// The base model's weights: at the root, or under `nomic_bert.` (transformers 5's heads).
fn base_weights(vb: &ModelWeights) -> Result<ModelWeights> {
    base_model_weights(vb, "nomic_bert", "embeddings.word_embeddings.weight")
}

/// The NomicBERT encoder.
#[derive(Debug, Clone)]
pub struct NomicBertModel {
    encoder: GatedBertEncoder,
    config: Box<NomicBertConfig>,
}

impl NomicBertModel {
    /// Load the encoder from its keys, at the checkpoint's root or under `nomic_bert.`.
    pub fn load(vb: ModelWeights, config: &NomicBertConfig) -> Result<Self> {
        let vb = base_weights(&vb)?;
        Ok(Self {
            encoder: GatedBertEncoder::load(
                &vb,
                &config.shape()?,
                &KEY_NAMES,
                Positions::Rotary(config.rotary()?),
            )?,
            config: Box::new(config.clone()),
        })
    }

    /// The parsed `config.json` the model was loaded with.
    pub fn config(&self) -> &NomicBertConfig {
        &self.config
    }

    /// `last_hidden_state`, (batch, seq, hidden_size); no pooler output. Errors:
    /// [`Error::InputTooLong`] past `max_position_embeddings`, [`Error::InvalidInput`] for an
    /// id outside the vocabulary or the token types.
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

/// BERT's `cls.predictions`: `transform.dense`, the config's activation (`hidden_act`, SiLU by
/// default, not BERT's GELU), `transform.layer_norm` (lower case, unlike BERT's `LayerNorm`),
/// then `decoder` tied to the word embeddings with `cls.predictions.bias` (transformers 5 ties
/// `decoder.bias` to it and saves neither tied tensor).
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/nomic_bert/modeling_nomic_bert.py#L300-L313>
/// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/nomic_bert/modeling_nomic_bert.py#L446-L461>
fn masked_lm_head(
    vb: &ModelWeights,
    config: &NomicBertConfig,
    word_embeddings: &Tensor,
) -> Result<MaskedLmHead> {
    let hidden = config.hidden_size;
    let predictions = vb.pp("cls").pp("predictions");
    let transform = predictions.pp("transform");
    // The remote code's padded table gives as many logits as it has rows.
    let vocab = word_embeddings.dim(0)?;
    Ok(MaskedLmHead {
        dense: Linear::load(transform.pp("dense"), hidden, hidden)?,
        activation: config.activation()?,
        layer_norm: LayerNorm::load(transform.pp("layer_norm"), hidden, config.layer_norm_eps)?,
        decoder: Linear::new(
            tied_weight(&predictions, "decoder.weight", word_embeddings)?,
            Some(predictions.get(vocab, "bias")?),
            vb.weight_type(),
        )?,
    })
}

task_heads! {
    model: NomicBertModel,
    config: NomicBertConfig,
    under: "`nomic_bert.`",
    num_labels: "[`NomicBertConfig::num_labels`]",
    /// `NomicBertForMaskedLM`: the encoder and BERT's `cls.predictions` (`masked_lm_head`).
    /// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/nomic_bert/modeling_nomic_bert.py#L474-L532>
    masked_lm: NomicBertForMaskedLM = masked_lm_head("`cls.predictions.*`"),
    /// `NomicBertForSequenceClassification`: BERT's pooler (dense and tanh on the first token,
    /// `nomic_bert.pooler.dense`) and `classifier`.
    /// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/nomic_bert/modeling_nomic_bert.py#L535-L611>
    sequence_classification: NomicBertForSequenceClassification = pooler(base_weights),
    /// `NomicBertForTokenClassification`: `classifier` on every token.
    /// <https://github.com/huggingface/transformers/blob/v5.25.0/src/transformers/models/nomic_bert/modeling_nomic_bert.py#L614-L667>
    token_classification: NomicBertForTokenClassification,
}

from_pretrained_impls!(
    nomic_bert: NomicBertModel,
    NomicBertForMaskedLM,
    NomicBertForSequenceClassification,
    NomicBertForTokenClassification
);
