//! GTE and NomicBERT against PyTorch: tiny random checkpoints made by
//! `scripts/make_fixtures.py --only rotary-berts` with transformers 5.25.0 (the first
//! transformers with `GteModel` and `NomicBertModel`; their weights saved under the original
//! checkpoints' key names), the outputs PyTorch gave for a right-padded batch, and
//! `SentenceTransformer.encode` (sentence-transformers 5.1.2) over the base models.
//!
//! - `gte/base`: transformers 5's config (`model_type: gte`);
//! - `gte/new`: the config as GTE's Hub checkpoints write it (`model_type: new`), with fixed
//!   NTK rotary scaling and no token types, its reference made with those frequencies;
//! - `gte/sequence-classification`: pooler and classifier, as GTE's rerankers;
//! - `nomic_bert/base` and `nomic_bert/original-config`: one model, with transformers 5's config
//!   and with Nomic's (`n_embd`, `rotary_emb_base`, `activation_function: swiglu`);
//! - the task heads transformers 5.25.0 defines (`--only rotary-bert-heads`):
//!   `gte/{masked-lm,token-classification}` and
//!   `nomic_bert/{masked-lm,sequence-classification,token-classification}`, each with
//!   transformers' pipeline outputs on it (`pipeline.json`).

mod common;

use common::*;
use ferroformers::pipelines::{
    EmbeddingsOptions, EmbeddingsPipeline, FillMaskOptions, FillMaskPipeline, Pipeline, Prompt,
    TextClassificationOptions, TextClassificationPipeline, TokenClassificationOptions,
    TokenClassificationPipeline,
};
use ferroformers::{
    AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, Error, FromPretrained, GteForMaskedLM,
    GteForSequenceClassification, GteForTokenClassification, GteModel, HubOptions, LoadOptions,
    ModelConfig, ModelInput, NomicBertForMaskedLM, NomicBertForSequenceClassification,
    NomicBertForTokenClassification, NomicBertModel, Tensor, TextInput, WeightType,
};
use serde_json::Value;

/// f32 against PyTorch f32: the brief's bar.
const F32_TOLERANCE: f32 = 1e-4;
/// Each input alone against its row of the padded batch (the padding reaches a row only
/// through masked keys, whose weights are exactly 0).
const BATCH_TOLERANCE: f32 = 1e-5;
/// sentence-transformers' `encode` against ours, on unit-length embeddings: the brief's bar.
const ENCODE_TOLERANCE: f32 = 1e-5;
/// Pipeline scores (probabilities) against transformers' pipelines, as tests/pipelines.rs.
const SCORE_TOLERANCE: f64 = 1e-4;

fn options(weight_type: WeightType) -> LoadOptions {
    LoadOptions::default()
        .with_hub(HubOptions::default().with_offline(true))
        .with_weight_type(weight_type)
}

fn load<M: FromPretrained>(name: &str) -> M {
    M::from_pretrained(&fixture_model(name), &options(WeightType::F32)).expect("fixture loads")
}

/// `forward` on the reference batch against PyTorch, then each input alone (no padding)
/// against its row of the batch. Returns the batch's largest error.
fn check(name: &str, forward: impl Fn(&ModelInput) -> Tensor) -> f32 {
    let reference = reference(name);
    let key = match reference.contains_key("logits") {
        true => "logits",
        false => "last_hidden_state",
    };
    let batch = forward(&reference_input(&reference));
    let error = max_abs_diff(&batch, &reference[key]);
    eprintln!("{name} {key}: max abs error {error:.2e} (bar {F32_TOLERANCE:.0e})");
    assert_close(
        &batch,
        &reference[key],
        F32_TOLERANCE,
        &format!("{name} {key}"),
    );
    let lengths = lengths(&reference);
    fixture_sanity(
        lengths.iter().any(|&l| l < lengths[0]),
        "the batch is padded",
    );
    assert_inputs_alone_match_their_rows(&reference, &batch, BATCH_TOLERANCE, name, forward);
    error
}

fn hidden_states(
    model: &impl Fn(&ModelInput) -> ferroformers::Result<ferroformers::EncoderOutput>,
) -> impl Fn(&ModelInput) -> Tensor + '_ {
    move |input| {
        let output = model(input).unwrap();
        assert!(
            output.pooler_output.is_none(),
            "the base models have no pooler"
        );
        output.last_hidden_state
    }
}

#[test]
fn gte_matches_pytorch_with_transformers_5_config() {
    let model: GteModel = load("gte/base");
    check("gte/base", hidden_states(&|input| model.forward(input)));
}

#[test]
fn gte_matches_pytorch_with_the_hub_config_and_ntk_rotary_scaling() {
    let config = fixture_json("gte/new/config.json");
    fixture_sanity(
        config["model_type"] == "new"
            && config["rope_scaling"]["type"] == "ntk"
            && config["type_vocab_size"] == 0,
        "gte/new is the remote code's config, with NTK scaling and no token types",
    );
    let model: GteModel = load("gte/new");
    check("gte/new", hidden_states(&|input| model.forward(input)));
}

/// The NTK scaling must be what the `new` fixture's reference depends on: the same weights
/// and config without it give other hidden states.
#[test]
fn the_ntk_scaling_changes_the_output() {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("gte/new")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    let config_path = folder.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["rope_scaling"] = Value::Null;
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model =
        GteModel::from_pretrained(&folder.path().to_string_lossy(), &options(WeightType::F32))
            .unwrap();
    let reference = reference("gte/new");
    let hidden = model
        .forward(&reference_input(&reference))
        .unwrap()
        .last_hidden_state;
    let difference = max_abs_diff(&hidden, &reference["last_hidden_state"]);
    assert!(
        difference > 1e-3,
        "without the NTK scaling the output moved by only {difference:e}"
    );
}

#[test]
fn gte_sequence_classification_matches_pytorch() {
    let model: GteForSequenceClassification = load("gte/sequence-classification");
    check("gte/sequence-classification", |input| {
        model.forward(input).unwrap()
    });
}

#[test]
fn nomic_bert_matches_pytorch_with_either_config() {
    for name in ["nomic_bert/base", "nomic_bert/original-config"] {
        let model: NomicBertModel = load(name);
        check(name, hidden_states(&|input| model.forward(input)));
    }
    let original = fixture_json("nomic_bert/original-config/config.json");
    fixture_sanity(
        original.get("n_embd").is_some() && original.get("hidden_size").is_none(),
        "the original config uses Nomic's names",
    );
    let types = reference("nomic_bert/base")["token_type_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    fixture_sanity(
        types.contains(&1),
        "a pair in the batch gives segment ids of 1",
    );
}

#[test]
fn auto_classes_load_gte_and_nomic_bert() {
    for name in [
        "gte/base",
        "gte/new",
        "nomic_bert/base",
        "nomic_bert/original-config",
    ] {
        let expected = reference(name);
        let model: AutoModel = load(name);
        let output = model.forward(&reference_input(&expected)).unwrap();
        assert_close(
            &output.last_hidden_state,
            &expected["last_hidden_state"],
            F32_TOLERANCE,
            &format!("AutoModel {name}"),
        );
    }
    let name = "gte/sequence-classification";
    let expected = reference(name);
    let model: AutoModelForSequenceClassification = load(name);
    assert_close(
        &model.forward(&reference_input(&expected)).unwrap(),
        &expected["logits"],
        F32_TOLERANCE,
        name,
    );
}

#[test]
fn configs_it_cannot_run_are_errors_naming_the_field() {
    let read = |name: &str, edit: &str| {
        let mut config: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{name}/config.json"))).unwrap(),
        )
        .unwrap();
        let (key, value) = edit.split_once('=').unwrap();
        config[key] = serde_json::from_str(value).unwrap();
        ModelConfig::from_json(&config.to_string(), std::path::Path::new("config.json"))
    };
    assert!(read("gte/new", "pack_qkv=true").is_ok());
    assert!(read(
        "nomic_bert/original-config",
        "activation_function=\"geglu\""
    )
    .is_ok());
    for (name, edit, named) in [
        ("gte/new", "pack_qkv=false", "pack_qkv"),
        (
            "gte/new",
            "logn_attention_scale=true",
            "logn_attention_scale",
        ),
        ("gte/new", "layer_norm_type=\"rms_norm\"", "rms_norm"),
        ("gte/new", "rope_scaling={\"type\": \"ntk\"}", "factor"),
        ("gte/base", "num_attention_heads=3", "num_attention_heads"),
        ("nomic_bert/original-config", "prenorm=true", "prenorm"),
        (
            "nomic_bert/original-config",
            "rotary_emb_fraction=0.5",
            "rotary_emb_fraction",
        ),
        (
            "nomic_bert/original-config",
            "rotary_emb_interleaved=true",
            "rotary_emb_interleaved",
        ),
        (
            "nomic_bert/original-config",
            "qkv_proj_bias=true",
            "qkv_proj_bias",
        ),
        (
            "nomic_bert/original-config",
            "activation_function=\"glu\"",
            "glu",
        ),
        (
            "nomic_bert/original-config",
            "rotary_scaling_factor=2.0",
            "rotary_scaling_factor",
        ),
    ] {
        let message = match read(name, edit) {
            Err(error @ (Error::InvalidConfig(_) | Error::Json { .. })) => error.to_string(),
            other => panic!("{name} {edit}: expected a config error, got {other:?}"),
        };
        assert!(message.contains(named), "{name} {edit}: {message}");
    }
}

#[test]
fn inputs_past_the_limits_are_errors() {
    let model: NomicBertModel = load("nomic_bert/base");
    let reference = reference("nomic_bert/base");
    let mut input = reference_input(&reference);
    input.token_type_ids = Some((input.input_ids.ones_like().unwrap() * 2.0).unwrap());
    assert!(
        matches!(model.forward(&input), Err(Error::InvalidInput(_))),
        "a token type past the table is an input error"
    );
    let long = Tensor::zeros(
        (1, 65),
        ferroformers::DType::U32,
        &ferroformers::Device::Cpu,
    )
    .unwrap();
    let input = ModelInput {
        input_ids: long,
        attention_mask: None,
        token_type_ids: None,
    };
    assert!(
        matches!(
            model.forward(&input),
            Err(Error::InputTooLong {
                length: 65,
                max: 64
            })
        ),
        "past max_position_embeddings"
    );
}

/// GTE: CLS pooling and Normalize; NomicBERT: mean pooling, Normalize, and its prompts
/// (`search_query: `), each in a batch and alone.
#[test]
fn sentence_embeddings_match_sentence_transformers_encode() {
    for name in [
        "gte/sentence-transformers",
        "nomic_bert/sentence-transformers",
    ] {
        let reference = fixture_reference(name);
        let sentences: Vec<String> =
            serde_json::from_value(reference["sentences"].clone()).unwrap();
        let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
        let pipeline =
            EmbeddingsPipeline::from_pretrained(&fixture_model(name), &options(WeightType::F32))
                .unwrap();
        let default = EmbeddingsOptions::default();
        assert_embeddings(
            &pipeline.run(&sentences, &default).unwrap(),
            &reference["embeddings"],
            ENCODE_TOLERANCE,
            &format!("{name} batch"),
        );
        let alone: Vec<Vec<f32>> = sentences
            .iter()
            .map(|s| pipeline.run(&[*s], &default).unwrap().remove(0))
            .collect();
        assert_embeddings(
            &alone,
            &reference["alone"],
            ENCODE_TOLERANCE,
            &format!("{name} alone"),
        );
        if let Some(queries) = reference.get("query_embeddings") {
            let prompted = default
                .clone()
                .with_prompt(Prompt::Named("query".to_string()));
            assert_embeddings(
                &pipeline.run(&sentences, &prompted).unwrap(),
                queries,
                ENCODE_TOLERANCE,
                &format!("{name} with the query prompt"),
            );
        }
    }
}

/// bf16 and int8 weights against PyTorch's f32 hidden states, with bars measured on these
/// fixtures with about 1.5× headroom, as tests/kernel_paths.rs sets its own. Under
/// `FERROFORMERS_KERNELS=reference` candle computes bf16 throughout and int8 is a load error.
#[test]
fn reduced_precision_weights_stay_within_their_bars() {
    use ferroformers::kernels::{kernel_mode, KernelMode};

    let reference_ops = kernel_mode() == KernelMode::Reference;
    // Measured on Zen 4, the larger of the two models: bf16 2.2e-2 (AVX-512; 1.9e-2 AVX2 and
    // portable), 3.8e-2 on candle's ops; int8 4.9e-2 (AVX-512 VNNI; 2.7e-2 AVX2 and portable).
    let bf16_tolerance = if reference_ops { 6e-2 } else { 3.5e-2 };
    const INT8_TOLERANCE: f32 = 7.5e-2;
    for name in ["gte/base", "nomic_bert/base"] {
        let reference = reference(name);
        for (weight_type, tolerance) in [
            (WeightType::Bf16, bf16_tolerance),
            (WeightType::Int8, INT8_TOLERANCE),
        ] {
            let loaded = AutoModel::from_pretrained(&fixture_model(name), &options(weight_type));
            if weight_type == WeightType::Int8 && reference_ops {
                assert!(loaded.is_err(), "int8 loads with candle's ops");
                continue;
            }
            let hidden = loaded
                .unwrap()
                .forward(&reference_input(&reference))
                .unwrap()
                .last_hidden_state;
            let error = max_abs_diff(&hidden, &reference["last_hidden_state"]);
            eprintln!(
                "{name} {weight_type:?} on {:?}: max abs error {error:.2e} (bar {tolerance:.1e})",
                ferroformers::kernels::isa::Isa::current()
            );
            assert!(
                error.is_finite() && error <= tolerance,
                "{name} {weight_type:?}: max abs error {error:e} exceeds {tolerance:e}"
            );
        }
    }
}

// The task heads, each against PyTorch within F32_TOLERANCE and alone against its row of the
// batch within BATCH_TOLERANCE (`check`). Measured on x86-64 (AVX2; candle's ops alike): logits
// within 8.3e-7 (gte/masked-lm), 2.8e-7 (gte/token-classification), 6.0e-7
// (nomic_bert/masked-lm), 6.0e-8 (nomic_bert/sequence-classification) and 4.8e-7
// (nomic_bert/token-classification).

#[test]
fn gte_masked_lm_matches_pytorch() {
    let config = fixture_json("gte/masked-lm/config.json");
    fixture_sanity(
        config["architectures"][0] == "GteForMaskedLM",
        "gte/masked-lm is transformers 5's GteForMaskedLM",
    );
    let model: GteForMaskedLM = load("gte/masked-lm");
    check("gte/masked-lm", |input| model.forward(input).unwrap());
}

#[test]
fn gte_token_classification_matches_pytorch() {
    let model: GteForTokenClassification = load("gte/token-classification");
    check("gte/token-classification", |input| {
        model.forward(input).unwrap()
    });
}

#[test]
fn nomic_bert_masked_lm_matches_pytorch() {
    let model: NomicBertForMaskedLM = load("nomic_bert/masked-lm");
    check("nomic_bert/masked-lm", |input| {
        model.forward(input).unwrap()
    });
}

#[test]
fn nomic_bert_sequence_classification_matches_pytorch() {
    let model: NomicBertForSequenceClassification = load("nomic_bert/sequence-classification");
    check("nomic_bert/sequence-classification", |input| {
        model.forward(input).unwrap()
    });
}

#[test]
fn nomic_bert_token_classification_matches_pytorch() {
    let model: NomicBertForTokenClassification = load("nomic_bert/token-classification");
    check("nomic_bert/token-classification", |input| {
        model.forward(input).unwrap()
    });
    let types = reference("nomic_bert/token-classification")["token_type_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    fixture_sanity(
        types.contains(&1),
        "a pair in the batch gives segment ids of 1",
    );
}

/// transformers 5 saves the masked LMs without their decoder weight (tied to the word
/// embeddings), so the comparisons above go through the tie; a checkpoint that holds the
/// weight uses its own: the same file with a zeroed decoder gives logits of the bias alone.
#[test]
fn masked_lm_decoders_are_tied_to_the_word_embeddings_unless_saved() {
    for (name, prefix, decoder, bias) in [
        (
            "gte/masked-lm",
            "gte",
            "lm_head.decoder.weight",
            "lm_head.decoder.bias",
        ),
        (
            "nomic_bert/masked-lm",
            "nomic_bert",
            "cls.predictions.decoder.weight",
            "cls.predictions.bias",
        ),
    ] {
        let path = fixture(name).join("model.safetensors");
        let mut weights =
            candle_core::safetensors::load(&path, &ferroformers::Device::Cpu).unwrap();
        fixture_sanity(
            !weights.contains_key(decoder),
            "transformers 5 leaves the tied decoder weight out",
        );
        let folder = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
        }
        let bias_values = weights[bias].clone();
        let table = &weights[&format!("{prefix}.embeddings.word_embeddings.weight")];
        weights.insert(decoder.to_string(), table.zeros_like().unwrap());
        candle_core::safetensors::save(&weights, folder.path().join("model.safetensors")).unwrap();
        let model = AutoModelForMaskedLM::from_pretrained(
            &folder.path().to_string_lossy(),
            &options(WeightType::F32),
        )
        .unwrap();
        let logits = model
            .forward(&reference_input(&reference(name)))
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        assert_close(&logits, &bias_values, 1e-6, &format!("{name} untied"));
    }
}

#[test]
fn auto_classes_load_the_heads() {
    let logits = |name: &str, forward: &dyn Fn(&ModelInput) -> Tensor| {
        let expected = reference(name);
        assert_close(
            &forward(&reference_input(&expected)),
            &expected["logits"],
            F32_TOLERANCE,
            &format!("auto class {name}"),
        );
    };
    for name in ["gte/masked-lm", "nomic_bert/masked-lm"] {
        let model: AutoModelForMaskedLM = load(name);
        logits(name, &|input| model.forward(input).unwrap());
    }
    for name in [
        "gte/token-classification",
        "nomic_bert/token-classification",
    ] {
        let model: AutoModelForTokenClassification = load(name);
        logits(name, &|input| model.forward(input).unwrap());
    }
    let name = "nomic_bert/sequence-classification";
    let model: AutoModelForSequenceClassification = load(name);
    logits(name, &|input| model.forward(input).unwrap());
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

/// The fill-mask pipeline against transformers 5's on both masked LMs: candidates, their
/// tokens, words and sequences exactly, scores within 1e-4.
#[test]
fn fill_mask_pipeline_matches_transformers() {
    for name in ["gte/masked-lm", "nomic_bert/masked-lm"] {
        let case = fixture_json(&format!("{name}/pipeline.json"));
        let pipeline =
            FillMaskPipeline::from_pretrained(&fixture_model(name), &options(WeightType::F32))
                .unwrap();
        let text = case["text"].as_str().unwrap();
        let default = pipeline.run(&[text], &FillMaskOptions::default()).unwrap();
        assert_json_matches(
            &json(&default[0]),
            &case["default"],
            SCORE_TOLERANCE,
            &format!("{name} default"),
        );
        let three = FillMaskOptions {
            top_k: 3,
            ..FillMaskOptions::default()
        };
        assert_json_matches(
            &json(&pipeline.run(&[text], &three).unwrap()[0]),
            &case["top_k_3"],
            SCORE_TOLERANCE,
            &format!("{name} top_k 3"),
        );
    }
}

/// The token-classification pipeline against transformers 5's, for every aggregation.
#[test]
fn token_classification_pipeline_matches_transformers() {
    for name in [
        "gte/token-classification",
        "nomic_bert/token-classification",
    ] {
        let case = fixture_json(&format!("{name}/pipeline.json"));
        let pipeline = TokenClassificationPipeline::from_pretrained(
            &fixture_model(name),
            &options(WeightType::F32),
        )
        .unwrap();
        let texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        for strategy in ["none", "simple", "first", "average", "max"] {
            fixture_sanity(
                case[strategy][0].as_array().is_some_and(|e| !e.is_empty()),
                "transformers finds entities in the first text",
            );
            let ours = pipeline
                .run(
                    &texts,
                    &TokenClassificationOptions::default()
                        .with_aggregation_strategy(strategy.parse().unwrap()),
                )
                .unwrap();
            assert_json_matches(
                &json(&ours),
                &case[strategy],
                SCORE_TOLERANCE,
                &format!("{name} {strategy}"),
            );
        }
    }
}

/// The text-classification pipeline against transformers 5's on NomicBERT's classifier.
#[test]
fn text_classification_pipeline_matches_transformers() {
    let name = "nomic_bert/sequence-classification";
    let case = fixture_json(&format!("{name}/pipeline.json"));
    let pipeline = TextClassificationPipeline::from_pretrained(
        &fixture_model(name),
        &options(WeightType::F32),
    )
    .unwrap();
    let texts: Vec<String> = serde_json::from_value(case["texts"].clone()).unwrap();
    let inputs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
    let top_1 = pipeline
        .run(&inputs, &TextClassificationOptions::default())
        .unwrap();
    assert_json_matches(&json(&top_1), &case["top_1"], SCORE_TOLERANCE, "top 1");
    let all = TextClassificationOptions {
        top_k: None,
        ..TextClassificationOptions::default()
    };
    assert_json_matches(
        &json(&pipeline.run(&inputs, &all).unwrap()),
        &case["all"],
        SCORE_TOLERANCE,
        "all",
    );
}
