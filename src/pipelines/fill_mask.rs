//! Fill-mask: transformers' `FillMaskPipeline`, for one mask token per input.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pipelines/fill_mask.py>

use candle_core::{Device, Tensor};
use serde::Serialize;
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::kernels::host::softmax;
use crate::models::auto::AutoModelForMaskedLM;
use crate::models::config::ModelConfig;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::{batch_input, encode_all, in_batches, Pipeline, Text, DEFAULT_BATCH_SIZE};
use crate::tokenizer::{EncodeOptions, Tokenizer};

/// One candidate for the masked token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillMaskPrediction {
    /// The candidate's probability.
    pub score: f32,
    /// The candidate's token id.
    pub token: u32,
    /// The token decoded alone; a byte-level BPE token keeps its leading space.
    pub token_str: String,
    /// The input with the mask replaced, decoded without special tokens.
    pub sequence: String,
}

/// Settings of one call, as transformers' pipeline takes them.
#[derive(Debug, Clone)]
pub struct FillMaskOptions {
    /// Candidates to return per input.
    pub top_k: usize,
    /// Only score these words (a word missing from the vocabulary counts as its first token).
    pub targets: Option<Vec<String>>,
    /// Cut inputs longer than `max_length` instead of failing (transformers' default: off).
    /// The mask must stay inside what is kept.
    pub truncation: bool,
    /// The length `truncation` cuts to; `None` is the tokenizer's `model_max_length`.
    pub max_length: Option<usize>,
    /// Inputs per forward pass.
    pub batch_size: usize,
}

impl Default for FillMaskOptions {
    fn default() -> Self {
        Self {
            top_k: 5,
            targets: None,
            truncation: false,
            max_length: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

impl FillMaskOptions {
    /// Candidates to return per input.
    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k;
        self
    }

    /// Only score these words.
    pub fn with_targets(mut self, targets: Vec<String>) -> Self {
        self.targets = Some(targets);
        self
    }

    /// Cut long inputs (to `max_length` if given, else the model's maximum).
    pub fn with_truncation(mut self, truncation: bool) -> Self {
        self.truncation = truncation;
        self
    }

    /// The length to truncate to.
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Inputs per forward pass.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
}

/// transformers' `FillMaskPipeline`: candidates for the one mask token of each input.
#[derive(Debug, Clone)]
pub struct FillMaskPipeline {
    model: AutoModelForMaskedLM,
    tokenizer: Tokenizer,
    config: ModelConfig,
    mask_id: u32,
    mask_token: String,
    device: Device,
}

impl FillMaskPipeline {
    /// Load `model` (a Hub id or a local folder); its tokenizer must have a mask token.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        let tokenizer = pretrained.tokenizer()?;
        let (mask_id, mask_token) = tokenizer
            .mask_token()
            .map(|(id, token)| (id, token.to_string()))
            .ok_or_else(|| {
                Error::InvalidInput(format!("the tokenizer of `{model}` has no mask token"))
            })?;
        Ok(Self {
            model: pretrained.load::<AutoModelForMaskedLM>(options)?,
            tokenizer,
            config: pretrained.config().clone(),
            mask_id,
            mask_token,
            device: options.device.clone(),
        })
    }

    /// The mask token to write in inputs (`[MASK]`, `<mask>`, ...).
    pub fn mask_token(&self) -> &str {
        &self.mask_token
    }

    fn mask_position(&self, encoding: &Encoding, text: &str) -> Result<usize> {
        let positions: Vec<usize> = encoding
            .get_ids()
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == self.mask_id)
            .map(|(i, _)| i)
            .collect();
        match positions[..] {
            [position] => Ok(position),
            [] => Err(Error::InvalidInput(format!(
                "no mask token ({}) in {text:?}: put exactly one where the word to predict goes",
                self.mask_token
            ))),
            _ => Err(Error::InvalidInput(format!(
                "{} mask tokens ({}) in {text:?}: this pipeline fills exactly one",
                positions.len(),
                self.mask_token
            ))),
        }
    }

    /// Token ids of the target words, as transformers picks them (deduplicated).
    fn target_ids(&self, targets: &[String]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for target in targets {
            let id = match self.tokenizer.token_to_id(target) {
                Some(id) => Some(id),
                None => {
                    let options = EncodeOptions {
                        add_special_tokens: false,
                        ..EncodeOptions::default()
                    };
                    self.tokenizer
                        .encode(target.as_str(), &options)?
                        .get_ids()
                        .first()
                        .copied()
                }
            };
            ids.extend(id.filter(|id| !ids.contains(id)));
        }
        if ids.is_empty() {
            return Err(Error::InvalidInput(
                "at least one target must be a known word".to_string(),
            ));
        }
        Ok(ids)
    }

    fn postprocess(
        &self,
        logits: &[f32],
        encoding: &Encoding,
        mask: usize,
        top_k: usize,
        targets: Option<&[u32]>,
    ) -> Result<Vec<FillMaskPrediction>> {
        let probs = softmax(logits);
        let mut candidates: Vec<(u32, f32)> = match targets {
            Some(ids) => ids
                .iter()
                .map(|&id| (id, probs.get(id as usize).copied().unwrap_or(0.0)))
                .collect(),
            None => probs
                .iter()
                .enumerate()
                .map(|(id, &p)| (id as u32, p))
                .collect(),
        };
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        candidates.truncate(top_k);
        candidates
            .into_iter()
            .map(|(token, score)| {
                let mut ids = encoding.get_ids().to_vec();
                ids[mask] = token;
                Ok(FillMaskPrediction {
                    score,
                    token,
                    token_str: self.tokenizer.decode(&[token], false)?,
                    sequence: self.tokenizer.decode(&ids, true)?,
                })
            })
            .collect()
    }
}

impl Pipeline for FillMaskPipeline {
    type Kind = Text;
    type Options = FillMaskOptions;
    /// Candidates for the mask, best first.
    type Output = Vec<FillMaskPrediction>;

    fn run_inputs(
        &self,
        texts: &[&str],
        options: &FillMaskOptions,
    ) -> Result<Vec<Vec<FillMaskPrediction>>> {
        // Preprocess: tokenize, find the one mask of each input.
        let targets = options
            .targets
            .as_deref()
            .map(|t| self.target_ids(t))
            .transpose()?;
        let encode = EncodeOptions {
            truncation: options.truncation,
            max_length: options.max_length,
            ..EncodeOptions::default()
        };
        let (encodings, lengths) = encode_all(&self.tokenizer, texts.iter().copied(), &encode)?;
        let masks = encodings
            .iter()
            .zip(texts)
            .map(|(encoding, text)| self.mask_position(encoding, text))
            .collect::<Result<Vec<_>>>()?;
        // Forward: vocabulary logits at each input's mask.
        let logits = in_batches(&lengths, options.batch_size, |indices| {
            let input = batch_input(&self.tokenizer, &encodings, indices, &self.device)?;
            let logits = self.model.forward(&input)?;
            indices
                .iter()
                .enumerate()
                .map(|(row, &i)| mask_logits(&logits, row, masks[i]))
                .collect()
        })?;
        // Postprocess.
        logits
            .iter()
            .zip(&encodings)
            .zip(&masks)
            .map(|((row, encoding), &mask)| {
                self.postprocess(row, encoding, mask, options.top_k, targets.as_deref())
            })
            .collect()
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn config(&self) -> &ModelConfig {
        &self.config
    }
}

/// The vocabulary logits of `row` at position `mask`, on the host.
fn mask_logits(logits: &Tensor, row: usize, mask: usize) -> Result<Vec<f32>> {
    Ok(logits
        .get(row)?
        .get(mask)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?)
}
