//! A BERT-family model with the head of a training task, over parameters that train.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::loading::hub::ModelSource;
use crate::loading::json::read_json;
use crate::models::pooling::Pooling;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::models::weight_type::WeightType;
use crate::tokenizer::ModelInput;
use crate::training::encoder::{Dense, Dropout, DropoutRates, Encoder, EncoderShape, Family};
use crate::training::losses::{
    binary_cross_entropy_with_logits, cross_entropy, cross_entropy_ignoring, mean_squared_error,
    EmbeddingLoss,
};
use crate::training::parameters::{ParameterReader, Parameters};

/// What a classification head predicts, transformers' `problem_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// One class per input: cross-entropy.
    SingleLabel,
    /// Any number of classes per input: binary cross-entropy per class.
    MultiLabel,
    /// A number per input (one output): squared error.
    Regression,
}

impl Problem {
    /// transformers' `problem_type` string.
    pub fn name(&self) -> &'static str {
        match self {
            Problem::SingleLabel => "single_label_classification",
            Problem::MultiLabel => "multi_label_classification",
            Problem::Regression => "regression",
        }
    }
}

/// What to train the model for, and so which head it gets and which loss.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingTask {
    /// `*ForSequenceClassification` over `labels` (one output for regression).
    SequenceClassification {
        /// Class names, in id order (`id2label`).
        labels: Vec<String>,
        /// Single-label, multi-label or regression.
        problem: Problem,
    },
    /// `*ForTokenClassification` over `labels`.
    TokenClassification {
        /// Tag names, in id order.
        labels: Vec<String>,
    },
    /// A sentence-transformers model: the encoder, pooling, and an embedding loss.
    SentenceEmbeddings {
        /// How token embeddings become one vector.
        pooling: Pooling,
        /// The loss of the embeddings.
        loss: EmbeddingLoss,
    },
    /// A cross-encoder: sequence classification with one output, trained with binary
    /// cross-entropy on 0/1 (or graded) relevance, as sentence-transformers' `CrossEncoder`
    /// with `BinaryCrossEntropyLoss`.
    CrossEncoder,
}

/// Which parameters train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainedPart {
    /// Every parameter: full fine-tuning.
    #[default]
    Everything,
    /// The task head alone, the encoder frozen. An embedding model has no head, so this is
    /// an error for it.
    HeadOnly,
}

/// A batch for [`TrainableModel::loss`].
#[derive(Debug, Clone)]
pub enum TrainingBatch {
    /// One text (or text pair) per row, with a target per row (per token for token
    /// classification).
    Texts {
        /// The tokenized, padded inputs.
        input: ModelInput,
        /// Class ids (rows) as u32, multi-hot (rows, labels) or scores (rows) as f32, or token
        /// tags (rows, seq) as i64 with -100 where a token does not count.
        targets: Tensor,
    },
    /// Columns of texts for an embedding loss: anchor, positive[, negative], or the two
    /// sentences of scored pairs.
    Columns {
        /// One tokenized input per column, the same rows in each.
        columns: Vec<ModelInput>,
        /// A gold score per row, for the scored-pair losses.
        scores: Option<Tensor>,
    },
}

/// The task head on top of the encoder, named as the checkpoint names it.
#[derive(Debug, Clone)]
enum Head {
    /// BERT: the pooler (dense + tanh on the first token), then `classifier`.
    BertSequence { pooler: Dense, classifier: Dense },
    /// RoBERTa: `classifier.dense` + tanh on the first token, then `classifier.out_proj`.
    RobertaSequence { dense: Dense, out_proj: Dense },
    /// DistilBERT: `pre_classifier` + ReLU on the first token, then `classifier`.
    DistilBertSequence {
        pre_classifier: Dense,
        classifier: Dense,
    },
    /// A classifier on every token.
    Tokens { classifier: Dense },
    /// No parameters: pooling.
    Pooling(Pooling),
}

/// A BERT-family model with a task head, whose parameters train.
pub struct TrainableModel {
    task: TrainingTask,
    source: ModelSource,
    config: serde_json::Value,
    encoder: Encoder,
    head: Head,
    parameters: Parameters,
    initialised: Vec<String>,
}

impl TrainableModel {
    /// Load `model` (a Hub id or a folder) for `task`: the encoder from its checkpoint, the
    /// head too when the checkpoint has one of the right shape, else initialised from `seed`
    /// as transformers initialises a new head.
    pub fn from_pretrained(
        model: &str,
        task: TrainingTask,
        part: TrainedPart,
        options: &LoadOptions,
        seed: u64,
    ) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        Self::load(&pretrained, task, part, seed)
    }

    /// [`TrainableModel::from_pretrained`] from an opened model.
    pub fn load(
        pretrained: &Pretrained,
        task: TrainingTask,
        part: TrainedPart,
        seed: u64,
    ) -> Result<Self> {
        let config: serde_json::Value = read_json(&pretrained.source().require("config.json")?)?;
        let shape = EncoderShape::of(pretrained.config(), &config)?;
        let rates = DropoutRates::from_config(shape.family, &config);
        let weights = pretrained.weights(WeightType::F32, &Device::Cpu)?;
        let probe = "embeddings.word_embeddings.weight";
        let mut params = ParameterReader::new(&weights, shape.prefix, probe, seed);
        let base = match task {
            TrainingTask::SentenceEmbeddings { .. } => "",
            _ => shape.prefix,
        };
        if part == TrainedPart::HeadOnly {
            if base.is_empty() {
                return Err(Error::InvalidInput(
                    "a sentence-embedding model has no head to train alone; train it fully".into(),
                ));
            }
            params.freeze_under(base);
        }
        let encoder = Encoder::read(&mut params, base, shape, rates)?;
        let head = Head::read(&mut params, &encoder.shape, &task)?;
        let (parameters, initialised) = params.finish();
        if !initialised.is_empty() {
            tracing::info!(
                parameters = ?initialised,
                "newly initialised: the checkpoint has no weights for this head; train it"
            );
        }
        Ok(Self {
            task,
            source: pretrained.source().clone(),
            config,
            encoder,
            head,
            parameters,
            initialised,
        })
    }

    /// The model saved in `folder` (a checkpoint of a run), for the task of `like`.
    pub(crate) fn reload(like: &TrainableModel, folder: &std::path::Path) -> Result<Self> {
        let source = folder.to_str().ok_or_else(|| {
            Error::InvalidInput(format!("{} is not a UTF-8 path", folder.display()))
        })?;
        let pretrained = Pretrained::open(source, &crate::loading::hub::HubOptions::default())?;
        Self::load(&pretrained, like.task.clone(), TrainedPart::Everything, 0)
    }

    /// The task it trains for.
    pub fn task(&self) -> &TrainingTask {
        &self.task
    }

    /// Its parameters, under transformers' names.
    pub fn parameters(&self) -> &Parameters {
        &self.parameters
    }

    /// The names of the parameters that the checkpoint lacked and were initialised.
    pub fn initialised(&self) -> &[String] {
        &self.initialised
    }

    /// The `config.json` it was loaded with.
    pub(crate) fn config_json(&self) -> &serde_json::Value {
        &self.config
    }

    /// Where it was loaded from (its tokenizer files are there).
    pub(crate) fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The width of the hidden states (and of pooled embeddings).
    pub fn hidden_size(&self) -> usize {
        self.encoder.shape.hidden
    }

    /// The longest input the position table allows: RoBERTa's positions start after
    /// `pad_token_id`, so 514 rows give 512.
    pub fn max_sequence_length(&self) -> usize {
        match self.encoder.shape.family {
            Family::Roberta => self
                .encoder
                .shape
                .positions
                .saturating_sub(self.encoder.shape.pad_token_id + 1),
            Family::Bert | Family::DistilBert => self.encoder.shape.positions,
        }
    }

    /// The head's output for `input`: logits (rows, labels), (rows, seq, labels) for token
    /// classification, or embeddings (rows, dim).
    pub fn forward(&self, input: &ModelInput, dropout: &Dropout) -> Result<Tensor> {
        let hidden = self.encoder.forward(input, dropout)?;
        let rates = self.encoder.rates;
        let first = || hidden.narrow(1, 0, 1).and_then(|t| t.squeeze(1));
        match &self.head {
            Head::BertSequence { pooler, classifier } => {
                let pooled = pooler.forward(&first()?)?.tanh()?;
                classifier.forward(&dropout.apply(&pooled, rates.classifier)?)
            }
            Head::RobertaSequence { dense, out_proj } => {
                let x = dropout.apply(&first()?, rates.classifier)?;
                let x = dropout.apply(&dense.forward(&x)?.tanh()?, rates.classifier)?;
                out_proj.forward(&x)
            }
            Head::DistilBertSequence {
                pre_classifier,
                classifier,
            } => {
                let x = crate::training::ops::activation(
                    crate::models::layers::Activation::Relu,
                    &pre_classifier.forward(&first()?)?,
                )?;
                classifier.forward(&dropout.apply(&x, rates.classifier)?)
            }
            Head::Tokens { classifier } => {
                // BERT and RoBERTa use `classifier_dropout` (else the hidden rate) here;
                // DistilBERT its `dropout`.
                let p = match self.encoder.shape.family {
                    Family::DistilBert => rates.hidden,
                    Family::Bert | Family::Roberta => rates.classifier,
                };
                classifier.forward(&dropout.apply(&hidden, p)?)
            }
            Head::Pooling(pooling) => {
                let mask = match &input.attention_mask {
                    Some(mask) => mask.clone(),
                    None => Tensor::ones(input.input_ids.dims2()?, DType::F32, &Device::Cpu)?,
                };
                pooling.pool(&hidden, &mask)
            }
        }
    }

    /// The task's loss on `batch`, a scalar whose [`TrainableModel::backward`] gives every
    /// trainable parameter its gradient.
    pub fn loss(&self, batch: &TrainingBatch, dropout: &Dropout) -> Result<Tensor> {
        let outputs = self.outputs(batch, dropout)?;
        self.loss_of(&outputs, batch)
    }

    /// The gradients of `loss` (from this model's forward pass) for every trainable
    /// parameter: candle's backward pass, with the encoder layers' parameters' gradients
    /// added, which the layers' fused ops hand over beside it. `loss.backward()` alone
    /// misses them, and [`Gradients::add`](super::Gradients::add) then fails.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut store = loss.backward()?;
        self.parameters.layer_gradients().move_into(&mut store)?;
        Ok(store)
    }

    /// The head's outputs on `batch`: its logits, or one embedding matrix per column.
    pub fn outputs(&self, batch: &TrainingBatch, dropout: &Dropout) -> Result<Vec<Tensor>> {
        match batch {
            TrainingBatch::Texts { input, .. } => Ok(vec![self.forward(input, dropout)?]),
            TrainingBatch::Columns { columns, .. } => columns
                .iter()
                .map(|input| self.forward(input, dropout))
                .collect(),
        }
    }

    /// The task's loss of `outputs` (from [`TrainableModel::outputs`]) against `batch`'s targets.
    pub fn loss_of(&self, outputs: &[Tensor], batch: &TrainingBatch) -> Result<Tensor> {
        let mismatch = || {
            Error::InvalidInput(
                "this batch is not of the model's task: texts with targets for \
                 classification, columns of texts for sentence embeddings"
                    .into(),
            )
        };
        match (batch, &self.task, outputs) {
            (TrainingBatch::Texts { targets, .. }, task, [logits]) => match task {
                TrainingTask::SequenceClassification { problem, .. } => match problem {
                    Problem::SingleLabel => cross_entropy(logits, targets),
                    Problem::MultiLabel => {
                        binary_cross_entropy_with_logits(logits, &targets.to_dtype(DType::F32)?)
                    }
                    Problem::Regression => mean_squared_error(
                        &logits.squeeze(D::Minus1)?,
                        &targets.to_dtype(DType::F32)?,
                    ),
                },
                TrainingTask::TokenClassification { .. } => {
                    let labels = logits.dim(D::Minus1)?;
                    cross_entropy_ignoring(&logits.reshape(((), labels))?, targets)
                }
                TrainingTask::CrossEncoder => binary_cross_entropy_with_logits(
                    &logits.flatten_all()?,
                    &targets.to_dtype(DType::F32)?,
                ),
                TrainingTask::SentenceEmbeddings { .. } => Err(mismatch()),
            },
            (
                TrainingBatch::Columns { scores, .. },
                TrainingTask::SentenceEmbeddings { loss, .. },
                embeddings,
            ) => loss.compute(embeddings, scores.as_ref()),
            _ => Err(mismatch()),
        }
    }
}

impl Head {
    fn read(
        params: &mut ParameterReader,
        shape: &EncoderShape,
        task: &TrainingTask,
    ) -> Result<Self> {
        let h = shape.hidden;
        let std = shape.initializer_range;
        let outputs = match task {
            TrainingTask::SequenceClassification { labels, problem } => match problem {
                Problem::Regression => 1,
                _ => labels.len(),
            },
            TrainingTask::TokenClassification { labels } => labels.len(),
            TrainingTask::CrossEncoder => 1,
            TrainingTask::SentenceEmbeddings { pooling, .. } => {
                if !matches!(pooling, Pooling::Mean | Pooling::Cls | Pooling::Max) {
                    return Err(Error::InvalidInput(format!(
                        "{pooling:?} pooling is for decoders; an encoder trains with mean, cls or max"
                    )));
                }
                if shape.family != Family::DistilBert {
                    params.carry("pooler.dense.weight", &[h, h])?;
                    params.carry("pooler.dense.bias", &[h])?;
                }
                return Ok(Head::Pooling(*pooling));
            }
        };
        if outputs == 0 {
            return Err(Error::InvalidInput(
                "a classification head needs at least one label".into(),
            ));
        }
        let mut dense =
            |name: &str, inputs, outputs| Dense::read_or_init(params, name, inputs, outputs, std);
        Ok(match (task, shape.family) {
            (TrainingTask::TokenClassification { .. }, _) => Head::Tokens {
                classifier: dense("classifier", h, outputs)?,
            },
            (_, Family::Bert) => Head::BertSequence {
                pooler: dense("bert.pooler.dense", h, h)?,
                classifier: dense("classifier", h, outputs)?,
            },
            (_, Family::Roberta) => Head::RobertaSequence {
                dense: dense("classifier.dense", h, h)?,
                out_proj: dense("classifier.out_proj", h, outputs)?,
            },
            (_, Family::DistilBert) => Head::DistilBertSequence {
                pre_classifier: dense("pre_classifier", h, h)?,
                classifier: dense("classifier", h, outputs)?,
            },
        })
    }
}
