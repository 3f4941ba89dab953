//! RoBERTa and its task heads.
//!
//! Reference: transformers v4.57.6, `src/transformers/models/roberta/modeling_roberta.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py>).
//! The encoder is BERT's, key for key, so it is [`BertModel`] loaded from `roberta.*` with two
//! differences handled there: positions start at `pad_token_id + 1` and skip padding, and
//! there is a single token type (`type_vocab_size` 1). The heads differ and live here.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::models::bert::{BertConfig, BertModel, Positions};
use crate::models::task_heads::task_heads;
use crate::models::weights::ModelWeights;
use crate::models::{EncoderOutput, ModelInput};

/// RoBERTa's `config.json` has BERT's fields; `pad_token_id` (1 in released checkpoints)
/// decides the position numbering.
pub type RobertaConfig = BertConfig;

/// The RoBERTa encoder.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L704>
#[derive(Debug, Clone)]
pub struct RobertaModel {
    encoder: BertModel,
}

impl RobertaModel {
    /// Load from `embeddings.*`, `encoder.*`, `pooler.*`, at the root or under `roberta.`.
    pub fn load(vb: ModelWeights, config: &RobertaConfig) -> Result<Self> {
        let padding_idx = u32::try_from(config.pad_token_id).map_err(|_| {
            Error::InvalidConfig(format!("pad_token_id {} is too large", config.pad_token_id))
        })?;
        let positions = Positions::AfterPadding { padding_idx };
        Ok(Self {
            encoder: BertModel::load_with(vb, config, "roberta", positions)?,
        })
    }

    /// Token type ids are ignored: RoBERTa has a single type.
    pub fn forward(&self, input: &ModelInput) -> Result<EncoderOutput> {
        let input = ModelInput {
            token_type_ids: None,
            ..input.clone()
        };
        self.encoder.forward(&input)
    }

    /// The parsed `config.json` the model was loaded with: sizes, labels, special ids.
    pub fn config(&self) -> &RobertaConfig {
        self.encoder.config()
    }

    fn word_embeddings(&self) -> Result<&Tensor> {
        self.encoder.word_embeddings()
    }

    fn last_hidden_state(&self, input: &ModelInput) -> Result<Tensor> {
        Ok(self.forward(input)?.last_hidden_state)
    }
}

task_heads! {
    model: RobertaModel,
    config: RobertaConfig,
    under: "`roberta.`",
    num_labels: "[`RobertaConfig::num_labels`](BertConfig::num_labels)",
    /// `RobertaForMaskedLM`: `lm_head` is dense, GELU, layer norm, then a decoder tied to the
    /// word embeddings, whose bias is `lm_head.bias`.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1108>
    masked_lm: RobertaForMaskedLM = roberta,
    /// `RobertaForSequenceClassification`: `classifier.dense`, tanh, `classifier.out_proj`, on
    /// the `<s>` token (no pooler).
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1426>
    sequence_classification: RobertaForSequenceClassification = first_token,
    /// `RobertaForTokenClassification`: `classifier` on every token.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1346>
    token_classification: RobertaForTokenClassification,
    /// `RobertaForQuestionAnswering`: `qa_outputs` gives a start and an end logit per token.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1449>
    question_answering: RobertaForQuestionAnswering,
}

from_pretrained_impls!(
    roberta:
    RobertaModel,
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaForQuestionAnswering
);

// XLM-RoBERTa and CamemBERT: transformers' classes are RoBERTa's, copied ("Copied from
// transformers.models.roberta.modeling_roberta"), with the same `roberta.` prefix and the same
// position numbering after `pad_token_id`; only the tokenizer (SentencePiece) differs.
// https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/xlm_roberta/modeling_xlm_roberta.py#L1537
// https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/camembert/modeling_camembert.py#L667

/// transformers' `XLMRobertaModel`: [`RobertaModel`], which loads `xlm-roberta` checkpoints.
pub type XlmRobertaModel = RobertaModel;
/// transformers' `XLMRobertaForMaskedLM`: [`RobertaForMaskedLM`].
pub type XlmRobertaForMaskedLM = RobertaForMaskedLM;
/// transformers' `XLMRobertaForSequenceClassification`: [`RobertaForSequenceClassification`].
pub type XlmRobertaForSequenceClassification = RobertaForSequenceClassification;
/// transformers' `XLMRobertaForTokenClassification`: [`RobertaForTokenClassification`].
pub type XlmRobertaForTokenClassification = RobertaForTokenClassification;
/// transformers' `XLMRobertaForQuestionAnswering`: [`RobertaForQuestionAnswering`].
pub type XlmRobertaForQuestionAnswering = RobertaForQuestionAnswering;
/// transformers' `CamembertModel`: [`RobertaModel`], which loads `camembert` checkpoints.
pub type CamembertModel = RobertaModel;
/// transformers' `CamembertForMaskedLM`: [`RobertaForMaskedLM`].
pub type CamembertForMaskedLM = RobertaForMaskedLM;
/// transformers' `CamembertForSequenceClassification`: [`RobertaForSequenceClassification`].
pub type CamembertForSequenceClassification = RobertaForSequenceClassification;
/// transformers' `CamembertForTokenClassification`: [`RobertaForTokenClassification`].
pub type CamembertForTokenClassification = RobertaForTokenClassification;
/// transformers' `CamembertForQuestionAnswering`: [`RobertaForQuestionAnswering`].
pub type CamembertForQuestionAnswering = RobertaForQuestionAnswering;
