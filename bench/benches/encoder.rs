//! Encoder speed, criterion: ferroformers in f32, bf16 and int8 beside candle-transformers'
//! own BERT in f32, on random-initialised models of real shapes, measured in the same run;
//! and a batch of mixed lengths, padded as one batch or grouped by length.
//!
//!     cargo bench -p ferroformers-bench --bench encoder
//!
//! scripts/bench_compare.py compares with PyTorch and ONNX Runtime.

mod common;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroformers::{BertModel, FromPretrained, LoadOptions, ModelInput, WeightType};

fn input(batch: usize, lengths: &[usize]) -> ModelInput {
    let seq = lengths.iter().copied().max().unwrap_or(0);
    let ids = ferroformers::runtime::benchmark::token_ids(batch * seq, 30522);
    let mask: Vec<u32> = (0..batch * seq)
        .map(|i| u32::from(i % seq < lengths[i / seq]))
        .collect();
    ModelInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), &Device::Cpu).unwrap(),
        attention_mask: Some(Tensor::from_vec(mask, (batch, seq), &Device::Cpu).unwrap()),
        token_type_ids: Some(Tensor::zeros((batch, seq), DType::U32, &Device::Cpu).unwrap()),
    }
}

fn shapes(c: &mut Criterion) {
    let work = tempfile::tempdir().unwrap();
    for (name, hidden, layers, heads, intermediate, batch) in [
        ("minilm-32x128", 384, 6, 12, 1536, 32),
        ("bert-base-1x128", 768, 12, 12, 3072, 1),
    ] {
        let folder = work.path().join(name);
        common::write_bert(&folder, hidden, layers, heads, intermediate);
        let folder = folder.to_string_lossy().into_owned();
        let input = input(batch, &vec![128; batch]);
        let mut group = c.benchmark_group(format!("encoder/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(batch as u64));
        for (label, options) in [
            ("ferroformers-f32", LoadOptions::default()),
            (
                "ferroformers-bf16",
                LoadOptions::default().with_weight_type(WeightType::Bf16),
            ),
            (
                "ferroformers-int8",
                LoadOptions::default().with_weight_type(WeightType::Int8),
            ),
        ] {
            let model = BertModel::from_pretrained(&folder, &options).unwrap();
            group.bench_function(label, |b| b.iter(|| model.forward(&input).unwrap()));
        }
        // candle-transformers' BERT on the same file and input.
        let config: candle_transformers::models::bert::Config = serde_json::from_str(
            &std::fs::read_to_string(format!("{folder}/config.json")).unwrap(),
        )
        .unwrap();
        // SAFETY: the file was just written by this bench and is not modified while mapped.
        let vb = unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(
                &[format!("{folder}/model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let theirs = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
        let types = input.token_type_ids.clone().unwrap();
        group.bench_function("candle-transformers-f32", |b| {
            b.iter(|| {
                theirs
                    .forward(&input.input_ids, &types, input.attention_mask.as_ref())
                    .unwrap()
            })
        });
        group.finish();
    }
}

/// 32 inputs of 8 to 128 tokens: one batch padded to 128, or four batches of 8 grouped by
/// length (what the pipelines do), each padded to its own longest.
fn mixed_lengths(c: &mut Criterion) {
    let work = tempfile::tempdir().unwrap();
    common::write_bert(work.path(), 384, 6, 12, 1536);
    let model = BertModel::from_pretrained(&work.path().to_string_lossy(), &LoadOptions::default())
        .unwrap();
    let mut lengths: Vec<usize> = (0..32).map(|i| 8 + (i * 37) % 121).collect();
    let padded = input(32, &lengths);
    lengths.sort_unstable();
    let grouped: Vec<ModelInput> = lengths.chunks(8).map(|l| input(8, l)).collect();
    let mut group = c.benchmark_group("encoder/minilm-32-mixed-lengths");
    group.sample_size(10);
    group.throughput(Throughput::Elements(32));
    group.bench_function(
        BenchmarkId::new("ferroformers-f32", "one-padded-batch"),
        |b| b.iter(|| model.forward(&padded).unwrap()),
    );
    group.bench_function(
        BenchmarkId::new("ferroformers-f32", "grouped-by-length"),
        |b| {
            b.iter(|| {
                for batch in &grouped {
                    model.forward(batch).unwrap();
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, shapes, mixed_lengths);
criterion_main!(benches);
