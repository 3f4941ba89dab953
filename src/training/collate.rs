//! Examples to batches: the texts of the chosen rows tokenized, truncated and padded, with
//! their targets as the task's loss takes them (transformers' data collators).

use candle_core::{Device, Tensor};
use tokenizers::{
    EncodeInput, InputSequence, PreTokenizerWrapper, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::error::{Error, Result};
use crate::tokenizer::{EncodeOptions, ModelInput, PaddingSide, TextInput, Tokenizer};
use crate::training::data::{
    train_test_split, AnchorPositiveExample, ClassificationLabel, ScoredPairExample,
    TextClassificationData, TokenClassificationData,
};
use crate::training::model::{TrainingBatch, TrainingTask};

/// A dataset of one of the tasks' shapes, as `training::data` reads it.
#[derive(Debug, Clone)]
pub enum Dataset {
    /// `text` (and `text_pair`) and `label`: sequence classification.
    TextClassification(TextClassificationData),
    /// `tokens` and `ner_tags`: token classification.
    TokenClassification(TokenClassificationData),
    /// `sentence1`, `sentence2` and `score`: CoSENT or cosine-similarity embeddings, or a
    /// cross-encoder.
    ScoredPairs(Vec<ScoredPairExample>),
    /// `anchor`, `positive`[, `negative`]: MultipleNegativesRankingLoss.
    AnchorPositive(Vec<AnchorPositiveExample>),
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        match self {
            Dataset::TextClassification(data) => data.examples.len(),
            Dataset::TokenClassification(data) => data.examples.len(),
            Dataset::ScoredPairs(examples) => examples.len(),
            Dataset::AnchorPositive(examples) => examples.len(),
        }
    }

    /// True without examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hold out `fraction` of the examples as [`train_test_split`] does; both sides keep the
    /// class names. Returns (train, test).
    pub fn train_test_split(self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        fn halves<T>(
            examples: Vec<T>,
            fraction: f64,
            seed: u64,
            wrap: impl Fn(Vec<T>) -> Dataset,
        ) -> Result<(Dataset, Dataset)> {
            let (train, test) = train_test_split(examples, fraction, seed)?;
            Ok((wrap(train), wrap(test)))
        }
        match self {
            Dataset::TextClassification(data) => {
                halves(data.examples, fraction, seed, |examples| {
                    Dataset::TextClassification(TextClassificationData {
                        examples,
                        labels: data.labels.clone(),
                    })
                })
            }
            Dataset::TokenClassification(data) => {
                halves(data.examples, fraction, seed, |examples| {
                    Dataset::TokenClassification(TokenClassificationData {
                        examples,
                        tags: data.tags.clone(),
                    })
                })
            }
            Dataset::ScoredPairs(examples) => {
                halves(examples, fraction, seed, Dataset::ScoredPairs)
            }
            Dataset::AnchorPositive(examples) => {
                halves(examples, fraction, seed, Dataset::AnchorPositive)
            }
        }
    }
}

/// Makes batches of a dataset for a task.
pub(crate) struct Collator<'a> {
    tokenizer: &'a Tokenizer,
    options: EncodeOptions,
    /// The tokenizer's inner form with truncation set, for pre-split words.
    words: tokenizers::Tokenizer,
}

impl<'a> Collator<'a> {
    pub fn new(tokenizer: &'a Tokenizer, max_length: usize) -> Result<Self> {
        let mut words = tokenizer.inner().clone();
        words
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::tokenizer("cannot set truncation", e))?;
        // A byte-level BPE (RoBERTa's) reads a word with no space before it as another token
        // than the same word inside running text. transformers' run_ner.py loads these
        // tokenizers with `add_prefix_space=True` for pre-split words, so that every word, the
        // first too, is read as it is read after a space.
        // <https://github.com/huggingface/transformers/blob/v4.57.6/examples/pytorch/token-classification/run_ner.py>
        if let Some(PreTokenizerWrapper::ByteLevel(byte_level)) = words.get_pre_tokenizer() {
            let prefixed = byte_level.add_prefix_space(true);
            words.with_pre_tokenizer(Some(prefixed));
        }
        Ok(Self {
            tokenizer,
            options: EncodeOptions {
                truncation: true,
                max_length: Some(max_length),
                ..EncodeOptions::default()
            },
            words,
        })
    }

    fn encode<'t>(&self, inputs: impl IntoIterator<Item = TextInput<'t>>) -> Result<ModelInput> {
        self.tokenizer
            .encode_batch(inputs, &self.options)?
            .to_input(&Device::Cpu)
    }

    /// The batch of rows `indices` of `data` for `task`.
    pub fn batch(
        &self,
        data: &Dataset,
        indices: &[usize],
        task: &TrainingTask,
    ) -> Result<TrainingBatch> {
        match (data, task) {
            (
                Dataset::TextClassification(data),
                TrainingTask::SequenceClassification { labels, .. },
            ) => self.text_classification(data, indices, labels.len()),
            (Dataset::TokenClassification(data), TrainingTask::TokenClassification { .. }) => {
                self.token_classification(data, indices)
            }
            (Dataset::ScoredPairs(examples), TrainingTask::CrossEncoder) => {
                let rows: Vec<&ScoredPairExample> = indices.iter().map(|&i| &examples[i]).collect();
                let input = self.encode(
                    rows.iter()
                        .map(|e| TextInput::Pair(&e.sentence1, &e.sentence2)),
                )?;
                let scores: Vec<f32> = rows.iter().map(|e| e.score).collect();
                Ok(TrainingBatch::Texts {
                    input,
                    targets: Tensor::from_vec(scores, indices.len(), &Device::Cpu)?,
                })
            }
            (Dataset::ScoredPairs(examples), TrainingTask::SentenceEmbeddings { .. }) => {
                let rows: Vec<&ScoredPairExample> = indices.iter().map(|&i| &examples[i]).collect();
                let first = self.encode(rows.iter().map(|e| TextInput::Single(&e.sentence1)))?;
                let second = self.encode(rows.iter().map(|e| TextInput::Single(&e.sentence2)))?;
                let scores: Vec<f32> = rows.iter().map(|e| e.score).collect();
                Ok(TrainingBatch::Columns {
                    columns: vec![first, second],
                    scores: Some(Tensor::from_vec(scores, indices.len(), &Device::Cpu)?),
                })
            }
            (Dataset::AnchorPositive(examples), TrainingTask::SentenceEmbeddings { .. }) => {
                let rows: Vec<&AnchorPositiveExample> =
                    indices.iter().map(|&i| &examples[i]).collect();
                let mut columns = vec![
                    self.encode(rows.iter().map(|e| TextInput::Single(&e.anchor)))?,
                    self.encode(rows.iter().map(|e| TextInput::Single(&e.positive)))?,
                ];
                let negatives: Option<Vec<&str>> =
                    rows.iter().map(|e| e.negative.as_deref()).collect();
                if let Some(negatives) = negatives {
                    columns.push(self.encode(negatives.into_iter().map(TextInput::Single))?);
                }
                Ok(TrainingBatch::Columns {
                    columns,
                    scores: None,
                })
            }
            _ => Err(Error::InvalidInput(format!(
                "this dataset does not fit the task {}: {}",
                task_name(task),
                "text/label for classification, tokens/ner_tags for token classification, \
                 sentence1/sentence2/score for CoSENT, cosine similarity and cross-encoders, \
                 anchor/positive[/negative] for MultipleNegativesRankingLoss"
            ))),
        }
    }

    fn text_classification(
        &self,
        data: &TextClassificationData,
        indices: &[usize],
        classes: usize,
    ) -> Result<TrainingBatch> {
        let rows: Vec<_> = indices.iter().map(|&i| &data.examples[i]).collect();
        let input = self.encode(rows.iter().map(|e| match &e.text_pair {
            Some(pair) => TextInput::Pair(&e.text, pair),
            None => TextInput::Single(&e.text),
        }))?;
        let device = &Device::Cpu;
        let targets = match &rows.first().map(|e| &e.label) {
            Some(ClassificationLabel::Class(_)) => {
                let ids = rows
                    .iter()
                    .map(|e| class_id(&e.label, classes))
                    .collect::<Result<Vec<u32>>>()?;
                Tensor::from_vec(ids, rows.len(), device)?
            }
            Some(ClassificationLabel::Classes(_)) => {
                let mut hot = vec![0f32; rows.len() * classes];
                for (row, example) in rows.iter().enumerate() {
                    let ClassificationLabel::Classes(ids) = &example.label else {
                        return Err(Error::InvalidInput("a dataset mixes label kinds".into()));
                    };
                    for &id in ids {
                        if id >= classes {
                            return Err(out_of_range(id, classes));
                        }
                        hot[row * classes + id] = 1.0;
                    }
                }
                Tensor::from_vec(hot, (rows.len(), classes), device)?
            }
            _ => {
                let scores = rows
                    .iter()
                    .map(|e| match e.label {
                        ClassificationLabel::Score(score) => Ok(score),
                        _ => Err(Error::InvalidInput("a dataset mixes label kinds".into())),
                    })
                    .collect::<Result<Vec<f32>>>()?;
                Tensor::from_vec(scores, rows.len(), device)?
            }
        };
        Ok(TrainingBatch::Texts { input, targets })
    }

    /// Pre-split words, each word's tag on its first piece and -100 on its other pieces and
    /// the special tokens, as transformers' `run_ner.py` labels them (`label_all_tokens=False`).
    fn token_classification(
        &self,
        data: &TokenClassificationData,
        indices: &[usize],
    ) -> Result<TrainingBatch> {
        let mut encodings = Vec::with_capacity(indices.len());
        let mut tags = Vec::with_capacity(indices.len());
        for &index in indices {
            let example = &data.examples[index];
            let words: Vec<&str> = example.tokens.iter().map(String::as_str).collect();
            let input = EncodeInput::Single(InputSequence::from(words.as_slice()));
            let encoding = self
                .words
                .encode(input, true)
                .map_err(|e| Error::tokenizer("cannot encode the words", e))?;
            let mut previous = None;
            let row: Vec<i64> = encoding
                .get_word_ids()
                .iter()
                .map(|word| {
                    let tag = match word {
                        Some(word) if previous != Some(*word) => {
                            example.tags[*word as usize] as i64
                        }
                        _ => -100,
                    };
                    previous = *word;
                    tag
                })
                .collect();
            tags.push(row);
            encodings.push(encoding);
        }
        let width = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let input = self
            .tokenizer
            .pad(encodings, PaddingSide::Right)?
            .to_input(&Device::Cpu)?;
        let flat: Vec<i64> = tags
            .into_iter()
            .flat_map(|mut row| {
                row.resize(width, -100);
                row
            })
            .collect();
        Ok(TrainingBatch::Texts {
            input,
            targets: Tensor::from_vec(flat, (indices.len(), width), &Device::Cpu)?,
        })
    }
}

fn class_id(label: &ClassificationLabel, classes: usize) -> Result<u32> {
    match *label {
        ClassificationLabel::Class(id) if id < classes => Ok(id as u32),
        ClassificationLabel::Class(id) => Err(out_of_range(id, classes)),
        _ => Err(Error::InvalidInput("a dataset mixes label kinds".into())),
    }
}

fn out_of_range(id: usize, classes: usize) -> Error {
    Error::InvalidInput(format!(
        "class {id} is outside the head's {classes} classes; give the model the dataset's labels"
    ))
}

fn task_name(task: &TrainingTask) -> &'static str {
    match task {
        TrainingTask::SequenceClassification { .. } => "sequence classification",
        TrainingTask::TokenClassification { .. } => "token classification",
        TrainingTask::SentenceEmbeddings { .. } => "sentence embeddings",
        TrainingTask::CrossEncoder => "cross-encoder",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loading::hub::HubOptions;

    fn ids(tokenizer: &tokenizers::Tokenizer, input: EncodeInput) -> Vec<u32> {
        tokenizer.encode(input, true).unwrap().get_ids().to_vec()
    }

    /// RoBERTa's words read as run_ner.py reads them (`add_prefix_space=True`): as the same
    /// words in running text after a space; read as they are, they give other tokens.
    #[test]
    fn byte_level_words_are_read_as_after_a_space() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/roberta/base");
        let tokenizer =
            Tokenizer::from_pretrained(folder, &HubOptions::default().with_offline(true)).unwrap();
        let collator = Collator::new(&tokenizer, 64).unwrap();
        let words = ["Hello", "world", "quickly"];
        let split = || EncodeInput::Single(InputSequence::from(&words[..]));
        let text = EncodeInput::Single(" Hello world quickly".into());
        let prefixed = ids(&collator.words, split());
        assert_eq!(prefixed, ids(tokenizer.inner(), text));
        assert_ne!(
            ids(tokenizer.inner(), split()),
            prefixed,
            "the fixture's vocabulary tells a word after a space from one without"
        );
    }
}
