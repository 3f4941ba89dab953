//! Text generation: transformers' `generate` in Rust.
//!
//! Greedy search, multinomial sampling and beam search, all on the KV cache, with the logits
//! processors of [`processors`], stop strings, log-probabilities, streaming and batches of
//! left-padded prompts. Every result says why it finished ([`FinishReason`]) and counts its
//! prompt and completion tokens.
//!
//! Streaming is an iterator ([`Generator::stream`]) that runs one forward pass per item:
//! dropping it stops the work, and [`GenerationStream::generated`] gives the result so far.
//! [`ContinuousBatcher`] streams many sequences at
//! once, each with its own settings, joining and leaving between steps, with one forward
//! pass per step for all of them; each gets the tokens it gets alone.
//!
//! ```no_run
//! use ferroformers::generation::{GenerationConfig, Generator};
//! use ferroformers::{FromPretrained, Gpt2LMHeadModel, LoadOptions, Pretrained};
//!
//! # fn main() -> ferroformers::Result<()> {
//! let options = LoadOptions::default();
//! let pretrained = Pretrained::open("gpt2", &options.hub)?;
//! let model = Gpt2LMHeadModel::from_pretrained("gpt2", &options)?;
//! let tokenizer = pretrained.tokenizer()?;
//! let config = GenerationConfig::from_source(pretrained.source())?.with_max_new_tokens(40);
//! let generator = Generator::new(&model, &tokenizer);
//! let mut stream = generator.stream("Rust is", &config)?;
//! for token in stream.by_ref().take(10) {
//!     print!("{}", token?.text);
//! }
//! let result = stream.generated()?;
//! println!("\n{:?} after {} tokens", result.finish_reason, result.completion_tokens);
//! # Ok(())
//! # }
//! ```

mod beam;
mod config;
mod continuous;
mod output;
pub mod processors;
mod search;
mod stop;
mod stream;

use candle_core::{DType, Device, Tensor};

pub use config::{EarlyStopping, GenerationConfig, MAX_TOP_LOGPROBS};
pub use continuous::{ContinuousBatcher, SequenceId, SequenceToken};
pub use output::{FinishReason, Generated, StreamToken, TokenLogprob, TopLogprob};
pub use search::sample_index;
pub use stream::{GenerationStream, TokenStream};

use crate::error::{Error, Result};
use crate::models::auto::AutoModelForCausalLM;
use crate::models::cache::{DecoderCache, KvCache};
use crate::models::gpt2::Gpt2LMHeadModel;
use crate::models::llama::LlamaForCausalLM;
use crate::tokenizer::{EncodeOptions, Tokenizer};
use search::Decoder;
use stop::StopStrings;

/// A decoder that predicts the next token: what generation needs from a model. The search,
/// beams and continuous batching are generic over it, and so over its [`CausalLM::Cache`].
pub trait CausalLM {
    /// What the model keeps of past positions between forward passes: a [`KvCache`] for a
    /// decoder whose layers cache keys and values, or a type of the model's own.
    type Cache: DecoderCache;

    /// Logits of the new tokens, (batch, new, vocab); see [`Gpt2LMHeadModel::forward`].
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut Self::Cache>,
    ) -> Result<Tensor>;
    /// An empty cache for this model.
    fn new_cache(&self) -> Self::Cache;
    /// Prompt plus new tokens may not exceed this.
    fn max_positions(&self) -> usize;
    /// Where the model's weights live.
    fn device(&self) -> &Device;

    /// The f32 scores of the next token of each row: the one place generation touches the
    /// device. `input` holds the tokens not yet in `cache`, `mask` covers all tokens so far.
    fn next_token_scores(
        &self,
        input: &[Vec<u32>],
        mask: &[Vec<u32>],
        cache: &mut Self::Cache,
    ) -> Result<Vec<Vec<f32>>> {
        let device = self.device();
        let ids = to_tensor(input, device)?;
        let mask = to_tensor(mask, device)?;
        Ok(self
            .last_logits(&ids, Some(&mask), Some(cache))?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }

    /// The f32 scores of the next token of several independent sequences, one forward pass
    /// for all: `tokens[i]` is sequence `i`'s newest token, not yet in its cache `caches[i]`.
    /// Each row must equal what [`CausalLM::next_token_scores`] gives that sequence alone (the
    /// [`ContinuousBatcher`] relies on it). This default runs the sequences one after the
    /// other; a model overrides it to share its weight products among them.
    fn decode_scores(
        &self,
        tokens: &[u32],
        caches: &mut [&mut Self::Cache],
    ) -> Result<Vec<Vec<f32>>> {
        if tokens.len() != caches.len() {
            return Err(Error::InvalidInput(format!(
                "a decoding step takes one token per cache: {} tokens, {} caches",
                tokens.len(),
                caches.len()
            )));
        }
        let mut scores = Vec::with_capacity(tokens.len());
        for (&token, cache) in tokens.iter().zip(caches.iter_mut()) {
            let mask = vec![1; cache.len() + 1];
            scores.extend(self.next_token_scores(&[vec![token]], &[mask], cache)?);
        }
        Ok(scores)
    }

    /// Logits of the last new token, (batch, vocab). Models can skip the other positions.
    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut Self::Cache>,
    ) -> Result<Tensor> {
        let logits = self.forward(input_ids, attention_mask, cache)?;
        let last = logits.dim(1)? - 1;
        Ok(logits.narrow(1, last, 1)?.squeeze(1)?)
    }
}

/// `CausalLM` for a decoder whose own methods (`forward`, `forward_last`, `decode_step`,
/// `new_cache`, `device`, `max_positions`) already take a [`KvCache`].
macro_rules! causal_lm_with_kv_cache {
    ($($model:ty),* $(,)?) => {$(
        impl CausalLM for $model {
            type Cache = KvCache;

            fn forward(
                &self,
                input_ids: &Tensor,
                attention_mask: Option<&Tensor>,
                cache: Option<&mut KvCache>,
            ) -> Result<Tensor> {
                <$model>::forward(self, input_ids, attention_mask, cache)
            }

            fn last_logits(
                &self,
                input_ids: &Tensor,
                attention_mask: Option<&Tensor>,
                cache: Option<&mut KvCache>,
            ) -> Result<Tensor> {
                <$model>::forward_last(self, input_ids, attention_mask, cache)
            }

            fn decode_scores(
                &self,
                tokens: &[u32],
                caches: &mut [&mut KvCache],
            ) -> Result<Vec<Vec<f32>>> {
                Ok(self
                    .decode_step(tokens, caches)?
                    .to_dtype(DType::F32)?
                    .to_vec2()?)
            }

            fn new_cache(&self) -> KvCache {
                <$model>::new_cache(self)
            }

            fn max_positions(&self) -> usize {
                <$model>::max_positions(self)
            }

            fn device(&self) -> &Device {
                <$model>::device(self)
            }
        }
    )*};
}

causal_lm_with_kv_cache!(Gpt2LMHeadModel, LlamaForCausalLM, AutoModelForCausalLM);

fn to_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let width = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|row| row.len() != width) {
        return Err(Error::InvalidInput(
            "rows of a batch differ in length".to_string(),
        ));
    }
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (rows.len(), width), device)?)
}

/// What a single sequence continues: text, encoded as the pipeline encodes prompts (the
/// tokenizer's special tokens added), or token ids already made (a chat rendered by its
/// template and encoded without special tokens, as transformers' `apply_chat_template` does).
#[derive(Debug, Clone, Copy)]
pub enum GenerationPrompt<'a> {
    /// Text to encode.
    Text(&'a str),
    /// Token ids, used as they are.
    Ids(&'a [u32]),
}

impl<'a> From<&'a str> for GenerationPrompt<'a> {
    fn from(text: &'a str) -> Self {
        GenerationPrompt::Text(text)
    }
}

impl<'a> From<&&'a str> for GenerationPrompt<'a> {
    fn from(text: &&'a str) -> Self {
        GenerationPrompt::Text(text)
    }
}

impl<'a> From<&'a String> for GenerationPrompt<'a> {
    fn from(text: &'a String) -> Self {
        GenerationPrompt::Text(text)
    }
}

impl<'a> From<&'a [u32]> for GenerationPrompt<'a> {
    fn from(ids: &'a [u32]) -> Self {
        GenerationPrompt::Ids(ids)
    }
}

impl<'a> From<&'a Vec<u32>> for GenerationPrompt<'a> {
    fn from(ids: &'a Vec<u32>) -> Self {
        GenerationPrompt::Ids(ids)
    }
}

/// Prompts as token ids, left-padded to one length, with their attention mask.
#[derive(Debug, Clone)]
pub struct PromptBatch {
    /// Token ids, one row per prompt, padding on the left.
    pub ids: Vec<Vec<u32>>,
    /// 1 for a prompt token, 0 for padding.
    pub mask: Vec<Vec<u32>>,
}

impl PromptBatch {
    /// Left-pad `prompts` with `pad` (GPT-2 has no pad token; the end token serves).
    pub fn left_padded(prompts: Vec<Vec<u32>>, pad: u32) -> Result<Self> {
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(Error::InvalidInput(
                "generation needs at least one prompt, and no empty prompt".to_string(),
            ));
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let (ids, mask) = prompts
            .into_iter()
            .map(|prompt| {
                let pad_len = longest - prompt.len();
                let mask = [vec![0; pad_len], vec![1; prompt.len()]].concat();
                ([vec![pad; pad_len], prompt].concat(), mask)
            })
            .unzip();
        Ok(Self { ids, mask })
    }

    /// Already padded prompts, as a tokenizer returns them.
    pub fn new(ids: Vec<Vec<u32>>, mask: Vec<Vec<u32>>) -> Result<Self> {
        let width = ids.first().map_or(0, Vec::len);
        let rectangular = ids.iter().chain(&mask).all(|row| row.len() == width);
        if ids.is_empty() || width == 0 || ids.len() != mask.len() || !rectangular {
            return Err(Error::InvalidInput(
                "prompt ids and mask must be non-empty rows of one length".to_string(),
            ));
        }
        Ok(Self { ids, mask })
    }

    /// Padded prompt length.
    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }

    /// Each prompt repeated `times` times in a row (for several sampled sequences each).
    fn repeat_each(&self, times: usize) -> Self {
        let repeat = |rows: &Vec<Vec<u32>>| -> Vec<Vec<u32>> {
            rows.iter()
                .flat_map(|row| std::iter::repeat_n(row.clone(), times))
                .collect()
        };
        Self {
            ids: repeat(&self.ids),
            mask: repeat(&self.mask),
        }
    }
}

/// Generation with one model and its tokenizer.
#[derive(Debug)]
pub struct Generator<'a, M: CausalLM> {
    model: &'a M,
    tokenizer: Option<&'a Tokenizer>,
}

impl<'a, M: CausalLM> Generator<'a, M> {
    /// Generation from text (or token ids) with `model` and its `tokenizer`.
    pub fn new(model: &'a M, tokenizer: &'a Tokenizer) -> Self {
        Self {
            model,
            tokenizer: Some(tokenizer),
        }
    }

    /// Generation on token ids only (no text in or out, no stop strings).
    pub fn without_tokenizer(model: &'a M) -> Self {
        Self {
            model,
            tokenizer: None,
        }
    }

    fn tokenizer(&self) -> Result<&'a Tokenizer> {
        self.tokenizer.ok_or_else(|| {
            Error::InvalidInput(
                "text in or out, and stop strings, need a tokenizer: build the generator with \
                 Generator::new"
                    .to_string(),
            )
        })
    }

    /// transformers' `generate` on token ids: each row's full sequence, prompt (with its
    /// padding) included, `num_return_sequences` rows per prompt.
    pub fn generate_ids(
        &self,
        prompts: &PromptBatch,
        config: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_ids_streaming(prompts, config, |_, _| {})
    }

    /// As [`Generator::generate_ids`], calling `on_token(row, token)` as each new token is
    /// chosen (rows that have finished get filler tokens); beam search calls it only at the
    /// end, when its best sequences are known.
    pub fn generate_ids_streaming(
        &self,
        prompts: &PromptBatch,
        config: &GenerationConfig,
        mut on_token: impl FnMut(usize, u32),
    ) -> Result<Vec<Vec<u32>>> {
        let stop = self.check(prompts, config)?;
        if config.num_beams > 1 {
            let sequences = beam::beam_search(self.model, prompts, config, stop.as_ref())?;
            let prompt_len = prompts.seq_len();
            for (row, sequence) in sequences.iter().enumerate() {
                for &token in &sequence[prompt_len.min(sequence.len())..] {
                    on_token(row, token);
                }
            }
            return Ok(sequences);
        }
        let expanded = prompts.repeat_each(config.num_return_sequences);
        let mut decoder = Decoder::new(self.model, &expanded, config.clone(), stop)?;
        while !decoder.done() {
            for step in decoder.step()? {
                on_token(step.row, step.token);
            }
        }
        Ok((0..expanded.ids.len())
            .map(|row| decoder.sequence(row).to_vec())
            .collect())
    }

    /// Generate from text prompts, batched with left padding.
    /// Returns `num_return_sequences` results per prompt, in prompt order.
    pub fn generate(&self, prompts: &[&str], config: &GenerationConfig) -> Result<Vec<Generated>> {
        let batch = self.encode(prompts, config)?;
        let stop = self.check(&batch, config)?;
        let per_prompt = config.num_return_sequences;
        if config.num_beams > 1 {
            let sequences = beam::beam_search(self.model, &batch, config, stop.as_ref())?;
            return sequences
                .iter()
                .enumerate()
                .map(|(i, sequence)| {
                    let prompt = real_prompt(&batch, i / per_prompt);
                    let new = &sequence[batch.seq_len().min(sequence.len())..];
                    let (end, reason) = self.beam_finish(&prompt, new, config, stop.as_ref())?;
                    self.result(&prompt, &new[..end], reason, None, config)
                })
                .collect();
        }
        let expanded = batch.repeat_each(per_prompt);
        let mut decoder = Decoder::new(self.model, &expanded, config.clone(), stop)?;
        let mut logprobs = vec![Vec::new(); expanded.ids.len()];
        while !decoder.done() {
            for step in decoder.step()? {
                logprobs[step.row].extend(step.logprob);
            }
        }
        logprobs
            .into_iter()
            .enumerate()
            .map(|(row, logprobs)| {
                let reason = decoder
                    .finish_reason(row)
                    .unwrap_or(FinishReason::MaxTokens);
                let logprobs = config.logprobs.then_some(logprobs);
                let prompt = real_prompt(&batch, row / per_prompt);
                self.result(&prompt, decoder.new_tokens(row), reason, logprobs, config)
            })
            .collect()
    }

    /// Generate from one prompt as an iterator: each `next()` runs one decoding step (the first
    /// one also reads the prompt) and returns the new token. Dropping the iterator stops the
    /// work; [`GenerationStream::generated`] gives the result so far. Not for beam search,
    /// whose best sequence is only known at the end, nor for several sequences per prompt.
    pub fn stream<'p>(
        &self,
        prompt: impl Into<GenerationPrompt<'p>>,
        config: &GenerationConfig,
    ) -> Result<GenerationStream<'a, M>> {
        let (batch, stop) = self.single_sequence(prompt, config)?;
        let decoder = Decoder::new(self.model, &batch, config.clone(), stop)?;
        let generator = Generator {
            model: self.model,
            tokenizer: self.tokenizer,
        };
        Ok(GenerationStream::new(
            generator,
            self.tokenizer()?,
            decoder,
            real_prompt(&batch, 0),
            config.clone(),
        ))
    }

    /// One prompt encoded and checked for token-by-token generation (a stream, or a sequence
    /// of the continuous batcher), with its stop strings.
    fn single_sequence<'p>(
        &self,
        prompt: impl Into<GenerationPrompt<'p>>,
        config: &GenerationConfig,
    ) -> Result<(PromptBatch, Option<StopStrings<'a>>)> {
        if config.num_beams > 1 || config.num_return_sequences > 1 {
            return Err(Error::InvalidGeneration(
                "streaming needs a single sequence: num_beams and num_return_sequences must be 1"
                    .into(),
            ));
        }
        let batch = match prompt.into() {
            GenerationPrompt::Text(text) => self.encode(&[text], config)?,
            GenerationPrompt::Ids(ids) => {
                PromptBatch::left_padded(vec![ids.to_vec()], config.fill_token().unwrap_or(0))?
            }
        };
        let stop = self.check(&batch, config)?;
        Ok((batch, stop))
    }

    fn encode(&self, prompts: &[&str], config: &GenerationConfig) -> Result<PromptBatch> {
        let options = EncodeOptions::default();
        let ids = prompts
            .iter()
            .map(|prompt| {
                Ok(self
                    .tokenizer()?
                    .encode(*prompt, &options)?
                    .get_ids()
                    .to_vec())
            })
            .collect::<Result<Vec<_>>>()?;
        let pad = config.fill_token().unwrap_or(0);
        PromptBatch::left_padded(ids, pad)
    }

    /// Check `config` against the prompts and the model, and build its stop strings.
    fn check(
        &self,
        prompts: &PromptBatch,
        config: &GenerationConfig,
    ) -> Result<Option<StopStrings<'a>>> {
        config.validate()?;
        if config.logprobs && config.num_beams > 1 {
            return Err(Error::InvalidGeneration(
                "logprobs are reported for greedy search and sampling, not beam search: set \
                 num_beams to 1 or logprobs to false"
                    .into(),
            ));
        }
        let prompt_len = prompts.seq_len();
        let max_total = config.max_total_length(prompt_len);
        if max_total <= prompt_len {
            return Err(Error::InvalidGeneration(format!(
                "max_length {max_total} leaves no room after the {prompt_len}-token prompt; set max_new_tokens"
            )));
        }
        if max_total > self.model.max_positions() {
            return Err(Error::InvalidGeneration(format!(
                "the prompt ({prompt_len} tokens) plus the new tokens ({}) exceed the model's {} positions",
                max_total - prompt_len,
                self.model.max_positions()
            )));
        }
        Ok(match config.stop_strings.is_empty() {
            true => None,
            false => Some(StopStrings::new(self.tokenizer()?, &config.stop_strings)),
        })
    }

    /// Where a beam hypothesis ends and why: beam search returns only its tokens, so the
    /// reason is read back from them (its end token, a stop string, or the length limit).
    fn beam_finish(
        &self,
        prompt: &[u32],
        new: &[u32],
        config: &GenerationConfig,
        stop: Option<&StopStrings>,
    ) -> Result<(usize, FinishReason)> {
        for (i, token) in new.iter().enumerate() {
            if config.eos_token_id.contains(token) {
                return Ok((i + 1, FinishReason::EndOfSequence));
            }
            if let Some(stop) = stop {
                if stop.matches(&[prompt, &new[..=i]].concat())? {
                    return Ok((i + 1, FinishReason::StopString));
                }
            }
        }
        Ok((new.len(), FinishReason::MaxTokens))
    }

    /// The result of one sequence: the text of prompt plus continuation, and the counts.
    fn result(
        &self,
        prompt: &[u32],
        new: &[u32],
        finish_reason: FinishReason,
        logprobs: Option<Vec<TokenLogprob>>,
        config: &GenerationConfig,
    ) -> Result<Generated> {
        let tokenizer = self.tokenizer()?;
        let text = tokenizer.decode(&[prompt, new].concat(), true)?;
        let stop_string = match finish_reason {
            FinishReason::StopString => {
                // A match may start in the prompt; then only the whole text holds it.
                let completion = tokenizer.decode(new, true)?;
                first_stop_string(&completion, &config.stop_strings)
                    .or_else(|| first_stop_string(&text, &config.stop_strings))
            }
            _ => None,
        };
        Ok(Generated {
            text,
            token_ids: new.to_vec(),
            finish_reason,
            prompt_tokens: prompt.len(),
            completion_tokens: new.len(),
            stop_string,
            logprobs,
        })
    }
}

/// Row `row`'s prompt without its padding.
fn real_prompt(batch: &PromptBatch, row: usize) -> Vec<u32> {
    batch.ids[row]
        .iter()
        .zip(&batch.mask[row])
        .filter(|(_, &m)| m == 1)
        .map(|(&t, _)| t)
        .collect()
}

/// The stop string that occurs first in `text` (the longer one on a tie), if any.
pub(crate) fn first_stop_string(text: &str, stop_strings: &[String]) -> Option<String> {
    stop_strings
        .iter()
        .filter_map(|stop| text.find(stop.as_str()).map(|at| (at, stop)))
        .min_by(|(a, x), (b, y)| a.cmp(b).then(y.len().cmp(&x.len())))
        .map(|(_, stop)| stop.clone())
}
