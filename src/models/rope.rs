//! Rotary position embeddings as transformers computes them for the Llama family: the inverse
//! frequencies of `rope_type` `default`, `linear`, `dynamic`, `yarn` and `llama3`, read from
//! transformers 4's `rope_theta` + `rope_scaling` or transformers 5's `rope_parameters`.
//!
//! Reference: transformers v4.57.6, `src/transformers/modeling_rope_utils.py`
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/modeling_rope_utils.py>).
//! Frequencies are computed in f32, as torch computes them (`base ** (arange(0, dim, 2) / dim)`
//! on a float32 tensor), so that the angles and their cosines match PyTorch's to the last bits.

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::error::{Error, Result};

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5), as `config.json`
/// writes it. `rope_type` is also spelled `type` in older configs.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeScaling {
    /// `default`, `linear`, `dynamic`, `yarn` or `llama3`.
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// transformers 5 keeps the base here rather than in `rope_theta`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// The context stretch of `linear`, `dynamic`, `yarn` and `llama3`.
    #[serde(default)]
    pub factor: Option<f64>,
    /// The context length the model was trained with (`llama3`, `yarn`).
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// `llama3`: wavelengths above `original / low_freq_factor` are stretched by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// `llama3`: wavelengths below `original / high_freq_factor` are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// `yarn`: the cosines' and sines' scale, else from `factor` (and `mscale`s).
    #[serde(default)]
    pub attention_factor: Option<f64>,
    /// `yarn`: the rotations where the ramp between interpolation and extrapolation ends.
    #[serde(default)]
    pub beta_fast: Option<f64>,
    /// `yarn`: the rotations where the ramp starts.
    #[serde(default)]
    pub beta_slow: Option<f64>,
    /// `yarn`: DeepSeek's attention scale terms.
    #[serde(default)]
    pub mscale: Option<f64>,
    /// `yarn`: see `mscale`.
    #[serde(default)]
    pub mscale_all_dim: Option<f64>,
    /// `yarn`: round the ramp's ends to whole dimensions (true when absent).
    #[serde(default)]
    pub truncate: Option<bool>,
}

/// How the inverse frequencies are made, with the settings each kind reads.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// `1 / theta^(2i / dim)`, or a fixed table computed from it (linear, llama3, yarn).
    Fixed,
    /// Dynamic NTK: the base grows with the sequence once it passes `max_positions`.
    Dynamic { factor: f64, max_positions: usize },
}

/// A model's rotary embedding: its inverse frequencies and the scale of its cosines and sines.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    theta: f64,
    dim: usize,
    /// `dim / 2` values.
    inv_freq: Vec<f32>,
    attention_scaling: f32,
    kind: Kind,
}

/// `base ** (arange(0, dim, 2) / dim)` in f32, as torch computes it on a float32 tensor.
fn powers(base: f64, dim: usize) -> Vec<f32> {
    let base = base as f32;
    (0..dim)
        .step_by(2)
        .map(|i| base.powf(i as f32 / dim as f32))
        .collect()
}

fn default_inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    powers(theta, dim).into_iter().map(|p| 1.0 / p).collect()
}

fn required(value: Option<f64>, name: &str, rope_type: &str) -> Result<f64> {
    value.ok_or_else(|| {
        Error::InvalidConfig(format!(
            "rope_scaling of type `{rope_type}` needs `{name}`: add it to config.json"
        ))
    })
}

impl RotaryEmbedding {
    /// The embedding of heads of `dim` values with base `theta`, scaled as `scaling` says;
    /// `max_positions` is the config's `max_position_embeddings`.
    pub fn new(
        theta: f64,
        dim: usize,
        scaling: Option<&RopeScaling>,
        max_positions: usize,
    ) -> Result<Self> {
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(Error::InvalidConfig(format!(
                "the rotary embedding needs an even head_dim, not {dim}"
            )));
        }
        if !(theta.is_finite() && theta > 1.0) {
            return Err(Error::InvalidConfig(format!(
                "rope_theta must be a number above 1, not {theta}"
            )));
        }
        let rope_type = scaling
            .and_then(|s| s.rope_type.as_deref())
            .unwrap_or("default");
        let mut rope = Self {
            theta,
            dim,
            inv_freq: default_inv_freq(theta, dim),
            attention_scaling: 1.0,
            kind: Kind::Fixed,
        };
        let Some(s) = scaling else {
            return Ok(rope);
        };
        match rope_type {
            "default" => {}
            "linear" => {
                let factor = required(s.factor, "factor", rope_type)? as f32;
                rope.inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "dynamic" => {
                rope.kind = Kind::Dynamic {
                    factor: required(s.factor, "factor", rope_type)?,
                    max_positions,
                };
            }
            "llama3" => rope.inv_freq = llama3(&rope.inv_freq, s)?,
            "yarn" => {
                let (inv_freq, attention_scaling) = yarn(theta, dim, s, max_positions)?;
                rope.inv_freq = inv_freq;
                rope.attention_scaling = attention_scaling;
            }
            other => {
                return Err(Error::InvalidConfig(format!(
                    "rope_type `{other}` is not supported: use default, linear, dynamic, yarn \
                     or llama3"
                )))
            }
        }
        Ok(rope)
    }

    /// Each inverse frequency divided by its divisor: llama.cpp's form of llama3's scaling
    /// (frequency factors, as its converter stores them beside the base).
    pub fn with_frequency_divisors(mut self, divisors: &[f32]) -> Result<Self> {
        if divisors.len() != self.inv_freq.len() || self.kind != Kind::Fixed {
            return Err(Error::InvalidConfig(format!(
                "{} rotary frequency divisors were given for {} frequencies{}",
                divisors.len(),
                self.inv_freq.len(),
                if self.kind == Kind::Fixed {
                    ""
                } else {
                    " of a dynamic scaling"
                }
            )));
        }
        if let Some(bad) = divisors.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
            return Err(Error::InvalidConfig(format!(
                "a rotary frequency divisor is {bad}: each must be a positive number"
            )));
        }
        for (f, d) in self.inv_freq.iter_mut().zip(divisors) {
            *f /= d;
        }
        Ok(self)
    }

    /// The inverse frequencies for a forward whose largest position is `max_position`:
    /// dynamic NTK recomputes them past the trained length, as transformers'
    /// `dynamic_rope_update` does (within one generation positions only grow, so its cached
    /// maximum is the current one).
    pub fn inv_freq(&self, max_position: usize) -> Vec<f32> {
        match self.kind {
            Kind::Fixed => self.inv_freq.clone(),
            Kind::Dynamic {
                factor,
                max_positions,
            } => {
                let seq_len = max_position + 1;
                if seq_len <= max_positions {
                    return self.inv_freq.clone();
                }
                let dim = self.dim as f64;
                let base = self.theta
                    * (factor * seq_len as f64 / max_positions as f64 - (factor - 1.0))
                        .powf(dim / (dim - 2.0));
                default_inv_freq(base, self.dim)
            }
        }
    }

    /// The scale of the cosines and sines (YaRN's attention factor; 1 otherwise).
    pub fn attention_scaling(&self) -> f32 {
        self.attention_scaling
    }

    /// Cosines and sines, each (rows, 1, len, dim), of `positions` (`rows` rows of `len`):
    /// `cat(freqs, freqs)` with `freqs = position · inv_freq`, times the attention scaling.
    pub fn cos_sin(
        &self,
        positions: &[u32],
        rows: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let len = positions.len() / rows.max(1);
        let max_position = positions.iter().copied().max().unwrap_or(0) as usize;
        let inv_freq = self.inv_freq(max_position);
        let half = self.dim / 2;
        let mut cos = Vec::with_capacity(positions.len() * self.dim);
        let mut sin = Vec::with_capacity(positions.len() * self.dim);
        let mut angles = vec![0f32; half];
        for &position in positions {
            for (angle, &f) in angles.iter_mut().zip(&inv_freq) {
                *angle = f * position as f32;
            }
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() * self.attention_scaling));
                sin.extend(angles.iter().map(|a| a.sin() * self.attention_scaling));
            }
        }
        let shape = (rows, 1, len, self.dim);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }
}

/// `_compute_llama3_parameters`: long wavelengths stretched by `factor`, short ones kept, and a
/// smooth blend between.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/modeling_rope_utils.py#L461>
fn llama3(inv_freq: &[f32], s: &RopeScaling) -> Result<Vec<f32>> {
    let factor = required(s.factor, "factor", "llama3")? as f32;
    let low = required(s.low_freq_factor, "low_freq_factor", "llama3")? as f32;
    let high = required(s.high_freq_factor, "high_freq_factor", "llama3")? as f32;
    let old = s.original_max_position_embeddings.ok_or_else(|| {
        Error::InvalidConfig(
            "rope_scaling of type `llama3` needs `original_max_position_embeddings`".to_string(),
        )
    })? as f32;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Ok(inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let stretched = if wavelen > low_wavelen { f / factor } else { f };
            if wavelen < high_wavelen || wavelen > low_wavelen {
                stretched
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * stretched / factor + smooth * stretched
            }
        })
        .collect())
}

/// `_compute_yarn_parameters`: interpolated and extrapolated frequencies blended along a linear
/// ramp between the dimensions that turn `beta_fast` and `beta_slow` times over the trained
/// context, and the attention factor that scales cosines and sines.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/modeling_rope_utils.py#L246>
fn yarn(theta: f64, dim: usize, s: &RopeScaling, max_positions: usize) -> Result<(Vec<f32>, f32)> {
    let factor = required(s.factor, "factor", "yarn")?;
    let original = s.original_max_position_embeddings.unwrap_or(max_positions) as f64;
    let mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let attention_factor = match (s.attention_factor, s.mscale, s.mscale_all_dim) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
            mscale(factor, m) / mscale(factor, all)
        }
        _ => mscale(factor, 1.0),
    };
    let beta_fast = s.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0);
    let beta_slow = s.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0);
    let d = dim as f64;
    let correction = |rotations: f64| {
        d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
    if s.truncate.unwrap_or(true) {
        low = low.floor();
        high = high.ceil();
    }
    let (low, mut high) = (low.max(0.0) as f32, high.min(d - 1.0) as f32);
    if low == high {
        high += 0.001;
    }
    let pos_freqs = powers(theta, dim);
    let factor32 = factor as f32;
    let inv_freq = pos_freqs
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation = 1.0 - ramp;
            let interpolated = 1.0 / (factor32 * p);
            let extrapolated = 1.0 / p;
            interpolated * (1.0 - extrapolation) + extrapolated * extrapolation
        })
        .collect();
    Ok((inv_freq, attention_factor as f32))
}
