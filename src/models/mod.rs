//! One file per architecture. Each follows the nesting of its checkpoint keys; what several
//! share (prefix detection, tied decoders, the masked-LM and QA heads) lives here.

pub mod auto;
pub mod bert;
pub mod cache;
pub mod config;
pub mod distilbert;
pub mod gpt2;
pub(crate) mod layers;
pub mod pooling;
pub mod pretrained;
pub mod roberta;

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::models::layers::{Activation, LayerNorm, Linear};

/// A batch ready for an encoder: all tensors are (batch, seq) of u32, on the model's device.
#[derive(Debug, Clone)]
pub struct ModelInput {
    /// Token ids from the model's tokenizer. An id outside the vocabulary is an
    /// [`Error::InvalidInput`], which catches a tokenizer that does not match the model.
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding. `None` means no padding.
    pub attention_mask: Option<Tensor>,
    /// Segment ids (0 for the first text, 1 for the second). `None` means all 0. Models without
    /// segments (RoBERTa's single type, DistilBERT, GPT-2) ignore them.
    pub token_type_ids: Option<Tensor>,
}

impl ModelInput {
    /// A batch of token ids without padding or segments.
    pub fn from_ids(input_ids: Tensor) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            token_type_ids: None,
        }
    }
}

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
pub(crate) fn base_model_weights<'a>(
    vb: &VarBuilder<'a>,
    prefix: &str,
    probe: &str,
) -> Result<VarBuilder<'a>> {
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
pub(crate) fn tied_weight(vb: &VarBuilder, name: &str, tied_to: &Tensor) -> Result<Tensor> {
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
    /// (batch, seq, hidden) -> (batch, seq, vocab)
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let hidden = self.activation.forward(&self.dense.forward(hidden)?)?;
        self.decoder.forward(&self.layer_norm.forward(&hidden)?)
    }
}
