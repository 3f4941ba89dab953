//! Decoder speed, criterion, on a random-initialised GPT-2 small: the LM head's product for
//! one token in each weight format (throughput in bytes of weights, so criterion prints
//! GB/s) beside a STREAM-like triad measured in the same run (the bandwidth ceiling); greedy
//! decoding of 16 tokens after a 32-token prompt; and the prompt's forward pass (prefill).
//!
//!     cargo bench -p ferroformers-bench --bench decoder
//!
//! `ferroformers bench --generate` and scripts/bench_compare.py compare with PyTorch.

mod common;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferroformers::generation::{GenerationConfig, Generator, PromptBatch};
use ferroformers::kernels::gemm::{matmul, Epilogue, Isa, PackedWeights, WeightFormat};
use ferroformers::runtime::benchmark::{token_ids, Triad};
use ferroformers::{FromPretrained, Gpt2LMHeadModel, LoadOptions, WeightType};

const PROMPT: usize = 32;
const NEW: usize = 16;

fn bandwidth(c: &mut Criterion) {
    let mut group = c.benchmark_group("decoder/bandwidth");
    group.sample_size(20);
    let mut triad = Triad::new();
    group.throughput(Throughput::Bytes(triad.bytes() as u64));
    group.bench_function("triad", |bench| bench.iter(|| triad.pass()));
    // GPT-2's LM head for one token: 768 in, 50257 out.
    let (inner, outer) = (768, 50257);
    let weights: Vec<f32> = token_ids(inner * outer, 1000)
        .into_iter()
        .map(|v| v as f32 / 1000.0 - 0.5)
        .collect();
    let x = vec![0.25f32; inner];
    let mut out = vec![0f32; outer];
    for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
        let packed = PackedWeights::pack(inner, outer, format, |o, i| weights[o * inner + i]);
        group.throughput(Throughput::Bytes(packed.bytes() as u64));
        group.bench_function(format!("lm-head-gemv-{format:?}").to_lowercase(), |bench| {
            bench.iter(|| {
                let isa = Isa::detect(false);
                matmul(&x, 1, &packed, None, Epilogue::None, None, &mut out, isa)
            })
        });
    }
    group.finish();
}

fn decoding(c: &mut Criterion) {
    let work = tempfile::tempdir().unwrap();
    common::write_gpt2_small(work.path());
    let folder = work.path().to_string_lossy().into_owned();
    let prompt = token_ids(PROMPT, 50257);
    let prompts = PromptBatch::left_padded(vec![prompt.clone()], 0).unwrap();
    let mut config = GenerationConfig::default()
        .greedy()
        .with_max_new_tokens(NEW);
    config.eos_token_id.clear();
    let ids = Tensor::new(&prompt[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    for (label, options) in [
        ("f32", LoadOptions::default()),
        (
            "bf16",
            LoadOptions::default().with_weight_type(WeightType::Bf16),
        ),
        (
            "int8",
            LoadOptions::default().with_weight_type(WeightType::Int8),
        ),
    ] {
        let model = Gpt2LMHeadModel::from_pretrained(&folder, &options).unwrap();
        let mut group = c.benchmark_group(format!("decoder/gpt2-small-{label}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(NEW as u64));
        let generator = Generator::without_tokenizer(&model);
        group.bench_function("greedy-16-tokens-after-32", |b| {
            b.iter(|| generator.generate_ids(&prompts, &config).unwrap())
        });
        group.throughput(Throughput::Elements(PROMPT as u64));
        group.bench_function("prefill-32", |b| {
            b.iter(|| model.forward_last(&ids, None, None).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bandwidth, decoding);
criterion_main!(benches);
