//! RerankPipeline against sentence-transformers 5.1.2's `CrossEncoder.rank` and `predict` on
//! tiny cross-encoders (tests/fixtures/cross-encoders.json, made by scripts/make_fixtures.py).
//! Scores within 1e-4 (f32); document order and ids exact.

mod common;

use common::{
    assert_close_slices, assert_json_matches, assert_same_len, fixture_json, fixture_model,
    fixture_sanity,
};
use ferroformers::pipelines::{
    BatchOptions, CrossEncoderActivation, Pipeline, RerankInput, RerankOptions, RerankPipeline,
};
use ferroformers::{EncodeOptions, Error, LoadOptions, TextInput};
use serde_json::Value;

const SCORE_TOLERANCE: f32 = 1e-4;
/// Padding changes matrix shapes and so summation order: float noise, nothing more.
const BATCH_TOLERANCE: f32 = 1e-5;

fn references() -> Value {
    fixture_json("cross-encoders.json")
}

fn pipeline(name: &str) -> RerankPipeline {
    RerankPipeline::from_pretrained(&fixture_model(name), &LoadOptions::default()).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    serde_json::from_value(value.clone()).unwrap()
}

fn pairs(value: &Value) -> Vec<(String, String)> {
    serde_json::from_value::<Vec<[String; 2]>>(value.clone())
        .unwrap()
        .into_iter()
        .map(|[a, b]| (a, b))
        .collect()
}

fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

#[test]
fn rank_matches_cross_encoder_rank() {
    let refs = references();
    // Identity saved in the config (ms-marco style), and no sentence_transformers key at all
    // (bge-reranker style), which means Sigmoid for one label.
    for (name, activation) in [
        ("bert/cross-encoder", CrossEncoderActivation::Identity),
        ("xlm-roberta/cross-encoder", CrossEncoderActivation::Sigmoid),
    ] {
        let case = &refs[name];
        let pipeline = pipeline(name);
        assert_eq!(pipeline.activation(), activation, "{name}");
        let query = case["query"].as_str().unwrap();
        let documents = strings(&case["documents"]);
        let tolerance = f64::from(SCORE_TOLERANCE);

        let all = pipeline
            .rank(query, &documents, &RerankOptions::default())
            .unwrap();
        assert_json_matches(
            &serde_json::to_value(&all).unwrap(),
            &case["rank"],
            tolerance,
            name,
        );

        let top_2 = RerankOptions::default()
            .with_top_k(2)
            .with_return_documents(true);
        let ours = pipeline.rank(query, &documents, &top_2).unwrap();
        assert_json_matches(
            &serde_json::to_value(&ours).unwrap(),
            &case["rank_top_2_with_documents"],
            tolerance,
            &format!("{name} top 2 with documents"),
        );

        let small_batches = RerankOptions::default().with_batch_size(3);
        let ours = pipeline.rank(query, &documents, &small_batches).unwrap();
        assert_json_matches(
            &serde_json::to_value(&ours).unwrap(),
            &case["rank_batch_size_3"],
            tolerance,
            &format!("{name} batches of 3"),
        );

        // run / run_one: the same ranking through the uniform pipeline entry points.
        let documents: Vec<&str> = documents.iter().map(String::as_str).collect();
        let input = RerankInput {
            query,
            documents: &documents,
        };
        let ran = pipeline
            .run([input, input], &RerankOptions::default())
            .unwrap();
        assert_same_len(&ran, &[&all, &all], name);
        for ranking in ran {
            assert_eq!(ranking, all, "{name}: run equals rank");
        }
        let one = pipeline
            .run_one((query, documents.as_slice()), &RerankOptions::default())
            .unwrap();
        assert_eq!(
            one, all,
            "{name}: run_one on a (query, documents) tuple equals rank"
        );
    }
}

#[test]
fn predict_matches_cross_encoder_predict() {
    let refs = references();
    for name in [
        "bert/cross-encoder",
        "xlm-roberta/cross-encoder",
        // Three labels, no activation saved: Identity, the raw logits.
        "bert/sequence-classification",
    ] {
        let case = &refs[name];
        let pipeline = pipeline(name);
        let pairs = pairs(&case["pairs"]);
        let ours = pipeline
            .predict(&as_refs(&pairs), &RerankOptions::default())
            .unwrap();
        // sentence-transformers drops the label axis of one-label models.
        let theirs: Vec<Vec<f32>> = match &case["predict"][0] {
            Value::Array(_) => serde_json::from_value(case["predict"].clone()).unwrap(),
            _ => serde_json::from_value::<Vec<f32>>(case["predict"].clone())
                .unwrap()
                .into_iter()
                .map(|score| vec![score])
                .collect(),
        };
        assert_same_len(&ours, &theirs, name);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_close_slices(a, b, SCORE_TOLERANCE, &format!("{name} pair {i}"));
        }
        // The last pair is longer than the model takes, so it was truncated as
        // sentence-transformers truncates (at the tokenizer's model_max_length, longest first).
        let (query, document) = pairs.last().unwrap();
        let untruncated = pipeline
            .tokenizer()
            .encode(TextInput::Pair(query, document), &EncodeOptions::default())
            .unwrap();
        fixture_sanity(
            untruncated.len() > pipeline.config().max_position_embeddings(),
            "a pair longer than the model takes",
        );
    }
}

#[test]
fn each_pair_alone_scores_as_in_the_batch() {
    let refs = references();
    let name = "xlm-roberta/cross-encoder";
    let pipeline = pipeline(name);
    let pairs = pairs(&refs[name]["pairs"]);
    let pairs = as_refs(&pairs);
    let batch = pipeline.predict(&pairs, &RerankOptions::default()).unwrap();
    for (i, pair) in pairs.iter().enumerate() {
        let alone = pipeline
            .predict(std::slice::from_ref(pair), &RerankOptions::default())
            .unwrap();
        assert_close_slices(
            &alone[0],
            &batch[i],
            BATCH_TOLERANCE,
            &format!("pair {i} alone"),
        );
    }
}

#[test]
fn an_explicit_activation_replaces_the_saved_one() {
    let refs = references();
    let name = "bert/cross-encoder";
    let pipeline = pipeline(name);
    let pairs = pairs(&refs[name]["pairs"]);
    let sigmoid = RerankOptions::default().with_activation(CrossEncoderActivation::Sigmoid);
    let ours = pipeline.predict(&as_refs(&pairs), &sigmoid).unwrap();
    // The saved activation is Identity, so the reference is the logits.
    let logits: Vec<f32> = serde_json::from_value(refs[name]["predict"].clone()).unwrap();
    let expected: Vec<f32> = logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect();
    let ours: Vec<f32> = ours.into_iter().flatten().collect();
    assert_close_slices(&ours, &expected, SCORE_TOLERANCE, "sigmoid of the logits");
}

#[test]
fn ranking_needs_a_single_logit_model() {
    let pipeline = pipeline("bert/sequence-classification");
    let error = pipeline
        .rank("query", &["a document"], &RerankOptions::default())
        .unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    assert!(error.to_string().contains("3 labels"), "{error}");
}
