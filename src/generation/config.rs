//! `GenerationConfig`: transformers' generation settings, read from `generation_config.json`
//! (or the model's `config.json`) with the user's overrides on top.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::loading::hub::ModelSource;
use crate::loading::json::read_json;
use crate::models::config::{token_ids, ModelConfig};

/// When beam search stops, as transformers' `early_stopping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop when no running beam can beat the finished ones, judged at the current length
    /// (transformers' `False`, the default).
    #[default]
    Heuristic,
    /// Stop as soon as `num_beams` hypotheses are finished (`True`).
    Eager,
    /// Run until no beam can improve, judged at the longest possible length (`"never"`).
    Never,
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Flag(false) => Ok(EarlyStopping::Heuristic),
            Raw::Flag(true) => Ok(EarlyStopping::Eager),
            Raw::Word(word) if word == "never" => Ok(EarlyStopping::Never),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "early_stopping must be true, false or \"never\", not \"{word}\""
            ))),
        }
    }
}

/// Generation settings. Defaults are transformers' `GenerationConfig` defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    /// New tokens to generate at most. When `None`, `max_length` bounds prompt plus new tokens.
    pub max_new_tokens: Option<usize>,
    /// Prompt plus new tokens, used only when `max_new_tokens` is `None`.
    pub max_length: usize,
    /// End-of-sequence tokens are forbidden until this many new tokens exist.
    pub min_new_tokens: usize,
    /// Generation of a sequence stops at any of these.
    #[serde(deserialize_with = "token_ids")]
    pub eos_token_id: Vec<u32>,
    /// Fills finished sequences; defaults to the first `eos_token_id`.
    pub pad_token_id: Option<u32>,
    /// Sample the next token (else greedy search, or beam search with `num_beams` > 1).
    pub do_sample: bool,
    /// Sampling only: divides the scores; below 1 sharpens, above 1 flattens.
    pub temperature: f32,
    /// `None` disables top-k; 0 is an error, not a silent "disabled".
    pub top_k: Option<usize>,
    /// Sampling only: keep the smallest set of tokens whose probability exceeds this.
    pub top_p: f32,
    /// Scores of tokens already present are divided by this (1.0: no penalty).
    pub repetition_penalty: f32,
    /// 0 disables the n-gram ban.
    pub no_repeat_ngram_size: usize,
    /// Generation stops once the text ends with one of these (the string is kept in the output,
    /// as transformers keeps it).
    pub stop_strings: Vec<String>,
    /// Seed of the sampling generator; `None` draws one from the operating system.
    pub seed: Option<u64>,
    /// Beams of beam search; 1 for greedy search or sampling.
    pub num_beams: usize,
    /// Beam search: finished scores are divided by length to this power.
    pub length_penalty: f32,
    /// When beam search stops.
    pub early_stopping: EarlyStopping,
    /// Sequences per prompt (sampling or beam search).
    pub num_return_sequences: usize,
    /// Report each new token's log-probability (see [`crate::generation::TokenLogprob`]).
    /// Not a transformers setting: OpenAI's `logprobs`.
    pub logprobs: bool,
    /// With `logprobs`, also this many most likely tokens per position, at most
    /// [`MAX_TOP_LOGPROBS`] (OpenAI's `top_logprobs`).
    pub top_logprobs: usize,
}

/// The most `top_logprobs` a request may ask for, as OpenAI limits it.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: None,
            max_length: 20,
            min_new_tokens: 0,
            eos_token_id: Vec::new(),
            pad_token_id: None,
            do_sample: false,
            temperature: 1.0,
            top_k: Some(50),
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            stop_strings: Vec::new(),
            seed: None,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            num_return_sequences: 1,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

impl GenerationConfig {
    /// Read `generation_config.json` (or the generation fields of a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        read_json(path)
    }

    /// A model's `generation_config.json`, or when it has none, the generation fields of its
    /// `config.json` (end and pad tokens), as transformers' `GenerationConfig.from_model_config`.
    pub fn from_source(source: &ModelSource) -> Result<Self> {
        match source.get("generation_config.json")? {
            Some(path) => Self::from_file(&path),
            None => Self::from_file(&source.require("config.json")?),
        }
    }

    /// The generation settings of a model without `generation_config.json`: its config's end
    /// and pad tokens over the defaults, as transformers' `GenerationConfig.from_model_config`.
    pub fn from_model_config(config: &ModelConfig) -> Self {
        Self {
            eos_token_id: config.eos_token_ids(),
            pad_token_id: config.pad_token_id(),
            ..Self::default()
        }
    }

    /// Generate at most `max_new_tokens` new tokens.
    pub fn with_max_new_tokens(mut self, max_new_tokens: usize) -> Self {
        self.max_new_tokens = Some(max_new_tokens);
        self
    }

    /// Greedy decoding (or beam search with `num_beams` > 1).
    pub fn greedy(mut self) -> Self {
        self.do_sample = false;
        self
    }

    /// Multinomial sampling with a seed, so that runs repeat.
    pub fn sampling(mut self, seed: u64) -> Self {
        self.do_sample = true;
        self.seed = Some(seed);
        self
    }

    /// Report log-probabilities, with the `top` most likely tokens at each position
    /// (0 for none, at most [`MAX_TOP_LOGPROBS`]).
    pub fn with_logprobs(mut self, top: usize) -> Self {
        self.logprobs = true;
        self.top_logprobs = top;
        self
    }

    /// Check every setting, with an error that says which one is wrong and why.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::InvalidGeneration(message));
        if self.max_new_tokens == Some(0) {
            return bad("max_new_tokens must be at least 1".into());
        }
        if self.do_sample {
            if !(self.temperature > 0.0 && self.temperature.is_finite()) {
                return bad(format!(
                    "temperature must be > 0 when sampling, got {}; for greedy decoding set do_sample to false",
                    self.temperature
                ));
            }
            if self.top_k == Some(0) {
                return bad("top_k must be >= 1 (or None to disable top-k)".into());
            }
            if !(self.top_p > 0.0 && self.top_p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be > 0 (1.0 means no penalty), got {}",
                self.repetition_penalty
            ));
        }
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        if self.num_return_sequences == 0 {
            return bad("num_return_sequences must be at least 1".into());
        }
        if self.num_beams > 1 && self.num_return_sequences > self.num_beams {
            return bad(format!(
                "num_return_sequences ({}) cannot exceed num_beams ({})",
                self.num_return_sequences, self.num_beams
            ));
        }
        if self.num_beams == 1 && self.num_return_sequences > 1 && !self.do_sample {
            return bad(
                "greedy search gives one sequence per prompt: num_return_sequences > 1 needs \
                 do_sample or num_beams > 1"
                    .into(),
            );
        }
        if self.num_beams > 1 && self.do_sample {
            return bad("beam sampling (num_beams > 1 with do_sample) is not supported".into());
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty must be finite, got {}",
                self.length_penalty
            ));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                self.top_logprobs
            ));
        }
        if self.top_logprobs > 0 && !self.logprobs {
            return bad("top_logprobs needs logprobs: set logprobs to true".into());
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return bad("stop strings cannot be empty".into());
        }
        Ok(())
    }

    /// The token that fills finished sequences: `pad_token_id`, else the first end token.
    pub(crate) fn fill_token(&self) -> Option<u32> {
        self.pad_token_id
            .or_else(|| self.eos_token_id.first().copied())
    }

    /// The longest total length (prompt + new) for a prompt of `prompt_len` tokens.
    pub(crate) fn max_total_length(&self, prompt_len: usize) -> usize {
        match self.max_new_tokens {
            Some(new) => prompt_len + new,
            None => self.max_length,
        }
    }
}
