//! Random-initialised checkpoints of real shapes, written to a temporary folder, so that the
//! benches need no download: the speed of a product does not depend on the weights' values.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

fn normal(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 0.02, shape, &Device::Cpu).expect("random tensor")
}

fn layer_norm(tensors: &mut HashMap<String, Tensor>, prefix: &str, size: usize) {
    let ones = Tensor::ones(size, DType::F32, &Device::Cpu).expect("ones");
    tensors.insert(format!("{prefix}.weight"), ones);
    tensors.insert(format!("{prefix}.bias"), normal(&[size]));
}

fn linear(tensors: &mut HashMap<String, Tensor>, prefix: &str, out: usize, inp: usize) {
    tensors.insert(format!("{prefix}.weight"), normal(&[out, inp]));
    tensors.insert(format!("{prefix}.bias"), normal(&[out]));
}

/// A BERT checkpoint (`config.json`, `model.safetensors`) of the given shape in `folder`.
pub fn write_bert(folder: &Path, hidden: usize, layers: usize, heads: usize, intermediate: usize) {
    let config = json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": intermediate, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "classifier_dropout": null
    });
    let mut t = HashMap::new();
    t.insert(
        "embeddings.word_embeddings.weight".into(),
        normal(&[30522, hidden]),
    );
    t.insert(
        "embeddings.position_embeddings.weight".into(),
        normal(&[512, hidden]),
    );
    t.insert(
        "embeddings.token_type_embeddings.weight".into(),
        normal(&[2, hidden]),
    );
    layer_norm(&mut t, "embeddings.LayerNorm", hidden);
    for i in 0..layers {
        let p = format!("encoder.layer.{i}");
        for name in ["query", "key", "value"] {
            linear(
                &mut t,
                &format!("{p}.attention.self.{name}"),
                hidden,
                hidden,
            );
        }
        linear(
            &mut t,
            &format!("{p}.attention.output.dense"),
            hidden,
            hidden,
        );
        layer_norm(&mut t, &format!("{p}.attention.output.LayerNorm"), hidden);
        linear(
            &mut t,
            &format!("{p}.intermediate.dense"),
            intermediate,
            hidden,
        );
        linear(&mut t, &format!("{p}.output.dense"), hidden, intermediate);
        layer_norm(&mut t, &format!("{p}.output.LayerNorm"), hidden);
    }
    linear(&mut t, "pooler.dense", hidden, hidden);
    write(folder, &config, &t);
}

/// A GPT-2 small checkpoint (124M parameters) in `folder`.
pub fn write_gpt2_small(folder: &Path) {
    let (embd, layers, vocab, positions) = (768, 12, 50257, 1024);
    let config = json!({
        "model_type": "gpt2", "vocab_size": vocab, "n_positions": positions, "n_embd": embd,
        "n_layer": layers, "n_head": 12, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256
    });
    let mut t = HashMap::new();
    t.insert("wte.weight".into(), normal(&[vocab, embd]));
    t.insert("wpe.weight".into(), normal(&[positions, embd]));
    for i in 0..layers {
        let p = format!("h.{i}");
        layer_norm(&mut t, &format!("{p}.ln_1"), embd);
        layer_norm(&mut t, &format!("{p}.ln_2"), embd);
        // Conv1D stores (in, out).
        for (name, inp, out) in [
            ("attn.c_attn", embd, 3 * embd),
            ("attn.c_proj", embd, embd),
            ("mlp.c_fc", embd, 4 * embd),
            ("mlp.c_proj", 4 * embd, embd),
        ] {
            t.insert(format!("{p}.{name}.weight"), normal(&[inp, out]));
            t.insert(format!("{p}.{name}.bias"), normal(&[out]));
        }
    }
    layer_norm(&mut t, "ln_f", embd);
    write(folder, &config, &t);
}

fn write(folder: &Path, config: &serde_json::Value, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(folder).expect("model folder");
    std::fs::write(folder.join("config.json"), config.to_string()).expect("config.json");
    candle_core::safetensors::save(tensors, folder.join("model.safetensors"))
        .expect("model.safetensors");
}
