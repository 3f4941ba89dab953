//! One file per architecture. Each follows the nesting of its checkpoint keys.

pub mod bert;

use candle_core::Tensor;

/// A batch ready for an encoder: all tensors are (batch, seq) of u32, on the model's device.
#[derive(Debug, Clone)]
pub struct ModelInput {
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding. `None` means no padding.
    pub attention_mask: Option<Tensor>,
    /// Segment ids (0 for the first text, 1 for the second). `None` means all 0.
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

/// Start and end logits of extractive question answering, each (batch, seq).
#[derive(Debug, Clone)]
pub struct QuestionAnsweringOutput {
    pub start_logits: Tensor,
    pub end_logits: Tensor,
}
