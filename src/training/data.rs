//! Training datasets: JSON Lines or CSV files with the column names of the Hub's datasets, read
//! into the typed examples of each task.
//!
//! | Task | Columns | Reader |
//! |---|---|---|
//! | text classification (GLUE, `imdb`, `go_emotions`) | `text`, `label`, optional `text_pair`; or `sentence1`, `sentence2`, `label` | [`read_text_classification`] |
//! | sentence pairs with a score (CoSENT, cosine similarity, cross-encoders) | `sentence1`, `sentence2`, `score` (or `label`, as sentence-transformers names it) | [`read_scored_pairs`] |
//! | pairs or triplets for MultipleNegativesRankingLoss | `anchor`, `positive`, optional `negative` | [`read_anchor_positive`] |
//! | token classification (`conll2003`) | `tokens`, `ner_tags` | [`read_token_classification`] |
//!
//! The extension says the format: `.jsonl` and `.json` are JSON Lines, one object per line (what
//! `datasets`' `to_json` writes); `.csv` has a header row, and a list in a cell is a JSON array
//! (`["EU", "rejects"]`). Other columns are left alone (a dataset's `idx` or `id`). A null value,
//! or an empty CSV cell (which pandas reads as missing), counts as a missing column. Every error
//! names the file and the line of the row ([`Error::InvalidDataset`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::models::config::Labels;

/// What the `label` column of a text-classification dataset holds. The caller says which:
/// JSON's `1` and `1.0` do not tell a class id from a score, and in CSV every cell is text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    /// One class per example, as an integer id or a class name (transformers'
    /// `single_label_classification`).
    SingleLabel,
    /// Any number of classes per example, as a list of ids or of names
    /// (`multi_label_classification`).
    MultiLabel,
    /// A number to predict (`regression`: a head with one output).
    Regression,
}

/// The target of one text-classification example, of its dataset's [`LabelKind`].
#[derive(Debug, Clone, PartialEq)]
pub enum ClassificationLabel {
    /// The id of the example's class.
    Class(usize),
    /// The ids of the example's classes, ascending, each once.
    Classes(Vec<usize>),
    /// The value to regress to.
    Score(f32),
}

/// One text, or one pair of texts (GLUE's pair tasks), and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct TextClassificationExample {
    /// The text (`text` or `sentence1`).
    pub text: String,
    /// The second segment (`text_pair` or `sentence2`), when the task is on pairs.
    pub text_pair: Option<String>,
    /// The class, classes or score.
    pub label: ClassificationLabel,
}

/// A text-classification dataset with its class names.
#[derive(Debug, Clone)]
pub struct TextClassificationData {
    /// The examples, in the file's order.
    pub examples: Vec<TextClassificationExample>,
    /// The class names by id (the head's `id2label`); for regression, the one output
    /// `LABEL_0`, as transformers names it for `num_labels=1`.
    pub labels: Labels,
}

/// Two sentences and how similar (or relevant) they are.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPairExample {
    /// `sentence1`: the first sentence, or a cross-encoder's query.
    pub sentence1: String,
    /// `sentence2`: the second sentence, or a cross-encoder's document.
    pub sentence2: String,
    /// `score` (or `label`): the similarity, or 0/1 relevance.
    pub score: f32,
}

/// An anchor with its positive, and a hard negative when the dataset has them: the in-batch
/// negatives of MultipleNegativesRankingLoss come from the other rows.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorPositiveExample {
    /// `anchor`: the query or first sentence.
    pub anchor: String,
    /// `positive`: the text that goes with the anchor.
    pub positive: String,
    /// `negative`: a text that does not; every row of a file has one, or none does.
    pub negative: Option<String>,
}

/// One pre-split sentence and a tag id per word.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenClassificationExample {
    /// `tokens`: the words.
    pub tokens: Vec<String>,
    /// `ner_tags`: the tag id of each word.
    pub tags: Vec<usize>,
}

/// A token-classification dataset with its tag names.
#[derive(Debug, Clone)]
pub struct TokenClassificationData {
    /// The examples, in the file's order.
    pub examples: Vec<TokenClassificationExample>,
    /// The tag names by id (the head's `id2label`).
    pub tags: Labels,
}

/// Reads a text-classification dataset whose `label` column holds `kind`.
///
/// Class ids: integer labels are the ids; their names are `names` when given (a model
/// config's `id2label`, which an id must fall inside), else `LABEL_0` up to the largest id.
/// String labels are looked up in `names` when given; without them the ids go to the names in
/// sorted order, as transformers' `run_glue.py` sorts its `label_list`. A file's labels are
/// all ids or all names. `names` empty counts as not given (a config without `id2label`), and
/// regression does not read it.
pub fn read_text_classification(
    path: impl AsRef<Path>,
    kind: LabelKind,
    names: Option<&Labels>,
) -> Result<TextClassificationData> {
    let file = DatasetFile::read(path.as_ref())?;
    let segments = file
        .rows
        .iter()
        .map(|row| file.segments(row))
        .collect::<Result<Vec<_>>>()?;
    let (labels, targets) = match kind {
        LabelKind::Regression => {
            let scores = file
                .rows
                .iter()
                .map(|row| Ok(ClassificationLabel::Score(file.number(row, "label")?)))
                .collect::<Result<Vec<_>>>()?;
            (Labels::from_names(vec!["LABEL_0".into()]), scores)
        }
        LabelKind::SingleLabel => {
            let raw = file
                .rows
                .iter()
                .map(|row| Ok((row.line, file.class(row, "label")?)))
                .collect::<Result<Vec<_>>>()?;
            let (labels, ids) = file.resolve_classes("label", &raw, names)?;
            (
                labels,
                ids.into_iter().map(ClassificationLabel::Class).collect(),
            )
        }
        LabelKind::MultiLabel => {
            let (labels, per_row) = file.class_lists("label", names)?;
            let targets = per_row
                .into_iter()
                .map(|mut ids| {
                    ids.sort_unstable();
                    ids.dedup();
                    ClassificationLabel::Classes(ids)
                })
                .collect();
            (labels, targets)
        }
    };
    let examples = segments
        .into_iter()
        .zip(targets)
        .map(|((text, text_pair), label)| TextClassificationExample {
            text,
            text_pair,
            label,
        })
        .collect();
    Ok(TextClassificationData { examples, labels })
}

/// Reads sentence pairs with a float score: `sentence1`, `sentence2` and `score`, or `label`
/// for the score as sentence-transformers' CoSENT, cosine-similarity and cross-encoder
/// datasets name it (`score` wins when a row has both).
pub fn read_scored_pairs(path: impl AsRef<Path>) -> Result<Vec<ScoredPairExample>> {
    let file = DatasetFile::read(path.as_ref())?;
    let columns: [&[&str]; 2] = [
        &["sentence1", "sentence2", "score"],
        &["sentence1", "sentence2", "label"],
    ];
    file.rows
        .iter()
        .map(|row| {
            let score_column = columns[file.require(row, &columns)?][2];
            Ok(ScoredPairExample {
                sentence1: file.text(row, "sentence1")?,
                sentence2: file.text(row, "sentence2")?,
                score: file.number(row, score_column)?,
            })
        })
        .collect()
}

/// Reads `anchor`, `positive` pairs, or triplets with `negative`: all rows must agree on
/// whether there is a negative, as the loss needs the same number of texts from each.
pub fn read_anchor_positive(path: impl AsRef<Path>) -> Result<Vec<AnchorPositiveExample>> {
    let file = DatasetFile::read(path.as_ref())?;
    let mut examples: Vec<AnchorPositiveExample> = Vec::with_capacity(file.rows.len());
    for row in &file.rows {
        file.require(row, &[&["anchor", "positive"]])?;
        let negative = file.optional_text(row, "negative")?;
        if let Some(first) = examples.first() {
            if first.negative.is_some() != negative.is_some() {
                let (has, lacks) = if negative.is_some() {
                    ("this row", "the first row")
                } else {
                    ("the first row", "this row")
                };
                return Err(file.invalid(
                    row.line,
                    format!(
                        "{has} has a `negative` and {lacks} has none: give every row a \
                         negative, or none"
                    ),
                ));
            }
        }
        examples.push(AnchorPositiveExample {
            anchor: file.text(row, "anchor")?,
            positive: file.text(row, "positive")?,
            negative,
        });
    }
    Ok(examples)
}

/// Reads `tokens` (a list of words) and `ner_tags` (a tag per word, as ids or names). Tag ids
/// and names are assigned as [`read_text_classification`] assigns class ids, `names` being the
/// tag names (a config's `id2label`, or `conll2003`'s `ner_tags` feature names, which a JSON
/// Lines export of integer tags does not carry).
pub fn read_token_classification(
    path: impl AsRef<Path>,
    names: Option<&Labels>,
) -> Result<TokenClassificationData> {
    let file = DatasetFile::read(path.as_ref())?;
    let mut sentences = Vec::with_capacity(file.rows.len());
    for row in &file.rows {
        file.require(row, &[&["tokens", "ner_tags"]])?;
        sentences.push(file.string_list(row, "tokens")?);
    }
    let (tags, per_row) = file.class_lists("ner_tags", names)?;
    let mut examples = Vec::with_capacity(sentences.len());
    for ((row, tokens), tags) in file.rows.iter().zip(sentences).zip(per_row) {
        if tokens.len() != tags.len() {
            return Err(file.invalid(
                row.line,
                format!(
                    "`tokens` has {} words but `ner_tags` has {} tags: each word needs one tag",
                    tokens.len(),
                    tags.len()
                ),
            ));
        }
        examples.push(TokenClassificationExample { tokens, tags });
    }
    Ok(TokenClassificationData { examples, tags })
}

/// Splits `examples` into a train and a test set, as scikit-learn's `train_test_split` sizes
/// them: the test set has `ceil(test_fraction * len)` examples, the train set the rest, both
/// drawn after a shuffle seeded by `seed` (the same seed gives the same split with this
/// version of `rand`). Neither set may come out empty.
pub fn train_test_split<T>(
    mut examples: Vec<T>,
    test_fraction: f64,
    seed: u64,
) -> Result<(Vec<T>, Vec<T>)> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(Error::InvalidInput(format!(
            "test_fraction is {test_fraction}: it must be above 0 and below 1"
        )));
    }
    let total = examples.len();
    // The float product of a fraction and a count below 2^53 is exact enough for `ceil`.
    let test_len = (test_fraction * total as f64).ceil() as usize;
    if test_len == 0 || test_len >= total {
        return Err(Error::InvalidInput(format!(
            "a test fraction of {test_fraction} of {total} examples leaves the train or the \
             test set empty: use more examples or another fraction"
        )));
    }
    examples.shuffle(&mut StdRng::seed_from_u64(seed));
    let train = examples.split_off(test_len);
    Ok((train, examples))
}

/// The order to visit `len` examples in during `epoch`: a permutation of `0..len` drawn from
/// `seed` and `epoch`, the same for the same pair (as PyTorch's `DistributedSampler` reseeds
/// with `seed + epoch`), and a different one each epoch.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut seeded_stream(seed, Stream::EpochOrder, epoch));
    order
}

/// What a run's seeded generator draws for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    /// The order of an epoch's examples, per epoch.
    EpochOrder,
    /// The dropout masks of an optimiser step, per step.
    Dropout,
}

/// The generator of `stream` number `counter` of a run seeded with `seed`. The seed and the
/// counter fill separate bytes of the generator's seed (each stream its own bytes), so no two
/// (seed, stream, counter) share a sequence, as `seed + counter` would.
pub(crate) fn seeded_stream(seed: u64, stream: Stream, counter: u64) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let at = match stream {
        Stream::EpochOrder => 8,
        Stream::Dropout => 16,
    };
    key[at..at + 8].copy_from_slice(&counter.to_le_bytes());
    StdRng::from_seed(key)
}

/// The most classes an unnamed integer column makes: every id up to the largest is a class, so
/// one stray huge id must not allocate a name for each.
const MAX_UNNAMED_CLASSES: usize = 1 << 20;

/// How a dataset file is laid out, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonLines,
    Csv,
}

impl Format {
    fn of(path: &Path) -> Result<Self> {
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("jsonl" | "json") => Ok(Format::JsonLines),
            Some("csv") => Ok(Format::Csv),
            _ => Err(Error::InvalidInput(format!(
                "{}: the extension does not say the dataset's format: name the file .jsonl or \
                 .json (JSON Lines) or .csv",
                path.display()
            ))),
        }
    }
}

/// A class as a row writes it, before the dataset's ids are known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RawClass {
    Id(i64),
    Name(String),
}

/// One row of a dataset file: its cells by column, missing values as null.
struct Row {
    /// Where the row starts, 1-based.
    line: usize,
    cells: Map<String, Value>,
}

/// A dataset file read into rows, which its methods turn into typed values or errors that
/// name the file and the row's line.
struct DatasetFile {
    path: PathBuf,
    format: Format,
    rows: Vec<Row>,
}

impl DatasetFile {
    fn read(path: &Path) -> Result<Self> {
        let format = Format::of(path)?;
        let bytes = std::fs::read(path).map_err(|error| Error::io(path, error))?;
        let mut file = DatasetFile {
            path: path.to_path_buf(),
            format,
            rows: Vec::new(),
        };
        file.rows = match format {
            Format::JsonLines => file.json_lines_rows(&bytes)?,
            Format::Csv => file.csv_rows(&bytes)?,
        };
        if file.rows.is_empty() {
            return Err(file.invalid(1, "the file has no rows"));
        }
        Ok(file)
    }

    fn invalid(&self, line: usize, message: impl Into<String>) -> Error {
        Error::InvalidDataset {
            path: self.path.clone(),
            line,
            message: message.into(),
        }
    }

    fn json_lines_rows(&self, bytes: &[u8]) -> Result<Vec<Row>> {
        let text = std::str::from_utf8(bytes).map_err(|error| {
            let line = 1 + bytes[..error.valid_up_to()]
                .iter()
                .filter(|&&byte| byte == b'\n')
                .count();
            self.invalid(line, "the file is not UTF-8 text")
        })?;
        // Editors on Windows start UTF-8 files with a byte-order mark.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rows = Vec::new();
        for (index, content) in text.lines().enumerate() {
            let line = index + 1;
            if content.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(content)
                .map_err(|error| self.invalid(line, format!("not JSON: {error}")))?;
            let Value::Object(cells) = value else {
                return Err(self.invalid(
                    line,
                    format!(
                        "the line holds {}, not a JSON object: JSON Lines files hold one object \
                         per line, as `datasets`' `to_json` writes them",
                        describe(&value)
                    ),
                ));
            };
            rows.push(Row { line, cells });
        }
        Ok(rows)
    }

    fn csv_rows(&self, bytes: &[u8]) -> Result<Vec<Row>> {
        let mut reader = csv::Reader::from_reader(bytes);
        let header: Vec<String> = reader
            .headers()
            .map_err(|error| self.csv_error(&error))?
            .iter()
            .map(str::to_owned)
            .collect();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|error| self.csv_error(&error))?;
            let line = record
                .position()
                .map_or(1, |position| position.line() as usize);
            let cells = header
                .iter()
                .zip(record.iter())
                .map(|(column, cell)| {
                    // pandas, and so `datasets`, read an empty cell as a missing value.
                    let value = if cell.is_empty() {
                        Value::Null
                    } else {
                        Value::String(cell.to_owned())
                    };
                    (column.clone(), value)
                })
                .collect();
            rows.push(Row { line, cells });
        }
        Ok(rows)
    }

    fn csv_error(&self, error: &csv::Error) -> Error {
        let line = error
            .position()
            .map_or(1, |position| position.line() as usize);
        let message = match error.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("the row has {len} fields but the header has {expected_len}"),
            csv::ErrorKind::Utf8 { .. } => "the row is not UTF-8 text".to_string(),
            _ => format!("not CSV: {error}"),
        };
        self.invalid(line, message)
    }

    /// The text and the optional second segment of a classification row: `text` and
    /// `text_pair`, or `sentence1` and `sentence2`.
    fn segments(&self, row: &Row) -> Result<(String, Option<String>)> {
        let columns: [&[&str]; 2] = [&["text", "label"], &["sentence1", "sentence2", "label"]];
        if self.require(row, &columns)? == 0 {
            Ok((
                self.text(row, "text")?,
                self.optional_text(row, "text_pair")?,
            ))
        } else {
            Ok((
                self.text(row, "sentence1")?,
                Some(self.text(row, "sentence2")?),
            ))
        }
    }

    /// Which of the `alternatives` (each a set of columns) the row has all of, the first that
    /// fits; an error listing them and the row's columns when none does.
    fn require(&self, row: &Row, alternatives: &[&[&str]]) -> Result<usize> {
        if let Some(index) = alternatives
            .iter()
            .position(|columns| columns.iter().all(|column| row.value(column).is_some()))
        {
            return Ok(index);
        }
        let expected: Vec<String> = alternatives
            .iter()
            .map(|columns| and_list(columns))
            .collect();
        let present: Vec<&str> = row
            .cells
            .iter()
            .filter(|(_, value)| !value.is_null())
            .map(|(column, _)| column.as_str())
            .collect();
        let present = if present.is_empty() {
            "none".to_string()
        } else {
            and_list(&present)
        };
        Err(self.invalid(
            row.line,
            format!(
                "expected the columns {}; the row has {present} (null values and empty cells \
                 count as missing)",
                expected.join(", or ")
            ),
        ))
    }

    fn cell<'row>(&self, row: &'row Row, column: &str) -> Result<&'row Value> {
        row.value(column).ok_or_else(|| {
            self.invalid(
                row.line,
                format!("the column `{column}` is missing or empty"),
            )
        })
    }

    fn text(&self, row: &Row, column: &str) -> Result<String> {
        match self.cell(row, column)? {
            Value::String(text) => Ok(text.clone()),
            other => Err(self.wrong_type(row, column, other, "a string")),
        }
    }

    fn optional_text(&self, row: &Row, column: &str) -> Result<Option<String>> {
        match row.value(column) {
            None => Ok(None),
            Some(_) => self.text(row, column).map(Some),
        }
    }

    /// A finite number: a JSON number, or a CSV cell that parses as one.
    fn number(&self, row: &Row, column: &str) -> Result<f32> {
        let value = self.cell(row, column)?;
        let number = match (value, self.format) {
            (Value::Number(number), _) => number.as_f64(),
            (Value::String(text), Format::Csv) => text.trim().parse::<f64>().ok(),
            _ => None,
        };
        match number {
            Some(number) if number.is_finite() => Ok(number as f32),
            _ => Err(self.wrong_type(row, column, value, "a finite number")),
        }
    }

    /// A list cell: a JSON array, written as one in a CSV cell.
    fn list(&self, row: &Row, column: &str) -> Result<Vec<Value>> {
        let value = self.cell(row, column)?;
        let parsed;
        let list = match (value, self.format) {
            (Value::String(text), Format::Csv) => {
                parsed = serde_json::from_str::<Value>(text).map_err(|error| {
                    self.invalid(
                        row.line,
                        format!(
                            "`{column}` is not a JSON array ({error}): a CSV cell holds a list \
                             as `[0, 2]` or `[\"a\", \"b\"]`"
                        ),
                    )
                })?;
                &parsed
            }
            _ => value,
        };
        match list {
            Value::Array(items) => Ok(items.clone()),
            other => Err(self.wrong_type(row, column, other, "a list")),
        }
    }

    fn string_list(&self, row: &Row, column: &str) -> Result<Vec<String>> {
        self.list(row, column)?
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                other => Err(self.wrong_type(row, column, &other, "a list of strings")),
            })
            .collect()
    }

    /// A class as one cell writes it: a JSON integer or string; in CSV, a cell that parses as
    /// an integer is an id (as pandas types an all-integer column), any other a name.
    fn class(&self, row: &Row, column: &str) -> Result<RawClass> {
        match (self.cell(row, column)?, self.format) {
            (Value::String(text), Format::Csv) => Ok(match text.trim().parse::<i64>() {
                Ok(id) => RawClass::Id(id),
                Err(_) => RawClass::Name(text.clone()),
            }),
            (value, _) => self.json_class(row, column, value),
        }
    }

    fn json_class(&self, row: &Row, column: &str, value: &Value) -> Result<RawClass> {
        match value {
            Value::String(name) => Ok(RawClass::Name(name.clone())),
            Value::Number(number) => number.as_i64().map(RawClass::Id).ok_or_else(|| {
                self.invalid(
                    row.line,
                    format!(
                        "`{column}` holds {number}, which is not an integer class id (read a \
                         regression dataset as LabelKind::Regression)"
                    ),
                )
            }),
            other => Err(self.wrong_type(row, column, other, "a class id or name")),
        }
    }

    /// The lists of classes in `column` of every row, resolved to ids.
    fn class_lists(
        &self,
        column: &str,
        names: Option<&Labels>,
    ) -> Result<(Labels, Vec<Vec<usize>>)> {
        let mut raw = Vec::new();
        let mut lengths = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let classes = self.list(row, column)?;
            lengths.push(classes.len());
            for class in &classes {
                raw.push((row.line, self.json_class(row, column, class)?));
            }
        }
        let (labels, ids) = self.resolve_classes(column, &raw, names)?;
        let mut ids = ids.into_iter();
        let per_row = lengths
            .into_iter()
            .map(|length| ids.by_ref().take(length).collect())
            .collect();
        Ok((labels, per_row))
    }

    /// Ids for the classes of `raw` (each with its row's line), and the class names: see
    /// [`read_text_classification`] for how ids and names are assigned.
    fn resolve_classes(
        &self,
        column: &str,
        raw: &[(usize, RawClass)],
        names: Option<&Labels>,
    ) -> Result<(Labels, Vec<usize>)> {
        let names = names.filter(|names| !names.is_empty());
        // The first class decides whether the column holds ids or names.
        let by_id = raw
            .first()
            .is_none_or(|(_, class)| matches!(class, RawClass::Id(_)));
        let labels = match (names, by_id) {
            (Some(names), _) => names.clone(),
            (None, true) => self.unnamed_classes(column, raw)?,
            (None, false) => {
                let sorted: BTreeSet<&str> = raw
                    .iter()
                    .filter_map(|(_, class)| match class {
                        RawClass::Name(name) => Some(name.as_str()),
                        RawClass::Id(_) => None,
                    })
                    .collect();
                Labels::from_names(sorted.into_iter().map(str::to_owned).collect())
            }
        };
        let index: HashMap<&str, usize> = labels
            .names()
            .iter()
            .enumerate()
            .map(|(id, name)| (name.as_str(), id))
            .collect();
        let ids = raw
            .iter()
            .map(|(line, class)| {
                let line = *line;
                match class {
                    RawClass::Id(id) if by_id => self.checked_id(line, column, *id, &labels),
                    RawClass::Name(name) if !by_id => {
                        index.get(name.as_str()).copied().ok_or_else(|| {
                            self.invalid(
                                line,
                                format!(
                                    "`{column}` holds `{name}`, which is not one of the {} names \
                                 given ({})",
                                    labels.len(),
                                    quoted_list(labels.names())
                                ),
                            )
                        })
                    }
                    _ => Err(self.invalid(
                        line,
                        format!(
                            "`{column}` holds {} but line {} holds {}: use class ids or class \
                             names throughout",
                            describe_class(class),
                            raw.first().map_or(line, |(first, _)| *first),
                            if by_id { "an id" } else { "a name" }
                        ),
                    )),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((labels, ids))
    }

    /// `LABEL_0` up to the largest id of `raw`, as transformers names classes it has no names
    /// for.
    fn unnamed_classes(&self, column: &str, raw: &[(usize, RawClass)]) -> Result<Labels> {
        let largest = raw
            .iter()
            .filter_map(|(line, class)| match class {
                RawClass::Id(id) if *id >= 0 => Some((*id, *line)),
                _ => None,
            })
            .max();
        let classes = match largest {
            None => 0,
            Some((id, line)) => {
                usize::try_from(id)
                    .ok()
                    .filter(|&id| id < MAX_UNNAMED_CLASSES)
                    .ok_or_else(|| {
                        self.invalid(
                            line,
                            format!(
                                "`{column}` holds the id {id}: without class names, ids stop at \
                             {}, since every id up to the largest one becomes a class (pass \
                             the names)",
                                MAX_UNNAMED_CLASSES - 1
                            ),
                        )
                    })?
                    + 1
            }
        };
        Ok(Labels::from_names(
            (0..classes).map(|id| format!("LABEL_{id}")).collect(),
        ))
    }

    fn checked_id(&self, line: usize, column: &str, id: i64, labels: &Labels) -> Result<usize> {
        if id < 0 {
            return Err(self.invalid(
                line,
                format!(
                    "`{column}` holds {id}, a negative class id (GLUE's test splits mark \
                     unlabelled rows with -1: leave them out of training)"
                ),
            ));
        }
        usize::try_from(id)
            .ok()
            .filter(|&id| id < labels.len())
            .ok_or_else(|| {
                self.invalid(
                    line,
                    format!(
                        "`{column}` holds {id}, but the {} names given number the classes \
                         0 to {}",
                        labels.len(),
                        labels.len().saturating_sub(1)
                    ),
                )
            })
    }

    fn wrong_type(&self, row: &Row, column: &str, value: &Value, expected: &str) -> Error {
        self.invalid(
            row.line,
            format!("`{column}` holds {}, not {expected}", describe(value)),
        )
    }
}

impl Row {
    /// The cell of `column`, unless it is missing or null.
    fn value(&self, column: &str) -> Option<&Value> {
        self.cells.get(column).filter(|value| !value.is_null())
    }
}

/// A JSON value as an error message names it, with the value when it is short.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(value) => format!("the boolean {value}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) if text.chars().count() <= 40 => format!("the string {text:?}"),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn describe_class(class: &RawClass) -> String {
    match class {
        RawClass::Id(id) => format!("the id {id}"),
        RawClass::Name(name) => format!("the name `{name}`"),
    }
}

/// `a`, `b` and `c`.
fn and_list(columns: &[&str]) -> String {
    let quoted: Vec<String> = columns.iter().map(|column| format!("`{column}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

fn quoted_list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    quoted.join(", ")
}
