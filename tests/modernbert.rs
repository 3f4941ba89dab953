//! ModernBERT and its heads against PyTorch: tiny random checkpoints made by
//! `scripts/make_fixtures.py --only modernbert` with transformers 4.57.6 (three layers: 0 and 2
//! global, 1 local with a window of 2 keys each side, far shorter than the inputs), and the
//! outputs PyTorch gave for a right-padded batch, per-token outputs zero at the padding as
//! transformers' unpadded path returns them; and `SentenceTransformer.encode`
//! (sentence-transformers 5.1.2) on the base model with mean pooling and Normalize.

mod common;

use common::*;
use ferroformers::pipelines::{EmbeddingsOptions, EmbeddingsPipeline, Pipeline};
use ferroformers::{
    AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
    AutoModelForTokenClassification, EncodeOptions, Error, FromPretrained, HubOptions, LoadOptions,
    ModelConfig, ModelInput, ModernBertForMaskedLM, ModernBertForSequenceClassification,
    ModernBertForTokenClassification, ModernBertModel, Tensor, TextInput, Tokenizer, WeightType,
};
use serde_json::Value;

/// f32 against PyTorch f32: the brief's bar.
const F32_TOLERANCE: f32 = 1e-4;
/// Each input alone against its row of the padded batch: the unpadded encoder gives each
/// sequence the same products whatever else is in the batch, up to the GEMM's row blocking.
const BATCH_TOLERANCE: f32 = 1e-5;
/// sentence-transformers' `encode` against ours, on unit-length embeddings: the brief's bar.
const ENCODE_TOLERANCE: f32 = 1e-5;

fn options(weight_type: WeightType) -> LoadOptions {
    LoadOptions::default()
        .with_hub(HubOptions::default().with_offline(true))
        .with_weight_type(weight_type)
}

fn load<M: FromPretrained>(name: &str) -> M {
    M::from_pretrained(&fixture_model(name), &options(WeightType::F32)).expect("fixture loads")
}

/// Check `forward` on the reference batch against PyTorch, then each input alone (no mask)
/// against its row of the batch.
fn check(name: &str, forward: impl Fn(&ModelInput) -> Tensor) {
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
        lengths.iter().any(|&l| l < lengths[0]) && lengths.iter().max() > Some(&5),
        "the batch is padded and longer than the local window",
    );
    assert_inputs_alone_match_their_rows(&reference, &batch, BATCH_TOLERANCE, name, forward);
}

#[test]
fn tokenizer_json_matches_python_ids_and_mask() {
    let name = "modernbert/base";
    let reference = reference(name);
    let tokenizer = Tokenizer::from_pretrained(&fixture_model(name), &HubOptions::default())
        .expect("tokenizer.json loads");
    let items: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("{name}/inputs.json"))).unwrap(),
    )
    .unwrap();
    let inputs: Vec<TextInput> = items
        .iter()
        .map(|item| match item {
            Value::String(text) => text.as_str().into(),
            Value::Array(pair) => (pair[0].as_str().unwrap(), pair[1].as_str().unwrap()).into(),
            other => panic!("unexpected fixture input {other}"),
        })
        .collect();
    let input = tokenizer
        .encode_batch(inputs, &EncodeOptions::default())
        .unwrap()
        .to_input(&ferroformers::Device::Cpu)
        .unwrap();
    let (ids, mask) = ids_and_mask(&reference);
    assert_eq!(
        input.input_ids.to_vec2::<u32>().unwrap(),
        ids.to_vec2::<u32>().unwrap(),
        "input_ids ([CLS] A [SEP] B [SEP], [MASK] with the space before it)"
    );
    assert_eq!(
        input.attention_mask.unwrap().to_vec2::<u32>().unwrap(),
        mask.to_vec2::<u32>().unwrap(),
        "attention_mask"
    );
}

#[test]
fn base_model_matches_pytorch_with_global_and_local_layers() {
    let model: ModernBertModel = load("modernbert/base");
    check("modernbert/base", |input| {
        let output = model.forward(input).unwrap();
        assert!(output.pooler_output.is_none(), "ModernBERT has no pooler");
        output.last_hidden_state
    });
}

#[test]
fn masked_lm_with_tied_decoder_matches_pytorch() {
    let weights = candle_core::safetensors::load(
        fixture("modernbert/masked-lm/model.safetensors"),
        &ferroformers::Device::Cpu,
    )
    .unwrap();
    fixture_sanity(
        !weights.contains_key("decoder.weight") && weights.contains_key("decoder.bias"),
        "the decoder is tied (no weight of its own) with a bias of its own",
    );
    let model: ModernBertForMaskedLM = load("modernbert/masked-lm");
    check("modernbert/masked-lm", |input| {
        model.forward(input).unwrap()
    });
}

#[test]
fn sequence_classification_with_mean_pooling_matches_pytorch() {
    let model: ModernBertForSequenceClassification = load("modernbert/sequence-classification");
    check("modernbert/sequence-classification", |input| {
        model.forward(input).unwrap()
    });
}

#[test]
fn token_classification_matches_pytorch() {
    let model: ModernBertForTokenClassification = load("modernbert/token-classification");
    check("modernbert/token-classification", |input| {
        model.forward(input).unwrap()
    });
}

#[test]
fn auto_classes_load_modernbert() {
    let base = reference("modernbert/base");
    let model: AutoModel = load("modernbert/base");
    let output = model.forward(&reference_input(&base)).unwrap();
    assert_close(
        &output.last_hidden_state,
        &base["last_hidden_state"],
        F32_TOLERANCE,
        "AutoModel",
    );
    let logits = |name: &str, forward: &dyn Fn(&ModelInput) -> Tensor| {
        let expected = reference(name);
        assert_close(
            &forward(&reference_input(&expected)),
            &expected["logits"],
            F32_TOLERANCE,
            name,
        );
    };
    let masked_lm: AutoModelForMaskedLM = load("modernbert/masked-lm");
    logits("modernbert/masked-lm", &|input| {
        masked_lm.forward(input).unwrap()
    });
    let sequence: AutoModelForSequenceClassification = load("modernbert/sequence-classification");
    logits("modernbert/sequence-classification", &|input| {
        sequence.forward(input).unwrap()
    });
    let token: AutoModelForTokenClassification = load("modernbert/token-classification");
    logits("modernbert/token-classification", &|input| {
        token.forward(input).unwrap()
    });
}

/// The fixture's window must be what makes the local layer local: the same weights with a
/// window wider than the inputs give other hidden states.
#[test]
fn the_local_window_changes_the_output() {
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("modernbert/base")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    let config_path = folder.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["local_attention"] = 1024.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = ModernBertModel::from_pretrained(
        &folder.path().to_string_lossy(),
        &options(WeightType::F32),
    )
    .unwrap();
    let reference = reference("modernbert/base");
    let hidden = model
        .forward(&reference_input(&reference))
        .unwrap()
        .last_hidden_state;
    let difference = max_abs_diff(&hidden, &reference["last_hidden_state"]);
    assert!(
        difference > 1e-2,
        "a window covering the inputs changed the output by only {difference:e}"
    );
}

#[test]
fn configs_it_cannot_run_are_errors_naming_the_field() {
    let read = |edit: &str| {
        let mut config: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("modernbert/base/config.json")).unwrap(),
        )
        .unwrap();
        let (key, value) = edit.split_once('=').unwrap();
        config[key] = serde_json::from_str(value).unwrap();
        ModelConfig::from_json(&config.to_string(), std::path::Path::new("config.json"))
    };
    assert!(read("global_attn_every_n_layers=2").is_ok());
    for (edit, named) in [
        ("global_attn_every_n_layers=0", "global_attn_every_n_layers"),
        ("num_attention_heads=3", "num_attention_heads"),
        ("hidden_size=36", "head_dim"),
        ("local_rope_theta=0.5", "rope_theta"),
        ("classifier_pooling=\"max\"", "max"),
    ] {
        let message = match read(edit) {
            Err(error @ (Error::InvalidConfig(_) | Error::Json { .. })) => error.to_string(),
            other => panic!("{edit}: expected a config error, got {other:?}"),
        };
        assert!(message.contains(named), "{edit}: {message}");
    }
}

#[test]
fn a_row_without_tokens_is_an_error() {
    let model: ModernBertModel = load("modernbert/base");
    let reference = reference("modernbert/base");
    let mut input = reference_input(&reference);
    let mask = input.attention_mask.take().unwrap();
    let empty = mask.narrow(0, 0, 1).unwrap().zeros_like().unwrap();
    let rest = mask.narrow(0, 1, mask.dim(0).unwrap() - 1).unwrap();
    input.attention_mask = Some(Tensor::cat(&[&empty, &rest], 0).unwrap());
    match model.forward(&input) {
        Err(Error::InvalidInput(message)) => assert!(message.contains("input 0"), "{message}"),
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn sentence_embeddings_match_sentence_transformers_encode() {
    let name = "modernbert/sentence-transformers";
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
    )
    .unwrap();
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let pipeline =
        EmbeddingsPipeline::from_pretrained(&fixture_model(name), &options(WeightType::F32))
            .unwrap();
    let ours = pipeline
        .run(&sentences, &EmbeddingsOptions::default())
        .unwrap();
    for (key, ours) in [
        ("embeddings", ours),
        (
            "alone",
            sentences
                .iter()
                .map(|s| {
                    pipeline
                        .run(&[*s], &EmbeddingsOptions::default())
                        .unwrap()
                        .remove(0)
                })
                .collect(),
        ),
    ] {
        let theirs: Vec<Vec<f32>> = serde_json::from_value(reference[key].clone()).unwrap();
        assert_same_len(&ours, &theirs, key);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_close_slices(a, b, ENCODE_TOLERANCE, &format!("{key}: sentence {i}"));
        }
    }
}

/// bf16 and int8 weights against PyTorch's f32 masked-LM logits, with bars measured on this
/// fixture (the error of the whole stack: three layers, the head and the tied decoder) with
/// about 1.5x headroom, as tests/kernel_paths.rs sets its own. Under
/// `FERROFORMERS_KERNELS=reference` candle computes bf16 throughout (its bar there) and int8
/// is a load error.
#[test]
fn reduced_precision_weights_stay_within_their_bars() {
    use ferroformers::kernels::{kernel_mode, KernelMode};

    let reference_ops = kernel_mode() == KernelMode::Reference;
    // Measured on AVX-512 (Zen 5) and portable code: bf16 2.5e-2 (5.0e-2 on candle's ops),
    // int8 6.6e-2 (AVX-512 VNNI; 3.9e-2 portable).
    let bf16_tolerance = if reference_ops { 8e-2 } else { 4e-2 };
    const INT8_TOLERANCE: f32 = 1e-1;
    let name = "modernbert/masked-lm";
    let reference = reference(name);
    for (weight_type, tolerance) in [
        (WeightType::Bf16, bf16_tolerance),
        (WeightType::Int8, INT8_TOLERANCE),
    ] {
        let loaded =
            ModernBertForMaskedLM::from_pretrained(&fixture_model(name), &options(weight_type));
        if weight_type == WeightType::Int8 && reference_ops {
            assert!(loaded.is_err(), "int8 loads with candle's ops");
            continue;
        }
        let logits = loaded
            .unwrap()
            .forward(&reference_input(&reference))
            .unwrap();
        let error = max_abs_diff(&logits, &reference["logits"]);
        eprintln!("{weight_type:?}: max abs error {error:.2e} (bar {tolerance:.0e})");
        assert!(
            error <= tolerance,
            "{weight_type:?}: max abs error {error:e} exceeds {tolerance:e}"
        );
    }
}

/// Unpadding against padding, on a mixed-length batch: ModernBERT-base's layer shapes (hidden
/// 768, 12 heads, intermediate 1152, a window of 128, a global layer then two local ones) with
/// random weights, 3 layers. The padded cost is measured as the same batch with every row at
/// the longest length (what a padded forward computes: every row through the products, each
/// query over all keys). Prints tokens/s of real tokens both ways. Run it with
/// `cargo test --test modernbert unpadding -- --ignored --nocapture`.
#[test]
#[ignore = "a timing, not a check: run it by hand"]
fn unpadding_pays_on_mixed_length_batches() {
    use std::collections::HashMap;
    use std::time::Instant;

    let (hidden, intermediate, layers, vocab) = (768usize, 1152usize, 3usize, 1024usize);
    let device = ferroformers::Device::Cpu;
    let random = |shape: &[usize]| Tensor::randn(0f32, 0.02, shape, &device).unwrap();
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    weights.insert(
        "embeddings.tok_embeddings.weight".into(),
        random(&[vocab, hidden]),
    );
    let ones = Tensor::ones(hidden, ferroformers::DType::F32, &device).unwrap();
    weights.insert("embeddings.norm.weight".into(), ones.clone());
    weights.insert("final_norm.weight".into(), ones.clone());
    for layer in 0..layers {
        let at = |name: &str| format!("layers.{layer}.{name}");
        if layer > 0 {
            weights.insert(at("attn_norm.weight"), ones.clone());
        }
        weights.insert(at("mlp_norm.weight"), ones.clone());
        weights.insert(at("attn.Wqkv.weight"), random(&[3 * hidden, hidden]));
        weights.insert(at("attn.Wo.weight"), random(&[hidden, hidden]));
        weights.insert(at("mlp.Wi.weight"), random(&[2 * intermediate, hidden]));
        weights.insert(at("mlp.Wo.weight"), random(&[hidden, intermediate]));
    }
    let folder = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&weights, folder.path().join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "modernbert", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": 12, "global_attn_every_n_layers": 3, "local_attention": 128,
    });
    std::fs::write(folder.path().join("config.json"), config.to_string()).unwrap();
    let model = ModernBertModel::from_pretrained(
        &folder.path().to_string_lossy(),
        &options(WeightType::F32),
    )
    .unwrap();

    let lengths = [512usize, 384, 256, 160, 96, 64, 32, 16];
    let (batch, seq) = (lengths.len(), lengths[0]);
    let real: usize = lengths.iter().sum();
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| (i * 7919 % vocab) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, seq), &device).unwrap();
    let mask: Vec<u32> = lengths
        .iter()
        .flat_map(|&len| (0..seq).map(move |i| u32::from(i < len)))
        .collect();
    let mixed = ModelInput {
        input_ids: ids.clone(),
        attention_mask: Some(Tensor::from_vec(mask, (batch, seq), &device).unwrap()),
        token_type_ids: None,
    };
    let full = ModelInput {
        input_ids: ids,
        attention_mask: None,
        token_type_ids: None,
    };
    // The two take turns, run by run, so that a slow spell of the machine falls on both.
    let time = |input: &ModelInput| {
        let start = Instant::now();
        model.forward(input).unwrap();
        start.elapsed().as_secs_f64()
    };
    time(&mixed);
    time(&full);
    let mut runs: Vec<(f64, f64)> = (0..5).map(|_| (time(&mixed), time(&full))).collect();
    runs.sort_by(|a, b| (a.1 / a.0).total_cmp(&(b.1 / b.0)));
    let (unpadded, padded) = runs[2];
    eprintln!(
        "{batch} rows of {lengths:?} tokens ({real} real, {} padded): unpadded {:.0} tokens/s \
         ({:.0} ms), padded {:.0} tokens/s ({:.0} ms): {:.2}x (the median run pair by ratio)",
        batch * seq,
        real as f64 / unpadded,
        unpadded * 1e3,
        real as f64 / padded,
        padded * 1e3,
        padded / unpadded
    );
}

/// The fill-mask pipeline on the masked-LM fixture: its best candidate for the `[MASK]` of
/// "The capital of France is [MASK]." is the reference logits' argmax at that position, with
/// their softmax as its score.
#[test]
fn fill_mask_pipeline_picks_the_reference_logits_best_token() {
    use ferroformers::pipelines::{FillMaskOptions, FillMaskPipeline};

    let name = "modernbert/masked-lm";
    let reference = reference(name);
    let (ids, _) = ids_and_mask(&reference);
    let ids = ids.to_vec2::<u32>().unwrap();
    let mask_id = 860; // [MASK], the last special token the fixture script adds
    let (row, position) = ids
        .iter()
        .enumerate()
        .find_map(|(r, row)| row.iter().position(|&id| id == mask_id).map(|p| (r, p)))
        .expect("one fixture input holds [MASK]");
    let logits = reference["logits"]
        .get(row)
        .unwrap()
        .get(position)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let best = logits.iter().position(|&l| l == max).unwrap() as u32;
    let probability = 1.0 / logits.iter().map(|&l| (l - max).exp()).sum::<f32>();

    let pipeline =
        FillMaskPipeline::from_pretrained(&fixture_model(name), &options(WeightType::F32)).unwrap();
    let predictions = pipeline
        .run(
            &["The capital of France is [MASK]."],
            &FillMaskOptions::default(),
        )
        .unwrap();
    let top = &predictions[0][0];
    assert_eq!(top.token, best, "best candidate");
    assert!(
        (top.score - probability).abs() < 1e-5,
        "score {} against {probability}",
        top.score
    );
}
