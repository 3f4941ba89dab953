//! Greedy search and multinomial sampling on the KV cache, step for step as transformers'
//! `_sample` runs them.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/generation/utils.py#L2700>

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Result;
use crate::generation::processors::{processors_for, LogitsProcessor};
use crate::generation::stop::StopStrings;
use crate::generation::{CausalLM, GenerationConfig, PromptBatch, Step};
use crate::host::{argmax, softmax};

/// The random generator of a sampling run: seeded when the config has a seed.
pub(crate) fn rng(config: &GenerationConfig) -> StdRng {
    match config.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    }
}

/// Draw an index from `probs` (summing to 1), or the last non-zero one if rounding leaves
/// the draw past the end.
pub fn sample_index(probs: &[f32], rng: &mut impl Rng) -> usize {
    let draw: f64 = rng.random();
    let mut cumulative = 0f64;
    let mut last_possible = 0;
    for (index, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cumulative += p as f64;
            last_possible = index;
            if draw < cumulative {
                return index;
            }
        }
    }
    last_possible
}

/// Choose the next token of one row from its processed scores.
pub fn next_token(
    processors: &[Box<dyn LogitsProcessor>],
    sequence: &[u32],
    scores: &mut [f32],
    sampling: Option<&mut StdRng>,
) -> u32 {
    for processor in processors {
        processor.process(sequence, scores);
    }
    let index = match sampling {
        Some(rng) => sample_index(&softmax(scores), rng),
        None => argmax(scores),
    };
    index as u32
}

/// Generate from `prompts` (left-padded); returns each row's full sequence (prompt + new).
/// `on_step` sees every new token of every row.
pub(crate) fn greedy_or_sample<M: CausalLM>(
    model: &M,
    prompts: &PromptBatch,
    config: &GenerationConfig,
    stop: Option<&StopStrings>,
    on_step: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    let prompt_len = prompts.seq_len();
    let max_total = config.max_total_length(prompt_len);
    let processors = processors_for(config, prompt_len)?;
    let mut rng = config.do_sample.then(|| rng(config));
    let fill = config.fill_token();

    let mut sequences = prompts.ids.clone();
    let mut mask = prompts.mask.clone();
    let mut unfinished = vec![true; sequences.len()];
    let mut cache = model.new_cache();
    let mut input = prompts.ids.clone();
    while sequences[0].len() < max_total {
        let scores = model.next_token_scores(&input, &mask, &mut cache)?;
        let mut tokens = Vec::with_capacity(scores.len());
        for (row, mut row_scores) in scores.into_iter().enumerate() {
            let token = next_token(&processors, &sequences[row], &mut row_scores, rng.as_mut());
            // Finished rows get the fill token, as transformers pads them.
            tokens.push(match (unfinished[row], fill) {
                (false, Some(fill)) => fill,
                _ => token,
            });
        }
        for (row, &token) in tokens.iter().enumerate() {
            sequences[row].push(token);
            mask[row].push(1);
            on_step(Step {
                row,
                token,
                finished: !unfinished[row],
            })?;
            let hit_eos = config.eos_token_id.contains(&token);
            let hit_stop = match stop {
                Some(stop) => stop.matches(&sequences[row])?,
                None => false,
            };
            if hit_eos || hit_stop {
                unfinished[row] = false;
            }
        }
        if !unfinished.iter().any(|&u| u) {
            break;
        }
        input = tokens.into_iter().map(|t| vec![t]).collect();
    }
    Ok(sequences)
}
