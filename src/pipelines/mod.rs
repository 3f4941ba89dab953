//! Pipelines: transformers' `pipeline(task)` in Rust.
//!
//! Every encoder pipeline implements [`Pipeline`]: `run(inputs, &options)` takes anything
//! iterable over inputs (`&str`, `String`, `&String`, pairs where the task has them) and
//! returns one output per input; `run_one` takes a single input. Settings that transformers
//! passes at call time live in each pipeline's options struct (`Default` = transformers'
//! defaults). [`pipeline`] loads the pipeline of a task chosen at run time, as
//! transformers' `pipeline(task, model)` does.
//!
//! Every pipeline is a [`PipelineBase`] (model, tokenizer, config, device) plus what its task
//! adds: `from_pretrained(model, &options)` loads one, `from_parts(base)` wraps a model you
//! already hold. The options structs share [`Truncation`], and the builder methods
//! `with_batch_size` ([`BatchOptions`]) and `with_truncation`, `with_max_length`
//! ([`TruncationOptions`]).
//!
//! Each pipeline runs preprocess (tokenize, on the host), forward (the model, the only step
//! on the device) and postprocess (scores to answers, on the host). Inputs are batched
//! `batch_size` at a time, sorted by length to cut padding, and results come back in input
//! order (see `batches`). Output fields are named as transformers names them.

mod base;
mod batches;
pub mod chat;
pub mod embeddings;
pub mod fill_mask;
mod input;
pub mod m3_embeddings;
pub mod perplexity;
pub mod question_answering;
pub mod rerank;
mod sentence_transformers;
pub mod sparse_embeddings;
pub mod text_classification;
pub mod text_generation;
pub mod token_classification;

mod task;

pub use base::{BatchOptions, PipelineBase, Truncation, TruncationOptions};
pub use chat::{ChatTemplate, Conversation, Message, Role};
pub use embeddings::{cosine_similarity, EmbeddingsOptions, EmbeddingsPipeline, EncodedTexts};
pub use fill_mask::{FillMaskOptions, FillMaskPipeline, FillMaskPrediction};
pub use input::{AsInput, InputKind, QaInput, QueryDocuments, QuestionContext, Text, TextOrPair};
pub use m3_embeddings::{M3Embedding, M3EmbeddingsPipeline, M3Options};
pub use perplexity::{Perplexity, PerplexityOptions, PerplexityPipeline};
pub use question_answering::{Answer, QuestionAnsweringOptions, QuestionAnsweringPipeline};
pub use rerank::{
    CrossEncoderActivation, RankedDocument, RerankInput, RerankOptions, RerankPipeline,
    DEFAULT_RERANK_INSTRUCTION,
};
pub use sentence_transformers::Prompt;
pub use sparse_embeddings::{SparseEmbeddingsOptions, SparseEmbeddingsPipeline, SparseValue};
pub use task::{pipeline, AnyPipeline, IntoTask, Task};
pub use text_classification::{
    LabelScore, ScoreFunction, TextClassificationOptions, TextClassificationPipeline,
};
pub use text_generation::{
    GeneratedText, StopMatch, TextGenerationOptions, TextGenerationPipeline, TextGenerationStream,
};
pub use token_classification::{
    AggregationStrategy, Entity, TokenClassificationOptions, TokenClassificationPipeline,
};

use candle_core::{DType, Tensor};
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::models::auto::AutoModelForSequenceClassification;
use crate::models::config::ModelConfig;
use crate::tokenizer::{EncodeOptions, TextInput, Tokenizer};
pub(crate) use batches::{in_batches, in_buckets};

/// Inputs per forward pass unless the options say otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// One call shape for every encoder pipeline: inputs in, one output per input.
///
/// ```no_run
/// use ferroformers::pipelines::{Pipeline, TextClassificationOptions, TextClassificationPipeline};
/// # fn main() -> ferroformers::Result<()> {
/// let classifier = TextClassificationPipeline::from_pretrained(
///     "distilbert-base-uncased-finetuned-sst-2-english",
///     &ferroformers::LoadOptions::default(),
/// )?;
/// let options = TextClassificationOptions::default().with_top_k(None);
/// let texts = vec!["I love it".to_string(), "I hate it".to_string()];
/// let labels = classifier.run(&texts, &options)?;
/// let pair = classifier.run_one(("A question?", "An answer."), &options)?;
/// # Ok(()) }
/// ```
pub trait Pipeline: Send + Sync {
    /// What one input is: [`Text`], [`TextOrPair`], [`QuestionContext`] or [`QueryDocuments`].
    type Kind: InputKind;
    /// Call-time settings; `Default` gives transformers' defaults.
    type Options: Default;
    /// The result for one input.
    type Output;
    /// The model it runs: an [`AutoModel`](crate::AutoModel) enum for the encoder tasks.
    type Model;

    /// Run on already borrowed inputs; [`Pipeline::run`] is the usual entry point.
    fn run_inputs(
        &self,
        inputs: &[<Self::Kind as InputKind>::Input<'_>],
        options: &Self::Options,
    ) -> Result<Vec<Self::Output>>;

    /// The model, tokenizer, config and device the pipeline runs on.
    fn base(&self) -> &PipelineBase<Self::Model>;

    /// The model.
    fn model(&self) -> &Self::Model {
        self.base().model()
    }

    /// The tokenizer the pipeline encodes with (to count tokens, say).
    fn tokenizer(&self) -> &Tokenizer {
        self.base().tokenizer()
    }

    /// The model's `config.json`.
    fn config(&self) -> &ModelConfig {
        self.base().config()
    }

    /// Run on every input; one output per input, in input order.
    fn run<I>(&self, inputs: I, options: &Self::Options) -> Result<Vec<Self::Output>>
    where
        I: IntoIterator,
        I::Item: AsInput<Self::Kind>,
        Self: Sized,
    {
        let owned: Vec<I::Item> = inputs.into_iter().collect();
        let views: Vec<_> = owned.iter().map(AsInput::as_input).collect();
        self.run_inputs(&views, options)
    }

    /// Run on one input.
    fn run_one(
        &self,
        input: impl AsInput<Self::Kind>,
        options: &Self::Options,
    ) -> Result<Self::Output>
    where
        Self: Sized,
    {
        self.run_inputs(&[input.as_input()], options)?
            .pop()
            .ok_or_else(|| Error::InvalidInput("the pipeline returned no result".to_string()))
    }
}

/// Preprocess: encode every input.
pub(crate) fn encode_all<'a, T: Into<TextInput<'a>>>(
    tokenizer: &Tokenizer,
    inputs: impl IntoIterator<Item = T>,
    options: &EncodeOptions,
) -> Result<Vec<Encoding>> {
    inputs
        .into_iter()
        .map(|input| tokenizer.encode(input, options))
        .collect()
}

impl<M> PipelineBase<M> {
    /// Forward of a sequence-classification head (`classifier`, this pipeline's model or part
    /// of it), `batch_size` encodings at a time: its logits, one row per encoding (text
    /// classification and reranking share it).
    pub(crate) fn classification_logits(
        &self,
        classifier: &AutoModelForSequenceClassification,
        encodings: &[Encoding],
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.forward_in_buckets(encodings, batch_size, |_, input| {
            rows_to_host(&classifier.forward(&input)?)
        })
    }
}

/// A (batch, ...) f32 tensor as one host vector per row, rows flattened.
pub(crate) fn rows_to_host(tensor: &Tensor) -> Result<Vec<Vec<f32>>> {
    let batch = tensor.dim(0)?;
    let flat = tensor.to_dtype(DType::F32)?.reshape((batch, ()))?;
    Ok(flat.to_vec2()?)
}
