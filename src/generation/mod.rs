//! Text generation: transformers' `generate` in Rust.
//!
//! Greedy search, multinomial sampling and beam search, all on the KV cache, with the logits
//! processors of [`processors`], stop strings, streaming and batches of left-padded prompts.
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
//! let config = pretrained.generation_config()?.with_max_new_tokens(40);
//! let generator = Generator::new(&model, &tokenizer);
//! let text = generator.generate_stream("Rust is", &config, |piece| print!("{piece}"))?;
//! # Ok(())
//! # }
//! ```

mod beam;
mod config;
pub mod processors;
mod search;
mod stop;
mod stream;

use candle_core::{DType, Device, Tensor};

pub use config::{EarlyStopping, GenerationConfig};
pub use search::sample_index;
pub use stream::TokenStream;

use crate::error::{Error, Result};
use crate::models::gpt2::{Gpt2LMHeadModel, KvCache};
use crate::tokenizer::{EncodeOptions, Tokenizer};
use stop::StopStrings;

/// A decoder that predicts the next token: what generation needs from a model.
pub trait CausalLM {
    /// Logits of the new tokens, (batch, new, vocab); see [`Gpt2LMHeadModel::forward`].
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;
    fn new_cache(&self) -> KvCache;
    /// Prompt plus new tokens may not exceed this.
    fn max_positions(&self) -> usize;
    fn device(&self) -> &Device;

    /// The f32 scores of the next token of each row: the one place generation touches the
    /// device. `input` holds the tokens not yet in `cache`, `mask` covers all tokens so far.
    fn next_token_scores(
        &self,
        input: &[Vec<u32>],
        mask: &[Vec<u32>],
        cache: &mut KvCache,
    ) -> Result<Vec<Vec<f32>>> {
        let device = self.device();
        let ids = to_tensor(input, device)?;
        let mask = to_tensor(mask, device)?;
        Ok(self
            .last_logits(&ids, Some(&mask), Some(cache))?
            .to_dtype(DType::F32)?
            .to_vec2()?)
    }

    /// Logits of the last new token, (batch, vocab). Models can skip the other positions.
    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let logits = self.forward(input_ids, attention_mask, cache)?;
        let last = logits.dim(1)? - 1;
        Ok(logits.narrow(1, last, 1)?.squeeze(1)?)
    }
}

impl CausalLM for Gpt2LMHeadModel {
    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        Gpt2LMHeadModel::forward(self, input_ids, attention_mask, cache)
    }

    fn last_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        Gpt2LMHeadModel::forward_last(self, input_ids, attention_mask, cache)
    }

    fn new_cache(&self) -> KvCache {
        Gpt2LMHeadModel::new_cache(self)
    }

    fn max_positions(&self) -> usize {
        self.config().n_positions
    }

    fn device(&self) -> &Device {
        Gpt2LMHeadModel::device(self)
    }
}

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

/// Prompts as token ids, left-padded to one length, with their attention mask.
#[derive(Debug, Clone)]
pub struct PromptBatch {
    pub ids: Vec<Vec<u32>>,
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

/// One new token of one row, as generation produces it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub row: usize,
    pub token: u32,
    /// The row had already finished: the token is filler.
    pub finished: bool,
}

/// A generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Prompt plus continuation, decoded without special tokens (what transformers' pipeline
    /// returns as `generated_text`).
    pub text: String,
    /// The new tokens only, up to and including the end token; no filler after it.
    pub token_ids: Vec<u32>,
}

/// Generation with one model and its tokenizer.
#[derive(Debug)]
pub struct Generator<'a, M: CausalLM> {
    model: &'a M,
    tokenizer: Option<&'a Tokenizer>,
}

impl<'a, M: CausalLM> Generator<'a, M> {
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
        self.run(prompts, config, &mut |_| Ok(()))
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
        let sequences = self.run(prompts, config, &mut |step| {
            on_token(step.row, step.token);
            Ok(())
        })?;
        if config.num_beams > 1 {
            let prompt_len = prompts.seq_len();
            for (row, sequence) in sequences.iter().enumerate() {
                for &token in &sequence[prompt_len.min(sequence.len())..] {
                    on_token(row, token);
                }
            }
        }
        Ok(sequences)
    }

    /// Generate from text prompts, batched with left padding.
    /// Returns `num_return_sequences` results per prompt, in prompt order.
    pub fn generate(&self, prompts: &[&str], config: &GenerationConfig) -> Result<Vec<Generated>> {
        let batch = self.encode(prompts, config)?;
        let sequences = self.generate_ids(&batch, config)?;
        let per_prompt = config.num_return_sequences;
        sequences
            .iter()
            .enumerate()
            .map(|(i, sequence)| {
                self.finish(
                    &batch.ids[i / per_prompt],
                    &batch.mask[i / per_prompt],
                    sequence,
                    config,
                )
            })
            .collect()
    }

    /// Generate from one prompt, passing each piece of text to `on_piece` as soon as it is
    /// valid UTF-8. The pieces concatenate to the continuation in the result. Not for beam
    /// search, whose best sequence is only known at the end.
    pub fn generate_stream(
        &self,
        prompt: &str,
        config: &GenerationConfig,
        mut on_piece: impl FnMut(&str),
    ) -> Result<Generated> {
        if config.num_beams > 1 || config.num_return_sequences > 1 {
            return Err(Error::InvalidGeneration(
                "streaming needs a single sequence: num_beams and num_return_sequences must be 1"
                    .into(),
            ));
        }
        let batch = self.encode(&[prompt], config)?;
        let mut stream = TokenStream::new(self.tokenizer()?);
        let sequences = self.run(&batch, config, &mut |step| {
            if step.row == 0 && !step.finished {
                if let Some(piece) = stream.push(step.token)? {
                    on_piece(&piece);
                }
            }
            Ok(())
        })?;
        if let Some(piece) = stream.finish()? {
            on_piece(&piece);
        }
        self.finish(&batch.ids[0], &batch.mask[0], &sequences[0], config)
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

    fn run(
        &self,
        prompts: &PromptBatch,
        config: &GenerationConfig,
        on_step: &mut dyn FnMut(Step) -> Result<()>,
    ) -> Result<Vec<Vec<u32>>> {
        config.validate()?;
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
        let stop = match config.stop_strings.is_empty() {
            true => None,
            false => Some(StopStrings::new(self.tokenizer()?, &config.stop_strings)),
        };
        if config.num_beams > 1 {
            beam::beam_search(self.model, prompts, config, stop.as_ref())
        } else {
            let expanded = prompts.repeat_each(config.num_return_sequences);
            search::greedy_or_sample(self.model, &expanded, config, stop.as_ref(), on_step)
        }
    }

    /// Decode a finished sequence: the text of prompt plus continuation, and the new tokens up
    /// to the end token.
    fn finish(
        &self,
        prompt: &[u32],
        mask: &[u32],
        sequence: &[u32],
        config: &GenerationConfig,
    ) -> Result<Generated> {
        let new = &sequence[prompt.len().min(sequence.len())..];
        let end = new
            .iter()
            .position(|t| config.eos_token_id.contains(t))
            .map_or(new.len(), |i| i + 1);
        let token_ids = new[..end].to_vec();
        let real_prompt: Vec<u32> = prompt
            .iter()
            .zip(mask)
            .filter(|(_, &m)| m == 1)
            .map(|(&t, _)| t)
            .collect();
        let text = self
            .tokenizer()?
            .decode(&[real_prompt, token_ids.clone()].concat(), true)?;
        Ok(Generated { text, token_ids })
    }
}
