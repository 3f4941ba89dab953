//! BERT and its heads against PyTorch: tiny random checkpoints made by scripts/make_fixtures.py
//! with transformers 4.57.6, and the outputs PyTorch gave for a padded batch.

mod common;

use common::*;
use ferroformers::{
    BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel, DType, EncodeOptions, Error, FromPretrained, HubOptions,
    LoadOptions, ModelInput, Tensor, Tokenizer, WeightType,
};

/// f32 against PyTorch f32: the brief's bar.
const F32_TOLERANCE: f32 = 1e-4;

fn options(weight_type: WeightType) -> LoadOptions {
    LoadOptions::default()
        .with_hub(HubOptions::default().with_offline(true))
        .with_weight_type(weight_type)
}

fn load<M: FromPretrained>(name: &str, weight_type: WeightType) -> M {
    M::from_pretrained(&fixture_model(name), &options(weight_type)).expect("fixture model loads")
}

fn texts(name: &str) -> Vec<serde_json::Value> {
    let path = fixture(&format!("{name}/inputs.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Tokenize the fixture inputs with our tokenizer, padded as a batch.
fn encode_fixture_inputs(tokenizer: &Tokenizer, name: &str) -> ModelInput {
    let items = texts(name);
    let inputs: Vec<ferroformers::TextInput> = items
        .iter()
        .map(|item| match item {
            serde_json::Value::String(text) => text.as_str().into(),
            serde_json::Value::Array(pair) => {
                (pair[0].as_str().unwrap(), pair[1].as_str().unwrap()).into()
            }
            other => panic!("unexpected fixture input {other}"),
        })
        .collect();
    tokenizer
        .encode_batch(inputs, &EncodeOptions::default())
        .unwrap()
        .to_input(&ferroformers::Device::Cpu)
        .unwrap()
}

fn assert_same_ids(actual: &Tensor, expected: &Tensor, what: &str) {
    let actual = actual
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let expected = expected
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    assert_eq!(
        actual, expected,
        "{what} differ from the Python tokenizer's"
    );
}

#[test]
fn tokenizer_json_matches_python_ids_masks_and_segments() {
    let reference = reference("bert/base");
    let tokenizer =
        Tokenizer::from_pretrained(&fixture_model("bert/base"), &HubOptions::default()).unwrap();
    let input = encode_fixture_inputs(&tokenizer, "bert/base");
    assert_same_ids(&input.input_ids, &reference["input_ids"], "input_ids");
    assert_same_ids(
        input.attention_mask.as_ref().unwrap(),
        &reference["attention_mask"],
        "attention_mask",
    );
    assert_same_ids(
        input.token_type_ids.as_ref().unwrap(),
        &reference["token_type_ids"],
        "token_type_ids",
    );
}

#[test]
fn wordpiece_from_vocab_txt_matches_python_ids() {
    // This folder has no tokenizer.json: the tokenizer is built from vocab.txt and
    // tokenizer_config.json (do_lower_case), the way transformers' BertConverter builds it.
    let folder = fixture("bert/base-pytorch-bin");
    assert!(!folder.join("tokenizer.json").exists());
    let reference = reference("bert/base-pytorch-bin");
    let tokenizer = Tokenizer::from_pretrained(
        &fixture_model("bert/base-pytorch-bin"),
        &HubOptions::default(),
    )
    .unwrap();
    let input = encode_fixture_inputs(&tokenizer, "bert/base-pytorch-bin");
    assert_same_ids(&input.input_ids, &reference["input_ids"], "input_ids");
    assert_same_ids(
        input.token_type_ids.as_ref().unwrap(),
        &reference["token_type_ids"],
        "token_type_ids",
    );
}

#[test]
fn base_model_matches_pytorch() {
    // The checkpoint carries the `embeddings.position_ids` buffer of older checkpoints, which
    // the loader must ignore.
    let weights = candle_core::safetensors::load(
        fixture("bert/base/model.safetensors"),
        &ferroformers::Device::Cpu,
    )
    .unwrap();
    assert!(weights.contains_key("embeddings.position_ids"));
    let reference = reference("bert/base");
    let model: BertModel = load("bert/base", WeightType::F32);
    let output = model.forward(&reference_input(&reference)).unwrap();
    assert_close(
        &output.last_hidden_state,
        &reference["last_hidden_state"],
        F32_TOLERANCE,
        "last_hidden_state",
    );
    let pooled = output
        .pooler_output
        .expect("the base checkpoint has a pooler");
    assert_close(
        &pooled,
        &reference["pooler_output"],
        F32_TOLERANCE,
        "pooler_output",
    );
}

#[test]
fn pytorch_bin_checkpoint_matches_pytorch() {
    // Same weights as `base`, stored only as pytorch_model.bin.
    let reference = reference("bert/base-pytorch-bin");
    let model: BertModel = load("bert/base-pytorch-bin", WeightType::F32);
    let output = model.forward(&reference_input(&reference)).unwrap();
    assert_close(
        &output.last_hidden_state,
        &reference["last_hidden_state"],
        F32_TOLERANCE,
        "last_hidden_state",
    );
}

#[test]
fn masked_lm_with_tied_decoder_matches_pytorch() {
    // The checkpoint has no cls.predictions.decoder.weight: it is tied to the word embeddings.
    let reference = reference("bert/masked-lm");
    let model: BertForMaskedLM = load("bert/masked-lm", WeightType::F32);
    let logits = model.forward(&reference_input(&reference)).unwrap();
    assert_close(
        &logits,
        &reference["logits"],
        F32_TOLERANCE,
        "masked-lm logits",
    );
}

#[test]
fn sequence_classification_matches_pytorch_and_names_labels() {
    let reference = reference("bert/sequence-classification");
    let model: BertForSequenceClassification =
        load("bert/sequence-classification", WeightType::F32);
    let logits = model.forward(&reference_input(&reference)).unwrap();
    assert_close(
        &logits,
        &reference["logits"],
        F32_TOLERANCE,
        "sequence-classification logits",
    );
    let labels = &model.config().id2label;
    let names: Vec<String> = (0..3).map(|i| labels.name(i)).collect();
    assert_eq!(names, ["negative", "neutral", "positive"]);
}

#[test]
fn token_classification_from_shards_matches_pytorch() {
    // Saved with a 20KB shard limit: five shards and model.safetensors.index.json.
    let reference = reference("bert/token-classification");
    let model: BertForTokenClassification = load("bert/token-classification", WeightType::F32);
    let logits = model.forward(&reference_input(&reference)).unwrap();
    assert_close(
        &logits,
        &reference["logits"],
        F32_TOLERANCE,
        "token-classification logits",
    );
    assert_eq!(model.config().id2label.name(3), "B-LOC");
}

#[test]
fn question_answering_matches_pytorch() {
    let reference = reference("bert/question-answering");
    let model: BertForQuestionAnswering = load("bert/question-answering", WeightType::F32);
    let output = model.forward(&reference_input(&reference)).unwrap();
    assert_close(
        &output.start_logits,
        &reference["start_logits"],
        F32_TOLERANCE,
        "start_logits",
    );
    assert_close(
        &output.end_logits,
        &reference["end_logits"],
        F32_TOLERANCE,
        "end_logits",
    );
}

/// Each input run alone, unpadded, must give what its row of the padded batch gives.
#[test]
fn padded_batch_equals_each_input_alone() {
    // Padding changes matrix shapes and so summation order: allow float noise, nothing more.
    const TOLERANCE: f32 = 1e-5;
    let reference = reference("bert/base");
    let model: BertModel = load("bert/base", WeightType::F32);
    let batch = model.forward(&reference_input(&reference)).unwrap();
    let token_model: BertForTokenClassification =
        load("bert/token-classification", WeightType::F32);
    let token_batch = token_model.forward(&reference_input(&reference)).unwrap();
    let lengths = lengths(&reference);
    assert!(
        lengths.iter().any(|&l| l < lengths[0]),
        "the batch must contain padding"
    );
    for (i, &len) in lengths.iter().enumerate() {
        let single = single_input(&reference, i, len);
        let alone = model.forward(&single).unwrap();
        assert_close(
            &alone.last_hidden_state,
            &row(&batch.last_hidden_state, i, Some(len)),
            TOLERANCE,
            &format!("input {i}: hidden states"),
        );
        assert_close(
            alone.pooler_output.as_ref().unwrap(),
            &row(batch.pooler_output.as_ref().unwrap(), i, None),
            TOLERANCE,
            &format!("input {i}: pooler"),
        );
        let token_alone = token_model.forward(&single).unwrap();
        assert_close(
            &token_alone,
            &row(&token_batch, i, Some(len)),
            TOLERANCE,
            &format!("input {i}: token logits"),
        );
    }
}

/// Without the attention mask, padding would leak into the real tokens: proves the mask is used.
#[test]
fn attention_mask_changes_padded_rows() {
    let reference = reference("bert/base");
    let model: BertModel = load("bert/base", WeightType::F32);
    let mut input = reference_input(&reference);
    let masked = model.forward(&input).unwrap().last_hidden_state;
    input.attention_mask = None;
    let unmasked = model.forward(&input).unwrap().last_hidden_state;
    let shortest = lengths(&reference)
        .into_iter()
        .enumerate()
        .min_by_key(|&(_, l)| l)
        .unwrap();
    let diff = max_abs_diff(
        &row(&masked, shortest.0, Some(shortest.1)),
        &row(&unmasked, shortest.0, Some(shortest.1)),
    );
    assert!(
        diff > 1e-3,
        "ignoring the mask should change padded inputs, changed by {diff}"
    );
}

/// Half precision: weights in f16/bf16. On the CPU the activations are f32 (the packed GEMM
/// reads half-precision weights into f32 registers), so the outputs are f32; candle's ops in
/// half precision (the reference kernels, GPUs) keep the dtype. Compared with the f32
/// PyTorch reference; bf16 keeps 8 bits of mantissa, f16 11.
#[test]
fn half_precision_stays_close_to_f32() {
    let reference = reference("bert/base");
    for (weight_type, tolerance) in [(WeightType::F16, 1e-2), (WeightType::Bf16, 6e-2)] {
        let model: BertModel = load("bert/base", weight_type);
        let output = model.forward(&reference_input(&reference)).unwrap();
        assert_eq!(output.last_hidden_state.dtype(), DType::F32);
        let diff = max_abs_diff(&output.last_hidden_state, &reference["last_hidden_state"]);
        assert!(
            diff <= tolerance,
            "{weight_type}: max abs difference {diff} exceeds {tolerance}"
        );
        let mlm: BertForMaskedLM = load("bert/masked-lm", weight_type);
        let mlm_reference = common::reference("bert/masked-lm");
        let logits = mlm.forward(&reference_input(&mlm_reference)).unwrap();
        let diff = max_abs_diff(&logits, &mlm_reference["logits"]);
        assert!(
            diff <= 2.0 * tolerance,
            "{weight_type} logits: max abs difference {diff} exceeds {}",
            2.0 * tolerance
        );
    }
}

#[test]
fn base_model_loads_from_a_head_checkpoint_under_the_bert_prefix() {
    // masked-lm keys are `bert.embeddings...`; it was saved without a pooler.
    let model: BertModel = load("bert/masked-lm", WeightType::F32);
    let reference = reference("bert/masked-lm");
    let output = model.forward(&reference_input(&reference)).unwrap();
    assert!(output.pooler_output.is_none());
    assert_eq!(
        output.last_hidden_state.dims(),
        &[7, reference["input_ids"].dim(1).unwrap(), 32]
    );
}

#[test]
fn head_without_its_weights_is_an_error_naming_the_tensor() {
    let error = BertForQuestionAnswering::from_pretrained(
        &fixture_model("bert/base"),
        &options(WeightType::F32),
    )
    .expect_err("the base checkpoint has no qa_outputs");
    assert!(error.to_string().contains("qa_outputs"), "{error}");
}

#[test]
fn input_longer_than_the_position_table_is_an_error() {
    let model: BertModel = load("bert/base", WeightType::F32);
    let ids = Tensor::ones((1, 65), DType::U32, &ferroformers::Device::Cpu).unwrap();
    match model.forward(&ModelInput::from_ids(ids)) {
        Err(Error::InputTooLong {
            length: 65,
            max: 64,
        }) => {}
        other => panic!("expected InputTooLong, got {other:?}"),
    }
}

#[test]
fn truncation_cuts_to_the_limit_with_special_tokens() {
    let tokenizer =
        Tokenizer::from_pretrained(&fixture_model("bert/base"), &HubOptions::default()).unwrap();
    let long = "the quick brown fox ".repeat(40);
    let untruncated = tokenizer
        .encode(long.as_str(), &EncodeOptions::default())
        .unwrap();
    assert!(untruncated.len() > 64);
    let options = EncodeOptions {
        truncation: true,
        ..EncodeOptions::default()
    };
    // model_max_length (64) from tokenizer_config.json is the default limit.
    let truncated = tokenizer.encode(long.as_str(), &options).unwrap();
    assert_eq!(truncated.len(), 64);
    assert_eq!(truncated.get_ids()[..63], untruncated.get_ids()[..63]);
    assert_eq!(truncated.get_tokens()[63], "[SEP]");
}
