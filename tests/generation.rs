//! Generation against transformers' `generate` (token for token) and its logits processors,
//! on the tiny GPT-2 fixture. References made by scripts/make_fixtures.py, transformers 4.57.6.

mod common;

use std::collections::HashMap;

use common::{assert_same_len, fixture, fixture_sanity};
use ferroformers::generation::processors::{
    processors_for, LogitsProcessor, MinNewTokens, NoRepeatNGram, RepetitionPenalty, Temperature,
    TopK, TopP,
};
use ferroformers::generation::{
    sample_index, FinishReason, GenerationConfig, Generator, PromptBatch, TokenStream,
};
use ferroformers::{
    Device, Error, FromPretrained, Gpt2LMHeadModel, HubOptions, LoadOptions, Pretrained, Tokenizer,
};
use rand::SeedableRng;

fn model_and_tokenizer() -> (Gpt2LMHeadModel, Tokenizer, Pretrained) {
    let folder = fixture("gpt2/lm-head").to_string_lossy().into_owned();
    let options = LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
    let pretrained = Pretrained::open(&folder, &options.hub).unwrap();
    let model = Gpt2LMHeadModel::from_pretrained(&folder, &options).unwrap();
    (model, pretrained.tokenizer().unwrap(), pretrained)
}

fn cases() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixture("generation/generate.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The model's generation_config.json with the case's settings on top, as `generate(**kwargs)`.
fn config_for(settings: &serde_json::Value) -> GenerationConfig {
    let base = std::fs::read_to_string(fixture("gpt2/lm-head/generation_config.json")).unwrap();
    let mut merged: serde_json::Value = serde_json::from_str(&base).unwrap();
    for (key, value) in settings.as_object().unwrap() {
        merged[key] = value.clone();
    }
    serde_json::from_value(merged).unwrap()
}

fn rows(value: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).unwrap()
}

/// The cases that must run 64 steps without an end token, so that the comparison covers 64
/// steps of the KV cache.
const CASES_OF_64_NEW_TOKENS: [&str; 5] = [
    "greedy",
    "repetition_penalty",
    "no_repeat_ngram",
    "beam_search",
    "batch",
];

fn check_case(name: &str) {
    let (model, tokenizer, _) = model_and_tokenizer();
    let case = &cases()[name];
    let config = config_for(&case["settings"]);
    let prompts =
        PromptBatch::new(rows(&case["input_ids"]), rows(&case["attention_mask"])).unwrap();
    let expected = rows(&case["sequences"]);
    let least_new = expected
        .iter()
        .map(|sequence| sequence.len().saturating_sub(prompts.seq_len()))
        .min()
        .unwrap_or(0);
    let required = if CASES_OF_64_NEW_TOKENS.contains(&name) {
        64
    } else {
        1
    };
    fixture_sanity(
        least_new >= required,
        &format!("{name}: every sequence has at least {required} new tokens, not {least_new}"),
    );
    let ours = Generator::new(&model, &tokenizer)
        .generate_ids(&prompts, &config)
        .unwrap();
    assert_eq!(ours.len(), expected.len(), "{name}: number of sequences");
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(
            a, b,
            "{name}: sequence {i} differs from transformers' generate"
        );
    }
}

#[test]
fn greedy_matches_transformers() {
    check_case("greedy");
}

#[test]
fn greedy_with_repetition_penalty_matches_transformers() {
    check_case("repetition_penalty");
}

#[test]
fn greedy_with_no_repeat_ngram_matches_transformers() {
    check_case("no_repeat_ngram");
}

#[test]
fn beam_search_with_two_returned_sequences_matches_transformers() {
    check_case("beam_search");
}

#[test]
fn batch_of_three_left_padded_prompts_matches_transformers() {
    check_case("batch");
}

#[test]
fn end_token_stops_and_finished_rows_are_padded_like_transformers() {
    check_case("greedy_eos");
    check_case("batch_eos");
}

#[test]
fn min_new_tokens_holds_back_the_end_token_like_transformers() {
    check_case("min_new_tokens");
}

#[test]
fn beam_search_with_finished_hypotheses_matches_transformers() {
    check_case("beam_eos");
    check_case("beam_early_stopping");
    check_case("beam_never");
}

/// Each processor on fixed random scores against the output of transformers' processor.
#[test]
fn processors_match_transformers_on_fixed_logits() {
    let tensors =
        candle_core::safetensors::load(fixture("generation/processors.safetensors"), &Device::Cpu)
            .unwrap();
    let scores: Vec<Vec<f32>> = tensors["scores"].to_vec2().unwrap();
    let input_ids: Vec<Vec<u32>> = tensors["input_ids"]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let processors: HashMap<&str, Box<dyn LogitsProcessor>> = HashMap::from([
        (
            "repetition_penalty_1.5",
            Box::new(RepetitionPenalty::new(1.5).unwrap()) as Box<dyn LogitsProcessor>,
        ),
        (
            "repetition_penalty_0.7",
            Box::new(RepetitionPenalty::new(0.7).unwrap()),
        ),
        (
            "no_repeat_ngram_2",
            Box::new(NoRepeatNGram::new(2).unwrap()),
        ),
        (
            "no_repeat_ngram_3",
            Box::new(NoRepeatNGram::new(3).unwrap()),
        ),
        (
            "min_new_tokens_eos_9",
            Box::new(MinNewTokens::new(2, 5, vec![9])),
        ),
        ("temperature_0.7", Box::new(Temperature::new(0.7).unwrap())),
        ("top_k_5", Box::new(TopK::new(5, 1).unwrap())),
        ("top_k_1_keep_2", Box::new(TopK::new(1, 2).unwrap())),
        ("top_p_0.8", Box::new(TopP::new(0.8, 1).unwrap())),
        ("top_p_0.05", Box::new(TopP::new(0.05, 1).unwrap())),
        ("top_p_0.3_keep_3", Box::new(TopP::new(0.3, 3).unwrap())),
    ]);
    assert_same_len(&input_ids, &scores, "one row of ids per row of scores");
    for (name, processor) in &processors {
        let expected: Vec<Vec<f32>> = tensors[*name].to_vec2().unwrap();
        assert_same_len(&expected, &input_ids, name);
        for (row, (ids, want)) in input_ids.iter().zip(&expected).enumerate() {
            let mut got = scores[row].clone();
            processor.process(ids, &mut got);
            assert_same_len(&got, want, &format!("{name}, row {row}"));
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                // Masked tokens are -inf on both sides; NaN never matches (NaN - x is NaN).
                let same = (g.is_infinite() && g == w) || (g - w).abs() <= 1e-6;
                assert!(
                    same,
                    "{name}, row {row}, token {i}: ours {g}, transformers {w}"
                );
            }
        }
        // transformers' processor changed something, so the comparison is not vacuous.
        fixture_sanity(
            expected != scores,
            &format!("{name} changes the scores in the reference"),
        );
    }
}

#[test]
fn out_of_range_settings_are_errors_that_say_what_is_wrong() {
    let sampling = GenerationConfig::default().sampling(0);
    let cases: Vec<(GenerationConfig, &str)> = vec![
        (
            GenerationConfig {
                temperature: 0.0,
                ..sampling.clone()
            },
            "temperature",
        ),
        (
            GenerationConfig {
                temperature: -1.0,
                ..sampling.clone()
            },
            "temperature",
        ),
        (
            GenerationConfig {
                top_p: 0.0,
                ..sampling.clone()
            },
            "top_p",
        ),
        (
            GenerationConfig {
                top_p: 1.5,
                ..sampling.clone()
            },
            "top_p",
        ),
        (
            GenerationConfig {
                top_k: Some(0),
                ..sampling.clone()
            },
            "top_k",
        ),
        (
            GenerationConfig {
                repetition_penalty: -1.0,
                ..GenerationConfig::default()
            },
            "repetition_penalty",
        ),
        (
            GenerationConfig {
                repetition_penalty: 0.0,
                ..GenerationConfig::default()
            },
            "repetition_penalty",
        ),
        (
            GenerationConfig {
                num_beams: 0,
                ..GenerationConfig::default()
            },
            "num_beams",
        ),
        (
            GenerationConfig {
                num_beams: 2,
                num_return_sequences: 3,
                ..GenerationConfig::default()
            },
            "num_return_sequences",
        ),
        (
            GenerationConfig {
                max_new_tokens: Some(0),
                ..GenerationConfig::default()
            },
            "max_new_tokens",
        ),
        (
            GenerationConfig {
                stop_strings: vec![String::new()],
                ..GenerationConfig::default()
            },
            "stop strings",
        ),
    ];
    for (config, field) in cases {
        match config.validate() {
            Err(Error::InvalidGeneration(message)) => {
                assert!(message.contains(field), "{field}: {message}")
            }
            other => panic!("{field}: expected InvalidGeneration, got {other:?}"),
        }
    }
    assert!(
        TopK::new(0, 1).is_err() && TopP::new(0.0, 1).is_err() && Temperature::new(0.0).is_err()
    );
    assert!(RepetitionPenalty::new(-0.5).is_err() && NoRepeatNGram::new(0).is_err());
}

#[test]
fn max_new_tokens_beyond_the_context_is_an_error() {
    let (model, tokenizer, _) = model_and_tokenizer();
    let config = GenerationConfig::default().with_max_new_tokens(model.config().n_positions);
    let error = Generator::new(&model, &tokenizer)
        .generate(&["Hello"], &config)
        .unwrap_err();
    assert!(matches!(error, Error::InvalidGeneration(_)), "{error:?}");
    assert!(error.to_string().contains("positions"), "{error}");
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let (model, tokenizer, pretrained) = model_and_tokenizer();
    let generator = Generator::new(&model, &tokenizer);
    let config = GenerationConfig::from_source(pretrained.source())
        .unwrap()
        .with_max_new_tokens(30)
        .sampling(7);
    let first = generator
        .generate(&["The quick brown fox", "Hello"], &config)
        .unwrap();
    let second = generator
        .generate(&["The quick brown fox", "Hello"], &config)
        .unwrap();
    assert_eq!(first, second);
    let other_seed = generator
        .generate(
            &["The quick brown fox", "Hello"],
            &config.clone().sampling(8),
        )
        .unwrap();
    assert_ne!(
        first, other_seed,
        "a different seed should give a different sample"
    );
    let greedy = generator
        .generate(&["The quick brown fox"], &config.clone().greedy())
        .unwrap();
    assert_ne!(
        first[0], greedy[0],
        "sampling should not collapse to greedy"
    );
}

/// Pearson's chi-square statistic of observed counts against expected probabilities.
fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &p)| {
            let expected = p * n as f64;
            (c as f64 - expected).powi(2) / expected
        })
        .sum()
}

#[test]
fn sampled_tokens_follow_the_distribution() {
    // 20,000 draws from a fixed distribution; the 0.1% critical value of chi-square with
    // 4 degrees of freedom is 18.47, so a correct sampler fails this about once in 1000 seeds
    // (and this seed is fixed).
    let probs = [0.5f32, 0.2, 0.15, 0.1, 0.05];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1234);
    let mut counts = [0usize; 5];
    for _ in 0..20_000 {
        counts[sample_index(&probs, &mut rng)] += 1;
    }
    let statistic = chi_square(&counts, &probs.map(f64::from));
    assert!(
        statistic < 18.47,
        "chi-square {statistic} for counts {counts:?}"
    );

    // Through the warpers: temperature 0.5 sharpens, top-k 3 keeps the three best.
    let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0];
    let config = GenerationConfig {
        temperature: 0.5,
        top_k: Some(3),
        ..GenerationConfig::default().sampling(0)
    };
    let processors = processors_for(&config, 0).unwrap();
    let mut scores = logits.to_vec();
    for processor in &processors {
        processor.process(&[], &mut scores);
    }
    let kept: Vec<f64> = logits[..3]
        .iter()
        .map(|&l| (f64::from(l) / 0.5).exp())
        .collect();
    let total: f64 = kept.iter().sum();
    let expected: Vec<f64> = kept.iter().map(|k| k / total).collect();
    let probs = ferroformers::kernels::host::softmax(&scores);
    let mut counts = [0usize; 5];
    for _ in 0..20_000 {
        counts[sample_index(&probs, &mut rng)] += 1;
    }
    assert_eq!(
        counts[3] + counts[4],
        0,
        "top-k must remove the two worst tokens"
    );
    // 2 degrees of freedom: 0.1% critical value 13.82.
    let statistic = chi_square(&counts[..3], &expected);
    assert!(
        statistic < 13.82,
        "chi-square {statistic} for counts {counts:?}"
    );
}

#[test]
fn streaming_never_splits_a_multibyte_character() {
    let (_, tokenizer, _) = model_and_tokenizer();
    let text = "naïve café 😀 中文 ok";
    let ids = tokenizer
        .encode(text, &Default::default())
        .unwrap()
        .get_ids()
        .to_vec();
    // The byte-level vocabulary is reduced, so the emoji and CJK bytes are separate tokens:
    // some tokens on their own are not valid UTF-8.
    let broken = ids
        .iter()
        .filter(|&&id| tokenizer.decode(&[id], false).unwrap().contains('\u{FFFD}'))
        .count();
    assert!(
        broken >= 4,
        "the test needs tokens that split characters, found {broken}"
    );

    let mut stream = TokenStream::new(&tokenizer);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.extend(stream.push(id).unwrap());
    }
    pieces.extend(stream.finish().unwrap());
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    assert!(
        pieces.len() > 5,
        "pieces come out as tokens arrive: {pieces:?}"
    );
}

#[test]
fn streamed_pieces_concatenate_to_the_generated_text() {
    let (model, tokenizer, pretrained) = model_and_tokenizer();
    let config = GenerationConfig::from_source(pretrained.source())
        .unwrap()
        .with_max_new_tokens(40);
    let generator = Generator::new(&model, &tokenizer);
    let prompt = "In a shocking finding";
    let mut stream = generator.stream(prompt, &config).unwrap();
    let pieces: Vec<String> = stream.by_ref().map(|token| token.unwrap().text).collect();
    let streamed = stream.generated().unwrap();
    let plain = generator.generate(&[prompt], &config).unwrap();
    assert_eq!(streamed, plain[0]);
    assert_eq!(format!("{prompt}{}", pieces.concat()), streamed.text);
    assert_eq!(streamed.token_ids.len(), 40);
}

#[test]
fn a_stop_string_ends_generation_and_stays_in_the_text() {
    let (model, tokenizer, pretrained) = model_and_tokenizer();
    let generator = Generator::new(&model, &tokenizer);
    let config = GenerationConfig::from_source(pretrained.source())
        .unwrap()
        .with_max_new_tokens(64);
    let prompt = "The quick brown fox";
    let full = generator.generate(&[prompt], &config).unwrap().remove(0);
    // A stop string made of two consecutive new tokens that the text before them lacks, so it
    // is first completed by the second of them.
    let prompt_ids = tokenizer
        .encode(prompt, &Default::default())
        .unwrap()
        .get_ids()
        .to_vec();
    let ids = &full.token_ids;
    let (end, stop) = (10..ids.len() - 1)
        .find_map(|k| {
            let stop = tokenizer.decode(&ids[k..k + 2], true).unwrap();
            let before = tokenizer
                .decode(&[prompt_ids.as_slice(), &ids[..k + 1]].concat(), true)
                .unwrap();
            let clean = stop.chars().count() >= 2 && !stop.contains('\u{FFFD}');
            (clean && !before.contains(&stop)).then_some((k + 2, stop))
        })
        .expect("some pair of new tokens makes a fresh stop string");
    let config = GenerationConfig {
        stop_strings: vec![stop.clone()],
        ..config
    };
    let stopped = generator.generate(&[prompt], &config).unwrap().remove(0);
    assert_eq!(stopped.token_ids, full.token_ids[..end].to_vec());
    assert_eq!(stopped.finish_reason, FinishReason::StopString);
    assert_eq!(full.finish_reason, FinishReason::MaxTokens);
    assert!(
        stopped.text.ends_with(&stop),
        "{:?} should end with {stop:?}",
        stopped.text
    );

    let mut stream = generator.stream(prompt, &config).unwrap();
    let streamed: String = stream.by_ref().map(|token| token.unwrap().text).collect();
    let result = stream.generated().unwrap();
    assert_eq!(result.finish_reason, FinishReason::StopString);
    assert_eq!(result.stop_string.as_deref(), Some(stop.as_str()));
    assert_eq!(format!("{prompt}{streamed}"), stopped.text);
}

#[test]
fn generated_token_ids_end_at_the_end_token() {
    let (model, tokenizer, _) = model_and_tokenizer();
    let case = &cases()["batch_eos"];
    let config = config_for(&case["settings"]);
    let eos = config.eos_token_id[0];
    let prompts: Vec<String> = serde_json::from_value(case["prompts"].clone()).unwrap();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let results = Generator::new(&model, &tokenizer)
        .generate(&prompts, &config)
        .unwrap();
    let expected = rows(&case["sequences"]);
    let prompt_len = rows(&case["input_ids"])[0].len();
    assert_same_len(&results, &expected, "one result per prompt");
    for (result, sequence) in results.iter().zip(&expected) {
        let new = &sequence[prompt_len..];
        let end = new
            .iter()
            .position(|&t| t == eos)
            .map_or(new.len(), |i| i + 1);
        assert_eq!(result.token_ids, new[..end].to_vec());
    }
    assert!(
        results.iter().any(|r| r.token_ids.len() < 64),
        "one row should stop early"
    );
}

#[test]
fn any_of_several_end_tokens_stops_generation() {
    // greedy_eos stops at token 710; listing it after the model's own end token changes nothing.
    let (model, tokenizer, _) = model_and_tokenizer();
    let case = &cases()["greedy_eos"];
    let mut settings = case["settings"].clone();
    let eos = settings["eos_token_id"].as_u64().unwrap();
    settings["eos_token_id"] = serde_json::json!([856, eos]);
    let config = config_for(&settings);
    assert_eq!(config.eos_token_id, vec![856, eos as u32]);
    let prompts =
        PromptBatch::new(rows(&case["input_ids"]), rows(&case["attention_mask"])).unwrap();
    let ours = Generator::new(&model, &tokenizer)
        .generate_ids(&prompts, &config)
        .unwrap();
    assert_eq!(ours, rows(&case["sequences"]));
}

/// How far bf16 weights may move the logits from f32's, at any of the 73 positions of a case's
/// sequence: bf16 keeps 8 bits of mantissa. Measured: 3.0e-2 with f32 activations (portable,
/// AVX2), 3.3e-2 with activations rounded to bf16 as well (AVX-512, `vdpbf16ps`).
const BF16_LOGIT_TOLERANCE: f32 = 0.05;

/// The same for int8, which rounds each weight to a 254th of its output channel's range, a
/// coarser step than bf16's for all but a channel's largest weights. Measured: 4.6e-2 with
/// activations rounded to 16 bits (portable, AVX2).
const INT8_LOGIT_TOLERANCE: f32 = 0.07;

/// int8 on AVX-512 (`vpdpbusd`) also rounds each row of activations to 8 bits over its range,
/// a step 128 times the 16-bit one: this fixture's rows are 64 wide, so a row's outliers set
/// a coarse step. Measured: 6.6e-2.
const INT8_U8_LOGIT_TOLERANCE: f32 = 0.1;

/// Greedy tokens that bf16 and int8 keep equal to f32's before the first difference, in a
/// fixture case; re-measure (the test prints the counts) when a kernel changes how it rounds.
/// bf16 keeps the same counts whether its activations are rounded (AVX-512) or not.
struct EqualTokens {
    case: &'static str,
    /// Distinct tokens among f32's 64: whether the case tests a continuation that loops.
    distinct: usize,
    bf16: usize,
    /// With 16-bit activations (portable, AVX2).
    int8: usize,
    /// With 8-bit activations (AVX-512).
    int8_u8: usize,
}

const GREEDY_TOKENS_EQUAL_TO_F32: [EqualTokens; 2] = [
    // The README's claim: on the fixture's greedy case, all 64 tokens equal in both. Its f32
    // continuation loops over 13 distinct tokens, so this is a weak check on its own.
    EqualTokens {
        case: "greedy",
        distinct: 13,
        bf16: 64,
        int8: 64,
        int8_u8: 64,
    },
    // A continuation that does not loop (45 distinct tokens of 64): greedy search with
    // repetition penalty 1.3, the fixture's only such case (plain greedy search on this random
    // 2-layer model loops: at most 29 distinct of 64 over 200 random prompts). bf16 keeps all
    // 64; int8 keeps 9 (8 with 8-bit activations) and parts from f32 on a near tie (f32's
    // scores 4.8e-3 apart, checked by the test), which any change in rounding may move.
    EqualTokens {
        case: "repetition_penalty",
        distinct: 45,
        bf16: 64,
        int8: 9,
        int8_u8: 8,
    },
];

/// Lower precision changes the weights, so greedy tokens may part from f32's once two
/// candidates are close (the tiny random fixture has nearly flat logits). Asserted, per case:
/// f32 reproduces transformers' tokens; along that whole sequence the logits of bf16 and int8
/// stay within their tolerance of f32's; they keep at least the stated number of tokens equal
/// to f32's; and where they part from f32, f32's scores of the two tokens were within what the
/// tolerance allows, so the difference is a near tie and not a wrong product.
#[test]
fn bf16_and_int8_keep_f32s_greedy_tokens_until_a_near_tie() {
    let (f32_model, tokenizer, _) = model_and_tokenizer();
    // The int8 products of the kernels this machine runs (the layout is chosen at load).
    let u8_activations = ferroformers::kernels::isa::Isa::current().has_avx512();
    eprintln!(
        "int8 activations: {}",
        if u8_activations {
            "8 bits (AVX-512)"
        } else {
            "16 bits"
        }
    );
    let folder = fixture("gpt2/lm-head").to_string_lossy().into_owned();
    let low_precision = [
        (
            "bf16",
            LoadOptions::default().with_weight_type(ferroformers::WeightType::Bf16),
            BF16_LOGIT_TOLERANCE,
        ),
        (
            "int8",
            LoadOptions::default().with_weight_type(ferroformers::WeightType::Int8),
            match u8_activations {
                true => INT8_U8_LOGIT_TOLERANCE,
                false => INT8_LOGIT_TOLERANCE,
            },
        ),
    ]
    .map(|(name, options, tolerance)| {
        let model = Gpt2LMHeadModel::from_pretrained(&folder, &options).unwrap();
        (name, model, tolerance)
    });
    let cases = cases();
    for bar in &GREEDY_TOKENS_EQUAL_TO_F32 {
        let case = &cases[bar.case];
        let config = config_for(&case["settings"]);
        let prompts =
            PromptBatch::new(rows(&case["input_ids"]), rows(&case["attention_mask"])).unwrap();
        let prompt_len = prompts.seq_len();
        let expected = Generator::new(&f32_model, &tokenizer)
            .generate_ids(&prompts, &config)
            .unwrap();
        assert_eq!(expected, rows(&case["sequences"]), "{}: f32", bar.case);
        let [sequence] = expected.as_slice() else {
            panic!("{}: one prompt, one sequence", bar.case)
        };
        let new = &sequence[prompt_len..];
        let mut distinct = new.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        fixture_sanity(
            new.len() == 64 && distinct.len() == bar.distinct,
            &format!(
                "{}: 64 new tokens, {} distinct (found {}, {})",
                bar.case,
                bar.distinct,
                new.len(),
                distinct.len()
            ),
        );

        // Every position's logits, the whole f32 sequence fed at once (no cache).
        let ids = ferroformers::Tensor::new(vec![sequence.clone()], &Device::Cpu).unwrap();
        let logits =
            |model: &Gpt2LMHeadModel| model.forward(&ids, None, None).unwrap().squeeze(0).unwrap();
        let f32_logits = logits(&f32_model);
        // f32's scores for new token k, after the case's processors (repetition penalty).
        let f32_scores = |k: usize| -> Vec<f32> {
            let mut scores: Vec<f32> = f32_logits
                .get(prompt_len + k - 1)
                .unwrap()
                .to_vec1()
                .unwrap();
            for processor in processors_for(&config, prompt_len).unwrap() {
                processor.process(&sequence[..prompt_len + k], &mut scores);
            }
            scores
        };
        for (name, model, tolerance) in &low_precision {
            // Processors scale a score by at most the repetition penalty, so two scores that
            // each moved by at most the tolerance can swap order only if they were this close.
            let near_tie = 2.0 * tolerance * config.repetition_penalty.max(1.0);
            let what = format!("{}: {name}", bar.case);
            let moved = common::max_abs_diff(&logits(model), &f32_logits);
            let ours = Generator::new(model, &tokenizer)
                .generate_ids(&prompts, &config)
                .unwrap();
            let [our_sequence] = ours.as_slice() else {
                panic!("{what}: one prompt, one sequence")
            };
            let our_new = &our_sequence[prompt_len..];
            assert_same_len(our_new, new, &format!("{what}: new tokens"));
            let kept = our_new.iter().zip(new).take_while(|(a, b)| a == b).count();
            eprintln!(
                "{what}: logits within {moved:.2e} of f32's along f32's {} tokens ({} distinct); \
                 greedy tokens equal to f32's before the first difference: {kept}",
                new.len(),
                distinct.len()
            );
            assert!(
                moved <= *tolerance,
                "{what}: logits differ from f32's by {moved} > {tolerance}"
            );
            let least = match (*name, u8_activations) {
                ("bf16", _) => bar.bf16,
                (_, true) => bar.int8_u8,
                (_, false) => bar.int8,
            };
            assert!(
                kept >= least,
                "{what}: {kept} greedy tokens equal to f32's, fewer than {least}"
            );
            if kept < new.len() {
                let scores = f32_scores(kept);
                let (theirs, ours) = (new[kept] as usize, our_new[kept] as usize);
                let gap = scores[theirs] - scores[ours];
                eprintln!("{what}: parts at token {kept}: f32 score gap {gap:.2e}");
                assert!(
                    gap <= near_tie,
                    "{what}: token {kept} differs where f32 preferred its own by {gap} > {near_tie}"
                );
            }
        }
    }
}
