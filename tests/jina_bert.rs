//! JinaBERT v2 against a PyTorch reference written from its remote code
//! (jinaai/jina-bert-implementation, which no registry ships), itself held to llama.cpp's
//! implementation on the same checkpoints: `scripts/make_fixtures.py --only jina-bert`.
//!
//! - `jina_bert/base`: 4 heads, `feed_forward_type: geglu` (jina-embeddings-v2-base-en's);
//! - `jina_bert/six-heads`: 6 heads, so ALiBi's interleaved slopes for a head count that is not
//!   a power of two;
//! - `jina_bert/reglu`: `feed_forward_type: reglu` (PyTorch reference only: llama.cpp always
//!   gates with GELU);
//! - `jina_bert/sentence-transformers`: base in jina v2's sentence-transformers layout
//!   (Transformer, Pooling mean, Normalize), with the reference's normalized mean embeddings.

mod common;

use common::*;
use ferroformers::pipelines::{EmbeddingsOptions, EmbeddingsPipeline, Pipeline};
use ferroformers::{
    AutoModel, AutoModelForSequenceClassification, Error, FromPretrained, HubOptions,
    JinaBertModel, LoadOptions, ModelConfig, Pooling, Tensor, WeightType,
};
use serde_json::Value;

/// Hidden states against the f32 reference: the brief's bar (measured 1e-6 or less, below).
const F32_TOLERANCE: f32 = 1e-4;
/// Each input alone against its padded row, and mean-pooled embeddings against the
/// reference's.
const TIGHT_TOLERANCE: f32 = 1e-5;
const NAMES: [&str; 3] = ["jina_bert/base", "jina_bert/six-heads", "jina_bert/reglu"];

fn options(weight_type: WeightType) -> LoadOptions {
    LoadOptions::default()
        .with_hub(HubOptions::default().with_offline(true))
        .with_weight_type(weight_type)
}

fn load(name: &str) -> JinaBertModel {
    JinaBertModel::from_pretrained(&fixture_model(name), &options(WeightType::F32))
        .expect("fixture loads")
}

fn hidden(model: &JinaBertModel, input: &ferroformers::ModelInput) -> Tensor {
    let output = model.forward(input).unwrap();
    assert!(output.pooler_output.is_none(), "no pooler output");
    output.last_hidden_state
}

/// Hidden states within F32_TOLERANCE of the reference on the padded batch, each input alone
/// within TIGHT_TOLERANCE of its row, and the mean-pooled rows within TIGHT_TOLERANCE. Measured
/// on x86-64 (AVX2): hidden states within 1.9e-6, mean-pooled within 4.8e-7.
#[test]
fn hidden_states_and_mean_pooling_match_the_reference() {
    use ferroformers::kernels::{kernel_mode, KernelMode};

    // candle's own matmul (`FERROFORMERS_KERNELS=reference`) splits a lone input's product
    // otherwise than the batch's: 1.08e-5 apart on Zen 4 (AVX-512, reglu), so 2e-5 there.
    let alone_tolerance = match kernel_mode() {
        KernelMode::Reference => 2e-5,
        _ => TIGHT_TOLERANCE,
    };
    for name in NAMES {
        let model = load(name);
        let reference = reference(name);
        let input = reference_input(&reference);
        let batch = hidden(&model, &input);
        let error = max_abs_diff(&batch, &reference["last_hidden_state"]);
        let llama_cpp = fixture_json(&format!("{name}/reference.json"))["llama_cpp"].clone();
        eprintln!(
            "{name}: hidden states max abs error {error:.2e} (bar {F32_TOLERANCE:.0e}); the \
             reference vs llama.cpp: {}",
            match &llama_cpp {
                Value::Null => "not compared (llama.cpp gates with GELU only)".to_string(),
                gap => format!(
                    "hidden {:.2e}, mean-pooled {:.2e} (bar {:.0e})",
                    gap["hidden_state_max_abs_diff"].as_f64().unwrap(),
                    gap["mean_pooled_max_abs_diff"].as_f64().unwrap(),
                    gap["bar"].as_f64().unwrap()
                ),
            }
        );
        assert_close(
            &batch,
            &reference["last_hidden_state"],
            F32_TOLERANCE,
            &format!("{name} last_hidden_state"),
        );
        let lengths = lengths(&reference);
        fixture_sanity(
            lengths.iter().any(|&l| l < lengths[0]),
            "the batch is padded",
        );
        assert_inputs_alone_match_their_rows(&reference, &batch, alone_tolerance, name, |i| {
            hidden(&model, i)
        });
        let mask = input.attention_mask.as_ref().unwrap();
        let pooled = Pooling::Mean.pool(&batch, mask).unwrap();
        eprintln!(
            "{name}: mean-pooled max abs error {:.2e} (bar {TIGHT_TOLERANCE:.0e})",
            max_abs_diff(&pooled, &reference["mean_pooled"])
        );
        assert_close(
            &pooled,
            &reference["mean_pooled"],
            TIGHT_TOLERANCE,
            &format!("{name} mean_pooled"),
        );
    }
}

/// The slopes of 4 and 6 heads, from the model and from the public function, equal the
/// reference's (`_get_alibi_head_slopes`), which the fixtures' llama.cpp agreement also
/// covers (llama.cpp derives its own from `max_alibi_bias`).
#[test]
fn alibi_slopes_match_the_reference() {
    for (name, heads) in [("jina_bert/base", 4), ("jina_bert/six-heads", 6)] {
        let expected: Vec<f64> = serde_json::from_value(
            fixture_json(&format!("{name}/reference.json"))["alibi_slopes"].clone(),
        )
        .unwrap();
        assert_eq!(expected.len(), heads, "{name}: the fixture's head count");
        assert_eq!(load(name).alibi_slopes(), expected.as_slice(), "{name}");
        assert_eq!(
            ferroformers::models::jina_bert::alibi_slopes(heads),
            expected,
            "{heads} heads"
        );
    }
    // Six heads: 4's series, then every other of 8's (2^-1, 2^-3).
    assert_eq!(
        ferroformers::models::jina_bert::alibi_slopes(6),
        vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    );
}

/// `"model_type": "bert"` with ALiBi reads as JinaBERT and loads through AutoModel; BERT's own
/// configs still read as BERT; JinaBERT has no task heads here.
#[test]
fn the_config_picks_jinabert_and_the_auto_classes_load_it() {
    let config = ModelConfig::from_file(&fixture("jina_bert/base/config.json")).unwrap();
    assert!(matches!(config, ModelConfig::JinaBert(_)), "{config:?}");
    assert!(config.bert().is_err(), "a JinaBERT config is not BERT's");
    let bert = ModelConfig::from_file(&fixture("bert/base/config.json")).unwrap();
    assert!(matches!(bert, ModelConfig::Bert(_)));

    let name = "jina_bert/base";
    let reference = reference(name);
    let auto = AutoModel::from_pretrained(&fixture_model(name), &options(WeightType::F32))
        .unwrap()
        .forward(&reference_input(&reference))
        .unwrap()
        .last_hidden_state;
    assert_close(
        &auto,
        &reference["last_hidden_state"],
        F32_TOLERANCE,
        "AutoModel",
    );
    match AutoModelForSequenceClassification::from_pretrained(
        &fixture_model(name),
        &options(WeightType::F32),
    ) {
        Err(Error::UnsupportedTask { model_type, .. }) => assert!(model_type.contains("JinaBERT")),
        other => panic!("expected UnsupportedTask, got {other:?}"),
    }
}

/// The sentence-transformers layout through the embeddings pipeline (what `/embed` serves):
/// mean pooling and Normalize, in a batch and each sentence alone.
#[test]
fn the_embeddings_pipeline_matches_the_reference() {
    let name = "jina_bert/sentence-transformers";
    let reference = fixture_reference(name);
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let pipeline =
        EmbeddingsPipeline::from_pretrained(&fixture_model(name), &options(WeightType::F32))
            .unwrap();
    let default = EmbeddingsOptions::default();
    assert_embeddings(
        &pipeline.run(&sentences, &default).unwrap(),
        &reference["embeddings"],
        TIGHT_TOLERANCE,
        "batch",
    );
    let alone: Vec<Vec<f32>> = sentences
        .iter()
        .map(|s| pipeline.run(&[*s], &default).unwrap().remove(0))
        .collect();
    assert_embeddings(&alone, &reference["alone"], TIGHT_TOLERANCE, "alone");
}

/// A copy of `name` with `edit` applied to its config.json.
fn with_config(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    let path = folder.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    folder
}

/// Switches this implementation does not cover are config errors naming them, not panics or
/// a silent run as plain BERT.
#[test]
fn unsupported_switches_are_errors() {
    let cases: [(&str, Value, &str); 4] = [
        (
            "position_embedding_type",
            "absolute".into(),
            "position_embedding_type `absolute`",
        ),
        (
            "position_embedding_type",
            "relative_key".into(),
            "`relative_key`",
        ),
        (
            "feed_forward_type",
            "original".into(),
            "feed_forward_type `original`",
        ),
        ("feed_forward_type", "swiglu".into(), "`swiglu`"),
    ];
    for (key, value, named) in cases {
        let folder = with_config("jina_bert/base", |c| c[key] = value.clone());
        match ModelConfig::from_file(&folder.path().join("config.json")) {
            Err(Error::InvalidConfig(message)) => {
                assert!(message.contains(named), "{key}={value}: {message}")
            }
            other => panic!("{key}={value}: expected a config error, got {other:?}"),
        }
        assert!(JinaBertModel::from_pretrained(
            &folder.path().to_string_lossy(),
            &options(WeightType::F32)
        )
        .is_err());
    }
    // A JinaBERT architecture without `position_embedding_type` gets the remote code's
    // default, ALiBi; without `feed_forward_type` the remote code's plain MLP, refused.
    let folder = with_config("jina_bert/base", |c| {
        c.as_object_mut().unwrap().remove("position_embedding_type");
    });
    assert!(matches!(
        ModelConfig::from_file(&folder.path().join("config.json")),
        Ok(ModelConfig::JinaBert(_))
    ));
    let folder = with_config("jina_bert/base", |c| {
        c.as_object_mut().unwrap().remove("feed_forward_type");
    });
    assert!(matches!(
        ModelConfig::from_file(&folder.path().join("config.json")),
        Err(Error::InvalidConfig(m)) if m.contains("`original`")
    ));
}

/// jina-embeddings-v2-base-code's layout (q/k norms, `up_gated_layer`) is refused by name.
#[test]
fn the_code_variant_is_refused_by_name() {
    let folder = with_config("jina_bert/base", |_| {});
    let path = folder.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    for layer in 0..2 {
        let old = format!("encoder.layer.{layer}.mlp.gated_layers.weight");
        let weight = tensors.remove(&old).unwrap();
        tensors.insert(
            format!("encoder.layer.{layer}.mlp.up_gated_layer.weight"),
            weight,
        );
    }
    candle_core::safetensors::save(&tensors, &path).unwrap();
    match JinaBertModel::from_pretrained(
        &folder.path().to_string_lossy(),
        &options(WeightType::F32),
    ) {
        Err(error) => assert!(
            error.to_string().contains("jina-embeddings-v2-base-code"),
            "{error}"
        ),
        Ok(_) => panic!("the code variant loaded"),
    }
}

/// Inputs past the limits are errors: a token type past the table, and more tokens than
/// `max_position_embeddings`.
#[test]
fn inputs_past_the_limits_are_errors() {
    let model = load("jina_bert/base");
    let mut input = reference_input(&reference("jina_bert/base"));
    input.token_type_ids = Some((input.input_ids.ones_like().unwrap() * 2.0).unwrap());
    assert!(matches!(model.forward(&input), Err(Error::InvalidInput(_))));
    let long = Tensor::zeros(
        (1, 65),
        ferroformers::DType::U32,
        &ferroformers::Device::Cpu,
    )
    .unwrap();
    let input = ferroformers::ModelInput {
        input_ids: long,
        attention_mask: None,
        token_type_ids: None,
    };
    assert!(matches!(
        model.forward(&input),
        Err(Error::InputTooLong {
            length: 65,
            max: 64
        })
    ));
}

/// bf16 and int8 weights against the f32 reference, bars measured on these fixtures with
/// headroom (as tests/rotary_berts.rs). Under `FERROFORMERS_KERNELS=reference` candle computes
/// bf16 throughout and int8 is a load error.
#[test]
fn reduced_precision_weights_stay_within_their_bars() {
    use ferroformers::kernels::{kernel_mode, KernelMode};

    let reference_ops = kernel_mode() == KernelMode::Reference;
    let isa = ferroformers::kernels::isa::Isa::current();
    let vnni = isa == ferroformers::kernels::isa::Isa::Avx512;
    // Measured where the three models err most (six-heads), bars about 1.5x those:
    // bf16 3.0e-1 on AVX2 and portable code, 3.6e-1 on AVX-512 (Zen 4), 4.4e-1 on candle's
    // ops; int8 4.5e-1 with AVX2's and portable code's 16-bit activations, 9.3e-1 with
    // AVX-512 VNNI's u8 activations (Zen 4; rotary_berts.rs shows the same 2x). Far above
    // GTE's and NomicBERT's because these fixtures' q and k weights are drawn large on purpose
    // (std 0.5, so that attention is sharp and ALiBi competes with the scores): rounding q and
    // k moves scores of tens by tenths. This checks the reduced-precision paths run and stay
    // bounded; the f32 test above is the correctness proof.
    let bf16_tolerance = match (reference_ops, vnni) {
        (true, _) => 6.5e-1,
        (false, true) => 5.5e-1,
        (false, false) => 4.5e-1,
    };
    let int8_tolerance = if vnni { 1.4 } else { 7e-1 };
    for name in NAMES {
        let reference = reference(name);
        for (weight_type, tolerance) in [
            (WeightType::Bf16, bf16_tolerance),
            (WeightType::Int8, int8_tolerance),
        ] {
            let loaded =
                JinaBertModel::from_pretrained(&fixture_model(name), &options(weight_type));
            if weight_type == WeightType::Int8 && reference_ops {
                assert!(loaded.is_err(), "int8 loads with candle's ops");
                continue;
            }
            let hidden = hidden(&loaded.unwrap(), &reference_input(&reference));
            let error = max_abs_diff(&hidden, &reference["last_hidden_state"]);
            eprintln!("{name} {weight_type:?} on {isa:?}: max abs error {error:.2e} (bar {tolerance:.1e})");
            assert!(
                error.is_finite() && error <= tolerance,
                "{name} {weight_type:?}: max abs error {error:e} exceeds {tolerance:e}"
            );
        }
    }
}
