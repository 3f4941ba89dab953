//! BERT and its task heads, on candle tensors.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/bert/modeling_bert.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py>).
//! Module and field names follow the checkpoint keys, so `vb.pp("attention").pp("self")` reads
//! like `bert.encoder.layer.0.attention.self.query.weight`.

use candle_core::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::config::Labels;
use crate::models::layers::{
    padding_mask, require_encoder_sizes, require_positive, Activation, Embedding, LayerNorm,
    Linear, Pooler, SelfAttention,
};
use crate::models::weights::ModelWeights;
use crate::models::{
    base_model_weights, tied_weight, EncoderOutput, MaskedLmHead, ModelInput,
    QuestionAnsweringOutput,
};

/// `BertConfig` from `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Rows of the word-embedding table; every token id must be below it.
    pub vocab_size: usize,
    /// Width of the hidden states: the last dimension of [`EncoderOutput::last_hidden_state`].
    pub hidden_size: usize,
    /// Number of transformer blocks (`encoder.layer.*`).
    pub num_hidden_layers: usize,
    /// Attention heads per block; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of each block's feed-forward layer (`intermediate.dense`).
    pub intermediate_size: usize,
    /// Activation of the feed-forward layers and of BERT's masked-LM transform.
    pub hidden_act: Activation,
    /// Rows of the position table, which bounds the input length: that many tokens for BERT,
    /// `pad_token_id + 1` fewer for RoBERTa (514 rows give 512).
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    /// Number of segment ids (`token_type_ids`); 2 when absent, 1 in RoBERTa checkpoints.
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    /// Epsilon of every layer norm; 1e-12 when absent.
    pub layer_norm_eps: f64,
    #[serde(default)]
    /// Id of the padding token; 0 when absent. RoBERTa numbers positions from it.
    pub pad_token_id: usize,
    #[serde(default = "default_position_embedding_type")]
    /// Only `absolute` (the default) is implemented; any other value is an
    /// [`Error::InvalidConfig`] when `config.json` is read.
    pub position_embedding_type: String,
    /// Class names of classification heads.
    #[serde(default)]
    pub id2label: Labels,
    /// `single_label_classification`, `multi_label_classification` or `regression`.
    #[serde(default)]
    pub problem_type: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_position_embedding_type() -> String {
    "absolute".to_string()
}

impl BertConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        // Before the shared sizes, which would refuse 0 heads as a divisor rather than name them.
        require_positive("num_attention_heads", self.num_attention_heads)?;
        require_encoder_sizes!(self)?;
        require_positive("type_vocab_size", self.type_vocab_size)?;
        if self.position_embedding_type != "absolute" {
            return Err(Error::InvalidConfig(format!(
                "position_embedding_type `{}` is not supported; only `absolute` is",
                self.position_embedding_type
            )));
        }
        Ok(())
    }

    /// Number of classes of a classification head: `id2label`'s size, else transformers' default 2.
    pub fn num_labels(&self) -> usize {
        self.id2label.num_classes()
    }
}

/// Word, position and token-type embeddings, summed and normalised.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L127>
#[derive(Debug, Clone)]
struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
}

impl BertEmbeddings {
    fn load(vb: ModelWeights, config: &BertConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            word_embeddings: Embedding::load(vb.pp("word_embeddings"), config.vocab_size, hidden)?,
            position_embeddings: Embedding::load(
                vb.pp("position_embeddings"),
                config.max_position_embeddings,
                hidden,
            )?,
            token_type_embeddings: Embedding::load(
                vb.pp("token_type_embeddings"),
                config.type_vocab_size,
                hidden,
            )?,
            layer_norm: LayerNorm::load(vb.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
        })
        // `embeddings.position_ids` (a buffer that older checkpoints saved) is simply never read.
    }

    /// `position_ids`: (batch, seq) or (seq,), already checked against the table size.
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        position_ids: &Tensor,
    ) -> Result<Tensor> {
        let token_type_ids = match token_type_ids {
            Some(ids) => ids.clone(),
            None => input_ids.zeros_like()?,
        };
        let words = self.word_embeddings.forward(input_ids)?;
        let positions = self.position_embeddings.forward(position_ids)?;
        let types = self.token_type_embeddings.forward(&token_type_ids)?;
        let sum = words.broadcast_add(&positions)?.add(&types)?;
        self.layer_norm.forward(&sum)
    }
}

/// How position ids are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Positions {
    /// 0, 1, 2, ... for every row (BERT; batches are right-padded).
    FromZero,
    /// RoBERTa's numbering: real tokens count from `padding_idx + 1`, padding keeps
    /// `padding_idx`, as transformers' `create_position_ids_from_input_ids` does.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1537>
    AfterPadding { padding_idx: u32 },
}

impl Positions {
    /// The longest input the position table of `table_size` rows allows.
    fn max_len(&self, table_size: usize) -> usize {
        match self {
            Positions::FromZero => table_size,
            Positions::AfterPadding { padding_idx } => {
                table_size.saturating_sub(*padding_idx as usize + 1)
            }
        }
    }

    /// (batch, seq) position ids for `input_ids`; [`Error::InputTooLong`] when they would run
    /// past a position table of `table_size` rows.
    pub(crate) fn ids(&self, input_ids: &Tensor, table_size: usize) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let max = self.max_len(table_size);
        if seq > max {
            return Err(Error::InputTooLong { length: seq, max });
        }
        let device = input_ids.device();
        Ok(match self {
            Positions::FromZero => Tensor::arange(0u32, seq as u32, device)?
                .unsqueeze(0)?
                .broadcast_as((batch, seq))?,
            Positions::AfterPadding { padding_idx } => {
                // cumsum(not_pad) * not_pad + padding_idx, in f32 (exact for any real length).
                let not_pad = input_ids
                    .ne(*padding_idx)?
                    .to_dtype(candle_core::DType::F32)?;
                let counted = (not_pad.cumsum(1)? * &not_pad)?;
                (counted + *padding_idx as f64)?.to_dtype(candle_core::DType::U32)?
            }
        })
    }
}

/// A dense projection, then dropout (a no-op at inference), then a residual layer norm: the
/// `BertSelfOutput` and `BertOutput` blocks.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L428>
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L517>
#[derive(Debug, Clone)]
struct ResidualOutput {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl ResidualOutput {
    fn load(vb: ModelWeights, in_dim: usize, config: &BertConfig) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(vb.pp("dense"), in_dim, config.hidden_size)?,
            layer_norm: LayerNorm::load(
                vb.pp("LayerNorm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let x = self.dense.forward_with(x, None, Some(residual))?;
        self.layer_norm.forward(&x)
    }
}

/// One transformer block: `attention.{self,output}`, `intermediate`, `output`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L531>
#[derive(Debug, Clone)]
struct BertLayer {
    /// `attention.self`: query, key and value projections and scaled dot-product attention.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L191>
    self_attention: SelfAttention,
    attention_output: ResidualOutput,
    intermediate: Linear,
    activation: Activation,
    output: ResidualOutput,
}

impl BertLayer {
    fn load(vb: ModelWeights, config: &BertConfig) -> Result<Self> {
        let attention = vb.pp("attention");
        Ok(Self {
            self_attention: SelfAttention::load(
                attention.pp("self"),
                ["query", "key", "value"],
                config.hidden_size,
                config.num_attention_heads,
            )?,
            attention_output: ResidualOutput::load(
                attention.pp("output"),
                config.hidden_size,
                config,
            )?,
            intermediate: Linear::load(
                vb.pp("intermediate").pp("dense"),
                config.hidden_size,
                config.intermediate_size,
            )?,
            activation: config.hidden_act,
            output: ResidualOutput::load(vb.pp("output"), config.intermediate_size, config)?,
        })
    }

    fn forward(&self, hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let attended = self.self_attention.forward(hidden, mask)?;
        let hidden = self.attention_output.forward(&attended, hidden)?;
        let inner = self
            .intermediate
            .forward_into_linear(&hidden, Some(self.activation))?;
        self.output.forward(&inner, &hidden)
    }
}

/// The BERT encoder: embeddings, `encoder.layer.*` and an optional pooler.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L842>
#[derive(Debug, Clone)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    layers: Vec<BertLayer>,
    pooler: Option<Pooler>,
    positions: Positions,
    config: BertConfig,
}

impl BertModel {
    /// Load from the encoder's own keys (`embeddings.*`, `encoder.*`, `pooler.*`), found at the
    /// checkpoint's root or under `bert.`.
    pub fn load(vb: ModelWeights, config: &BertConfig) -> Result<Self> {
        Self::load_with(vb, config, "bert", Positions::FromZero)
    }

    /// Load an encoder with BERT's layout, whose task checkpoints nest it under `prefix`.
    pub(crate) fn load_with(
        vb: ModelWeights,
        config: &BertConfig,
        prefix: &str,
        positions: Positions,
    ) -> Result<Self> {
        let vb = base_model_weights(&vb, prefix, "embeddings.word_embeddings.weight")?;
        let encoder = vb.pp("encoder").pp("layer");
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(encoder.pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        let pooler = Pooler::load_if_present(&vb, config.hidden_size)?;
        // `embeddings.position_ids` (a buffer that older checkpoints saved) is never read.
        Ok(Self {
            embeddings: BertEmbeddings::load(vb.pp("embeddings"), config)?,
            layers,
            pooler,
            positions,
            config: config.clone(),
        })
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Run the encoder. `last_hidden_state` is (batch, seq, hidden_size), f32 on the CPU whatever
    /// the weights' dtype (the loaded dtype elsewhere, or with the `reference` kernels).
    /// Errors: [`Error::InputTooLong`] past the position table, [`Error::InvalidInput`] for an
    /// id outside the vocabulary.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        crate::kernels::on_worker(|| self.forward_on_worker(input))
    }

    fn forward_on_worker(&self, input: &ModelInput) -> Result<EncoderOutput> {
        let position_ids = self
            .positions
            .ids(&input.input_ids, self.config.max_position_embeddings)?;
        let mut hidden = self.embeddings.forward(
            &input.input_ids,
            input.token_type_ids.as_ref(),
            &position_ids,
        )?;
        let mask = padding_mask(input.attention_mask.as_ref())?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, mask.as_ref())?;
        }
        let pooler_output = self
            .pooler
            .as_ref()
            .map(|pooler| pooler.forward(&hidden))
            .transpose()?;
        Ok(EncoderOutput {
            last_hidden_state: hidden,
            pooler_output,
        })
    }

    pub(crate) fn word_embeddings(&self) -> Result<&Tensor> {
        self.embeddings.word_embeddings.weight()
    }

    pub(crate) fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }
}

/// `BertForMaskedLM`: the encoder and `cls.predictions`.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L1230>
#[derive(Debug, Clone)]
pub struct BertForMaskedLM {
    bert: BertModel,
    head: MaskedLmHead,
}

impl BertForMaskedLM {
    /// Load the encoder (at the root or under `bert.`) and `cls.predictions.*`. The decoder
    /// weight is tied to the word embeddings and used from there when the checkpoint omits it.
    pub fn load(vb: ModelWeights, config: &BertConfig) -> Result<Self> {
        let bert = BertModel::load(vb.clone(), config)?;
        let predictions = vb.pp("cls").pp("predictions");
        let transform = predictions.pp("transform");
        // The decoder is tied to the word embeddings, and its bias is `cls.predictions.bias`.
        // <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L723>
        let decoder = Linear::new(
            tied_weight(&predictions, "decoder.weight", bert.word_embeddings()?)?,
            Some(predictions.get(config.vocab_size, "bias")?),
            vb.weight_type(),
        )?;
        let head = MaskedLmHead {
            dense: Linear::load(
                transform.pp("dense"),
                config.hidden_size,
                config.hidden_size,
            )?,
            activation: config.hidden_act,
            layer_norm: LayerNorm::load(
                transform.pp("LayerNorm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
            decoder,
        };
        Ok(Self { bert, head })
    }

    /// Vocabulary logits, (batch, seq, vocab).
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        self.head
            .forward(&self.bert.forward(input)?.last_hidden_state)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }
}

/// `BertForSequenceClassification`: `classifier` on the pooler output.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L1444>
#[derive(Debug, Clone)]
pub struct BertForSequenceClassification {
    bert: BertModel,
    classifier: Linear,
}

impl BertForSequenceClassification {
    /// Load the encoder with its pooler, and `classifier` with [`BertConfig::num_labels`] outputs.
    /// A checkpoint without `pooler.dense.*` is an [`Error::InvalidWeights`].
    pub fn load(vb: ModelWeights, config: &BertConfig) -> Result<Self> {
        let bert = BertModel::load(vb.clone(), config)?;
        if !bert.has_pooler() {
            return Err(Error::InvalidWeights(
                "sequence classification needs the pooler (`bert.pooler.dense.*`), which the \
                 checkpoint lacks"
                    .to_string(),
            ));
        }
        let classifier =
            Linear::load(vb.pp("classifier"), config.hidden_size, config.num_labels())?;
        Ok(Self { bert, classifier })
    }

    /// Class logits, (batch, num_labels).
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        let pooled = self
            .bert
            .forward(input)?
            .pooler_output
            .ok_or_else(|| Error::InvalidWeights("the model has no pooler".to_string()))?;
        self.classifier.forward(&pooled)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }
}

/// `BertForTokenClassification`: `classifier` on every token.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L1641>
#[derive(Debug, Clone)]
pub struct BertForTokenClassification {
    bert: BertModel,
    classifier: Linear,
}

impl BertForTokenClassification {
    /// Load the encoder and `classifier`, with [`BertConfig::num_labels`] outputs.
    pub fn load(vb: ModelWeights, config: &BertConfig) -> Result<Self> {
        Ok(Self {
            bert: BertModel::load(vb.clone(), config)?,
            classifier: Linear::load(vb.pp("classifier"), config.hidden_size, config.num_labels())?,
        })
    }

    /// Per-token class logits, (batch, seq, num_labels).
    pub fn forward(&self, input: &ModelInput) -> Result<Tensor> {
        let hidden = self.bert.forward(input)?.last_hidden_state;
        self.classifier.forward(&hidden)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }
}

/// `BertForQuestionAnswering`: `qa_outputs` gives a start and an end logit per token.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/bert/modeling_bert.py#L1711>
#[derive(Debug, Clone)]
pub struct BertForQuestionAnswering {
    bert: BertModel,
    qa_outputs: Linear,
}

impl BertForQuestionAnswering {
    /// Load the encoder and `qa_outputs` (two outputs: start and end).
    pub fn load(vb: ModelWeights, config: &BertConfig) -> Result<Self> {
        Ok(Self {
            bert: BertModel::load(vb.clone(), config)?,
            qa_outputs: Linear::load(vb.pp("qa_outputs"), config.hidden_size, 2)?,
        })
    }

    /// Start and end logits, each (batch, seq).
    pub fn forward(&self, input: &ModelInput) -> Result<QuestionAnsweringOutput> {
        let hidden = self.bert.forward(input)?.last_hidden_state;
        QuestionAnsweringOutput::from_logits(&self.qa_outputs.forward(&hidden)?)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &BertConfig {
        self.bert.config()
    }
}

from_pretrained_impls!(
    bert:
    BertModel,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertForQuestionAnswering
);
