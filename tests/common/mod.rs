//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use ferroformers::{DType, Device, ModelInput, Tensor};

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A fixture folder (`family/head`) as the `model` argument of `from_pretrained`.
pub fn fixture_model(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

/// `reference.safetensors` of a fixture (`family/head`): the inputs and PyTorch's outputs.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = fixture(&format!("{name}/reference.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).expect("fixture reference loads")
}

/// The padded batch the reference outputs were computed on.
pub fn reference_input(reference: &HashMap<String, Tensor>) -> ModelInput {
    let get = |key: &str| {
        reference[key]
            .to_dtype(DType::U32)
            .expect("ids convert to u32")
    };
    ModelInput {
        input_ids: get("input_ids"),
        attention_mask: Some(get("attention_mask")),
        token_type_ids: Some(get("token_type_ids")),
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Assert `actual` is within `tolerance` (absolute, element-wise) of `expected`.
pub fn assert_close(actual: &Tensor, expected: &Tensor, tolerance: f32, what: &str) {
    let diff = max_abs_diff(actual, expected);
    assert!(
        diff <= tolerance,
        "{what}: max abs difference {diff:e} exceeds {tolerance:e}"
    );
}

/// Number of real (unpadded) tokens of each row.
pub fn lengths(reference: &HashMap<String, Tensor>) -> Vec<usize> {
    reference["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap()
        .iter()
        .map(|row| row.iter().filter(|&&m| m == 1).count())
        .collect()
}

/// Row `row` of a (batch, seq, ...) or (batch, ...) tensor, keeping `len` positions when given.
pub fn row(t: &Tensor, row: usize, len: Option<usize>) -> Tensor {
    let r = t.narrow(0, row, 1).unwrap();
    match len {
        Some(len) => r.narrow(1, 0, len).unwrap(),
        None => r,
    }
}

/// One input of the reference batch alone, without padding.
pub fn single_input(reference: &HashMap<String, Tensor>, i: usize, len: usize) -> ModelInput {
    let input = reference_input(reference);
    let take = |t: &Tensor| row(t, i, Some(len));
    ModelInput {
        input_ids: take(&input.input_ids),
        attention_mask: None,
        token_type_ids: input.token_type_ids.as_ref().map(take),
    }
}
