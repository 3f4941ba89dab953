//! Token classification / NER: transformers' `TokenClassificationPipeline`, with its
//! aggregation strategies and its quirks (the `word` of an entity is the tokenizer's own
//! rendering: lower-cased for uncased models, and a group may start with `##`).
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pipelines/token_classification.py>

use std::str::FromStr;

use serde::Serialize;
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::kernels::host::{argmax, softmax};
use crate::models::auto::AutoModelForTokenClassification;
use crate::models::config::Labels;
use crate::models::pretrained::LoadOptions;
use crate::pipelines::{
    rows_to_host, BatchOptions, Pipeline, PipelineBase, Text, Truncation, TruncationOptions,
    DEFAULT_BATCH_SIZE,
};

/// How token predictions become entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AggregationStrategy {
    /// One entity per token (transformers' default).
    #[default]
    None,
    /// Adjacent tokens with the same entity type form a group.
    Simple,
    /// Words take the label of their first token, then group.
    First,
    /// Words take the label of their tokens' average scores, then group.
    Average,
    /// Words take the label of their most confident token, then group.
    Max,
}

impl FromStr for AggregationStrategy {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "none" => AggregationStrategy::None,
            "simple" => AggregationStrategy::Simple,
            "first" => AggregationStrategy::First,
            "average" => AggregationStrategy::Average,
            "max" => AggregationStrategy::Max,
            other => {
                return Err(Error::InvalidInput(format!(
                "unknown aggregation strategy `{other}`: use none, simple, first, average or max"
            )))
            }
        })
    }
}

/// An entity. With `AggregationStrategy::None` it is one token, with `entity` and `index`;
/// otherwise a group, with `entity_group`. `start` and `end` are character offsets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// The token's label (`B-PER`, ...), without aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// The group's type (`PER`, ...), with aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_group: Option<String>,
    /// The label's probability (a group's: the mean of its members').
    pub score: f32,
    /// The token's position in the encoding (in its window, with `stride`), without
    /// aggregation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The tokens as the tokenizer renders them.
    pub word: String,
    /// First character of the entity in the text.
    pub start: usize,
    /// One past its last character.
    pub end: usize,
}

/// Settings of one call, as transformers' pipeline takes them.
#[derive(Debug, Clone)]
pub struct TokenClassificationOptions {
    /// How token predictions become entities.
    pub aggregation_strategy: AggregationStrategy,
    /// Labels left out of the results (transformers' default: `["O"]`).
    pub ignore_labels: Vec<String>,
    /// Cut texts at `max_length` tokens (transformers does whenever the tokenizer knows its
    /// `model_max_length`). With `stride` set, the rest is not dropped but runs in further
    /// windows. `max_length` is also the length of those windows; `None` is the tokenizer's
    /// `model_max_length`.
    pub truncation: Truncation,
    /// Run texts longer than `max_length` in overlapping windows that share `stride` tokens,
    /// and merge the windows' entities as transformers does. Needs an aggregation strategy
    /// other than `None`.
    pub stride: Option<usize>,
    /// Windows per forward pass.
    pub batch_size: usize,
}

impl Default for TokenClassificationOptions {
    fn default() -> Self {
        Self {
            aggregation_strategy: AggregationStrategy::None,
            ignore_labels: vec!["O".to_string()],
            truncation: Truncation::ON,
            stride: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

impl TokenClassificationOptions {
    /// How token predictions become entities.
    pub fn with_aggregation_strategy(mut self, strategy: AggregationStrategy) -> Self {
        self.aggregation_strategy = strategy;
        self
    }

    /// Labels left out of the results.
    pub fn with_ignore_labels(mut self, labels: Vec<String>) -> Self {
        self.ignore_labels = labels;
        self
    }

    /// Overlapping windows sharing `stride` tokens over long texts.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = Some(stride);
        self
    }
}

impl TruncationOptions for TokenClassificationOptions {
    fn truncation_mut(&mut self) -> &mut Truncation {
        &mut self.truncation
    }
}

impl BatchOptions for TokenClassificationOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// A token before aggregation.
#[derive(Debug, Clone)]
struct PreEntity {
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    index: usize,
    is_subword: bool,
}

/// A token or word with its label, before grouping.
#[derive(Debug, Clone)]
struct Labeled {
    entity: String,
    score: f32,
    index: usize,
    word: String,
    start: usize,
    end: usize,
}

/// transformers' `TokenClassificationPipeline` (`ner`).
#[derive(Debug, Clone)]
pub struct TokenClassificationPipeline {
    base: PipelineBase<AutoModelForTokenClassification>,
    labels: Labels,
}

impl TokenClassificationPipeline {
    /// Load `model` (a Hub id or a local folder).
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_parts(PipelineBase::from_pretrained(model, options)?)
    }

    /// Wrap a model already loaded; the labels come from its config.
    pub fn from_parts(base: PipelineBase<AutoModelForTokenClassification>) -> Result<Self> {
        Ok(Self {
            labels: base.config().id2label().clone(),
            base,
        })
    }

    /// Preprocess one text: one encoding, or with `stride` its overlapping windows, as
    /// transformers' tokenizer call with `return_overflowing_tokens` cuts them.
    fn encode(&self, text: &str, options: &TokenClassificationOptions) -> Result<Vec<Encoding>> {
        match options.stride {
            Some(stride) => {
                let max_length = self.window_length(options)?;
                if stride >= max_length {
                    return Err(Error::InvalidInput(format!(
                        "stride ({stride}) must be less than max_length ({max_length}), and \
                         lower still for the special tokens"
                    )));
                }
                self.base
                    .tokenizer()
                    .encode_windows(text, max_length, stride)
            }
            None => {
                // With no length to cut at (no max_length, no model_max_length) texts stay
                // whole, as transformers' tokenizer leaves them.
                let truncation = Truncation {
                    enabled: options.truncation.enabled && self.window_length(options).is_ok(),
                    ..options.truncation
                };
                Ok(vec![self
                    .base
                    .tokenizer()
                    .encode(text, &truncation.encode_options())?])
            }
        }
    }

    fn window_length(&self, options: &TokenClassificationOptions) -> Result<usize> {
        options
            .truncation
            .max_length
            .or(self.base.tokenizer().model_max_length())
            .ok_or_else(|| {
                Error::InvalidInput(
                    "stride needs a max_length: the tokenizer config sets no model_max_length"
                        .to_string(),
                )
            })
    }

    fn postprocess(
        &self,
        text: &str,
        encoding: &Encoding,
        logits: &[Vec<f32>],
        options: &TokenClassificationOptions,
    ) -> Result<Vec<Entity>> {
        let pre_entities = self.gather_pre_entities(text, encoding, logits);
        let strategy = options.aggregation_strategy;
        let entities = match strategy {
            AggregationStrategy::None => self
                .label_tokens(pre_entities)
                .into_iter()
                .map(|t| Entity {
                    entity: Some(t.entity),
                    entity_group: None,
                    score: t.score,
                    index: Some(t.index),
                    word: t.word,
                    start: t.start,
                    end: t.end,
                })
                .collect(),
            AggregationStrategy::Simple => self.group_entities(self.label_tokens(pre_entities))?,
            _ => self.group_entities(self.aggregate_words(pre_entities, strategy)?)?,
        };
        Ok(entities
            .into_iter()
            .filter(|e| {
                let label = e.entity.as_ref().or(e.entity_group.as_ref());
                !label.is_some_and(|l| options.ignore_labels.contains(l))
            })
            .collect())
    }

    /// Every non-special token with its scores, its text span, and whether it continues a word.
    fn gather_pre_entities(
        &self,
        text: &str,
        encoding: &Encoding,
        logits: &[Vec<f32>],
    ) -> Vec<PreEntity> {
        let chars: Vec<char> = text.chars().collect();
        let tokenizer = self.base.tokenizer();
        let word_aware = tokenizer.continuing_subword_prefix().is_some();
        let unk = tokenizer.unk_id();
        let mut pre_entities = Vec::new();
        for (index, (&id, token_logits)) in encoding.get_ids().iter().zip(logits).enumerate() {
            if encoding.get_special_tokens_mask()[index] == 1 {
                continue;
            }
            let (start, end) = encoding.get_offsets()[index];
            let word_ref: String = chars[start.min(chars.len())..end.min(chars.len())]
                .iter()
                .collect();
            let mut word = tokenizer.id_to_token(id).unwrap_or_default();
            let mut is_subword = if word_aware {
                // Python compares lengths in code points.
                word.chars().count() != word_ref.chars().count()
            } else {
                // transformers' fallback for tokenizers that do not mark word pieces: a token
                // continues a word unless a space touches its start.
                start > 0 && !chars[start - 1..(start + 1).min(chars.len())].contains(&' ')
            };
            if Some(id) == unk {
                word = word_ref;
                is_subword = false;
            }
            pre_entities.push(PreEntity {
                word,
                scores: softmax(token_logits),
                start,
                end,
                index,
                is_subword,
            });
        }
        pre_entities
    }

    /// Each token labelled with its best class.
    fn label_tokens(&self, pre_entities: Vec<PreEntity>) -> Vec<Labeled> {
        pre_entities
            .into_iter()
            .map(|pre| {
                let best = argmax(&pre.scores);
                Labeled {
                    entity: self.labels.name(best),
                    score: pre.scores[best],
                    index: pre.index,
                    word: pre.word,
                    start: pre.start,
                    end: pre.end,
                }
            })
            .collect()
    }

    /// Merge the tokens of each word into one labelled word.
    fn aggregate_words(
        &self,
        pre_entities: Vec<PreEntity>,
        strategy: AggregationStrategy,
    ) -> Result<Vec<Labeled>> {
        let mut words: Vec<Vec<PreEntity>> = Vec::new();
        for pre in pre_entities {
            match words.last_mut() {
                Some(word) if pre.is_subword => word.push(pre),
                _ => words.push(vec![pre]),
            }
        }
        words
            .iter()
            .map(|tokens| self.aggregate_word(tokens, strategy))
            .collect()
    }

    fn aggregate_word(
        &self,
        tokens: &[PreEntity],
        strategy: AggregationStrategy,
    ) -> Result<Labeled> {
        let pieces: Vec<String> = tokens.iter().map(|t| t.word.clone()).collect();
        let scores = match strategy {
            AggregationStrategy::First => tokens[0].scores.clone(),
            AggregationStrategy::Max => tokens
                .iter()
                .fold(&tokens[0], |best, t| {
                    if max_of(&t.scores) > max_of(&best.scores) {
                        t
                    } else {
                        best
                    }
                })
                .scores
                .clone(),
            _ => {
                let n = tokens.len() as f32;
                (0..tokens[0].scores.len())
                    .map(|label| tokens.iter().map(|t| t.scores[label]).sum::<f32>() / n)
                    .collect()
            }
        };
        let best = argmax(&scores);
        Ok(Labeled {
            entity: self.labels.name(best),
            score: scores[best],
            index: tokens[0].index,
            word: self.base.tokenizer().convert_tokens_to_string(&pieces)?,
            start: tokens[0].start,
            end: tokens[tokens.len() - 1].end,
        })
    }

    /// Group adjacent entities of the same type; a `B-` tag starts a new group.
    fn group_entities(&self, entities: Vec<Labeled>) -> Result<Vec<Entity>> {
        let mut groups: Vec<Vec<Labeled>> = Vec::new();
        for entity in entities {
            let (bi, tag) = split_tag(&entity.entity);
            match groups.last_mut() {
                Some(group) if bi != "B" && split_tag(&group[group.len() - 1].entity).1 == tag => {
                    group.push(entity)
                }
                _ => groups.push(vec![entity]),
            }
        }
        groups
            .iter()
            .map(|group| self.group_sub_entities(group))
            .collect()
    }

    fn group_sub_entities(&self, group: &[Labeled]) -> Result<Entity> {
        let tag = match group[0].entity.split_once('-') {
            Some((_, tag)) => tag.to_string(),
            None => group[0].entity.clone(),
        };
        let pieces: Vec<String> = group.iter().map(|e| e.word.clone()).collect();
        Ok(Entity {
            entity: None,
            entity_group: Some(tag),
            score: group.iter().map(|e| e.score).sum::<f32>() / group.len() as f32,
            index: None,
            word: self.base.tokenizer().convert_tokens_to_string(&pieces)?,
            start: group[0].start,
            end: group[group.len() - 1].end,
        })
    }
}

impl Pipeline for TokenClassificationPipeline {
    type Kind = Text;
    type Options = TokenClassificationOptions;
    /// The entities of one text.
    type Output = Vec<Entity>;
    type Model = AutoModelForTokenClassification;

    fn run_inputs(
        &self,
        texts: &[&str],
        options: &TokenClassificationOptions,
    ) -> Result<Vec<Vec<Entity>>> {
        if options.stride.is_some() && options.aggregation_strategy == AggregationStrategy::None {
            return Err(Error::InvalidInput(
                "stride merges entities across windows, which needs an aggregation strategy: \
                 use simple, first, average or max"
                    .to_string(),
            ));
        }
        // Preprocess: each text's windows (one unless `stride` is set), all in one list.
        let mut windows: Vec<Encoding> = Vec::new();
        let mut text_of_window: Vec<usize> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let encoded = self.encode(text, options)?;
            text_of_window.extend(std::iter::repeat_n(i, encoded.len()));
            windows.extend(encoded);
        }
        // Forward.
        let logits = self
            .base
            .forward_in_buckets(&windows, options.batch_size, |_, input| {
                let logits = self.base.model().forward(&input)?;
                let labels = logits.dim(2)?;
                Ok(rows_to_host(&logits)?
                    .into_iter()
                    .map(|row| row.chunks(labels).map(<[f32]>::to_vec).collect::<Vec<_>>())
                    .collect())
            })?;
        // Postprocess: entities per window, then merged per text where windows overlap.
        let mut entities: Vec<Vec<Entity>> = vec![Vec::new(); texts.len()];
        let mut windows_of_text = vec![0usize; texts.len()];
        for ((window, logits), &i) in windows.iter().zip(&logits).zip(&text_of_window) {
            entities[i].extend(self.postprocess(texts[i], window, logits, options)?);
            windows_of_text[i] += 1;
        }
        Ok(entities
            .into_iter()
            .zip(windows_of_text)
            .map(|(entities, windows)| {
                if windows > 1 {
                    merge_overlapping(entities)
                } else {
                    entities
                }
            })
            .collect())
    }

    fn base(&self) -> &PipelineBase<AutoModelForTokenClassification> {
        &self.base
    }
}

/// transformers' `aggregate_overlapping_entities`: of entities that start inside the previous
/// one (sorted by start), keep the longer, or on equal length the more confident.
fn merge_overlapping(mut entities: Vec<Entity>) -> Vec<Entity> {
    // Stable, as Python's `sorted` is.
    entities.sort_by_key(|e| e.start);
    let mut merged = Vec::new();
    let mut entities = entities.into_iter();
    let Some(mut previous) = entities.next() else {
        return merged;
    };
    for entity in entities {
        if previous.start <= entity.start && entity.start < previous.end {
            let length = entity.end.saturating_sub(entity.start);
            let previous_length = previous.end.saturating_sub(previous.start);
            if length > previous_length
                || (length == previous_length && entity.score > previous.score)
            {
                previous = entity;
            }
        } else {
            merged.push(std::mem::replace(&mut previous, entity));
        }
    }
    merged.push(previous);
    merged
}

fn max_of(values: &[f32]) -> f32 {
    values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `B-PER` -> ("B", "PER"); `I-PER` -> ("I", "PER"); anything else is a continuation ("I").
fn split_tag(label: &str) -> (&str, &str) {
    match label.split_at_checked(2) {
        Some(("B-", tag)) => ("B", tag),
        Some(("I-", tag)) => ("I", tag),
        _ => ("I", label),
    }
}
