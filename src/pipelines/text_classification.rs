//! Text classification (sentiment and the like): transformers' `TextClassificationPipeline`.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pipelines/text_classification.py>

use serde::Serialize;
use tokenizers::Encoding;

use crate::error::Result;
use crate::kernels::host::{sigmoid, softmax};
use crate::models::auto::AutoModelForSequenceClassification;
use crate::models::config::{Labels, ModelConfig};
use crate::models::pretrained::LoadOptions;
use crate::pipelines::{
    encode_all, BatchOptions, Pipeline, PipelineBase, TextOrPair, Truncation, TruncationOptions,
    DEFAULT_BATCH_SIZE,
};
use crate::tokenizer::TextInput;

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    /// Probabilities over the classes.
    Softmax,
    /// An independent probability per class (multi-label, single-output heads).
    Sigmoid,
    /// The raw logits (regression heads).
    None,
}

impl ScoreFunction {
    /// transformers' choice: none for regression, sigmoid for multi-label or single-output
    /// heads, else softmax.
    fn for_config(config: &ModelConfig) -> Self {
        match config.problem_type() {
            Some("regression") => ScoreFunction::None,
            Some("multi_label_classification") => ScoreFunction::Sigmoid,
            _ if config.num_labels() == 1 => ScoreFunction::Sigmoid,
            _ => ScoreFunction::Softmax,
        }
    }

    fn apply(&self, logits: &[f32]) -> Vec<f32> {
        match self {
            ScoreFunction::Softmax => softmax(logits),
            ScoreFunction::Sigmoid => logits.iter().map(|&l| sigmoid(l)).collect(),
            ScoreFunction::None => logits.to_vec(),
        }
    }
}

/// One class and its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    /// The class name from the config's `id2label`.
    pub label: String,
    /// Its score after the score function.
    pub score: f32,
}

/// Settings of one call, as transformers' pipeline takes them.
#[derive(Debug, Clone)]
pub struct TextClassificationOptions {
    /// Best classes to return per input; `None` returns all, best first.
    pub top_k: Option<usize>,
    /// Overrides the score function the config implies.
    pub function_to_apply: Option<ScoreFunction>,
    /// Cut inputs longer than `max_length` instead of failing (transformers' default: off);
    /// `max_length: None` is the tokenizer's `model_max_length`.
    pub truncation: Truncation,
    /// Inputs per forward pass.
    pub batch_size: usize,
}

impl Default for TextClassificationOptions {
    fn default() -> Self {
        Self {
            top_k: Some(1),
            function_to_apply: None,
            truncation: Truncation::OFF,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

impl TextClassificationOptions {
    /// Return the `top_k` best classes (`None`: all of them).
    pub fn with_top_k(mut self, top_k: Option<usize>) -> Self {
        self.top_k = top_k;
        self
    }

    /// Use this score function instead of the one the config implies.
    pub fn with_function_to_apply(mut self, function: ScoreFunction) -> Self {
        self.function_to_apply = Some(function);
        self
    }
}

impl TruncationOptions for TextClassificationOptions {
    fn truncation_mut(&mut self) -> &mut Truncation {
        &mut self.truncation
    }
}

impl BatchOptions for TextClassificationOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// transformers' `TextClassificationPipeline` (and `sentiment-analysis`).
#[derive(Debug, Clone)]
pub struct TextClassificationPipeline {
    base: PipelineBase<AutoModelForSequenceClassification>,
    labels: Labels,
    function: ScoreFunction,
}

impl TextClassificationPipeline {
    /// Load `model` (a Hub id or a local folder).
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_parts(PipelineBase::from_pretrained(model, options)?)
    }

    /// Wrap a model already loaded; the labels and the score function come from its config.
    pub fn from_parts(base: PipelineBase<AutoModelForSequenceClassification>) -> Result<Self> {
        Ok(Self {
            labels: base.config().id2label().clone(),
            function: ScoreFunction::for_config(base.config()),
            base,
        })
    }

    /// Preprocess: each text or pair tokenized, cut to the maximum length if asked.
    pub fn encode(
        &self,
        inputs: &[TextInput<'_>],
        options: &TextClassificationOptions,
    ) -> Result<Vec<Encoding>> {
        let encode = options.truncation.encode_options();
        encode_all(self.base.tokenizer(), inputs.iter().copied(), &encode)
    }

    /// Forward, `batch_size` inputs at a time: the head's logits, one row per encoding.
    pub fn logits(&self, encodings: &[Encoding], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        self.base
            .classification_logits(self.base.model(), encodings, batch_size)
    }

    /// Postprocess: the score function (the options', else the config's), then the labels
    /// best first.
    pub fn labels(
        &self,
        logits: &[Vec<f32>],
        options: &TextClassificationOptions,
    ) -> Vec<Vec<LabelScore>> {
        let function = options.function_to_apply.unwrap_or(self.function);
        logits
            .iter()
            .map(|row| self.postprocess(&function.apply(row), options.top_k))
            .collect()
    }

    fn postprocess(&self, scores: &[f32], top_k: Option<usize>) -> Vec<LabelScore> {
        let mut labels: Vec<LabelScore> = scores
            .iter()
            .enumerate()
            .map(|(i, &score)| LabelScore {
                label: self.labels.name(i),
                score,
            })
            .collect();
        // Stable, so equal scores keep label order, as Python's sort does.
        labels.sort_by(|a, b| b.score.total_cmp(&a.score));
        labels.truncate(top_k.unwrap_or(usize::MAX));
        labels
    }
}

impl Pipeline for TextClassificationPipeline {
    type Kind = TextOrPair;
    type Options = TextClassificationOptions;
    /// The classes of one input, best first.
    type Output = Vec<LabelScore>;
    type Model = AutoModelForSequenceClassification;

    fn run_inputs(
        &self,
        inputs: &[TextInput<'_>],
        options: &TextClassificationOptions,
    ) -> Result<Vec<Vec<LabelScore>>> {
        let encodings = self.encode(inputs, options)?;
        let logits = self.logits(&encodings, options.batch_size)?;
        Ok(self.labels(&logits, options))
    }

    fn base(&self) -> &PipelineBase<AutoModelForSequenceClassification> {
        &self.base
    }
}
