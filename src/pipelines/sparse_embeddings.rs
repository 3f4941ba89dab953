//! Sparse embeddings (SPLADE): what sentence-transformers' `SparseEncoder.encode` computes for
//! a masked LM with `SpladePooling`, returned as the non-zero entries of each vocabulary-sized
//! vector, as text-embeddings-inference's `/embed_sparse` returns them.
//! <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/sparse_encoder/SparseEncoder.py>

use serde::Serialize;
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::models::auto::AutoModelForMaskedLM;
use crate::models::pooling::SpladePooling;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::sentence_transformers::{Prompt, SentenceTransformersSetup};
use crate::pipelines::{
    BatchOptions, Pipeline, PipelineBase, Text, Truncation, TruncationOptions, DEFAULT_BATCH_SIZE,
};

/// One non-zero entry of a sparse embedding: a vocabulary id and its weight (TEI's
/// `SparseValue`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SparseValue {
    /// The token id, the entry's position in the vocabulary-sized vector.
    pub index: usize,
    /// Its weight (> 0: SPLADE's values are `log1p` of a ReLU).
    pub value: f32,
}

/// Settings of one call, as `SparseEncoder.encode` takes them.
#[derive(Debug, Clone)]
pub struct SparseEmbeddingsOptions {
    /// Cut texts at `max_length` tokens, as sentence-transformers always does.
    /// `max_length: None` is the model's `max_seq_length` (`sentence_bert_config.json`), else
    /// the tokenizer's `model_max_length`.
    pub truncation: Truncation,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// The prompt put before each text (`encode(prompt_name=..., prompt=...)`); by default
    /// the model's `default_prompt_name`, if it has one.
    pub prompt: Prompt,
}

impl Default for SparseEmbeddingsOptions {
    fn default() -> Self {
        Self {
            truncation: Truncation::ON,
            batch_size: DEFAULT_BATCH_SIZE,
            prompt: Prompt::ModelDefault,
        }
    }
}

impl SparseEmbeddingsOptions {
    /// Put this prompt before each text.
    pub fn with_prompt(mut self, prompt: Prompt) -> Self {
        self.prompt = prompt;
        self
    }
}

impl TruncationOptions for SparseEmbeddingsOptions {
    fn truncation_mut(&mut self) -> &mut Truncation {
        &mut self.truncation
    }
}

impl BatchOptions for SparseEmbeddingsOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// SPLADE sparse embeddings, as sentence-transformers' `SparseEncoder.encode` computes them
/// with an `MLMTransformer` and `SpladePooling`: a masked LM's logits, `log1p(relu(·))`, pooled
/// over each text's tokens into one vocabulary-sized vector.
#[derive(Debug, Clone)]
pub struct SparseEmbeddingsPipeline {
    base: PipelineBase<AutoModelForMaskedLM>,
    splade: SpladePooling,
    setup: SentenceTransformersSetup,
}

impl SparseEmbeddingsPipeline {
    /// Load a `SparseEncoder` folder (`modules.json`: MLMTransformer, then SpladePooling, whose
    /// `1_SpladePooling/config.json` gives the pooling), or a plain `…ForMaskedLM` checkpoint
    /// with the default SPLADE pooling (max of `log1p(relu(·))`), as `SparseEncoder` builds it
    /// for one:
    /// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/sparse_encoder/SparseEncoder.py#L959>
    /// A sentence-transformers model of another kind (a dense `Pooling`) is an error.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open_with(model, options)?;
        let setup = SentenceTransformersSetup::read(pretrained.source(), &options.device)?;
        let splade = match (setup.modules, setup.splade) {
            (true, Some(splade)) => splade,
            (true, None) => {
                return Err(Error::InvalidConfig(format!(
                    "{model} is a sentence-transformers model without SpladePooling: its \
                     modules.json makes dense embeddings (EmbeddingsPipeline), not sparse ones"
                )))
            }
            (false, _) => {
                tracing::warn!(
                    model = %pretrained.source().name(),
                    "no modules.json (not a SparseEncoder): SPLADE pooling, max of log1p(relu(logits))"
                );
                SpladePooling::default()
            }
        };
        Ok(Self {
            base: PipelineBase::load(&pretrained, options)?,
            splade,
            setup,
        })
    }

    /// Wrap a masked LM already loaded, pooled with `splade` (no prompts, the tokenizer's
    /// maximum length). A `Result`, as every pipeline's `from_parts`.
    pub fn from_parts(
        base: PipelineBase<AutoModelForMaskedLM>,
        splade: SpladePooling,
    ) -> Result<Self> {
        Ok(Self {
            base,
            splade,
            setup: SentenceTransformersSetup::plain(),
        })
    }

    /// The model's SPLADE pooling.
    pub fn splade(&self) -> SpladePooling {
        self.splade
    }

    /// The width of the vectors: the vocabulary's size (the masked LM's logits).
    pub fn vocab_size(&self) -> usize {
        self.base.config().vocab_size()
    }

    /// Preprocess: the prompt goes before each text, then everything is truncated to
    /// max_seq_length, as `SparseEncoder.encode` does (`SpladePooling` pools the prompt's tokens
    /// too: it has no `include_prompt`).
    pub fn encode(
        &self,
        texts: &[&str],
        options: &SparseEmbeddingsOptions,
    ) -> Result<Vec<Encoding>> {
        let prompt = self.setup.prompt(&options.prompt)?.unwrap_or_default();
        self.setup
            .encode_prompted(self.base.tokenizer(), texts, prompt, &options.truncation)
    }

    /// Forward, `batch_size` encodings at a time, and the SPLADE pooling of the logits: one
    /// dense vocabulary-sized row per encoding, in their order.
    pub fn pooled(&self, encodings: &[Encoding], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        self.base
            .forward_in_buckets(encodings, batch_size, |_, input| {
                let logits = self.base.model().forward(&input)?;
                let mask = input
                    .attention_mask
                    .as_ref()
                    .ok_or_else(|| Error::InvalidInput("a padded batch has a mask".to_string()))?;
                self.splade.pool(&logits, mask)
            })
    }

    /// Postprocess: each dense row as its non-zero entries, by ascending index (the order
    /// `SparseEncoder`'s sparse tensors and TEI's `/embed_sparse` give them).
    pub fn postprocess(&self, pooled: Vec<Vec<f32>>) -> Vec<Vec<SparseValue>> {
        pooled
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .enumerate()
                    .filter(|&(_, value)| value != 0.0)
                    .map(|(index, value)| SparseValue { index, value })
                    .collect()
            })
            .collect()
    }
}

impl Pipeline for SparseEmbeddingsPipeline {
    type Kind = Text;
    type Options = SparseEmbeddingsOptions;
    /// The non-zero entries of one text's vector, by ascending index.
    type Output = Vec<SparseValue>;
    type Model = AutoModelForMaskedLM;

    fn run_inputs(
        &self,
        texts: &[&str],
        options: &SparseEmbeddingsOptions,
    ) -> Result<Vec<Vec<SparseValue>>> {
        let encodings = self.encode(texts, options)?;
        Ok(self.postprocess(self.pooled(&encodings, options.batch_size)?))
    }

    fn base(&self) -> &PipelineBase<AutoModelForMaskedLM> {
        &self.base
    }
}
