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
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
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
    pub fn add(&mut self, parameters: &Parameters, store: &GradStore) -> Result<()> {
        for (sum, parameter) in self.sums.iter_mut().zip(parameters.trainable()) {
            let Some(gradient) = store.get(parameter.var.as_tensor()) else {
                continue;
            };
            let values = gradient.flatten_all()?.to_vec1::<f32>()?;
            match sum {
                Some(sum) => sum.iter_mut().zip(&values).for_each(|(s, v)| *s += v),
                None => *sum = Some(values),
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
                let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
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
        for sum in self.sums.iter_mut().flatten() {
            sum.iter_mut().for_each(|v| *v *= factor);
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
            let mut values = tensor.flatten_all()?.to_vec1::<f32>()?;
            let (m, v) = &mut self.moments[index];
            if m.is_empty() {
                *m = vec![0.0; values.len()];
                *v = vec![0.0; values.len()];
            }
            let (beta1_weight, beta2, beta2_weight) = (
                (1.0 - s.beta1) as f32,
                s.beta2 as f32,
                (1.0 - s.beta2) as f32,
            );
            let (correction2, eps) = (bias_correction2_sqrt as f32, s.eps as f32);
            for (((p, &g), m), v) in values
                .iter_mut()
                .zip(gradient)
                .zip(m.iter_mut())
                .zip(v.iter_mut())
            {
                *p *= decay;
                *m += beta1_weight * (g - *m);
                *v = *v * beta2 + beta2_weight * (g * g);
                let denominator = v.sqrt() / correction2 + eps;
                *p += -step_size * (*m / denominator);
            }
            parameter
                .var
                .set(&Tensor::from_vec(values, tensor.shape(), tensor.device())?)?;
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
