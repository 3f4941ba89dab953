//! The request bodies, with OpenAI's field names, types and defaults, and their checks.
//!
//! `model` and `user` are not read: the server runs one model, whatever a request names
//! (as llama.cpp's server does), and answers with that model's id. Fields that would change
//! the answer and that this server cannot honour (penalties other than 0, `logit_bias`,
//! tools, `echo`, `suffix`) are refused with a 422 that names them, never ignored.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::http::error::ServeError;
use ferroformers::generation::{GenerationConfig, MAX_TOP_LOGPROBS};
use ferroformers::pipelines::{Message, Role};

/// Most choices one request may ask for (OpenAI's limit for `n`).
const MAX_CHOICES: usize = 128;
/// Most stop strings, as OpenAI allows.
const MAX_STOP_STRINGS: usize = 4;
/// Most alternatives per token of `/v1/completions`' `logprobs`, as OpenAI allows.
const MAX_COMPLETION_LOGPROBS: usize = 5;
/// New tokens of a completion that does not set `max_tokens` (OpenAI's default).
const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// One prompt or several (a choice set for each). OpenAI's token-id prompts are not taken.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the token counts (and no choices) before `[DONE]`.
    #[serde(default)]
    include_usage: bool,
}

/// `POST /v1/completions`' body.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    prompt: Prompt,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<usize>,
    seed: Option<u64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// Report this many alternatives per token (0 to 5) besides each token's own logprob.
    logprobs: Option<usize>,
    echo: Option<bool>,
    best_of: Option<usize>,
    suffix: Option<String>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<Map<String, Value>>,
}

/// A message of `messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatMessage {
    role: String,
    content: Option<Content>,
}

/// A message's content: text, or a list of parts of which only text parts are taken.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content (`{"type": "text", "text": ...}`).
#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// `response_format`: only `{"type": "text"}` is served.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
}

/// `POST /v1/chat/completions`' body.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    messages: Vec<ChatMessage>,
    max_tokens: Option<usize>,
    /// OpenAI's newer name for `max_tokens`; wins when both are set.
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<usize>,
    seed: Option<u64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<Map<String, Value>>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    functions: Option<Vec<Value>>,
    function_call: Option<Value>,
    response_format: Option<ResponseFormat>,
}

/// What a request asks of the generator, checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Choices per prompt.
    pub n: usize,
    /// New tokens per choice at most; `None`: up to the end of the model's context (chat's
    /// default).
    pub max_tokens: Option<usize>,
    /// 0 is greedy decoding; above, sampling at this temperature.
    temperature: f32,
    top_p: f32,
    seed: Option<u64>,
    /// Each choice's text ends before the first of these.
    pub stop: Vec<String>,
    /// Answer with server-sent events as tokens come.
    pub stream: bool,
    /// With `stream`, a last chunk with the token counts.
    pub include_usage: bool,
    /// Report log-probabilities, with this many alternatives per token.
    pub logprobs: Option<usize>,
}

impl Settings {
    /// The generator's settings for the choice numbered `choice` of the request: the model's
    /// end tokens, and OpenAI's sampling, which has no top-k and no repetition penalty.
    /// Choice `i` samples with `seed + i`, so that choices differ and each one repeats.
    pub fn generation_config(
        &self,
        model: &GenerationConfig,
        max_new_tokens: usize,
        choice: usize,
    ) -> GenerationConfig {
        let sampling = self.temperature > 0.0;
        GenerationConfig {
            max_new_tokens: Some(max_new_tokens),
            eos_token_id: model.eos_token_id.clone(),
            pad_token_id: model.pad_token_id,
            do_sample: sampling,
            temperature: if sampling { self.temperature } else { 1.0 },
            top_k: None,
            top_p: self.top_p,
            stop_strings: self.stop.clone(),
            seed: self.seed.map(|seed| seed.wrapping_add(choice as u64)),
            logprobs: self.logprobs.is_some(),
            top_logprobs: self.logprobs.unwrap_or(0),
            ..GenerationConfig::default()
        }
    }
}

/// A 422 about `field`.
fn refuse(field: &str, message: String) -> ServeError {
    ServeError::field(field, message)
}

/// The fields both routes share, before they are checked.
struct Common {
    max_tokens: Option<(usize, &'static str)>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<usize>,
    seed: Option<u64>,
    stop: Option<Stop>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logit_bias: Option<Map<String, Value>>,
}

impl Common {
    fn check(self, logprobs: Option<usize>) -> Result<Settings, ServeError> {
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&n) {
            return Err(refuse(
                "n",
                format!("`n` must be between 1 and {MAX_CHOICES}, got {n}"),
            ));
        }
        if let Some((0, field)) = self.max_tokens {
            return Err(refuse(field, format!("`{field}` must be at least 1")));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(refuse(
                "temperature",
                format!(
                    "`temperature` must be between 0 and 2, got {temperature} (0 decodes \
                     greedily)"
                ),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(refuse(
                "top_p",
                format!("`top_p` must be above 0 and at most 1, got {top_p}"),
            ));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(refuse(
                "stop",
                format!(
                    "`stop` takes at most {MAX_STOP_STRINGS} strings, got {}",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(refuse("stop", "`stop` strings cannot be empty".to_string()));
        }
        for (field, penalty) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if penalty.is_some_and(|penalty| penalty != 0.0) {
                return Err(refuse(
                    field,
                    format!(
                        "`{field}` is not supported (ferroformers has no frequency or presence \
                         penalty): leave it at 0"
                    ),
                ));
            }
        }
        if self.logit_bias.is_some_and(|bias| !bias.is_empty()) {
            return Err(refuse(
                "logit_bias",
                "`logit_bias` is not supported: leave it out".to_string(),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(refuse(
                "stream_options",
                "`stream_options` is only allowed with `stream: true`".to_string(),
            ));
        }
        Ok(Settings {
            n,
            max_tokens: self.max_tokens.map(|(tokens, _)| tokens),
            temperature,
            top_p,
            seed: self.seed,
            stop,
            stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            logprobs,
        })
    }
}

impl CompletionRequest {
    /// The prompts and the settings, checked.
    pub fn checked(self) -> Result<(Vec<String>, Settings), ServeError> {
        let prompts = match self.prompt {
            Prompt::One(prompt) => vec![prompt],
            Prompt::Many(prompts) => prompts,
        };
        if prompts.is_empty() {
            return Err(refuse(
                "prompt",
                "`prompt` is an empty list: send at least one prompt".to_string(),
            ));
        }
        if prompts.iter().any(String::is_empty) {
            return Err(refuse(
                "prompt",
                "`prompt` is empty: the model needs at least one token to continue".to_string(),
            ));
        }
        if let Some(top) = self.logprobs.filter(|&top| top > MAX_COMPLETION_LOGPROBS) {
            return Err(refuse(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {top}"),
            ));
        }
        if self.echo == Some(true) {
            return Err(refuse(
                "echo",
                "`echo` is not supported: the answer is the continuation alone; put the prompt \
                 in front of it yourself"
                    .to_string(),
            ));
        }
        if self.suffix.is_some_and(|suffix| !suffix.is_empty()) {
            return Err(refuse(
                "suffix",
                "`suffix` (insertion) is not supported: leave it out".to_string(),
            ));
        }
        let n = self.n.unwrap_or(1);
        if self.best_of.is_some_and(|best_of| best_of != n) {
            return Err(refuse(
                "best_of",
                "`best_of` other than `n` is not supported: leave it out".to_string(),
            ));
        }
        let settings = Common {
            max_tokens: Some((
                self.max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS),
                "max_tokens",
            )),
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            seed: self.seed,
            stop: self.stop,
            stream: self.stream,
            stream_options: self.stream_options,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias,
        }
        .check(self.logprobs)?;
        Ok((prompts, settings))
    }
}

impl ChatRequest {
    /// The messages and the settings, checked.
    pub fn checked(self) -> Result<(Vec<Message>, Settings), ServeError> {
        let messages = messages(self.messages)?;
        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (false, Some(top)) if top > 0 => {
                return Err(refuse(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`".to_string(),
                ))
            }
            (_, Some(top)) if top > MAX_TOP_LOGPROBS => {
                return Err(refuse(
                    "top_logprobs",
                    format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {top}"),
                ))
            }
            (true, top) => Some(top.unwrap_or(0)),
            (false, _) => None,
        };
        let tools = [
            ("tools", self.tools.is_some_and(|tools| !tools.is_empty())),
            ("functions", self.functions.is_some_and(|f| !f.is_empty())),
            ("tool_choice", is_set(self.tool_choice.as_ref())),
            ("function_call", is_set(self.function_call.as_ref())),
        ];
        if let Some((field, _)) = tools.iter().find(|(_, set)| *set) {
            return Err(refuse(
                field,
                format!("`{field}` is not supported (no function calling): leave it out"),
            ));
        }
        if let Some(format) = self.response_format.filter(|f| f.kind != "text") {
            return Err(refuse(
                "response_format",
                format!(
                    "`response_format` `{}` is not supported: only `text`",
                    format.kind
                ),
            ));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(tokens), _) => Some((tokens, "max_completion_tokens")),
            (None, Some(tokens)) => Some((tokens, "max_tokens")),
            (None, None) => None,
        };
        let settings = Common {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n,
            seed: self.seed,
            stop: self.stop,
            stream: self.stream,
            stream_options: self.stream_options,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias,
        }
        .check(logprobs)?;
        Ok((messages, settings))
    }
}

/// A `tool_choice` or `function_call` that asks for something: `"none"` asks for nothing.
fn is_set(value: Option<&Value>) -> bool {
    value.is_some_and(|value| !value.is_null() && value != "none")
}

/// The messages as the chat template reads them. `developer` is OpenAI's newer name for
/// `system`; text parts join with newlines.
fn messages(messages: Vec<ChatMessage>) -> Result<Vec<Message>, ServeError> {
    if messages.is_empty() {
        return Err(refuse(
            "messages",
            "`messages` is empty: send at least one message".to_string(),
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let role = match message.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(refuse(
                        &format!("messages[{i}].role"),
                        format!(
                            "`messages[{i}].role` `{other}` is not supported: use system, user \
                             or assistant"
                        ),
                    ))
                }
            };
            let content = match message.content {
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => parts
                    .into_iter()
                    .enumerate()
                    .map(|(j, part)| match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => Ok(text),
                        (kind, _) => Err(refuse(
                            &format!("messages[{i}].content[{j}]"),
                            format!(
                                "`messages[{i}].content[{j}]` is a `{kind}` part without \
                                 text: only `{{\"type\": \"text\", \"text\": ...}}` parts \
                                 are supported"
                            ),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join("\n"),
                None => {
                    return Err(refuse(
                        &format!("messages[{i}].content"),
                        format!("`messages[{i}].content` is missing"),
                    ))
                }
            };
            Ok(Message::new(role, content))
        })
        .collect()
}
