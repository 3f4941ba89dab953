//! JinaBERT v2 (jina-embeddings-v2-base-en, -small-en and their language pairs): BERT's
//! post-norm encoder with ALiBi in place of a position table and a gated feed-forward (GeGLU,
//! or ReGLU) in place of BERT's two products: the encoder of `gated_bert`
//! with ALiBi's positions.
//!
//! Reference: Jina AI's remote code, `modeling_bert.py` of the Hub repository
//! `jinaai/jina-bert-implementation`
//! (<https://huggingface.co/jinaai/jina-bert-implementation/blob/main/modeling_bert.py>), which
//! transformers does not ship and no package registry carries. Our fixtures' reference is a
//! plain-torch transcription of it (`scripts/make_fixtures.py --only jina-bert`), held there to
//! llama.cpp's independent implementation (`LLM_ARCH_JINA_BERT_V2`):
//! <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/src/models/bert.cpp>
//!
//! The checkpoints say `"model_type": "bert"`; `JinaBertConfig::describes` says which `bert`
//! configs are this family (see [`ModelConfig`](super::config::ModelConfig)). Their keys are
//! BERT's where the layers are BERT's (`embeddings.*`, `attention.self.{query,key,value}`,
//! `attention.output.{dense,LayerNorm}`), at the root or under `bert.`, and the remote code's
//! for the feed-forward: `mlp.gated_layers` (no bias), `mlp.wo`, `mlp.layernorm`.
//!
//! jina-embeddings-v2-base-code is another remote code (`jinaai/jina-bert-v2-qk-post-norm`:
//! layer norms on q and k, a second residual norm per sub-block, `mlp.up_gated_layer` with its
//! halves the other way round); it is refused at load with an error naming it. llama.cpp reads
//! that checkpoint's `up_gated_layer` halves in the opposite order to Hugging Face's TEI, so
//! there is no independent reading to prove an implementation against.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::config::Labels;
use crate::models::gated_bert::{EncoderShape, GatedBertEncoder, KeyNames, Positions, Qkv, UpGate};
use crate::models::layers::{require_encoder_sizes, require_positive, Activation};
use crate::models::weights::ModelWeights;
use crate::models::{base_model_weights, EncoderOutput, ModelInput};

/// `JinaBertConfig` (the remote code's `configuration_bert.py`) from `config.json`: BERT's
/// fields plus `feed_forward_type` and `emb_pooler`.
#[derive(Debug, Clone, Deserialize)]
pub struct JinaBertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of blocks (`encoder.layer.*`).
    pub num_hidden_layers: usize,
    /// Attention heads per block; must divide `hidden_size`. Any count: ALiBi's slopes for a
    /// count that is not a power of two are interleaved ([`alibi_slopes`]).
    pub num_attention_heads: usize,
    /// Width of each half of `mlp.gated_layers`.
    pub intermediate_size: usize,
    /// The longest input. ALiBi has no table to bound it; the model card's limit is kept.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Number of segment ids; 2 when absent.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of every layer norm; 1e-12 when absent.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Only `alibi` is implemented (every released JinaBERT v2 uses it); anything else is an
    /// [`Error::InvalidConfig`] when `config.json` is read.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// The feed-forward: `geglu` (GELU gate, the embedders') or `reglu` (ReLU gate). The remote
    /// code's plain MLP (`original`, `mlp.up_layer`) is not implemented.
    #[serde(default = "default_feed_forward_type")]
    pub feed_forward_type: String,
    /// The remote code's own pooling for `encode` (`mean` in jina-embeddings-v2); the
    /// pipelines read sentence-transformers' `1_Pooling` (also mean) as for every model.
    #[serde(default)]
    pub emb_pooler: Option<String>,
    /// Class names of classification heads.
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_max_position_embeddings() -> usize {
    8192
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "alibi".to_string()
}
fn default_feed_forward_type() -> String {
    "original".to_string()
}

impl JinaBertConfig {
    /// Whether a `"model_type": "bert"` config is JinaBERT's: its `position_embedding_type` is
    /// `alibi` (transformers' BERT has `absolute`, `relative_key` and `relative_key_query`
    /// only), or it has `feed_forward_type` (a field only JinaBERT's config has), or its
    /// `architectures` name a `JinaBert*` class. Either of the last two with another position
    /// type is then refused by [`JinaBertConfig`]'s checks rather than run as plain BERT.
    pub(crate) fn describes(config: &serde_json::Value) -> bool {
        config
            .get("position_embedding_type")
            .and_then(|v| v.as_str())
            == Some("alibi")
            || config.get("feed_forward_type").is_some()
            || config
                .get("architectures")
                .and_then(|v| v.as_array())
                .is_some_and(|names| {
                    names
                        .iter()
                        .any(|n| n.as_str().is_some_and(|n| n.starts_with("JinaBert")))
                })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        // Before the shared sizes, which would refuse 0 heads as a divisor rather than name them.
        require_positive("num_attention_heads", self.num_attention_heads)?;
        require_encoder_sizes!(self)?;
        require_positive("type_vocab_size", self.type_vocab_size)?;
        if self.position_embedding_type != "alibi" {
            return Err(Error::InvalidConfig(format!(
                "JinaBERT with position_embedding_type `{}` is not supported: the released \
                 JinaBERT v2 checkpoints use `alibi`",
                self.position_embedding_type
            )));
        }
        self.activation().map(|_| ())
    }

    /// Number of classes of a classification head: `id2label`'s size, else 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }

    /// The gate's activation for `feed_forward_type`: nn.GELU() (exact, erf) for `geglu`,
    /// nn.ReLU() for `reglu`, as the remote code's `JinaBertGLUMLP` picks them.
    fn activation(&self) -> Result<Activation> {
        match self.feed_forward_type.as_str() {
            "geglu" => Ok(Activation::Gelu),
            "reglu" => Ok(Activation::Relu),
            other => Err(Error::InvalidConfig(format!(
                "JinaBERT's feed_forward_type `{other}` is not supported: `geglu` (the released \
                 embedders') or `reglu`"
            ))),
        }
    }
}

/// ALiBi's slope of each head, as the remote code's `_get_alibi_head_slopes` (the ALiBi
/// paper's) makes them: for a power of two `n`, the geometric series 2^(-8/n), 2^(-16/n), ...;
/// otherwise the slopes of the closest lower power of two, then every other slope of twice
/// that power, up to `n` in all.
/// (Press et al., <https://arxiv.org/abs/2108.12409>; llama.cpp computes the same slopes from
/// `max_alibi_bias` 8 in `ggml_soft_max_ext`.)
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    fn power_of_two(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (1..=n).map(|i| start.powi(i as i32)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    if heads.is_power_of_two() {
        return power_of_two(heads);
    }
    let closest = 1 << heads.ilog2();
    let mut slopes = power_of_two(closest);
    slopes.extend(
        alibi_slopes(2 * closest)
            .into_iter()
            .step_by(2)
            .take(heads - closest),
    );
    slopes
}

/// JinaBERT's key names: BERT's for the attention, the remote code's for the feed-forward.
/// The block is `JinaBertLayer` with `JinaBertGLUMLP`: self-attention with the ALiBi bias,
/// `attention.output` (dense, added, normed), then the gated feed-forward (added, normed).
const KEY_NAMES: KeyNames = KeyNames {
    embeddings_norm: "embeddings.LayerNorm",
    layers: "encoder.layer",
    qkv: Qkv::Apart {
        module: "attention.self",
        names: ["query", "key", "value"],
    },
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    // `act(h[..., :inner]) * h[..., inner:]`: the first half is the gate, in the remote code's
    // `JinaBertGLUMLP.forward` and in llama.cpp's GEGLU on `ffn_up` (ggml_geglu activates the
    // first half).
    up_gate: UpGate::GateThenUp("mlp.gated_layers"),
    down: "mlp.wo",
    mlp_norm: "mlp.layernorm",
};

/// The JinaBERT v2 encoder: word and token-type embeddings (no position table), their layer
/// norm, and the blocks. The remote code's pooler (`pooler.dense`, in the checkpoints) is not
/// loaded: the embedders pool by mean.
#[derive(Debug, Clone)]
pub struct JinaBertModel {
    encoder: GatedBertEncoder,
    config: Box<JinaBertConfig>,
}

impl JinaBertModel {
    /// Load from the encoder's keys, at the checkpoint's root or under `bert.`
    /// (`JinaBertForMaskedLM`'s). jina-embeddings-v2-base-code's layout is an
    /// [`Error::InvalidWeights`] naming it.
    pub fn load(vb: ModelWeights, config: &JinaBertConfig) -> Result<Self> {
        let vb = base_model_weights(&vb, "bert", "embeddings.word_embeddings.weight")?;
        refuse_qk_post_norm(&vb)?;
        let shape = EncoderShape {
            hidden: config.hidden_size,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            layers: config.num_hidden_layers,
            vocab_rows: config.vocab_size,
            type_vocab_size: config.type_vocab_size,
            activation: config.activation()?,
            layer_norm_eps: config.layer_norm_eps,
            biases: true,
            max_positions: config.max_position_embeddings,
        };
        let positions = Positions::Alibi(alibi_slopes(config.num_attention_heads));
        Ok(Self {
            encoder: GatedBertEncoder::load(&vb, &shape, &KEY_NAMES, positions)?,
            config: Box::new(config.clone()),
        })
    }

    /// The parsed `config.json` the model was loaded with.
    pub fn config(&self) -> &JinaBertConfig {
        &self.config
    }

    /// The ALiBi slope of each head ([`alibi_slopes`]).
    pub fn alibi_slopes(&self) -> &[f64] {
        // Loaded with ALiBi's positions, the encoder always has slopes.
        self.encoder.alibi_slopes().unwrap_or_default()
    }

    /// `last_hidden_state`, (batch, seq, hidden_size), f32 on the CPU whatever the weights'
    /// dtype; no pooler output. Errors: [`Error::InputTooLong`] past
    /// `max_position_embeddings`, [`Error::InvalidInput`] for an id outside the vocabulary or
    /// the token types.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        Ok(EncoderOutput {
            last_hidden_state: self.encoder.forward(input)?,
            pooler_output: None,
        })
    }
}

/// jina-embeddings-v2-base-code's checkpoints (remote code `jinaai/jina-bert-v2-qk-post-norm`)
/// share the `bert` config but not the layer; refuse them by their keys rather than fail on a
/// missing `mlp.gated_layers` with no hint.
fn refuse_qk_post_norm(vb: &ModelWeights) -> Result<()> {
    let keys = [
        "encoder.layer.0.mlp.up_gated_layer.weight",
        "encoder.layer.0.attention.self.layer_norm_q.weight",
        "encoder.layer.0.layer_norm_1.weight",
    ];
    if let Some(key) = keys.iter().find(|key| vb.contains_tensor(key)) {
        return Err(Error::InvalidWeights(format!(
            "`{key}` is the layout of jina-embeddings-v2-base-code (remote code \
             jinaai/jina-bert-v2-qk-post-norm: q/k layer norms, up_gated_layer), which is not \
             supported; JinaBERT v2 models with `mlp.gated_layers` (jina-embeddings-v2-base-en, \
             -small-en) are"
        )));
    }
    Ok(())
}

from_pretrained_impls!(jina_bert: JinaBertModel);
