//! The Trainer's optimisation: gradients summed over micro-batches, clipped by their global
//! norm, then AdamW with decoupled weight decay under a linear warmup-and-decay schedule.
//!
//! The arithmetic follows PyTorch's in f32, step by step, so that ten steps land within 1e-5
//! of `torch.optim.AdamW` (`tests/training.rs`):
//! - AdamW: `torch/optim/adamw.py` and `adam.py` v2.9 (`_single_tensor_adam`, the CPU path);
//! - clipping: `torch.nn.utils.clip_grad_norm_`;
//! - the schedule: transformers' `get_linear_schedule_with_warmup`.

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::training::ops::values;
use crate::training::parameters::Parameters;

/// The gradient of each trainable parameter, summed over the micro-batches of a step.
#[derive(Debug, Default)]
pub struct Gradients {
    /// Per trainable parameter, in order; `None` until a backward pass reached it.
    sums: Vec<Option<Vec<f32>>>,
}

impl Gradients {
    /// No gradient yet, for `parameters`' trainable ones.
    pub fn new(parameters: &Parameters) -> Self {
        Self {
            sums: vec![None; parameters.trainable().count()],
        }
    }

    /// Add the gradients of one backward pass.
    ///
    /// The store must come from [`TrainableModel::backward`](super::TrainableModel::backward),
    /// which adds the encoder layers' gradients; one from `loss.backward()` lacks them and is
    /// refused (the gradients it left aside are dropped, so that the next pass starts clean).
    pub fn add(&mut self, parameters: &Parameters, store: &GradStore) -> Result<()> {
        if parameters.layer_gradients().discard() {
            return Err(Error::InvalidInput(
                "the encoder layers' gradients were left out of this backward pass: take it \
                 with TrainableModel::backward(&loss), not loss.backward()"
                    .into(),
            ));
        }
        for (sum, parameter) in self.sums.iter_mut().zip(parameters.trainable()) {
            let Some(gradient) = store.get(parameter.var.as_tensor()) else {
                continue;
            };
            let values = values(gradient)?;
            match sum {
                Some(sum) => sum
                    .par_chunks_mut(CHUNK)
                    .zip(values.par_chunks(CHUNK))
                    .for_each(|(s, v)| s.iter_mut().zip(v).for_each(|(s, v)| *s += v)),
                None => *sum = Some(values.to_vec()),
            }
        }
        Ok(())
    }

    /// The gradient of the `index`-th trainable parameter, if it got one.
    pub fn get(&self, index: usize) -> Option<&[f32]> {
        self.sums.get(index).and_then(|s| s.as_deref())
    }

    /// Scale so that the global 2-norm is at most `max_norm`, as `clip_grad_norm_` does
    /// (which multiplies by `min(1, max_norm / (norm + 1e-6))` always). Returns the norm
    /// before clipping; a NaN or infinite norm is an error, the Trainer's signal of a
    /// diverged run.
    pub fn clip(&mut self, max_norm: f32) -> Result<f32> {
        let squares: f32 = self
            .sums
            .iter()
            .flatten()
            .map(|g| {
                // Chunk by chunk, in parallel: partial sums also keep the rounding of tens
                // of millions of squares small, as PyTorch's cascaded sum does.
                let norm = g
                    .par_chunks(CHUNK)
                    .map(|chunk| chunk.iter().map(|v| v * v).sum::<f32>())
                    .collect::<Vec<f32>>()
                    .iter()
                    .sum::<f32>()
                    .sqrt();
                norm * norm
            })
            .sum();
        let norm = squares.sqrt();
        if !norm.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the gradient norm is {norm}: training diverged; lower the learning rate"
            )));
        }
        let factor = (max_norm / (norm + 1e-6)).min(1.0);
        // Multiplying by 1 changes nothing, so only a clip that bites touches the values.
        if factor < 1.0 {
            for sum in self.sums.iter_mut().flatten() {
                sum.par_chunks_mut(CHUNK)
                    .for_each(|c| c.iter_mut().for_each(|v| *v *= factor));
            }
        }
        Ok(norm)
    }
}

/// AdamW's settings; [`Default`] is transformers' `TrainingArguments` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    /// The peak learning rate (default 5e-5).
    pub learning_rate: f64,
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay of matrices (default 0; biases and norms never decay).
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            learning_rate: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimiser's state: the step count and both moments of every trainable parameter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdamW {
    settings: AdamWSettings,
    steps: u64,
    /// Per trainable parameter: (first moment, second moment), empty until its first step.
    moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl AdamW {
    /// A fresh optimiser for `parameters`' trainable ones.
    pub fn new(parameters: &Parameters, settings: AdamWSettings) -> Self {
        Self {
            settings,
            steps: 0,
            moments: vec![(Vec::new(), Vec::new()); parameters.trainable().count()],
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Its settings.
    pub fn settings(&self) -> &AdamWSettings {
        &self.settings
    }

    /// One step at `learning_rate` with `gradients`; a parameter without a gradient is left
    /// alone, moments included, as PyTorch skips a parameter whose `grad` is `None`.
    pub fn step(
        &mut self,
        parameters: &Parameters,
        gradients: &Gradients,
        learning_rate: f64,
    ) -> Result<()> {
        if self.moments.len() != parameters.trainable().count() {
            return Err(Error::InvalidInput(
                "the optimiser state is for another set of parameters".into(),
            ));
        }
        self.steps += 1;
        let s = self.settings;
        let step = self.steps as f64;
        let bias_correction1 = 1.0 - s.beta1.powf(step);
        let bias_correction2_sqrt = (1.0 - s.beta2.powf(step)).sqrt();
        let step_size = (learning_rate / bias_correction1) as f32;
        for (index, parameter) in parameters.trainable().enumerate() {
            let Some(gradient) = gradients.get(index) else {
                continue;
            };
            let decay = match parameter.decays() {
                true => (1.0 - learning_rate * s.weight_decay) as f32,
                false => 1.0,
            };
            let tensor = parameter.var.as_tensor();
            let (m, v) = &mut self.moments[index];
            if m.is_empty() {
                *m = vec![0.0; gradient.len()];
                *v = vec![0.0; gradient.len()];
            }
            let update = Update {
                decay,
                beta1_weight: (1.0 - s.beta1) as f32,
                beta2: s.beta2 as f32,
                beta2_weight: (1.0 - s.beta2) as f32,
                correction2: bias_correction2_sqrt as f32,
                eps: s.eps as f32,
                step_size,
            };
            let mut updated = values(tensor)?.to_vec();
            updated
                .par_chunks_mut(CHUNK)
                .zip(gradient.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| update.apply(p, g, m, v));
            parameter
                .var
                .set(&Tensor::from_vec(updated, tensor.shape(), tensor.device())?)?;
        }
        Ok(())
    }
}

impl AdamW {
    /// Its moments as `m.<name>` and `v.<name>` tensors and its step count as metadata.
    pub(crate) fn save(&self, parameters: &Parameters, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for (parameter, (m, v)) in parameters.trainable().zip(&self.moments) {
            let shape = parameter.var.shape();
            if m.is_empty() {
                continue;
            }
            tensors.push((
                format!("m.{}", parameter.name),
                Tensor::from_slice(m, shape, &Device::Cpu)?,
            ));
            tensors.push((
                format!("v.{}", parameter.name),
                Tensor::from_slice(v, shape, &Device::Cpu)?,
            ));
        }
        let metadata =
            std::collections::HashMap::from([("steps".to_string(), self.steps().to_string())]);
        safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(|e| {
            Error::io(
                path,
                std::io::Error::other(format!("cannot write the optimiser state: {e}")),
            )
        })
    }

    /// The state [`AdamW::save`] wrote, for `parameters`' trainable ones.
    pub(crate) fn load(
        parameters: &Parameters,
        settings: AdamWSettings,
        path: &Path,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let invalid = |what: String| {
            Error::InvalidWeights(format!(
                "{}: {what}; the checkpoint is damaged",
                path.display()
            ))
        };
        let (_, metadata) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let steps: u64 = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("steps"))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("no step count".into()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let moments = parameters
            .trainable()
            .map(|parameter| {
                let read = |kind: &str| -> Result<Vec<f32>> {
                    match tensors.get(&format!("{kind}.{}", parameter.name)) {
                        Some(t) if t.shape() == parameter.var.shape() => {
                            Ok(t.flatten_all()?.to_vec1()?)
                        }
                        Some(_) => Err(invalid(format!(
                            "{kind}.{} has another shape",
                            parameter.name
                        ))),
                        None => Ok(Vec::new()),
                    }
                };
                Ok((read("m")?, read("v")?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            settings,
            steps,
            moments,
        })
    }
}

/// Values per rayon task in the optimiser's loops.
const CHUNK: usize = 1 << 15;

/// One AdamW step's constants, in f32 as PyTorch applies them.
struct Update {
    decay: f32,
    beta1_weight: f32,
    beta2: f32,
    beta2_weight: f32,
    correction2: f32,
    eps: f32,
    step_size: f32,
}

impl Update {
    /// `_single_tensor_adam`'s arithmetic on one chunk: decay, `lerp` of the first moment,
    /// `mul_`/`addcmul_` of the second, then `addcdiv_`.
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *p *= self.decay;
            *m += self.beta1_weight * (g - *m);
            *v = *v * self.beta2 + self.beta2_weight * (g * g);
            let denominator = v.sqrt() / self.correction2 + self.eps;
            *p += -self.step_size * (*m / denominator);
        }
    }
}

/// transformers' `get_linear_schedule_with_warmup`: the rate rises linearly from 0 over the
/// warmup steps, then falls linearly to 0 at the last step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    /// The peak rate.
    pub peak: f64,
    /// Steps of warmup.
    pub warmup_steps: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
}

impl LinearSchedule {
    /// The rate of optimiser step `step` (0 for the first).
    pub fn rate(&self, step: u64) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let left = self.total_steps.saturating_sub(step) as f64;
            (left / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
        };
        self.peak * factor
    }
}
