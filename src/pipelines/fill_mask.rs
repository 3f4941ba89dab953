//! Fill-mask: transformers' `FillMaskPipeline`, for one mask token per input.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pipelines/fill_mask.py>

use candle_core::Tensor;
use serde::Serialize;
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::kernels::host::softmax;
use crate::models::auto::AutoModelForMaskedLM;
use crate::models::pretrained::LoadOptions;
use crate::pipelines::{
    encode_all, BatchOptions, Pipeline, PipelineBase, Text, Truncation, TruncationOptions,
    DEFAULT_BATCH_SIZE,
};
use crate::tokenizer::EncodeOptions;

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
    /// Cut inputs longer than `max_length` instead of failing (transformers' default: off);
    /// `max_length: None` is the tokenizer's `model_max_length`. The mask must stay inside
    /// what is kept.
    pub truncation: Truncation,
    /// Inputs per forward pass.
    pub batch_size: usize,
}

impl Default for FillMaskOptions {
    fn default() -> Self {
        Self {
            top_k: 5,
            targets: None,
            truncation: Truncation::OFF,
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
}

impl TruncationOptions for FillMaskOptions {
    fn truncation_mut(&mut self) -> &mut Truncation {
        &mut self.truncation
    }
}

impl BatchOptions for FillMaskOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// transformers' `FillMaskPipeline`: candidates for the one mask token of each input.
#[derive(Debug, Clone)]
pub struct FillMaskPipeline {
    base: PipelineBase<AutoModelForMaskedLM>,
    mask_id: u32,
    mask_token: String,
}

impl FillMaskPipeline {
    /// Load `model` (a Hub id or a local folder); its tokenizer must have a mask token.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_parts(PipelineBase::from_pretrained(model, options)?)
    }

    /// Wrap a model already loaded; its tokenizer must have a mask token.
    pub fn from_parts(base: PipelineBase<AutoModelForMaskedLM>) -> Result<Self> {
        let (mask_id, mask_token) = base
            .tokenizer()
            .mask_token()
            .map(|(id, token)| (id, token.to_string()))
            .ok_or_else(|| {
                Error::InvalidInput(
                    "the tokenizer has no mask token, which fill-mask needs".to_string(),
                )
            })?;
        Ok(Self {
            base,
            mask_id,
            mask_token,
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
            let id = match self.base.tokenizer().token_to_id(target) {
                Some(id) => Some(id),
                None => {
                    let options = EncodeOptions {
                        add_special_tokens: false,
                        ..EncodeOptions::default()
                    };
                    self.base
                        .tokenizer()
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
                    token_str: self.base.tokenizer().decode(&[token], false)?,
                    sequence: self.base.tokenizer().decode(&ids, true)?,
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
    type Model = AutoModelForMaskedLM;

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
        let encode = options.truncation.encode_options();
        let tokenizer = self.base.tokenizer();
        let encodings = encode_all(tokenizer, texts.iter().copied(), &encode)?;
        let masks = encodings
            .iter()
            .zip(texts)
            .map(|(encoding, text)| self.mask_position(encoding, text))
            .collect::<Result<Vec<_>>>()?;
        // Forward: vocabulary logits at each input's mask.
        let logits =
            self.base
                .forward_in_buckets(&encodings, options.batch_size, |indices, input| {
                    let logits = self.base.model().forward(&input)?;
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

    fn base(&self) -> &PipelineBase<AutoModelForMaskedLM> {
        &self.base
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
