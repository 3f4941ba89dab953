//! The weights a training run updates: candle [`Var`]s under transformers' parameter names,
//! in the order of the PyTorch module's `named_parameters()`, so that what is saved is what
//! transformers loads and what is clipped or decayed is what the Trainer clips or decays.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr_normal::standard_normal;

use crate::error::{Error, Result};
use crate::models::weights::ModelWeights;
use crate::training::layer::LayerGradients;

/// One named weight.
#[derive(Debug, Clone)]
pub struct Parameter {
    /// transformers' name, e.g. `bert.encoder.layer.0.attention.self.query.weight`.
    pub name: String,
    /// The values, which the optimiser replaces after each step.
    pub var: Var,
    /// False for a frozen weight (the encoder when only the head trains): it keeps its values
    /// and is saved as it was loaded.
    pub trainable: bool,
}

impl Parameter {
    /// Whether AdamW decays it. The Trainer decays every weight except biases and
    /// LayerNorm weights (`Trainer.get_decay_parameter_names`); in the BERT family those are
    /// exactly the tensors of rank 1, and every matrix (linear and embedding weights) decays.
    pub fn decays(&self) -> bool {
        self.var.rank() >= 2
    }
}

/// How a weight that the checkpoint lacks starts, as transformers' `_init_weights` starts it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    /// A linear weight: normal with mean 0 and the config's `initializer_range` as std.
    Normal(f64),
    /// A bias: zeros.
    Zeros,
}

/// The parameters of a model, read from a checkpoint, with the head a checkpoint lacks
/// initialised from a seed.
#[derive(Debug, Clone)]
pub struct Parameters {
    entries: Vec<Parameter>,
    index: HashMap<String, usize>,
    layer_gradients: LayerGradients,
}

/// Reads the parameters as a model declares them: each under its name, the base model's
/// either under its prefix or bare (a checkpoint of the base model alone), the missing head
/// weights initialised.
pub(crate) struct ParameterReader<'a> {
    weights: &'a ModelWeights,
    /// The base model's prefix in task checkpoints (`bert`, `roberta`, `distilbert`), when
    /// the checkpoint stores it bare instead.
    bare_base: Option<&'a str>,
    rng: StdRng,
    /// Parameters under this prefix are frozen: read, kept and saved, but outside the graph's
    /// gradients.
    frozen: Option<String>,
    entries: Vec<Parameter>,
    initialised: Vec<String>,
    layer_gradients: LayerGradients,
}

impl<'a> ParameterReader<'a> {
    /// `base_prefix` names the base model in task checkpoints; when the checkpoint holds
    /// `probe` bare (a base-model checkpoint such as sentence-transformers'), the base
    /// model's parameters are read from there.
    pub fn new(weights: &'a ModelWeights, base_prefix: &'a str, probe: &str, seed: u64) -> Self {
        let bare = !base_prefix.is_empty()
            && !weights.contains_tensor(&format!("{base_prefix}.{probe}"))
            && weights.contains_tensor(probe);
        Self {
            weights,
            bare_base: bare.then_some(base_prefix),
            rng: StdRng::seed_from_u64(seed),
            frozen: None,
            entries: Vec::new(),
            initialised: Vec::new(),
            layer_gradients: LayerGradients::default(),
        }
    }

    /// Where the fused encoder layers of these parameters leave their gradients.
    pub fn layer_gradients(&self) -> LayerGradients {
        self.layer_gradients.clone()
    }

    /// Freeze every parameter read from now on whose name starts with `prefix.`.
    pub fn freeze_under(&mut self, prefix: &str) {
        self.frozen = Some(format!("{prefix}."));
    }

    /// A parameter of the base model: it must be in the checkpoint.
    pub fn read(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let stored = self.stored_name(name);
        if !self.weights.contains_tensor(&stored) {
            return Err(Error::InvalidWeights(format!(
                "the checkpoint has no `{stored}`: is it a checkpoint of this architecture?"
            )));
        }
        let tensor = self.weights.get(shape, &stored)?.to_dtype(DType::F32)?;
        self.push(name, tensor)
    }

    /// A parameter of a head: read when the checkpoint has it, else initialised.
    ///
    /// A stored head of another shape (a checkpoint fine-tuned for other labels) is replaced
    /// by a fresh one, as transformers' `ignore_mismatched_sizes=True` does, with a warning.
    pub fn read_or_init(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let stored = self.stored_name(name);
        if self.weights.contains_tensor(&stored) {
            match self.weights.get(shape, &stored) {
                Ok(tensor) => return self.push(name, tensor.to_dtype(DType::F32)?),
                Err(error) => tracing::warn!(
                    parameter = name,
                    %error,
                    "the checkpoint's weight does not fit this head; initialising a new one"
                ),
            }
        }
        let count = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; count],
            Init::Normal(std) => (0..count)
                .map(|_| (standard_normal(&mut self.rng) * std) as f32)
                .collect(),
        };
        self.initialised.push(name.to_string());
        self.push(name, Tensor::from_vec(values, shape, &Device::Cpu)?)
    }

    /// A parameter that the task does not use but the checkpoint holds (BERT's pooler under
    /// an embedding model): kept, frozen, so that the saved checkpoint is whole.
    pub fn carry(&mut self, name: &str, shape: &[usize]) -> Result<()> {
        if self.weights.contains_tensor(&self.stored_name(name)) {
            let frozen = self.frozen.replace(String::new());
            self.read(name, shape)?;
            self.frozen = frozen;
        }
        Ok(())
    }

    fn stored_name(&self, name: &str) -> String {
        match self.bare_base {
            Some(prefix) => name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
                .unwrap_or(name)
                .to_string(),
            None => name.to_string(),
        }
    }

    /// Record a parameter; the graph gets its variable, or for a frozen one a detached view
    /// of it, which no gradient reaches.
    fn push(&mut self, name: &str, tensor: Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(&tensor)?;
        let trainable = !self
            .frozen
            .as_ref()
            .is_some_and(|p| name.starts_with(p.as_str()));
        let tensor = match trainable {
            true => var.as_tensor().clone(),
            false => var.as_tensor().detach(),
        };
        self.entries.push(Parameter {
            name: name.to_string(),
            var,
            trainable,
        });
        Ok(tensor)
    }

    /// The parameters read, and the names of those initialised (transformers' "newly
    /// initialized" warning).
    pub fn finish(self) -> (Parameters, Vec<String>) {
        let index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        (
            Parameters {
                entries: self.entries,
                index,
                layer_gradients: self.layer_gradients,
            },
            self.initialised,
        )
    }
}

impl Parameters {
    /// Every parameter, in `named_parameters()` order.
    pub fn iter(&self) -> impl Iterator<Item = &Parameter> {
        self.entries.iter()
    }

    /// The parameters that train.
    pub fn trainable(&self) -> impl Iterator<Item = &Parameter> {
        self.entries.iter().filter(|p| p.trainable)
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Parameter> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Number of values that train.
    pub fn trainable_count(&self) -> usize {
        self.trainable().map(|p| p.var.elem_count()).sum()
    }

    /// Where the fused encoder layers leave their parameters' gradients in a backward pass.
    pub(crate) fn layer_gradients(&self) -> &LayerGradients {
        &self.layer_gradients
    }

    /// The values by name, as `state_dict()` gives them.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.entries
            .iter()
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect()
    }
}

/// A standard normal sample by Box–Muller, from `rand` alone (the crate has no `rand_distr`).
mod rand_distr_normal {
    use rand::Rng;

    pub fn standard_normal(rng: &mut impl Rng) -> f64 {
        // `1 - u` keeps the logarithm's argument in (0, 1].
        let u: f64 = 1.0 - rng.random::<f64>();
        let v: f64 = rng.random::<f64>();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}
