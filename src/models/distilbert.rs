//! DistilBERT and its task heads: the default checkpoints of transformers' sentiment and
//! question-answering pipelines.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/distilbert/modeling_distilbert.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py>).
//! No token types; its config names differ from BERT's (`dim`, `n_layers`, `n_heads`,
//! `hidden_dim`, `activation`).

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::config::Labels;
use crate::models::layers::{
    padding_mask, require_divisible, require_positive, Activation, Embedding, LayerNorm, Linear,
    SelfAttention,
};
use crate::models::weights::ModelWeights;
use crate::models::{
    base_model_weights, tied_weight, EncoderOutput, MaskedLmHead, ModelInput,
    QuestionAnsweringOutput,
};

/// DistilBERT's layer norms use this epsilon; the config does not carry it.
const LAYER_NORM_EPS: f64 = 1e-12;

/// `DistilBertConfig` from `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct DistilBertConfig {
    /// Rows of the word-embedding table; every token id must be below it.
    pub vocab_size: usize,
    /// Width of the hidden states (BERT's `hidden_size`).
    pub dim: usize,
    /// Number of transformer blocks (`transformer.layer.*`).
    pub n_layers: usize,
    /// Attention heads per block; must divide `dim`.
    pub n_heads: usize,
    /// Width of each block's feed-forward layer (BERT's `intermediate_size`).
    pub hidden_dim: usize,
    #[serde(default = "default_activation")]
    /// Activation of the feed-forward layers and the masked-LM head; `gelu` when absent.
    pub activation: Activation,
    /// Rows of the position table: the most tokens [`DistilBertModel::forward`] accepts.
    pub max_position_embeddings: usize,
    /// Sinusoidal position embeddings are still stored in the checkpoint as
    /// `embeddings.position_embeddings.weight`, so both settings load the same way.
    #[serde(default)]
    pub sinusoidal_pos_embds: bool,
    #[serde(default)]
    /// Id of the padding token; 0 when absent. The model never reads it: padding is hidden
    /// by [`ModelInput::attention_mask`].
    pub pad_token_id: usize,
    #[serde(default)]
    /// Class names of classification heads.
    pub id2label: Labels,
    #[serde(default)]
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    pub problem_type: Option<String>,
}

fn default_activation() -> Activation {
    Activation::Gelu
}

impl DistilBertConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        require_positive("vocab_size", self.vocab_size)?;
        require_positive("dim", self.dim)?;
        require_positive("n_layers", self.n_layers)?;
        require_positive("n_heads", self.n_heads)?;
        require_positive("hidden_dim", self.hidden_dim)?;
        require_positive("max_position_embeddings", self.max_position_embeddings)?;
        require_divisible("dim", self.dim, "n_heads", self.n_heads)?;
        Ok(())
    }

    /// Number of classes: `id2label`'s size, else transformers' default 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }
}

/// Word and position embeddings, summed and normalised.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L85>
#[derive(Debug, Clone)]
struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            word_embeddings: Embedding::load(
                vb.pp("word_embeddings"),
                config.vocab_size,
                config.dim,
            )?,
            position_embeddings: Embedding::load(
                vb.pp("position_embeddings"),
                config.max_position_embeddings,
                config.dim,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), config.dim, LAYER_NORM_EPS)?,
        })
    }

    fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let seq = input_ids.dim(1)?;
        let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?;
        let sum = self
            .word_embeddings
            .forward(input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        self.layer_norm.forward(&sum)
    }
}

/// `attention`: `q_lin`, `k_lin`, `v_lin`, `out_lin`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L131>
#[derive(Debug, Clone)]
struct MultiHeadSelfAttention {
    projections: SelfAttention,
    out_lin: Linear,
}

impl MultiHeadSelfAttention {
    fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        let dim = config.dim;
        Ok(Self {
            projections: SelfAttention::load(
                vb.clone(),
                ["q_lin", "k_lin", "v_lin"],
                dim,
                config.n_heads,
            )?,
            out_lin: Linear::load(vb.pp("out_lin"), dim, dim)?,
        })
    }

    /// The attention output plus `hidden` (the residual, added by the output projection).
    fn forward(&self, hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.out_lin
            .forward_with(&self.projections.forward(hidden, mask)?, None, Some(hidden))
    }
}

/// One block: attention, `sa_layer_norm`, `ffn.{lin1,lin2}`, `output_layer_norm`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L435>
#[derive(Debug, Clone)]
struct TransformerBlock {
    attention: MultiHeadSelfAttention,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    activation: Activation,
    lin2: Linear,
    output_layer_norm: LayerNorm,
}

impl TransformerBlock {
    fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        let ffn = vb.pp("ffn");
        Ok(Self {
            attention: MultiHeadSelfAttention::load(vb.pp("attention"), config)?,
            sa_layer_norm: LayerNorm::load(vb.pp("sa_layer_norm"), config.dim, LAYER_NORM_EPS)?,
            lin1: Linear::load(ffn.pp("lin1"), config.dim, config.hidden_dim)?,
            activation: config.activation,
            lin2: Linear::load(ffn.pp("lin2"), config.hidden_dim, config.dim)?,
            output_layer_norm: LayerNorm::load(
                vb.pp("output_layer_norm"),
                config.dim,
                LAYER_NORM_EPS,
            )?,
        })
    }

    fn forward(&self, hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let attended = self.attention.forward(hidden, mask)?;
        let hidden = self.sa_layer_norm.forward(&attended)?;
        let inner = self
            .lin1
            .forward_into_linear(&hidden, Some(self.activation))?;
        let out = self.lin2.forward_with(&inner, None, Some(&hidden))?;
        self.output_layer_norm.forward(&out)
    }
}

/// The DistilBERT encoder: `embeddings` and `transformer.layer.*`. It has no pooler.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L593>
#[derive(Debug, Clone)]
pub struct DistilBertModel {
    embeddings: Embeddings,
    layers: Vec<TransformerBlock>,
    config: DistilBertConfig,
}

impl DistilBertModel {
    /// Load from `embeddings.*` and `transformer.*`, at the root or under `distilbert.`.
    pub fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        let vb = base_model_weights(&vb, "distilbert", "embeddings.word_embeddings.weight")?;
        let layer = vb.pp("transformer").pp("layer");
        Ok(Self {
            embeddings: Embeddings::load(vb.pp("embeddings"), config)?,
            layers: (0..config.n_layers)
                .map(|i| TransformerBlock::load(layer.pp(i), config))
                .collect::<Result<_>>()?,
            config: config.clone(),
        })
    }

    /// Token type ids are ignored: DistilBERT has none.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        crate::kernels::on_worker(|| self.forward_on_worker(input))
    }

    fn forward_on_worker(&self, input: &ModelInput) -> Result<EncoderOutput> {
        let seq = input.input_ids.dim(1)?;
        let max = self.config.max_position_embeddings;
        if seq > max {
            return Err(Error::InputTooLong { length: seq, max });
        }
        let mut hidden = self.embeddings.forward(&input.input_ids)?;
        let mask = padding_mask(input.attention_mask.as_ref())?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, mask.as_ref())?;
        }
        Ok(EncoderOutput {
            last_hidden_state: hidden,
            pooler_output: None,
        })
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &DistilBertConfig {
        &self.config
    }

    fn last_hidden_state(&self, input: &ModelInput) -> Result<Tensor> {
        Ok(self.forward(input)?.last_hidden_state)
    }
}

/// `DistilBertForMaskedLM`: `vocab_transform`, activation, `vocab_layer_norm`, then
/// `vocab_projector`, tied to the word embeddings.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L739>
#[derive(Debug, Clone)]
pub struct DistilBertForMaskedLM {
    distilbert: DistilBertModel,
    head: MaskedLmHead,
}

impl DistilBertForMaskedLM {
    /// Load the encoder (at the root or under `distilbert.`), `vocab_transform`,
    /// `vocab_layer_norm` and `vocab_projector`, whose weight is tied to the word embeddings
    /// and used from there when the checkpoint omits it.
    pub fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        let distilbert = DistilBertModel::load(vb.clone(), config)?;
        let projector = vb.pp("vocab_projector");
        let word_embeddings = distilbert.embeddings.word_embeddings.weight()?;
        let head = MaskedLmHead {
            dense: Linear::load(vb.pp("vocab_transform"), config.dim, config.dim)?,
            activation: config.activation,
            layer_norm: LayerNorm::load(vb.pp("vocab_layer_norm"), config.dim, LAYER_NORM_EPS)?,
            decoder: Linear::new(
                tied_weight(&projector, "weight", word_embeddings)?,
                Some(projector.get(config.vocab_size, "bias")?),
                vb.weight_type(),
            )?,
        };
        Ok(Self { distilbert, head })
    }

    /// Vocabulary logits, (batch, seq, vocab).
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        self.head
            .forward(&self.distilbert.last_hidden_state(input)?)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &DistilBertConfig {
        self.distilbert.config()
    }
}

/// `DistilBertForSequenceClassification`: `pre_classifier`, ReLU, `classifier`, on the first
/// token.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L851>
#[derive(Debug, Clone)]
pub struct DistilBertForSequenceClassification {
    distilbert: DistilBertModel,
    pre_classifier: Linear,
    classifier: Linear,
}

impl DistilBertForSequenceClassification {
    /// Load the encoder, `pre_classifier`, and `classifier` with
    /// [`DistilBertConfig::num_labels`] outputs.
    pub fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            distilbert: DistilBertModel::load(vb.clone(), config)?,
            pre_classifier: Linear::load(vb.pp("pre_classifier"), config.dim, config.dim)?,
            classifier: Linear::load(vb.pp("classifier"), config.dim, config.num_labels())?,
        })
    }

    /// Class logits, (batch, num_labels).
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        let hidden = self.distilbert.last_hidden_state(input)?;
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pre_classifier.forward(&first)?.relu()?;
        self.classifier.forward(&pooled)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &DistilBertConfig {
        self.distilbert.config()
    }
}

/// `DistilBertForTokenClassification`: `classifier` on every token.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L1067>
#[derive(Debug, Clone)]
pub struct DistilBertForTokenClassification {
    distilbert: DistilBertModel,
    classifier: Linear,
}

impl DistilBertForTokenClassification {
    /// Load the encoder and `classifier`, with [`DistilBertConfig::num_labels`] outputs.
    pub fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            distilbert: DistilBertModel::load(vb.clone(), config)?,
            classifier: Linear::load(vb.pp("classifier"), config.dim, config.num_labels())?,
        })
    }

    /// Per-token class logits, (batch, seq, num_labels).
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        self.classifier
            .forward(&self.distilbert.last_hidden_state(input)?)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &DistilBertConfig {
        self.distilbert.config()
    }
}

/// `DistilBertForQuestionAnswering`: `qa_outputs` gives a start and an end logit per token.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/distilbert/modeling_distilbert.py#L957>
#[derive(Debug, Clone)]
pub struct DistilBertForQuestionAnswering {
    distilbert: DistilBertModel,
    qa_outputs: Linear,
}

impl DistilBertForQuestionAnswering {
    /// Load the encoder and `qa_outputs` (two outputs: start and end).
    pub fn load(vb: ModelWeights, config: &DistilBertConfig) -> Result<Self> {
        Ok(Self {
            distilbert: DistilBertModel::load(vb.clone(), config)?,
            qa_outputs: Linear::load(vb.pp("qa_outputs"), config.dim, 2)?,
        })
    }

    /// Start and end logits, each (batch, seq). Token type ids are ignored.
    pub fn forward(&self, input: &ModelInput) -> Result<QuestionAnsweringOutput> {
        let hidden = self.distilbert.last_hidden_state(input)?;
        QuestionAnsweringOutput::from_logits(&self.qa_outputs.forward(&hidden)?)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &DistilBertConfig {
        self.distilbert.config()
    }
}

from_pretrained_impls!(
    distilbert:
    DistilBertModel,
    DistilBertForMaskedLM,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertForQuestionAnswering
);
