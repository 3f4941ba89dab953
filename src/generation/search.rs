//! Greedy search and multinomial sampling on the KV cache, step for step as transformers'
//! `_sample` runs them.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/generation/utils.py#L2700>
//!
//! [`Decoder`] runs one forward pass per [`Decoder::step`], so a caller that stops calling it
//! (a dropped stream, a callback that breaks) stops the compute with it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Result;
use crate::generation::processors::{processors_for, LogitsProcessor};
use crate::generation::stop::StopStrings;
use crate::generation::{
    CausalLM, FinishReason, GenerationConfig, PromptBatch, TokenLogprob, TopLogprob,
};
use crate::host::{argmax, log_softmax, softmax};
use crate::models::gpt2::KvCache;

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

/// The log-probability of `token` and the `top` best under the model's own distribution: the
/// log-softmax of the raw logits, before any processor or warper (as OpenAI and vLLM report
/// them, and as transformers' `output_logits` holds them).
fn logprobs_of(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let logprobs = log_softmax(logits);
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    // Best first; ties keep the lower id first.
    order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]).then(a.cmp(&b)));
    TokenLogprob {
        logprob: logprobs
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY),
        top_logprobs: order
            .into_iter()
            .take(top)
            .map(|id| TopLogprob {
                id: id as u32,
                logprob: logprobs[id],
            })
            .collect(),
    }
}

/// One new token of one row, as a decoding step produces it.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub row: usize,
    pub token: u32,
    /// The row had already finished: the token is filler.
    pub filler: bool,
    /// Set on the step that finished the row.
    pub finish: Option<FinishReason>,
    /// When the config asks for log-probabilities (never for filler).
    pub logprob: Option<TokenLogprob>,
}

/// Greedy search or sampling over a batch of left-padded prompts, one forward pass per step.
pub(crate) struct Decoder<'a, M: CausalLM> {
    model: &'a M,
    config: GenerationConfig,
    stop: Option<StopStrings<'a>>,
    processors: Vec<Box<dyn LogitsProcessor>>,
    rng: Option<StdRng>,
    max_total: usize,
    prompt_len: usize,
    /// Each row's full sequence so far: padded prompt, then new tokens (filler included).
    sequences: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    /// Why each row finished, and its length then; `None` while it runs.
    finished: Vec<Option<(FinishReason, usize)>>,
    cache: KvCache,
    /// The tokens not yet in the cache.
    input: Vec<Vec<u32>>,
}

impl<M: CausalLM> std::fmt::Debug for Decoder<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("sequences", &self.sequences)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<'a, M: CausalLM> Decoder<'a, M> {
    /// `config` must be validated and leave room for new tokens (see `Generator::check`).
    pub fn new(
        model: &'a M,
        prompts: &PromptBatch,
        config: GenerationConfig,
        stop: Option<StopStrings<'a>>,
    ) -> Result<Self> {
        let prompt_len = prompts.seq_len();
        Ok(Self {
            model,
            processors: processors_for(&config, prompt_len)?,
            rng: config.do_sample.then(|| rng(&config)),
            max_total: config.max_total_length(prompt_len),
            prompt_len,
            sequences: prompts.ids.clone(),
            mask: prompts.mask.clone(),
            finished: vec![None; prompts.ids.len()],
            cache: model.new_cache(),
            input: prompts.ids.clone(),
            config,
            stop,
        })
    }

    /// Every row has finished: another step would only make filler.
    pub fn done(&self) -> bool {
        self.finished.iter().all(Option::is_some)
    }

    /// Row `row`'s new tokens so far, up to the one that finished it (no filler).
    pub fn new_tokens(&self, row: usize) -> &[u32] {
        let sequence = &self.sequences[row];
        let end = self.finished[row].map_or(sequence.len(), |(_, len)| len);
        &sequence[self.prompt_len..end]
    }

    /// Row `row`'s full sequence so far, filler included (as transformers returns it).
    pub fn sequence(&self, row: usize) -> &[u32] {
        &self.sequences[row]
    }

    /// Why row `row` finished, `None` while it runs.
    pub fn finish_reason(&self, row: usize) -> Option<FinishReason> {
        self.finished[row].map(|(reason, _)| reason)
    }

    /// One forward pass: the next token of every row. Finished rows get the fill token, as
    /// transformers pads them. Call only while not [`Decoder::done`].
    pub fn step(&mut self) -> Result<Vec<Step>> {
        let scores = self
            .model
            .next_token_scores(&self.input, &self.mask, &mut self.cache)?;
        let fill = self.config.fill_token();
        let mut steps = Vec::with_capacity(scores.len());
        for (row, mut row_scores) in scores.into_iter().enumerate() {
            let running = self.finished[row].is_none();
            let logprobs = match (self.config.logprobs, running) {
                (true, true) => Some(row_scores.clone()),
                _ => None,
            };
            let chosen = next_token(
                &self.processors,
                &self.sequences[row],
                &mut row_scores,
                self.rng.as_mut(),
            );
            let token = match (running, fill) {
                (false, Some(fill)) => fill,
                _ => chosen,
            };
            steps.push(Step {
                row,
                token,
                filler: !running,
                finish: None,
                logprob: logprobs
                    .map(|logits| logprobs_of(&logits, token, self.config.top_logprobs)),
            });
        }
        for step in &mut steps {
            let row = step.row;
            self.sequences[row].push(step.token);
            self.mask[row].push(1);
            if step.filler {
                continue;
            }
            let length = self.sequences[row].len();
            let reason = if self.config.eos_token_id.contains(&step.token) {
                Some(FinishReason::EndOfSequence)
            } else if match &self.stop {
                Some(stop) => stop.matches(&self.sequences[row])?,
                None => false,
            } {
                Some(FinishReason::StopString)
            } else if length >= self.max_total {
                Some(FinishReason::MaxTokens)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.finished[row] = Some((reason, length));
                step.finish = Some(reason);
            }
        }
        self.input = steps.iter().map(|step| vec![step.token]).collect();
        Ok(steps)
    }
}
