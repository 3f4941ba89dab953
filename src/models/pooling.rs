//! Sentence embeddings from token embeddings, as sentence-transformers' `Pooling` and
//! `Normalize` modules compute them.

use candle_core::{DType, Tensor, D};
use serde::Deserialize;

use crate::error::Result;

/// How token embeddings become one vector per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean of the non-padding tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the non-padding tokens.
    Max,
    /// The last non-padding token (decoder embedders, Qwen3-Embedding: causal attention puts
    /// the whole input in it).
    #[serde(rename = "lasttoken")]
    LastToken,
}

impl Pooling {
    /// `hidden`: (batch, seq, dim); `attention_mask`: (batch, seq), 1 for real tokens.
    /// Returns (batch, dim) in f32.
    pub fn pool(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = hidden.to_dtype(DType::F32)?;
        // (batch, seq, 1)
        let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        Ok(match self {
            Pooling::Mean => {
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                // sentence-transformers clamps the count at 1e-9 so an all-padding row stays finite.
                let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
                summed.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::LastToken => {
                // Right-padded rows: the last real token is at (real tokens − 1), as
                // sentence-transformers gathers it for any padding side.
                let last: Vec<u32> = mask
                    .squeeze(D::Minus1)?
                    .sum(1)?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|count| (count as u32).saturating_sub(1))
                    .collect();
                let rows = last
                    .iter()
                    .enumerate()
                    .map(|(row, &index)| hidden.get(row)?.get(index as usize))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)?
            }
            Pooling::Max => {
                // Padding is set to a large negative value so it never wins, as
                // sentence-transformers does (`-1e9`).
                let blocked = ((1.0 - &mask)? * -1e9)?;
                hidden
                    .broadcast_mul(&mask)?
                    .broadcast_add(&blocked)?
                    .max(1)?
            }
        })
    }
}

/// Divide each row by its L2 norm (clamped at 1e-12, as `torch.nn.functional.normalize`).
pub fn l2_normalize(embeddings: &Tensor) -> Result<Tensor> {
    let norms = embeddings
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(embeddings.broadcast_div(&norms)?)
}
