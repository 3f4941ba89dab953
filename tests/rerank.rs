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
    TruncationOptions,
};
use ferroformers::{EncodeOptions, Error, LoadOptions, TextInput, WeightType};
use serde_json::Value;

const SCORE_TOLERANCE: f32 = 1e-4;
/// Padding changes matrix shapes and so summation order: float noise, nothing more.
const BATCH_TOLERANCE: f32 = 1e-5;
/// An LLM reranker's scores with bf16 and int8 weights against the f32 reference: about 4×
/// the largest gap measured on the fixture's scores (printed by the test): bf16 4.5e-3 on the
/// AVX-512 kernels of a Zen 4, 2.2e-3 with AVX2 or portable ones; int8 1.1e-2 and 1.3e-2.
const BF16_SCORE_BAR: f32 = 2e-2;
const INT8_SCORE_BAR: f32 = 5e-2;

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

/// One case of tests/fixtures/qwen3/reranker/reference.json: its options (length, and the
/// instruction when it has one), query and documents.
fn yes_no_case(case: &Value) -> (RerankOptions, &str, Vec<String>) {
    let mut options =
        RerankOptions::default().with_max_length(case["max_length"].as_u64().unwrap() as usize);
    if let Some(instruction) = case["instruction"].as_str() {
        options = options.with_instruction(instruction);
    }
    let query = case["query"].as_str().unwrap();
    (options, query, strings(&case["documents"]))
}

/// An LLM reranker (Qwen3-Reranker's layout, tests/fixtures/qwen3/reranker) against the model
/// card's scoring code run by scripts/make_fixtures.py: prompts token for token, cut where it
/// cuts them; scores within 1e-4 (f32) of its left-padded batch; each pair scored alone within
/// 1e-5 of the same pair in a batch (our positions skip the padding, so only summation order
/// differs).
#[test]
fn llm_reranker_matches_the_model_cards_yes_no_scores() {
    let refs = fixture_json("qwen3/reranker/reference.json");
    let pipeline = pipeline("qwen3/reranker");
    assert!(pipeline.is_yes_no());
    assert_eq!(pipeline.activation(), CrossEncoderActivation::Sigmoid);
    let cases = refs["cases"].as_array().unwrap();
    fixture_sanity(cases.len() == 3, "three cases");
    for (index, case) in cases.iter().enumerate() {
        let what = format!("case {index}");
        let (options, query, documents) = yes_no_case(case);
        let pairs: Vec<(&str, &str)> = documents.iter().map(|d| (query, d.as_str())).collect();

        let ids: Vec<Vec<u32>> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let encodings = pipeline.encode_pairs(&pairs, &options).unwrap();
        let ours: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
        assert_eq!(ours, ids, "{what}: prompts");

        let expected: Vec<f32> = serde_json::from_value(case["scores"].clone()).unwrap();
        let scores: Vec<f32> = pipeline
            .predict(&pairs, &options)
            .unwrap()
            .into_iter()
            .map(|row| row[0])
            .collect();
        assert_close_slices(&scores, &expected, SCORE_TOLERANCE, &what);
        for (pair, &batched) in pairs.iter().zip(&scores) {
            let alone = pipeline.predict(&[*pair], &options).unwrap()[0][0];
            assert_close_slices(
                &[alone],
                &[batched],
                BATCH_TOLERANCE,
                &format!("{what} alone"),
            );
        }

        // rank: the same scores, best first.
        let ranked = pipeline.rank(query, &documents, &options).unwrap();
        let mut order: Vec<usize> = (0..expected.len()).collect();
        order.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]));
        let ids: Vec<usize> = ranked.iter().map(|r| r.corpus_id).collect();
        assert_eq!(ids, order, "{what}: ranking");
    }
    // The default length (the tokenizer's 256 here) is the first case's.
    let first = &cases[0];
    let documents = strings(&first["documents"]);
    let ranked = pipeline
        .rank(
            first["query"].as_str().unwrap(),
            &documents,
            &RerankOptions::default(),
        )
        .unwrap();
    let expected: Vec<f32> = serde_json::from_value(first["scores"].clone()).unwrap();
    for document in ranked {
        assert_close_slices(
            &[document.score],
            &[expected[document.corpus_id]],
            SCORE_TOLERANCE,
            "default options",
        );
    }
}

/// An instruction is an LLM reranker's; a cross-encoder refuses it rather than drop it. A
/// Llama-family checkpoint whose tokenizer lacks "yes" is no yes/no reranker.
#[test]
fn rerankers_refuse_what_they_cannot_use() {
    let cross_encoder = pipeline("bert/cross-encoder");
    let options = RerankOptions::default().with_instruction("Find the answer");
    match cross_encoder.rank("q", &["d"], &options) {
        Err(Error::InvalidInput(message)) => assert!(message.contains("instruction"), "{message}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    match RerankPipeline::from_pretrained(&fixture_model("qwen3/lm-head"), &LoadOptions::default())
    {
        Err(Error::InvalidConfig(message)) => assert!(message.contains("`yes`"), "{message}"),
        other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
    }
}

/// The LLM reranker in bf16 and int8 weights: the largest gap to the f32 reference scores
/// over the fixture's cases, printed; the bars are the measured gaps with room to spare.
#[test]
fn llm_reranker_scores_in_bf16_and_int8_stay_near_f32() {
    let refs = fixture_json("qwen3/reranker/reference.json");
    for (weight_type, bar) in [
        (WeightType::Bf16, BF16_SCORE_BAR),
        (WeightType::Int8, INT8_SCORE_BAR),
    ] {
        let pipeline = RerankPipeline::from_pretrained(
            &fixture_model("qwen3/reranker"),
            &LoadOptions::default().with_weight_type(weight_type),
        )
        .unwrap();
        let mut gap = 0f32;
        for case in refs["cases"].as_array().unwrap() {
            let (options, query, documents) = yes_no_case(case);
            let pairs: Vec<(&str, &str)> = documents.iter().map(|d| (query, d.as_str())).collect();
            let expected: Vec<f32> = serde_json::from_value(case["scores"].clone()).unwrap();
            let scores: Vec<f32> = pipeline
                .predict(&pairs, &options)
                .unwrap()
                .into_iter()
                .map(|row| row[0])
                .collect();
            gap = gap.max(assert_close_slices(
                &scores,
                &expected,
                bar,
                &format!("{weight_type}"),
            ));
        }
        let isa = ferroformers::kernels::isa::Isa::best().name();
        eprintln!("{weight_type} on the {isa} kernels: largest score gap to f32 {gap:e}");
    }
}
