//! What every decoder (GPT-2, the Llama family) does the same way around its blocks: checking
//! a forward's inputs against its cache, position ids counted from the attention mask, the
//! causal (padding, sliding-window) mask, and the grouped products of a continuous batch's
//! decoding step that keep every row bitwise what it is alone.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::models::cache::KvCache;
use crate::models::layers::{Activation, Linear};

/// A forward's inputs, checked against the cache and the model's length.
pub(crate) struct Prepared {
    /// Sequences in the batch.
    pub batch: usize,
    /// New tokens per sequence.
    pub new: usize,
    /// Positions already in the cache.
    pub past: usize,
    /// The attention mask as host rows (`true`: a real token), covering past and new tokens.
    pub mask: Option<Vec<Vec<bool>>>,
    /// (batch, new) position ids of the new tokens.
    pub positions: Vec<u32>,
}

/// Check `input_ids` (batch, new), `attention_mask` (batch, past + new) and `cache` against a
/// model of `layers` layers and `max_positions` positions; count the position ids.
pub(crate) fn prepare(
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    cache: Option<&KvCache>,
    layers: usize,
    max_positions: usize,
) -> Result<Prepared> {
    let (batch, new) = input_ids.dims2()?;
    if new == 0 {
        return Err(Error::InvalidInput("input_ids holds no token".to_string()));
    }
    let past = match cache {
        Some(cache) => {
            check_layers(cache, layers)?;
            if cache.batch_size().is_some_and(|b| b != batch) {
                return Err(Error::InvalidInput(
                    "the batch size differs from the one in the KV cache".to_string(),
                ));
            }
            cache.len()
        }
        None => 0,
    };
    let total = past + new;
    if total > max_positions {
        return Err(Error::InputTooLong {
            length: total,
            max: max_positions,
        });
    }
    if let Some(mask) = attention_mask {
        if mask.dims() != [batch, total] {
            return Err(Error::InvalidInput(format!(
                "attention_mask has shape {:?}, expected [{batch}, {total}] (cached + new tokens)",
                mask.dims()
            )));
        }
    }
    let mask = host_mask(attention_mask)?;
    let positions = position_ids(mask.as_deref(), batch, past, new);
    Ok(Prepared {
        batch,
        new,
        past,
        mask,
        positions,
    })
}

/// Check a continuous batch's decoding step: one token per cache, each cache of one sequence
/// with room for one more position. Returns each sequence's position.
pub(crate) fn prepare_decode(
    tokens: &[u32],
    caches: &[&mut KvCache],
    layers: usize,
    max_positions: usize,
) -> Result<Vec<u32>> {
    if tokens.is_empty() || tokens.len() != caches.len() {
        return Err(Error::InvalidInput(format!(
            "a decoding step takes one token per cache: {} tokens, {} caches",
            tokens.len(),
            caches.len()
        )));
    }
    caches
        .iter()
        .map(|cache| {
            check_layers(cache, layers)?;
            if cache.batch_size().is_some_and(|batch| batch != 1) {
                return Err(Error::InvalidInput(
                    "a decoding step of several sequences takes caches of one sequence each"
                        .to_string(),
                ));
            }
            if cache.len() + 1 > max_positions {
                return Err(Error::InputTooLong {
                    length: cache.len() + 1,
                    max: max_positions,
                });
            }
            Ok(cache.len() as u32)
        })
        .collect()
}

fn check_layers(cache: &KvCache, layers: usize) -> Result<()> {
    if cache.num_layers() != layers {
        return Err(Error::InvalidInput(format!(
            "the KV cache has {} layers, the model {layers}",
            cache.num_layers()
        )));
    }
    Ok(())
}

/// `linear` over the rows of a ragged decoding step, in groups small enough that each row's
/// output is bitwise what it is when its sequence decodes alone
/// ([`Linear::rows_summed_as_alone`]). The GEMM sums inputs longer than one K block in
/// blocks once a product has more than a few rows; a row's result then depended on how many
/// sequences shared the step, and a greedy token could flip. Grouping costs extra reads of
/// those weights only (GPT-2 small: `mlp.c_proj`, 3072 inputs, once more per 6 rows).
pub(crate) fn rows_as_alone(
    linear: &Linear,
    x: &Tensor,
    activation: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let group = linear.rows_summed_as_alone();
    if rows <= group {
        return linear.forward_with(x, activation, residual);
    }
    let outputs = (0..rows)
        .step_by(group)
        .map(|start| {
            let len = group.min(rows - start);
            let residual = residual.map(|r| r.narrow(0, start, len)).transpose()?;
            linear.forward_with(&x.narrow(0, start, len)?, activation, residual.as_ref())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outputs, 0)?)
}

/// The attention mask as host rows of 0/1, read once per forward: position ids and padding
/// both come from it, and it is only (batch, cached + new) values.
fn host_mask(attention_mask: Option<&Tensor>) -> Result<Option<Vec<Vec<bool>>>> {
    let Some(mask) = attention_mask else {
        return Ok(None);
    };
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    if rows.iter().flatten().any(|&m| m != 0.0 && m != 1.0) {
        return Err(Error::InvalidInput(
            "attention_mask must hold only 0 (padding) and 1 (real token)".to_string(),
        ));
    }
    Ok(Some(
        rows.into_iter()
            .map(|row| row.into_iter().map(|m| m == 1.0).collect())
            .collect(),
    ))
}

/// (batch, new) position ids of the new tokens. With a mask, positions count real tokens only,
/// and padding gets 1, as transformers' `generate` does for these models; without one, they
/// continue from the cache.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/gpt2/modeling_gpt2.py#L1100>
fn position_ids(mask: Option<&[Vec<bool>]>, batch: usize, past: usize, new: usize) -> Vec<u32> {
    match mask {
        None => (0..batch)
            .flat_map(|_| past as u32..(past + new) as u32)
            .collect(),
        Some(rows) => rows
            .iter()
            .flat_map(|row| {
                let before = row[..past].iter().filter(|&&real| real).count() as u32;
                row[past..].iter().scan(before, |real_so_far, &real| {
                    *real_so_far += u32::from(real);
                    Some(if real { *real_so_far - 1 } else { 1 })
                })
            })
            .collect(),
    }
}

/// The additive f32 mask, (batch or 1, 1, new, past + new): causal, plus padding when given,
/// and with a sliding `window` each query sees only the `window` keys up to itself, as
/// transformers' `sliding_window_overlay` (`kv_idx > q_idx - window`).
/// `None` when nothing is masked (one new token, no padding, nothing out of the window).
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/masking_utils.py#L96>
pub(crate) fn attention_bias(
    mask: Option<&[Vec<bool>]>,
    past: usize,
    new: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let total = past + new;
    let hidden = |i: usize, j: usize| {
        let query = past + i;
        j > query || window.is_some_and(|window| query - j >= window)
    };
    let causal = if new > 1 || (0..total).any(|j| hidden(0, j)) {
        let blocked: Vec<f32> = (0..new)
            .flat_map(|i| (0..total).map(move |j| if hidden(i, j) { f32::MIN } else { 0.0 }))
            .collect();
        Some(Tensor::from_vec(blocked, (1, 1, new, total), device)?)
    } else {
        None
    };
    // A mask of ones hides nothing: leave it out rather than add zeros in every layer.
    let padding = match mask {
        Some(rows) if rows.iter().flatten().any(|&real| !real) => {
            let blocked: Vec<f32> = rows
                .iter()
                .flatten()
                .map(|&real| if real { 0.0 } else { f32::MIN })
                .collect();
            Some(Tensor::from_vec(
                blocked,
                (rows.len(), 1, 1, total),
                device,
            )?)
        }
        _ => None,
    };
    Ok(match (causal, padding) {
        (Some(causal), Some(padding)) => Some(causal.broadcast_minimum(&padding)?),
        (causal, padding) => causal.or(padding),
    })
}
