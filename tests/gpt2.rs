//! GPT-2 against PyTorch on tiny random checkpoints made by scripts/make_fixtures.py with
//! transformers 4.57.6, plus the KV cache against full recomputation.
//!
//! The reference batch is left-padded (pad = `<|endoftext|>`), with the position ids that
//! transformers' `generate` computes from the mask. Outputs at padded positions mean nothing
//! and are not compared.

mod common;

use common::*;
use ferroformers::{
    DType, Device, EncodeOptions, Error, FromPretrained, Gpt2ForSequenceClassification,
    Gpt2LMHeadModel, Gpt2Model, HubOptions, KvCache, LoadOptions, ModelInput, PaddingSide, Tensor,
    Tokenizer,
};

/// f32 against PyTorch f32.
const F32_TOLERANCE: f32 = 1e-4;
/// The same model computed two ways (cached or not, padded or not): float noise only.
const SELF_TOLERANCE: f32 = 1e-5;

fn load<M: FromPretrained>(name: &str) -> M {
    let options = LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
    M::from_pretrained(&fixture_model(name), &options).expect("fixture model loads")
}

fn with_mask(ids: &Tensor, mask: &Tensor) -> ModelInput {
    ModelInput {
        input_ids: ids.clone(),
        attention_mask: Some(mask.clone()),
        token_type_ids: None,
    }
}

/// Compare a left-padded batch output with the reference at real positions only.
fn assert_close_left_padded(
    actual: &Tensor,
    expected: &Tensor,
    lengths: &[usize],
    tolerance: f32,
    what: &str,
) {
    for (i, &len) in lengths.iter().enumerate() {
        assert_close(
            &real_positions(actual, i, len),
            &real_positions(expected, i, len),
            tolerance,
            &format!("{what}, row {i}"),
        );
    }
}

#[test]
fn tokenizer_left_pads_like_python() {
    let reference = reference("gpt2/lm-head");
    let texts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixture("gpt2/lm-head/inputs.json")).unwrap(),
    )
    .unwrap();
    let tokenizer =
        Tokenizer::from_pretrained(&fixture_model("gpt2/lm-head"), &HubOptions::default()).unwrap();
    let options = EncodeOptions {
        padding_side: PaddingSide::Left,
        ..EncodeOptions::default()
    };
    let input = tokenizer
        .encode_batch(texts.iter(), &options)
        .unwrap()
        .to_input(&Device::Cpu)
        .unwrap();
    let (ids, mask) = ids_and_mask(&reference);
    assert_eq!(
        input.input_ids.to_vec2::<u32>().unwrap(),
        ids.to_vec2::<u32>().unwrap()
    );
    assert_eq!(
        input.attention_mask.unwrap().to_vec2::<u32>().unwrap(),
        mask.to_vec2::<u32>().unwrap()
    );
}

#[test]
fn base_model_matches_pytorch_on_a_left_padded_batch() {
    let reference = reference("gpt2/base");
    let model: Gpt2Model = load("gpt2/base");
    let (ids, mask) = ids_and_mask(&reference);
    let hidden = model.forward(&ids, Some(&mask), None).unwrap();
    assert_close_left_padded(
        &hidden,
        &reference["last_hidden_state"],
        &lengths(&reference),
        F32_TOLERANCE,
        "hidden",
    );
}

#[test]
fn lm_head_matches_pytorch_on_a_left_padded_batch() {
    let reference = reference("gpt2/lm-head");
    let model: Gpt2LMHeadModel = load("gpt2/lm-head");
    let (ids, mask) = ids_and_mask(&reference);
    let logits = model.forward(&ids, Some(&mask), None).unwrap();
    assert_close_left_padded(
        &logits,
        &reference["logits"],
        &lengths(&reference),
        F32_TOLERANCE,
        "logits",
    );
}

#[test]
fn original_checkpoint_layout_loads_the_same_model() {
    // No `transformer.` prefix, no lm_head (tied to wte), and `attn.bias` / `attn.masked_bias`
    // buffers in every layer, as in the original `gpt2` checkpoint.
    let weights = candle_core::safetensors::load(
        fixture("gpt2/lm-head-legacy/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(weights.contains_key("h.0.attn.bias") && weights.contains_key("wte.weight"));
    assert!(!weights
        .keys()
        .any(|k| k.starts_with("transformer.") || k.starts_with("lm_head")));

    let reference = reference("gpt2/lm-head-legacy");
    let model: Gpt2LMHeadModel = load("gpt2/lm-head-legacy");
    let (ids, mask) = ids_and_mask(&reference);
    let logits = model.forward(&ids, Some(&mask), None).unwrap();
    assert_close_left_padded(
        &logits,
        &reference["logits"],
        &lengths(&reference),
        F32_TOLERANCE,
        "legacy logits",
    );
}

#[test]
fn sequence_classification_scores_the_last_real_token_like_pytorch() {
    let reference = reference("gpt2/sequence-classification");
    let model: Gpt2ForSequenceClassification = load("gpt2/sequence-classification");
    let (ids, mask) = ids_and_mask(&reference);
    let logits = model.forward(&with_mask(&ids, &mask)).unwrap();
    assert_close(
        &logits,
        &reference["logits"],
        F32_TOLERANCE,
        "classification logits",
    );
    assert_eq!(model.config().id2label.name(1), "POSITIVE");
}

#[test]
fn left_padded_batch_equals_each_prompt_alone() {
    let reference = reference("gpt2/lm-head");
    let model: Gpt2LMHeadModel = load("gpt2/lm-head");
    let (ids, mask) = ids_and_mask(&reference);
    let batch = model.forward(&ids, Some(&mask), None).unwrap();
    let lengths = lengths(&reference);
    assert!(
        lengths.iter().any(|&l| l < ids.dim(1).unwrap()),
        "the batch must contain padding"
    );
    for (i, &len) in lengths.iter().enumerate() {
        let alone_ids = real_positions(&ids, i, len);
        let alone = model.forward(&alone_ids, None, None).unwrap();
        assert_close(
            &alone,
            &real_positions(&batch, i, len),
            SELF_TOLERANCE,
            &format!("prompt {i} alone"),
        );
    }
}

#[test]
fn cached_decoding_equals_full_recompute_for_32_steps() {
    let reference = reference("gpt2/lm-head");
    let model: Gpt2LMHeadModel = load("gpt2/lm-head");
    let (mut ids, mut mask) = ids_and_mask(&reference);
    let batch = ids.dim(0).unwrap();
    let mut cache = model.new_cache();
    let mut logits = model.forward(&ids, Some(&mask), Some(&mut cache)).unwrap();
    for step in 0..32 {
        let next = greedy(&logits); // (batch, 1)
        ids = Tensor::cat(&[&ids, &next], 1).unwrap();
        mask = Tensor::cat(
            &[
                &mask,
                &Tensor::ones((batch, 1), DType::U32, &Device::Cpu).unwrap(),
            ],
            1,
        )
        .unwrap();
        logits = model.forward(&next, Some(&mask), Some(&mut cache)).unwrap();
        assert_eq!(logits.dim(1).unwrap(), 1);
        let full = model.forward(&ids, Some(&mask), None).unwrap();
        let last = full.narrow(1, ids.dim(1).unwrap() - 1, 1).unwrap();
        assert_close(&logits, &last, SELF_TOLERANCE, &format!("step {step}"));
    }
    assert_eq!(cache.len(), ids.dim(1).unwrap());
}

#[test]
fn cache_grows_geometrically_and_resets_for_reuse() {
    let model: Gpt2LMHeadModel = load("gpt2/lm-head");
    let prompt = Tensor::new(&[[10u32, 20, 30, 40]], &Device::Cpu).unwrap();
    let mut cache = model.new_cache();
    let first = model.forward(&prompt, None, Some(&mut cache)).unwrap();
    assert_eq!(cache.capacity(), 64);
    let step = Tensor::new(&[[7u32]], &Device::Cpu).unwrap();
    let mut capacities = vec![cache.capacity()];
    for _ in 0..100 {
        model.forward(&step, None, Some(&mut cache)).unwrap();
        capacities.push(cache.capacity());
    }
    capacities.dedup();
    // 104 positions: one growth from 64 to 128, not one allocation per step.
    assert_eq!(capacities, [64, 128]);

    cache.reset();
    assert!(cache.is_empty());
    let again = model.forward(&prompt, None, Some(&mut cache)).unwrap();
    assert_close(&again, &first, 0.0, "same prompt after reset");
    assert_eq!(cache.capacity(), 128, "the buffers are kept");
}

#[test]
fn exceeding_n_positions_is_an_error_not_a_panic() {
    let model: Gpt2LMHeadModel = load("gpt2/lm-head");
    let n_positions = model.config().n_positions;
    let prompt = Tensor::full(11u32, (1, n_positions - 2), &Device::Cpu).unwrap();
    let mut cache: KvCache = model.new_cache();
    model.forward(&prompt, None, Some(&mut cache)).unwrap();
    let step = Tensor::new(&[[7u32]], &Device::Cpu).unwrap();
    model.forward(&step, None, Some(&mut cache)).unwrap();
    model.forward(&step, None, Some(&mut cache)).unwrap();
    match model.forward(&step, None, Some(&mut cache)) {
        Err(Error::InputTooLong { length, max }) => {
            assert_eq!((length, max), (n_positions + 1, n_positions))
        }
        other => panic!("expected InputTooLong, got {other:?}"),
    }
    let too_long = Tensor::full(11u32, (1, n_positions + 1), &Device::Cpu).unwrap();
    assert!(matches!(
        model.forward(&too_long, None, None),
        Err(Error::InputTooLong { .. })
    ));
}

#[test]
fn a_mask_that_does_not_cover_the_cache_is_an_error() {
    let model: Gpt2LMHeadModel = load("gpt2/lm-head");
    let mut cache = model.new_cache();
    let prompt = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    model.forward(&prompt, None, Some(&mut cache)).unwrap();
    let step = Tensor::new(&[[4u32]], &Device::Cpu).unwrap();
    let short_mask = Tensor::ones((1, 1), DType::U32, &Device::Cpu).unwrap();
    let error = model
        .forward(&step, Some(&short_mask), Some(&mut cache))
        .unwrap_err();
    assert!(error.to_string().contains("cached + new"), "{error}");
}

#[test]
fn a_mask_with_values_other_than_zero_and_one_is_an_error() {
    let model: Gpt2LMHeadModel = load("gpt2/lm-head");
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
    let error = model.forward(&ids, Some(&mask), None).unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error}");
    assert!(error.to_string().contains("only 0"), "{error}");
}

#[test]
fn sequence_classification_finds_the_last_real_token_with_right_padding_too() {
    let reference = reference("gpt2/sequence-classification");
    let model: Gpt2ForSequenceClassification = load("gpt2/sequence-classification");
    let (ids, mask) = ids_and_mask(&reference);
    let left = model.forward(&with_mask(&ids, &mask)).unwrap();
    // The same prompts, padded on the right with the pad token instead.
    let pad = model.config().pad_token_id.unwrap();
    let seq = ids.dim(1).unwrap();
    let (mut right_ids, mut right_mask) = (Vec::new(), Vec::new());
    let (rows, lengths) = (ids.to_vec2::<u32>().unwrap(), lengths(&reference));
    assert_same_len(&rows, &lengths, "one length per prompt");
    for (row, len) in rows.iter().zip(lengths) {
        right_ids.extend(
            row[seq - len..]
                .iter()
                .copied()
                .chain(std::iter::repeat_n(pad, seq - len)),
        );
        right_mask.extend(std::iter::repeat_n(1u32, len).chain(std::iter::repeat_n(0, seq - len)));
    }
    let shape = ids.dims2().unwrap();
    let right_ids = Tensor::from_vec(right_ids, shape, &Device::Cpu).unwrap();
    let right_mask = Tensor::from_vec(right_mask, shape, &Device::Cpu).unwrap();
    let right = model.forward(&with_mask(&right_ids, &right_mask)).unwrap();
    assert_close(&right, &left, SELF_TOLERANCE, "right-padded vs left-padded");
}
