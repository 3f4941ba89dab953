//! Reranking with a cross-encoder: sentence-transformers' `CrossEncoder.rank` and `predict`.
//! <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/cross_encoder/CrossEncoder.py>
//!
//! A cross-encoder reads the query and a document together, as a text pair, and its
//! sequence-classification head gives a relevance logit; the activation the model was saved
//! with (Sigmoid by default for one label) turns it into the score.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::kernels::host::sigmoid;
use crate::loading::json::read_json;
use crate::models::auto::AutoModelForSequenceClassification;
use crate::models::config::ModelConfig;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::{
    encode_all, BatchOptions, Pipeline, PipelineBase, QueryDocuments, Truncation, TruncationOptions,
};
use crate::tokenizer::TextInput;

/// `CrossEncoder.predict`'s batch size.
const CROSS_ENCODER_BATCH_SIZE: usize = 32;

/// What turns a cross-encoder's logits into scores: sentence-transformers' `activation_fn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossEncoderActivation {
    /// `torch.nn.Sigmoid`: scores in (0, 1); the default for single-logit models.
    Sigmoid,
    /// `torch.nn.Identity`: the raw logits; the default for several labels.
    Identity,
    /// `torch.nn.Tanh`.
    Tanh,
}

impl CrossEncoderActivation {
    /// The activation a model was saved with: `activation_fn` under `sentence_transformers` in
    /// `config.json` (or the pre-v4 `sbert_ce_default_activation_function`), else Sigmoid for
    /// one label and Identity for more, as `CrossEncoder.get_default_activation_fn`:
    /// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/cross_encoder/CrossEncoder.py#L276>
    fn for_model(config_json: &Path, config: &ModelConfig) -> Result<Self> {
        #[derive(Deserialize)]
        struct Settings {
            activation_fn: Option<String>,
        }
        #[derive(Deserialize)]
        struct CrossEncoderConfig {
            sentence_transformers: Option<Settings>,
            sbert_ce_default_activation_function: Option<String>,
        }
        let saved: CrossEncoderConfig = read_json(config_json)?;
        let path = saved
            .sentence_transformers
            .and_then(|s| s.activation_fn)
            .or(saved.sbert_ce_default_activation_function);
        // sentence-transformers imports only `torch.` paths unless remote code is trusted, and
        // falls back to the default for the others; we do the same.
        match path.filter(|p| p.starts_with("torch.")) {
            Some(path) => Self::from_torch_path(&path),
            None => Ok(Self::default_for(config)),
        }
    }

    /// Sigmoid for one label, Identity for more.
    fn default_for(config: &ModelConfig) -> Self {
        if config.num_labels() == 1 {
            Self::Sigmoid
        } else {
            Self::Identity
        }
    }

    /// `torch.nn.modules.activation.Sigmoid` and the like.
    fn from_torch_path(path: &str) -> Result<Self> {
        match path.rsplit('.').next() {
            Some("Sigmoid") => Ok(Self::Sigmoid),
            Some("Identity") => Ok(Self::Identity),
            Some("Tanh") => Ok(Self::Tanh),
            _ => Err(Error::InvalidConfig(format!(
                "the cross-encoder's activation_fn `{path}` is not supported: Sigmoid, Identity \
                 and Tanh are; choose one with RerankOptions::with_activation"
            ))),
        }
    }

    fn apply(self, logit: f32) -> f32 {
        match self {
            Self::Sigmoid => sigmoid(logit),
            Self::Identity => logit,
            Self::Tanh => logit.tanh(),
        }
    }
}

/// Options of one call, with `CrossEncoder.rank`'s defaults.
#[derive(Debug, Clone)]
pub struct RerankOptions {
    /// Documents to return, best first; `None` returns all.
    pub top_k: Option<usize>,
    /// Return each document's text with its score.
    pub return_documents: bool,
    /// Pairs per forward pass (32, as sentence-transformers).
    pub batch_size: usize,
    /// Cut pairs longer than `max_length`, longest text first (sentence-transformers always
    /// does). `max_length: None` is the model's: the tokenizer's `model_max_length`, at most
    /// `max_position_embeddings`, as `CrossEncoder.__init__` sets it.
    pub truncation: Truncation,
    /// Overrides the activation the model was saved with.
    pub activation: Option<CrossEncoderActivation>,
}

impl Default for RerankOptions {
    fn default() -> Self {
        Self {
            top_k: None,
            return_documents: false,
            batch_size: CROSS_ENCODER_BATCH_SIZE,
            truncation: Truncation::ON,
            activation: None,
        }
    }
}

impl RerankOptions {
    /// Return only the best `top_k` documents.
    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = Some(top_k);
        self
    }

    /// Return each document's text with its score.
    pub fn with_return_documents(mut self, return_documents: bool) -> Self {
        self.return_documents = return_documents;
        self
    }

    /// Score with this activation instead of the model's.
    pub fn with_activation(mut self, activation: CrossEncoderActivation) -> Self {
        self.activation = Some(activation);
        self
    }
}

impl TruncationOptions for RerankOptions {
    fn truncation_mut(&mut self) -> &mut Truncation {
        &mut self.truncation
    }
}

impl BatchOptions for RerankOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// One document of a ranking, as `CrossEncoder.rank` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedDocument {
    /// The document's index in the input.
    pub corpus_id: usize,
    /// Its relevance to the query, after the activation.
    pub score: f32,
    /// The document, when `return_documents` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A query and the documents to rank for it: one input of [`RerankPipeline::run`].
#[derive(Debug, Clone, Copy)]
pub struct RerankInput<'a> {
    /// The query.
    pub query: &'a str,
    /// The candidate documents.
    pub documents: &'a [&'a str],
}

/// A cross-encoder that scores (query, document) pairs and ranks documents by relevance.
#[derive(Debug, Clone)]
pub struct RerankPipeline {
    base: PipelineBase<AutoModelForSequenceClassification>,
    activation: CrossEncoderActivation,
    max_length: usize,
}

impl RerankPipeline {
    /// Load a cross-encoder (any sequence-classification checkpoint) from a Hub id or folder,
    /// with the activation it was saved with.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        let config_json = pretrained.source().require("config.json")?;
        let activation = CrossEncoderActivation::for_model(&config_json, pretrained.config())?;
        Ok(Self {
            activation,
            ..Self::from_parts(PipelineBase::load(&pretrained, options)?)?
        })
    }

    /// Wrap a model already loaded. The activation is the default for its number of labels
    /// (the one saved in `config.json` is only read by
    /// [`from_pretrained`](Self::from_pretrained)); [`RerankOptions::with_activation`]
    /// chooses another.
    pub fn from_parts(base: PipelineBase<AutoModelForSequenceClassification>) -> Result<Self> {
        let positions = base.config().max_position_embeddings();
        Ok(Self {
            activation: CrossEncoderActivation::default_for(base.config()),
            max_length: base
                .tokenizer()
                .model_max_length()
                .map_or(positions, |length| length.min(positions)),
            base,
        })
    }

    /// The activation scores get unless a call overrides it.
    pub fn activation(&self) -> CrossEncoderActivation {
        self.activation
    }

    /// Scores of (first, second) text pairs, one row of `num_labels` per pair, as
    /// `CrossEncoder.predict` computes them (a one-label model gives rows of one score).
    pub fn predict(
        &self,
        pairs: &[(&str, &str)],
        options: &RerankOptions,
    ) -> Result<Vec<Vec<f32>>> {
        let encodings = self.encode_pairs(pairs, options)?;
        let logits = self.logits(&encodings, options.batch_size)?;
        Ok(self.scores(logits, options))
    }

    /// Preprocess: each pair tokenized together, cut to the maximum length if asked.
    pub fn encode_pairs(
        &self,
        pairs: &[(&str, &str)],
        options: &RerankOptions,
    ) -> Result<Vec<Encoding>> {
        let truncation = Truncation {
            max_length: Some(options.truncation.max_length.unwrap_or(self.max_length)),
            ..options.truncation
        };
        let inputs = pairs
            .iter()
            .map(|&(first, second)| TextInput::Pair(first, second));
        encode_all(self.base.tokenizer(), inputs, &truncation.encode_options())
    }

    /// Forward, `batch_size` pairs at a time: the head's logits, one row per encoding.
    pub fn logits(&self, encodings: &[Encoding], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        self.base.classification_logits(encodings, batch_size)
    }

    /// Postprocess: the activation (the options', else the model's) on every logit.
    pub fn scores(&self, logits: Vec<Vec<f32>>, options: &RerankOptions) -> Vec<Vec<f32>> {
        let activation = options.activation.unwrap_or(self.activation);
        logits
            .into_iter()
            .map(|row| row.into_iter().map(|l| activation.apply(l)).collect())
            .collect()
    }

    /// An error unless the model gives one logit per pair, which ranking needs.
    pub fn check_ranks(&self) -> Result<()> {
        let labels = self.base.config().num_labels();
        if labels != 1 {
            return Err(Error::InvalidInput(format!(
                "ranking needs a cross-encoder with one output, this model has {labels} labels: \
                 score pairs with predict instead"
            )));
        }
        Ok(())
    }

    /// Rank `documents` by relevance to `query`, best first (ties keep input order), as
    /// `CrossEncoder.rank`. The model must give one logit per pair.
    pub fn rank<S: AsRef<str>>(
        &self,
        query: &str,
        documents: &[S],
        options: &RerankOptions,
    ) -> Result<Vec<RankedDocument>> {
        self.check_ranks()?;
        let pairs: Vec<(&str, &str)> = documents.iter().map(|d| (query, d.as_ref())).collect();
        let scores = self.predict(&pairs, options)?;
        ranked(&scores, documents, options)
    }
}

/// Postprocess of a ranking: the documents with their scores (one per row), best first (ties
/// keep input order), the best `top_k` of them.
pub fn ranked<S: AsRef<str>>(
    scores: &[Vec<f32>],
    documents: &[S],
    options: &RerankOptions,
) -> Result<Vec<RankedDocument>> {
    let mut ranked = scores
        .iter()
        .zip(documents)
        .enumerate()
        .map(|(corpus_id, (row, document))| {
            let score = *row.first().ok_or_else(|| {
                Error::InvalidInput("the model gave no score for a pair".to_string())
            })?;
            Ok(RankedDocument {
                corpus_id,
                score,
                text: options
                    .return_documents
                    .then(|| document.as_ref().to_string()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Stable, as Python's `sorted(..., reverse=True)`.
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranked.truncate(options.top_k.unwrap_or(usize::MAX));
    Ok(ranked)
}

impl Pipeline for RerankPipeline {
    type Kind = QueryDocuments;
    type Options = RerankOptions;
    /// The documents of one query, best first.
    type Output = Vec<RankedDocument>;
    type Model = AutoModelForSequenceClassification;

    fn run_inputs(
        &self,
        inputs: &[RerankInput<'_>],
        options: &RerankOptions,
    ) -> Result<Vec<Vec<RankedDocument>>> {
        inputs
            .iter()
            .map(|input| self.rank(input.query, input.documents, options))
            .collect()
    }

    fn base(&self) -> &PipelineBase<AutoModelForSequenceClassification> {
        &self.base
    }
}
