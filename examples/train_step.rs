//! Time one training step (forward, backward, AdamW) of a BERT-family classifier on random
//! token ids: the figure `scripts/bench_training.py` sets beside PyTorch's.
//!
//!     cargo build --release --example train_step
//!     taskset -c 0,1 target/release/examples/train_step MODEL_FOLDER BATCH SEQ STEPS
//!
//! Prints one JSON line: the median milliseconds per step (the first step, which allocates
//! the optimiser's moments, is not counted) and the peak resident memory.

use std::time::Instant;

use candle_core::{Device, Tensor};
use ferroformers::training::{
    AdamW, AdamWSettings, Dropout, Gradients, Problem, TrainableModel, TrainedPart, TrainingBatch,
    TrainingTask,
};
use ferroformers::{HubOptions, ModelInput, Pretrained};

fn main() -> ferroformers::Result<()> {
    ferroformers::runtime::allocator::keep_freed_memory();
    ferroformers::runtime::threads::run_candle_ops_inline();
    let args: Vec<String> = std::env::args().collect();
    let [_, model, batch, seq, steps] = args.as_slice() else {
        eprintln!("usage: train_step MODEL_FOLDER BATCH SEQ STEPS");
        std::process::exit(2);
    };
    let parse = |s: &str| s.parse::<usize>().expect("a number");
    let (batch, seq, steps) = (parse(batch), parse(seq), parse(steps).max(2));
    let pretrained = Pretrained::open(model, &HubOptions::default())?;
    let task = TrainingTask::SequenceClassification {
        labels: vec!["LABEL_0".into(), "LABEL_1".into()],
        problem: Problem::SingleLabel,
    };
    let model = TrainableModel::load(&pretrained, task, TrainedPart::Everything, 0)?;
    let vocab = model
        .parameters()
        .iter()
        .next()
        .map(|p| p.var.dim(0))
        .transpose()?
        .unwrap_or(1000) as u32;
    // Deterministic ids past the first 1000 (BERT's specials and unused slots).
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| 1000 + (i as u32 * 7919) % (vocab - 1000))
        .collect();
    let input = ModelInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), &Device::Cpu)?,
        attention_mask: Some(Tensor::ones(
            (batch, seq),
            candle_core::DType::U32,
            &Device::Cpu,
        )?),
        token_type_ids: None,
    };
    let targets: Vec<u32> = (0..batch as u32).map(|i| i % 2).collect();
    let batch_data = TrainingBatch::Texts {
        input,
        targets: Tensor::from_vec(targets, batch, &Device::Cpu)?,
    };
    let mut optimizer = AdamW::new(model.parameters(), AdamWSettings::default());
    let mut times = Vec::new();
    for step in 0..steps {
        let started = Instant::now();
        let dropout = Dropout::seeded(rand::SeedableRng::seed_from_u64(step as u64));
        let loss = model.loss(&batch_data, &dropout)?;
        let mut gradients = Gradients::new(model.parameters());
        gradients.add(model.parameters(), &model.backward(&loss)?)?;
        gradients.clip(1.0)?;
        optimizer.step(model.parameters(), &gradients, 5e-5)?;
        if step > 0 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let peak_rss_mb =
        ferroformers::runtime::benchmark::resident_memory().map(|m| m.peak as f64 / 1e6);
    println!(
        "{}",
        serde_json::json!({"ms_per_step": median, "steps": times.len(), "peak_rss_mb": peak_rss_mb})
    );
    Ok(())
}
