//! GGUF files as checkpoints of the families here: the `config.json` that a file's metadata
//! stands for, and where each checkpoint tensor is stored in it. This is the transformers side
//! of llama.cpp's converter, as transformers' own GGUF loading has it
//! (<https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/integrations/ggml.py>).
//!
//! The hyper-parameters are read under the architecture's prefix (`qwen2.block_count`) and
//! written into the config the family's `config.json` would hold, which is then read and
//! checked as that file is; which optional tensors the file has (biases, an LM head of its
//! own) says what the config's flags would.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::loading::gguf::{GgufFile, GgufHeader, StoredLayout, StoredTensor, TensorNames};
use crate::models::config::ModelConfig;

mod export;
mod requantize;
pub use export::{save_gguf, GgufWritten, GGUF_OUTTYPES};

/// llama.cpp's architectures (`general.architecture`) that load as a family here; each is
/// also the family's `model_type`.
const ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gpt2"];

/// The config of the model in `file`, from its metadata and tensor table.
pub(crate) fn config(file: &GgufFile, name: &str) -> Result<ModelConfig> {
    let header = file.header();
    let architecture = header.architecture()?;
    if !ARCHITECTURES.contains(&architecture) {
        return Err(Error::UnknownModelType {
            model_type: format!("{architecture} (a GGUF architecture)"),
            path: name.into(),
            supported: ARCHITECTURES.join(", "),
        });
    }
    let hparams = Hparams {
        header,
        prefix: architecture,
    };
    let mut config = match architecture {
        "gpt2" => gpt2_config(&hparams, file)?,
        _ => llama_config(&hparams, file)?,
    };
    config.insert("model_type".into(), architecture.into());
    let special = |key: &str| header.optional_count(&format!("tokenizer.ggml.{key}"));
    for (field, key) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(id) = special(key)? {
            config.insert(field.into(), id.into());
        }
    }
    let text = Value::Object(config).to_string();
    let mut config = ModelConfig::from_json(&text, std::path::Path::new(name))?;
    if let ModelConfig::Llama(llama) | ModelConfig::Qwen2(llama) | ModelConfig::Qwen3(llama) =
        &mut config
    {
        if let Some(rotated) = hparams.optional_count("rope.dimension_count")? {
            if rotated != llama.head_dim() {
                return Err(Error::InvalidConfig(format!(
                    "the GGUF file rotates {rotated} of each head's {} dimensions; only \
                     models that rotate whole heads are supported",
                    llama.head_dim()
                )));
            }
        }
        llama.rope_frequency_divisors = rope_frequency_divisors(file)?;
        if llama.rope_frequency_divisors.is_some() {
            // Checked again now that the divisors are part of it.
            llama.validate()?;
        }
    }
    Ok(config)
}

/// The hyper-parameters of one architecture: its keys are `<architecture>.<name>`.
struct Hparams<'a> {
    header: &'a GgufHeader,
    prefix: &'a str,
}

impl Hparams<'_> {
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    fn count(&self, name: &str) -> Result<usize> {
        self.header.count(&self.key(name))
    }

    fn optional_count(&self, name: &str) -> Result<Option<usize>> {
        self.header.optional_count(&self.key(name))
    }

    fn optional_number(&self, name: &str) -> Result<Option<f64>> {
        self.header.optional_number(&self.key(name))
    }

    /// The vocabulary size: the key when the file has it, else the embedding table's rows.
    fn vocab_size(&self, file: &GgufFile) -> Result<usize> {
        if let Some(size) = self.optional_count("vocab_size")? {
            return Ok(size);
        }
        let embeddings = file.tensor("token_embd.weight")?;
        Ok(embeddings.dims.get(1).copied().unwrap_or(0))
    }
}

/// `LlamaConfig`'s fields (Llama, Qwen2, Qwen3) from the metadata, as llama.cpp's converter
/// wrote them from `config.json`.
fn llama_config(hparams: &Hparams, file: &GgufFile) -> Result<Map<String, Value>> {
    let has = |name: &str| file.tensor(name).is_ok();
    let mut config = Map::new();
    config.insert("vocab_size".into(), hparams.vocab_size(file)?.into());
    for (field, key) in [
        ("hidden_size", "embedding_length"),
        ("intermediate_size", "feed_forward_length"),
        ("num_hidden_layers", "block_count"),
        ("num_attention_heads", "attention.head_count"),
        ("max_position_embeddings", "context_length"),
    ] {
        config.insert(field.into(), hparams.count(key)?.into());
    }
    for (field, key) in [
        ("num_key_value_heads", "attention.head_count_kv"),
        ("head_dim", "attention.key_length"),
    ] {
        if let Some(value) = hparams.optional_count(key)? {
            config.insert(field.into(), value.into());
        }
    }
    if let Some(eps) = hparams.optional_number("attention.layer_norm_rms_epsilon")? {
        config.insert("rms_norm_eps".into(), eps.into());
    }
    if let Some(theta) = hparams.optional_number("rope.freq_base")? {
        config.insert("rope_theta".into(), theta.into());
    }
    if let Some(scaling) = rope_scaling(hparams)? {
        config.insert("rope_scaling".into(), scaling);
    }
    // Which optional tensors the file has stands for the config's flags.
    config.insert(
        "attention_bias".into(),
        (has("blk.0.attn_q.bias") && has("blk.0.attn_output.bias")).into(),
    );
    config.insert("mlp_bias".into(), has("blk.0.ffn_up.bias").into());
    config.insert("tie_word_embeddings".into(), (!has("output.weight")).into());
    Ok(config)
}

/// transformers' `rope_scaling` from `rope.scaling.*`; llama3's scaling is not there but in
/// the `rope_freqs` tensor ([`rope_frequency_divisors`]).
fn rope_scaling(hparams: &Hparams) -> Result<Option<Value>> {
    let key = hparams.key("rope.scaling.type");
    let Some(kind) = hparams.header.metadata.get(&key) else {
        return Ok(None);
    };
    let kind = kind.as_str().ok_or_else(|| {
        Error::InvalidConfig(format!("the GGUF metadata `{key}` is not a string"))
    })?;
    let factor = hparams.optional_number("rope.scaling.factor")?;
    let original = hparams.optional_count("rope.scaling.original_context_length")?;
    Ok(match kind {
        "none" => None,
        "linear" => Some(json!({"rope_type": "linear", "factor": factor})),
        "yarn" => Some(json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original,
        })),
        other => {
            return Err(Error::InvalidConfig(format!(
                "the GGUF file's rope scaling `{other}` is not supported: none, linear or yarn"
            )))
        }
    })
}

/// The divisor of each rotary frequency that llama.cpp's converter stores as `rope_freqs`
/// for llama3's scaling, in place of the scaling's parameters.
fn rope_frequency_divisors(file: &GgufFile) -> Result<Option<Vec<f32>>> {
    match file.tensor("rope_freqs.weight") {
        Ok(tensor) => Ok(Some(file.dequantized(tensor)?)),
        Err(_) => Ok(None),
    }
}

/// `GPT2Config`'s fields from the metadata.
fn gpt2_config(hparams: &Hparams, file: &GgufFile) -> Result<Map<String, Value>> {
    let mut config = Map::new();
    for (field, key) in [
        ("n_positions", "context_length"),
        ("n_embd", "embedding_length"),
        ("n_layer", "block_count"),
        ("n_head", "attention.head_count"),
        ("n_inner", "feed_forward_length"),
    ] {
        config.insert(field.into(), hparams.count(key)?.into());
    }
    config.insert("vocab_size".into(), hparams.vocab_size(file)?.into());
    if let Some(eps) = hparams.optional_number("attention.layer_norm_epsilon")? {
        config.insert("layer_norm_epsilon".into(), eps.into());
    }
    Ok(config)
}

/// Where each checkpoint tensor of a model of `config` is stored in a GGUF file (llama.cpp's
/// `gguf-py/gguf/tensor_mapping.py`, read the other way).
pub(crate) fn tensor_names(config: &ModelConfig) -> Result<Arc<TensorNames>> {
    match config {
        ModelConfig::Gpt2(_) => Ok(Arc::new(gpt2_tensor)),
        ModelConfig::Llama(c)
        | ModelConfig::Mistral(c)
        | ModelConfig::Qwen2(c)
        | ModelConfig::Qwen3(c) => {
            // Only llama.cpp's `llama` architecture (which Mistral's checkpoints are written
            // as) rotates interleaved pairs; Qwen rotates halves, as transformers does.
            let rotary = matches!(config, ModelConfig::Llama(_) | ModelConfig::Mistral(_))
                .then_some((c.num_attention_heads, c.num_key_value_heads()));
            Ok(Arc::new(move |name| llama_tensor(name, rotary)))
        }
        other => Err(Error::InvalidInput(format!(
            "{} models are not read from GGUF files",
            other.model_type()
        ))),
    }
}

/// A layer's tensor `blk.<layer>.<rest>` for the checkpoint name `<prefix>.<layer>.<rest>`.
fn in_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (layer, rest) = rest.split_once('.')?;
    Some((layer.parse().ok()?, rest))
}

/// `param` (`weight` or `bias`) when `name` is `<module>.<param>`.
fn param_of<'a>(name: &'a str, module: &str) -> Option<&'a str> {
    let param = name.strip_prefix(module)?.strip_prefix('.')?;
    matches!(param, "weight" | "bias").then_some(param)
}

fn llama_tensor(name: &str, rotary: Option<(usize, usize)>) -> Option<StoredTensor> {
    let global = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(stored) = global {
        return Some(StoredTensor::as_is(stored));
    }
    let (layer, rest) = in_layer(name, "model.layers")?;
    const MODULES: &[(&str, &str)] = &[
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    MODULES.iter().find_map(|&(module, stored)| {
        let param = param_of(rest, module)?;
        let layout = match (module, rotary) {
            ("self_attn.q_proj", Some((heads, _))) => StoredLayout::InterleavedRotary { heads },
            ("self_attn.k_proj", Some((_, heads))) => StoredLayout::InterleavedRotary { heads },
            _ => StoredLayout::AsIs,
        };
        Some(StoredTensor {
            name: format!("blk.{layer}.{stored}.{param}"),
            layout,
        })
    })
}

fn gpt2_tensor(name: &str) -> Option<StoredTensor> {
    let global = match name {
        "transformer.wte.weight" => Some("token_embd.weight"),
        "transformer.wpe.weight" => Some("position_embd.weight"),
        "transformer.ln_f.weight" => Some("output_norm.weight"),
        "transformer.ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(stored) = global {
        return Some(StoredTensor::as_is(stored));
    }
    let (layer, rest) = in_layer(name, "transformer.h")?;
    const MODULES: &[(&str, &str)] = &[
        ("ln_1", "attn_norm"),
        ("ln_2", "ffn_norm"),
        ("attn.c_attn", "attn_qkv"),
        ("attn.c_proj", "attn_output"),
        ("mlp.c_fc", "ffn_up"),
        ("mlp.c_proj", "ffn_down"),
    ];
    MODULES.iter().find_map(|&(module, stored)| {
        let param = param_of(rest, module)?;
        // The converter stores the Conv1D weights as linear layers.
        let layout = if module.contains(".c_") && param == "weight" {
            StoredLayout::Transposed
        } else {
            StoredLayout::AsIs
        };
        Some(StoredTensor {
            name: format!("blk.{layer}.{stored}.{param}"),
            layout,
        })
    })
}
