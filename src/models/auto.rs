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
use crate::models::config::ModelConfig;
use crate::models::distilbert::{
    DistilBertForMaskedLM, DistilBertForQuestionAnswering, DistilBertForSequenceClassification,
    DistilBertForTokenClassification, DistilBertModel,
};
use crate::models::gpt2::Gpt2ForSequenceClassification;
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
    /// The base encoder: hidden states (and the pooler output where there is one).
    AutoModel -> EncoderOutput, "feature extraction" {
        Bert(BertModel),
        Roberta(RobertaModel) | XlmRoberta | Camembert,
        Distilbert(DistilBertModel),
    }
);

auto_model!(
    /// Vocabulary logits at every position, (batch, seq, vocab).
    AutoModelForMaskedLM -> candle_core::Tensor, "fill-mask" {
        Bert(BertForMaskedLM),
        Roberta(RobertaForMaskedLM) | XlmRoberta | Camembert,
        Distilbert(DistilBertForMaskedLM),
    }
);

auto_model!(
    /// Class logits per input, (batch, num_labels).
    AutoModelForSequenceClassification -> candle_core::Tensor, "text classification" {
        Bert(BertForSequenceClassification),
        Roberta(RobertaForSequenceClassification) | XlmRoberta | Camembert,
        Distilbert(DistilBertForSequenceClassification),
        Gpt2(Gpt2ForSequenceClassification),
    }
);

auto_model!(
    /// Class logits per token, (batch, seq, num_labels).
    AutoModelForTokenClassification -> candle_core::Tensor, "token classification" {
        Bert(BertForTokenClassification),
        Roberta(RobertaForTokenClassification) | XlmRoberta | Camembert,
        Distilbert(DistilBertForTokenClassification),
    }
);

auto_model!(
    /// Start and end logits per token.
    AutoModelForQuestionAnswering -> QuestionAnsweringOutput, "question answering" {
        Bert(BertForQuestionAnswering),
        Roberta(RobertaForQuestionAnswering) | XlmRoberta | Camembert,
        Distilbert(DistilBertForQuestionAnswering),
    }
);
