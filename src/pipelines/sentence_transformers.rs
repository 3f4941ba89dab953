//! The files of a sentence-transformers model: `modules.json` and the folders it lists,
//! `sentence_bert_config.json` and `config_sentence_transformers.json`, read into what
//! [`EmbeddingsPipeline`](super::EmbeddingsPipeline) applies around the transformer, or
//! [`SparseEmbeddingsPipeline`](super::SparseEmbeddingsPipeline) around a masked LM (a
//! `SparseEncoder`'s `MLMTransformer` and `SpladePooling`).
//! <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/SentenceTransformer.py>

use std::collections::BTreeMap;

use candle_core::{DType, Device, Module as _, Tensor};
use serde::Deserialize;
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::loading::hub::ModelSource;
use crate::loading::json::read_json;
use crate::loading::weights::WeightFiles;
use crate::models::pooling::{Pooling, SpladePooling};
use crate::pipelines::{encode_all, Truncation};
use crate::tokenizer::Tokenizer;

/// An entry of `modules.json`.
#[derive(Debug, Deserialize)]
struct ModuleEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`.
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    /// Whether prompt tokens count in the pooling (sentence-transformers' default: yes).
    #[serde(default = "default_true")]
    include_prompt: bool,
}

fn default_true() -> bool {
    true
}

/// `2_Dense/config.json`.
#[derive(Debug, Deserialize)]
struct DenseConfig {
    in_features: usize,
    out_features: usize,
    #[serde(default = "default_true")]
    bias: bool,
    activation_function: String,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// `config_sentence_transformers.json`.
#[derive(Debug, Default, Deserialize)]
struct ModelSettings {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    default_prompt_name: Option<String>,
}

/// The activation of a `Dense` module, by its torch class name.
#[derive(Debug, Clone, Copy)]
enum DenseActivation {
    Tanh,
    Identity,
    Relu,
    Sigmoid,
}

/// sentence-transformers' `Dense`: activation(linear(embedding)), after the pooling.
/// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/models/Dense.py#L61>
#[derive(Debug, Clone)]
struct Dense {
    linear: candle_nn::Linear,
    activation: DenseActivation,
}

impl Dense {
    /// Read `folder/config.json` and the weights beside it (`linear.weight`, `linear.bias`),
    /// in f32: the pooled embeddings are f32 whatever the model's dtype.
    fn load(source: &ModelSource, folder: &str, device: &Device) -> Result<Self> {
        let config_file = format!("{folder}/config.json");
        let config: DenseConfig = read_json(&source.require(&config_file)?)?;
        let activation = match config.activation_function.rsplit('.').next() {
            Some("Tanh") => DenseActivation::Tanh,
            Some("Identity") => DenseActivation::Identity,
            Some("ReLU") => DenseActivation::Relu,
            Some("Sigmoid") => DenseActivation::Sigmoid,
            _ => {
                return Err(Error::InvalidConfig(format!(
                    "{config_file} asks for the activation `{}`, which this library does not \
                     implement: Tanh, Identity, ReLU and Sigmoid are supported",
                    config.activation_function
                )))
            }
        };
        let weights = match source.get(&format!("{folder}/model.safetensors"))? {
            Some(path) => WeightFiles::Safetensors(vec![path]),
            None => WeightFiles::PyTorch(source.require(&format!("{folder}/pytorch_model.bin"))?),
        };
        let vb = weights.var_builder(DType::F32, device)?.pp("linear");
        let weight = vb.get((config.out_features, config.in_features), "weight")?;
        let bias = if config.bias {
            Some(vb.get(config.out_features, "bias")?)
        } else {
            None
        };
        Ok(Self {
            linear: candle_nn::Linear::new(weight, bias),
            activation,
        })
    }

    fn forward(&self, embeddings: &Tensor) -> Result<Tensor> {
        let projected = self.linear.forward(embeddings)?;
        Ok(match self.activation {
            DenseActivation::Tanh => projected.tanh()?,
            DenseActivation::Identity => projected,
            DenseActivation::Relu => projected.relu()?,
            DenseActivation::Sigmoid => candle_nn::ops::sigmoid(&projected)?,
        })
    }
}

/// Which prompt to put before each text, as `SentenceTransformer.encode`'s `prompt_name` and
/// `prompt` arguments choose it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Prompt {
    /// The model's `default_prompt_name`, if it has one; else no prompt.
    #[default]
    ModelDefault,
    /// One of the model's `prompts`, by name (`query`, `passage`, ...).
    Named(String),
    /// This text (an empty text means no prompt).
    Text(String),
}

/// What the sentence-transformers files say: pooling, the modules after it, maximum length,
/// prompts.
#[derive(Debug, Clone)]
pub(crate) struct SentenceTransformersSetup {
    /// Whether the model has a `modules.json`: without one it is no sentence-transformers model,
    /// and each pipeline says what it does instead.
    pub modules: bool,
    /// `None` when `modules.json` has no `Pooling` module.
    pub pooling: Option<Pooling>,
    /// Whether the transformer is a masked LM whose logits are the token embeddings (a
    /// `SparseEncoder`'s `MLMTransformer`).
    pub masked_lm: bool,
    /// The `SpladePooling` module after an `MLMTransformer`.
    pub splade: Option<SpladePooling>,
    /// Whether prompt tokens count in the pooling.
    pub include_prompt: bool,
    /// The `Dense` modules after the pooling, in order.
    dense: Vec<Dense>,
    /// Whether a `Normalize` module ends the model.
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
    prompts: BTreeMap<String, String>,
    default_prompt_name: Option<String>,
}

impl SentenceTransformersSetup {
    /// What a model without sentence-transformers files gets: no modules around the
    /// transformer, no prompts.
    pub fn plain() -> Self {
        Self {
            modules: false,
            pooling: None,
            masked_lm: false,
            splade: None,
            include_prompt: true,
            dense: Vec::new(),
            normalize: false,
            max_seq_length: None,
            prompts: BTreeMap::new(),
            default_prompt_name: None,
        }
    }

    /// Read the files of `source`; Dense weights are placed on `device`. A module other than
    /// Transformer, Pooling, Dense and Normalize (or a `SparseEncoder`'s MLMTransformer and
    /// SpladePooling) is an error naming it: skipping it would give other vectors than
    /// sentence-transformers does.
    pub fn read(source: &ModelSource, device: &Device) -> Result<Self> {
        let mut setup = Self::plain();
        let Some(modules_path) = source.get("modules.json")? else {
            return Ok(setup);
        };
        setup.modules = true;
        let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
        for module in &modules {
            if setup.normalize {
                // Normalize ends every released model; a module after it would need the
                // modules kept as a list in order, which nothing has asked for yet.
                return Err(Error::InvalidConfig(format!(
                    "modules.json lists `{}` after Normalize: only a final Normalize is \
                     supported",
                    module.kind
                )));
            }
            let folder = module.path.trim_end_matches('/');
            // The class name after the package path: `sentence_transformers.models.Dense`.
            let pooled = setup.pooling.is_some() || setup.splade.is_some();
            match module.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" | "MLMTransformer" | "Pooling" | "SpladePooling" if pooled => {
                    return Err(Error::InvalidConfig(format!(
                        "modules.json lists `{}` after the pooling: only Dense and Normalize \
                         modules may follow a Pooling, nothing a SpladePooling",
                        module.kind
                    )))
                }
                "Transformer" => {}
                // sentence-transformers' MLMTransformer: the masked LM's logits are the token
                // embeddings, which only SpladePooling pools.
                // <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/sparse_encoder/models/MLMTransformer.py#L196>
                "MLMTransformer" => setup.masked_lm = true,
                "SpladePooling" if setup.masked_lm => {
                    let file = format!("{folder}/config.json");
                    setup.splade = Some(read_json(&source.require(&file)?)?);
                }
                "Pooling" if !setup.masked_lm => {
                    let file = format!("{folder}/config.json");
                    let config: PoolingConfig = read_json(&source.require(&file)?)?;
                    setup.pooling = Some(Self::pooling(&config, &file)?);
                    setup.include_prompt = config.include_prompt;
                }
                "Dense" if setup.pooling.is_some() => {
                    setup.dense.push(Dense::load(source, folder, device)?)
                }
                "Normalize" if setup.splade.is_none() => setup.normalize = true,
                _ => {
                    return Err(Error::InvalidConfig(format!(
                        "modules.json lists the module `{}` (folder `{}`), which this library \
                         does not support there: it implements Transformer, Pooling, then Dense \
                         modules and a final Normalize, and MLMTransformer then SpladePooling",
                        module.kind, module.path
                    )))
                }
            }
        }
        setup.max_seq_length = match source.get("sentence_bert_config.json")? {
            Some(path) => read_json::<SentenceBertConfig>(&path)?.max_seq_length,
            None => None,
        };
        if let Some(path) = source.get("config_sentence_transformers.json")? {
            let settings: ModelSettings = read_json(&path)?;
            setup.prompts = settings.prompts;
            setup.default_prompt_name = settings.default_prompt_name;
        }
        Ok(setup)
    }

    fn pooling(config: &PoolingConfig, file: &str) -> Result<Pooling> {
        let modes = [
            (
                "mean_tokens",
                config.pooling_mode_mean_tokens,
                Some(Pooling::Mean),
            ),
            (
                "cls_token",
                config.pooling_mode_cls_token,
                Some(Pooling::Cls),
            ),
            (
                "max_tokens",
                config.pooling_mode_max_tokens,
                Some(Pooling::Max),
            ),
            (
                "mean_sqrt_len_tokens",
                config.pooling_mode_mean_sqrt_len_tokens,
                None,
            ),
            (
                "weightedmean_tokens",
                config.pooling_mode_weightedmean_tokens,
                None,
            ),
            (
                "lasttoken",
                config.pooling_mode_lasttoken,
                Some(Pooling::LastToken),
            ),
        ];
        let chosen: Vec<_> = modes.iter().filter(|(_, on, _)| *on).collect();
        match chosen[..] {
            [(_, _, Some(pooling))] => Ok(*pooling),
            _ => {
                let names: Vec<String> = chosen
                    .iter()
                    .map(|(name, _, _)| format!("pooling_mode_{name}"))
                    .collect();
                Err(Error::InvalidConfig(format!(
                    "{file} asks for the pooling [{}], which this library does not implement: \
                     exactly one of mean, cls, max or lasttoken is supported",
                    names.join(", ")
                )))
            }
        }
    }

    /// Apply the `Dense` modules, in order, to (batch, dim) pooled embeddings.
    pub fn apply_dense(&self, pooled: Tensor) -> Result<Tensor> {
        self.dense
            .iter()
            .try_fold(pooled, |embeddings, dense| dense.forward(&embeddings))
    }

    /// Tokenize each of `texts` after `prompt`, truncated as sentence-transformers does: at
    /// the call's `max_length`, else the model's `max_seq_length`, else the tokenizer's
    /// `model_max_length` (not at all when none is known).
    pub fn encode_prompted(
        &self,
        tokenizer: &Tokenizer,
        texts: &[&str],
        prompt: &str,
        truncation: &Truncation,
    ) -> Result<Vec<Encoding>> {
        let prompted: Vec<String> = texts.iter().map(|text| format!("{prompt}{text}")).collect();
        let limit = truncation
            .max_length
            .or(self.max_seq_length)
            .or(tokenizer.model_max_length());
        let truncation = Truncation {
            enabled: truncation.enabled && limit.is_some(),
            max_length: limit,
        };
        encode_all(tokenizer, &prompted, &truncation.encode_options())
    }

    /// The prompt text `choice` stands for, as `SentenceTransformer.encode` resolves it;
    /// `None` for no prompt.
    /// <https://github.com/huggingface/sentence-transformers/blob/v5.1.2/sentence_transformers/SentenceTransformer.py#L1021>
    pub fn prompt<'a>(&'a self, choice: &'a Prompt) -> Result<Option<&'a str>> {
        let text = match choice {
            Prompt::Text(text) => Some(text.as_str()),
            Prompt::Named(name) => {
                Some(self.prompts.get(name).map(String::as_str).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "the model has no prompt named `{name}`; its prompts are [{}]",
                        self.prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?)
            }
            Prompt::ModelDefault => self
                .default_prompt_name
                .as_ref()
                .and_then(|name| self.prompts.get(name))
                .map(String::as_str),
        };
        Ok(text.filter(|t| !t.is_empty()))
    }
}

/// Whether the `modules.json` at `path` pools with SPLADE (a `SparseEncoder`'s), for
/// [`Task::detect`](super::Task::detect).
pub(crate) fn pools_with_splade(path: &std::path::Path) -> Result<bool> {
    let modules: Vec<ModuleEntry> = read_json(path)?;
    Ok(modules
        .iter()
        .any(|module| module.kind.rsplit('.').next() == Some("SpladePooling")))
}
