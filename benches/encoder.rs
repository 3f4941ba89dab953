//! Encoder throughput on all-MiniLM-L6-v2: f32 against bf16, measured in the same run.
//!
//!     python3 scripts/fetch_minilm.py
//!     HF_HUB_OFFLINE=1 cargo bench --bench encoder
//!
//! Later issues add ONNX Runtime and PyTorch baselines; here bf16 is reported as a ratio of f32.

use std::time::{Duration, Instant};

use ferroformers::{BertModel, DType, EncodeOptions, FromPretrained, LoadOptions, Pretrained};

const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn sentences(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            format!("Sentence number {i} talks about rust, tensors and fast inference on a laptop.")
        })
        .collect()
}

/// Median time of one forward pass over `batch`, after a warm-up.
fn time_forward(
    model: &BertModel,
    input: &ferroformers::ModelInput,
    runs: usize,
) -> ferroformers::Result<Duration> {
    model.forward(input)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        model.forward(input)?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[runs / 2])
}

fn main() -> ferroformers::Result<()> {
    let base = LoadOptions::default();
    let tokenizer = Pretrained::open(MODEL_ID, &base.hub)?.tokenizer()?;
    println!("{MODEL_ID}, median of 10 runs per row");
    println!(
        "{:>6} {:>6} {:>12} {:>12} {:>10}",
        "batch", "dtype", "ms/batch", "sentences/s", "vs f32"
    );
    for batch_size in [1, 8, 32] {
        let texts = sentences(batch_size);
        let input = tokenizer
            .encode_batch(texts.iter(), &EncodeOptions::default())?
            .to_input(&base.device)?;
        let mut f32_time = None;
        for dtype in [DType::F32, DType::BF16] {
            let model = BertModel::from_pretrained(MODEL_ID, &base.clone().with_dtype(dtype))?;
            let time = time_forward(&model, &input, 10)?;
            let baseline = *f32_time.get_or_insert(time);
            println!(
                "{:>6} {:>6} {:>12.2} {:>12.1} {:>9.2}x",
                batch_size,
                format!("{dtype:?}"),
                time.as_secs_f64() * 1e3,
                batch_size as f64 / time.as_secs_f64(),
                baseline.as_secs_f64() / time.as_secs_f64()
            );
        }
    }
    Ok(())
}
