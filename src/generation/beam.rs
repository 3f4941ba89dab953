//! Beam search, following transformers' vectorised `_beam_search` decision for decision:
//! the top `2 × num_beams` continuations of all beams, finished hypotheses kept with a length
//! penalty, the same early-stopping heuristic, and scores in f32.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/generation/utils.py#L3113>
//!
//! The cache follows the beams with [`DecoderCache::reorder`] ([`crate::KvCache`]'s copies only
//! the rows whose beam changed parent).

use crate::error::Result;
use crate::generation::processors::processors_for;
use crate::generation::stop::StopStrings;
use crate::generation::{CausalLM, EarlyStopping, GenerationConfig, PromptBatch};
use crate::kernels::host::log_softmax;
use crate::models::cache::DecoderCache;

/// transformers' stand-in for "impossible" in beam scores.
const IMPOSSIBLE: f32 = -1.0e9;

/// A candidate or kept sequence with its score.
#[derive(Debug, Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    score: f32,
    finished: bool,
}

/// The beams of one prompt.
#[derive(Debug)]
struct BeamState {
    /// `num_beams` running sequences and their summed log-probabilities.
    running: Vec<Hypothesis>,
    /// `num_beams` best finished sequences (slots not yet used have score -1e9).
    finished: Vec<Hypothesis>,
    /// False once no running beam can beat the finished ones.
    improvable: bool,
}

/// Beam search from `prompts` (left-padded, one row per prompt). Returns
/// `num_return_sequences` sequences per prompt, best first, padded with the fill token to the
/// longest returned one, as transformers returns them.
pub(crate) fn beam_search<M: CausalLM>(
    model: &M,
    prompts: &PromptBatch,
    config: &GenerationConfig,
    stop: Option<&StopStrings>,
) -> Result<Vec<Vec<u32>>> {
    let num_beams = config.num_beams;
    let prompt_len = prompts.seq_len();
    let max_total = config.max_total_length(prompt_len);
    let processors = processors_for(config, prompt_len)?;
    let fill = config.fill_token();
    let beams_to_keep = 2.max(1 + config.eos_token_id.len()) * num_beams;
    let length_penalty = config.length_penalty;

    // Every prompt repeated num_beams times; only the first beam of each starts live.
    let mut states: Vec<BeamState> = prompts
        .ids
        .iter()
        .map(|prompt| BeamState {
            running: (0..num_beams)
                .map(|beam| Hypothesis {
                    tokens: prompt.clone(),
                    score: if beam == 0 { 0.0 } else { IMPOSSIBLE },
                    finished: false,
                })
                .collect(),
            finished: vec![
                Hypothesis {
                    tokens: prompt.clone(),
                    score: IMPOSSIBLE,
                    finished: false,
                };
                num_beams
            ],
            improvable: true,
        })
        .collect();
    let mut mask: Vec<Vec<u32>> = prompts
        .mask
        .iter()
        .flat_map(|row| std::iter::repeat_n(row.clone(), num_beams))
        .collect();
    let mut input: Vec<Vec<u32>> = states
        .iter()
        .flat_map(|state| state.running.iter().map(|h| h.tokens.clone()))
        .collect();
    let mut cache = model.new_cache();
    let mut cur_len = prompt_len;

    loop {
        let mut scores = model.next_token_scores(&input, &mask, &mut cache)?;
        let vocab = scores.first().map_or(0, Vec::len);
        let mut parents = Vec::with_capacity(states.len() * num_beams);
        let mut all_hit = true;
        for (b, state) in states.iter_mut().enumerate() {
            // Accumulated log-probabilities of every (beam, token) continuation.
            let mut accumulated = Vec::with_capacity(num_beams * vocab);
            for (beam, hypothesis) in state.running.iter().enumerate() {
                let row = &mut scores[b * num_beams + beam];
                let mut log_probs = log_softmax(row);
                for processor in &processors {
                    processor.process(&hypothesis.tokens, &mut log_probs);
                }
                accumulated.extend(log_probs.iter().map(|&lp| lp + hypothesis.score));
            }
            let top = top_indices(&accumulated, beams_to_keep);
            let mut candidates = Vec::with_capacity(top.len());
            for &index in &top {
                let (beam, token) = (index / vocab, (index % vocab) as u32);
                let mut tokens = state.running[beam].tokens.clone();
                tokens.push(token);
                let hit = tokens.len() >= max_total
                    || config.eos_token_id.contains(&token)
                    || match stop {
                        Some(stop) => stop.matches(&tokens)?,
                        None => false,
                    };
                candidates.push((beam, tokens, accumulated[index], hit));
            }
            all_hit &= candidates.iter().all(|c| c.3);

            // Next running beams: the best candidates that did not stop.
            let running_scores: Vec<f32> = candidates
                .iter()
                .map(|c| c.2 + if c.3 { IMPOSSIBLE } else { 0.0 })
                .collect();
            let next = top_indices(&running_scores, num_beams);
            state.running = next
                .iter()
                .map(|&i| Hypothesis {
                    tokens: candidates[i].1.clone(),
                    score: running_scores[i],
                    finished: false,
                })
                .collect();
            parents.extend(next.iter().map(|&i| b * num_beams + candidates[i].0));

            // Finished hypotheses: only the top num_beams candidates may finish.
            let divisor = ((cur_len + 1 - prompt_len) as f64).powf(length_penalty as f64) as f32;
            let all_finished = state.finished.iter().all(|h| h.finished);
            let mut merged = state.finished.clone();
            for (i, (_, tokens, score, hit)) in candidates.into_iter().enumerate() {
                let just_finished = hit && i < num_beams;
                let mut final_score = score / divisor;
                if all_finished && config.early_stopping == EarlyStopping::Eager {
                    final_score += IMPOSSIBLE;
                }
                if !state.improvable {
                    final_score += IMPOSSIBLE;
                }
                if !just_finished {
                    final_score += IMPOSSIBLE;
                }
                merged.push(Hypothesis {
                    tokens,
                    score: final_score,
                    finished: just_finished,
                });
            }
            let merged_scores: Vec<f32> = merged.iter().map(|h| h.score).collect();
            state.finished = top_indices(&merged_scores, num_beams)
                .into_iter()
                .map(|i| merged[i].clone())
                .collect();
        }

        cache.reorder(&parents)?;
        cur_len += 1;
        for state in &mut states {
            state.improvable &= can_improve(state, cur_len, max_total, prompt_len, config);
        }
        let improvable = states.iter().any(|s| s.improvable);
        let open = !(config.early_stopping == EarlyStopping::Eager
            && states.iter().all(|s| s.finished.iter().all(|h| h.finished)));
        if !(improvable && open && !all_hit) {
            break;
        }
        mask = parents
            .iter()
            .map(|&parent| {
                let mut row = mask[parent].clone();
                row.push(1);
                row
            })
            .collect();
        input = states
            .iter()
            .flat_map(|s| {
                s.running
                    .iter()
                    .map(|h| h.tokens[h.tokens.len() - 1..].to_vec())
            })
            .collect();
    }

    let mut outputs: Vec<Vec<u32>> = states
        .into_iter()
        .flat_map(|state| state.finished.into_iter().take(config.num_return_sequences))
        .map(|h| h.tokens)
        .collect();
    let longest = outputs.iter().map(Vec::len).max().unwrap_or(prompt_len);
    for sequence in &mut outputs {
        if let Some(fill) = fill {
            sequence.resize(longest, fill);
        }
    }
    Ok(outputs)
}

/// transformers' `_check_early_stop_heuristic` for one prompt: can the best running beam still
/// beat the worst finished one?
fn can_improve(
    state: &BeamState,
    cur_len: usize,
    max_total: usize,
    prompt_len: usize,
    config: &GenerationConfig,
) -> bool {
    let best_length =
        if config.early_stopping == EarlyStopping::Never && config.length_penalty > 0.0 {
            max_total - prompt_len
        } else {
            cur_len - prompt_len
        };
    let divisor = (best_length as f64).powf(config.length_penalty as f64) as f32;
    let best_possible = state.running[0].score / divisor;
    // Per slot: the lowest kept score where the slot is finished, else -1e9.
    let lowest = state
        .finished
        .iter()
        .map(|h| h.score)
        .fold(f32::INFINITY, f32::min);
    state
        .finished
        .iter()
        .any(|h| best_possible > if h.finished { lowest } else { IMPOSSIBLE })
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}
