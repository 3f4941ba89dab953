//! GGUF files as checkpoints: the decoder fixtures converted by llama.cpp's own
//! `convert_hf_to_gguf.py` (`scripts/make_fixtures.py --only gguf-models`, from the
//! llama-cpp-python 0.3.36 sdist) load as the same models, with the config that their
//! metadata stands for.
//!
//! The Llama file covers the converter's reordering of q and k rows and llama3's scaling
//! stored as frequency divisors; Qwen2's covers biases and a tied head; Qwen3's the per-head
//! norms; GPT-2's the transposed Conv1D weights and position table.

mod common;

use common::*;
use ferroformers::{AutoModelForCausalLM, HubOptions, LoadOptions, ModelConfig, Pretrained};

/// f32 against PyTorch f32 (the safetensors references).
const F32_TOLERANCE: f32 = 1e-4;

const FAMILIES: [&str; 4] = ["llama", "qwen2", "qwen3", "gpt2"];

fn options() -> LoadOptions {
    LoadOptions::default().with_hub(HubOptions::default().with_offline(true))
}

fn gguf_path(family: &str) -> String {
    fixture(&format!("gguf/{family}-f32.gguf"))
        .to_string_lossy()
        .into_owned()
}

fn load_gguf(family: &str) -> AutoModelForCausalLM {
    use ferroformers::FromPretrained;
    AutoModelForCausalLM::from_pretrained(&gguf_path(family), &options())
        .expect("the GGUF fixture loads")
}

#[test]
fn the_metadata_stands_for_the_config() {
    for family in FAMILIES {
        let from_gguf = Pretrained::open(&gguf_path(family), &options().hub).unwrap();
        let from_json =
            ModelConfig::from_file(&fixture(&format!("{family}/lm-head/config.json"))).unwrap();
        let (gguf, json) = (from_gguf.config(), &from_json);
        assert_eq!(gguf.model_type(), json.model_type(), "{family}");
        assert_eq!(gguf.vocab_size(), json.vocab_size(), "{family}");
        assert_eq!(gguf.hidden_size(), json.hidden_size(), "{family}");
        assert_eq!(
            gguf.max_position_embeddings(),
            json.max_position_embeddings(),
            "{family}"
        );
        // The converter takes the end token from tokenizer_config.json's `eos_token`.
        let tokenizer =
            Pretrained::open(&fixture_model(&format!("{family}/lm-head")), &options().hub)
                .unwrap()
                .tokenizer()
                .unwrap();
        assert_eq!(
            gguf.eos_token_ids(),
            vec![tokenizer.eos_id().unwrap()],
            "{family}"
        );
        if let (Ok(g), Ok(j)) = (gguf.llama(), json.llama()) {
            assert_eq!(
                (
                    g.num_hidden_layers,
                    g.intermediate_size,
                    g.num_attention_heads
                ),
                (
                    j.num_hidden_layers,
                    j.intermediate_size,
                    j.num_attention_heads
                ),
                "{family}"
            );
            assert_eq!(g.num_key_value_heads(), j.num_key_value_heads(), "{family}");
            assert_eq!(g.head_dim(), j.head_dim(), "{family}");
            assert_eq!(g.rope_theta(), j.rope_theta(), "{family}");
            assert_eq!(g.rms_norm_eps as f32, j.rms_norm_eps as f32, "{family}");
            assert_eq!(g.tie_word_embeddings, j.tie_word_embeddings, "{family}");
            // llama3's scaling comes as the divisors of its frequencies: the same frequencies.
            let (ours, theirs) = (
                g.rotary_embedding().unwrap().inv_freq(0),
                j.rotary_embedding().unwrap().inv_freq(0),
            );
            assert_close_slices(
                &ours,
                &theirs,
                1e-7,
                &format!("{family} rotary frequencies"),
            );
            assert_eq!(
                g.rope_frequency_divisors.is_some(),
                family == "llama",
                "{family}: only the llama3 scaling is stored as divisors"
            );
        }
    }
}

#[test]
fn f32_gguf_logits_match_pytorch() {
    for family in FAMILIES {
        let reference = reference(&format!("{family}/lm-head"));
        let model = load_gguf(family);
        let (ids, _) = ids_and_mask(&reference);
        let lengths = lengths(&reference);
        for (i, &len) in lengths.iter().enumerate() {
            // Each row alone, unpadded: GPT-2's reference rows carry left-padded positions.
            let logits = model
                .forward(&real_positions(&ids, i, len), None, None)
                .unwrap();
            let expected = real_positions(&reference["logits"], i, len);
            let diff = max_abs_diff(&logits, &expected);
            eprintln!("{family}: row {i} logits within {diff:e} of PyTorch");
            assert_close(
                &logits,
                &expected,
                F32_TOLERANCE,
                &format!("{family} GGUF logits, row {i}"),
            );
        }
    }
}
