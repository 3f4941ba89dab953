//! `training::metrics` against scikit-learn, SciPy and seqeval on the cases of
//! `tests/fixtures/training/metrics.json` (`scripts/make_fixtures.py --only training-metrics`):
//! scores within 1e-9, entity counts equal.

mod common;

use common::fixture_json;
use ferroformers::training::metrics::{
    accuracy, mean_squared_error, multi_label_scores, pearson, precision_recall_f1, seqeval,
    spearman, Average, PrecisionRecallF1,
};
use serde_json::Value;

const TOLERANCE: f64 = 1e-9;

fn cases(section: &str) -> Vec<Value> {
    fixture_json("training/metrics.json")[section]
        .as_array()
        .unwrap_or_else(|| panic!("metrics.json has no `{section}` list"))
        .clone()
}

fn ids(value: &Value) -> Vec<usize> {
    serde_json::from_value(value.clone()).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    serde_json::from_value(value.clone()).unwrap()
}

fn multi_hot(value: &Value) -> Vec<Vec<bool>> {
    let rows: Vec<Vec<u8>> = serde_json::from_value(value.clone()).unwrap();
    rows.into_iter()
        .map(|row| row.into_iter().map(|cell| cell == 1).collect())
        .collect()
}

fn tags(value: &Value) -> Vec<Vec<String>> {
    serde_json::from_value(value.clone()).unwrap()
}

fn assert_close(case: &str, what: &str, actual: f64, expected: &Value) {
    let expected = expected
        .as_f64()
        .unwrap_or_else(|| panic!("{case}: {what} is not a number"));
    assert!(
        (actual - expected).abs() <= TOLERANCE,
        "{case}: {what} is {actual}, the reference {expected}"
    );
}

fn assert_scores(case: &str, what: &str, actual: PrecisionRecallF1, expected: &Value) {
    assert_close(
        case,
        &format!("{what} precision"),
        actual.precision,
        &expected["precision"],
    );
    assert_close(
        case,
        &format!("{what} recall"),
        actual.recall,
        &expected["recall"],
    );
    assert_close(case, &format!("{what} f1"), actual.f1, &expected["f1"]);
}

#[test]
fn classification_scores_match_scikit_learn() {
    for case in cases("classification") {
        let name = case["name"].as_str().unwrap();
        let (predictions, references) = (ids(&case["predictions"]), ids(&case["references"]));
        assert_close(
            name,
            "accuracy",
            accuracy(&predictions, &references).unwrap(),
            &case["accuracy"],
        );
        for (average, key) in [(Average::Micro, "micro"), (Average::Macro, "macro")] {
            let scores = precision_recall_f1(&predictions, &references, average).unwrap();
            assert_scores(name, key, scores, &case[key]);
        }
        let binary = precision_recall_f1(&predictions, &references, Average::Binary);
        if case["binary"].is_null() {
            assert!(
                binary.is_err(),
                "{name}: binary scores of more than two classes"
            );
        } else {
            assert_scores(name, "binary", binary.unwrap(), &case["binary"]);
        }
    }
}

#[test]
fn multi_label_scores_match_scikit_learn() {
    for case in cases("multi_label") {
        let name = case["name"].as_str().unwrap();
        let scores = multi_label_scores(
            &multi_hot(&case["predictions"]),
            &multi_hot(&case["references"]),
        )
        .unwrap();
        assert_scores(name, "micro", scores.micro, &case["micro"]);
        assert_close(
            name,
            "subset accuracy",
            scores.subset_accuracy,
            &case["subset_accuracy"],
        );
    }
}

#[test]
fn regression_scores_match_scikit_learn_and_scipy() {
    for case in cases("regression") {
        let name = case["name"].as_str().unwrap();
        let (predictions, references) = (floats(&case["predictions"]), floats(&case["references"]));
        let mse = mean_squared_error(&predictions, &references).unwrap();
        // null: scikit-learn's squares overflowed to inf, as ours must.
        if case["mean_squared_error"].is_null() {
            assert!(mse.is_infinite(), "{name}: MSE {mse}");
        } else {
            assert_close(name, "MSE", mse, &case["mean_squared_error"]);
        }
        for (correlation, key) in [
            (pearson(&predictions, &references).unwrap(), "pearson"),
            (spearman(&predictions, &references).unwrap(), "spearman"),
        ] {
            match correlation {
                // SciPy's NaN for a constant input is our None.
                None => assert!(case[key].is_null(), "{name}: {key} is None"),
                Some(value) => assert_close(name, key, value, &case[key]),
            }
        }
    }
}

#[test]
fn f32_inputs_score_as_their_f64_values() {
    let case = &cases("regression")[0];
    let predictions = floats(&case["predictions"]);
    let references = floats(&case["references"]);
    // The "ties" case holds values that f32 represents exactly.
    let narrow = |values: &[f64]| values.iter().map(|&value| value as f32).collect::<Vec<_>>();
    let (predictions_f32, references_f32) = (narrow(&predictions), narrow(&references));
    assert_eq!(
        spearman(&predictions_f32, &references_f32).unwrap(),
        spearman(&predictions, &references).unwrap()
    );
    assert_eq!(
        pearson(&predictions_f32, &references_f32).unwrap(),
        pearson(&predictions, &references).unwrap()
    );
}

#[test]
fn entity_scores_match_seqeval() {
    for case in cases("seqeval") {
        let name = case["name"].as_str().unwrap();
        let scores = seqeval(&tags(&case["predictions"]), &tags(&case["references"])).unwrap();
        assert_close(name, "precision", scores.precision, &case["precision"]);
        assert_close(name, "recall", scores.recall, &case["recall"]);
        assert_close(name, "f1", scores.f1, &case["f1"]);
        assert_close(name, "accuracy", scores.accuracy, &case["accuracy"]);
        let counts = |key: &str| case[key].as_u64().unwrap() as usize;
        assert_eq!(
            (
                scores.true_entities,
                scores.predicted_entities,
                scores.correct_entities
            ),
            (
                counts("true_entities"),
                counts("predicted_entities"),
                counts("correct_entities")
            ),
            "{name}: true, predicted and correct entities"
        );
    }
}

#[test]
fn two_classes_average_as_binary_and_more_as_macro() {
    assert_eq!(Average::for_classes(2), Average::Binary);
    assert_eq!(Average::for_classes(3), Average::Macro);
    assert_eq!(Average::for_classes(1), Average::Macro);
}

#[test]
fn inputs_that_cannot_be_scored_are_errors() {
    assert!(accuracy(&[0, 1], &[0]).is_err());
    assert!(accuracy::<usize>(&[], &[]).is_err());
    assert!(precision_recall_f1(&[0, 2], &[0, 1], Average::Binary).is_err());
    assert!(multi_label_scores(&[vec![true, false]], &[vec![true]]).is_err());
    assert!(mean_squared_error::<f64>(&[], &[]).is_err());
    assert!(pearson(&[1.0], &[2.0]).is_err());
    assert!(spearman(&[1.0, 2.0], &[1.0, f64::NAN]).is_err());
    assert!(pearson(&[1.0, 2.0, 3.0], &[1.0, 2.0]).is_err());
    let sentence = |tags: &[&str]| vec![tags.iter().map(|tag| tag.to_string()).collect::<Vec<_>>()];
    assert!(seqeval(&sentence(&["B-PER", "O"]), &sentence(&["B-PER"])).is_err());
    assert!(seqeval(&sentence(&["", "O"]), &sentence(&["B-PER", "O"])).is_err());
    assert!(seqeval(&sentence(&[]), &sentence(&[])).is_err());
}
