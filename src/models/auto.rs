//! Auto classes: load the right architecture for a task from `config.json`, as transformers'
//! `AutoModelFor*` do. Each is an enum over the architectures that have that head; asking for
//! a head an architecture lacks (GPT-2 question answering, say) is an error naming both.
//! `Variant(Model) | Other | ...` loads the architectures after the bar with the same model:
//! XLM-RoBERTa and CamemBERT are RoBERTa, key for key.

use crate::error::{Error, Result};
use crate::models::bert::{
    BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel,
};
use crate::models::cache::KvCache;
use crate::models::config::ModelConfig;
use crate::models::distilbert::{
    DistilBertForMaskedLM, DistilBertForQuestionAnswering, DistilBertForSequenceClassification,
    DistilBertForTokenClassification, DistilBertModel,
};
use crate::models::gemma3::Gemma3TextModel;
use crate::models::gpt2::{Gpt2ForSequenceClassification, Gpt2LMHeadModel};
use crate::models::gte::{
    GteForMaskedLM, GteForSequenceClassification, GteForTokenClassification, GteModel,
};
use crate::models::jina_bert::JinaBertModel;
use crate::models::llama::{LlamaEmbeddingModel, LlamaForCausalLM};
use crate::models::modernbert::{
    ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertForTokenClassification,
    ModernBertModel,
};
use crate::models::mpnet::{
    MpNetForMaskedLM, MpNetForQuestionAnswering, MpNetForSequenceClassification,
    MpNetForTokenClassification, MpNetModel,
};
use crate::models::nomic_bert::{
    NomicBertForMaskedLM, NomicBertForSequenceClassification, NomicBertForTokenClassification,
    NomicBertModel,
};
use crate::models::pretrained::{checkpoint_mismatch, FromPretrained};
use crate::models::roberta::{
    RobertaForMaskedLM, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification, RobertaModel,
};
use crate::models::weights::ModelWeights;
use crate::models::{EncoderOutput, ModelInput, QuestionAnsweringOutput};

macro_rules! auto_model {
    ($(#[$doc:meta])* $name:ident -> $output:ty, $task:literal {
        $($variant:ident($model:ty) $(| $shares:ident)*),* $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub enum $name {
            $(
                #[doc = concat!("A [`", stringify!($model), "`].")]
                $variant($model)
            ),*
        }

        impl $name {
            /// Run the loaded architecture's `forward`; the enum's doc gives the output's shape.
            pub fn forward(&self, input: &ModelInput) -> Result<$output> {
                match self {
                    $($name::$variant(model) => model.forward(input)),*
                }
            }
        }

        impl FromPretrained for $name {
            fn from_config(vb: ModelWeights, config: &ModelConfig) -> Result<Self> {
                #[allow(unreachable_patterns)]
                match config {
                    $(ModelConfig::$variant(c) $(| ModelConfig::$shares(c))* => Ok($name::$variant(
                        <$model>::load(vb, c).map_err(checkpoint_mismatch)?,
                    )),)*
                    other => Err(Error::UnsupportedTask {
                        model_type: other.model_type(),
                        task: $task,
                    }),
                }
            }
        }
    };
}

auto_model!(
    /// The base encoder: hidden states (and the pooler output where there is one); or a
    /// decoder's, for embedders built on one (Qwen3-Embedding on the Llama family,
    /// EmbeddingGemma on Gemma 3's text model).
    AutoModel -> EncoderOutput, "feature extraction" {
        Bert(BertModel),
        Roberta(RobertaModel) | XlmRoberta | Camembert,
        Distilbert(DistilBertModel),
        MpNet(MpNetModel),
        Llama(LlamaEmbeddingModel) | Mistral | Qwen2 | Qwen3,
        Modernbert(ModernBertModel),
        Gte(GteModel) | New,
        NomicBert(NomicBertModel),
        Gemma3Text(Gemma3TextModel),
        JinaBert(JinaBertModel),
    }
);

auto_model!(
    /// Vocabulary logits at every position, (batch, seq, vocab).
    AutoModelForMaskedLM -> candle_core::Tensor, "fill-mask" {
        Bert(BertForMaskedLM),
        Roberta(RobertaForMaskedLM) | XlmRoberta | Camembert,
        Distilbert(DistilBertForMaskedLM),
        Modernbert(ModernBertForMaskedLM),
        MpNet(MpNetForMaskedLM),
        Gte(GteForMaskedLM) | New,
        NomicBert(NomicBertForMaskedLM),
    }
);

auto_model!(
    /// Class logits per input, (batch, num_labels).
    AutoModelForSequenceClassification -> candle_core::Tensor, "text classification" {
        Bert(BertForSequenceClassification),
        Roberta(RobertaForSequenceClassification) | XlmRoberta | Camembert,
        Distilbert(DistilBertForSequenceClassification),
        MpNet(MpNetForSequenceClassification),
        Gpt2(Gpt2ForSequenceClassification),
        Modernbert(ModernBertForSequenceClassification),
        Gte(GteForSequenceClassification) | New,
        NomicBert(NomicBertForSequenceClassification),
    }
);

auto_model!(
    /// Class logits per token, (batch, seq, num_labels).
    AutoModelForTokenClassification -> candle_core::Tensor, "token classification" {
        Bert(BertForTokenClassification),
        Roberta(RobertaForTokenClassification) | XlmRoberta | Camembert,
        Distilbert(DistilBertForTokenClassification),
        Modernbert(ModernBertForTokenClassification),
        MpNet(MpNetForTokenClassification),
        Gte(GteForTokenClassification) | New,
        NomicBert(NomicBertForTokenClassification),
    }
);

auto_model!(
    /// Start and end logits per token.
    AutoModelForQuestionAnswering -> QuestionAnsweringOutput, "question answering" {
        Bert(BertForQuestionAnswering),
        Roberta(RobertaForQuestionAnswering) | XlmRoberta | Camembert,
        Distilbert(DistilBertForQuestionAnswering),
        MpNet(MpNetForQuestionAnswering),
    }
);

/// A decoder with its language-model head, for generation: GPT-2 or the Llama family (Llama,
/// Mistral, Qwen2, Qwen3), as transformers' `AutoModelForCausalLM` picks it from
/// `config.json`. Every method takes and gives what the architectures' own do.
#[derive(Debug, Clone)]
pub enum AutoModelForCausalLM {
    /// A [`Gpt2LMHeadModel`] (boxed, as the other: the enum stays a pointer wide).
    Gpt2(Box<Gpt2LMHeadModel>),
    /// A [`LlamaForCausalLM`]: Llama, Mistral, Qwen2 or Qwen3.
    Llama(Box<LlamaForCausalLM>),
}

/// The same call on whichever decoder is loaded.
macro_rules! each_decoder {
    ($self:ident, $model:ident => $call:expr) => {
        match $self {
            AutoModelForCausalLM::Gpt2($model) => $call,
            AutoModelForCausalLM::Llama($model) => $call,
        }
    };
}

impl AutoModelForCausalLM {
    /// Logits of the new tokens, (batch, new, vocab): `input_ids` (batch, new) after those in
    /// `cache`, `attention_mask` (batch, cached + new) with 0 for left padding.
    pub fn forward(
        &self,
        input_ids: &candle_core::Tensor,
        attention_mask: Option<&candle_core::Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<candle_core::Tensor> {
        each_decoder!(self, model => model.forward(input_ids, attention_mask, cache))
    }

    /// Logits of the last new token only, (batch, vocab).
    pub fn forward_last(
        &self,
        input_ids: &candle_core::Tensor,
        attention_mask: Option<&candle_core::Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<candle_core::Tensor> {
        each_decoder!(self, model => model.forward_last(input_ids, attention_mask, cache))
    }

    /// Logits, (rows, vocab), of one decoding step of several independent sequences, each over
    /// its own cache; each row bitwise what that sequence gives alone.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<candle_core::Tensor> {
        each_decoder!(self, model => model.decode_step(tokens, caches))
    }

    /// An empty KV cache for one generation.
    pub fn new_cache(&self) -> KvCache {
        each_decoder!(self, model => model.new_cache())
    }

    /// The device the weights are on.
    pub fn device(&self) -> &candle_core::Device {
        each_decoder!(self, model => model.device())
    }

    /// Prompt plus new tokens may not exceed this.
    pub fn max_positions(&self) -> usize {
        each_decoder!(self, model => model.max_positions())
    }

    /// Bytes of weights one decoding step reads.
    pub fn weight_bytes_per_token(&self) -> usize {
        each_decoder!(self, model => model.weight_bytes_per_token())
    }
}

impl FromPretrained for AutoModelForCausalLM {
    fn from_config(vb: ModelWeights, config: &ModelConfig) -> Result<Self> {
        match config {
            ModelConfig::Gpt2(c) => Ok(Self::Gpt2(Box::new(
                Gpt2LMHeadModel::load(vb, c).map_err(checkpoint_mismatch)?,
            ))),
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => Ok(Self::Llama(Box::new(
                LlamaForCausalLM::load(vb, c).map_err(checkpoint_mismatch)?,
            ))),
            other => Err(Error::UnsupportedTask {
                model_type: other.model_type(),
                task: "text generation",
            }),
        }
    }
}

/// A reranker, as `config.json` makes it: a cross-encoder's sequence-classification head, or,
/// for the Llama family, a causal LM that answers "yes" or "no" to a prompt holding the query
/// and the document (Qwen3-Reranker, which is a plain `Qwen3ForCausalLM` checkpoint).
#[derive(Debug, Clone)]
pub enum AutoModelForTextRanking {
    /// Relevance logits from a sequence-classification head (boxed: the enum stays a pointer
    /// wide, as `AutoModelForCausalLM`).
    CrossEncoder(Box<AutoModelForSequenceClassification>),
    /// A decoder whose last position's logits are read at the "yes" and "no" tokens.
    YesNo(AutoModelForCausalLM),
}

impl FromPretrained for AutoModelForTextRanking {
    fn from_config(vb: ModelWeights, config: &ModelConfig) -> Result<Self> {
        match config {
            ModelConfig::Llama(_)
            | ModelConfig::Mistral(_)
            | ModelConfig::Qwen2(_)
            | ModelConfig::Qwen3(_) => {
                Ok(Self::YesNo(AutoModelForCausalLM::from_config(vb, config)?))
            }
            _ => Ok(Self::CrossEncoder(Box::new(
                AutoModelForSequenceClassification::from_config(vb, config)?,
            ))),
        }
    }
}
