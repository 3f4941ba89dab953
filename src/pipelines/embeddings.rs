//! Sentence embeddings: what sentence-transformers' `encode` computes, with the pooling and
//! normalisation read from the model's own `modules.json` and `1_Pooling/config.json`, its
//! `Dense` modules, and its prompts (read in `sentence_transformers.rs`).

use candle_core::{DType, Tensor};
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::models::auto::AutoModel;
use crate::models::pooling::Pooling;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::sentence_transformers::{Prompt, SentenceTransformersSetup};
use crate::pipelines::{
    BatchOptions, Pipeline, PipelineBase, Text, Truncation, TruncationOptions, DEFAULT_BATCH_SIZE,
};
use crate::tokenizer::EncodeOptions;

/// Settings of one call, as sentence-transformers' `encode` takes them.
///
/// Pooling and normalisation are modules of a sentence-transformers model, read at load
/// time; `pooling` overrides the model's pooling for one call (models without
/// sentence-transformers files pool by mean), and `normalize_embeddings` scales to unit
/// length as `encode(normalize_embeddings=True)` does, whatever the model's modules say.
#[derive(Debug, Clone)]
pub struct EmbeddingsOptions {
    /// Use this pooling instead of the model's.
    pub pooling: Option<Pooling>,
    /// Scale each embedding to unit length (the model's `Normalize` module does it anyway).
    pub normalize_embeddings: bool,
    /// Cut texts at `max_length` tokens, as sentence-transformers always does.
    /// `max_length: None` is the model's `max_seq_length` (`sentence_bert_config.json`), else
    /// the tokenizer's `model_max_length`.
    pub truncation: Truncation,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// The prompt put before each text (`encode(prompt_name=..., prompt=...)`); by default
    /// the model's `default_prompt_name`, if it has one.
    pub prompt: Prompt,
    /// Keep the first this many values of each embedding (`encode(truncate_dim=...)`, for
    /// Matryoshka models); `None` keeps them all.
    pub truncate_dim: Option<usize>,
}

impl Default for EmbeddingsOptions {
    fn default() -> Self {
        Self {
            pooling: None,
            normalize_embeddings: false,
            truncation: Truncation::ON,
            batch_size: DEFAULT_BATCH_SIZE,
            prompt: Prompt::ModelDefault,
            truncate_dim: None,
        }
    }
}

impl EmbeddingsOptions {
    /// Use this pooling instead of the model's.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = Some(pooling);
        self
    }

    /// Scale each embedding to unit length.
    pub fn with_normalize_embeddings(mut self, normalize: bool) -> Self {
        self.normalize_embeddings = normalize;
        self
    }

    /// Put this prompt before each text.
    pub fn with_prompt(mut self, prompt: Prompt) -> Self {
        self.prompt = prompt;
        self
    }

    /// Keep the first `dimensions` values of each embedding.
    pub fn with_truncate_dim(mut self, dimensions: usize) -> Self {
        self.truncate_dim = Some(dimensions);
        self
    }
}

impl TruncationOptions for EmbeddingsOptions {
    fn truncation_mut(&mut self) -> &mut Truncation {
        &mut self.truncation
    }
}

impl BatchOptions for EmbeddingsOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// Sentence embeddings, as sentence-transformers' `SentenceTransformer.encode` computes them.
#[derive(Debug, Clone)]
pub struct EmbeddingsPipeline {
    base: PipelineBase<AutoModel>,
    pooling: Pooling,
    normalize: bool,
    setup: SentenceTransformersSetup,
}

impl EmbeddingsPipeline {
    /// Load a model; pooling and normalisation come from its sentence-transformers files,
    /// else mean pooling without normalisation (override them in [`EmbeddingsOptions`]).
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open_with(model, options)?;
        let setup = SentenceTransformersSetup::read(pretrained.source(), &options.device)?;
        if setup.masked_lm {
            // Its token embeddings are vocabulary logits: pooling hidden states instead would
            // give vectors the model was never trained to make.
            return Err(Error::InvalidConfig(format!(
                "{model} is a SparseEncoder (MLMTransformer, SpladePooling): load it with \
                 SparseEmbeddingsPipeline (task sparse-embeddings)"
            )));
        }
        if !setup.modules {
            tracing::warn!(
                model = %pretrained.source().name(),
                "no modules.json (not a sentence-transformers model): mean pooling, not normalised"
            );
        }
        Ok(Self::with_setup(
            PipelineBase::load(&pretrained, options)?,
            setup,
        ))
    }

    /// Wrap a model already loaded, as a model without sentence-transformers files: mean
    /// pooling, no normalisation, no Dense modules or prompts (the options choose another
    /// pooling, or normalisation, per call).
    pub fn from_parts(base: PipelineBase<AutoModel>) -> Result<Self> {
        Ok(Self::with_setup(base, SentenceTransformersSetup::plain()))
    }

    fn with_setup(base: PipelineBase<AutoModel>, setup: SentenceTransformersSetup) -> Self {
        Self {
            base,
            pooling: setup.pooling.unwrap_or(Pooling::Mean),
            normalize: setup.normalize,
            setup,
        }
    }

    /// The model's pooling.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether the model normalises its embeddings (a `Normalize` module).
    pub fn normalize(&self) -> bool {
        self.normalize
    }
}

impl Pipeline for EmbeddingsPipeline {
    type Kind = Text;
    type Options = EmbeddingsOptions;
    /// The embedding of one text.
    type Output = Vec<f32>;
    type Model = AutoModel;

    fn run_inputs(&self, texts: &[&str], options: &EmbeddingsOptions) -> Result<Vec<Vec<f32>>> {
        let encoded = self.encode(texts, options)?;
        let pooled = self.pooled(
            &encoded.encodings,
            encoded.prompt_length,
            options.pooling,
            options.batch_size,
        )?;
        self.postprocess(pooled, options)
    }

    fn base(&self) -> &PipelineBase<AutoModel> {
        &self.base
    }
}

/// Texts tokenized for [`EmbeddingsPipeline::pooled`]: its preprocess, which the server runs
/// on the request's own thread before queueing the forward.
pub struct EncodedTexts {
    /// One encoding per text, prompt included, truncated as the options say.
    pub encodings: Vec<Encoding>,
    /// Tokens at the start of every encoding that the pooling leaves out (the prompt, when
    /// the model's pooling excludes it); 0 otherwise.
    pub prompt_length: usize,
}

impl EmbeddingsPipeline {
    /// Preprocess: the prompt goes before each text, then everything is truncated to
    /// max_seq_length as sentence-transformers does.
    pub fn encode(&self, texts: &[&str], options: &EmbeddingsOptions) -> Result<EncodedTexts> {
        let prompt = self.setup.prompt(&options.prompt)?;
        let encodings = self.setup.encode_prompted(
            self.base.tokenizer(),
            texts,
            prompt.unwrap_or_default(),
            &options.truncation,
        )?;
        let prompt_length = match prompt {
            Some(prompt) if !self.setup.include_prompt => self.prompt_length(prompt)?,
            _ => 0,
        };
        Ok(EncodedTexts {
            encodings,
            prompt_length,
        })
    }

    /// Forward, `batch_size` encodings at a time, then the pooling (`pooling`, else the
    /// model's) and the Dense modules: they are part of the model in sentence-transformers.
    /// One row per encoding, in their order, not yet normalised.
    pub fn pooled(
        &self,
        encodings: &[Encoding],
        prompt_length: usize,
        pooling: Option<Pooling>,
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let pooling = pooling.unwrap_or(self.pooling);
        self.base
            .forward_in_buckets(encodings, batch_size, |_, input| {
                let hidden = self.base.model().forward(&input)?.last_hidden_state;
                let mask = input
                    .attention_mask
                    .as_ref()
                    .ok_or_else(|| Error::InvalidInput("a padded batch has a mask".to_string()))?;
                let mask = without_prompt(mask, prompt_length)?;
                let pooled = self.setup.apply_dense(pooling.pool(&hidden, &mask)?)?;
                Ok(pooled.to_vec2()?)
            })
    }

    /// Every token's vector, as `encode(output_value="token_embeddings")` gives them: the
    /// model's last hidden state, one row of `hidden` values per token of each encoding
    /// (special and prompt tokens included, padding left out), before pooling, Dense modules
    /// and normalisation. Flattened per encoding: `tokens × hidden` values, token after token.
    pub fn token_embeddings(
        &self,
        encodings: &[Encoding],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.base
            .forward_in_buckets(encodings, batch_size, |indices, input| {
                let hidden = self.base.model().forward(&input)?.last_hidden_state;
                let hidden = hidden.to_dtype(DType::F32)?;
                let width = hidden.dim(2)?;
                let rows: Vec<Vec<f32>> = hidden.flatten_from(1)?.to_vec2()?;
                Ok(rows
                    .into_iter()
                    .zip(indices)
                    .map(|(mut row, &index)| {
                        row.truncate(encodings[index].len() * width);
                        row
                    })
                    .collect())
            })
    }

    /// [`Self::token_embeddings`] of `texts`, preprocessed as [`Pipeline::run`] does (prompt,
    /// truncation), each as one row per token.
    pub fn run_token_embeddings(
        &self,
        texts: &[&str],
        options: &EmbeddingsOptions,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let encoded = self.encode(texts, options)?;
        let flat = self.token_embeddings(&encoded.encodings, options.batch_size)?;
        Ok(self.token_rows(flat))
    }

    /// [`Self::token_embeddings`]' flattened vectors as one row per token.
    pub fn token_rows(&self, flat: Vec<Vec<f32>>) -> Vec<Vec<Vec<f32>>> {
        let width = self.hidden_size();
        flat.into_iter()
            .map(|tokens| tokens.chunks(width).map(<[f32]>::to_vec).collect())
            .collect()
    }

    /// The model's hidden size: the width of each token's vector.
    pub fn hidden_size(&self) -> usize {
        self.base.config().hidden_size()
    }

    /// Postprocess, per row on the host (so that requests that differ only here share a
    /// forward), in the order `SentenceTransformer.encode` takes: the model's `Normalize`
    /// module, then `truncate_dim`, then `normalize_embeddings`. A truncated embedding of a
    /// normalising model is unit length only when `normalize_embeddings` asks for it again:
    /// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/SentenceTransformer.py>
    /// (`encode`: `truncate_embeddings(out_features["sentence_embedding"], self.truncate_dim)`
    /// after `self.forward`, `normalize` after that).
    pub fn postprocess(
        &self,
        mut pooled: Vec<Vec<f32>>,
        options: &EmbeddingsOptions,
    ) -> Result<Vec<Vec<f32>>> {
        let normalize_rows = |rows: &mut Vec<Vec<f32>>| {
            rows.iter_mut().for_each(|row| l2_normalize_row(row));
        };
        let Some(dimensions) = options.truncate_dim else {
            // One normalisation when both ask: a second would move the last bits only.
            if self.normalize || options.normalize_embeddings {
                normalize_rows(&mut pooled);
            }
            return Ok(pooled);
        };
        let width = pooled.first().map_or(dimensions, Vec::len);
        if dimensions == 0 || dimensions > width {
            return Err(Error::InvalidInput(format!(
                "truncate_dim must be between 1 and the embedding's {width} dimensions, not \
                 {dimensions}"
            )));
        }
        if self.normalize {
            normalize_rows(&mut pooled);
        }
        pooled.iter_mut().for_each(|row| row.truncate(dimensions));
        if options.normalize_embeddings {
            normalize_rows(&mut pooled);
        }
        Ok(pooled)
    }

    /// The prompt's length in tokens with the special tokens before it (`[CLS]`), not those
    /// after it, as `SentenceTransformer._get_prompt_length` counts it:
    /// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/SentenceTransformer.py#L1576>
    fn prompt_length(&self, prompt: &str) -> Result<usize> {
        let encoding = self
            .base
            .tokenizer()
            .encode(prompt, &EncodeOptions::default())?;
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

/// Scale `row` to unit length, as [`crate::models::pooling::l2_normalize`] scales a tensor's rows
/// (the norm clamped at 1e-12, so that a zero row stays zero).
pub(crate) fn l2_normalize_row(row: &mut [f32]) {
    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    row.iter_mut().for_each(|x| *x /= norm);
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
