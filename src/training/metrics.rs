//! Evaluation metrics, computed as scikit-learn, SciPy and seqeval compute them, and so as
//! `evaluate` and transformers' example scripts report them; `tests/training_metrics.rs`
//! checks them against those libraries' numbers.
//!
//! Arguments come in `evaluate`'s order: predictions, then references. A precision or recall
//! with nothing to divide by (no predicted or no true positives) is 0, scikit-learn's and
//! seqeval's default (`zero_division="warn"`, which warns and gives 0), and so is an F1 whose
//! precision and recall are both 0. A correlation of a constant input is `None` where SciPy
//! gives NaN: there is no correlation to report, and a NaN would compare false with every
//! "best so far".

use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};

/// Precision, recall and F1 of one average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionRecallF1 {
    /// True positives over predicted positives.
    pub precision: f64,
    /// True positives over actual positives.
    pub recall: f64,
    /// The harmonic mean of precision and recall.
    pub f1: f64,
}

/// How precision, recall and F1 combine the classes of a single-label task (scikit-learn's
/// `average`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Average {
    /// The scores of class 1 alone (`average="binary"`, `pos_label=1`); every id must be 0
    /// or 1.
    Binary,
    /// The counts of all classes summed, then divided: for single-label predictions precision,
    /// recall and F1 all equal the accuracy.
    Micro,
    /// The unweighted mean of each class's scores, over the classes that occur in the
    /// predictions or the references (scikit-learn's default `labels`).
    Macro,
}

impl Average {
    /// `Binary` for two classes, as `evaluate`'s `f1` (and GLUE's MRPC and QQP) score them;
    /// `Macro` for more, where `evaluate` needs an `average` and macro weighs rare classes as
    /// much as common ones.
    pub fn for_classes(num_classes: usize) -> Self {
        if num_classes == 2 {
            Average::Binary
        } else {
            Average::Macro
        }
    }
}

/// The scores of a multi-label task, from its multi-hot predictions and references.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiLabelScores {
    /// Micro precision, recall and F1 over every (example, class) decision.
    pub micro: PrecisionRecallF1,
    /// The share of examples whose every class is right (scikit-learn's `accuracy_score` on
    /// multi-label input).
    pub subset_accuracy: f64,
}

/// seqeval's entity-level scores of a token-classification task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntityScores {
    /// Correct entities over predicted entities (micro over entity types).
    pub precision: f64,
    /// Correct entities over true entities.
    pub recall: f64,
    /// `2 * precision * recall / (precision + recall)`.
    pub f1: f64,
    /// The share of tags that are right, `O` included (seqeval's `accuracy_score`).
    pub accuracy: f64,
    /// Entities in the references.
    pub true_entities: usize,
    /// Entities in the predictions.
    pub predicted_entities: usize,
    /// Predicted entities with the type, start and end of a true one.
    pub correct_entities: usize,
}

/// The share of predictions equal to their reference.
pub fn accuracy<T: PartialEq>(predictions: &[T], references: &[T]) -> Result<f64> {
    check_lengths(predictions.len(), references.len())?;
    let correct = predictions
        .iter()
        .zip(references)
        .filter(|(prediction, reference)| prediction == reference)
        .count();
    Ok(ratio(correct, predictions.len()))
}

/// Precision, recall and F1 of single-label class ids, as scikit-learn's
/// `precision_recall_fscore_support` with `average`.
pub fn precision_recall_f1(
    predictions: &[usize],
    references: &[usize],
    average: Average,
) -> Result<PrecisionRecallF1> {
    check_lengths(predictions.len(), references.len())?;
    let mut per_class: BTreeMap<usize, Counts> = BTreeMap::new();
    for (&predicted, &actual) in predictions.iter().zip(references) {
        per_class.entry(predicted).or_default().predicted += 1;
        per_class.entry(actual).or_default().actual += 1;
        if predicted == actual {
            per_class.entry(actual).or_default().true_positives += 1;
        }
    }
    match average {
        Average::Binary => {
            if let Some(&class) = per_class.keys().find(|&&class| class > 1) {
                return Err(Error::InvalidInput(format!(
                    "binary precision, recall and F1 take class ids 0 and 1, but {class} \
                     occurs: average over the classes (Average::Macro or Average::Micro)"
                )));
            }
            Ok(per_class.get(&1).copied().unwrap_or_default().scores())
        }
        Average::Micro => {
            let total = per_class.values().fold(Counts::default(), Counts::add);
            Ok(total.scores())
        }
        Average::Macro => {
            let scores: Vec<PrecisionRecallF1> =
                per_class.values().map(|counts| counts.scores()).collect();
            let mean = |score: fn(&PrecisionRecallF1) -> f64| {
                scores.iter().map(score).sum::<f64>() / scores.len() as f64
            };
            Ok(PrecisionRecallF1 {
                precision: mean(|scores| scores.precision),
                recall: mean(|scores| scores.recall),
                f1: mean(|scores| scores.f1),
            })
        }
    }
}

/// Micro precision, recall and F1 and subset accuracy of multi-hot rows (one `bool` per
/// class), as scikit-learn scores multi-label indicator arrays.
pub fn multi_label_scores<R: AsRef<[bool]>>(
    predictions: &[R],
    references: &[R],
) -> Result<MultiLabelScores> {
    check_lengths(predictions.len(), references.len())?;
    let mut counts = Counts::default();
    let mut exact_rows = 0;
    for (row, (predicted, actual)) in predictions.iter().zip(references).enumerate() {
        let (predicted, actual) = (predicted.as_ref(), actual.as_ref());
        if predicted.len() != actual.len() {
            return Err(Error::InvalidInput(format!(
                "row {row} predicts {} classes but its reference has {}",
                predicted.len(),
                actual.len()
            )));
        }
        for (&predicted, &actual) in predicted.iter().zip(actual) {
            counts.predicted += usize::from(predicted);
            counts.actual += usize::from(actual);
            counts.true_positives += usize::from(predicted && actual);
        }
        exact_rows += usize::from(predicted == actual);
    }
    Ok(MultiLabelScores {
        micro: counts.scores(),
        subset_accuracy: ratio(exact_rows, predictions.len()),
    })
}

/// The mean of the squared differences (scikit-learn's `mean_squared_error`).
pub fn mean_squared_error<T: Copy + Into<f64>>(predictions: &[T], references: &[T]) -> Result<f64> {
    check_lengths(predictions.len(), references.len())?;
    let sum: f64 = predictions
        .iter()
        .zip(references)
        .map(|(&prediction, &reference)| (prediction.into() - reference.into()).powi(2))
        .sum();
    Ok(sum / predictions.len() as f64)
}

/// Pearson's correlation coefficient (SciPy's `pearsonr` statistic); `None` when either
/// input is constant. Fewer than two values, unequal lengths or a value that is not finite
/// are errors.
pub fn pearson<T: Copy + Into<f64>>(x: &[T], y: &[T]) -> Result<Option<f64>> {
    let (x, y) = correlation_inputs(x, y)?;
    Ok(correlation(&x, &y))
}

/// Spearman's rank correlation (SciPy's `spearmanr` statistic): Pearson's correlation of the
/// ranks, tied values sharing the mean of their ranks. `None` when either input is constant;
/// errors as [`pearson`]'s.
pub fn spearman<T: Copy + Into<f64>>(x: &[T], y: &[T]) -> Result<Option<f64>> {
    let (x, y) = correlation_inputs(x, y)?;
    Ok(correlation(&average_ranks(&x), &average_ranks(&y)))
}

/// seqeval's entity-level scores in its default mode, over sentences of tags such as `B-PER`
/// (transformers' `run_ner.py` reports these).
///
/// The default mode chunks as CoNLL's `conlleval` script does, accepting IOB1, IOB2 and IOBES
/// alike: an entity ends where the type changes or an `O`, `B-` (or `S-`) follows, and an
/// `I-` after `O` or after another type starts one. The sentences are joined with an `O`
/// after each, so no entity spans two. Every prediction sentence must be as long as its
/// reference; an empty tag is an error (seqeval raises `IndexError`).
pub fn seqeval<S: AsRef<str>, T: AsRef<[S]>>(
    predictions: &[T],
    references: &[T],
) -> Result<EntityScores> {
    check_lengths(predictions.len(), references.len())?;
    let mut tags = 0;
    let mut right_tags = 0;
    for (index, (predicted, actual)) in predictions.iter().zip(references).enumerate() {
        let (predicted, actual) = (predicted.as_ref(), actual.as_ref());
        if predicted.len() != actual.len() {
            return Err(Error::InvalidInput(format!(
                "sentence {index} has {} predicted tags but {} reference tags",
                predicted.len(),
                actual.len()
            )));
        }
        tags += actual.len();
        right_tags += predicted
            .iter()
            .zip(actual)
            .filter(|(predicted, actual)| predicted.as_ref() == actual.as_ref())
            .count();
    }
    if tags == 0 {
        return Err(Error::InvalidInput(
            "the sentences hold no tags to score".into(),
        ));
    }
    let predicted: HashSet<Entity> = entities(predictions)?.into_iter().collect();
    let actual: HashSet<Entity> = entities(references)?.into_iter().collect();
    let correct = predicted.intersection(&actual).count();
    let precision = ratio(correct, predicted.len());
    let recall = ratio(correct, actual.len());
    // seqeval's F1 is computed from precision and recall, not from the counts.
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Ok(EntityScores {
        precision,
        recall,
        f1,
        accuracy: ratio(right_tags, tags),
        true_entities: actual.len(),
        predicted_entities: predicted.len(),
        correct_entities: correct,
    })
}

/// True positives, predicted positives and actual positives of one class (or of all).
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    true_positives: usize,
    predicted: usize,
    actual: usize,
}

impl Counts {
    fn add(self, other: &Counts) -> Counts {
        Counts {
            true_positives: self.true_positives + other.true_positives,
            predicted: self.predicted + other.predicted,
            actual: self.actual + other.actual,
        }
    }

    /// scikit-learn's scores: F1 as `2 tp / (predicted + actual)`, which it divides directly
    /// rather than through precision and recall.
    fn scores(self) -> PrecisionRecallF1 {
        PrecisionRecallF1 {
            precision: ratio(self.true_positives, self.predicted),
            recall: ratio(self.true_positives, self.actual),
            f1: ratio(2 * self.true_positives, self.predicted + self.actual),
        }
    }
}

/// `numerator / denominator`, or 0 when the denominator is 0 (`zero_division`'s default).
fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn check_lengths(predictions: usize, references: usize) -> Result<()> {
    if predictions != references {
        return Err(Error::InvalidInput(format!(
            "{predictions} predictions but {references} references: score each prediction \
             against its reference"
        )));
    }
    if predictions == 0 {
        return Err(Error::InvalidInput("no predictions to score".into()));
    }
    Ok(())
}

fn correlation_inputs<T: Copy + Into<f64>>(x: &[T], y: &[T]) -> Result<(Vec<f64>, Vec<f64>)> {
    if x.len() != y.len() || x.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "a correlation needs two equally long inputs of at least 2 values, not {} and {}",
            x.len(),
            y.len()
        )));
    }
    let finite = |values: &[T], name: &str| {
        let values: Vec<f64> = values.iter().map(|&value| value.into()).collect();
        match values.iter().position(|value| !value.is_finite()) {
            Some(index) => Err(Error::InvalidInput(format!(
                "{name}[{index}] is {}: a correlation needs finite values",
                values[index]
            ))),
            None => Ok(values),
        }
    };
    Ok((finite(x, "x")?, finite(y, "y")?))
}

/// Pearson's r of finite inputs of equal length, or `None` if one is constant.
fn correlation(x: &[f64], y: &[f64]) -> Option<f64> {
    // Constant by equality, as SciPy checks: the mean of equal values can round away from
    // them, which would leave a correlation of rounding noise.
    if x.iter().all(|&value| value == x[0]) || y.iter().all(|&value| value == y[0]) {
        return None;
    }
    let (x, y) = (centered(x), centered(y));
    let (x_norm, y_norm) = (norm(&x), norm(&y));
    if x_norm == 0.0 || y_norm == 0.0 {
        return None;
    }
    let r: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a / x_norm) * (b / y_norm))
        .sum();
    // Rounding can push |r| just past 1; SciPy clips it too.
    Some(r.clamp(-1.0, 1.0))
}

/// `values` minus their mean, after scaling by the largest magnitude (as SciPy does) so that
/// squares of large values do not overflow.
fn centered(values: &[f64]) -> Vec<f64> {
    let largest = values
        .iter()
        .fold(0.0f64, |largest, value| largest.max(value.abs()));
    let scaled: Vec<f64> = values.iter().map(|value| value / largest).collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    scaled.iter().map(|value| value - mean).collect()
}

fn norm(values: &[f64]) -> f64 {
    values.iter().map(|value| value * value).sum::<f64>().sqrt()
}

/// Ranks from 1, tied values sharing the mean of their ranks (SciPy's `rankdata`,
/// `method="average"`).
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let tied = order[start..]
            .iter()
            .take_while(|&&index| values[index] == values[order[start]])
            .count();
        // Sorted positions start..start + tied hold ranks start + 1 to start + tied.
        let rank = start as f64 + (tied as f64 + 1.0) / 2.0;
        for &index in &order[start..start + tied] {
            ranks[index] = rank;
        }
        start += tied;
    }
    ranks
}

/// An entity as seqeval finds it: its type and its first and last position, counted over the
/// sentences joined with an `O` after each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Entity {
    entity_type: String,
    start: usize,
    end: usize,
}

/// seqeval's `get_entities` (default mode, prefix tags).
/// <https://github.com/chakki-works/seqeval/blob/v1.2.2/seqeval/metrics/sequence_labeling.py#L145>
fn entities<S: AsRef<str>, T: AsRef<[S]>>(sentences: &[T]) -> Result<Vec<Entity>> {
    let mut tags = Vec::new();
    for (index, sentence) in sentences.iter().enumerate() {
        for (position, tag) in sentence.as_ref().iter().enumerate() {
            tags.push(split_tag(tag.as_ref()).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "sentence {index} has an empty tag at position {position}"
                ))
            })?);
        }
        tags.push(OUTSIDE);
    }
    // seqeval appends one more `O`, which closes an entity that ends the last sentence.
    tags.push(OUTSIDE);
    let mut found = Vec::new();
    // Before the first tag, seqeval's type is "" (not the "_" of a typeless tag).
    let (mut previous, mut previous_type) = ('O', "");
    let mut begin = 0;
    for (position, &(prefix, entity_type)) in tags.iter().enumerate() {
        if chunk_ends(previous, prefix, previous_type, entity_type) {
            found.push(Entity {
                entity_type: previous_type.to_string(),
                start: begin,
                end: position - 1,
            });
        }
        if chunk_starts(previous, prefix, previous_type, entity_type) {
            begin = position;
        }
        (previous, previous_type) = (prefix, entity_type);
    }
    Ok(found)
}

const OUTSIDE: (char, &str) = ('O', "_");

/// A tag's prefix (its first character) and type, as seqeval splits them: the type is what
/// follows the first `-` after the prefix (or all that follows the prefix when there is no
/// `-`), and `_` when that is empty. `None` for an empty tag.
fn split_tag(tag: &str) -> Option<(char, &str)> {
    let mut chars = tag.chars();
    let prefix = chars.next()?;
    let rest = chars.as_str();
    let entity_type = rest.split_once('-').map_or(rest, |(_, after)| after);
    Some((
        prefix,
        if entity_type.is_empty() {
            "_"
        } else {
            entity_type
        },
    ))
}

/// seqeval's `end_of_chunk`: whether an entity ended just before a tag of `prefix`.
fn chunk_ends(previous: char, prefix: char, previous_type: &str, entity_type: &str) -> bool {
    matches!(previous, 'E' | 'S')
        || (matches!(previous, 'B' | 'I') && matches!(prefix, 'B' | 'S' | 'O'))
        || (previous != 'O' && previous != '.' && previous_type != entity_type)
}

/// seqeval's `start_of_chunk`: whether an entity starts at a tag of `prefix`.
fn chunk_starts(previous: char, prefix: char, previous_type: &str, entity_type: &str) -> bool {
    matches!(prefix, 'B' | 'S')
        || (matches!(previous, 'E' | 'S' | 'O') && matches!(prefix, 'E' | 'I'))
        || (prefix != 'O' && prefix != '.' && previous_type != entity_type)
}
