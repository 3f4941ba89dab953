//! Continuous batching: many independent sequences decoded together, each with its own prompt,
//! settings (greedy or sampling with its own seed, processors, stop strings, end tokens,
//! length, log-probabilities) and KV cache, one forward pass per [`ContinuousBatcher::step`]
//! for all of them. A sequence joins between two steps without waiting for the others (its
//! prompt is read by a forward pass of its own, which also chooses its first token) and leaves
//! as soon as it finishes or is cancelled.
//!
//! Each sequence gets exactly the tokens, text pieces and log-probabilities that
//! [`Generator::stream`] gives it alone with the same settings: the model's
//! [`CausalLM::decode_scores`] keeps every row what it is alone, and the choice of each token
//! is the same code as the stream's (`search::Chooser`, `stream::stream_token`).

use crate::error::{Error, Result};
use crate::generation::search::Chooser;
use crate::generation::stream::stream_token;
use crate::generation::{
    CausalLM, GenerationConfig, GenerationPrompt, Generator, StreamToken, TokenStream,
};
use crate::tokenizer::Tokenizer;

/// Names a sequence of a [`ContinuousBatcher`]; never reused by the same batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(u64);

/// One sequence's new token from a [`ContinuousBatcher::step`].
#[derive(Debug)]
pub struct SequenceToken {
    /// The sequence it belongs to.
    pub id: SequenceId,
    /// The token, as [`Generator::stream`] gives it; a sequence whose token carries a finish
    /// reason, or an error, has left the batcher.
    pub token: Result<StreamToken>,
}

/// Sequences decoded together, one forward pass per step for all of them.
///
/// ```no_run
/// use ferroformers::generation::{ContinuousBatcher, GenerationConfig};
/// use ferroformers::{FromPretrained, Gpt2LMHeadModel, LoadOptions, Pretrained};
///
/// # fn main() -> ferroformers::Result<()> {
/// let options = LoadOptions::default();
/// let model = Gpt2LMHeadModel::from_pretrained("gpt2", &options)?;
/// let tokenizer = Pretrained::open("gpt2", &options.hub)?.tokenizer()?;
/// let mut batcher = ContinuousBatcher::new(&model, &tokenizer);
/// let greedy = GenerationConfig::default().with_max_new_tokens(20);
/// let first = batcher.add("Rust is", &greedy)?;
/// batcher.step()?; // reads the first prompt, chooses its first token
/// batcher.add("Once upon a time", &greedy.clone().sampling(7))?; // joins at once
/// while !batcher.is_empty() {
///     for token in batcher.step()? {
///         let text = token.token?.text;
///         println!("{:?}: {text:?}", token.id);
///     }
///     batcher.cancel(first); // leaves before the next step
/// }
/// # Ok(())
/// # }
/// ```
pub struct ContinuousBatcher<'a, M: CausalLM> {
    model: &'a M,
    tokenizer: &'a Tokenizer,
    /// Added since the last step: their prompts are read at the next one.
    joining: Vec<Sequence<'a, M>>,
    /// Each with its newest token not yet in its cache.
    running: Vec<Sequence<'a, M>>,
    next_id: u64,
}

impl<M: CausalLM> std::fmt::Debug for ContinuousBatcher<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousBatcher")
            .field("joining", &self.joining.len())
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

/// One sequence of the batcher, with its own cache.
struct Sequence<'a, M: CausalLM> {
    id: SequenceId,
    /// The prompt, then the new tokens.
    tokens: Vec<u32>,
    chooser: Chooser<'a>,
    text: TokenStream<'a>,
    cache: M::Cache,
}

impl<M: CausalLM> Sequence<'_, M> {
    /// Choose the next token from the model's `scores`, and say what it completes.
    fn advance(&mut self, scores: Vec<f32>) -> Result<StreamToken> {
        let (token, logits) = self.chooser.choose(&self.tokens, scores, true);
        self.tokens.push(token);
        let finish = self.chooser.finish(&self.tokens)?;
        let logprob = logits.map(|logits| self.chooser.logprob(&logits, token));
        stream_token(&mut self.text, token, finish, logprob)
    }
}

impl<'a, M: CausalLM> ContinuousBatcher<'a, M> {
    /// No sequences yet; text in and out with `tokenizer`.
    pub fn new(model: &'a M, tokenizer: &'a Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            joining: Vec::new(),
            running: Vec::new(),
            next_id: 0,
        }
    }

    /// Add a sequence that continues `prompt` with `config`; it joins at the next step. The
    /// prompt and settings are checked here, as [`Generator::stream`] checks them (one
    /// sequence: no beams, one return sequence), and nothing is computed yet.
    pub fn add<'p>(
        &mut self,
        prompt: impl Into<GenerationPrompt<'p>>,
        config: &GenerationConfig,
    ) -> Result<SequenceId> {
        let generator = Generator::new(self.model, self.tokenizer);
        let (batch, stop) = generator.single_sequence(prompt, config)?;
        let prompt_len = batch.seq_len();
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        self.joining.push(Sequence {
            id,
            tokens: batch.ids.into_iter().next().unwrap_or_default(),
            chooser: Chooser::new(config.clone(), prompt_len, stop)?,
            text: TokenStream::new(self.tokenizer),
            cache: self.model.new_cache(),
        });
        Ok(id)
    }

    /// Drop sequence `id` at once (its cache with it): it takes no part in later steps.
    /// False when the batcher does not hold it (it finished, failed, or was cancelled).
    pub fn cancel(&mut self, id: SequenceId) -> bool {
        let before = self.len();
        self.joining.retain(|sequence| sequence.id != id);
        self.running.retain(|sequence| sequence.id != id);
        self.len() < before
    }

    /// Whether sequence `id` is still generating (or waiting to join).
    pub fn contains(&self, id: SequenceId) -> bool {
        self.joining
            .iter()
            .chain(&self.running)
            .any(|sequence| sequence.id == id)
    }

    /// Sequences held: running, and added but not yet read.
    pub fn len(&self) -> usize {
        self.joining.len() + self.running.len()
    }

    /// No sequence left: a step would do nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One token for every sequence: one forward pass over the newest tokens of the running
    /// sequences together, then one over the prompt of each sequence added since the last
    /// step (which then runs with the others). Sequences that finish, and any whose token
    /// fails (its prompt's forward pass, decoding its text), leave the batcher.
    ///
    /// An error of the shared forward pass is returned as such, and every running sequence
    /// leaves with it (their caches may be half written); those still joining stay.
    pub fn step(&mut self) -> Result<Vec<SequenceToken>> {
        let mut tokens = Vec::with_capacity(self.len());
        let running = std::mem::take(&mut self.running);
        if !running.is_empty() {
            let scores = self.decode(running)?;
            for (mut sequence, scores) in scores {
                let token = sequence.advance(scores);
                self.settle(sequence, token, &mut tokens);
            }
        }
        for mut sequence in std::mem::take(&mut self.joining) {
            let mask = vec![1; sequence.tokens.len()];
            let token = self
                .model
                .next_token_scores(&[sequence.tokens.clone()], &[mask], &mut sequence.cache)
                .and_then(|scores| {
                    let scores = scores.into_iter().next().ok_or_else(no_scores)?;
                    sequence.advance(scores)
                });
            self.settle(sequence, token, &mut tokens);
        }
        Ok(tokens)
    }

    /// The next-token scores of every sequence in `running`, from one forward pass.
    fn decode(
        &self,
        mut running: Vec<Sequence<'a, M>>,
    ) -> Result<Vec<(Sequence<'a, M>, Vec<f32>)>> {
        let newest = running
            .iter()
            .map(|sequence| sequence.tokens.last().copied().ok_or_else(no_scores))
            .collect::<Result<Vec<u32>>>()?;
        let mut caches: Vec<&mut M::Cache> = running
            .iter_mut()
            .map(|sequence| &mut sequence.cache)
            .collect();
        let scores = self.model.decode_scores(&newest, &mut caches)?;
        if scores.len() != running.len() {
            return Err(no_scores());
        }
        Ok(running.into_iter().zip(scores).collect())
    }

    /// Report `token` of `sequence`, which runs on unless it ended or failed.
    fn settle(
        &mut self,
        sequence: Sequence<'a, M>,
        token: Result<StreamToken>,
        tokens: &mut Vec<SequenceToken>,
    ) {
        let ended = token
            .as_ref()
            .map_or(true, |token| token.finish_reason.is_some());
        let id = sequence.id;
        if !ended {
            self.running.push(sequence);
        }
        tokens.push(SequenceToken { id, token });
    }
}

fn no_scores() -> Error {
    Error::InvalidInput(
        "the model returned no scores for a sequence of the batch: its decode_scores must give \
         one row per token"
            .to_string(),
    )
}
