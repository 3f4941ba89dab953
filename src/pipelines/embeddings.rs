//! Sentence embeddings: what sentence-transformers' `encode` computes, with the pooling and
//! normalisation read from the model's own `modules.json` and `1_Pooling/config.json`, its
//! `Dense` modules, and its prompts (read in `sentence_transformers.rs`).

use candle_core::{Device, Tensor};

use crate::auto::AutoModel;
use crate::error::{Error, Result};
use crate::pipelines::sentence_transformers::{Prompt, SentenceTransformersSetup};
use crate::pipelines::{batch_input, encode_all, in_batches, DEFAULT_BATCH_SIZE};
use crate::pooling::{l2_normalize, Pooling};
use crate::pretrained::{LoadOptions, Pretrained};
use crate::tokenizer::{EncodeOptions, Tokenizer};

#[derive(Debug, Clone)]
pub struct EmbeddingsPipeline {
    model: AutoModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    setup: SentenceTransformersSetup,
    device: Device,
    pub batch_size: usize,
}

impl EmbeddingsPipeline {
    /// Load a model; pooling and normalisation come from its sentence-transformers files,
    /// else mean pooling without normalisation (change them with `with_pooling`).
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        let setup = SentenceTransformersSetup::read(pretrained.source(), &options.device)?;
        Ok(Self {
            model: pretrained.load::<AutoModel>(options)?,
            tokenizer: pretrained.tokenizer()?,
            pooling: setup.pooling.unwrap_or(Pooling::Mean),
            normalize: setup.normalize,
            setup,
            device: options.device.clone(),
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Use this pooling instead of the model's.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// Scale each embedding to unit length (or not).
    pub fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// One embedding per text, with the model's default prompt (if it has one).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with_prompt(texts, &Prompt::ModelDefault)
    }

    /// One embedding per text, each text after the chosen prompt, as
    /// `SentenceTransformer.encode(texts, prompt_name=..., prompt=...)`.
    pub fn embed_with_prompt(&self, texts: &[&str], prompt: &Prompt) -> Result<Vec<Vec<f32>>> {
        // Preprocess: the prompt goes before each text, then everything is truncated to
        // max_seq_length as sentence-transformers does.
        let prompt = self.setup.prompt(prompt)?;
        let prompted: Vec<String> = texts
            .iter()
            .map(|text| format!("{}{text}", prompt.unwrap_or_default()))
            .collect();
        let limit = self
            .setup
            .max_seq_length
            .or(self.tokenizer.model_max_length());
        let encode = EncodeOptions {
            truncation: limit.is_some(),
            max_length: limit,
            ..EncodeOptions::default()
        };
        let (encodings, lengths) = encode_all(&self.tokenizer, &prompted, &encode)?;
        let prompt_length = match prompt {
            Some(prompt) if !self.setup.include_prompt => self.prompt_length(prompt)?,
            _ => 0,
        };
        // Forward, pooling included: it is part of the model in sentence-transformers.
        in_batches(&lengths, self.batch_size, |indices| {
            let input = batch_input(&self.tokenizer, &encodings, indices, &self.device)?;
            let hidden = self.model.forward(&input)?.last_hidden_state;
            let mask = input
                .attention_mask
                .as_ref()
                .ok_or_else(|| Error::InvalidInput("a padded batch has a mask".to_string()))?;
            let mask = without_prompt(mask, prompt_length)?;
            let mut pooled = self.setup.apply_dense(self.pooling.pool(&hidden, &mask)?)?;
            if self.normalize {
                pooled = l2_normalize(&pooled)?;
            }
            Ok(pooled.to_vec2()?)
        })
    }
}

impl EmbeddingsPipeline {
    /// The prompt's length in tokens with the special tokens before it (`[CLS]`), not those
    /// after it, as `SentenceTransformer._get_prompt_length` counts it:
    /// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/SentenceTransformer.py#L1576>
    fn prompt_length(&self, prompt: &str) -> Result<usize> {
        let encoding = self.tokenizer.encode(prompt, &EncodeOptions::default())?;
        let ends_special = encoding.get_special_tokens_mask().last() == Some(&1);
        Ok(encoding.len() - usize::from(ends_special))
    }
}

/// The attention mask with its first `prompt_length` columns zeroed, so the pooling skips the
/// prompt (sentence-transformers' `Pooling` with `include_prompt` false):
/// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/models/Pooling.py#L142>
fn without_prompt(mask: &Tensor, prompt_length: usize) -> Result<Tensor> {
    if prompt_length == 0 {
        return Ok(mask.clone());
    }
    let seq_len = mask.dim(1)?;
    let keep: Vec<u32> = (0..seq_len)
        .map(|i| u32::from(i >= prompt_length))
        .collect();
    let keep = Tensor::from_vec(keep, (1, seq_len), mask.device())?.to_dtype(mask.dtype())?;
    Ok(mask.broadcast_mul(&keep)?)
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}
