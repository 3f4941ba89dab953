//! Logits processors and warpers: small pieces that each change one row of next-token scores,
//! as transformers' `generation/logits_process.py` defines them. Each constructor checks its
//! arguments. They run on the host, on f32 scores, after the forward pass.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/generation/logits_process.py>

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::generation::GenerationConfig;
use crate::kernels::host::softmax;

/// Changes the scores of one sequence's next token, given the tokens so far (prompt included,
/// left padding included, as transformers passes them).
pub trait LogitsProcessor: Send + Sync + std::fmt::Debug {
    /// Change `scores` (one per vocabulary entry) of the token after `input_ids`.
    fn process(&self, input_ids: &[u32], scores: &mut [f32]);
}

fn invalid(message: String) -> Error {
    Error::InvalidGeneration(message)
}

/// Divide the score of every token already present by `penalty` (multiply when negative).
#[derive(Debug, Clone)]
pub struct RepetitionPenalty {
    penalty: f32,
}

impl RepetitionPenalty {
    /// `penalty` > 0; 1 changes nothing.
    pub fn new(penalty: f32) -> Result<Self> {
        if !(penalty > 0.0 && penalty.is_finite()) {
            return Err(invalid(format!(
                "repetition_penalty must be > 0, got {penalty}"
            )));
        }
        Ok(Self { penalty })
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, input_ids: &[u32], scores: &mut [f32]) {
        // Each distinct token once, whatever its count.
        let mut seen = vec![false; scores.len()];
        for &id in input_ids {
            if let Some(score) = scores.get_mut(id as usize) {
                if !std::mem::replace(&mut seen[id as usize], true) {
                    *score = if *score < 0.0 {
                        *score * self.penalty
                    } else {
                        *score / self.penalty
                    };
                }
            }
        }
    }
}

/// Forbid any token that would repeat an n-gram already in the sequence.
#[derive(Debug, Clone)]
pub struct NoRepeatNGram {
    size: usize,
}

impl NoRepeatNGram {
    /// Ban repeats of n-grams of `size` tokens (at least 1).
    pub fn new(size: usize) -> Result<Self> {
        if size == 0 {
            return Err(invalid("no_repeat_ngram_size must be >= 1".into()));
        }
        Ok(Self { size })
    }
}

impl LogitsProcessor for NoRepeatNGram {
    fn process(&self, input_ids: &[u32], scores: &mut [f32]) {
        let n = self.size;
        if input_ids.len() + 1 < n {
            return;
        }
        // The last n - 1 tokens, and every token that followed them before.
        let prefix = &input_ids[input_ids.len() + 1 - n..];
        let mut banned: HashMap<&[u32], Vec<u32>> = HashMap::new();
        for window in input_ids.windows(n) {
            banned
                .entry(&window[..n - 1])
                .or_default()
                .push(window[n - 1]);
        }
        for &id in banned.get(prefix).into_iter().flatten() {
            if let Some(score) = scores.get_mut(id as usize) {
                *score = f32::NEG_INFINITY;
            }
        }
    }
}

/// Forbid the end tokens until `min_new_tokens` tokens follow the prompt.
#[derive(Debug, Clone)]
pub struct MinNewTokens {
    prompt_len: usize,
    min_new_tokens: usize,
    eos_token_ids: Vec<u32>,
}

impl MinNewTokens {
    /// Forbid `eos_token_ids` until `min_new_tokens` follow the `prompt_len`-token prompt.
    pub fn new(prompt_len: usize, min_new_tokens: usize, eos_token_ids: Vec<u32>) -> Self {
        Self {
            prompt_len,
            min_new_tokens,
            eos_token_ids,
        }
    }
}

impl LogitsProcessor for MinNewTokens {
    fn process(&self, input_ids: &[u32], scores: &mut [f32]) {
        if input_ids.len().saturating_sub(self.prompt_len) < self.min_new_tokens {
            for &id in &self.eos_token_ids {
                if let Some(score) = scores.get_mut(id as usize) {
                    *score = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// Divide every score by the temperature.
#[derive(Debug, Clone)]
pub struct Temperature {
    temperature: f32,
}

impl Temperature {
    /// `temperature` > 0.
    pub fn new(temperature: f32) -> Result<Self> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(invalid(format!(
                "temperature must be > 0, got {temperature}; for greedy decoding set do_sample to false"
            )));
        }
        Ok(Self { temperature })
    }
}

impl LogitsProcessor for Temperature {
    fn process(&self, _input_ids: &[u32], scores: &mut [f32]) {
        for score in scores {
            *score /= self.temperature;
        }
    }
}

/// Keep the `k` highest scores (ties with the k-th included); the rest become -inf.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
}

impl TopK {
    /// Keep `k` (at least 1) tokens, and never fewer than `min_tokens_to_keep`.
    pub fn new(k: usize, min_tokens_to_keep: usize) -> Result<Self> {
        if k == 0 {
            return Err(invalid("top_k must be >= 1".into()));
        }
        Ok(Self {
            k: k.max(min_tokens_to_keep),
        })
    }
}

impl LogitsProcessor for TopK {
    fn process(&self, _input_ids: &[u32], scores: &mut [f32]) {
        let k = self.k.min(scores.len());
        if k == 0 || k == scores.len() {
            return;
        }
        // The k-th largest score by partial selection (linear time), not a full sort.
        let mut copy = scores.to_vec();
        let (_, &mut threshold, _) = copy.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        for score in scores {
            if *score < threshold {
                *score = f32::NEG_INFINITY;
            }
        }
    }
}

/// Keep the smallest set of top tokens whose probabilities sum past `p` (nucleus sampling).
#[derive(Debug, Clone)]
pub struct TopP {
    p: f32,
    min_tokens_to_keep: usize,
}

impl TopP {
    /// `p` in (0, 1]; never fewer than `min_tokens_to_keep` (at least 1) tokens.
    pub fn new(p: f32, min_tokens_to_keep: usize) -> Result<Self> {
        if !(p > 0.0 && p <= 1.0) {
            return Err(invalid(format!("top_p must be in (0, 1], got {p}")));
        }
        if min_tokens_to_keep == 0 {
            return Err(invalid("min_tokens_to_keep must be >= 1".into()));
        }
        Ok(Self {
            p,
            min_tokens_to_keep,
        })
    }
}

impl LogitsProcessor for TopP {
    fn process(&self, _input_ids: &[u32], scores: &mut [f32]) {
        // As transformers: sort ascending, accumulate probabilities in f32, drop the tokens whose
        // cumulative probability stays <= 1 - p, and always keep the last `min_tokens_to_keep`.
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let probs = softmax(scores);
        let keep_from = order.len().saturating_sub(self.min_tokens_to_keep);
        let mut cumulative = 0f32;
        let mut removed = Vec::new();
        for (rank, &index) in order.iter().enumerate() {
            cumulative += probs[index];
            if cumulative <= 1.0 - self.p && rank < keep_from {
                removed.push(index);
            }
        }
        for index in removed {
            scores[index] = f32::NEG_INFINITY;
        }
    }
}

/// The processors and warpers `config` asks for, in transformers' order.
/// `prompt_len` is the (padded) prompt length; beams keep at least 2 tokens in warpers.
pub fn processors_for(
    config: &GenerationConfig,
    prompt_len: usize,
) -> Result<Vec<Box<dyn LogitsProcessor>>> {
    let mut list: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    if config.repetition_penalty != 1.0 {
        list.push(Box::new(RepetitionPenalty::new(config.repetition_penalty)?));
    }
    if config.no_repeat_ngram_size > 0 {
        list.push(Box::new(NoRepeatNGram::new(config.no_repeat_ngram_size)?));
    }
    if config.min_new_tokens > 0 && !config.eos_token_id.is_empty() {
        list.push(Box::new(MinNewTokens::new(
            prompt_len,
            config.min_new_tokens,
            config.eos_token_id.clone(),
        )));
    }
    if config.do_sample {
        let min_tokens_to_keep = if config.num_beams > 1 { 2 } else { 1 };
        if config.temperature != 1.0 {
            list.push(Box::new(Temperature::new(config.temperature)?));
        }
        if let Some(k) = config.top_k {
            list.push(Box::new(TopK::new(k, min_tokens_to_keep)?));
        }
        if config.top_p < 1.0 {
            list.push(Box::new(TopP::new(config.top_p, min_tokens_to_keep)?));
        }
    }
    Ok(list)
}
