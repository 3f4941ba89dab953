//! `ferroformers train`: fine-tune a BERT-family model on a JSON Lines or CSV file, as
//! transformers' `Trainer` (and sentence-transformers' trainers) would, and save it where
//! transformers and sentence-transformers load it.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use ferroformers::models::config::Labels;
use ferroformers::models::pooling::Pooling;
use ferroformers::training::data::{
    read_anchor_positive, read_scored_pairs, read_text_classification, read_token_classification,
    LabelKind,
};
use ferroformers::training::{
    AdamWSettings, Dataset, EmbeddingLoss, Problem, Progress, TrainableModel, TrainedPart, Trainer,
    TrainingSettings, TrainingTask,
};
use ferroformers::{DType, Pretrained, WeightType};
use indicatif::{ProgressBar, ProgressStyle};

use super::json_line;
use crate::cli::Common;
use crate::error::Result;

/// What to train for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TaskArg {
    /// `text`[/`text_pair`] and a class `label`: single-label classification.
    Classification,
    /// `text` and a list of classes in `label`.
    MultiLabel,
    /// `text` and a number in `label`: a one-output head, squared error.
    Regression,
    /// `tokens` and `ner_tags`.
    TokenClassification,
    /// Sentence embeddings: `anchor`/`positive`[/`negative`] (MultipleNegativesRankingLoss)
    /// or `sentence1`/`sentence2`/`score` (CoSENT or cosine similarity).
    Embeddings,
    /// A reranker: `sentence1` (query), `sentence2` (document), `label` or `score` 0..1.
    CrossEncoder,
}

/// The embedding losses of sentence-transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LossArg {
    /// MultipleNegativesRankingLoss, in-batch negatives (anchor/positive data).
    Mnrl,
    /// CoSENTLoss (scored pairs).
    Cosent,
    /// CosineSimilarityLoss (scored pairs).
    Cosine,
}

/// The options of `train` besides the model's.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The task, which picks the head, the loss and the columns read.
    #[arg(long, value_enum)]
    task: TaskArg,
    /// The training set: JSON Lines (.jsonl) or CSV (.csv) with the Hub's column names.
    #[arg(long)]
    train: PathBuf,
    /// The evaluation set; without it, --eval-fraction of the training set is held out.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// The share of the training set held out for evaluation when there is no --eval (0: none).
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,
    /// Where checkpoints and the final model go.
    #[arg(short, long)]
    output: PathBuf,
    /// Continue the run saved in this checkpoint folder (`OUTPUT/checkpoint-<step>`).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Class names in id order, when the file's labels are ids (default LABEL_0, LABEL_1, ...).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Train the head only, the encoder frozen.
    #[arg(long)]
    head_only: bool,
    /// The embedding loss (default: mnrl for anchor/positive files, cosent for scored pairs).
    #[arg(long, value_enum)]
    loss: Option<LossArg>,
    /// Pooling of an embedding model.
    #[arg(long, value_enum, default_value_t = PoolingArg::Mean)]
    pooling: PoolingArg,
    #[arg(long, default_value_t = 3)]
    epochs: u32,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    gradient_accumulation_steps: usize,
    #[arg(long, default_value_t = 5e-5)]
    learning_rate: f64,
    /// Decoupled weight decay of the weight matrices (never biases or norms).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// The share of steps that warm the learning rate up from 0.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Fixes the split, the shuffling, the new head and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Inputs are cut to this many tokens.
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// Stop after this many epochs without a better evaluation.
    #[arg(long)]
    early_stopping_patience: Option<u32>,
    /// One JSON line per epoch instead of text.
    #[arg(long)]
    json: bool,
}

/// sentence-transformers' pooling modes that an encoder trains with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PoolingArg {
    Mean,
    Cls,
    Max,
}

/// `ferroformers train`.
pub fn train(common: &Common, args: TrainArgs, out: &mut impl Write) -> Result<()> {
    let save_dtype = match common.weight_type() {
        WeightType::F32 => DType::F32,
        WeightType::Bf16 => DType::BF16,
        other => {
            return Err(ferroformers::Error::InvalidInput(format!(
            "training runs in f32; --dtype picks the saved weights' type, f32 or bf16, not {other}"
        ))
            .into())
        }
    };
    let (train, eval) = read_datasets(&args)?;
    let task = training_task(&args, &train)?;
    let source = args
        .resume
        .as_deref()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(common.model()));
    let options = common.load_options()?;
    let pretrained = Pretrained::open(source.to_str().unwrap_or_default(), &options.hub)?;
    let part = if args.head_only {
        TrainedPart::HeadOnly
    } else {
        TrainedPart::Everything
    };
    let model = TrainableModel::load(&pretrained, task, part, args.seed)?;
    let tokenizer = pretrained.tokenizer()?;
    let mut trainer = match &args.resume {
        Some(checkpoint) => Trainer::resume(model, tokenizer, checkpoint)?,
        None => Trainer::new(model, tokenizer, settings(&args))?,
    };
    let bar = progress_bar(common.quiet() || args.json);
    let output = Some(args.output.as_path());
    trainer.set_save_dtype(save_dtype);
    trainer.train(&train, eval.as_ref(), output, &mut |p: &Progress| {
        bar.set_length(p.total_steps);
        bar.set_position(p.step);
        bar.set_message(format!(
            "epoch {} loss {:.4} lr {:.2e} {:.1} ex/s",
            p.epoch, p.loss, p.learning_rate, p.examples_per_second
        ));
    })?;
    bar.finish_and_clear();
    for record in &trainer.state().history {
        if args.json {
            json_line(out, record)?;
            continue;
        }
        let evaluation = match &record.evaluation {
            Some(e) => {
                let others: Vec<String> = e
                    .metrics
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                format!(", eval loss {:.4}, {}", e.loss, others.join(", "))
            }
            None => String::new(),
        };
        writeln!(
            out,
            "epoch {}: train loss {:.4}{evaluation} ({:.1} examples/s)",
            record.epoch, record.train_loss, record.examples_per_second
        )?;
    }
    if !args.json {
        let best = trainer
            .state()
            .best_epoch
            .map(|e| format!(" (best epoch {e})"))
            .unwrap_or_default();
        writeln!(out, "saved to {}{best}", args.output.display())?;
    }
    Ok(())
}

fn settings(args: &TrainArgs) -> TrainingSettings {
    TrainingSettings {
        epochs: args.epochs,
        batch_size: args.batch_size,
        gradient_accumulation_steps: args.gradient_accumulation_steps,
        optimizer: AdamWSettings {
            learning_rate: args.learning_rate,
            weight_decay: args.weight_decay,
            ..AdamWSettings::default()
        },
        warmup_ratio: args.warmup_ratio,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        max_length: args.max_length,
        early_stopping_patience: args.early_stopping_patience,
    }
}

fn label_names(args: &TrainArgs) -> Option<Labels> {
    (!args.labels.is_empty()).then(|| Labels::from_names(args.labels.clone()))
}

/// The training set, and the evaluation set (the --eval file, else a held-out share).
fn read_datasets(args: &TrainArgs) -> Result<(Dataset, Option<Dataset>)> {
    let names = label_names(args);
    let read = |path: &Path, names: Option<&Labels>| -> Result<Dataset> {
        Ok(match args.task {
            TaskArg::Classification => Dataset::TextClassification(read_text_classification(
                path,
                LabelKind::SingleLabel,
                names,
            )?),
            TaskArg::MultiLabel => Dataset::TextClassification(read_text_classification(
                path,
                LabelKind::MultiLabel,
                names,
            )?),
            TaskArg::Regression => Dataset::TextClassification(read_text_classification(
                path,
                LabelKind::Regression,
                None,
            )?),
            TaskArg::TokenClassification => {
                Dataset::TokenClassification(read_token_classification(path, names)?)
            }
            TaskArg::CrossEncoder => Dataset::ScoredPairs(read_scored_pairs(path)?),
            TaskArg::Embeddings => match args.loss {
                Some(LossArg::Cosent | LossArg::Cosine) => {
                    Dataset::ScoredPairs(read_scored_pairs(path)?)
                }
                Some(LossArg::Mnrl) => Dataset::AnchorPositive(read_anchor_positive(path)?),
                // The columns decide: anchor/positive files train with MNRL.
                None => match read_anchor_positive(path) {
                    Ok(examples) => Dataset::AnchorPositive(examples),
                    Err(_) => Dataset::ScoredPairs(read_scored_pairs(path)?),
                },
            },
        })
    };
    let train = read(&args.train, names.as_ref())?;
    if let Some(eval) = &args.eval {
        // The evaluation labels take the training set's ids.
        let names = class_names(&train).or(names);
        return Ok((train, Some(read(eval, names.as_ref())?)));
    }
    if args.eval_fraction <= 0.0 {
        return Ok((train, None));
    }
    let (train, eval) = train.train_test_split(args.eval_fraction, args.seed)?;
    Ok((train, Some(eval)))
}

fn class_names(data: &Dataset) -> Option<Labels> {
    match data {
        Dataset::TextClassification(d) => Some(d.labels.clone()),
        Dataset::TokenClassification(d) => Some(d.tags.clone()),
        _ => None,
    }
}

fn training_task(args: &TrainArgs, train: &Dataset) -> Result<TrainingTask> {
    let names = |labels: &Labels| labels.names().to_vec();
    Ok(match (args.task, train) {
        (TaskArg::TokenClassification, Dataset::TokenClassification(d)) => {
            TrainingTask::TokenClassification {
                labels: names(&d.tags),
            }
        }
        (TaskArg::CrossEncoder, _) => TrainingTask::CrossEncoder,
        (TaskArg::Embeddings, data) => TrainingTask::SentenceEmbeddings {
            pooling: match args.pooling {
                PoolingArg::Mean => Pooling::Mean,
                PoolingArg::Cls => Pooling::Cls,
                PoolingArg::Max => Pooling::Max,
            },
            loss: match (args.loss, data) {
                (Some(LossArg::Cosine), _) => EmbeddingLoss::CosineSimilarity,
                (Some(LossArg::Cosent), _) | (None, Dataset::ScoredPairs(_)) => {
                    EmbeddingLoss::cosent()
                }
                _ => EmbeddingLoss::multiple_negatives_ranking(),
            },
        },
        (task, Dataset::TextClassification(d)) => TrainingTask::SequenceClassification {
            labels: names(&d.labels),
            problem: match task {
                TaskArg::MultiLabel => Problem::MultiLabel,
                TaskArg::Regression => Problem::Regression,
                _ => Problem::SingleLabel,
            },
        },
        (_, _) => {
            return Err(ferroformers::Error::InvalidInput(
                "the training file does not have the task's columns".into(),
            )
            .into())
        }
    })
}

fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
