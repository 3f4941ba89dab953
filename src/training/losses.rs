//! The losses of transformers' task heads and of sentence-transformers, from candle
//! primitives that have backward passes. Each names the reference it matches.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};

/// `log_softmax` over the last dimension, shifted by the (constant) maximum.
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// `torch.nn.CrossEntropyLoss()` (mean) of `logits` (rows, classes) against class ids (rows).
pub fn cross_entropy(logits: &Tensor, classes: &Tensor) -> Result<Tensor> {
    let picked = log_softmax(logits)?.gather(&classes.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// `CrossEntropyLoss()` over `logits` (rows, classes) against `targets` (rows, i64), where
/// `-100` marks a row that does not count (padding, and a word's pieces after its first, as
/// transformers' token-classification scripts label them).
pub fn cross_entropy_ignoring(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets: Vec<i64> = targets.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    let classes = logits.dim(D::Minus1)?;
    let mut kept = Vec::new();
    let mut ids = Vec::new();
    for (row, &target) in targets.iter().enumerate() {
        if target == -100 {
            continue;
        }
        if target < 0 || target as usize >= classes {
            return Err(Error::InvalidInput(format!(
                "label {target} is outside the head's {classes} classes"
            )));
        }
        kept.push(row as u32);
        ids.push(target as u32);
    }
    if kept.is_empty() {
        return Err(Error::InvalidInput(
            "a batch has no labelled token (every label is -100)".into(),
        ));
    }
    let device = logits.device();
    let count = kept.len();
    let rows = logits.index_select(&Tensor::from_vec(kept, count, device)?, 0)?;
    cross_entropy(&rows, &Tensor::from_vec(ids, count, device)?)
}

/// `torch.nn.BCEWithLogitsLoss()` (mean), in its stable form
/// `max(x, 0) - x·y + log(1 + exp(-|x|))`.
pub fn binary_cross_entropy_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let positive = logits.relu()?;
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let loss = ((positive - logits.mul(targets)?)? + softplus)?;
    Ok(loss.mean_all()?)
}

/// `torch.nn.MSELoss()` (mean).
pub fn mean_squared_error(predictions: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(predictions.sub(targets)?.sqr()?.mean_all()?)
}

/// Rows scaled to unit length, `torch.nn.functional.normalize` (norms below 1e-12 clamped).
fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let norms = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}

/// The embedding losses of sentence-transformers v5.1.2
/// (<https://github.com/UKPLab/sentence-transformers/tree/v5.1.2/sentence_transformers/losses>).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmbeddingLoss {
    /// `MultipleNegativesRankingLoss`: each anchor against every positive (and hard negative)
    /// of the batch, the scaled cosine similarities as logits of the right one.
    MultipleNegativesRanking {
        /// The similarity scale (sentence-transformers' default 20).
        scale: f32,
    },
    /// `CoSENTLoss`: every pair of pairs whose gold scores are ordered should have their
    /// cosine similarities in the same order.
    CoSent {
        /// The similarity scale (default 20).
        scale: f32,
    },
    /// `CosineSimilarityLoss`: the squared error of the cosine similarity against the score.
    CosineSimilarity,
}

impl EmbeddingLoss {
    /// `MultipleNegativesRankingLoss()` with sentence-transformers' defaults.
    pub fn multiple_negatives_ranking() -> Self {
        Self::MultipleNegativesRanking { scale: 20.0 }
    }

    /// `CoSENTLoss()` with sentence-transformers' defaults.
    pub fn cosent() -> Self {
        Self::CoSent { scale: 20.0 }
    }

    /// The name sentence-transformers gives it.
    pub fn name(&self) -> &'static str {
        match self {
            EmbeddingLoss::MultipleNegativesRanking { .. } => "MultipleNegativesRankingLoss",
            EmbeddingLoss::CoSent { .. } => "CoSENTLoss",
            EmbeddingLoss::CosineSimilarity => "CosineSimilarityLoss",
        }
    }

    /// The loss of `columns` (each (rows, dim): anchor, positive[, negative], or the two
    /// sentences of scored pairs) and the pairs' `scores`.
    pub fn compute(&self, columns: &[Tensor], scores: Option<&Tensor>) -> Result<Tensor> {
        match *self {
            EmbeddingLoss::MultipleNegativesRanking { scale } => {
                let [anchors, candidates @ ..] = columns else {
                    return Err(Error::InvalidInput("no anchors in the batch".into()));
                };
                if candidates.is_empty() {
                    return Err(Error::InvalidInput(
                        "MultipleNegativesRankingLoss needs anchor and positive columns".into(),
                    ));
                }
                let candidates = Tensor::cat(candidates, 0)?;
                let similarities = unit_rows(anchors)?.matmul(&unit_rows(&candidates)?.t()?)?;
                let rows = anchors.dim(0)? as u32;
                let targets = Tensor::arange(0u32, rows, anchors.device())?;
                cross_entropy(&(similarities * scale as f64)?, &targets)
            }
            EmbeddingLoss::CoSent { scale } => {
                let (similarities, scores) = pair_similarities(columns, scores, self.name())?;
                cosent(&(similarities * scale as f64)?, scores)
            }
            EmbeddingLoss::CosineSimilarity => {
                let (similarities, scores) = pair_similarities(columns, scores, self.name())?;
                mean_squared_error(&similarities, scores)
            }
        }
    }
}

/// The cosine similarity of each pair of rows of the two columns, and the pairs' scores.
fn pair_similarities<'a>(
    columns: &[Tensor],
    scores: Option<&'a Tensor>,
    loss: &str,
) -> Result<(Tensor, &'a Tensor)> {
    let ([first, second], Some(scores)) = (columns, scores) else {
        return Err(Error::InvalidInput(format!(
            "{loss} needs two sentence columns and a score per pair"
        )));
    };
    let similarities = unit_rows(first)?.mul(&unit_rows(second)?)?.sum(D::Minus1)?;
    Ok((similarities, scores))
}

/// `log(1 + Σ exp(s_j − s_i))` over the pairs (i, j) whose gold scores say i ranks above j
/// (`score_i > score_j`), as `CoSENTLoss.compute_loss_from_embeddings` sums it.
fn cosent(similarities: &Tensor, scores: &Tensor) -> Result<Tensor> {
    let gold: Vec<f32> = scores.to_dtype(DType::F32)?.to_vec1()?;
    let rows = gold.len();
    // differences[i][j] = s_i − s_j, counted where gold_i < gold_j.
    let differences = similarities
        .unsqueeze(1)?
        .broadcast_sub(&similarities.unsqueeze(0)?)?
        .flatten_all()?;
    let ordered: Vec<u32> = (0..rows * rows)
        .filter(|&k| gold[k / rows] < gold[k % rows])
        .map(|k| k as u32)
        .collect();
    let zero = Tensor::zeros(1, DType::F32, similarities.device())?;
    let terms = match ordered.len() {
        0 => zero,
        count => {
            let picked = differences
                .index_select(&Tensor::from_vec(ordered, count, similarities.device())?, 0)?;
            Tensor::cat(&[zero, picked], 0)?
        }
    };
    // logsumexp, shifted by its (constant) maximum.
    let max = terms.max_keepdim(0)?.detach();
    Ok(terms
        .broadcast_sub(&max)?
        .exp()?
        .sum_all()?
        .log()?
        .add(&max.squeeze(0)?)?)
}
