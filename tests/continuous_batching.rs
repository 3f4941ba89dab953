//! Continuous batching (`generation::ContinuousBatcher`): sequences with their own prompts and
//! settings, joining at different steps and some cancelled, each get exactly what
//! `Generator::stream` gives them alone (token for token, text piece for text piece,
//! log-probabilities within 1e-5); one forward pass per step serves every running sequence;
//! and a row of the ragged decoding step is bitwise what its sequence gets alone, whatever
//! the other rows, in f32, bf16 and int8, on a model whose MLP is wide enough for the GEMM to
//! cut its sums into blocks.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::gpt2::{model_and_tokenizer, options, CountingModel};
use common::{assert_close_slices, fixture, fixture_sanity};
use ferroformers::generation::{
    CausalLM, ContinuousBatcher, FinishReason, GenerationConfig, Generator, SequenceId, StreamToken,
};
use ferroformers::pipelines::{ChatTemplate, Message, Role};
use ferroformers::{
    DType, Device, FromPretrained, Gpt2LMHeadModel, KvCache, Tensor, Tokenizer, WeightType,
};

/// Log-probabilities of a sequence in the batch against its solo stream (f32 log-softmax).
const LOGPROB_TOLERANCE: f32 = 1e-5;

/// A sequence of the scenario: its prompt and settings, the step it joins at, and the number
/// of its tokens after which it is cancelled, if it is.
struct Case {
    name: &'static str,
    prompt: String,
    config: GenerationConfig,
    joins_at: usize,
    cancel_after: Option<usize>,
}

fn solo(model: &Gpt2LMHeadModel, tokenizer: &Tokenizer, case: &Case) -> Vec<StreamToken> {
    Generator::new(model, tokenizer)
        .stream(&case.prompt, &case.config)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The cases: greedy with log-probabilities, sampling with seeds and warpers, a stop string
/// and an end token (each taken from a solo run, so that they do end the sequence), the
/// n-gram ban and repetition penalty, a chat prompt, two cancelled mid-way, one cancelled
/// before it joins.
fn cases(model: &Gpt2LMHeadModel, tokenizer: &Tokenizer, base: &GenerationConfig) -> Vec<Case> {
    let greedy = base.clone().greedy().with_max_new_tokens(30);
    let chat = ChatTemplate::from_tokenizer_config(
        &fixture("chat_templates/chatml_generation/tokenizer_config.json"),
        None,
    )
    .unwrap()
    .expect("the fixture has a template")
    .render(
        &[
            Message::new(Role::System, "You are brief."),
            Message::new(Role::User, "Name a fox."),
        ],
        true,
    )
    .unwrap();
    let case = |name, prompt: &str, config: GenerationConfig, joins_at| Case {
        name,
        prompt: prompt.to_string(),
        config,
        joins_at,
        cancel_after: None,
    };
    let mut sampled = base.clone().sampling(7).with_max_new_tokens(25);
    sampled.temperature = 0.8;
    sampled.top_k = Some(20);
    let mut nucleus = base
        .clone()
        .sampling(11)
        .with_max_new_tokens(40)
        .with_logprobs(2);
    nucleus.top_p = 0.9;
    nucleus.repetition_penalty = 1.3;
    let mut ngram = greedy.clone().with_max_new_tokens(12);
    ngram.no_repeat_ngram_size = 2;

    // A stop string from a solo run's text (tokens 6 to 8), and an end token it chooses at
    // its 9th step: both must then end their sequences early.
    let probe = case("probe", "A fox jumps over", greedy.clone(), 0);
    let probe_tokens = solo(model, tokenizer, &probe);
    let stop: String = probe_tokens[6..8].iter().map(|t| t.text.as_str()).collect();
    fixture_sanity(
        !stop.trim().is_empty(),
        "the probe's tokens 6-8 make a stop string",
    );
    let mut stopping = greedy.clone();
    stopping.stop_strings = vec![stop];
    let mut ending = base.clone().greedy().with_max_new_tokens(30);
    ending.eos_token_id = vec![probe_tokens[8].id];

    let mut cases = vec![
        case(
            "greedy+logprobs",
            "The quick brown fox",
            greedy.clone().with_logprobs(3),
            0,
        ),
        case("sampled seed 7", "Once upon a time", sampled.clone(), 0),
        case("stop string", "A fox jumps over", stopping, 2),
        case("end token", "A fox jumps over", ending, 3),
        case("nucleus seed 11", "Hello there", nucleus, 3),
        case("same seed, other prompt", "The lazy dog", sampled, 5),
        case("chat", &chat, greedy.clone(), 6),
        case("n-gram ban", "the the the the", ngram, 9),
        case("cancelled", "Zebras", greedy.clone(), 1),
        case("cancelled late", "Quickly", greedy.clone(), 4),
        case("cancelled before joining", "Never read", greedy, 8),
    ];
    cases[8].cancel_after = Some(3);
    cases[9].cancel_after = Some(11);
    cases[10].cancel_after = Some(0);
    cases
}

/// Sequences joining at different steps, with their own settings, some cancelled: each gets
/// its solo stream token for token (ids, text pieces, finish reasons; log-probabilities within
/// 1e-5; a cancelled one a prefix of it); every step runs one forward pass over all running
/// sequences plus one per joining sequence; cancelled sequences take no further work.
#[test]
fn each_sequence_of_the_batch_gets_its_solo_stream() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let cases = cases(&model, &tokenizer, &base);
    let expected: Vec<Vec<StreamToken>> = cases
        .iter()
        .map(|case| solo(&model, &tokenizer, case))
        .collect();
    let reasons: Vec<_> = expected
        .iter()
        .map(|tokens| tokens.last().and_then(|t| t.finish_reason))
        .collect();
    eprintln!("solo finish reasons: {reasons:?}");
    fixture_sanity(
        reasons[2] == Some(FinishReason::StopString),
        "the stop-string case stops on it",
    );
    fixture_sanity(
        reasons[3] == Some(FinishReason::EndOfSequence),
        "the end-token case ends on it",
    );

    let counting = CountingModel::new(&model);
    let mut batcher = ContinuousBatcher::new(&counting, &tokenizer);
    let mut ids: BTreeMap<SequenceId, usize> = BTreeMap::new();
    let mut got: Vec<Vec<StreamToken>> = vec![Vec::new(); cases.len()];
    // What the counts must be: sequences with a token that are still running before a step,
    // and prompts read.
    let (mut expected_rows, mut expected_prefills) = (Vec::new(), 0);
    let mut running = 0;
    let last_join = cases.iter().map(|case| case.joins_at).max().unwrap();
    for step in 0.. {
        for (index, case) in cases.iter().enumerate() {
            if case.joins_at == step {
                ids.insert(batcher.add(&case.prompt, &case.config).unwrap(), index);
            }
        }
        // Cancel those that reached their count (the one at 0 before its prompt is read).
        for (&id, &index) in &ids {
            let due = cases[index].cancel_after == Some(got[index].len());
            if due && batcher.cancel(id) && !got[index].is_empty() {
                running -= 1;
            }
        }
        if batcher.is_empty() && step > last_join {
            break;
        }
        if running > 0 {
            expected_rows.push(running);
        }
        let tokens = batcher.step().unwrap();
        for token in tokens {
            let index = ids[&token.id];
            let token = token.token.unwrap();
            if got[index].is_empty() {
                expected_prefills += 1;
                running += 1;
            }
            if token.finish_reason.is_some() {
                running -= 1;
            }
            got[index].push(token);
        }
        assert!(step < 200, "the batcher never ran dry");
    }

    for (index, case) in cases.iter().enumerate() {
        let (got, expected) = (&got[index], &expected[index]);
        let length = case.cancel_after.unwrap_or(expected.len());
        assert_eq!(got.len(), length, "{}: tokens generated", case.name);
        for (position, (ours, solo)) in got.iter().zip(expected).enumerate() {
            let what = format!("{} token {position}", case.name);
            assert_eq!(ours.id, solo.id, "{what}: id");
            assert_eq!(ours.text, solo.text, "{what}: text piece");
            assert_eq!(
                ours.finish_reason, solo.finish_reason,
                "{what}: finish reason"
            );
            match (&ours.logprob, &solo.logprob) {
                (Some(ours), Some(solo)) => {
                    assert_close_slices(
                        &[ours.logprob],
                        &[solo.logprob],
                        LOGPROB_TOLERANCE,
                        &format!("{what}: logprob"),
                    );
                    let ids = |l: &ferroformers::generation::TokenLogprob| {
                        l.top_logprobs.iter().map(|t| t.id).collect::<Vec<_>>()
                    };
                    assert_eq!(ids(ours), ids(solo), "{what}: top tokens");
                    let values = |l: &ferroformers::generation::TokenLogprob| {
                        l.top_logprobs.iter().map(|t| t.logprob).collect::<Vec<_>>()
                    };
                    assert_close_slices(
                        &values(ours),
                        &values(solo),
                        LOGPROB_TOLERANCE,
                        &format!("{what}: top logprobs"),
                    );
                }
                (None, None) => {}
                other => panic!("{what}: logprobs differ in presence: {other:?}"),
            }
        }
    }
    let rows = counting.decode_rows();
    eprintln!(
        "rows per decoding step: {rows:?}; prompts read: {}",
        counting.forward_passes()
    );
    assert_eq!(
        rows, expected_rows,
        "one forward pass per step over the running sequences"
    );
    assert_eq!(
        counting.forward_passes(),
        expected_prefills,
        "one forward pass per prompt read"
    );
    assert_eq!(
        expected_prefills,
        cases.len() - 1,
        "all but the one cancelled early joined"
    );
    assert!(
        rows.iter().any(|&r| r >= 5),
        "several sequences shared steps"
    );
}

/// GPT-2 behind a `CausalLM` of its own that keeps the trait's default `decode_scores` (each
/// sequence decoded by a forward pass of its own), as another model would at first.
struct DefaultDecoding<'a>(&'a Gpt2LMHeadModel);

impl CausalLM for DefaultDecoding<'_> {
    type Cache = KvCache;

    fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> ferroformers::Result<Tensor> {
        CausalLM::forward(self.0, input_ids, attention_mask, cache)
    }

    fn new_cache(&self) -> KvCache {
        CausalLM::new_cache(self.0)
    }

    fn max_positions(&self) -> usize {
        CausalLM::max_positions(self.0)
    }

    fn device(&self) -> &Device {
        CausalLM::device(self.0)
    }
}

/// The trait's default `decode_scores` serves the batcher too: three sequences, one joining
/// late, each equal to its solo stream (ids, text, finish reasons, log-probabilities exactly).
#[test]
fn a_model_with_the_default_decoding_step_gets_the_solo_streams() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let plain = DefaultDecoding(&model);
    let configs = [
        base.clone()
            .greedy()
            .with_max_new_tokens(15)
            .with_logprobs(2),
        base.clone().sampling(21).with_max_new_tokens(12),
        base.clone().greedy().with_max_new_tokens(9),
    ];
    let prompts = ["The quick brown fox", "Once upon a time", "Hello there"];
    let mut batcher = ContinuousBatcher::new(&plain, &tokenizer);
    let mut ids = Vec::new();
    let mut got: HashMap<SequenceId, Vec<StreamToken>> = HashMap::new();
    for step in 0..40 {
        if step == 0 || step == 4 {
            let next = ids.len();
            ids.push(batcher.add(prompts[next], &configs[next]).unwrap());
            if step == 0 {
                ids.push(batcher.add(prompts[1], &configs[1]).unwrap());
            }
        }
        for token in batcher.step().unwrap() {
            got.entry(token.id).or_default().push(token.token.unwrap());
        }
    }
    assert!(batcher.is_empty(), "all finished within 40 steps");
    for (index, id) in ids.iter().enumerate() {
        let solo: Vec<StreamToken> = Generator::new(&model, &tokenizer)
            .stream(prompts[index], &configs[index])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got[id], solo, "sequence {index}");
    }
}

/// `add` checks the prompt and settings as `Generator::stream` does, and a refused sequence
/// takes no place in the batch.
#[test]
fn the_batcher_refuses_what_a_stream_refuses() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let mut batcher = ContinuousBatcher::new(&model, &tokenizer);
    let generator = Generator::new(&model, &tokenizer);
    let mut beams = base.clone().with_max_new_tokens(5);
    beams.num_beams = 2;
    let too_long = base.clone().with_max_new_tokens(10_000);
    let mut bad_top_p = base.clone().sampling(1);
    bad_top_p.top_p = 1.5;
    for config in [beams, too_long, bad_top_p] {
        let ours = batcher.add("The quick brown fox", &config).unwrap_err();
        let solo = generator
            .stream("The quick brown fox", &config)
            .unwrap_err();
        assert_eq!(ours.to_string(), solo.to_string());
    }
    assert!(batcher.is_empty());
    assert!(batcher.step().unwrap().is_empty());
}

/// Sizes of the random model: an MLP of 1,536 inputs to `mlp.c_proj`, past the GEMM's K block
/// of 768, so that a product of more than six rows sums each row in blocks unless the decoding
/// step keeps it from doing so.
const EMBD: usize = 64;
const INNER: usize = 1536;
const VOCAB: usize = 300;

/// A random GPT-2 checkpoint of those sizes in `folder`.
fn write_random_gpt2(folder: &std::path::Path) {
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": VOCAB, "n_positions": 64, "n_embd": EMBD, "n_layer": 2, "n_head": 4,
        "n_inner": INNER, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
    });
    std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
    let cpu = Device::Cpu;
    let random =
        |shape: &[usize], mean: f32, std: f32| Tensor::randn(mean, std, shape, &cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("wte.weight".into(), random(&[VOCAB, EMBD], 0.0, 0.5));
    tensors.insert("wpe.weight".into(), random(&[64, EMBD], 0.0, 0.1));
    let shapes: [(&str, &[usize]); 8] = [
        ("attn.c_attn.weight", &[EMBD, 3 * EMBD]),
        ("attn.c_attn.bias", &[3 * EMBD]),
        ("attn.c_proj.weight", &[EMBD, EMBD]),
        ("attn.c_proj.bias", &[EMBD]),
        ("mlp.c_fc.weight", &[EMBD, INNER]),
        ("mlp.c_fc.bias", &[INNER]),
        ("mlp.c_proj.weight", &[INNER, EMBD]),
        ("mlp.c_proj.bias", &[EMBD]),
    ];
    for layer in 0..2 {
        for (name, shape) in shapes {
            tensors.insert(format!("h.{layer}.{name}"), random(shape, 0.0, 0.1));
        }
        for norm in ["ln_1", "ln_2"] {
            tensors.insert(
                format!("h.{layer}.{norm}.weight"),
                random(&[EMBD], 1.0, 0.1),
            );
            tensors.insert(format!("h.{layer}.{norm}.bias"), random(&[EMBD], 0.0, 0.1));
        }
    }
    tensors.insert("ln_f.weight".into(), random(&[EMBD], 1.0, 0.1));
    tensors.insert("ln_f.bias".into(), random(&[EMBD], 0.0, 0.1));
    candle_core::safetensors::save(&tensors, folder.join("model.safetensors")).unwrap();
}

/// A row of `Gpt2LMHeadModel::decode_step` is bitwise the logits that `forward_last` (the
/// path of a stream alone) gives its sequence, with 9 rows, with 3, and alone, over four
/// steps of sequences of different lengths; in f32, bf16 and int8 weights.
#[test]
fn a_decoding_row_is_bitwise_its_sequence_alone_whatever_the_batch() {
    // The packed kernels of this CPU's best instruction set (`kernel_paths.rs` covers the others).
    let isa = ferroformers::kernels::isa::Isa::current().name();
    eprintln!("decoding rows on the {isa} kernels");
    let folder = tempfile::tempdir().unwrap();
    write_random_gpt2(folder.path());
    let path = folder.path().to_str().unwrap();
    let loads = [
        ("f32", options()),
        ("bf16", options().with_weight_type(WeightType::Bf16)),
        ("int8", options().with_weight_type(WeightType::Int8)),
    ];
    for (format, load) in loads {
        let model = Gpt2LMHeadModel::from_pretrained(path, &load).unwrap();
        let rows = 9;
        // Prompts of 1 to 9 tokens, each in a cache of its own.
        let prompts: Vec<Vec<u32>> = (0..rows)
            .map(|row| {
                (0..=row)
                    .map(|i| ((row * 31 + i * 17) % VOCAB) as u32)
                    .collect()
            })
            .collect();
        let mut caches: Vec<KvCache> = prompts
            .iter()
            .map(|prompt| {
                let mut cache = model.new_cache();
                let ids = Tensor::new(prompt.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                model.forward_last(&ids, None, Some(&mut cache)).unwrap();
                cache
            })
            .collect();
        let mut tokens: Vec<u32> = (0..rows).map(|row| (row * 7 % VOCAB) as u32).collect();
        for step in 0..4 {
            // Alone, as a stream decodes: one token, a mask over everything so far.
            let alone: Vec<Vec<f32>> = (0..rows)
                .map(|row| {
                    let mut cache = caches[row].clone();
                    let ids = Tensor::new(&[[tokens[row]]], &Device::Cpu).unwrap();
                    let mask =
                        Tensor::ones((1, cache.len() + 1), DType::U32, &Device::Cpu).unwrap();
                    let logits = model
                        .forward_last(&ids, Some(&mask), Some(&mut cache))
                        .unwrap();
                    logits
                        .to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                })
                .collect();
            // The first three rows by themselves.
            let mut few: Vec<KvCache> = caches[..3].to_vec();
            let mut few_refs: Vec<&mut KvCache> = few.iter_mut().collect();
            let some = model.decode_step(&tokens[..3], &mut few_refs).unwrap();
            let some: Vec<Vec<f32>> = some.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
            // All nine.
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let all = model.decode_step(&tokens, &mut refs).unwrap();
            let all: Vec<Vec<f32>> = all.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
            for row in 0..rows {
                assert!(
                    all[row].iter().all(|v| v.is_finite()),
                    "{isa} {format} step {step} row {row}: finite"
                );
                assert!(
                    all[row] == alone[row],
                    "{isa} {format} step {step} row {row}: 9 rows differ from alone by up to {:e}",
                    all[row]
                        .iter()
                        .zip(&alone[row])
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max)
                );
                if row < 3 {
                    assert!(
                        some[row] == alone[row],
                        "{isa} {format} step {step} row {row}: 3 rows"
                    );
                }
            }
            // Each row's greedy token goes next, as in generation.
            tokens = alone
                .iter()
                .map(|logits| {
                    (0..logits.len())
                        .fold(0, |best, i| if logits[i] > logits[best] { i } else { best })
                        as u32
                })
                .collect();
        }
        eprintln!("{format}: 9 rows, 3 rows and one row agree bitwise over 4 steps");
    }
}
