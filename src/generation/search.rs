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
use crate::kernels::host::{argmax, log_softmax, softmax};

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

/// What decides a sequence's next token and when it ends: its processors, its random
/// generator, its stop strings and its length limit. [`Decoder`] keeps one for all its rows
/// (they share the config and draw from one generator in row order, as transformers does);
/// the continuous batcher keeps one per sequence.
pub(crate) struct Chooser<'a> {
    config: GenerationConfig,
    stop: Option<StopStrings<'a>>,
    processors: Vec<Box<dyn LogitsProcessor>>,
    rng: Option<StdRng>,
    max_total: usize,
}

impl std::fmt::Debug for Chooser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chooser")
            .field("max_total", &self.max_total)
            .finish_non_exhaustive()
    }
}

impl<'a> Chooser<'a> {
    /// `config` must be validated and leave room for new tokens (see `Generator::check`);
    /// `prompt_len` is the (padded) prompt length.
    pub fn new(
        config: GenerationConfig,
        prompt_len: usize,
        stop: Option<StopStrings<'a>>,
    ) -> Result<Self> {
        Ok(Self {
            processors: processors_for(&config, prompt_len)?,
            rng: config.do_sample.then(|| rng(&config)),
            max_total: config.max_total_length(prompt_len),
            config,
            stop,
        })
    }

    /// The token after `sequence` from the model's raw `scores` (which the processors then
    /// change), and its log-probabilities when the config asks for them and `report` is set.
    pub fn choose(
        &mut self,
        sequence: &[u32],
        mut scores: Vec<f32>,
        report: bool,
    ) -> (u32, Option<Vec<f32>>) {
        let logits = (self.config.logprobs && report).then(|| scores.clone());
        let token = next_token(&self.processors, sequence, &mut scores, self.rng.as_mut());
        (token, logits)
    }

    /// The log-probabilities of `token` under `logits` (from [`Chooser::choose`]).
    pub fn logprob(&self, logits: &[f32], token: u32) -> TokenLogprob {
        logprobs_of(logits, token, self.config.top_logprobs)
    }

    /// Why `sequence` (the whole sequence so far, ending in the token just chosen) ends
    /// there, if it does: an end token, a stop string or the length limit.
    pub fn finish(&self, sequence: &[u32]) -> Result<Option<FinishReason>> {
        let Some(&token) = sequence.last() else {
            return Ok(None);
        };
        Ok(if self.config.eos_token_id.contains(&token) {
            Some(FinishReason::EndOfSequence)
        } else if match &self.stop {
            Some(stop) => stop.matches(sequence)?,
            None => false,
        } {
            Some(FinishReason::StopString)
        } else if sequence.len() >= self.max_total {
            Some(FinishReason::MaxTokens)
        } else {
            None
        })
    }

    /// The token that fills finished rows.
    fn fill_token(&self) -> Option<u32> {
        self.config.fill_token()
    }
}

/// Greedy search or sampling over a batch of left-padded prompts, one forward pass per step.
pub(crate) struct Decoder<'a, M: CausalLM> {
    model: &'a M,
    chooser: Chooser<'a>,
    prompt_len: usize,
    /// Each row's full sequence so far: padded prompt, then new tokens (filler included).
    sequences: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    /// Why each row finished, and its length then; `None` while it runs.
    finished: Vec<Option<(FinishReason, usize)>>,
    cache: M::Cache,
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
            chooser: Chooser::new(config, prompt_len, stop)?,
            prompt_len,
            sequences: prompts.ids.clone(),
            mask: prompts.mask.clone(),
            finished: vec![None; prompts.ids.len()],
            cache: model.new_cache(),
            input: prompts.ids.clone(),
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
        let fill = self.chooser.fill_token();
        let mut steps = Vec::with_capacity(scores.len());
        for (row, row_scores) in scores.into_iter().enumerate() {
            let running = self.finished[row].is_none();
            let (chosen, logits) = self
                .chooser
                .choose(&self.sequences[row], row_scores, running);
            let token = match (running, fill) {
                (false, Some(fill)) => fill,
                _ => chosen,
            };
            steps.push(Step {
                row,
                token,
                filler: !running,
                finish: None,
                logprob: logits.map(|logits| self.chooser.logprob(&logits, token)),
            });
        }
        for step in &mut steps {
            let row = step.row;
            self.sequences[row].push(step.token);
            self.mask[row].push(1);
            if step.filler {
                continue;
            }
            if let Some(reason) = self.chooser.finish(&self.sequences[row])? {
                self.finished[row] = Some((reason, self.sequences[row].len()));
                step.finish = Some(reason);
            }
        }
        self.input = steps.iter().map(|step| vec![step.token]).collect();
        Ok(steps)
    }
}
