//! Evaluation after each epoch: the loss on the evaluation set and the task's metrics, as
//! transformers' example scripts and sentence-transformers' evaluators report them. The
//! main metric (higher is better) picks the best checkpoint and drives early stopping.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::training::collate::{Collator, Dataset};
use crate::training::encoder::Dropout;
use crate::training::metrics;
use crate::training::model::{Problem, TrainableModel, TrainingBatch, TrainingTask};

/// The metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The mean loss over the evaluation set.
    pub loss: f64,
    /// Each metric by name (`accuracy`, `f1`, `spearman_cosine`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// The name of the metric that ranks checkpoints.
    pub main_metric: String,
    /// Its value; higher is better.
    pub main_value: f64,
}

/// What one batch contributes: its rows' predictions and references, by task.
#[derive(Default)]
struct Collected {
    classes: (Vec<usize>, Vec<usize>),
    multi_hot: (Vec<Vec<bool>>, Vec<Vec<bool>>),
    scores: (Vec<f32>, Vec<f32>),
    tags: (Vec<Vec<String>>, Vec<Vec<String>>),
    /// For anchor/positive data: the anchors' and positives' embeddings.
    pairs: (Vec<Vec<f32>>, Vec<Vec<f32>>),
}

/// Evaluate `model` on `data` in batches of `batch_size`, dropout off.
pub(crate) fn evaluate(
    model: &TrainableModel,
    collator: &Collator,
    data: &Dataset,
    batch_size: usize,
) -> Result<Evaluation> {
    if data.is_empty() {
        return Err(Error::InvalidInput("the evaluation set is empty".into()));
    }
    let order: Vec<usize> = (0..data.len()).collect();
    let (mut loss_sum, mut collected) = (0.0, Collected::default());
    for indices in order.chunks(batch_size.max(1)) {
        let batch = collator.batch(data, indices, model.task())?;
        let outputs = model.outputs(&batch, &Dropout::off())?;
        let outputs: Vec<Tensor> = outputs.iter().map(Tensor::detach).collect();
        loss_sum +=
            model.loss_of(&outputs, &batch)?.to_scalar::<f32>()? as f64 * indices.len() as f64;
        collect(model.task(), &outputs, &batch, &mut collected)?;
    }
    let mut metrics = BTreeMap::new();
    let main_metric = summarise(model.task(), &collected, &mut metrics)?;
    let loss = loss_sum / data.len() as f64;
    let main_value = match main_metric {
        "loss" => -loss,
        name => metrics[name],
    };
    Ok(Evaluation {
        loss,
        metrics,
        main_metric: main_metric.to_string(),
        main_value,
    })
}

fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    Ok(logits
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|c| c as usize)
        .collect())
}

fn collect(
    task: &TrainingTask,
    outputs: &[Tensor],
    batch: &TrainingBatch,
    into: &mut Collected,
) -> Result<()> {
    match (task, batch, outputs) {
        (
            TrainingTask::SequenceClassification { problem, .. },
            TrainingBatch::Texts { targets, .. },
            [logits],
        ) => match problem {
            Problem::SingleLabel => {
                into.classes.0.extend(argmax_rows(logits)?);
                into.classes
                    .1
                    .extend(targets.to_vec1::<u32>()?.into_iter().map(|c| c as usize));
            }
            Problem::MultiLabel => {
                // sigmoid(x) > 0.5 exactly when x > 0.
                let predicted: Vec<Vec<f32>> = logits.to_vec2()?;
                let actual: Vec<Vec<f32>> = targets.to_vec2()?;
                into.multi_hot.0.extend(
                    predicted
                        .iter()
                        .map(|r| r.iter().map(|&x| x > 0.0).collect()),
                );
                into.multi_hot
                    .1
                    .extend(actual.iter().map(|r| r.iter().map(|&y| y > 0.5).collect()));
            }
            Problem::Regression => {
                into.scores
                    .0
                    .extend(logits.flatten_all()?.to_vec1::<f32>()?);
                into.scores.1.extend(targets.to_vec1::<f32>()?);
            }
        },
        (TrainingTask::CrossEncoder, TrainingBatch::Texts { targets, .. }, [logits]) => {
            into.scores
                .0
                .extend(logits.flatten_all()?.to_vec1::<f32>()?);
            into.scores.1.extend(targets.to_vec1::<f32>()?);
        }
        (
            TrainingTask::TokenClassification { labels },
            TrainingBatch::Texts { targets, .. },
            [logits],
        ) => {
            let predicted: Vec<Vec<u32>> = logits.argmax(D::Minus1)?.to_vec2()?;
            let actual: Vec<Vec<i64>> = targets.to_vec2()?;
            let name = |id: usize| {
                labels
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{id}"))
            };
            for (predicted, actual) in predicted.iter().zip(&actual) {
                // Each word's first piece, as run_ner.py evaluates.
                let words: Vec<usize> = (0..actual.len()).filter(|&i| actual[i] != -100).collect();
                into.tags
                    .0
                    .push(words.iter().map(|&i| name(predicted[i] as usize)).collect());
                into.tags
                    .1
                    .push(words.iter().map(|&i| name(actual[i] as usize)).collect());
            }
        }
        (
            TrainingTask::SentenceEmbeddings { .. },
            TrainingBatch::Columns { scores, .. },
            columns,
        ) => match scores {
            Some(scores) => {
                let [first, second, ..] = columns else {
                    return Err(Error::InvalidInput("scored pairs need two columns".into()));
                };
                into.scores.0.extend(cosine_rows(first, second)?);
                into.scores
                    .1
                    .extend(scores.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            }
            None => {
                let [anchors, positives, ..] = columns else {
                    return Err(Error::InvalidInput(
                        "anchor/positive data needs two columns".into(),
                    ));
                };
                into.pairs.0.extend(anchors.to_vec2::<f32>()?);
                into.pairs.1.extend(positives.to_vec2::<f32>()?);
            }
        },
        _ => {
            return Err(Error::InvalidInput(
                "the evaluation set does not fit the task".into(),
            ))
        }
    }
    Ok(())
}

fn cosine_rows(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (a.to_vec2()?, b.to_vec2()?);
    Ok(a.iter().zip(&b).map(|(a, b)| cosine(a, b)).collect())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    dot / (norm(a) * norm(b))
}

/// Fill `metrics` for the task; returns the main metric's name (`loss` when none applies).
/// Spearman and Pearson of `predicted` against `actual`, where defined (not for constants).
fn correlations(
    metrics: &mut BTreeMap<String, f64>,
    prefix: &str,
    predicted: &[f32],
    actual: &[f32],
) -> Result<()> {
    if let Some(value) = metrics::spearman(predicted, actual)? {
        metrics.insert(format!("{prefix}spearman"), value);
    }
    if let Some(value) = metrics::pearson(predicted, actual)? {
        metrics.insert(format!("{prefix}pearson"), value);
    }
    Ok(())
}

fn summarise(
    task: &TrainingTask,
    c: &Collected,
    metrics: &mut BTreeMap<String, f64>,
) -> Result<&'static str> {
    Ok(match task {
        TrainingTask::SequenceClassification {
            problem: Problem::SingleLabel,
            labels,
        } => {
            let (predicted, actual) = &c.classes;
            metrics.insert("accuracy".into(), metrics::accuracy(predicted, actual)?);
            let average = metrics::Average::for_classes(labels.len());
            metrics.insert(
                "f1".into(),
                metrics::precision_recall_f1(predicted, actual, average)?.f1,
            );
            "accuracy"
        }
        TrainingTask::SequenceClassification {
            problem: Problem::MultiLabel,
            ..
        } => {
            let scores = metrics::multi_label_scores(&c.multi_hot.0, &c.multi_hot.1)?;
            metrics.insert("f1_micro".into(), scores.micro.f1);
            metrics.insert("subset_accuracy".into(), scores.subset_accuracy);
            "f1_micro"
        }
        TrainingTask::SequenceClassification {
            problem: Problem::Regression,
            ..
        } => {
            let (predicted, actual) = &c.scores;
            metrics.insert(
                "mse".into(),
                metrics::mean_squared_error(predicted, actual)?,
            );
            correlations(metrics, "", predicted, actual)?;
            match metrics.contains_key("spearman") {
                true => "spearman",
                false => "loss",
            }
        }
        TrainingTask::CrossEncoder => {
            let (logits, relevance) = &c.scores;
            let predicted: Vec<bool> = logits.iter().map(|&x| x > 0.0).collect();
            let actual: Vec<bool> = relevance.iter().map(|&y| y >= 0.5).collect();
            metrics.insert("accuracy".into(), metrics::accuracy(&predicted, &actual)?);
            correlations(metrics, "", logits, relevance)?;
            "accuracy"
        }
        TrainingTask::TokenClassification { .. } => {
            let scores = metrics::seqeval(&c.tags.0, &c.tags.1)?;
            metrics.insert("f1".into(), scores.f1);
            metrics.insert("precision".into(), scores.precision);
            metrics.insert("recall".into(), scores.recall);
            metrics.insert("accuracy".into(), scores.accuracy);
            "f1"
        }
        TrainingTask::SentenceEmbeddings { .. } if c.pairs.0.is_empty() => {
            let (predicted, actual) = &c.scores;
            correlations(metrics, "cosine_", predicted, actual)?;
            match metrics.contains_key("cosine_spearman") {
                true => "cosine_spearman",
                false => "loss",
            }
        }
        TrainingTask::SentenceEmbeddings { .. } => {
            // Retrieval: is each anchor's nearest positive, among all of the set's, its own?
            let (anchors, positives) = &c.pairs;
            let hits = anchors
                .iter()
                .enumerate()
                .filter(|(i, anchor)| {
                    let nearest = positives
                        .iter()
                        .map(|p| cosine(anchor, p))
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (j, s)| {
                            if s > best.1 {
                                (j, s)
                            } else {
                                best
                            }
                        });
                    nearest.0 == *i
                })
                .count();
            metrics.insert("accuracy_at_1".into(), hits as f64 / anchors.len() as f64);
            "accuracy_at_1"
        }
    })
}
