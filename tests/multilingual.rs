//! XLM-RoBERTa and CamemBERT beyond the model heads (those are in tests/encoders.rs): their
//! SentencePiece tokenizers against transformers' fast tokenizers, truncation at
//! `model_max_length` with RoBERTa's position offset, and the pipelines against transformers'
//! (tests/fixtures/multilingual-pipelines.json, made by scripts/make_fixtures.py with
//! transformers 4.57.6). Scores within 1e-4 (f32); ids, tokens, offsets, texts exact.

mod common;

use common::{assert_json_matches, assert_same_len, fixture_json, fixture_model, fixture_sanity};
use ferroformers::pipelines::{
    Entity, FillMaskOptions, FillMaskPipeline, Pipeline, TextClassificationOptions,
    TextClassificationPipeline, TokenClassificationOptions, TokenClassificationPipeline,
};
use ferroformers::{
    AutoModel, Device, EncodeOptions, FromPretrained, HubOptions, LoadOptions, TextInput, Tokenizer,
};
use serde_json::Value;

const SCORE_TOLERANCE: f64 = 1e-4;
const FAMILIES: [&str; 2] = ["xlm-roberta", "camembert"];

fn tokenizer(family: &str) -> Tokenizer {
    Tokenizer::from_pretrained(
        &fixture_model(&format!("{family}/base")),
        &HubOptions::default().with_offline(true),
    )
    .unwrap()
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn sentencepiece_tokenizers_match_transformers() {
    for family in FAMILIES {
        let tokenizer = tokenizer(family);
        let reference = fixture_json(&format!("{family}/tokenizer-reference.json"));
        let cases = reference["cases"].as_array().unwrap();
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let input = match case["text_pair"].as_str() {
                Some(pair) => TextInput::Pair(text, pair),
                None => TextInput::Single(text),
            };
            let what = format!("{family} {text:?}");
            let encoding = tokenizer.encode(input, &EncodeOptions::default()).unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(encoding.get_ids(), ids.as_slice(), "{what}: ids");
            let tokens: Vec<String> = serde_json::from_value(case["tokens"].clone()).unwrap();
            // transformers' `convert_ids_to_tokens`: vocabulary entries, so `<unk>` where the
            // encoding itself keeps the unknown text.
            let ours: Vec<String> = encoding
                .get_ids()
                .iter()
                .map(|&id| tokenizer.id_to_token(id).unwrap())
                .collect();
            assert_eq!(ours, tokens, "{what}: tokens");
            let offsets: Vec<(usize, usize)> =
                serde_json::from_value(case["offsets"].clone()).unwrap();
            assert_eq!(
                encoding.get_offsets(),
                offsets.as_slice(),
                "{what}: offsets"
            );
            assert_eq!(
                tokenizer.decode(&ids, false).unwrap(),
                case["decode"].as_str().unwrap(),
                "{what}: decode"
            );
            assert_eq!(
                tokenizer.decode(&ids, true).unwrap(),
                case["decode_skip_special"].as_str().unwrap(),
                "{what}: decode without special tokens"
            );
        }
        // What the comparison must cover: the normaliser at work (fullwidth letters folded),
        // an unknown character, and a text whose first piece is a bare `▁`.
        let tokens = |i: usize| -> Vec<String> {
            serde_json::from_value(cases[i]["tokens"].clone()).unwrap()
        };
        let all: Vec<String> = (0..cases.len()).flat_map(tokens).collect();
        fixture_sanity(all.iter().any(|t| t == "<unk>"), "an unknown character");
        fixture_sanity(all.iter().any(|t| t == "▁"), "a bare ▁ piece");
        fixture_sanity(
            cases.iter().any(|c| {
                c["text"].as_str().unwrap().contains('ｆ')
                    && c["decode_skip_special"].as_str().unwrap().contains('f')
            }),
            "a fullwidth letter folded by the normaliser",
        );
    }
}

#[test]
fn truncation_stops_at_model_max_length_and_the_positions_fit() {
    // The fixtures are shaped as the released models: model_max_length is the number of
    // position rows less padding_idx + 1 (62 of 64 here, 512 of 514 there), because RoBERTa
    // numbers positions from padding_idx + 1. Truncating at model_max_length, as transformers
    // does, therefore fills the table exactly; one token more would index past it.
    for family in FAMILIES {
        let tokenizer = tokenizer(family);
        let reference = fixture_json(&format!("{family}/tokenizer-reference.json"));
        let case = &reference["truncation"];
        let options = EncodeOptions {
            truncation: true,
            ..EncodeOptions::default()
        };
        let encoding = tokenizer
            .encode(case["text"].as_str().unwrap(), &options)
            .unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(
            encoding.get_ids(),
            ids.as_slice(),
            "{family}: truncated ids"
        );
        assert_eq!(Some(ids.len()), tokenizer.model_max_length(), "{family}");

        let model = AutoModel::from_pretrained(
            &fixture_model(&format!("{family}/base")),
            &LoadOptions::default(),
        )
        .unwrap();
        let batch = tokenizer
            .encode_batch([case["text"].as_str().unwrap()], &options)
            .unwrap();
        let hidden = model
            .forward(&batch.to_input(&Device::Cpu).unwrap())
            .unwrap()
            .last_hidden_state;
        assert_eq!(hidden.dims()[1], ids.len(), "{family}: one state per token");
    }
}

#[test]
fn fill_mask_matches_transformers() {
    let refs = fixture_json("multilingual-pipelines.json");
    for family in FAMILIES {
        let case = &refs[family]["fill_mask"];
        let pipeline = FillMaskPipeline::from_pretrained(
            &fixture_model(&format!("{family}/masked-lm")),
            &LoadOptions::default(),
        )
        .unwrap();
        let ours = pipeline
            .run(
                [case["text"].as_str().unwrap()],
                &FillMaskOptions::default().with_top_k(3),
            )
            .unwrap();
        assert_json_matches(
            &json(&ours[0]),
            &case["top_k_3"],
            SCORE_TOLERANCE,
            &format!("{family} fill-mask"),
        );
    }
}

#[test]
fn text_classification_matches_transformers() {
    let refs = fixture_json("multilingual-pipelines.json");
    for family in FAMILIES {
        let case = &refs[family]["text_classification"];
        let pipeline = TextClassificationPipeline::from_pretrained(
            &fixture_model(&format!("{family}/sequence-classification")),
            &LoadOptions::default(),
        )
        .unwrap();
        let texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
        let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
        let options = TextClassificationOptions::default().with_top_k(None);
        let ours = pipeline.run(&inputs, &options).unwrap();
        assert_same_len(&ours, case["all"].as_array().unwrap(), family);
        assert_json_matches(
            &json(&ours),
            &case["all"],
            SCORE_TOLERANCE,
            &format!("{family} classification"),
        );
    }
}

#[test]
fn token_classification_matches_transformers() {
    // SentencePiece has no continuing-subword prefix, so transformers groups words by its
    // fallback heuristic (no space before the token); the references cover it.
    let refs = fixture_json("multilingual-pipelines.json");
    for family in FAMILIES {
        let case = &refs[family]["token_classification"];
        let pipeline = TokenClassificationPipeline::from_pretrained(
            &fixture_model(&format!("{family}/token-classification")),
            &LoadOptions::default(),
        )
        .unwrap();
        let texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        for strategy in ["none", "simple", "first", "average", "max"] {
            let options = TokenClassificationOptions::default()
                .with_aggregation_strategy(strategy.parse().unwrap());
            let ours: Vec<Vec<Entity>> = pipeline.run(&texts, &options).unwrap();
            assert_json_matches(
                &json(&ours),
                &case[strategy],
                SCORE_TOLERANCE,
                &format!("{family} ner {strategy}"),
            );
        }
    }
}

#[test]
fn a_sentencepiece_model_without_tokenizer_json_says_how_to_make_one() {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("sentencepiece.bpe.model"), b"not read").unwrap();
    let error = Tokenizer::from_pretrained(
        &folder.path().to_string_lossy(),
        &HubOptions::default().with_offline(true),
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("tokenizer.json") && message.contains("save_pretrained"),
        "{message}"
    );
}
