//! The one call shape of the pipelines (`Pipeline::run` / `run_one` with an options struct),
//! `pipeline(task, model)`, and call-time options against transformers 4.57.6 on the fixture
//! models (tests/fixtures/pipeline_options.json, made by scripts/make_fixtures.py):
//! token classification over long texts in overlapping windows (`stride`), truncation to
//! `max_length`, several question/context pairs in one call. Scores within 1e-4 (f32);
//! labels, words, offsets and answers exact.

mod common;

use common::{
    assert_json_matches, assert_same_len, fixture, fixture_json, fixture_model, fixture_sanity,
};
use ferroformers::pipelines::{
    pipeline, AggregationStrategy, AnyPipeline, AsInput, BatchOptions, EmbeddingsOptions,
    EmbeddingsPipeline, FillMaskOptions, FillMaskPipeline, Pipeline, QuestionAnsweringOptions,
    QuestionAnsweringPipeline, Task, TextClassificationOptions, TextClassificationPipeline,
    TokenClassificationOptions, TokenClassificationPipeline, TruncationOptions,
};
use ferroformers::{Error, LoadOptions, TextInput};
use serde::Serialize;
use serde_json::Value;

const SCORE_TOLERANCE: f64 = 1e-4;

fn references() -> Value {
    fixture_json("pipeline_options.json")
}

fn json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    serde_json::from_value(value.clone()).unwrap()
}

fn usize_of(value: &Value) -> usize {
    value.as_u64().unwrap() as usize
}

fn ner(family: &str) -> TokenClassificationPipeline {
    TokenClassificationPipeline::from_pretrained(
        &fixture_model(&format!("{family}/token-classification")),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn token_classification_with_stride_matches_transformers_for_every_strategy() {
    let refs = references();
    for family in ["bert", "distilbert", "roberta"] {
        let case = &refs["token_classification"][family];
        let pipeline = ner(family);
        let texts = strings(&case["texts"]);
        let max_length = usize_of(&case["max_length"]);
        // The fixture must need several windows per text, or the merging goes untested.
        for text in &texts {
            let tokens = pipeline
                .tokenizer()
                .encode(text.as_str(), &Default::default())
                .unwrap()
                .len();
            fixture_sanity(tokens > 2 * max_length, "texts of more than two windows");
        }
        for strategy in ["simple", "first", "average", "max"] {
            let options = TokenClassificationOptions::default()
                .with_aggregation_strategy(strategy.parse().unwrap())
                .with_max_length(max_length)
                .with_stride(usize_of(&case["stride"]));
            // Batched windows of both texts: batch size 3 mixes the texts' windows.
            let ours = pipeline
                .run(&texts, &options.clone().with_batch_size(3))
                .unwrap();
            assert_json_matches(
                &json(&ours),
                &case[strategy],
                SCORE_TOLERANCE,
                &format!("{family} {strategy} stride"),
            );
        }
        // Without stride the text is cut at max_length: fewer entities than with windows.
        let truncated = pipeline
            .run(
                &texts,
                &TokenClassificationOptions::default()
                    .with_aggregation_strategy(AggregationStrategy::Simple)
                    .with_max_length(max_length),
            )
            .unwrap();
        assert_json_matches(
            &json(&truncated),
            &case["truncated_simple"],
            SCORE_TOLERANCE,
            &format!("{family} truncated"),
        );
        let count = |v: &Value| -> usize {
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_array().unwrap().len())
                .sum()
        };
        fixture_sanity(
            count(&case["simple"]) > count(&case["truncated_simple"]),
            "windows find entities that truncation drops",
        );
    }
}

#[test]
fn stride_needs_an_aggregation_strategy_and_a_window_longer_than_itself() {
    let pipeline = ner("bert");
    let text = "Hugging Face Inc. is a company based in New York City.";
    let none = TokenClassificationOptions::default()
        .with_max_length(16)
        .with_stride(4);
    let error = pipeline.run_one(text, &none).unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    assert!(
        error.to_string().contains("aggregation strategy"),
        "{error}"
    );
    let too_long = none
        .with_aggregation_strategy(AggregationStrategy::Simple)
        .with_stride(16);
    let error = pipeline.run_one(text, &too_long).unwrap_err();
    assert!(error.to_string().contains("stride (16)"), "{error}");
}

#[test]
fn text_classification_truncation_to_max_length_matches_transformers() {
    let refs = references();
    for family in ["bert", "roberta"] {
        let case = &refs["text_classification"][family];
        let pipeline = TextClassificationPipeline::from_pretrained(
            &fixture_model(&format!("{family}/sequence-classification")),
            &LoadOptions::default(),
        )
        .unwrap();
        let texts = strings(&case["texts"]);
        let max_length = usize_of(&case["max_length"]);
        let options = TextClassificationOptions::default()
            .with_top_k(None)
            .with_truncation(true)
            .with_max_length(max_length);
        let ours = pipeline.run(&texts, &options).unwrap();
        assert_json_matches(
            &json(&ours),
            &case["truncated"],
            SCORE_TOLERANCE,
            &format!("{family} truncated"),
        );
        // The first text is longer than max_length, so the cut is what the comparison checks.
        let tokens = pipeline
            .tokenizer()
            .encode(texts[0].as_str(), &Default::default())
            .unwrap()
            .len();
        fixture_sanity(tokens > max_length, "a text longer than max_length");
    }
}

#[test]
fn question_answering_over_several_pairs_matches_transformers_and_one_by_one() {
    let refs = references();
    for family in ["bert", "roberta"] {
        let case = &refs["question_answering"][family];
        let pipeline = QuestionAnsweringPipeline::from_pretrained(
            &fixture_model(&format!("{family}/question-answering")),
            &LoadOptions::default(),
        )
        .unwrap();
        let pairs: Vec<(String, String)> = serde_json::from_value(case["pairs"].clone()).unwrap();
        let options = QuestionAnsweringOptions::default()
            .with_top_k(2)
            .with_batch_size(3);
        let together = pipeline.run(&pairs, &options).unwrap();
        assert_json_matches(
            &json(&together),
            &case["together"],
            SCORE_TOLERANCE,
            &format!("{family} together"),
        );
        assert_same_len(&together, &pairs, "one answer list per pair");
        for (i, (question, context)) in pairs.iter().enumerate() {
            let alone = pipeline.run_one((question, context), &options).unwrap();
            assert_json_matches(
                &json(&alone),
                &json(&together[i]),
                SCORE_TOLERANCE,
                &format!("{family} pair {i} alone"),
            );
        }
    }
}

/// `run` over owned `String`s in batches of 2 gives what `run_one` gives for each `&str`.
fn assert_batch_equals_single<P: Pipeline>(
    pipeline: &P,
    texts: &[String],
    options: &P::Options,
    batched: &P::Options,
    what: &str,
) where
    P::Output: Serialize,
    for<'a> &'a str: AsInput<P::Kind>,
    String: AsInput<P::Kind>,
{
    let together = pipeline.run(texts.to_vec(), batched).unwrap();
    assert_same_len(&together, texts, what);
    for (text, output) in texts.iter().zip(&together) {
        let alone = pipeline.run_one(text.as_str(), options).unwrap();
        assert_json_matches(&json(&alone), &json(output), SCORE_TOLERANCE, what);
    }
}

#[test]
fn every_pipeline_gives_batched_inputs_what_it_gives_each_alone() {
    let texts: Vec<String> = [
        "a",
        "The quick brown fox jumps over the lazy dog in Paris.",
        "Hello, world!",
        "Clément Delangue lives in New York City.",
    ]
    .map(String::from)
    .to_vec();
    let load = LoadOptions::default();
    let classify = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &load,
    )
    .unwrap();
    let options = TextClassificationOptions::default().with_top_k(None);
    assert_batch_equals_single(
        &classify,
        &texts,
        &options,
        &options.clone().with_batch_size(2),
        "classify",
    );
    // Pairs, as tuples of &String and as TextInput, give the same.
    let pairs: Vec<(&String, &String)> = texts.iter().zip(texts.iter().rev()).collect();
    let as_inputs: Vec<TextInput> = pairs
        .iter()
        .map(|(a, b)| TextInput::Pair(a.as_str(), b.as_str()))
        .collect();
    assert_json_matches(
        &json(
            &classify
                .run(&pairs, &options.clone().with_batch_size(2))
                .unwrap(),
        ),
        &json(&classify.run(&as_inputs, &options).unwrap()),
        SCORE_TOLERANCE,
        "classify pairs",
    );

    let ner = ner("bert");
    let options = TokenClassificationOptions::default()
        .with_aggregation_strategy(AggregationStrategy::Average);
    assert_batch_equals_single(
        &ner,
        &texts,
        &options,
        &options.clone().with_batch_size(2),
        "ner",
    );

    let fill = FillMaskPipeline::from_pretrained(&fixture_model("bert/masked-lm"), &load).unwrap();
    let masked: Vec<String> = texts.iter().map(|t| format!("{t} [MASK].")).collect();
    let options = FillMaskOptions::default();
    assert_batch_equals_single(
        &fill,
        &masked,
        &options,
        &options.clone().with_batch_size(2),
        "fill-mask",
    );

    let embed = EmbeddingsPipeline::from_pretrained(
        &fixture("bert/sentence-transformers").to_string_lossy(),
        &load,
    )
    .unwrap();
    let options = EmbeddingsOptions::default();
    let together = embed
        .run(&texts, &options.clone().with_batch_size(3))
        .unwrap();
    assert_same_len(&together, &texts, "embeddings");
    for (text, vector) in texts.iter().zip(&together) {
        let alone = embed.run_one(text, &options).unwrap();
        common::assert_close_slices(&alone, vector, 1e-4, text);
    }
}

#[test]
fn task_names_and_aliases_are_transformers_ones() {
    for (name, task) in [
        ("feature-extraction", Task::Embeddings),
        ("sentence-similarity", Task::Embeddings),
        ("fill-mask", Task::FillMask),
        ("text-classification", Task::TextClassification),
        ("sentiment-analysis", Task::TextClassification),
        ("token-classification", Task::TokenClassification),
        ("ner", Task::TokenClassification),
        ("question-answering", Task::QuestionAnswering),
        ("text-generation", Task::TextGeneration),
    ] {
        assert_eq!(name.parse::<Task>().unwrap(), task, "{name}");
    }
    for task in Task::ALL {
        assert_eq!(task.name().parse::<Task>().unwrap(), task);
    }
    let error = "summarization".parse::<Task>().unwrap_err();
    for task in Task::ALL {
        assert!(error.to_string().contains(task.name()), "{error}");
    }
}

#[test]
fn pipeline_picks_the_task_at_run_time_and_runs_as_the_typed_pipeline() {
    let model = fixture_model("bert/token-classification");
    let any = pipeline("ner", &model, &LoadOptions::default()).unwrap();
    assert_eq!(any.task(), Task::TokenClassification);
    assert!(any.as_fill_mask().is_none());
    let typed = ner("bert");
    // The tokenizer and config are the model's: same token count, same labels.
    let text = "Hugging Face Inc. is a company based in New York City.";
    assert_eq!(
        any.tokenizer()
            .encode(text, &Default::default())
            .unwrap()
            .get_ids(),
        typed
            .tokenizer()
            .encode(text, &Default::default())
            .unwrap()
            .get_ids()
    );
    assert_eq!(any.config().num_labels(), typed.config().num_labels());
    let options = TokenClassificationOptions::default()
        .with_aggregation_strategy(AggregationStrategy::Simple);
    let from_any = any
        .as_token_classification()
        .unwrap()
        .run_one(text, &options)
        .unwrap();
    assert_eq!(from_any, typed.run_one(text, &options).unwrap());

    let error = any.clone().into_question_answering().unwrap_err();
    assert!(
        error.to_string().contains("token-classification"),
        "{error}"
    );
    assert!(any.into_token_classification().is_ok());

    let generation = pipeline(
        "text-generation",
        &fixture_model("gpt2/lm-head"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(matches!(generation, AnyPipeline::TextGeneration(_)));
    assert_eq!(generation.config().model_type(), "gpt2");

    let error = pipeline("translation", &model, &LoadOptions::default()).unwrap_err();
    assert!(error.to_string().contains("question-answering"), "{error}");
}

#[test]
fn fill_mask_truncation_to_max_length_matches_transformers() {
    let refs = references();
    let case = &refs["fill_mask"];
    let pipeline = FillMaskPipeline::from_pretrained(
        &fixture_model("bert/masked-lm"),
        &LoadOptions::default(),
    )
    .unwrap();
    let text = case["text"].as_str().unwrap();
    let truncated = FillMaskOptions::default()
        .with_truncation(true)
        .with_max_length(usize_of(&case["max_length"]));
    assert_json_matches(
        &json(&pipeline.run_one(text, &truncated).unwrap()),
        &case["truncated"],
        SCORE_TOLERANCE,
        "fill-mask truncated",
    );
    assert_json_matches(
        &json(&pipeline.run_one(text, &FillMaskOptions::default()).unwrap()),
        &case["full"],
        SCORE_TOLERANCE,
        "fill-mask whole text",
    );
    fixture_sanity(
        case["truncated"][0]["score"] != case["full"][0]["score"],
        "the cut changes the scores",
    );
}

#[test]
fn embeddings_max_length_matches_sentence_transformers_max_seq_length() {
    let refs = references();
    let case = &refs["embeddings"];
    let pipeline = EmbeddingsPipeline::from_pretrained(
        &fixture("bert/sentence-transformers").to_string_lossy(),
        &LoadOptions::default(),
    )
    .unwrap();
    let sentences = strings(&case["sentences"]);
    let options = EmbeddingsOptions::default().with_max_length(usize_of(&case["max_seq_length"]));
    let ours = pipeline.run(&sentences, &options).unwrap();
    let theirs: Vec<Vec<f32>> = serde_json::from_value(case["embeddings"].clone()).unwrap();
    assert_same_len(&ours, &theirs, "embeddings");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        common::assert_close_slices(a, b, 1e-4, &format!("sentence {i}"));
    }
    // The first sentence is longer than the cut: the default length gives another vector.
    let full = pipeline
        .run_one(&sentences[0], &EmbeddingsOptions::default())
        .unwrap();
    assert!(
        common::checked_max_abs_diff(&full, &ours[0]).unwrap() > 1e-3,
        "max_length must change a long sentence's embedding"
    );
}
