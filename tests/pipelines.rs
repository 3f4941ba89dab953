//! Pipelines against transformers' pipeline outputs on the fixture models
//! (tests/fixtures/pipelines.json, made by scripts/make_fixtures.py with transformers 4.57.6).
//! Scores within 1e-4; labels, words, spans, answers and token ids exact.

mod common;

use std::sync::Arc;

use common::{
    assert_close_slices, assert_json_matches, assert_same_len, fixture, fixture_json,
    fixture_model, fixture_sanity,
};
use ferroformers::pipelines::{
    cosine_similarity, AggregationStrategy, BatchOptions, Conversation, CrossEncoderActivation,
    EmbeddingsOptions, EmbeddingsPipeline, Entity, FillMaskOptions, FillMaskPipeline, Pipeline,
    PipelineBase, QuestionAnsweringOptions, QuestionAnsweringPipeline, RerankOptions,
    RerankPipeline, ScoreFunction, TextClassificationOptions, TextClassificationPipeline,
    TextGenerationOptions, TextGenerationPipeline, TokenClassificationOptions,
    TokenClassificationPipeline,
};
use ferroformers::{
    Device, EncodeOptions, Error, FromPretrained, LoadOptions, ModelConfig, Pooling, TextInput,
    Tokenizer,
};
use serde_json::Value;

const SCORE_TOLERANCE: f64 = 1e-4;

fn references() -> Value {
    fixture_json("pipelines.json")
}

fn options() -> LoadOptions {
    LoadOptions::default()
}

fn assert_matches(ours: &Value, theirs: &Value, path: &str) {
    assert_json_matches(ours, theirs, SCORE_TOLERANCE, path);
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn fill_mask_matches_transformers() {
    let refs = references();
    for family in ["bert", "distilbert", "roberta"] {
        let case = &refs["fill_mask"][family];
        let pipeline = FillMaskPipeline::from_pretrained(
            &fixture_model(&format!("{family}/masked-lm")),
            &options(),
        )
        .unwrap();
        let text = case["text"].as_str().unwrap();
        let default = pipeline.run(&[text], &FillMaskOptions::default()).unwrap();
        assert_matches(
            &json(&default[0]),
            &case["default"],
            &format!("{family} default"),
        );
        let three = pipeline
            .run(
                &[text],
                &FillMaskOptions {
                    top_k: 3,
                    ..FillMaskOptions::default()
                },
            )
            .unwrap();
        assert_matches(
            &json(&three[0]),
            &case["top_k_3"],
            &format!("{family} top_k 3"),
        );
    }
    // RoBERTa's byte-level tokens keep their leading space in token_str: the comparison above
    // covers that quirk only if transformers' answer has such a token.
    let roberta = &refs["fill_mask"]["roberta"]["default"];
    fixture_sanity(
        roberta
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["token_str"].as_str().unwrap().starts_with(' ')),
        "a RoBERTa fill-mask answer with a leading space",
    );

    let case = &refs["fill_mask"]["bert"];
    let pipeline =
        FillMaskPipeline::from_pretrained(&fixture_model("bert/masked-lm"), &options()).unwrap();
    let targets: Vec<String> = serde_json::from_value(case["targets"].clone()).unwrap();
    let ours = pipeline
        .run(
            &[case["text"].as_str().unwrap()],
            &FillMaskOptions {
                top_k: 5,
                targets: Some(targets),
                ..FillMaskOptions::default()
            },
        )
        .unwrap();
    assert_matches(&json(&ours[0]), &case["targets_output"], "bert targets");
}

#[test]
fn fill_mask_needs_exactly_one_mask() {
    let pipeline =
        FillMaskPipeline::from_pretrained(&fixture_model("bert/masked-lm"), &options()).unwrap();
    for text in ["no mask here", "two [MASK] masks [MASK]"] {
        let error = pipeline
            .run(&[text], &FillMaskOptions::default())
            .unwrap_err();
        assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
        assert!(error.to_string().contains("[MASK]"), "{error}");
    }
}

#[test]
fn text_classification_matches_transformers() {
    let refs = references();
    for family in ["bert", "distilbert", "roberta", "gpt2"] {
        let case = &refs["text_classification"][family];
        let pipeline = TextClassificationPipeline::from_pretrained(
            &fixture_model(&format!("{family}/sequence-classification")),
            &options(),
        )
        .unwrap();
        let texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
        let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
        let top_1 = pipeline
            .run(&inputs, &TextClassificationOptions::default())
            .unwrap();
        assert_matches(&json(&top_1), &case["top_1"], &format!("{family} top 1"));
        let all = pipeline
            .run(
                &inputs,
                &TextClassificationOptions {
                    top_k: None,
                    ..TextClassificationOptions::default()
                },
            )
            .unwrap();
        assert_matches(&json(&all), &case["all"], &format!("{family} all"));
        let sigmoid = TextClassificationOptions {
            top_k: None,
            function_to_apply: Some(ScoreFunction::Sigmoid),
            ..TextClassificationOptions::default()
        };
        assert_matches(
            &json(&pipeline.run(&inputs, &sigmoid).unwrap()),
            &case["sigmoid"],
            &format!("{family} sigmoid"),
        );
    }
    let case = &refs["text_classification"]["bert"];
    let pipeline = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &options(),
    )
    .unwrap();
    let pair = TextInput::Pair(
        case["pair"]["text"].as_str().unwrap(),
        case["pair"]["text_pair"].as_str().unwrap(),
    );
    let ours = pipeline
        .run(
            &[pair],
            &TextClassificationOptions {
                top_k: None,
                ..TextClassificationOptions::default()
            },
        )
        .unwrap();
    assert_matches(&json(&ours[0]), &case["pair_output"], "bert pair");
}

#[test]
fn multi_label_configs_use_sigmoid() {
    // The same model with problem_type multi_label_classification in its config.
    let folder = tempfile::tempdir().unwrap();
    let source = fixture("bert/sequence-classification");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["problem_type"] = Value::from("multi_label_classification");
    std::fs::write(folder.path().join("config.json"), config.to_string()).unwrap();
    let pipeline =
        TextClassificationPipeline::from_pretrained(&folder.path().to_string_lossy(), &options())
            .unwrap();
    let refs = references();
    let case = &refs["text_classification"]["bert"];
    let texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
    let ours = pipeline
        .run(
            &inputs,
            &TextClassificationOptions {
                top_k: None,
                ..TextClassificationOptions::default()
            },
        )
        .unwrap();
    assert_matches(&json(&ours), &case["sigmoid"], "multi-label");
}

#[test]
fn token_classification_matches_transformers_for_every_aggregation() {
    let refs = references();
    for family in ["bert", "distilbert", "roberta"] {
        let case = &refs["token_classification"][family];
        let pipeline = TokenClassificationPipeline::from_pretrained(
            &fixture_model(&format!("{family}/token-classification")),
            &options(),
        )
        .unwrap();
        let texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        for strategy in ["none", "simple", "first", "average", "max"] {
            let ours: Vec<Vec<Entity>> = pipeline
                .run(
                    &texts,
                    &TokenClassificationOptions::default()
                        .with_aggregation_strategy(strategy.parse().unwrap()),
                )
                .unwrap();
            assert_matches(
                &json(&ours),
                &case[strategy],
                &format!("{family} {strategy}"),
            );
        }
    }
    // The quirk the comparison above must cover: a group that starts with ##.
    let bert = &refs["token_classification"]["bert"]["simple"][0];
    fixture_sanity(
        bert.as_array()
            .unwrap()
            .iter()
            .any(|e| e["word"].as_str().unwrap().starts_with("##")),
        "a BERT entity group that starts with ##",
    );
}

#[test]
fn unknown_aggregation_strategy_is_an_error() {
    assert!("loose".parse::<AggregationStrategy>().is_err());
}

#[test]
fn question_answering_matches_transformers() {
    let refs = references();
    for family in ["bert", "distilbert", "roberta"] {
        let case = &refs["question_answering"][family];
        let pipeline = QuestionAnsweringPipeline::from_pretrained(
            &fixture_model(&format!("{family}/question-answering")),
            &options(),
        )
        .unwrap();
        let (question, context) = (
            case["question"].as_str().unwrap(),
            case["context"].as_str().unwrap(),
        );
        let run = |options: QuestionAnsweringOptions| {
            json(&pipeline.run_one((question, context), &options).unwrap())
        };
        let default = QuestionAnsweringOptions::default();
        // transformers returns a single answer bare, several as a list.
        assert_matches(
            &run(default.clone())[0],
            &case["default"],
            &format!("{family} default"),
        );
        assert_matches(
            &run(QuestionAnsweringOptions {
                top_k: 3,
                ..default.clone()
            }),
            &case["top_k_3"],
            &format!("{family} top 3"),
        );
        let impossible = QuestionAnsweringOptions {
            top_k: 2,
            handle_impossible_answer: true,
            ..default.clone()
        };
        assert_matches(
            &run(impossible),
            &case["impossible"],
            &format!("{family} impossible"),
        );
        let short = QuestionAnsweringOptions {
            max_answer_len: 3,
            doc_stride: Some(16),
            ..default
        };
        assert_matches(&run(short)[0], &case["short"], &format!("{family} short"));
    }
}

#[test]
fn text_generation_matches_transformers() {
    let refs = references();
    let case = &refs["text_generation"];
    let pipeline =
        TextGenerationPipeline::from_pretrained(&fixture_model("gpt2/lm-head"), &options())
            .unwrap();
    let prompts: Vec<String> = serde_json::from_value(case["prompts"].clone()).unwrap();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let config = TextGenerationOptions::default().with_max_new_tokens(20);
    let texts = |outputs: Vec<Vec<ferroformers::pipelines::GeneratedText>>| -> Value {
        Value::Array(
            outputs
                .iter()
                .map(|seqs| {
                    Value::Array(
                        seqs.iter()
                            .map(|g| serde_json::json!({"generated_text": g.generated_text}))
                            .collect(),
                    )
                })
                .collect(),
        )
    };
    assert_matches(
        &texts(pipeline.run(&prompts, &config).unwrap()),
        &case["greedy"],
        "greedy",
    );
    assert_matches(
        &texts(
            pipeline
                .run(&prompts, &config.clone().with_return_full_text(false))
                .unwrap(),
        ),
        &case["new_text_only"],
        "new text only",
    );
    let beams = TextGenerationOptions::default().with_generation(
        ferroformers::generation::GenerationConfig {
            num_beams: 3,
            num_return_sequences: 2,
            ..pipeline.generation_config().clone().with_max_new_tokens(12)
        },
    );
    assert_matches(
        &texts(pipeline.run(&prompts, &beams).unwrap()),
        &case["beams"],
        "beams",
    );
}

#[test]
fn chat_matches_a_dialogpt_loop_in_transformers() {
    let refs = references();
    let case = &refs["chat"];
    let pipeline = Arc::new(
        TextGenerationPipeline::from_pretrained(&fixture_model("gpt2/lm-head"), &options())
            .unwrap(),
    );
    let config = pipeline
        .generation_config()
        .clone()
        .with_max_new_tokens(case["max_new_tokens"].as_u64().unwrap() as usize);
    let mut conversation = Conversation::new(pipeline);
    for turn in case["turns"].as_array().unwrap() {
        let reply = conversation
            .respond(turn["user"].as_str().unwrap(), &config)
            .unwrap();
        assert_eq!(reply, turn["reply"].as_str().unwrap());
    }
    assert_eq!(conversation.len(), 4);
}

#[test]
fn chat_drops_the_oldest_turns_when_the_history_outgrows_the_context() {
    let pipeline = Arc::new(
        TextGenerationPipeline::from_pretrained(&fixture_model("gpt2/lm-head"), &options())
            .unwrap(),
    );
    let config = pipeline.generation_config().clone().with_max_new_tokens(40);
    let mut conversation = Conversation::new(pipeline);
    // 128 positions: three turns of about 40 tokens plus replies cannot all stay.
    for _ in 0..4 {
        conversation
            .respond(
                "The quick brown fox jumps over the lazy dog again and again.",
                &config,
            )
            .unwrap();
    }
    assert!(
        conversation.len() < 8,
        "old turns were dropped: {} kept",
        conversation.len()
    );
}

/// The bert/sentence-transformers fixture's pipeline, its sentence-transformers references
/// and the sentences they were computed on.
fn sentence_transformers_fixture() -> (EmbeddingsPipeline, Value, Vec<String>) {
    let folder = fixture("bert/sentence-transformers");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("reference.json")).unwrap())
            .unwrap();
    let sentences = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let pipeline =
        EmbeddingsPipeline::from_pretrained(&folder.to_string_lossy(), &options()).unwrap();
    (pipeline, reference, sentences)
}

#[test]
fn embeddings_follow_the_sentence_transformers_modules() {
    // Mean pooling and Normalize from modules.json; cls and max chosen by the user (the
    // references keep the Normalize module).
    let (pipeline, reference, sentences) = sentence_transformers_fixture();
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    assert_eq!(
        (pipeline.pooling(), pipeline.normalize()),
        (Pooling::Mean, true)
    );
    for (mode, options) in [
        ("mean", EmbeddingsOptions::default()),
        (
            "cls",
            EmbeddingsOptions::default().with_pooling(Pooling::Cls),
        ),
        (
            "max",
            EmbeddingsOptions::default().with_pooling(Pooling::Max),
        ),
    ] {
        let ours = pipeline.run(&sentences, &options).unwrap();
        let theirs: Vec<Vec<f32>> = serde_json::from_value(reference[mode].clone()).unwrap();
        assert_same_len(&ours, &theirs, mode);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_close_slices(a, b, 1e-4, &format!("{mode}: sentence {i}"));
        }
    }
}

/// Every token's vector (`encode(output_value="token_embeddings")`): one row per token of
/// each sentence, padding left out; pooled here (the first row, the mean, the maximum) and
/// normalised, they give sentence-transformers' cls, mean and max embeddings (1e-4).
#[test]
fn token_embeddings_pool_to_the_sentence_transformers_references() {
    let (pipeline, reference, sentences) = sentence_transformers_fixture();
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let tokens = pipeline
        .run_token_embeddings(&sentences, &EmbeddingsOptions::default())
        .unwrap();
    assert_same_len(&tokens, &sentences, "sentences");
    let unit = |row: Vec<f32>| {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.into_iter().map(|x| x / norm).collect::<Vec<f32>>()
    };
    let width = pipeline.hidden_size();
    for (i, rows) in tokens.iter().enumerate() {
        let ids = pipeline
            .tokenizer()
            .encode(sentences[i], &EncodeOptions::default())
            .unwrap();
        assert_eq!(rows.len(), ids.len(), "sentence {i}: one row per token");
        assert!(rows.iter().all(|row| row.len() == width), "sentence {i}");
        let column = |j: usize| rows.iter().map(move |row| row[j]);
        let pooled = [
            ("cls", rows[0].clone()),
            (
                "mean",
                (0..width)
                    .map(|j| column(j).sum::<f32>() / rows.len() as f32)
                    .collect(),
            ),
            (
                "max",
                (0..width)
                    .map(|j| column(j).fold(f32::MIN, f32::max))
                    .collect(),
            ),
        ];
        for (mode, row) in pooled {
            let theirs: Vec<f32> = serde_json::from_value(reference[mode][i].clone()).unwrap();
            assert_close_slices(&unit(row), &theirs, 1e-4, &format!("{mode}: sentence {i}"));
        }
    }
}

#[test]
fn cosine_similarity_of_known_vectors() {
    assert!((cosine_similarity(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-7);
    assert!((cosine_similarity(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
    assert!((cosine_similarity(&[1.0, 0.0], &[-3.0, 0.0]) + 1.0).abs() < 1e-6);
    assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
}

#[test]
fn batching_returns_results_in_input_order() {
    let pipeline = TextClassificationPipeline::from_pretrained(
        &fixture_model("bert/sequence-classification"),
        &options(),
    )
    .unwrap();
    let texts = [
        "a",
        "The quick brown fox jumps over the lazy dog.",
        "Hello, world!",
        "the fox",
        "Paris",
    ];
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
    let all = TextClassificationOptions {
        top_k: None,
        ..TextClassificationOptions::default()
    };
    let batched = pipeline
        .run(&inputs, &all.clone().with_batch_size(2))
        .unwrap();
    assert_same_len(&batched, &inputs, "one result per input");
    for (i, input) in inputs.iter().enumerate() {
        let alone = pipeline.run(&[*input], &all).unwrap().remove(0);
        assert_same_len(&alone, &batched[i], texts[i]);
        for (a, b) in alone.iter().zip(&batched[i]) {
            assert_eq!(a.label, b.label);
            assert!(
                (a.score - b.score).abs() < 1e-5,
                "{}: {} vs {}",
                texts[i],
                a.score,
                b.score
            );
        }
    }
}

/// The parts of fixture `name` loaded one by one with the model-class API, as a program that
/// already holds a model has them.
fn parts<M: FromPretrained>(name: &str) -> PipelineBase<M> {
    let model = fixture_model(name);
    PipelineBase::new(
        M::from_pretrained(&model, &options()).unwrap(),
        Tokenizer::from_pretrained(&model, &options().hub).unwrap(),
        ModelConfig::from_file(&fixture(name).join("config.json")).unwrap(),
        Device::Cpu,
    )
}

#[test]
fn pipelines_from_loaded_models_run_as_loaded_by_from_pretrained() {
    let text = "Hugging Face Inc. is a company based in New York City.";

    let name = "bert/sequence-classification";
    let wrapped = TextClassificationPipeline::from_parts(parts(name)).unwrap();
    let loaded =
        TextClassificationPipeline::from_pretrained(&fixture_model(name), &options()).unwrap();
    let all = TextClassificationOptions::default().with_top_k(None);
    assert_eq!(
        wrapped.run_one(text, &all).unwrap(),
        loaded.run_one(text, &all).unwrap()
    );

    let name = "bert/masked-lm";
    let wrapped = FillMaskPipeline::from_parts(parts(name)).unwrap();
    let loaded = FillMaskPipeline::from_pretrained(&fixture_model(name), &options()).unwrap();
    let masked = format!("The capital of France is {}.", loaded.mask_token());
    let defaults = FillMaskOptions::default();
    assert_eq!(
        wrapped.run_one(&masked, &defaults).unwrap(),
        loaded.run_one(&masked, &defaults).unwrap()
    );
    // Fill-mask needs a mask token: a tokenizer without one is refused when wrapping.
    let gpt2_tokenizer =
        Tokenizer::from_pretrained(&fixture_model("gpt2/lm-head"), &options().hub).unwrap();
    let without_mask = PipelineBase::new(
        loaded.model().clone(),
        gpt2_tokenizer,
        loaded.config().clone(),
        Device::Cpu,
    );
    let error = FillMaskPipeline::from_parts(without_mask).unwrap_err();
    assert!(error.to_string().contains("no mask token"), "{error}");

    let name = "bert/token-classification";
    let wrapped = TokenClassificationPipeline::from_parts(parts(name)).unwrap();
    let loaded =
        TokenClassificationPipeline::from_pretrained(&fixture_model(name), &options()).unwrap();
    let grouped = TokenClassificationOptions::default()
        .with_aggregation_strategy(AggregationStrategy::Simple)
        .with_ignore_labels(Vec::new());
    assert_eq!(
        wrapped.run_one(text, &grouped).unwrap(),
        loaded.run_one(text, &grouped).unwrap()
    );

    let name = "bert/question-answering";
    let wrapped = QuestionAnsweringPipeline::from_parts(parts(name)).unwrap();
    let loaded =
        QuestionAnsweringPipeline::from_pretrained(&fixture_model(name), &options()).unwrap();
    let question = ("Where is the company based?", text);
    let three = QuestionAnsweringOptions::default().with_top_k(3);
    assert_eq!(
        wrapped.run_one(question, &three).unwrap(),
        loaded.run_one(question, &three).unwrap()
    );

    // A model without sentence-transformers files: mean pooling either way.
    let name = "bert/base";
    let wrapped = EmbeddingsPipeline::from_parts(parts(name)).unwrap();
    let loaded = EmbeddingsPipeline::from_pretrained(&fixture_model(name), &options()).unwrap();
    let defaults = EmbeddingsOptions::default();
    assert_eq!(wrapped.pooling(), Pooling::Mean);
    assert_eq!(
        wrapped.run_one(text, &defaults).unwrap(),
        loaded.run_one(text, &defaults).unwrap()
    );

    // The fixture cross-encoder was saved with Identity, which only from_pretrained reads:
    // wrapped, it scores with the one-label default (Sigmoid) unless the options say.
    let name = "bert/cross-encoder";
    let wrapped = RerankPipeline::from_parts(parts(name)).unwrap();
    let loaded = RerankPipeline::from_pretrained(&fixture_model(name), &options()).unwrap();
    assert_eq!(
        (wrapped.activation(), loaded.activation()),
        (
            CrossEncoderActivation::Sigmoid,
            CrossEncoderActivation::Identity
        )
    );
    let documents = ["New York City", "Paris is in France.", text];
    let identity = RerankOptions::default().with_activation(CrossEncoderActivation::Identity);
    assert_eq!(
        wrapped
            .rank("Where is Hugging Face?", &documents, &identity)
            .unwrap(),
        loaded
            .rank(
                "Where is Hugging Face?",
                &documents,
                &RerankOptions::default()
            )
            .unwrap()
    );

    // The generation settings come from config.json, which here says what
    // generation_config.json says.
    let name = "gpt2/lm-head";
    let wrapped = TextGenerationPipeline::from_parts(parts(name)).unwrap();
    let loaded = TextGenerationPipeline::from_pretrained(&fixture_model(name), &options()).unwrap();
    assert_eq!(
        wrapped.generation_config().eos_token_id,
        loaded.generation_config().eos_token_id
    );
    let eight = TextGenerationOptions::default().with_max_new_tokens(8);
    assert_eq!(
        wrapped.run_one("The quick brown fox", &eight).unwrap(),
        loaded.run_one("The quick brown fox", &eight).unwrap()
    );
}
