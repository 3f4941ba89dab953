//! Fine-tuning against PyTorch: ten optimiser steps of transformers' Trainer recipe (AdamW,
//! linear warmup, clipping, accumulation) on tiny random encoders, one per task, from the
//! same initial weights and batches (`scripts/make_fixtures.py --only training`). Every
//! micro-batch's loss and every parameter after the last step must match.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use common::fixture;
use ferroformers::models::pooling::Pooling;
use ferroformers::training::{
    AdamW, AdamWSettings, Dropout, EmbeddingLoss, Gradients, LinearSchedule, Problem,
    TrainableModel, TrainedPart, TrainingBatch, TrainingTask,
};
use ferroformers::{FromPretrained, LoadOptions, ModelInput};
use serde_json::Value;

/// Relative tolerance of each loss (against its magnitude) and of each parameter (against
/// the largest magnitude in its tensor): f32 sums in another order drift by ~1e-7 a step.
const TOLERANCE: f32 = 1e-5;

fn task_of(settings: &Value) -> TrainingTask {
    let labels = |n: u64| (0..n).map(|i| format!("LABEL_{i}")).collect::<Vec<_>>();
    let num_labels = settings["num_labels"].as_u64().unwrap_or(0);
    match settings["task"].as_str().unwrap() {
        "single_label_classification" => TrainingTask::SequenceClassification {
            labels: labels(num_labels),
            problem: Problem::SingleLabel,
        },
        "multi_label_classification" => TrainingTask::SequenceClassification {
            labels: labels(num_labels),
            problem: Problem::MultiLabel,
        },
        "regression" => TrainingTask::SequenceClassification {
            labels: labels(1),
            problem: Problem::Regression,
        },
        "token_classification" => TrainingTask::TokenClassification {
            labels: labels(num_labels),
        },
        "cross_encoder" => TrainingTask::CrossEncoder,
        "mnrl" => TrainingTask::SentenceEmbeddings {
            pooling: Pooling::Mean,
            loss: EmbeddingLoss::multiple_negatives_ranking(),
        },
        "cosent" => TrainingTask::SentenceEmbeddings {
            pooling: Pooling::Mean,
            loss: EmbeddingLoss::cosent(),
        },
        "cosine" => TrainingTask::SentenceEmbeddings {
            pooling: Pooling::Mean,
            loss: EmbeddingLoss::CosineSimilarity,
        },
        other => panic!("unknown task {other}"),
    }
}

fn ids(value: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = serde_json::from_value(value.clone()).unwrap();
    Tensor::new(rows, &Device::Cpu).unwrap()
}

fn model_input(micro: &Value) -> ModelInput {
    ModelInput {
        input_ids: ids(&micro["input_ids"]),
        attention_mask: Some(ids(&micro["attention_mask"])),
        token_type_ids: micro.get("token_type_ids").map(ids),
    }
}

fn targets(task: &TrainingTask, labels: &Value) -> Tensor {
    let device = &Device::Cpu;
    match task {
        TrainingTask::SequenceClassification {
            problem: Problem::SingleLabel,
            ..
        } => Tensor::new(
            serde_json::from_value::<Vec<u32>>(labels.clone()).unwrap(),
            device,
        ),
        TrainingTask::SequenceClassification {
            problem: Problem::MultiLabel,
            ..
        } => Tensor::new(
            serde_json::from_value::<Vec<Vec<f32>>>(labels.clone()).unwrap(),
            device,
        ),
        TrainingTask::TokenClassification { .. } => Tensor::new(
            serde_json::from_value::<Vec<Vec<i64>>>(labels.clone()).unwrap(),
            device,
        ),
        _ => Tensor::new(
            serde_json::from_value::<Vec<f32>>(labels.clone()).unwrap(),
            device,
        ),
    }
    .unwrap()
}

fn batch(task: &TrainingTask, micro: &Value) -> TrainingBatch {
    match task {
        TrainingTask::SentenceEmbeddings { .. } => {
            let columns = ["anchor", "positive", "negative", "sentence1", "sentence2"]
                .iter()
                .filter_map(|c| micro.get(*c).map(model_input))
                .collect();
            TrainingBatch::Columns {
                columns,
                scores: micro.get("labels").map(|l| targets(task, l)),
            }
        }
        _ => TrainingBatch::Texts {
            input: model_input(micro),
            targets: targets(task, &micro["labels"]),
        },
    }
}

fn assert_relative(actual: f32, expected: f32, what: &str) {
    assert!(actual.is_finite(), "{what}: {actual} is not finite");
    let gap = (actual - expected).abs();
    assert!(
        gap <= TOLERANCE * expected.abs().max(1e-3),
        "{what}: {actual} vs PyTorch {expected} (gap {gap:e})"
    );
}

fn load_case(initial: &Path, task: &TrainingTask, settings: &Value) -> TrainableModel {
    let part = match settings["head_only"].as_bool() {
        Some(true) => TrainedPart::HeadOnly,
        _ => TrainedPart::Everything,
    };
    let path = initial.to_str().unwrap();
    TrainableModel::from_pretrained(path, task.clone(), part, &LoadOptions::default(), 0).unwrap()
}

/// Runs the case's steps and checks every loss and learning rate; returns the model.
fn train_case(case: &str) -> TrainableModel {
    let folder = fixture(&format!("training/{case}"));
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("steps.json")).unwrap()).unwrap();
    let settings = &reference["settings"];
    let task = task_of(settings);
    let initial = folder.join("initial");
    let model = load_case(&initial, &task, settings);
    assert!(
        model.initialised().is_empty(),
        "{case}: the fixture holds every weight, head included"
    );
    let adamw = AdamWSettings {
        learning_rate: settings["learning_rate"].as_f64().unwrap(),
        weight_decay: settings["weight_decay"].as_f64().unwrap(),
        ..AdamWSettings::default()
    };
    let schedule = LinearSchedule {
        peak: adamw.learning_rate,
        warmup_steps: settings["warmup_steps"].as_u64().unwrap(),
        total_steps: settings["steps"].as_u64().unwrap(),
    };
    let max_norm = settings["max_grad_norm"].as_f64().unwrap() as f32;
    let mut optimizer = AdamW::new(model.parameters(), adamw);
    let losses: Vec<f32> = serde_json::from_value(reference["losses"].clone()).unwrap();
    let rates: Vec<f64> = serde_json::from_value(reference["learning_rates"].clone()).unwrap();
    let mut loss_index = 0;
    for (step, micro_batches) in reference["batches"].as_array().unwrap().iter().enumerate() {
        let micro_batches = micro_batches.as_array().unwrap();
        let mut gradients = Gradients::new(model.parameters());
        for micro in micro_batches {
            let loss = model.loss(&batch(&task, micro), &Dropout::off()).unwrap();
            let value = loss.to_scalar::<f32>().unwrap();
            assert_relative(
                value,
                losses[loss_index],
                &format!("{case} loss {loss_index}"),
            );
            loss_index += 1;
            let scaled = (loss / micro_batches.len() as f64).unwrap();
            let store = model.backward(&scaled).unwrap();
            assert_key_bias_gradients_vanish(case, &model, &store);
            gradients.add(model.parameters(), &store).unwrap();
        }
        gradients.clip(max_norm).unwrap();
        let rate = schedule.rate(step as u64);
        assert!(
            (rate - rates[step]).abs() <= 1e-12,
            "{case} step {step}: rate {rate} vs {}",
            rates[step]
        );
        optimizer
            .step(model.parameters(), &gradients, rate)
            .unwrap();
    }
    assert_eq!(
        loss_index,
        losses.len(),
        "{case}: every reference loss was compared"
    );
    model
}

fn final_parameters(case: &str) -> HashMap<String, Tensor> {
    let path = fixture(&format!("training/{case}/final.safetensors"));
    candle_core::safetensors::load(Path::new(&path), &Device::Cpu).unwrap()
}

fn assert_parameters_match(case: &str, model: &TrainableModel) {
    let expected = final_parameters(case);
    let mut worst = (0.0f32, String::new());
    for (name, actual) in model.parameters().tensors() {
        if is_key_bias(&name) {
            continue;
        }
        let reference = expected
            .get(&name)
            .unwrap_or_else(|| panic!("{case}: PyTorch has no parameter {name}"));
        let actual: Vec<f32> = actual.flatten_all().unwrap().to_vec1().unwrap();
        let reference: Vec<f32> = reference
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, r) in actual.iter().zip(&reference) {
            assert!(a.is_finite(), "{case} {name}: {a} is not finite");
            let relative = (a - r).abs() / scale.max(1e-6);
            if relative > worst.0 {
                worst = (relative, name.clone());
            }
        }
    }
    assert_eq!(
        model.parameters().iter().count(),
        expected.len(),
        "{case}: parameter count"
    );
    // The attention's softmax runs on the kernels' instruction set (`FERROFORMERS_ISA` caps it).
    let isa = ferroformers::kernels::isa::Isa::current();
    eprintln!(
        "{case}: worst parameter gap {:.2e} relative ({}), isa {isa:?}",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= TOLERANCE,
        "{case}: {} is {:e} relative from PyTorch (isa {isa:?})",
        worst.1,
        worst.0
    );
}

/// An attention key bias adds `q·b` to every score of a query's row, which softmax ignores:
/// its gradient is zero in exact arithmetic, and what either implementation computes is
/// rounding noise that AdamW then normalises into steps of up to the learning rate. It is
/// compared by [`assert_key_biases_move_only_by_noise`] instead.
fn is_key_bias(name: &str) -> bool {
    name.ends_with("attention.self.key.bias") || name.ends_with("attention.k_lin.bias")
}

fn norm(tensor: &Tensor) -> f32 {
    tensor
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Each key bias's gradient is rounding noise: below 1e-5 of its layer's query bias gradient.
fn assert_key_bias_gradients_vanish(case: &str, model: &TrainableModel, store: &GradStore) {
    for parameter in model
        .parameters()
        .trainable()
        .filter(|p| is_key_bias(&p.name))
    {
        let query = parameter
            .name
            .replace("key.bias", "query.bias")
            .replace("k_lin.bias", "q_lin.bias");
        let query = model.parameters().get(&query).unwrap();
        let (Some(key), Some(query)) = (store.get(&parameter.var), store.get(&query.var)) else {
            panic!(
                "{case}: {} or its query bias got no gradient",
                parameter.name
            );
        };
        let ratio = norm(key) / norm(query);
        assert!(
            ratio <= 1e-5,
            "{case}: {} has a gradient {ratio:e} of its query's",
            parameter.name
        );
    }
}

/// Both runs move each key bias by AdamW steps on noise, at most the learning rate times
/// AdamW's largest normalised step, `(1 - β1) / sqrt(1 - β2)` (≈ 3.16), per step.
fn assert_key_biases_move_only_by_noise(case: &str, model: &TrainableModel) {
    let folder = fixture(&format!("training/{case}"));
    let initial =
        candle_core::safetensors::load(folder.join("initial/model.safetensors"), &Device::Cpu)
            .unwrap();
    let expected = final_parameters(case);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("steps.json")).unwrap()).unwrap();
    let rates: Vec<f64> = serde_json::from_value(reference["learning_rates"].clone()).unwrap();
    let bound = (rates.iter().sum::<f64>() * 0.1 / 0.001f64.sqrt()) as f32 * 1.001;
    let mut checked = 0;
    for (name, actual) in model
        .parameters()
        .tensors()
        .into_iter()
        .filter(|(n, _)| is_key_bias(n))
    {
        let start = &initial[&name];
        for (run, end) in [("ours", &actual), ("PyTorch", &expected[&name])] {
            let moved = common::max_abs_diff(end, start);
            assert!(
                moved <= bound,
                "{case} {name}: {run} moved {moved} > {bound}"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "{case}: no key bias found");
}

macro_rules! parity {
    ($($test:ident => $case:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            let model = train_case($case);
            assert_parameters_match($case, &model);
            assert_key_biases_move_only_by_noise($case, &model);
        }
    )*};
}

parity! {
    bert_single_label_with_accumulation_matches_pytorch => "bert-single-label",
    bert_multi_label_matches_pytorch => "bert-multi-label",
    bert_regression_matches_pytorch => "bert-regression",
    bert_token_classification_matches_pytorch => "bert-token-classification",
    roberta_single_label_matches_pytorch => "roberta-single-label",
    distilbert_single_label_matches_pytorch => "distilbert-single-label",
    bert_cross_encoder_matches_pytorch => "bert-cross-encoder",
    bert_head_only_matches_pytorch => "bert-head-only",
    embeddings_multiple_negatives_ranking_matches_sentence_transformers => "embeddings-mnrl",
    embeddings_cosent_matches_sentence_transformers => "embeddings-cosent",
    embeddings_cosine_similarity_matches_sentence_transformers => "embeddings-cosine",
}

/// Every trainable parameter of every task's graph receives a gradient, non-zero but for the
/// key biases (zero in exact arithmetic, see [`is_key_bias`]); a frozen one receives none.
#[test]
fn every_trainable_parameter_receives_a_gradient() {
    for case in [
        "bert-single-label",
        "bert-token-classification",
        "roberta-single-label",
        "distilbert-single-label",
        "bert-head-only",
        "embeddings-mnrl",
        "embeddings-cosent",
    ] {
        let folder = fixture(&format!("training/{case}"));
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("steps.json")).unwrap())
                .unwrap();
        let task = task_of(&reference["settings"]);
        let initial = folder.join("initial");
        let model = load_case(&initial, &task, &reference["settings"]);
        let micro = &reference["batches"][0][0];
        let loss = model.loss(&batch(&task, micro), &Dropout::off()).unwrap();
        let store = model.backward(&loss).unwrap();
        let mut trained = 0;
        for parameter in model.parameters().iter() {
            let gradient = store.get(&parameter.var);
            if !parameter.trainable {
                assert!(
                    gradient.is_none(),
                    "{case}: frozen {} got a gradient",
                    parameter.name
                );
                continue;
            }
            let gradient =
                gradient.unwrap_or_else(|| panic!("{case}: {} got no gradient", parameter.name));
            let size = norm(gradient);
            assert!(
                size.is_finite(),
                "{case}: {} has gradient norm {size}",
                parameter.name
            );
            assert!(
                size > 0.0 || is_key_bias(&parameter.name),
                "{case}: {} has a zero gradient",
                parameter.name
            );
            trained += 1;
        }
        assert!(trained > 0, "{case}: nothing trains");
    }
}

/// A backward pass taken with candle's `loss.backward()` alone lacks the encoder layers'
/// gradients, which their fused ops hand to the model: adding it is refused, not silently
/// short of most parameters; the same loss through `TrainableModel::backward` is then taken,
/// with nothing of the refused pass in it.
#[test]
fn a_backward_pass_without_the_layers_gradients_is_refused() {
    let folder = fixture("training/bert-single-label");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("steps.json")).unwrap()).unwrap();
    let task = task_of(&reference["settings"]);
    let model = load_case(&folder.join("initial"), &task, &reference["settings"]);
    let micro = &reference["batches"][0][0];
    let mut gradients = Gradients::new(model.parameters());
    let loss = model.loss(&batch(&task, micro), &Dropout::off()).unwrap();
    let error = gradients
        .add(model.parameters(), &loss.backward().unwrap())
        .unwrap_err();
    assert!(
        error.to_string().contains("TrainableModel::backward"),
        "{error}"
    );
    let loss = model.loss(&batch(&task, micro), &Dropout::off()).unwrap();
    gradients
        .add(model.parameters(), &model.backward(&loss).unwrap())
        .unwrap();
    let fresh = load_case(&folder.join("initial"), &task, &reference["settings"]);
    let mut expected = Gradients::new(fresh.parameters());
    let loss = fresh.loss(&batch(&task, micro), &Dropout::off()).unwrap();
    expected
        .add(fresh.parameters(), &fresh.backward(&loss).unwrap())
        .unwrap();
    for index in 0..model.parameters().trainable().count() {
        assert_eq!(
            gradients.get(index),
            expected.get(index),
            "parameter {index}"
        );
    }
}

fn first_input(case: &str) -> ModelInput {
    let folder = fixture(&format!("training/{case}"));
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("steps.json")).unwrap()).unwrap();
    let micro = &reference["batches"][0][0];
    model_input(micro.get("anchor").unwrap_or(micro))
}

fn reload(folder: &Path, model: &TrainableModel) -> TrainableModel {
    TrainableModel::from_pretrained(
        folder.to_str().unwrap(),
        model.task().clone(),
        TrainedPart::Everything,
        &LoadOptions::default(),
        0,
    )
    .unwrap()
}

/// `save_pretrained` then our loaders: the same parameters bit for bit, and our inference
/// model (packed GEMM, fused attention) gives the training graph's logits within 1e-5.
#[test]
fn a_saved_classifier_reloads_identically_and_runs_in_the_inference_model() {
    let model = train_case("bert-single-label");
    let saved = tempfile::tempdir().unwrap();
    model.save_pretrained(saved.path(), DType::F32).unwrap();
    let reloaded = reload(saved.path(), &model);
    assert!(reloaded.initialised().is_empty());
    for ((name, ours), (_, theirs)) in model
        .parameters()
        .tensors()
        .iter()
        .zip(reloaded.parameters().tensors())
    {
        assert_eq!(
            common::max_abs_diff(ours, &theirs),
            0.0,
            "{name} changed in the round trip"
        );
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(saved.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["2"], "LABEL_2");
    assert_eq!(config["problem_type"], "single_label_classification");

    let input = first_input("bert-single-label");
    let trained = model.forward(&input, &Dropout::off()).unwrap();
    let options = LoadOptions::default();
    let inference = ferroformers::BertForSequenceClassification::from_pretrained(
        saved.path().to_str().unwrap(),
        &options,
    )
    .unwrap();
    let logits = inference.forward(&input).unwrap();
    common::assert_close(
        &logits,
        &trained,
        1e-5,
        "inference logits of the saved model",
    );
}

/// Saved in bf16: half the bytes, and each weight is its f32 value rounded to bf16.
#[test]
fn a_bf16_save_rounds_each_weight_and_halves_the_file() {
    let model = train_case("roberta-single-label");
    let (f32_folder, bf16_folder) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    model
        .save_pretrained(f32_folder.path(), DType::F32)
        .unwrap();
    model
        .save_pretrained(bf16_folder.path(), DType::BF16)
        .unwrap();
    // The tensors' bytes, past the 8-byte length and the JSON header.
    let data_bytes = |dir: &Path| {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (bytes.len() - 8 - header) as f64
    };
    let ratio = data_bytes(bf16_folder.path()) / data_bytes(f32_folder.path());
    assert_eq!(ratio, 0.5, "bf16 weights are {ratio} of the f32 ones");
    let reloaded = reload(bf16_folder.path(), &model);
    for ((name, ours), (_, theirs)) in model
        .parameters()
        .tensors()
        .iter()
        .zip(reloaded.parameters().tensors())
    {
        let rounded = ours
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(
            common::max_abs_diff(&rounded, &theirs),
            0.0,
            "{name}: not its bf16 rounding"
        );
    }
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(bf16_folder.path().join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert_eq!(
        config["architectures"][0],
        "RobertaForSequenceClassification"
    );
}

/// An embedding model saves in sentence-transformers' layout, which our embedding loader
/// reads back (pooling mode and normalisation), and the bare model gives the same vectors.
#[test]
fn a_saved_embedding_model_has_the_sentence_transformers_layout() {
    let model = train_case("embeddings-mnrl");
    let saved = tempfile::tempdir().unwrap();
    model.save_pretrained(saved.path(), DType::F32).unwrap();
    let modules: Value =
        serde_json::from_str(&std::fs::read_to_string(saved.path().join("modules.json")).unwrap())
            .unwrap();
    let types: Vec<&str> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "sentence_transformers.models.Transformer",
            "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Normalize"
        ]
    );
    let pooling: Value = serde_json::from_str(
        &std::fs::read_to_string(saved.path().join("1_Pooling/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pooling["pooling_mode_mean_tokens"], true);
    assert_eq!(pooling["word_embedding_dimension"], 16);

    let input = first_input("embeddings-mnrl");
    let trained = model.forward(&input, &Dropout::off()).unwrap();
    let options = LoadOptions::default();
    let bare =
        ferroformers::BertModel::from_pretrained(saved.path().to_str().unwrap(), &options).unwrap();
    let hidden = bare.forward(&input).unwrap().last_hidden_state;
    let pooled = Pooling::Mean
        .pool(&hidden, input.attention_mask.as_ref().unwrap())
        .unwrap();
    common::assert_close(&pooled, &trained, 1e-5, "embeddings of the saved model");
}
