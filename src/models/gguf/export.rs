//! A safetensors checkpoint written as a GGUF file, as llama.cpp's `convert_hf_to_gguf.py`
//! writes it (the converter in the llama-cpp-python 0.3.36 sdist on PyPI): the same metadata
//! keys, tensor names, layouts and types, so that llama.cpp, Ollama and this library's own
//! GGUF loading read it. `--outtype` is one of the converter's (f32, f16, bf16, q8_0), or
//! Q4_0 or Q4_1, which the converter leaves to `llama-quantize`: every matrix is quantized,
//! as `llama-quantize --pure` would. The quantized blocks are those of `--dtype q8_0`/`q4_0`
//! at load time, bit for bit gguf-py's (`kernels::quant::quantize_blocks`).
//!
//! This is the inverse of the reading in the module above: the hyper-parameters come from the
//! config as the converter takes them from `config.json`, each tensor goes where
//! [`tensor_names`] says it is read from, changed as [`StoredLayout::store`] changes it.

use std::collections::HashMap;
use std::path::Path;

use super::tensor_names;
use crate::error::{Error, Result};
use crate::kernels::quant::quantize_blocks;
use crate::loading::gguf::{write_gguf, GgmlType, GgufValue, PlannedTensor, StoredLayout};
use crate::loading::weights::WeightFiles;
use crate::models::config::ModelConfig;
use crate::models::gpt2::Gpt2Config;
use crate::models::llama::LlamaConfig;
use crate::models::pretrained::Pretrained;
use crate::models::rope::RopeScaling;

/// The types a file can be written in.
pub const GGUF_OUTTYPES: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufWritten {
    /// Tensors, each with its type.
    pub tensors: Vec<(String, GgmlType)>,
    /// The file's size in bytes.
    pub bytes: u64,
}

impl GgufWritten {
    /// What writing `tensors` to `path` made.
    pub(super) fn of(tensors: Vec<PlannedTensor>, path: &Path) -> Result<Self> {
        let bytes = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        Ok(Self {
            tensors: tensors.into_iter().map(|t| (t.name, t.ggml_type)).collect(),
            bytes,
        })
    }
}

/// Write the model of `pretrained` (a safetensors or PyTorch checkpoint with its tokenizer)
/// to `path` as a GGUF file whose matrices are `outtype` (one of [`GGUF_OUTTYPES`]); norms,
/// biases and position embeddings stay f32, as the converter keeps them. A float GGUF file is
/// rewritten instead (`requantize`).
pub fn save_gguf(pretrained: &Pretrained, outtype: GgmlType, path: &Path) -> Result<GgufWritten> {
    if let Some(file) = pretrained.gguf() {
        return super::requantize::requantize(file, outtype, path);
    }
    let file_type = file_type(outtype)?;
    let config = pretrained.config();
    let architecture = architecture(config)?;
    let names = tensor_names(config)?;
    let files = WeightFiles::resolve(pretrained.source())?;
    let weights = files.values()?;

    // Each tensor's table entry, and where its values come from; shapes from the files'
    // headers (PyTorch's order), the tensors read only when written.
    let mut plan = Vec::new();
    if let Some(divisors) = llama3_rope_frequency_divisors(config) {
        let planned = planned("rope_freqs.weight", &[divisors.len()], outtype);
        plan.push((planned, Source::Made(divisors)));
    }
    for (name, shape) in files.tensor_shapes()? {
        if skipped(config, &name) {
            continue;
        }
        let stored = names(&name).ok_or_else(|| {
            Error::InvalidWeights(format!(
                "the checkpoint's tensor `{name}` has no place in a GGUF file of a \
                 {architecture} model"
            ))
        })?;
        let stored_shape = match stored.layout {
            StoredLayout::Transposed => shape.iter().rev().copied().collect(),
            _ => shape.clone(),
        };
        let planned = planned(&stored.name, &stored_shape, outtype);
        plan.push((
            planned,
            Source::Checkpoint {
                name,
                shape,
                layout: stored.layout,
            },
        ));
    }

    let parameters: usize = plan
        .iter()
        .map(|(t, _)| t.dims.iter().product::<usize>())
        .sum();
    let mut metadata = vec![
        string("general.architecture", architecture),
        string("general.type", "model"),
        string("general.name", &model_name(pretrained)),
        string("general.size_label", &size_label(parameters)),
    ];
    let vocab_size = match config {
        ModelConfig::Gpt2(c) => {
            gpt2_hparams(c, &mut metadata);
            metadata.push(("general.file_type".into(), GgufValue::U32(file_type)));
            c.vocab_size
        }
        ModelConfig::Llama(c)
        | ModelConfig::Mistral(c)
        | ModelConfig::Qwen2(c)
        | ModelConfig::Qwen3(c) => {
            llama_hparams(architecture, c, &mut metadata);
            metadata.push(("general.file_type".into(), GgufValue::U32(file_type)));
            if architecture == "llama" {
                metadata.push(u32_entry("llama.vocab_size", c.vocab_size));
                metadata.push(u32_entry("llama.rope.dimension_count", c.head_dim()));
            }
            c.vocab_size
        }
        other => return Err(not_written(other)),
    };
    metadata.push(("general.quantization_version".into(), GgufValue::U32(2)));
    let tokenizer = pretrained.tokenizer()?;
    metadata.extend(tokenizer.gguf_metadata(pretrained.source(), vocab_size)?);

    let tensors: Vec<PlannedTensor> = plan.iter().map(|(t, _)| t.clone()).collect();
    let mut sources: HashMap<String, Source> = plan
        .into_iter()
        .map(|(t, source)| (t.name, source))
        .collect();
    write_gguf(path, &metadata, &tensors, |tensor| {
        let values = match sources.remove(&tensor.name) {
            Some(Source::Made(values)) => values,
            Some(Source::Checkpoint {
                name,
                shape,
                layout,
            }) => layout.store(weights.f32(&name)?, &shape, &name)?.0,
            None => {
                return Err(Error::InvalidWeights(format!(
                    "two checkpoint tensors are stored as `{}`",
                    tensor.name
                )))
            }
        };
        encode(tensor, &values)
    })?;
    GgufWritten::of(tensors, path)
}

/// Where a tensor's values come from.
enum Source {
    /// A checkpoint tensor of (PyTorch) `shape`, stored as `layout` says.
    Checkpoint {
        name: String,
        shape: Vec<usize>,
        layout: StoredLayout,
    },
    /// Values the converter computes (llama3's `rope_freqs`).
    Made(Vec<f32>),
}

/// `general.file_type` (llama.cpp's `llama_ftype`) of a file whose matrices are `outtype`.
pub(super) fn file_type(outtype: GgmlType) -> Result<u32> {
    Ok(match outtype {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        other => {
            return Err(Error::InvalidInput(format!(
                "GGUF files are written here in f32, f16, bf16, q8_0, q4_0 or q4_1, not \
                 {other:?}; quantize further with llama.cpp's llama-quantize"
            )))
        }
    })
}

/// llama.cpp's architecture of a model of `config`.
fn architecture(config: &ModelConfig) -> Result<&'static str> {
    Ok(match config {
        ModelConfig::Gpt2(_) => "gpt2",
        // The converter writes Mistral's checkpoints as the llama architecture.
        ModelConfig::Llama(_) | ModelConfig::Mistral(_) => "llama",
        ModelConfig::Qwen2(_) => "qwen2",
        ModelConfig::Qwen3(_) => "qwen3",
        other => return Err(not_written(other)),
    })
}

fn not_written(config: &ModelConfig) -> Error {
    Error::InvalidInput(format!(
        "{} models are not written as GGUF files here: Llama, Mistral, Qwen2, Qwen3 and GPT-2 \
         are",
        config.model_type()
    ))
}

/// Checkpoint tensors the converter leaves out: GPT-2's attention-mask buffers and its head,
/// which is the embeddings; a tied Llama head.
fn skipped(config: &ModelConfig, name: &str) -> bool {
    match config {
        ModelConfig::Gpt2(_) => {
            name == "lm_head.weight"
                || name.ends_with(".attn.bias")
                || name.ends_with(".attn.masked_bias")
        }
        ModelConfig::Llama(c)
        | ModelConfig::Mistral(c)
        | ModelConfig::Qwen2(c)
        | ModelConfig::Qwen3(c) => {
            (c.tie_word_embeddings && name == "lm_head.weight")
                || name.ends_with(".rotary_emb.inv_freq")
        }
        _ => false,
    }
}

/// A tensor of stored `shape` (PyTorch's order) named `name`, typed as the converter types it:
/// norms, vectors, biases and position embeddings f32; matrices `outtype`, or f16 when their
/// rows are not whole blocks of it (the converter's fallback).
pub(super) fn planned(name: &str, shape: &[usize], outtype: GgmlType) -> PlannedTensor {
    let dims: Vec<usize> = shape.iter().rev().copied().collect();
    let float = dims.len() <= 1
        || name.ends_with("_norm.weight")
        || !name.ends_with(".weight")
        || name == "position_embd.weight";
    let ggml_type = if float {
        GgmlType::F32
    } else if !dims[0].is_multiple_of(outtype.block().0) {
        GgmlType::F16
    } else {
        outtype
    };
    PlannedTensor {
        name: name.to_string(),
        dims,
        ggml_type,
    }
}

/// The bytes of `values` as `tensor`'s type.
pub(super) fn encode(tensor: &PlannedTensor, values: &[f32]) -> Result<Vec<u8>> {
    Ok(match tensor.ggml_type {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        ty => {
            let inner = tensor.dims[0];
            quantize_blocks(ty, values, inner, values.len() / inner.max(1))?
        }
    })
}

/// The hyper-parameters of a Llama-style model, as `TextModel.set_gguf_parameters` writes them.
fn llama_hparams(arch: &str, c: &LlamaConfig, metadata: &mut Vec<(String, GgufValue)>) {
    let key = |name: &str| format!("{arch}.{name}");
    metadata.push(u32_entry(&key("block_count"), c.num_hidden_layers));
    metadata.push(u32_entry(&key("context_length"), c.max_position_embeddings));
    metadata.push(u32_entry(&key("embedding_length"), c.hidden_size));
    metadata.push(u32_entry(&key("feed_forward_length"), c.intermediate_size));
    metadata.push(u32_entry(
        &key("attention.head_count"),
        c.num_attention_heads,
    ));
    if let Some(heads) = c.num_key_value_heads {
        metadata.push(u32_entry(&key("attention.head_count_kv"), heads));
    }
    if let Some(scaling) = c.rope_scaling() {
        rope_scaling(arch, scaling, metadata);
    }
    let theta = c
        .rope_parameters
        .as_ref()
        .and_then(|p| p.rope_theta)
        .or(c.rope_theta);
    if let Some(theta) = theta {
        metadata.push((key("rope.freq_base"), GgufValue::F32(theta as f32)));
    }
    metadata.push((
        key("attention.layer_norm_rms_epsilon"),
        GgufValue::F32(c.rms_norm_eps as f32),
    ));
    if let Some(head_dim) = c.head_dim {
        metadata.push(u32_entry(&key("attention.key_length"), head_dim));
        metadata.push(u32_entry(&key("attention.value_length"), head_dim));
    }
}

/// `rope.scaling.*` for linear and YaRN scaling; llama3's is the `rope_freqs` tensor instead.
fn rope_scaling(arch: &str, scaling: &RopeScaling, metadata: &mut Vec<(String, GgufValue)>) {
    let key = |name: &str| format!("{arch}.rope.scaling.{name}");
    let (Some(kind), Some(factor)) = (scaling.rope_type.as_deref(), scaling.factor) else {
        return;
    };
    if !matches!(kind, "linear" | "yarn") {
        return;
    }
    metadata.push((key("type"), GgufValue::String(kind.into())));
    metadata.push((key("factor"), GgufValue::F32(factor as f32)));
    if kind == "yarn" {
        if let Some(original) = scaling.original_max_position_embeddings {
            metadata.push(u32_entry(&key("original_context_length"), original));
        }
        for (name, value) in [
            ("yarn_attn_factor", scaling.attention_factor),
            ("yarn_beta_fast", scaling.beta_fast),
            ("yarn_beta_slow", scaling.beta_slow),
        ] {
            if let Some(value) = value {
                metadata.push((key(name), GgufValue::F32(value as f32)));
            }
        }
    }
}

/// GPT-2's hyper-parameters (`GPT2Model.set_gguf_parameters`); the MLP's width is `n_inner`
/// where the config sets it (the converter assumes 4 × `n_embd`, which GPT-2's releases are).
fn gpt2_hparams(c: &Gpt2Config, metadata: &mut Vec<(String, GgufValue)>) {
    metadata.push(u32_entry("gpt2.block_count", c.n_layer));
    metadata.push(u32_entry("gpt2.context_length", c.n_positions));
    metadata.push(u32_entry("gpt2.embedding_length", c.n_embd));
    metadata.push(u32_entry(
        "gpt2.feed_forward_length",
        c.n_inner.unwrap_or(4 * c.n_embd),
    ));
    metadata.push(u32_entry("gpt2.attention.head_count", c.n_head));
    metadata.push((
        "gpt2.attention.layer_norm_epsilon".into(),
        GgufValue::F32(c.layer_norm_epsilon as f32),
    ));
}

/// llama3's rotary scaling as the converter stores it: per frequency, the divisor
/// (`LlamaModel.generate_extra_tensors`, computed in f32 as torch computes it there).
fn llama3_rope_frequency_divisors(config: &ModelConfig) -> Option<Vec<f32>> {
    let (ModelConfig::Llama(c) | ModelConfig::Mistral(c)) = config else {
        return None;
    };
    let scaling = c.rope_scaling()?;
    if !scaling.rope_type.as_deref()?.eq_ignore_ascii_case("llama3") {
        return None;
    }
    let base = c.rope_theta() as f32;
    let dim = c.head_dim();
    let factor = scaling.factor.unwrap_or(8.0);
    let low = scaling.low_freq_factor.unwrap_or(1.0);
    let high = scaling.high_freq_factor.unwrap_or(4.0);
    let old_context = scaling.original_max_position_embeddings.unwrap_or(8192) as f64;
    let (low_wavelength, high_wavelength) = (old_context / low, old_context / high);
    Some(
        (0..dim)
            .step_by(2)
            .map(|i| {
                let frequency = 1.0 / base.powf(i as f32 / dim as f32);
                // torch's `scalar / tensor` is the tensor's reciprocal times the scalar.
                let wavelength = frequency.recip() * (2.0 * std::f64::consts::PI) as f32;
                if wavelength < high_wavelength as f32 {
                    1.0
                } else if wavelength > low_wavelength as f32 {
                    factor as f32
                } else {
                    let smooth = (wavelength.recip() * old_context as f32 - low as f32)
                        / (high - low) as f32;
                    ((1.0 - smooth) / factor as f32 + smooth).recip()
                }
            })
            .collect(),
    )
}

/// The model's name: its folder's or repository's last part.
fn model_name(pretrained: &Pretrained) -> String {
    let name = pretrained.source().name();
    let trimmed = name.trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

/// gguf-py's size label: the parameter count in K, M, B or T with at least two digits.
fn size_label(parameters: usize) -> String {
    let count = parameters as f64;
    let (scaled, suffix) = if count > 1e12 {
        (count * 1e-12, "T")
    } else if count > 1e9 {
        (count * 1e-9, "B")
    } else if count > 1e6 {
        (count * 1e-6, "M")
    } else {
        (count * 1e-3, "K")
    };
    let whole_digits = format!("{}", scaled.round_ties_even() as u64)
        .trim_start_matches('0')
        .len();
    let decimals = 2usize.saturating_sub(whole_digits);
    format!("{scaled:.decimals$}{suffix}")
}

fn string(key: &str, value: &str) -> (String, GgufValue) {
    (key.to_string(), GgufValue::String(value.to_string()))
}

fn u32_entry(key: &str, value: usize) -> (String, GgufValue) {
    (key.to_string(), GgufValue::U32(value as u32))
}
