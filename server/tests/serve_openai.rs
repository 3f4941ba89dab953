//! OpenAI's generation routes over HTTP, `/v1/completions` and `/v1/chat/completions`:
//! every answer against the library (`TextGenerationPipeline::stream` with the
//! settings OpenAI's fields mean, on the same fixture GPT-2; chats rendered by the library's
//! chat template), token for token and text for text; log-probabilities within 1e-5 (f32
//! values that went through JSON); streamed pieces against the whole answer; token counts
//! against the tokenizer; the OpenAI error body of every bad request; and a client that
//! leaves mid-stream.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{answer, client, config, get, load, post, TestServer};
use common::{fixture, fixture_model, fixture_sanity};
use ferroformers::generation::Generator;
use ferroformers::generation::{GenerationConfig, TokenLogprob};
use ferroformers::pipelines::{
    ChatTemplate, Conversation, Message, Pipeline, Role, TextGenerationOptions,
    TextGenerationPipeline,
};
use ferroformers::{AnyPipeline, Device, EncodeOptions, LoadOptions, Task, Tensor};
use ferroformers_server::ServerConfig;
use serde_json::{json, Value};
use ureq::Agent;

/// Log-probabilities: f32 from the same computation, written as JSON numbers.
const LOGPROB_TOLERANCE: f64 = 1e-5;

/// The fixture GPT-2 with or without the ChatML template of `chat_templates/chatml_generation`.
fn gpt2(with_template: bool) -> TextGenerationPipeline {
    let pipeline = TextGenerationPipeline::from_pretrained(
        &fixture_model("gpt2/lm-head"),
        &LoadOptions::default(),
    )
    .expect("the fixture loads");
    if !with_template {
        return pipeline;
    }
    let path = fixture("chat_templates/chatml_generation/tokenizer_config.json");
    let template = ChatTemplate::from_tokenizer_config(&path, None)
        .expect("the template parses")
        .expect("the fixture has a template");
    pipeline.with_chat_template(Some(template))
}

fn serve(pipeline: &TextGenerationPipeline) -> TestServer {
    TestServer::start(AnyPipeline::TextGeneration(pipeline.clone()), config())
}

/// What OpenAI's fields ask for, as the test writes it for the library.
#[derive(Clone)]
struct Sampling {
    max_new_tokens: usize,
    /// 0: greedy.
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
    stop: Vec<String>,
    logprobs: Option<usize>,
}

impl Sampling {
    fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            logprobs: None,
        }
    }

    /// OpenAI's meaning: the model's end token, no top-k, no repetition penalty.
    fn config(&self, pipeline: &TextGenerationPipeline) -> GenerationConfig {
        let model = pipeline.generation_config();
        GenerationConfig {
            max_new_tokens: Some(self.max_new_tokens),
            eos_token_id: model.eos_token_id.clone(),
            pad_token_id: model.pad_token_id,
            do_sample: self.temperature > 0.0,
            temperature: if self.temperature > 0.0 {
                self.temperature
            } else {
                1.0
            },
            top_k: None,
            top_p: self.top_p,
            stop_strings: self.stop.clone(),
            seed: self.seed,
            logprobs: self.logprobs.is_some(),
            top_logprobs: self.logprobs.unwrap_or(0),
            ..GenerationConfig::default()
        }
    }
}

/// The library's answer for one choice, as OpenAI gives it.
#[derive(Debug)]
struct Reference {
    /// The continuation, cut before the stop string that ended it.
    text: String,
    /// Each token's text as the stream gave it (the stop string included).
    pieces: Vec<String>,
    ids: Vec<u32>,
    finish_reason: String,
    prompt_tokens: usize,
    logprobs: Vec<TokenLogprob>,
}

fn reference(pipeline: &TextGenerationPipeline, prompt: &str, sampling: &Sampling) -> Reference {
    let options = TextGenerationOptions::default()
        .with_generation(sampling.config(pipeline))
        .with_return_full_text(false);
    let mut stream = pipeline
        .stream(prompt, &options)
        .expect("the library generates");
    let pieces = stream
        .by_ref()
        .map(|token| token.expect("the library generates").text)
        .collect();
    let output = stream.generated_text().expect("the library generates");
    let text = match &output.stop {
        Some(stop) => output.generated_text[..stop.offset].to_string(),
        None => output.generated_text.clone(),
    };
    Reference {
        text,
        pieces,
        ids: output.generated_token_ids.clone(),
        finish_reason: serde_json::to_value(output.finish_reason)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string(),
        prompt_tokens: output.prompt_tokens,
        logprobs: output.logprobs.unwrap_or_default(),
    }
}

fn token_count(pipeline: &TextGenerationPipeline, text: &str) -> usize {
    pipeline
        .tokenizer()
        .encode(text, &EncodeOptions::default())
        .unwrap()
        .len()
}

fn token_text(pipeline: &TextGenerationPipeline, id: u32) -> String {
    pipeline.tokenizer().decode(&[id], false).unwrap()
}

fn assert_near(actual: &Value, expected: f32, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {actual} is not a number"));
    let difference = (actual - f64::from(expected)).abs();
    assert!(
        actual.is_finite() && expected.is_finite() && difference <= LOGPROB_TOLERANCE,
        "{what}: {actual} against the library's {expected}"
    );
}

/// A completions choice's `logprobs` against the library's, with `text_offset` from its
/// pieces.
fn assert_text_logprobs(
    pipeline: &TextGenerationPipeline,
    logprobs: &Value,
    expected: &Reference,
    top: usize,
) {
    let tokens: Vec<String> = expected
        .ids
        .iter()
        .map(|&id| token_text(pipeline, id))
        .collect();
    assert_eq!(logprobs["tokens"], json!(tokens));
    let mut offset = 0;
    for (k, (logprob, piece)) in expected.logprobs.iter().zip(&expected.pieces).enumerate() {
        assert_near(
            &logprobs["token_logprobs"][k],
            logprob.logprob,
            &format!("token {k}"),
        );
        assert_eq!(
            logprobs["text_offset"][k], offset,
            "token {k}'s text_offset"
        );
        offset += piece.chars().count();
        let alternatives = logprobs["top_logprobs"][k].as_object().expect("a map");
        assert_eq!(logprob.top_logprobs.len(), top);
        for alternative in &logprob.top_logprobs {
            let text = token_text(pipeline, alternative.id);
            assert_near(
                &alternatives[&text],
                alternative.logprob,
                &format!("token {k}: {text:?}"),
            );
        }
    }
    assert_eq!(
        logprobs["token_logprobs"].as_array().unwrap().len(),
        expected.ids.len()
    );
}

/// A chat choice's `logprobs.content` against the library's.
fn assert_chat_logprobs(
    pipeline: &TextGenerationPipeline,
    content: &Value,
    expected: &Reference,
    top: usize,
) {
    let content = content.as_array().expect("a list");
    assert_eq!(content.len(), expected.ids.len());
    for (k, (entry, (&id, logprob))) in content
        .iter()
        .zip(expected.ids.iter().zip(&expected.logprobs))
        .enumerate()
    {
        let text = token_text(pipeline, id);
        assert_eq!(entry["token"], text.as_str());
        assert_eq!(entry["bytes"], json!(text.as_bytes()));
        assert_near(&entry["logprob"], logprob.logprob, &format!("token {k}"));
        let alternatives = entry["top_logprobs"].as_array().expect("a list");
        assert_eq!(alternatives.len(), top);
        for (alternative, expected) in alternatives.iter().zip(&logprob.top_logprobs) {
            assert_eq!(
                alternative["token"],
                token_text(pipeline, expected.id).as_str()
            );
            assert_near(
                &alternative["logprob"],
                expected.logprob,
                &format!("token {k}"),
            );
        }
    }
}

/// POST `body` and read the server-sent events: every `data:` payload, in order.
fn events(client: &Agent, url: &str, body: &Value) -> Vec<String> {
    let response = client
        .post(url)
        .set("content-type", "application/json")
        .send_string(&body.to_string())
        .unwrap_or_else(|error| panic!("the stream starts: {error}"));
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    BufReader::new(response.into_reader())
        .lines()
        .map(|line| line.expect("the stream reads"))
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// A stream's chunks put together: each choice's text and finish reason by index, its
/// log-probabilities in order, and the usage chunk. Checks the chunks' shared shape and that
/// `[DONE]` comes last.
struct Streamed {
    texts: HashMap<u64, String>,
    finish_reasons: HashMap<u64, String>,
    logprobs: HashMap<u64, Vec<Value>>,
    usage: Option<Value>,
    roles: HashMap<u64, usize>,
}

fn streamed(events: &[String], chat: bool) -> Streamed {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|data| serde_json::from_str(data).expect("a JSON chunk"))
        .collect();
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut out = Streamed {
        texts: HashMap::new(),
        finish_reasons: HashMap::new(),
        logprobs: HashMap::new(),
        usage: None,
        roles: HashMap::new(),
    };
    for chunk in &chunks {
        assert_eq!(chunk["object"], object, "{chunk}");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["model"], "fixture");
        assert!(out.usage.is_none(), "the usage chunk comes last: {chunk}");
        if let Some(usage) = chunk.get("usage") {
            assert_eq!(chunk["choices"], json!([]));
            out.usage = Some(usage.clone());
            continue;
        }
        for choice in chunk["choices"].as_array().expect("choices") {
            let index = choice["index"].as_u64().expect("an index");
            assert!(
                !out.finish_reasons.contains_key(&index),
                "choice {index} goes on after its finish reason: {chunk}"
            );
            let (text, entries) = if chat {
                if choice["delta"]["role"] == "assistant" {
                    *out.roles.entry(index).or_default() += 1;
                    assert!(!out.texts.contains_key(&index), "the role comes first");
                }
                (&choice["delta"]["content"], &choice["logprobs"]["content"])
            } else {
                (&choice["text"], &choice["logprobs"]["token_logprobs"])
            };
            let piece = text.as_str().unwrap_or_default();
            out.texts.entry(index).or_default().push_str(piece);
            if let Some(entries) = entries.as_array() {
                out.logprobs
                    .entry(index)
                    .or_default()
                    .extend(entries.clone());
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                out.finish_reasons.insert(index, reason.to_string());
            }
        }
    }
    out
}

/// The whole answer's choices and the streamed answer to the same request agree.
fn assert_stream_matches(whole: &Value, events: &[String], chat: bool) {
    let streamed = streamed(events, chat);
    let choices = whole["choices"].as_array().expect("choices");
    assert_eq!(streamed.texts.len(), choices.len());
    for choice in choices {
        let index = choice["index"].as_u64().unwrap();
        let text = if chat {
            &choice["message"]["content"]
        } else {
            &choice["text"]
        };
        assert_eq!(
            streamed.texts[&index],
            text.as_str().unwrap(),
            "choice {index}"
        );
        assert_eq!(
            streamed.finish_reasons[&index],
            choice["finish_reason"].as_str().unwrap()
        );
        if chat {
            assert_eq!(streamed.roles.get(&index), Some(&1), "one role delta");
            if let Some(content) = choice["logprobs"]["content"].as_array() {
                assert_eq!(&streamed.logprobs[&index], content);
            }
        } else if let Some(logprobs) = choice["logprobs"]["token_logprobs"].as_array() {
            assert_eq!(&streamed.logprobs[&index], logprobs);
        }
    }
    assert_eq!(streamed.usage.as_ref(), Some(&whole["usage"]));
}

fn assert_usage(usage: &Value, prompt_tokens: usize, completion_tokens: usize) {
    assert_eq!(
        usage,
        &json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        })
    );
}

#[test]
fn completions_equal_the_library_token_for_token() {
    let pipeline = gpt2(false);
    let server = serve(&pipeline);
    let prompts = ["Hello world", "The quick brown fox"];
    let (status, body) = post(
        &client(),
        &server.url("/v1/completions"),
        &json!({
            "model": "anything", "prompt": prompts, "max_tokens": 12, "temperature": 0,
            "logprobs": 3,
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "fixture");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    let mut sampling = Sampling::greedy(12);
    sampling.logprobs = Some(3);
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (i, prompt) in prompts.iter().enumerate() {
        let expected = reference(&pipeline, prompt, &sampling);
        fixture_sanity(!expected.text.is_empty(), "the fixture generates text");
        let choice = &body["choices"][i];
        assert_eq!(choice["index"], i);
        assert_eq!(choice["text"], expected.text.as_str());
        assert_eq!(choice["finish_reason"], expected.finish_reason.as_str());
        assert_text_logprobs(&pipeline, &choice["logprobs"], &expected, 3);
        assert_eq!(expected.prompt_tokens, token_count(&pipeline, prompt));
        prompt_tokens += expected.prompt_tokens;
        completion_tokens += expected.ids.len();
    }
    assert_usage(&body["usage"], prompt_tokens, completion_tokens);
}

#[test]
fn chat_equals_the_library_on_the_rendered_template() {
    let pipeline = gpt2(true);
    let server = serve(&pipeline);
    let messages = [
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Hi there"),
    ];
    let prompt = pipeline
        .chat_template()
        .unwrap()
        .unwrap()
        .render(&messages, true)
        .unwrap();
    let (status, body) = post(
        &client(),
        &server.url("/v1/chat/completions"),
        &json!({
            "model": "fixture",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
            ],
            "temperature": 0, "logprobs": true, "top_logprobs": 2,
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    // Without max_tokens: until the end token or the end of the context.
    let prompt_tokens = token_count(&pipeline, &prompt);
    let context = pipeline.model().max_positions();
    let mut sampling = Sampling::greedy(context - prompt_tokens);
    sampling.logprobs = Some(2);
    let expected = reference(&pipeline, &prompt, &sampling);
    fixture_sanity(!expected.text.is_empty(), "the fixture replies");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], expected.text.as_str());
    assert_eq!(choice["finish_reason"], expected.finish_reason.as_str());
    assert_chat_logprobs(&pipeline, &choice["logprobs"]["content"], &expected, 2);
    assert_usage(&body["usage"], prompt_tokens, expected.ids.len());
}

#[test]
fn streamed_pieces_concatenate_to_the_whole_answer() {
    let pipeline = gpt2(true);
    let server = serve(&pipeline);
    let client = client();
    let requests = [
        (
            "/v1/completions",
            json!({"prompt": ["Hello world", "naïve café"], "max_tokens": 20, "temperature": 0,
                   "logprobs": 2}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Tell me a story"}],
                   "max_tokens": 30, "temperature": 0, "logprobs": true, "top_logprobs": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Again"}], "temperature": 0}),
        ),
    ];
    for (route, request) in requests {
        let url = server.url(route);
        let (status, whole) = post(&client, &url, &request);
        assert_eq!(status, 200, "{whole}");
        let mut streaming = request.clone();
        streaming["stream"] = json!(true);
        streaming["stream_options"] = json!({"include_usage": true});
        let chat = route.contains("chat");
        assert_stream_matches(&whole, &events(&client, &url, &streaming), chat);
        // Without include_usage: no usage chunk.
        streaming["stream_options"] = json!({"include_usage": false});
        assert!(streamed(&events(&client, &url, &streaming), chat)
            .usage
            .is_none());
    }
}

#[test]
fn seeded_choices_are_the_seeded_library_runs() {
    let pipeline = gpt2(true);
    let server = serve(&pipeline);
    let client = client();
    let mut sampling = Sampling::greedy(15);
    sampling.temperature = 0.9;
    sampling.top_p = 0.8;
    let request = json!({"prompt": "Once upon a time", "n": 2, "max_tokens": 15,
                         "temperature": 0.9, "top_p": 0.8, "seed": 7});
    let (status, body) = post(&client, &server.url("/v1/completions"), &request);
    assert_eq!(status, 200, "{body}");
    let mut texts = Vec::new();
    for i in 0..2 {
        // Choice i samples with seed + i.
        sampling.seed = Some(7 + i);
        let expected = reference(&pipeline, "Once upon a time", &sampling);
        assert_eq!(body["choices"][i as usize]["text"], expected.text.as_str());
        assert_eq!(
            body["choices"][i as usize]["finish_reason"],
            expected.finish_reason.as_str()
        );
        texts.push(expected.text);
    }
    fixture_sanity(texts[0] != texts[1], "two seeds sample two texts");
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    assert_stream_matches(
        &body,
        &events(&client, &server.url("/v1/completions"), &streaming),
        false,
    );

    let messages = [Message::new(Role::User, "Hi")];
    let prompt = pipeline
        .chat_template()
        .unwrap()
        .unwrap()
        .render(&messages, true)
        .unwrap();
    let (status, body) = post(
        &client,
        &server.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "Hi"}], "n": 2,
                "max_completion_tokens": 15, "temperature": 0.9, "top_p": 0.8, "seed": 11}),
    );
    assert_eq!(status, 200, "{body}");
    for i in 0..2 {
        sampling.seed = Some(11 + i);
        let expected = reference(&pipeline, &prompt, &sampling);
        let choice = &body["choices"][i as usize];
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["content"], expected.text.as_str());
    }
}

#[test]
fn stop_strings_cut_the_text_before_them_streamed_or_not() {
    let pipeline = gpt2(true);
    let server = serve(&pipeline);
    let client = client();
    let prompt = "The quick brown fox";
    let free = reference(&pipeline, prompt, &Sampling::greedy(30));
    // A stop string over two tokens in the middle, whose first occurrence is where they
    // start: a stream must hold the first token's text back until the second decides it.
    let (start, stop) = (2..free.pieces.len() - 2)
        .find_map(|k| {
            let start: usize = free.pieces[..k].iter().map(String::len).sum();
            let stop = free.pieces[k..k + 2].concat();
            let first = free.text.find(&stop);
            (!free.pieces[k].is_empty() && !free.pieces[k + 1].is_empty() && first == Some(start))
                .then_some((start, stop))
        })
        .expect("fixture sanity: the greedy text has two tokens to stop at");
    let mut sampling = Sampling::greedy(30);
    sampling.stop = vec![stop.clone(), "never in the text \u{1F600}".to_string()];
    let expected = reference(&pipeline, prompt, &sampling);
    assert_eq!(
        expected.text,
        free.text[..start],
        "the library cuts there too"
    );
    assert_eq!(expected.finish_reason, "stop");

    let request = json!({"prompt": prompt, "max_tokens": 30, "temperature": 0,
                         "stop": [stop, "never in the text \u{1F600}"]});
    let url = server.url("/v1/completions");
    let (status, body) = post(&client, &url, &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], expected.text.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_usage(&body["usage"], expected.prompt_tokens, expected.ids.len());
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    assert_stream_matches(&body, &events(&client, &url, &streaming), false);

    // A single string, in a chat.
    let chat = json!({"messages": [{"role": "user", "content": "Go on"}], "temperature": 0,
                      "max_tokens": 30});
    let url = server.url("/v1/chat/completions");
    let (_, free) = post(&client, &url, &chat);
    let reply = free["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let stop: String = reply
        .chars()
        .skip(reply.chars().count() / 2)
        .take(2)
        .collect();
    fixture_sanity(
        stop.chars().count() == 2,
        "the reply is long enough to stop in",
    );
    let mut stopped = chat.clone();
    stopped["stop"] = json!(stop);
    let (status, body) = post(&client, &url, &stopped);
    assert_eq!(status, 200, "{body}");
    let cut = &reply[..reply.find(&stop).unwrap()];
    assert_eq!(body["choices"][0]["message"]["content"], cut);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    stopped["stream"] = json!(true);
    stopped["stream_options"] = json!({"include_usage": true});
    assert_stream_matches(&body, &events(&client, &url, &stopped), true);
}

/// `(status, body)` of a request that must fail, with OpenAI's error shape checked.
fn assert_openai_error(
    client: &Agent,
    url: &str,
    body: &Value,
    status: u16,
    param: Option<&str>,
    mentions: &str,
) {
    let (got, answer) = post(client, url, body);
    assert_eq!(got, status, "{body} -> {answer}");
    let error = &answer["error"];
    assert_eq!(error["type"], "invalid_request_error", "{answer}");
    assert_eq!(error["param"], json!(param), "{answer}");
    let message = error["message"].as_str().expect("a message");
    assert!(
        message.contains(mentions),
        "`{message}` does not mention `{mentions}`"
    );
}

#[test]
fn bad_requests_get_openai_errors_that_name_the_field() {
    let pipeline = gpt2(true);
    let server = serve(&pipeline);
    let client = client();
    let completions = server.url("/v1/completions");
    let chat = server.url("/v1/chat/completions");

    // JSON that does not parse.
    let broken = answer(
        client
            .post(&completions)
            .set("content-type", "application/json")
            .send_string("{\"prompt\": "),
    );
    assert_eq!(broken.status, 422);
    assert_eq!(broken.json()["error"]["type"], "invalid_request_error");

    let user = || json!([{"role": "user", "content": "Hi"}]);
    let cases = [
        (
            &completions,
            json!({"max_tokens": 4}),
            422,
            Some("prompt"),
            "prompt",
        ),
        (
            &completions,
            json!({"prompt": 5}),
            422,
            Some("prompt"),
            "prompt",
        ),
        (
            &completions,
            json!({"prompt": "a", "temperature": "hot"}),
            422,
            Some("temperature"),
            "temperature",
        ),
        (
            &completions,
            json!({"prompt": "a", "n": 0}),
            422,
            Some("n"),
            "`n`",
        ),
        (
            &completions,
            json!({"prompt": "a", "temperature": -1}),
            422,
            Some("temperature"),
            "between 0 and 2",
        ),
        (
            &completions,
            json!({"prompt": "a", "top_p": 0}),
            422,
            Some("top_p"),
            "top_p",
        ),
        (
            &completions,
            json!({"prompt": "a", "max_tokens": 0}),
            422,
            Some("max_tokens"),
            "at least 1",
        ),
        (
            &completions,
            json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}),
            422,
            Some("stop"),
            "at most 4",
        ),
        (
            &completions,
            json!({"prompt": "a", "logprobs": 6}),
            422,
            Some("logprobs"),
            "logprobs",
        ),
        (
            &completions,
            json!({"prompt": "a", "presence_penalty": 0.5}),
            422,
            Some("presence_penalty"),
            "leave it at 0",
        ),
        (
            &completions,
            json!({"prompt": "a", "echo": true}),
            422,
            Some("echo"),
            "echo",
        ),
        (
            &completions,
            json!({"prompt": "a", "stream_options": {"include_usage": true}}),
            422,
            Some("stream_options"),
            "stream",
        ),
        (
            &completions,
            json!({"prompt": []}),
            422,
            Some("prompt"),
            "empty",
        ),
        (
            &completions,
            json!({"prompt": "word ".repeat(200)}),
            400,
            Some("prompt"),
            "context length",
        ),
        (
            &completions,
            json!({"prompt": "a", "max_tokens": 1000}),
            400,
            Some("prompt"),
            "context length",
        ),
        (
            &chat,
            json!({"messages": []}),
            422,
            Some("messages"),
            "empty",
        ),
        (
            &chat,
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            422,
            Some("messages[0].role"),
            "tool",
        ),
        (
            &chat,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            422,
            Some("messages[0].content[0]"),
            "image_url",
        ),
        (
            &chat,
            json!({"messages": user(), "top_logprobs": 2}),
            422,
            Some("top_logprobs"),
            "logprobs: true",
        ),
        (
            &chat,
            json!({"messages": user(), "logprobs": true, "top_logprobs": 21}),
            422,
            Some("top_logprobs"),
            "20",
        ),
        (
            &chat,
            json!({"messages": user(), "tools": [{"type": "function"}]}),
            422,
            Some("tools"),
            "function calling",
        ),
        (
            &chat,
            json!({"messages": user(), "max_completion_tokens": 0}),
            422,
            Some("max_completion_tokens"),
            "at least 1",
        ),
        (
            &chat,
            json!({"messages": user(), "frequency_penalty": 1}),
            422,
            Some("frequency_penalty"),
            "leave it at 0",
        ),
        (
            &chat,
            json!({"messages": user(), "logit_bias": {"5": 10}}),
            422,
            Some("logit_bias"),
            "logit_bias",
        ),
        (
            &chat,
            json!({"messages": user(), "max_tokens": 500}),
            400,
            Some("messages"),
            "context length",
        ),
    ];
    for (url, body, status, param, mentions) in cases {
        assert_openai_error(&client, url, &body, status, param, mentions);
    }
    let (_, too_long) = post(
        &client,
        &completions,
        &json!({"prompt": "a", "max_tokens": 1000}),
    );
    assert_eq!(too_long["error"]["code"], "context_length_exceeded");

    // What OpenAI accepts and does not change the answer: taken.
    let (status, body) = post(
        &client,
        &completions,
        &json!({"prompt": "a", "max_tokens": 2, "user": "u", "presence_penalty": 0,
                "logit_bias": {}, "best_of": 1, "echo": false, "stream": false}),
    );
    assert_eq!(status, 200, "{body}");
}

/// A model without a chat template chats as `ferroformers chat` does (DialoGPT's turns, each
/// ended by the end-of-text token), so that the server and the command agree.
#[test]
fn chat_without_a_template_joins_turns_as_the_command_does() {
    let pipeline = gpt2(false);
    fixture_sanity(
        pipeline.chat_template().unwrap().is_none(),
        "the fixture has no chat template",
    );
    let server = serve(&pipeline);
    let (status, body) = post(
        &client(),
        &server.url("/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 12,
                "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let mut conversation = Conversation::new(std::sync::Arc::new(pipeline.clone()));
    let config = Sampling::greedy(12).config(&pipeline);
    let expected = conversation.respond("Hi there", &config).unwrap();
    fixture_sanity(!expected.trim().is_empty(), "the fixture replies");
    assert_eq!(body["choices"][0]["message"]["content"], expected.as_str());
}

#[test]
fn completions_need_a_generation_model() {
    let pipeline = gpt2(false);
    let server = serve(&pipeline);
    let client = client();
    let (status, body) = post(
        &client,
        &server.url("/v1/completions"),
        &json!({"prompt": "Hi", "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{body}");

    let embeddings = TestServer::start(
        load(Task::Embeddings, "bert/sentence-transformers"),
        config(),
    );
    for route in ["/v1/completions", "/v1/chat/completions"] {
        assert_openai_error(
            &client,
            &embeddings.url(route),
            &json!({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}),
            400,
            None,
            "text-generation model",
        );
    }
}

/// A random GPT-2 with the fixture's tokenizer, `width` wide, `layers` deep and `positions`
/// long, and no end token: it generates for as long as asked, at a cost per token large
/// enough that a sequence which is not cancelled is seen running.
fn write_long_model(dir: &Path, width: usize, layers: usize, positions: usize) {
    let source = fixture("gpt2/lm-head");
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
    ] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["n_embd"] = json!(width);
    config["n_layer"] = json!(layers);
    config["n_positions"] = json!(positions);
    config["n_ctx"] = json!(positions);
    config.as_object_mut().unwrap().remove("eos_token_id");
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap() as usize;
    let random = |shape: &[usize]| Tensor::randn(0f32, 0.02, shape.to_vec(), &Device::Cpu).unwrap();
    let ones = |n: usize| Tensor::ones(n, ferroformers::DType::F32, &Device::Cpu).unwrap();
    let zeros = |n: usize| Tensor::zeros(n, ferroformers::DType::F32, &Device::Cpu).unwrap();
    let mut weights = HashMap::new();
    weights.insert(
        "transformer.wte.weight".to_string(),
        random(&[vocab, width]),
    );
    weights.insert(
        "transformer.wpe.weight".to_string(),
        random(&[positions, width]),
    );
    weights.insert("transformer.ln_f.weight".to_string(), ones(width));
    weights.insert("transformer.ln_f.bias".to_string(), zeros(width));
    for layer in 0..layers {
        let name = |rest: &str| format!("transformer.h.{layer}.{rest}");
        for norm in ["ln_1", "ln_2"] {
            weights.insert(name(&format!("{norm}.weight")), ones(width));
            weights.insert(name(&format!("{norm}.bias")), zeros(width));
        }
        for (part, inputs, outputs) in [
            ("attn.c_attn", width, 3 * width),
            ("attn.c_proj", width, width),
            ("mlp.c_fc", width, 4 * width),
            ("mlp.c_proj", 4 * width, width),
        ] {
            weights.insert(name(&format!("{part}.weight")), random(&[inputs, outputs]));
            weights.insert(name(&format!("{part}.bias")), zeros(outputs));
        }
    }
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
}

/// A request to `url` is refused with `status` and OpenAI's `code`.
fn assert_openai_error_status(client: &Agent, url: &str, status: u16, code: &str) {
    let (got, body) = post(client, url, &json!({"prompt": "Hi", "max_tokens": 2}));
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

fn active_sequences(client: &Agent, server: &TestServer) -> i64 {
    let metrics = get(client, &server.url("/metrics")).body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("ferroformers_active_sequences "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no active-sequences gauge in {metrics}"))
}

#[test]
fn a_client_that_leaves_mid_stream_stops_its_sequence() {
    const LONG: usize = 4000;
    let dir = tempfile::tempdir().unwrap();
    write_long_model(dir.path(), 512, 4, 4096);
    let pipeline = TextGenerationPipeline::from_pretrained(
        dir.path().to_str().unwrap(),
        &LoadOptions::default(),
    )
    .expect("the random model loads");
    // One request at a time: a stream holds its slot until it ends or its client leaves.
    let server = TestServer::start(
        AnyPipeline::TextGeneration(pipeline.clone()),
        ServerConfig {
            max_concurrent_requests: 1,
            ..config()
        },
    );
    let client = client();
    let url = server.url("/v1/completions");

    // The time a token takes here, now: a whole answer of 64 (right, against the library).
    let started = Instant::now();
    let (status, body) = post(
        &client,
        &url,
        &json!({"prompt": "Hello", "max_tokens": 64, "temperature": 0}),
    );
    let per_token = started.elapsed() / 64;
    assert_eq!(status, 200, "{body}");
    let expected = reference(&pipeline, "Hello", &Sampling::greedy(64));
    assert_eq!(body["choices"][0]["text"], expected.text.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let response = client
        .post(&url)
        .set("content-type", "application/json")
        .send_string(
            &json!({"prompt": "Hello", "max_tokens": LONG, "temperature": 0, "stream": true})
                .to_string(),
        )
        .expect("the stream starts");
    let mut lines = BufReader::new(response.into_reader()).lines();
    let mut chunks = 0;
    while chunks < 2 {
        let line = lines.next().expect("the stream goes on").unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let chunk: Value = serde_json::from_str(data).expect("a JSON chunk");
            assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
            chunks += 1;
        }
    }
    assert_eq!(
        active_sequences(&client, &server),
        1,
        "the stream is generating"
    );
    assert_openai_error_status(&client, &url, 429, "rate_limit_exceeded");
    drop(lines);
    let left = Instant::now();
    // Generating the rest would take over a quarter of LONG tokens at the measured pace
    // (later tokens attend to more and cost more).
    let bound = per_token * (LONG as u32 / 4);
    while active_sequences(&client, &server) != 0 {
        assert!(
            left.elapsed() < bound,
            "the sequence still runs {:?} after its client left ({per_token:?} per token)",
            left.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The server goes on serving: another request gets its whole, right answer.
    let (status, body) = post(
        &client,
        &url,
        &json!({"prompt": "Hello", "max_tokens": 64, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], expected.text.as_str());
    // Its sequence leaves the gauge once its last token is sent, maybe just after the answer.
    let answered = Instant::now();
    while active_sequences(&client, &server) != 0 {
        assert!(
            answered.elapsed() < bound,
            "a finished sequence stays active"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `/v1/chat/completions` on each Llama-family fixture with a chat template (Llama 3.1's
/// template with its BOS token, ChatML from tokenizer_config.json and from
/// chat_template.jinja): the rendered chat encoded without special tokens, as transformers'
/// `apply_chat_template` encodes it, and the library's greedy reply, whole and streamed.
#[test]
fn chat_on_each_llama_family_model_equals_the_library() {
    for family in ["llama", "qwen2", "qwen3"] {
        let pipeline = TextGenerationPipeline::from_pretrained(
            &fixture_model(&format!("{family}/lm-head")),
            &LoadOptions::default(),
        )
        .expect("the fixture loads");
        let server = serve(&pipeline);
        let messages = [
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi there"),
        ];
        let text = pipeline
            .chat_template()
            .unwrap()
            .unwrap()
            .render(&messages, true)
            .unwrap();
        let options = EncodeOptions {
            add_special_tokens: false,
            ..EncodeOptions::default()
        };
        let ids = pipeline
            .tokenizer()
            .encode(text.as_str(), &options)
            .unwrap()
            .get_ids()
            .to_vec();
        let config = Sampling::greedy(16).config(&pipeline);
        let tokens: Vec<_> = Generator::new(pipeline.model(), pipeline.tokenizer())
            .stream(&ids, &config)
            .unwrap()
            .map(|token| token.unwrap())
            .collect();
        let expected: String = tokens.iter().map(|token| token.text.as_str()).collect();
        let request = json!({
            "model": "fixture",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi there"},
            ],
            "max_tokens": 16, "temperature": 0,
        });
        let (status, body) = post(&client(), &server.url("/v1/chat/completions"), &request);
        assert_eq!(status, 200, "{family}: {body}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            expected.as_str(),
            "{family}"
        );
        assert_usage(&body["usage"], ids.len(), tokens.len());
        let mut streaming = request.clone();
        streaming["stream"] = json!(true);
        streaming["stream_options"] = json!({"include_usage": true});
        let events = events(&client(), &server.url("/v1/chat/completions"), &streaming);
        assert_stream_matches(&body, &events, true);
    }
}
