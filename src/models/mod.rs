//! One file per architecture. Each follows the nesting of its checkpoint keys; what several
//! share (prefix detection, tied decoders, the masked-LM and QA heads) lives here.

/// `FromPretrained` for model types whose `load` takes the config that `ModelConfig::$accessor`
/// returns: `from_pretrained_impls!(bert: BertModel, BertForMaskedLM)`. Declared before the
/// architectures' modules so that they see it.
macro_rules! from_pretrained_impls {
    ($accessor:ident: $($model:ty),* $(,)?) => {$(
        impl $crate::models::pretrained::FromPretrained for $model {
            fn from_config(
                vb: $crate::models::weights::ModelWeights,
                config: &$crate::models::config::ModelConfig,
            ) -> $crate::error::Result<Self> {
                Self::load(vb, config.$accessor()?)
                    .map_err($crate::models::pretrained::checkpoint_mismatch)
            }
        }
    )*};
}

pub mod auto;
pub mod bert;
pub mod bge_m3;
pub mod cache;
pub(crate) mod causal_lm;
pub mod config;
pub(crate) mod decoder;
pub mod distilbert;
pub(crate) mod gated_bert;
pub mod gemma3;
pub(crate) mod gguf;
pub mod gpt2;
pub mod gte;
pub mod jina_bert;
pub(crate) mod layers;
pub mod llama;
pub mod modernbert;
pub mod mpnet;
pub mod nomic_bert;
pub mod pooling;
pub mod pretrained;
pub mod roberta;
pub mod rope;
pub(crate) mod task_heads;
pub mod weight_type;
pub mod weights;

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::models::layers::{Activation, LayerNorm, Linear, Pooler};
use crate::models::weights::ModelWeights;

// What every model's `forward` takes lives with the tokenizer, which makes it; it keeps its
// name here too, beside the models' outputs.
pub use crate::tokenizer::ModelInput;

/// What an encoder returns.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// (batch, seq, hidden)
    pub last_hidden_state: Tensor,
    /// (batch, hidden); `None` when the model has no pooler (DistilBERT, and checkpoints saved
    /// without one: masked-LM, token classification and QA heads).
    pub pooler_output: Option<Tensor>,
}

/// Start and end logits of extractive question answering, each (batch, seq).
#[derive(Debug, Clone)]
pub struct QuestionAnsweringOutput {
    /// Score of each token being the answer's first, (batch, seq); padding and question
    /// tokens are scored too, so callers mask them before picking a span.
    pub start_logits: Tensor,
    /// Score of each token being the answer's last, (batch, seq).
    pub end_logits: Tensor,
}

impl QuestionAnsweringOutput {
    /// Split the (batch, seq, 2) output of `qa_outputs`.
    pub(crate) fn from_logits(logits: &Tensor) -> Result<Self> {
        let take = |i| -> Result<Tensor> {
            Ok(logits
                .narrow(D::Minus1, i, 1)?
                .squeeze(D::Minus1)?
                .contiguous()?)
        };
        Ok(Self {
            start_logits: take(0)?,
            end_logits: take(1)?,
        })
    }
}

/// Where the base model's weights sit. Task checkpoints nest them under `prefix`
/// (`bert.`, `roberta.`, `distilbert.`, `transformer.`); a bare base-model checkpoint does not.
/// We look for `probe` at each place once and say which keys we expected when neither holds
/// it, rather than retrying prefixes on every miss.
pub(crate) fn base_model_weights(
    vb: &ModelWeights,
    prefix: &str,
    probe: &str,
) -> Result<ModelWeights> {
    if vb.contains_tensor(&format!("{prefix}.{probe}")) {
        Ok(vb.pp(prefix))
    } else if vb.contains_tensor(probe) {
        Ok(vb.clone())
    } else {
        Err(Error::InvalidWeights(format!(
            "the checkpoint has no `{prefix}.{probe}` nor `{probe}`: is it a {prefix} checkpoint?"
        )))
    }
}

/// A decoder weight tied to an embedding table. Checkpoints usually omit it, since
/// safetensors conversion drops tensors that share storage, so the table stands in for it.
pub(crate) fn tied_weight(vb: &ModelWeights, name: &str, tied_to: &Tensor) -> Result<Tensor> {
    if vb.contains_tensor(name) {
        Ok(vb.get(tied_to.shape(), name)?)
    } else {
        tracing::debug!(
            weight = name,
            "no weight of its own: tied to the input embeddings"
        );
        Ok(tied_to.clone())
    }
}

/// The masked-LM head of BERT, RoBERTa and DistilBERT: dense, activation, layer norm, then a
/// decoder to the vocabulary (tied to the word embeddings). Only the key names differ.
#[derive(Debug, Clone)]
pub(crate) struct MaskedLmHead {
    pub dense: Linear,
    pub activation: Activation,
    pub layer_norm: LayerNorm,
    pub decoder: Linear,
}

impl MaskedLmHead {
    /// RoBERTa's `lm_head` (MPNet's too): `dense`, exact GELU whatever `hidden_act` says,
    /// `layer_norm`, then `decoder` tied to `word_embeddings` (used from there when the
    /// checkpoint omits it) with `lm_head.bias`.
    /// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1145>
    pub fn roberta(
        lm_head: ModelWeights,
        hidden: usize,
        layer_norm_eps: f64,
        word_embeddings: &Tensor,
    ) -> Result<Self> {
        let vocab = word_embeddings.dim(0)?;
        Ok(Self {
            dense: Linear::load(lm_head.pp("dense"), hidden, hidden)?,
            activation: Activation::Gelu,
            layer_norm: LayerNorm::load(lm_head.pp("layer_norm"), hidden, layer_norm_eps)?,
            decoder: Linear::new(
                tied_weight(&lm_head, "decoder.weight", word_embeddings)?,
                Some(lm_head.get(vocab, "bias")?),
                lm_head.weight_type(),
            )?,
        })
    }

    /// (batch, seq, hidden) -> (batch, seq, vocab)
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = self.activation.forward(&self.dense.forward(hidden)?)?;
        self.decoder.forward(&self.layer_norm.forward(&hidden)?)
    }
}

/// RoBERTa's sequence-classification head (MPNet's too): `classifier.dense`, tanh,
/// `classifier.out_proj`, on the first token (`<s>`; no pooler).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/roberta/modeling_roberta.py#L1537>
#[derive(Debug, Clone)]
pub(crate) struct FirstTokenClassifier {
    dense: Linear,
    out_proj: Linear,
}

impl FirstTokenClassifier {
    /// `dense` and `out_proj` under `classifier`, with `labels` outputs.
    pub fn load(classifier: ModelWeights, hidden: usize, labels: usize) -> Result<Self> {
        Ok(Self {
            dense: Linear::load(classifier.pp("dense"), hidden, hidden)?,
            out_proj: Linear::load(classifier.pp("out_proj"), hidden, labels)?,
        })
    }

    /// (batch, seq, hidden) hidden states -> (batch, labels) logits.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let first = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let features = self.dense.forward(&first)?.tanh()?;
        self.out_proj.forward(&features)
    }
}

/// BERT's sequence-classification head as GTE and NomicBERT keep it: the pooler (dense and tanh
/// on the first token), saved beside the base model, then `classifier`.
#[derive(Debug, Clone)]
pub(crate) struct PoolerClassifier {
    pooler: Pooler,
    classifier: Linear,
}

impl PoolerClassifier {
    /// `dense` under `pooler`, and `classifier` with `labels` outputs.
    pub fn load(
        pooler: ModelWeights,
        classifier: ModelWeights,
        hidden: usize,
        labels: usize,
    ) -> Result<Self> {
        Ok(Self {
            pooler: Pooler::load(pooler, hidden)?,
            classifier: Linear::load(classifier, hidden, labels)?,
        })
    }

    /// (batch, seq, hidden) hidden states -> (batch, labels) logits.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.classifier.forward(&self.pooler.forward(hidden)?)
    }
}
