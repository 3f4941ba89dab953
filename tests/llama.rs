//! The Llama family (Llama, Mistral, Qwen2, Qwen3) against transformers 4.57.6 on tiny random
//! checkpoints made by `scripts/make_fixtures.py --only decoders`: logits on a left-padded
//! batch, `generate`'s greedy, batched and beam outputs token for token, chat templates
//! rendered byte for byte, and the KV cache and continuous batching against the model alone.
//!
//! Each fixture covers its family's variants: Llama's llama3 rope scaling, 2 KV heads for 4
//! query heads and untied head in transformers 4's config form; Mistral's sliding window of 6
//! keys (shorter than the prompts) and one KV head; Qwen2.5's q/k/v biases, tied head and a
//! window that `use_sliding_window: false` turns off; Qwen3's per-head q/k norms, head_dim 16
//! of a hidden size of 32, and transformers 5's `rope_parameters`.

mod common;

use std::collections::HashMap;

use common::*;
use ferroformers::generation::{CausalLM, GenerationConfig, Generator, PromptBatch};
use ferroformers::models::rope::{RopeScaling, RotaryEmbedding};
use ferroformers::pipelines::{Message, Pipeline, TextGenerationPipeline};
use ferroformers::{
    AutoModelForCausalLM, DType, Device, FromPretrained, HubOptions, KvCache, LlamaForCausalLM,
    LoadOptions, ModelConfig, Pretrained, Tensor, Tokenizer,
};
use serde_json::Value;

/// f32 against PyTorch f32.
const F32_TOLERANCE: f32 = 1e-4;
/// The same model computed two ways (cached or not, padded or not): float noise only.
const SELF_TOLERANCE: f32 = 1e-5;

const FAMILIES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];

fn options() -> LoadOptions {
    LoadOptions::default().with_hub(HubOptions::default().with_offline(true))
}

fn folder(family: &str) -> String {
    fixture_model(&format!("{family}/lm-head"))
}

fn load(family: &str) -> LlamaForCausalLM {
    LlamaForCausalLM::from_pretrained(&folder(family), &options()).expect("fixture model loads")
}

fn tokenizer(family: &str) -> Tokenizer {
    Pretrained::open(&folder(family), &options().hub)
        .unwrap()
        .tokenizer()
        .unwrap()
}

fn cases(family: &str) -> serde_json::Map<String, Value> {
    fixture_json(&format!("{family}/lm-head/generate.json"))
        .as_object()
        .unwrap()
        .clone()
}

fn rows(value: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn every_family_reads_its_config_and_its_variants() {
    for family in FAMILIES {
        let path = fixture(&format!("{family}/lm-head/config.json"));
        let config = ModelConfig::from_file(&path).unwrap();
        assert_eq!(config.model_type(), family);
        let llama = config.llama().unwrap();
        match family {
            "llama" => {
                assert_eq!((llama.num_key_value_heads(), llama.head_dim()), (2, 16));
                assert_eq!(
                    llama.rope_scaling().and_then(|s| s.rope_type.as_deref()),
                    Some("llama3")
                );
                assert!(!llama.tie_word_embeddings);
            }
            "mistral" => {
                assert_eq!(llama.num_key_value_heads(), 1);
                assert_eq!(llama.sliding_window_of(0), Some(6));
            }
            "qwen2" => {
                // The window is written out, and switched off.
                assert_eq!(llama.sliding_window, Some(4));
                assert_eq!(llama.sliding_window_of(1), None);
                assert!(llama.tie_word_embeddings);
            }
            "qwen3" => {
                assert_eq!(llama.head_dim(), 16);
                assert_ne!(
                    llama.head_dim(),
                    llama.hidden_size / llama.num_attention_heads
                );
                // transformers 5's form: the base lives in rope_parameters.
                assert!(llama.rope_theta.is_none());
                assert_eq!(llama.rope_theta(), 1_000_000.0);
            }
            _ => unreachable!("the four families"),
        }
    }
}

#[test]
fn logits_match_pytorch_on_a_left_padded_batch() {
    for family in FAMILIES {
        let reference = reference(&format!("{family}/lm-head"));
        let model = load(family);
        let (ids, mask) = ids_and_mask(&reference);
        let logits = model.forward(&ids, Some(&mask), None).unwrap();
        let lengths = lengths(&reference);
        fixture_sanity(
            lengths.iter().any(|&l| l < ids.dim(1).unwrap()),
            "the reference batch is padded",
        );
        for (i, &len) in lengths.iter().enumerate() {
            let diff = max_abs_diff(
                &real_positions(&logits, i, len),
                &real_positions(&reference["logits"], i, len),
            );
            eprintln!("{family}: row {i} logits within {diff:e} of PyTorch");
            assert_close(
                &real_positions(&logits, i, len),
                &real_positions(&reference["logits"], i, len),
                F32_TOLERANCE,
                &format!("{family} logits, row {i}"),
            );
        }
    }
}

#[test]
fn the_auto_class_loads_every_family() {
    for family in FAMILIES {
        let model = AutoModelForCausalLM::from_pretrained(&folder(family), &options()).unwrap();
        assert!(matches!(model, AutoModelForCausalLM::Llama(_)), "{family}");
        let reference = reference(&format!("{family}/lm-head"));
        let (ids, mask) = ids_and_mask(&reference);
        let ours = model.forward(&ids, Some(&mask), None).unwrap();
        let direct = load(family).forward(&ids, Some(&mask), None).unwrap();
        assert_eq!(max_abs_diff(&ours, &direct), 0.0, "{family}");
    }
}

#[test]
fn left_padded_batch_equals_each_prompt_alone() {
    for family in FAMILIES {
        let reference = reference(&format!("{family}/lm-head"));
        let model = load(family);
        let (ids, mask) = ids_and_mask(&reference);
        let batch = model.forward(&ids, Some(&mask), None).unwrap();
        for (i, &len) in lengths(&reference).iter().enumerate() {
            let alone = model
                .forward(&real_positions(&ids, i, len), None, None)
                .unwrap();
            assert_close(
                &alone,
                &real_positions(&batch, i, len),
                SELF_TOLERANCE,
                &format!("{family}: prompt {i} alone"),
            );
        }
    }
}

/// 24 steps take every prompt past Mistral's window of 6 keys and through the cache's first
/// growth, so the window's mask over cached keys is checked too.
#[test]
fn cached_decoding_equals_full_recompute() {
    for family in FAMILIES {
        let reference = reference(&format!("{family}/lm-head"));
        let model = load(family);
        let (mut ids, mut mask) = ids_and_mask(&reference);
        let batch = ids.dim(0).unwrap();
        let mut cache = model.new_cache();
        let mut logits = model.forward(&ids, Some(&mask), Some(&mut cache)).unwrap();
        for step in 0..24 {
            let next = greedy(&logits);
            ids = Tensor::cat(&[&ids, &next], 1).unwrap();
            let one = Tensor::ones((batch, 1), DType::U32, &Device::Cpu).unwrap();
            mask = Tensor::cat(&[&mask, &one], 1).unwrap();
            logits = model.forward(&next, Some(&mask), Some(&mut cache)).unwrap();
            let full = model.forward(&ids, Some(&mask), None).unwrap();
            let last = full.narrow(1, ids.dim(1).unwrap() - 1, 1).unwrap();
            assert_close(
                &logits,
                &last,
                SELF_TOLERANCE,
                &format!("{family}: step {step}"),
            );
        }
        assert_eq!(cache.len(), ids.dim(1).unwrap());
    }
}

/// The model's generation_config.json with the case's settings on top, as `generate(**kwargs)`.
fn config_for(family: &str, settings: &Value) -> GenerationConfig {
    let mut merged = fixture_json(&format!("{family}/lm-head/generation_config.json"));
    for (key, value) in settings.as_object().unwrap() {
        merged[key] = value.clone();
    }
    serde_json::from_value(merged).unwrap()
}

fn check_generate(family: &str, name: &str) {
    let model = load(family);
    let tokenizer = tokenizer(family);
    let case = &cases(family)[name];
    let prompts =
        PromptBatch::new(rows(&case["input_ids"]), rows(&case["attention_mask"])).unwrap();
    let expected = rows(&case["sequences"]);
    let config = config_for(family, &case["settings"]);
    let ours = Generator::new(&model, &tokenizer)
        .generate_ids(&prompts, &config)
        .unwrap();
    assert_eq!(ours.len(), expected.len(), "{family} {name}: sequences");
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(
            a, b,
            "{family} {name}: sequence {i} differs from transformers' generate"
        );
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    for family in FAMILIES {
        check_generate(family, "greedy");
    }
}

#[test]
fn a_left_padded_batch_generates_as_transformers_does() {
    for family in FAMILIES {
        check_generate(family, "batch");
    }
}

#[test]
fn beam_search_matches_transformers() {
    for family in FAMILIES {
        check_generate(family, "beam_search");
    }
}

#[test]
fn llama3_ends_on_either_of_its_end_tokens() {
    let config =
        GenerationConfig::from_file(&fixture("llama/lm-head/generation_config.json")).unwrap();
    assert_eq!(config.eos_token_id.len(), 2, "Llama 3 lists two end tokens");
    let model = load("llama");
    let tokenizer = tokenizer("llama");
    let case = &cases("llama")["greedy"];
    let prompts =
        PromptBatch::new(rows(&case["input_ids"]), rows(&case["attention_mask"])).unwrap();
    let expected = &rows(&case["sequences"])[0];
    let prompt_len = prompts.seq_len();
    // Each end token in turn, made the token the greedy continuation emits at its 5th step.
    for end in [0, 1] {
        let mut config = config.clone();
        config.eos_token_id[end] = expected[prompt_len + 4];
        config.max_new_tokens = Some(32);
        let ours = Generator::new(&model, &tokenizer)
            .generate_ids(&prompts, &config)
            .unwrap();
        assert_eq!(ours[0], expected[..prompt_len + 5], "end token {end}");
    }
}

#[test]
fn sampling_stays_in_the_support_and_repeats_with_a_seed() {
    for family in FAMILIES {
        let model = load(family);
        let tokenizer = tokenizer(family);
        let case = &cases(family)["greedy"];
        let prompts =
            PromptBatch::new(rows(&case["input_ids"]), rows(&case["attention_mask"])).unwrap();
        let sample = |top_k: usize, seed: u64| {
            let mut config = config_for(family, &case["settings"]);
            config.do_sample = true;
            config.top_k = Some(top_k);
            config.seed = Some(seed);
            config.max_new_tokens = Some(16);
            Generator::new(&model, &tokenizer)
                .generate_ids(&prompts, &config)
                .unwrap()
        };
        assert_eq!(sample(40, 7), sample(40, 7), "{family}: same seed");
        // One candidate: sampling can only take the greedy token.
        let greedy = &rows(&case["sequences"])[0];
        let only = sample(1, 3);
        assert_eq!(only[0], greedy[..only[0].len()], "{family}: top_k 1");
        fixture_sanity(
            (0..5).any(|seed| sample(40, seed) != sample(40, 7)),
            "seeds give different samples",
        );
    }
}

/// One decoding step of three sequences of different lengths (one past Mistral's window): each
/// row bitwise what the sequence gives alone, which continuous batching relies on.
#[test]
fn a_decoding_step_of_several_sequences_gives_each_its_own_logits() {
    for family in FAMILIES {
        let model = load(family);
        let prompts: [&[u32]; 3] = [&[5, 9, 14, 200, 31, 7, 8, 99, 100, 3], &[42], &[17, 18, 19]];
        let mut caches: Vec<KvCache> = Vec::new();
        let mut alone = Vec::new();
        for prompt in prompts {
            let mut cache = model.new_cache();
            let ids = Tensor::new(prompt, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            model.forward(&ids, None, Some(&mut cache)).unwrap();
            // The same step alone, from a copy of the cache.
            let mut solo = cache.clone();
            let next = Tensor::new(&[[77u32]], &Device::Cpu).unwrap();
            alone.push(
                model
                    .forward_last(&next, None, Some(&mut solo))
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap()
                    .remove(0),
            );
            caches.push(cache);
        }
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let together = model.decode_scores(&[77, 77, 77], &mut refs).unwrap();
        for (i, (a, b)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(a, b, "{family}: row {i} of the shared step");
        }
    }
}

#[test]
fn chat_templates_render_as_transformers_renders_them() {
    let date: serde_json::Map<String, Value> =
        serde_json::from_value(serde_json::json!({"date_string": "06 Dec 2026"})).unwrap();
    // Llama 3.1's from chat_template.jinja, ChatML from tokenizer_config.json (Qwen2) and from
    // chat_template.jinja (Qwen3).
    for family in ["llama", "qwen2", "qwen3"] {
        let pipeline =
            TextGenerationPipeline::from_pretrained(&folder(family), &options()).unwrap();
        let template = pipeline.chat_template().unwrap().expect("a chat template");
        let chat = &cases(family)["chat"];
        let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        for (prompt, key) in [(false, "plain"), (true, "generation_prompt")] {
            assert_eq!(
                template.render_with(&messages, prompt, &date).unwrap(),
                chat[key].as_str().unwrap(),
                "{family}: {key}"
            );
        }
    }
    let llama = TextGenerationPipeline::from_pretrained(&folder("llama"), &options()).unwrap();
    let template = llama.chat_template().unwrap().unwrap();
    // Without date_string the template asks strftime_now for today's date.
    let today = template
        .render(
            &[Message::new(ferroformers::pipelines::Role::User, "Hi")],
            true,
        )
        .unwrap();
    let line = today
        .lines()
        .find(|l| l.starts_with("Today Date: "))
        .unwrap();
    let date = line.trim_start_matches("Today Date: ");
    assert_eq!(date.len(), 11, "a date like 06 Dec 2026: {date:?}");
    assert!(date[7..].parse::<u32>().unwrap() >= 2026, "{date}");
    // raise_exception's message comes back as the error: a system message after the first.
    let error = template
        .render(
            &[
                Message::new(ferroformers::pipelines::Role::User, "a"),
                Message::new(ferroformers::pipelines::Role::System, "b"),
            ],
            false,
        )
        .unwrap_err();
    assert!(
        error.to_string().contains("Only user and assistant roles"),
        "{error}"
    );
}

/// The rendered chat, tokenized as the pipeline tokenizes it, and transformers' greedy reply.
#[test]
fn a_chat_reply_matches_transformers() {
    for family in ["llama", "qwen2", "qwen3"] {
        let pipeline =
            TextGenerationPipeline::from_pretrained(&folder(family), &options()).unwrap();
        let reply = &cases(family)["chat"]["reply"];
        let messages: Vec<Message> = serde_json::from_value(reply["messages"].clone()).unwrap();
        let date: serde_json::Map<String, Value> =
            serde_json::from_value(serde_json::json!({"date_string": "06 Dec 2026"})).unwrap();
        let text = pipeline
            .chat_template()
            .unwrap()
            .unwrap()
            .render_with(&messages, true, &date)
            .unwrap();
        // Templates write the BOS token themselves: encode without adding it again.
        let ids = pipeline
            .tokenizer()
            .encode(
                text.as_str(),
                &ferroformers::EncodeOptions {
                    add_special_tokens: false,
                    ..Default::default()
                },
            )
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ids,
            rows(&serde_json::json!([reply["ids"]]))[0],
            "{family}: chat ids"
        );
        let prompts = PromptBatch::new(vec![ids.clone()], vec![vec![1; ids.len()]]).unwrap();
        let mut config = pipeline.generation_config().clone();
        config.max_new_tokens = Some(32);
        config.do_sample = false;
        let ours = Generator::new(pipeline.model(), pipeline.tokenizer())
            .generate_ids(&prompts, &config)
            .unwrap();
        let expected = rows(&serde_json::json!([reply["sequence"]]))[0].clone();
        assert_eq!(ours[0], expected, "{family}: reply");
    }
}

#[test]
fn every_rope_type_computes_transformers_frequencies() {
    let cases = fixture_json("rope.json");
    for (name, case) in cases.as_object().unwrap() {
        let scaling: Option<RopeScaling> =
            serde_json::from_value(case["rope_scaling"].clone()).unwrap();
        let rope = RotaryEmbedding::new(
            case["rope_theta"].as_f64().unwrap(),
            case["head_dim"].as_u64().unwrap() as usize,
            scaling.as_ref(),
            case["max_position_embeddings"].as_u64().unwrap() as usize,
        )
        .unwrap();
        let seq_len = case["seq_len"].as_u64().map_or(1, |s| s as usize);
        let expected: Vec<f32> = serde_json::from_value(case["inv_freq"].clone()).unwrap();
        let ours = rope.inv_freq(seq_len - 1);
        assert_same_len(&ours, &expected, name);
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1e-6),
                "{name}: inv_freq[{i}] {a} vs transformers' {b}"
            );
        }
        let scale = case["attention_scaling"].as_f64().unwrap() as f32;
        assert!(
            (rope.attention_scaling() - scale).abs() < 1e-6,
            "{name}: attention scaling {} vs {scale}",
            rope.attention_scaling()
        );
    }
}

#[test]
fn a_bad_config_is_an_error_that_names_the_field() {
    let base = fixture_json("qwen3/lm-head/config.json");
    for (field, value, words) in [
        (
            "num_key_value_heads",
            serde_json::json!(3),
            "num_key_value_heads",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "longrope", "rope_theta": 1e4}),
            "longrope",
        ),
        ("hidden_act", serde_json::json!("gelu"), "silu"),
        (
            "layer_types",
            serde_json::json!(["full_attention"]),
            "layer_types",
        ),
    ] {
        let mut config = base.clone();
        config[field] = value;
        let error =
            ModelConfig::from_json(&config.to_string(), std::path::Path::new("config.json"))
                .unwrap_err();
        assert!(error.to_string().contains(words), "{field}: {error}");
    }
}

/// The largest logit difference to f32 along f32's greedy sequences of the four fixtures,
/// measured: 1.04e-1 on AVX-512 (activations rounded to bf16 for `vdpbf16ps`, keys and values
/// cached in bf16), 9.1e-2 on AVX2 (FERROFORMERS_ISA=avx2). The fixtures' weights carry 0.1 of
/// noise on top of their initialisation, so their logits are larger than GPT-2's fixture's.
/// Bar: 1.5× the largest.
const BF16_LOGIT_BAR: f32 = 0.16;
/// int8 (one scale per output channel): 2.2e-1 on AVX-512 (activations rounded to 8 bits over
/// each row), 1.6e-1 on AVX2 (16 bits). Bar: 1.5× the largest. Greedy tokens kept of 32:
/// llama 5 (both), qwen3 32 / 18, the others 32; where they part, f32's two scores were a near
/// tie, which the test checks.
const INT8_LOGIT_BAR: f32 = 0.33;

/// bf16 and int8 against f32 on every family: the logits along f32's greedy sequence stay
/// within their measured bar, and the greedy tokens stay f32's for every step of the case
/// (32 new tokens), or part from them only where f32's two best scores were closer than twice
/// the bar (a near tie that any rounding may flip).
#[test]
fn bf16_and_int8_keep_f32s_greedy_tokens() {
    use ferroformers::WeightType;
    for family in FAMILIES {
        let f32_model = load(family);
        let tokenizer = tokenizer(family);
        let case = &cases(family)["greedy"];
        let prompts =
            PromptBatch::new(rows(&case["input_ids"]), rows(&case["attention_mask"])).unwrap();
        let prompt_len = prompts.seq_len();
        let config = config_for(family, &case["settings"]);
        let expected = rows(&case["sequences"]).remove(0);
        let ids = Tensor::new(vec![expected.clone()], &Device::Cpu).unwrap();
        let f32_logits = f32_model
            .forward(&ids, None, None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        for (weight_type, bar) in [
            (WeightType::Bf16, BF16_LOGIT_BAR),
            (WeightType::Int8, INT8_LOGIT_BAR),
        ] {
            let model = LlamaForCausalLM::from_pretrained(
                &folder(family),
                &options().with_weight_type(weight_type),
            )
            .unwrap();
            let logits = model.forward(&ids, None, None).unwrap().squeeze(0).unwrap();
            let moved = max_abs_diff(&logits, &f32_logits);
            let ours = Generator::new(&model, &tokenizer)
                .generate_ids(&prompts, &config)
                .unwrap()
                .remove(0);
            let kept = ours
                .iter()
                .zip(&expected)
                .skip(prompt_len)
                .take_while(|(a, b)| a == b)
                .count();
            eprintln!(
                "{family} {weight_type}: logits within {moved:.3e} of f32, {kept} of {} greedy tokens kept",
                expected.len() - prompt_len
            );
            assert!(
                moved <= bar,
                "{family} {weight_type}: logits moved {moved} > {bar}"
            );
            if prompt_len + kept < expected.len() {
                // Where they part: f32's scores of the two tokens at that step.
                let step: Vec<f32> = f32_logits
                    .get(prompt_len + kept - 1)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let gap = step[expected[prompt_len + kept] as usize]
                    - step[ours[prompt_len + kept] as usize];
                assert!(
                    gap <= 2.0 * bar,
                    "{family} {weight_type}: parts from f32 at new token {kept} where f32's \
                     scores were {gap} apart: not a near tie"
                );
            }
        }
    }
}

/// Continuous batching on every family: sequences that join at different steps, greedy and
/// seeded sampling, each get exactly their solo stream (token ids and text pieces), with one
/// of them past Mistral's window while the others are short.
#[test]
fn continuous_batching_gives_each_sequence_its_solo_stream() {
    use ferroformers::generation::{ContinuousBatcher, StreamToken};
    for family in FAMILIES {
        let model = load(family);
        let tokenizer = tokenizer(family);
        let base = GenerationConfig::from_file(&fixture(&format!(
            "{family}/lm-head/generation_config.json"
        )))
        .unwrap();
        let greedy = base.clone().greedy().with_max_new_tokens(20);
        let sampled = base.clone().sampling(11).with_max_new_tokens(14);
        let cases = [
            (
                "The quick brown fox jumps over the lazy dog, and then",
                &greedy,
                0,
            ),
            ("Hello", &sampled, 1),
            ("In a shocking finding, scientists discovered", &greedy, 3),
        ];
        let solo = |prompt: &str, config: &GenerationConfig| -> Vec<StreamToken> {
            Generator::new(&model, &tokenizer)
                .stream(prompt, config)
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let expected: Vec<_> = cases.iter().map(|(p, c, _)| solo(p, c)).collect();
        let mut batcher = ContinuousBatcher::new(&model, &tokenizer);
        let mut index = HashMap::new();
        let mut got: Vec<Vec<StreamToken>> = vec![Vec::new(); cases.len()];
        for step in 0..200 {
            for (i, (prompt, config, joins_at)) in cases.iter().enumerate() {
                if *joins_at == step {
                    index.insert(batcher.add(*prompt, config).unwrap(), i);
                }
            }
            if batcher.is_empty() && step > 3 {
                break;
            }
            for token in batcher.step().unwrap() {
                got[index[&token.id]].push(token.token.unwrap());
            }
        }
        for (i, (ours, solo)) in got.iter().zip(&expected).enumerate() {
            fixture_sanity(!solo.is_empty(), "a solo stream generates");
            let ids = |tokens: &[StreamToken]| {
                tokens
                    .iter()
                    .map(|t| (t.id, t.text.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(ours), ids(solo), "{family}: sequence {i} in the batch");
        }
    }
}

/// A checkpoint in shards (`model.safetensors.index.json`, as the 3B-and-larger models ship)
/// loads the same model: the Llama fixture split in two, bitwise the same logits.
#[test]
fn a_sharded_checkpoint_loads_the_same_model() {
    let source = fixture("llama/lm-head");
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "model.safetensors" {
            std::fs::copy(&path, folder.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let tensors =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|name| ((*name).clone(), tensors[*name].clone()))
            .collect();
        candle_core::safetensors::save(&shard, folder.path().join(file)).unwrap();
        for name in part {
            weight_map.insert((*name).clone(), Value::from(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        folder.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded =
        LlamaForCausalLM::from_pretrained(&folder.path().to_string_lossy(), &options()).unwrap();
    let reference = reference("llama/lm-head");
    let (ids, mask) = ids_and_mask(&reference);
    let ours = sharded.forward(&ids, Some(&mask), None).unwrap();
    let whole = load("llama").forward(&ids, Some(&mask), None).unwrap();
    assert_eq!(max_abs_diff(&ours, &whole), 0.0);
}
