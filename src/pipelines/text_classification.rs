//! Text classification (sentiment and the like): transformers' `TextClassificationPipeline`.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pipelines/text_classification.py>

use candle_core::Device;
use serde::Serialize;

use crate::auto::AutoModelForSequenceClassification;
use crate::config::{Labels, ModelConfig};
use crate::error::Result;
use crate::host::{sigmoid, softmax};
use crate::pipelines::{batch_input, encode_all, in_batches, rows_to_host, DEFAULT_BATCH_SIZE};
use crate::pretrained::{LoadOptions, Pretrained};
use crate::tokenizer::{EncodeOptions, TextInput, Tokenizer};

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    Softmax,
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
    pub label: String,
    pub score: f32,
}

/// Options of one call.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Best classes to return per input; `None` returns all, best first.
    pub top_k: Option<usize>,
    /// Overrides the score function the config implies.
    pub function_to_apply: Option<ScoreFunction>,
    /// Cut inputs longer than the model allows instead of failing.
    pub truncation: bool,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        Self {
            top_k: Some(1),
            function_to_apply: None,
            truncation: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TextClassificationPipeline {
    model: AutoModelForSequenceClassification,
    tokenizer: Tokenizer,
    labels: Labels,
    function: ScoreFunction,
    device: Device,
    pub batch_size: usize,
}

impl TextClassificationPipeline {
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        Ok(Self {
            model: pretrained.load::<AutoModelForSequenceClassification>(options)?,
            tokenizer: pretrained.tokenizer()?,
            labels: pretrained.config().id2label().clone(),
            function: ScoreFunction::for_config(pretrained.config()),
            device: options.device.clone(),
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Classify texts or text pairs; one list of classes per input, best first.
    pub fn classify(
        &self,
        inputs: &[TextInput],
        options: &ClassifyOptions,
    ) -> Result<Vec<Vec<LabelScore>>> {
        // Preprocess.
        let encode = EncodeOptions {
            truncation: options.truncation,
            ..EncodeOptions::default()
        };
        let (encodings, lengths) = encode_all(&self.tokenizer, inputs.iter().copied(), &encode)?;
        // Forward, in batches.
        let logits = in_batches(&lengths, self.batch_size, |indices| {
            let input = batch_input(&self.tokenizer, &encodings, indices, &self.device)?;
            rows_to_host(&self.model.forward(&input)?)
        })?;
        // Postprocess.
        let function = options.function_to_apply.unwrap_or(self.function);
        Ok(logits
            .iter()
            .map(|row| self.postprocess(&function.apply(row), options.top_k))
            .collect())
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
