//! `training::data`: each task's dataset read from JSON Lines and from CSV, the class
//! vocabularies built from them, every malformed row reported with its file and line, and the
//! seeded split and epoch orders.

use std::path::{Path, PathBuf};

use ferroformers::training::data::{
    epoch_order, read_anchor_positive, read_scored_pairs, read_text_classification,
    read_token_classification, train_test_split, AnchorPositiveExample, ClassificationLabel,
    LabelKind, ScoredPairExample, TextClassificationExample,
};
use ferroformers::{Error, Labels};
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, content: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn names(labels: &Labels) -> Vec<&str> {
    labels.names().iter().map(String::as_str).collect()
}

fn owned(names: &[&str]) -> Labels {
    Labels::from_names(names.iter().map(|name| name.to_string()).collect())
}

/// The line and message of an `InvalidDataset` error about `path`, after checking that its
/// text starts with `path:line:` as a compiler's errors do.
fn dataset_error<T: std::fmt::Debug>(
    result: ferroformers::Result<T>,
    path: &Path,
) -> (usize, String) {
    let error = result.expect_err("the file is invalid");
    let text = error.to_string();
    match error {
        Error::InvalidDataset {
            path: at,
            line,
            message,
        } => {
            assert_eq!(at, path);
            assert!(
                text.starts_with(&format!("{}:{line}: ", path.display())),
                "{text}"
            );
            (line, message)
        }
        other => panic!("expected InvalidDataset, got {other:?}"),
    }
}

fn example(
    text: &str,
    text_pair: Option<&str>,
    label: ClassificationLabel,
) -> TextClassificationExample {
    TextClassificationExample {
        text: text.into(),
        text_pair: text_pair.map(Into::into),
        label,
    }
}

#[test]
fn text_classification_with_integer_labels_names_the_classes_label_i() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "sst2.jsonl",
        "{\"text\": \"great\", \"label\": 1, \"idx\": 0}\n\
         \n\
         {\"text\": \"awful\", \"label\": 0, \"text_pair\": null}\n\
         {\"text\": \"fine\", \"text_pair\": \"ok\", \"label\": 2}\n",
    );
    let data = read_text_classification(&path, LabelKind::SingleLabel, None).unwrap();
    assert_eq!(
        data.examples,
        [
            example("great", None, ClassificationLabel::Class(1)),
            example("awful", None, ClassificationLabel::Class(0)),
            example("fine", Some("ok"), ClassificationLabel::Class(2)),
        ]
    );
    assert_eq!(names(&data.labels), ["LABEL_0", "LABEL_1", "LABEL_2"]);

    // A model config's id2label names them instead; an empty one (no id2label) does not.
    let given = owned(&["negative", "positive", "neutral"]);
    let data = read_text_classification(&path, LabelKind::SingleLabel, Some(&given)).unwrap();
    assert_eq!(names(&data.labels), ["negative", "positive", "neutral"]);
    let data =
        read_text_classification(&path, LabelKind::SingleLabel, Some(&Labels::default())).unwrap();
    assert_eq!(data.labels.len(), 3);
}

#[test]
fn string_labels_get_ids_in_sorted_order_unless_names_are_given() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "emotions.json",
        "{\"text\": \"yay\", \"label\": \"joy\"}\n\
         {\"text\": \"grr\", \"label\": \"anger\"}\n\
         {\"text\": \"hm\", \"label\": \"neutral\"}\n\
         {\"text\": \"yes\", \"label\": \"joy\"}\n",
    );
    let data = read_text_classification(&path, LabelKind::SingleLabel, None).unwrap();
    assert_eq!(names(&data.labels), ["anger", "joy", "neutral"]);
    let ids: Vec<_> = data.examples.iter().map(|e| e.label.clone()).collect();
    assert_eq!(ids, [1, 0, 2, 1].map(ClassificationLabel::Class).to_vec());

    let given = owned(&["neutral", "joy", "anger", "fear"]);
    let data = read_text_classification(&path, LabelKind::SingleLabel, Some(&given)).unwrap();
    assert_eq!(names(&data.labels), ["neutral", "joy", "anger", "fear"]);
    let ids: Vec<_> = data.examples.iter().map(|e| e.label.clone()).collect();
    assert_eq!(ids, [1, 2, 0, 1].map(ClassificationLabel::Class).to_vec());
}

#[test]
fn csv_pairs_with_quoted_cells_and_integer_labels() {
    let dir = TempDir::new().unwrap();
    // A quoted cell spans two lines, as pandas writes a text with a newline.
    let path = write(
        &dir,
        "mrpc.csv",
        "idx,sentence1,sentence2,label\n\
         0,\"He said, \"\"yes\"\".\",He agreed.,1\n\
         1,\"Two\nlines\",One line,0\n",
    );
    let data = read_text_classification(&path, LabelKind::SingleLabel, None).unwrap();
    assert_eq!(
        data.examples,
        [
            example(
                "He said, \"yes\".",
                Some("He agreed."),
                ClassificationLabel::Class(1)
            ),
            example(
                "Two\nlines",
                Some("One line"),
                ClassificationLabel::Class(0)
            ),
        ]
    );
    assert_eq!(names(&data.labels), ["LABEL_0", "LABEL_1"]);

    let path = write(
        &dir,
        "names.csv",
        "text,label\nbad,neg\ngood,pos\nmeh,neg\n",
    );
    let data = read_text_classification(&path, LabelKind::SingleLabel, None).unwrap();
    assert_eq!(names(&data.labels), ["neg", "pos"]);
    assert_eq!(data.examples[1].label, ClassificationLabel::Class(1));
}

#[test]
fn multi_label_lists_of_ids_or_names_from_json_lines_and_csv() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "go_emotions.jsonl",
        "{\"text\": \"a\", \"label\": [\"sadness\", \"anger\", \"anger\"]}\n\
         {\"text\": \"b\", \"label\": []}\n\
         {\"text\": \"c\", \"label\": [\"joy\"]}\n",
    );
    let data = read_text_classification(&path, LabelKind::MultiLabel, None).unwrap();
    assert_eq!(names(&data.labels), ["anger", "joy", "sadness"]);
    let labels: Vec<_> = data.examples.iter().map(|e| e.label.clone()).collect();
    assert_eq!(
        labels,
        [vec![0, 2], vec![], vec![1]]
            .map(ClassificationLabel::Classes)
            .to_vec()
    );

    let path = write(&dir, "go_emotions.csv", "text,label\na,\"[3, 0]\"\nb,[]\n");
    let data = read_text_classification(&path, LabelKind::MultiLabel, None).unwrap();
    assert_eq!(data.labels.len(), 4);
    let labels: Vec<_> = data.examples.iter().map(|e| e.label.clone()).collect();
    assert_eq!(
        labels,
        [vec![0, 3], vec![]]
            .map(ClassificationLabel::Classes)
            .to_vec()
    );
}

#[test]
fn regression_reads_integers_and_floats_as_scores() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "stsb.jsonl",
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"label\": 1}\n\
         {\"sentence1\": \"c\", \"sentence2\": \"d\", \"label\": 3.75}\n",
    );
    let data = read_text_classification(&path, LabelKind::Regression, None).unwrap();
    assert_eq!(data.examples[0].label, ClassificationLabel::Score(1.0));
    assert_eq!(data.examples[1].label, ClassificationLabel::Score(3.75));
    assert_eq!(names(&data.labels), ["LABEL_0"]);

    let path = write(&dir, "stsb.csv", "text,label\na, 0.5\n");
    let data = read_text_classification(&path, LabelKind::Regression, None).unwrap();
    assert_eq!(data.examples[0].label, ClassificationLabel::Score(0.5));
}

#[test]
fn scored_pairs_take_score_or_label_as_the_score() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "sts.jsonl",
        "{\"sentence1\": \"a\", \"sentence2\": \"b\", \"score\": 0.25}\n\
         {\"sentence1\": \"c\", \"sentence2\": \"d\", \"score\": 1, \"label\": 0}\n",
    );
    let pairs = read_scored_pairs(&path).unwrap();
    let expected = |s1: &str, s2: &str, score| ScoredPairExample {
        sentence1: s1.into(),
        sentence2: s2.into(),
        score,
    };
    assert_eq!(pairs, [expected("a", "b", 0.25), expected("c", "d", 1.0)]);

    let path = write(
        &dir,
        "cross-encoder.csv",
        "sentence1,sentence2,label\nquery,relevant,1\nquery,other,0\n",
    );
    let pairs = read_scored_pairs(&path).unwrap();
    assert_eq!(
        pairs,
        [
            expected("query", "relevant", 1.0),
            expected("query", "other", 0.0)
        ]
    );
}

#[test]
fn anchor_positive_pairs_and_triplets() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "triplets.jsonl",
        "{\"anchor\": \"q\", \"positive\": \"p\", \"negative\": \"n\"}\n",
    );
    assert_eq!(
        read_anchor_positive(&path).unwrap(),
        [AnchorPositiveExample {
            anchor: "q".into(),
            positive: "p".into(),
            negative: Some("n".into()),
        }]
    );
    let path = write(&dir, "pairs.csv", "anchor,positive\nq1,p1\nq2,p2\n");
    let pairs = read_anchor_positive(&path).unwrap();
    assert_eq!(pairs.len(), 2);
    assert_eq!(pairs[1].positive, "p2");
    assert!(pairs.iter().all(|pair| pair.negative.is_none()));
}

#[test]
fn token_classification_tags_by_name_or_by_id() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "ner.jsonl",
        "{\"tokens\": [\"EU\", \"rejects\", \"German\"], \"ner_tags\": [\"B-ORG\", \"O\", \"B-MISC\"]}\n\
         {\"tokens\": [], \"ner_tags\": []}\n",
    );
    let data = read_token_classification(&path, None).unwrap();
    assert_eq!(names(&data.tags), ["B-MISC", "B-ORG", "O"]);
    assert_eq!(data.examples[0].tokens, ["EU", "rejects", "German"]);
    assert_eq!(data.examples[0].tags, [1, 2, 0]);
    assert!(data.examples[1].tokens.is_empty());

    // conll2003 as a CSV export: integer tags in JSON arrays, named by the dataset's feature.
    let path = write(
        &dir,
        "conll2003.csv",
        "id,tokens,ner_tags\n0,\"[\"\"EU\"\", \"\"rejects\"\"]\",\"[3, 0]\"\n",
    );
    let conll = owned(&["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]);
    let data = read_token_classification(&path, Some(&conll)).unwrap();
    assert_eq!(data.examples[0].tokens, ["EU", "rejects"]);
    assert_eq!(data.examples[0].tags, [3, 0]);
    assert_eq!(data.tags.len(), 5);
    let data = read_token_classification(&path, None).unwrap();
    assert_eq!(
        names(&data.tags),
        ["LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3"]
    );
}

#[test]
fn missing_columns_name_the_expected_and_the_present_ones() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "rows.jsonl",
        "{\"text\": \"a\", \"label\": 0}\n{\"sentence\": \"b\", \"label\": 1}\n",
    );
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, None),
        &path,
    );
    assert_eq!(line, 2);
    assert!(
        message.contains("`text` and `label`, or `sentence1`, `sentence2` and `label`"),
        "{message}"
    );
    assert!(
        message.contains("the row has `label` and `sentence`"),
        "{message}"
    );

    // In CSV an empty cell is a missing value, as pandas reads it.
    let path = write(
        &dir,
        "rows.csv",
        "tokens,ner_tags\n\"[\"\"a\"\"]\",\"[0]\"\n\"[\"\"b\"\"]\",\n",
    );
    let (line, message) = dataset_error(read_token_classification(&path, None), &path);
    assert_eq!(line, 3);
    assert!(message.contains("`tokens` and `ner_tags`"), "{message}");
}

#[test]
fn class_ids_out_of_range_unknown_names_and_mixed_kinds_are_errors() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "glue-test.jsonl",
        "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": -1}\n",
    );
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, None),
        &path,
    );
    assert_eq!(
        (line, message.contains("negative class id")),
        (2, true),
        "{message}"
    );

    let path = write(&dir, "range.csv", "text,label\na,0\nb,1\nc,2\n");
    let two = owned(&["neg", "pos"]);
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, Some(&two)),
        &path,
    );
    assert_eq!(line, 4);
    assert!(
        message.contains("holds 2, but the 2 names given"),
        "{message}"
    );

    let path = write(&dir, "unknown.csv", "text,label\na,pos\nb,neutral\n");
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, Some(&two)),
        &path,
    );
    assert_eq!(line, 3);
    assert!(
        message.contains("`neutral`, which is not one of the 2 names given (`neg`, `pos`)"),
        "{message}"
    );

    let path = write(
        &dir,
        "mixed.jsonl",
        "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": \"pos\"}\n",
    );
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, None),
        &path,
    );
    assert_eq!(line, 2);
    assert!(
        message.contains("the name `pos` but line 1 holds an id"),
        "{message}"
    );

    // Every id up to the largest becomes a class, so a stray huge one is refused.
    let path = write(
        &dir,
        "huge.jsonl",
        "{\"text\": \"a\", \"label\": 4000000000}\n",
    );
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, None),
        &path,
    );
    assert_eq!(line, 1);
    assert!(message.contains("pass the names"), "{message}");
}

#[test]
fn values_of_the_wrong_type_are_errors() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "float.jsonl", "{\"text\": \"a\", \"label\": 0.5}\n");
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, None),
        &path,
    );
    assert_eq!(line, 1);
    assert!(message.contains("LabelKind::Regression"), "{message}");

    let path = write(
        &dir,
        "text.jsonl",
        "{\"text\": \"a\", \"label\": 0}\n{\"text\": 7, \"label\": 0}\n",
    );
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::SingleLabel, None),
        &path,
    );
    assert_eq!(
        (line, message.as_str()),
        (2, "`text` holds the number 7, not a string")
    );

    let path = write(&dir, "score.csv", "sentence1,sentence2,score\na,b,high\n");
    let (line, message) = dataset_error(read_scored_pairs(&path), &path);
    assert_eq!(line, 2);
    assert!(message.contains("not a finite number"), "{message}");

    let path = write(&dir, "nan.csv", "sentence1,sentence2,score\na,b,NaN\n");
    let (line, _) = dataset_error(read_scored_pairs(&path), &path);
    assert_eq!(line, 2);

    let path = write(&dir, "list.csv", "text,label\na,\"[0, 1\"\n");
    let (line, message) = dataset_error(
        read_text_classification(&path, LabelKind::MultiLabel, None),
        &path,
    );
    assert_eq!(line, 2);
    assert!(message.contains("not a JSON array"), "{message}");

    let path = write(
        &dir,
        "tokens.jsonl",
        "{\"tokens\": \"EU rejects\", \"ner_tags\": [0, 0]}\n",
    );
    let (_, message) = dataset_error(read_token_classification(&path, None), &path);
    assert!(message.contains("not a list"), "{message}");
}

#[test]
fn tags_and_tokens_of_unequal_length_are_an_error() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "ner.jsonl",
        "{\"tokens\": [\"a\"], \"ner_tags\": [0]}\n{\"tokens\": [\"a\", \"b\"], \"ner_tags\": [0]}\n",
    );
    let (line, message) = dataset_error(read_token_classification(&path, None), &path);
    assert_eq!(line, 2);
    assert!(
        message.contains("`tokens` has 2 words but `ner_tags` has 1 tags"),
        "{message}"
    );
}

#[test]
fn negatives_must_be_in_every_row_or_none() {
    let dir = TempDir::new().unwrap();
    let path = write(
        &dir,
        "triplets.jsonl",
        "{\"anchor\": \"q\", \"positive\": \"p\", \"negative\": \"n\"}\n\
         {\"anchor\": \"q\", \"positive\": \"p\"}\n",
    );
    let (line, message) = dataset_error(read_anchor_positive(&path), &path);
    assert_eq!(line, 2);
    assert!(
        message.contains("the first row has a `negative` and this row has none"),
        "{message}"
    );
}

#[test]
fn files_that_are_not_rows_are_errors_at_their_line() {
    let dir = TempDir::new().unwrap();
    for (name, content, line) in [
        ("empty.jsonl", "\n\n", 1),
        ("header-only.csv", "text,label\n", 1),
        (
            "not-json.jsonl",
            "{\"text\": \"a\", \"label\": 0}\n{\"text\": \n",
            2,
        ),
        ("array.json", "[{\"text\": \"a\", \"label\": 0}]\n", 1),
        ("short-row.csv", "text,label\na,0\nb\n", 3),
    ] {
        let path = write(&dir, name, content);
        let (at, message) = dataset_error(
            read_text_classification(&path, LabelKind::SingleLabel, None),
            &path,
        );
        assert_eq!(at, line, "{name}: {message}");
    }

    // Latin-1's é is one byte that is not UTF-8.
    for name in ["latin1.jsonl", "latin1.csv"] {
        let path = dir.path().join(name);
        let content: &[u8] = if name.ends_with(".csv") {
            b"text,label\nok,1\ncaf\xe9,0\n"
        } else {
            b"{\"text\": \"ok\", \"label\": 1}\n\n{\"text\": \"caf\xe9\", \"label\": 0}\n"
        };
        std::fs::write(&path, content).unwrap();
        let (at, message) = dataset_error(
            read_text_classification(&path, LabelKind::SingleLabel, None),
            &path,
        );
        assert_eq!(at, 3, "{name}: {message}");
        assert!(message.contains("not UTF-8"), "{message}");
    }

    let path = write(&dir, "data.txt", "text,label\n");
    let error = read_text_classification(&path, LabelKind::SingleLabel, None).unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error}");
}

#[test]
fn train_test_split_is_seeded_and_sized_as_scikit_learn_sizes_it() {
    let examples: Vec<u32> = (0..10).collect();
    let (train, test) = train_test_split(examples.clone(), 0.25, 42).unwrap();
    // ceil(0.25 * 10) = 3 test examples.
    assert_eq!((train.len(), test.len()), (7, 3));
    let mut all: Vec<u32> = train.iter().chain(&test).copied().collect();
    all.sort();
    assert_eq!(all, examples);
    assert_eq!(
        train_test_split(examples.clone(), 0.25, 42).unwrap(),
        (train.clone(), test)
    );
    assert_ne!(
        train_test_split(examples.clone(), 0.25, 7).unwrap().0,
        train
    );

    for fraction in [0.0, 1.0, -0.5, f64::NAN] {
        assert!(
            train_test_split(examples.clone(), fraction, 0).is_err(),
            "{fraction}"
        );
    }
    // One example cannot fill both sets.
    assert!(train_test_split(vec![1], 0.5, 0).is_err());
}

#[test]
fn epoch_order_is_a_permutation_fixed_by_seed_and_epoch() {
    let first = epoch_order(50, 3, 0);
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_eq!(epoch_order(50, 3, 0), first);
    assert_ne!(epoch_order(50, 3, 1), first);
    assert_ne!(epoch_order(50, 4, 0), first);
    assert!(epoch_order(0, 3, 0).is_empty());
}
