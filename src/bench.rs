//! `ferroformers bench`: time an encoder's forward pass, for comparisons run by
//! scripts/bench_compare.py against PyTorch and ONNX Runtime on the same model files.

use std::time::Instant;

use ferroformers::{AutoModel, DType, LoadOptions, ModelInput, Tensor};
use serde::Serialize;

/// What one benchmark measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub batch: usize,
    pub seq: usize,
    pub dtype: String,
    pub runs: usize,
    pub median_ms: f64,
    pub sequences_per_second: f64,
}

/// Median time of `runs` forward passes over a (batch, seq) input of random ids, after two
/// warm-up passes.
pub fn encoder(
    model: &str,
    options: &LoadOptions,
    batch: usize,
    seq: usize,
    runs: usize,
) -> Result<Report, ferroformers::Error> {
    let pretrained = ferroformers::Pretrained::open(model, &options.hub)?;
        let encoder = pretrained.load::<AutoModel>(options)?;
    let vocab = match pretrained.config() {
        ferroformers::ModelConfig::Bert(c) | ferroformers::ModelConfig::Roberta(c) => c.vocab_size,
        ferroformers::ModelConfig::Distilbert(c) => c.vocab_size,
        ferroformers::ModelConfig::Gpt2(c) => c.vocab_size,
    };
    if batch == 0 || seq == 0 || runs == 0 {
        return Err(ferroformers::Error::InvalidInput(
            "batch, seq and runs must be at least 1".to_string(),
        ));
    }
    // Spread-out ids from 5 up, clear of the special and padding tokens at the start of the
    // vocabulary (a fixed sequence: every run and every tool sees the same input).
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| 5 + ((i as u64 * 2_654_435_761) % (vocab.max(6) as u64 - 5)) as u32)
        .collect();
    let input = ModelInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), &options.device)?,
        attention_mask: Some(Tensor::ones((batch, seq), DType::U32, &options.device)?),
        token_type_ids: None,
    };
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs + 2 {
        let start = Instant::now();
        let hidden = encoder.forward(&input)?.last_hidden_state;
        // Wait for the device: reading one value back ends the run.
        hidden
            .flatten_all()?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        if run >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let median_ms = times[runs / 2];
    Ok(Report {
        batch,
        seq,
        dtype: format!("{:?}", options.dtype).to_lowercase(),
        runs,
        median_ms,
        sequences_per_second: batch as f64 * 1e3 / median_ms,
    })
}
