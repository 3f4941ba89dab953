//! Perplexity of a causal LM over a text, windowed as llama.cpp's `llama-perplexity` does, so
//! that a quantization's drift can be stated and set beside llama.cpp's figure for the same
//! file and model.
//!
//! The text is tokenized whole (with the start token the tokenizer adds), cut into windows of
//! `context` tokens (a remainder shorter than a window is dropped), and each window is run
//! alone from an empty cache with its first token replaced by the start token, when the model
//! has one. Only the second half of each window is scored, so that every scored token has at
//! least half a window of context: the log-likelihood of each token from position
//! `context / 2 + 1` to the window's end, given the logits one position before it. The
//! perplexity is `exp` of the mean negative log-likelihood; its error is llama.cpp's estimate,
//! the standard error of the mean scaled by the perplexity.
//! (`perplexity` in llama.cpp's `tools/perplexity/perplexity.cpp`, as vendored in the
//! llama-cpp-python 0.3.36 sdist on PyPI.)

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::auto::AutoModelForCausalLM;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::{Pipeline, PipelineBase, Text};
use crate::tokenizer::EncodeOptions;

/// Settings of one [`PerplexityPipeline::run`].
#[derive(Debug, Clone)]
pub struct PerplexityOptions {
    /// Tokens per window (llama.cpp's `--ctx-size`, 512 by default there and here).
    pub context: usize,
    /// Score only the first this many windows (llama.cpp's `--chunks`); all by default.
    pub max_windows: Option<usize>,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        Self {
            context: 512,
            max_windows: None,
        }
    }
}

/// The perplexity of one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Perplexity {
    /// `exp` of the mean negative log-likelihood of the scored tokens.
    pub perplexity: f64,
    /// llama.cpp's error estimate of it: the standard error of the mean negative
    /// log-likelihood, times the perplexity.
    pub error: f64,
    /// The text's tokens.
    pub tokens: usize,
    /// How many tokens were scored.
    pub scored: usize,
    /// The perplexity over the windows so far, after each window (what llama.cpp prints as
    /// `[1]12.3456,[2]...`).
    pub running: Vec<f64>,
}

/// Perplexity with a decoder (GPT-2 or the Llama family).
#[derive(Debug, Clone)]
pub struct PerplexityPipeline {
    base: PipelineBase<AutoModelForCausalLM>,
}

impl PerplexityPipeline {
    /// Load `model` (a Hub id, a local folder, or a GGUF file): weights and tokenizer.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open_with(model, options)?;
        Ok(Self {
            base: PipelineBase::load(&pretrained, options)?,
        })
    }

    /// Wrap a model already loaded. A `Result`, as every pipeline's `from_parts`.
    pub fn from_parts(base: PipelineBase<AutoModelForCausalLM>) -> Result<Self> {
        Ok(Self { base })
    }

    /// Preprocess: the text's tokens, with the start token the tokenizer adds, and that start
    /// token (the token that the tokenizer puts before every text, if any).
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Option<u32>)> {
        let tokenizer = self.base.tokenizer();
        let encode = |text: &str, add_special_tokens: bool| -> Result<Vec<u32>> {
            let options = EncodeOptions {
                add_special_tokens,
                truncation: false,
                ..EncodeOptions::default()
            };
            Ok(tokenizer.encode(text, &options)?.get_ids().to_vec())
        };
        // What the tokenizer adds around a text, seen on a one-letter probe: the same for any
        // text, so the text itself is encoded once.
        let plain = encode("a", false)?;
        let special = encode("a", true)?;
        let start =
            (special.len() == plain.len() + 1 && special[1..] == plain[..]).then(|| special[0]);
        if special.len() > plain.len() + usize::from(start.is_some()) {
            return Err(Error::InvalidInput(
                "the tokenizer adds tokens after the text (an end token), which llama.cpp's \
                 perplexity does not allow either"
                    .to_string(),
            ));
        }
        Ok((encode(text, true)?, start))
    }

    /// Forward and score: the negative log-likelihood of each scored token of every window,
    /// window by window.
    pub fn window_losses(
        &self,
        tokens: &[u32],
        start: Option<u32>,
        options: &PerplexityOptions,
    ) -> Result<Vec<Vec<f64>>> {
        let context = options.context;
        if context < 4 {
            return Err(Error::InvalidInput(format!(
                "a perplexity window of {context} tokens is too short: use at least 4"
            )));
        }
        if context > self.base.model().max_positions() {
            return Err(Error::InvalidInput(format!(
                "a perplexity window of {context} tokens is longer than the model's {} \
                 positions: use a shorter context",
                self.base.model().max_positions()
            )));
        }
        if tokens.len() < 2 * context {
            return Err(Error::InvalidInput(format!(
                "the text has {} tokens; a perplexity with windows of {context} tokens needs at \
                 least {} (two windows), as llama.cpp's does: give a longer text or a shorter \
                 context",
                tokens.len(),
                2 * context
            )));
        }
        let windows = (tokens.len() / context).min(options.max_windows.unwrap_or(usize::MAX));
        let first = context / 2;
        let device = self.base.model().device().clone();
        (0..windows)
            .map(|w| {
                let mut window = tokens[w * context..(w + 1) * context].to_vec();
                if let Some(start) = start {
                    window[0] = start;
                }
                let ids = Tensor::new(window.as_slice(), &device)?.unsqueeze(0)?;
                let logits = self.base.model().forward(&ids, None, None)?.squeeze(0)?;
                // Position p's logits predict token p + 1.
                let scored = logits.narrow(0, first, context - 1 - first)?;
                negative_log_likelihoods(&scored, &window[first + 1..])
            })
            .collect()
    }

    /// Postprocess: the perplexity, its error and the running figures, as llama.cpp computes
    /// them.
    pub fn postprocess(&self, tokens: usize, losses: &[Vec<f64>]) -> Perplexity {
        let (mut sum, mut sum_squares, mut count) = (0f64, 0f64, 0usize);
        let mut running = Vec::with_capacity(losses.len());
        for window in losses {
            for &loss in window {
                sum += loss;
                sum_squares += loss * loss;
            }
            count += window.len();
            running.push((sum / count as f64).exp());
        }
        let mean = sum / count as f64;
        let variance = sum_squares / count as f64 - mean * mean;
        let perplexity = mean.exp();
        let error = if variance > 0.0 && count > 1 {
            (variance / (count - 1) as f64).sqrt() * perplexity
        } else {
            0.0
        };
        Perplexity {
            perplexity,
            error,
            tokens,
            scored: count,
            running,
        }
    }
}

/// `-log softmax(logits[i])[targets[i]]` for each row, in f64 over f32 exponentials as
/// llama.cpp's `log_softmax` sums them.
fn negative_log_likelihoods(logits: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    rows.iter()
        .zip(targets)
        .map(|(row, &target)| {
            let logit = *row.get(target as usize).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "token {target} is outside the model's {} logits",
                    row.len()
                ))
            })?;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&l| f64::from((l - max).exp())).sum();
            Ok(-(f64::from(logit - max) - sum.ln()))
        })
        .collect()
}

impl Pipeline for PerplexityPipeline {
    type Kind = Text;
    type Options = PerplexityOptions;
    /// The perplexity of one text.
    type Output = Perplexity;
    type Model = AutoModelForCausalLM;

    fn run_inputs(&self, texts: &[&str], options: &PerplexityOptions) -> Result<Vec<Perplexity>> {
        texts
            .iter()
            .map(|text| {
                let (tokens, start) = self.encode(text)?;
                let losses = self.window_losses(&tokens, start, options)?;
                Ok(self.postprocess(tokens.len(), &losses))
            })
            .collect()
    }

    fn base(&self) -> &PipelineBase<AutoModelForCausalLM> {
        &self.base
    }
}
