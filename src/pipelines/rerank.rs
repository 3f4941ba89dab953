//! Reranking with a cross-encoder: sentence-transformers' `CrossEncoder.rank` and `predict`.
//! <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/cross_encoder/CrossEncoder.py>
//!
//! A cross-encoder reads the query and a document together, as a text pair, and its
//! sequence-classification head gives a relevance logit; the activation the model was saved
//! with (Sigmoid by default for one label) turns it into the score.
//!
//! A Llama-family checkpoint is read as an LLM reranker, Qwen3-Reranker's way: the query and
//! document go into its prompt, and the score is the probability of "yes" against "no" at the
//! last position, `softmax([no, yes])[1]`, which is the sigmoid of `yes − no`; so its logit is
//! that difference, and its activation Sigmoid.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::kernels::host::sigmoid;
use crate::loading::json::read_json;
use crate::models::auto::{AutoModelForCausalLM, AutoModelForTextRanking};
use crate::models::config::ModelConfig;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::{
    encode_all, rows_to_host, BatchOptions, Pipeline, PipelineBase, QueryDocuments, Truncation,
    TruncationOptions,
};
use crate::tokenizer::{EncodeOptions, PaddingSide, TextInput, Tokenizer};

/// `CrossEncoder.predict`'s batch size.
const CROSS_ENCODER_BATCH_SIZE: usize = 32;

/// Qwen3-Reranker's prompt, instruction and length, from its model card's usage code:
/// <https://huggingface.co/Qwen/Qwen3-Reranker-0.6B#transformers-usage>. The prompt is a
/// chat of a system message that asks for "yes" or "no", the user's turn of instruction,
/// query and document, and an assistant's turn with an empty thought.
const YES_NO_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the \
    requirements based on the Query and the Instruct provided. Note that the answer can only \
    be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";
const YES_NO_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
/// The instruction a yes/no reranker's prompt holds unless the options give one.
pub const DEFAULT_RERANK_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";
/// The model card's `max_length`: prompt, instruction, query and document together, in
/// tokens; the model's own limit when that is less.
const YES_NO_MAX_LENGTH: usize = 8192;

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
    /// The task, for an LLM reranker's prompt (`None`: [`DEFAULT_RERANK_INSTRUCTION`]); a
    /// cross-encoder takes none.
    pub instruction: Option<String>,
}

impl Default for RerankOptions {
    fn default() -> Self {
        Self {
            top_k: None,
            return_documents: false,
            batch_size: CROSS_ENCODER_BATCH_SIZE,
            truncation: Truncation::ON,
            activation: None,
            instruction: None,
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

    /// State the task in an LLM reranker's prompt (Qwen3-Reranker's `instruction`).
    pub fn with_instruction(mut self, instruction: impl Into<String>) -> Self {
        self.instruction = Some(instruction.into());
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

/// What an LLM reranker needs besides its model: the ids of its two answers, and its prompt's
/// two fixed ends, tokenized once (the model card tokenizes them apart from the rest too).
#[derive(Debug, Clone)]
struct YesNoPrompt {
    yes: u32,
    no: u32,
    prefix: Encoding,
    suffix: Encoding,
}

impl YesNoPrompt {
    fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let answer = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "an LLM reranker answers \"yes\" or \"no\", but the tokenizer has no \
                     `{token}` token: this checkpoint is not a yes/no reranker"
                ))
            })
        };
        let fixed = EncodeOptions {
            add_special_tokens: false,
            ..EncodeOptions::default()
        };
        Ok(Self {
            yes: answer("yes")?,
            no: answer("no")?,
            prefix: tokenizer.encode(YES_NO_PREFIX, &fixed)?,
            suffix: tokenizer.encode(YES_NO_SUFFIX, &fixed)?,
        })
    }

    /// The prompt of one pair: its middle cut (when `truncate`) to what the prompt's ends leave
    /// of `length`, as the model card cuts it.
    fn encode(
        &self,
        tokenizer: &Tokenizer,
        instruction: &str,
        (query, document): (&str, &str),
        truncate: bool,
        length: usize,
    ) -> Result<Encoding> {
        let ends = self.prefix.len() + self.suffix.len();
        let room = length
            .checked_sub(ends)
            .filter(|&room| room > 0)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                "max_length {length} leaves no room for the query and document: the reranker's \
                 prompt takes {ends} tokens by itself"
            ))
            })?;
        let middle = format!("<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}");
        let options = EncodeOptions {
            truncation: truncate,
            max_length: Some(room),
            ..EncodeOptions::default()
        };
        let middle = tokenizer.encode(middle.as_str(), &options)?;
        Ok(Encoding::merge(
            [self.prefix.clone(), middle, self.suffix.clone()],
            false,
        ))
    }

    /// `yes − no` from the last position's logits of each row.
    fn logits(
        &self,
        model: &AutoModelForCausalLM,
        input: &crate::ModelInput,
    ) -> Result<Vec<Vec<f32>>> {
        let last = model.forward_last(&input.input_ids, input.attention_mask.as_ref(), None)?;
        rows_to_host(&last)?
            .into_iter()
            .map(
                |row| match (row.get(self.yes as usize), row.get(self.no as usize)) {
                    (Some(yes), Some(no)) => Ok(vec![yes - no]),
                    _ => Err(Error::InvalidConfig(format!(
                        "the tokenizer's \"yes\" and \"no\" ({} and {}) are past the model's \
                     vocabulary of {}: the tokenizer does not belong to this model",
                        self.yes,
                        self.no,
                        row.len()
                    ))),
                },
            )
            .collect()
    }
}

/// A reranker that scores (query, document) pairs and ranks documents by relevance: a
/// cross-encoder, or an LLM reranker (see the module's documentation).
#[derive(Debug, Clone)]
pub struct RerankPipeline {
    base: PipelineBase<AutoModelForTextRanking>,
    activation: CrossEncoderActivation,
    max_length: usize,
    /// `Some` for an LLM reranker (boxed: two encodings, which the other pipelines lack).
    yes_no: Option<Box<YesNoPrompt>>,
}

impl RerankPipeline {
    /// Load a reranker from a Hub id or folder: any sequence-classification checkpoint, with
    /// the activation it was saved with, or a Llama-family one as an LLM reranker.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open_with(model, options)?;
        let pipeline = Self::from_parts(PipelineBase::load(&pretrained, options)?)?;
        if pipeline.yes_no.is_some() {
            return Ok(pipeline);
        }
        let config_json = pretrained.source().require("config.json")?;
        let activation = CrossEncoderActivation::for_model(&config_json, pretrained.config())?;
        Ok(Self {
            activation,
            ..pipeline
        })
    }

    /// Wrap a model already loaded. A cross-encoder's activation is the default for its
    /// number of labels (the one saved in `config.json` is only read by
    /// [`from_pretrained`](Self::from_pretrained)); [`RerankOptions::with_activation`]
    /// chooses another.
    pub fn from_parts(base: PipelineBase<AutoModelForTextRanking>) -> Result<Self> {
        let max_length = base.max_input_length();
        let (activation, max_length, yes_no) = match base.model() {
            AutoModelForTextRanking::CrossEncoder(_) => (
                CrossEncoderActivation::default_for(base.config()),
                max_length,
                None,
            ),
            AutoModelForTextRanking::YesNo(_) => (
                CrossEncoderActivation::Sigmoid,
                max_length.min(YES_NO_MAX_LENGTH),
                Some(Box::new(YesNoPrompt::new(base.tokenizer())?)),
            ),
        };
        Ok(Self {
            activation,
            max_length,
            yes_no,
            base,
        })
    }

    /// The activation scores get unless a call overrides it.
    pub fn activation(&self) -> CrossEncoderActivation {
        self.activation
    }

    /// Whether this is an LLM reranker (scores from "yes" against "no").
    pub fn is_yes_no(&self) -> bool {
        self.yes_no.is_some()
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

    /// Preprocess: each pair tokenized together, cut to the maximum length if asked; for an
    /// LLM reranker, each pair's prompt.
    pub fn encode_pairs(
        &self,
        pairs: &[(&str, &str)],
        options: &RerankOptions,
    ) -> Result<Vec<Encoding>> {
        let tokenizer = self.base.tokenizer();
        let Some(prompt) = &self.yes_no else {
            if options.instruction.is_some() {
                return Err(Error::InvalidInput(
                    "an instruction is for an LLM reranker's prompt (Qwen3-Reranker); this model \
                     is a cross-encoder, which takes none: leave it out"
                        .to_string(),
                ));
            }
            let inputs = pairs
                .iter()
                .map(|&(first, second)| TextInput::Pair(first, second));
            let truncation = options.truncation.or_length(self.max_length);
            return encode_all(tokenizer, inputs, &truncation.encode_options());
        };
        let length = options.truncation.max_length.unwrap_or(self.max_length);
        let instruction = options
            .instruction
            .as_deref()
            .unwrap_or(DEFAULT_RERANK_INSTRUCTION);
        pairs
            .iter()
            .map(|&pair| {
                prompt.encode(
                    tokenizer,
                    instruction,
                    pair,
                    options.truncation.enabled,
                    length,
                )
            })
            .collect()
    }

    /// Forward, `batch_size` pairs at a time: one row of logits per encoding (the head's, or
    /// an LLM reranker's `yes − no`).
    pub fn logits(&self, encodings: &[Encoding], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        match (self.base.model(), &self.yes_no) {
            (AutoModelForTextRanking::CrossEncoder(classifier), _) => self
                .base
                .classification_logits(classifier, encodings, batch_size),
            // Left padding: the last position is then every row's last token, and positions
            // are counted from the mask, so each row is as it is alone.
            (AutoModelForTextRanking::YesNo(model), Some(prompt)) => self
                .base
                .forward_in_buckets_padded(encodings, batch_size, PaddingSide::Left, |_, input| {
                    prompt.logits(model, &input)
                }),
            (AutoModelForTextRanking::YesNo(_), None) => Err(Error::InvalidInput(
                "an LLM reranker was built without its prompt: load it with \
                 RerankPipeline::from_pretrained or from_parts"
                    .to_string(),
            )),
        }
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
        if self.yes_no.is_some() {
            return Ok(());
        }
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
    type Model = AutoModelForTextRanking;

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

    fn base(&self) -> &PipelineBase<AutoModelForTextRanking> {
        &self.base
    }
}
