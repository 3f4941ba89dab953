//! Generation as a server drives it: streams that stop when dropped or told to (counted in
//! forward passes), finish reasons and token counts, log-probabilities against transformers'
//! `output_logits`, and chat templates against transformers' `apply_chat_template`. References
//! made by scripts/make_fixtures.py (transformers 4.57.6) on the tiny GPT-2 fixture.

mod common;

use std::sync::Arc;

use common::gpt2::{model_and_tokenizer, options, CountingModel};
use common::{
    assert_close_slices, assert_same_len, fixture, fixture_json, fixture_model, fixture_sanity,
};
use ferroformers::generation::{
    FinishReason, Generated, GenerationConfig, Generator, MAX_TOP_LOGPROBS,
};
use ferroformers::pipelines::{
    BatchOptions, ChatTemplate, Conversation, Message, Pipeline, Role, TextGenerationOptions,
    TextGenerationPipeline,
};
use ferroformers::tokenizer::EncodeOptions;
use ferroformers::Error;
use serde_json::Value;

/// Log-probabilities within this of transformers' (f32, log-softmax over the vocabulary).
const LOGPROB_TOLERANCE: f32 = 1e-4;

const PROMPT: &str = "The quick brown fox";

/// Taking k tokens of a stream runs exactly k forward passes (the first reads the prompt and
/// chooses the first token); dropping the stream runs no more. Measured: k forward passes for
/// k = 1, 3, 7, with 40 allowed.
#[test]
fn dropping_a_stream_stops_generation_within_one_step() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let config = base.with_max_new_tokens(40);
    for k in [1, 3, 7] {
        let counting = CountingModel::new(&model);
        let generator = Generator::new(&counting, &tokenizer);
        let stream = generator.stream(PROMPT, &config).unwrap();
        assert_eq!(
            counting.forward_passes(),
            0,
            "creating a stream computes nothing"
        );
        let taken: Vec<_> = stream.take(k).map(Result::unwrap).collect();
        assert_eq!(taken.len(), k);
        // `take` dropped the stream after its k-th item.
        eprintln!(
            "took {k} tokens of 40: {} forward passes",
            counting.forward_passes()
        );
        assert_eq!(
            counting.forward_passes(),
            k,
            "forward passes after taking {k} tokens"
        );
        // The tokens are the first k of the full generation.
        let full = Generator::new(&model, &tokenizer)
            .generate(&[PROMPT], &config)
            .unwrap()
            .remove(0);
        let ids: Vec<u32> = taken.iter().map(|t| t.id).collect();
        assert_eq!(ids, full.token_ids[..k].to_vec());
        assert!(taken.iter().all(|t| t.finish_reason.is_none()));
    }
}

/// A stream stopped after its k-th token runs no further forward pass, and the result so far
/// says `Cancelled` with k completion tokens.
#[test]
fn a_stream_stopped_early_says_cancelled() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let config = base.with_max_new_tokens(40);
    let counting = CountingModel::new(&model);
    let generator = Generator::new(&counting, &tokenizer);
    let mut stream = generator.stream(PROMPT, &config).unwrap();
    for token in stream.by_ref().take(5) {
        token.unwrap();
    }
    let result = stream.generated().unwrap();
    eprintln!(
        "break after 5 tokens of 40: {} forward passes",
        counting.forward_passes()
    );
    assert_eq!(counting.forward_passes(), 5);
    assert_eq!(result.finish_reason, FinishReason::Cancelled);
    assert_eq!(result.completion_tokens, 5);
    assert_eq!(result.token_ids.len(), 5);
    let prompt_tokens = tokenizer
        .encode(PROMPT, &EncodeOptions::default())
        .unwrap()
        .len();
    assert_eq!(result.prompt_tokens, prompt_tokens);
}

/// A stream that runs to its end runs one forward pass per token, none after the last, and
/// its last token says why it ended.
#[test]
fn a_stream_to_the_end_runs_one_forward_pass_per_token() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let config = base.with_max_new_tokens(12);
    let counting = CountingModel::new(&model);
    let generator = Generator::new(&counting, &tokenizer);
    let mut stream = generator.stream(PROMPT, &config).unwrap();
    let tokens: Vec<_> = stream.by_ref().map(Result::unwrap).collect();
    assert_eq!(tokens.len(), 12);
    assert_eq!(counting.forward_passes(), 12);
    assert!(stream.next().is_none(), "an ended stream stays ended");
    assert_eq!(counting.forward_passes(), 12);
    let reasons: Vec<_> = tokens.iter().map(|t| t.finish_reason).collect();
    assert_eq!(reasons[11], Some(FinishReason::MaxTokens));
    assert!(reasons[..11].iter().all(Option::is_none));
    let result = stream.generated().unwrap();
    let plain = Generator::new(&model, &tokenizer)
        .generate(&[PROMPT], &config)
        .unwrap()
        .remove(0);
    assert_eq!(result, plain);
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(format!("{PROMPT}{text}"), plain.text);
}

/// The generate.json cases whose end token stops generation early: finish reasons and
/// counts, batched and alone, streamed and not, on transformers' token ids.
#[test]
fn finish_reasons_and_counts_follow_the_end_token_batch_and_single_alike() {
    let (model, tokenizer, _) = model_and_tokenizer();
    let cases = fixture_json("generation/generate.json");
    let case = &cases["batch_eos"];
    let mut config: GenerationConfig = serde_json::from_value(case["settings"].clone()).unwrap();
    config.max_new_tokens = Some(64);
    let eos = config.eos_token_id[0];
    let prompts: Vec<String> = serde_json::from_value(case["prompts"].clone()).unwrap();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let generator = Generator::new(&model, &tokenizer);
    let batch = generator.generate(&prompts, &config).unwrap();
    assert_same_len(&batch, &prompts, "one result per prompt");
    let expected: Vec<Vec<u32>> = serde_json::from_value(case["sequences"].clone()).unwrap();
    let padded_len = case["input_ids"][0].as_array().unwrap().len();
    let mut reasons = Vec::new();
    for ((result, prompt), sequence) in batch.iter().zip(&prompts).zip(&expected) {
        let new = &sequence[padded_len..];
        let (want_len, want_reason) = match new.iter().position(|&t| t == eos) {
            Some(at) => (at + 1, FinishReason::EndOfSequence),
            None => (64, FinishReason::MaxTokens),
        };
        assert_eq!(result.token_ids, new[..want_len].to_vec(), "{prompt}");
        assert_eq!(result.finish_reason, want_reason, "{prompt}");
        assert_eq!(result.completion_tokens, want_len);
        let prompt_tokens = tokenizer
            .encode(*prompt, &EncodeOptions::default())
            .unwrap()
            .len();
        assert_eq!(result.prompt_tokens, prompt_tokens, "{prompt}");
        reasons.push(result.finish_reason);
        // Alone, and streamed: the same result.
        let alone = generator.generate(&[prompt], &config).unwrap().remove(0);
        assert_eq!(&alone, result, "{prompt}: batch == single");
        let mut stream = generator.stream(prompt, &config).unwrap();
        for token in stream.by_ref() {
            token.unwrap();
        }
        let streamed = stream.generated().unwrap();
        assert_eq!(&streamed, result, "{prompt}: streamed == batch");
    }
    fixture_sanity(
        reasons.contains(&FinishReason::EndOfSequence)
            && reasons.contains(&FinishReason::MaxTokens),
        "batch_eos has a row that meets its end token and one that runs to the limit",
    );
}

#[test]
fn finish_reasons_serialize_as_openai_names_them() {
    let names: Vec<Value> = [
        FinishReason::EndOfSequence,
        FinishReason::StopString,
        FinishReason::MaxTokens,
        FinishReason::Cancelled,
    ]
    .iter()
    .map(|r| serde_json::to_value(r).unwrap())
    .collect();
    assert_eq!(names, ["stop", "stop", "length", "cancelled"]);
}

/// Log-probabilities against transformers: log-softmax of `output_logits` (the raw logits)
/// for the chosen token and the 20 best, step by step, within 1e-4; the ids of the 20 best
/// exactly. With a repetition penalty the processed scores differ from the raw ones, and ours
/// follow the raw ones.
#[test]
fn logprobs_match_the_log_softmax_of_transformers_raw_logits() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let references = fixture_json("generation/logprobs.json");
    let generator = Generator::new(&model, &tokenizer);
    for (name, case) in references.as_object().unwrap() {
        let steps = case["steps"].as_array().unwrap();
        let mut config = base.clone().with_logprobs(MAX_TOP_LOGPROBS);
        config.max_new_tokens = case["settings"]["max_new_tokens"]
            .as_u64()
            .map(|n| n as usize);
        if let Some(penalty) = case["settings"]["repetition_penalty"].as_f64() {
            config.repetition_penalty = penalty as f32;
        }
        let result = generator
            .generate(&[case["prompt"].as_str().unwrap()], &config)
            .unwrap()
            .remove(0);
        let logprobs = result.logprobs.clone().expect("logprobs were asked for");
        assert_same_len(&logprobs, steps, &format!("{name}: one per new token"));
        assert_eq!(
            result.prompt_tokens as u64,
            case["prompt_tokens"].as_u64().unwrap()
        );
        let floats = |v: &Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        let mut raw_differs_from_processed = false;
        for (i, (ours, theirs)) in logprobs.iter().zip(steps).enumerate() {
            let what = format!("{name}, token {i}");
            assert_eq!(
                result.token_ids[i] as u64,
                theirs["token"].as_u64().unwrap(),
                "{what}"
            );
            assert_close_slices(
                &[ours.logprob],
                &[theirs["logprob"].as_f64().unwrap() as f32],
                LOGPROB_TOLERANCE,
                &what,
            );
            let ids: Vec<u64> = ours.top_logprobs.iter().map(|t| t.id as u64).collect();
            let their_ids: Vec<u64> = theirs["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(ids, their_ids, "{what}: the 20 best tokens");
            let values: Vec<f32> = ours.top_logprobs.iter().map(|t| t.logprob).collect();
            assert_close_slices(
                &values,
                &floats(&theirs["top_logprobs"]),
                LOGPROB_TOLERANCE,
                &what,
            );
            let processed = theirs["processed_logprob"].as_f64().unwrap() as f32;
            raw_differs_from_processed |= (processed - ours.logprob).abs() > 1e-2;
        }
        if name == "repetition_penalty" {
            fixture_sanity(
                raw_differs_from_processed,
                "the repetition penalty moves some processed log-probability away from the raw one",
            );
        }
        // The stream reports the same numbers.
        let streamed: Vec<_> = generator
            .stream(case["prompt"].as_str().unwrap(), &config)
            .unwrap()
            .map(|t| t.unwrap().logprob.unwrap())
            .collect();
        assert_eq!(streamed, logprobs, "{name}: streamed logprobs");
    }
}

#[test]
fn logprob_settings_out_of_range_are_errors() {
    let (model, tokenizer, base) = model_and_tokenizer();
    let generator = Generator::new(&model, &tokenizer);
    let too_many = base.clone().with_max_new_tokens(2).with_logprobs(21);
    let error = generator.generate(&[PROMPT], &too_many).unwrap_err();
    assert!(error.to_string().contains("top_logprobs"), "{error}");
    let beams = GenerationConfig {
        num_beams: 2,
        ..base.with_max_new_tokens(2).with_logprobs(0)
    };
    let error = generator.generate(&[PROMPT], &beams).unwrap_err();
    assert!(error.to_string().contains("beam"), "{error}");
}

fn chat_references() -> Value {
    fixture_json("chat_templates/reference.json")
}

fn messages(value: &Value) -> Vec<Message> {
    serde_json::from_value(value.clone()).unwrap()
}

/// Both forms of `chat_template` in tokenizer_config.json render as transformers'
/// `apply_chat_template(tokenize=False)` does, character for character, and tokenize to its
/// `tokenize=True` ids.
#[test]
fn chat_templates_render_and_tokenize_as_transformers() {
    let (_, tokenizer, _) = model_and_tokenizer();
    let references = chat_references();
    let no_specials = EncodeOptions {
        add_special_tokens: false,
        ..EncodeOptions::default()
    };
    let mut compared = 0;
    for (name, cases) in references["templates"].as_object().unwrap() {
        let path = fixture(&format!("chat_templates/{name}/tokenizer_config.json"));
        let template = ChatTemplate::from_tokenizer_config(&path, None)
            .unwrap()
            .expect("the fixture has a template");
        for (conversation, messages_json) in references["conversations"].as_object().unwrap() {
            let messages = messages(messages_json);
            for (prompt, suffix) in [(false, "plain"), (true, "generation_prompt")] {
                let case = &cases[format!("{conversation}/{suffix}")];
                let text = template.render(&messages, prompt).unwrap();
                assert_eq!(
                    text,
                    case["text"].as_str().unwrap(),
                    "{name} {conversation} {suffix}"
                );
                let ids = tokenizer.encode(text.as_str(), &no_specials).unwrap();
                let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
                assert_eq!(
                    ids.get_ids(),
                    want.as_slice(),
                    "{name} {conversation} {suffix}"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 12);
}

/// The named-template form: `tool_use` picked by name renders `tojson` as Python's
/// `json.dumps` writes it (no HTML escapes, ", " and ": "); a name that is not there is an
/// error naming the ones that are.
#[test]
fn a_named_template_is_chosen_by_name_and_tojson_writes_python_json() {
    let references = chat_references();
    let path = fixture("chat_templates/llama/tokenizer_config.json");
    let tools = ChatTemplate::from_tokenizer_config(&path, Some("tool_use"))
        .unwrap()
        .unwrap();
    let messages = messages(&references["conversations"]["with_system"]);
    assert_eq!(
        tools.render(&messages, false).unwrap(),
        references["templates"]["llama"]["with_system/tool_use"]["text"]
            .as_str()
            .unwrap()
    );
    let error = ChatTemplate::from_tokenizer_config(&path, Some("nope")).unwrap_err();
    assert!(matches!(error, Error::ChatTemplate(_)), "{error:?}");
    assert!(error.to_string().contains("tool_use"), "{error}");
}

#[test]
fn raise_exception_in_a_template_is_an_error_with_its_message() {
    let references = chat_references();
    let path = fixture("chat_templates/llama/tokenizer_config.json");
    let template = ChatTemplate::from_tokenizer_config(&path, None)
        .unwrap()
        .unwrap();
    let twice = [Message::new(Role::User, "a"), Message::new(Role::User, "b")];
    let error = template.render(&twice, false).unwrap_err();
    assert!(matches!(error, Error::ChatTemplate(_)), "{error:?}");
    let message = references["templates"]["llama"]["error"].as_str().unwrap();
    assert!(
        error.to_string().contains(message),
        "{error} should say {message:?}"
    );
    assert!(
        ChatTemplate::new("{% for %}").is_err(),
        "a syntax error is caught at load"
    );
}

/// A conversation rendered with the ChatML template replies as transformers' `generate` on
/// `apply_chat_template(add_generation_prompt=True)` does, token for token.
#[test]
fn a_conversation_with_a_chat_template_replies_as_transformers() {
    let references = chat_references();
    let case = &references["chatml_reply"];
    let template = ChatTemplate::from_tokenizer_config(
        &fixture("chat_templates/chatml/tokenizer_config.json"),
        None,
    )
    .unwrap();
    let pipeline =
        TextGenerationPipeline::from_pretrained(&fixture_model("gpt2/lm-head"), &options())
            .unwrap()
            .with_chat_template(template);
    let pipeline = Arc::new(pipeline);
    let config = pipeline
        .generation_config()
        .clone()
        .with_max_new_tokens(case["max_new_tokens"].as_u64().unwrap() as usize);
    let mut conversation = Conversation::new(Arc::clone(&pipeline));
    let user = messages(&case["messages"]).remove(0);
    // The conversation lives on another thread, sharing the pipeline.
    let reply = std::thread::spawn(move || {
        let reply = conversation.respond(&user.content, &config).unwrap();
        assert_eq!(conversation.messages().len(), 2);
        assert_eq!(
            conversation.messages()[1],
            Message::new(Role::Assistant, reply.clone())
        );
        reply
    })
    .join()
    .unwrap();
    assert_eq!(reply, case["reply"].as_str().unwrap());
}

fn assert_owned_and_shareable<T: Send + Sync + 'static>() {}

#[test]
fn the_pipeline_and_conversations_are_send_sync_and_static() {
    assert_owned_and_shareable::<TextGenerationPipeline>();
    assert_owned_and_shareable::<Conversation>();
    assert_owned_and_shareable::<ChatTemplate>();
    assert_owned_and_shareable::<Generated>();
}

/// The pipeline: several prompts in one call equal each alone; counts and finish reasons in
/// its output; a stop string's offset cuts the text before it.
#[test]
fn the_pipeline_reports_reasons_counts_and_where_a_stop_string_starts() {
    let pipeline =
        TextGenerationPipeline::from_pretrained(&fixture_model("gpt2/lm-head"), &options())
            .unwrap();
    let prompts = [
        "The quick brown fox",
        "Hello, my name is",
        "In a shocking finding",
    ];
    let options = TextGenerationOptions::default()
        .with_max_new_tokens(16)
        .with_batch_size(3);
    let together = pipeline.run(prompts, &options).unwrap();
    for (prompt, outputs) in prompts.iter().zip(&together) {
        let alone = pipeline.run_one(prompt, &options).unwrap();
        assert_eq!(&alone, outputs, "{prompt}: batch == single");
        assert_eq!(outputs[0].finish_reason, FinishReason::MaxTokens);
        assert_eq!(outputs[0].completion_tokens, 16);
        assert_eq!(outputs[0].generated_token_ids.len(), 16);
    }
    // A stop string: two characters of the middle of the first continuation.
    let first = &together[0][0].generated_text;
    let continuation = &first[prompts[0].len()..];
    let chars: Vec<(usize, char)> = continuation.char_indices().collect();
    let (at, _) = chars[chars.len() / 2];
    let stop: String = continuation[at..].chars().take(2).collect();
    let mut generation = pipeline.settings(&options);
    generation.stop_strings = vec![stop.clone()];
    let stopped = pipeline
        .run_one(prompts[0], &options.clone().with_generation(generation))
        .unwrap()
        .remove(0);
    assert_eq!(stopped.finish_reason, FinishReason::StopString);
    let found = stopped.stop.clone().expect("the stop string is reported");
    assert_eq!(found.string, stop);
    assert!(stopped.generated_text[found.offset..].starts_with(&stop));
    // Cut there, the text is the full one up to the first occurrence after the prompt.
    let first_after_prompt = prompts[0].len() + continuation.find(&stop).unwrap();
    assert_eq!(found.offset, first_after_prompt);
    assert!(stopped.completion_tokens < 16);
    let line = serde_json::to_value(&stopped).unwrap();
    assert_eq!(line["finish_reason"], "stop");
    assert_eq!(line["completion_tokens"], stopped.completion_tokens);
}
