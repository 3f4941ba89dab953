//! Numerics on host f32 slices, for the postprocessing steps that follow a forward pass
//! (pipelines, logits processors). They compute in f32, as numpy and torch do there.

/// Softmax; -inf scores get probability 0, and a row of only -inf gets all zeros.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Log-softmax.
pub fn log_softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = scores.iter().map(|&s| (s - max).exp()).sum::<f32>().ln();
    scores.iter().map(|&s| s - max - log_sum).collect()
}

/// The first index of the largest value, as `torch.argmax` and `numpy.argmax` pick it.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
