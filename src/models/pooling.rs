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

/// sentence-transformers' `SpladePooling`: one vocabulary-sized vector per input from a masked
/// LM's logits, `log(1 + activation(logits))` pooled over the input's tokens (SPLADE). Most of
/// its values are zero, so it is served as its non-zero entries.
/// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/sparse_encoder/models/SpladePooling.py#L62>
///
/// `Default` is the module's default, which is also what `SparseEncoder` builds for a plain
/// `…ForMaskedLM` checkpoint: max pooling of `log1p(relu(logits))`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct SpladePooling {
    /// How the tokens' values become one (`pooling_strategy`).
    #[serde(rename = "pooling_strategy", default)]
    pub strategy: SpladeStrategy,
    /// What is applied to each logit before pooling (`activation_function`).
    #[serde(rename = "activation_function", default)]
    pub activation: SpladeActivation,
}

/// `SpladePooling`'s `pooling_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpladeStrategy {
    /// The largest value over the tokens (SPLADE v2 and later).
    #[default]
    Max,
    /// The sum over the tokens (the first SPLADE).
    Sum,
}

/// `SpladePooling`'s `activation_function`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpladeActivation {
    /// `log1p(relu(x))`, every SPLADE model's.
    #[default]
    Relu,
    /// `log1p(log1p(relu(x)))`, OpenSearch's SPLADE models.
    Log1pRelu,
}

impl SpladeActivation {
    /// The value a logit contributes to the pooling. `ln_1p` rather than `ln(1 + x)`: for a
    /// logit below f32's epsilon, `1 + x` rounds to 1 and the entry would turn zero where
    /// torch's `log1p` keeps it, changing which entries are non-zero.
    fn apply(self, logit: f32) -> f32 {
        let saturated = logit.max(0.0).ln_1p();
        match self {
            SpladeActivation::Relu => saturated,
            SpladeActivation::Log1pRelu => saturated.ln_1p(),
        }
    }
}

impl SpladePooling {
    /// `logits`: (batch, seq, vocab) of a masked LM; `attention_mask`: (batch, seq), 1 for real
    /// tokens. Returns one vocabulary-sized row per input, on the host.
    ///
    /// sentence-transformers zeroes the padded logits, applies the activation to every position
    /// and pools them; padding then adds zeros, which change neither a max of values that are
    /// all ≥ 0 nor a sum. Max pooling here takes the largest logit of the real tokens on the
    /// device and applies the (increasing) activation once per vocabulary entry, so only
    /// (batch, vocab) values come to the host; sum pooling needs the activation of every
    /// token's logit before summing, on the host.
    pub fn pool(&self, logits: &Tensor, attention_mask: &Tensor) -> Result<Vec<Vec<f32>>> {
        let logits = logits.to_dtype(DType::F32)?;
        // (batch, seq, 1)
        let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let activation = self.activation;
        match self.strategy {
            SpladeStrategy::Max => {
                // Padding gets 1e9 taken off its logits, so it never wins over a real token
                // and turns 0 in the activation, as sentence-transformers' zeroed padding does.
                // An addition only: the (batch, seq, vocab) logits are the largest tensor of
                // the forward, and each pass over them costs.
                let blocked = ((1.0 - &mask)? * -1e9)?;
                let largest: Vec<Vec<f32>> = logits.broadcast_add(&blocked)?.max(1)?.to_vec2()?;
                Ok(largest
                    .into_iter()
                    .map(|row| row.into_iter().map(|x| activation.apply(x)).collect())
                    .collect())
            }
            SpladeStrategy::Sum => {
                let logits: Vec<Vec<Vec<f32>>> = logits.to_vec3()?;
                let mask: Vec<Vec<f32>> = mask.squeeze(D::Minus1)?.to_vec2()?;
                Ok(logits
                    .into_iter()
                    .zip(mask)
                    .map(|(tokens, real)| {
                        let mut pooled = vec![0f32; tokens.first().map_or(0, Vec::len)];
                        for (token, _) in tokens.iter().zip(real).filter(|(_, m)| *m > 0.0) {
                            for (sum, &x) in pooled.iter_mut().zip(token) {
                                *sum += activation.apply(x);
                            }
                        }
                        pooled
                    })
                    .collect())
            }
        }
    }
}
