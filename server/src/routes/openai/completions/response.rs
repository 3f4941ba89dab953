//! The answers and the streamed chunks, in the shapes of the `openai` Python client's types
//! (`Completion`, `ChatCompletion`, `ChatCompletionChunk`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::choice::{Choice, PlacedLogprob, Step};
use ferroformers::tokenizer::Tokenizer;

/// Which of the two routes answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `/v1/completions`: text in, text out.
    Completions,
    /// `/v1/chat/completions`: messages in, an assistant message out.
    Chat,
}

/// Tokens a request used.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

impl Usage {
    /// Each prompt counts once, however many choices continue it (as OpenAI counts).
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// An answer or a chunk: what they all carry around their choices.
#[derive(Debug, Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

/// A choice of `/v1/completions`, whole or a streamed piece of it.
#[derive(Debug, Serialize)]
struct TextChoice {
    text: String,
    index: usize,
    logprobs: Option<TextLogprobs>,
    finish_reason: Option<&'static str>,
}

/// `/v1/completions`' log-probabilities: one entry per token in each list.
#[derive(Debug, Default, Serialize)]
struct TextLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    /// The alternatives of each position, by their text.
    top_logprobs: Vec<Map<String, Value>>,
    /// Where each token's text starts in the choice's text, in characters.
    text_offset: Vec<usize>,
}

/// A choice of `/v1/chat/completions`.
#[derive(Debug, Serialize)]
struct ChatChoice {
    index: usize,
    message: AssistantMessage,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
}

/// A streamed piece of a chat choice.
#[derive(Debug, Serialize)]
struct ChatChunkChoice {
    index: usize,
    delta: Delta,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
}

/// What a chat chunk adds: the role in the first chunk of a choice, then text.
#[derive(Debug, Default, Serialize)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

/// The chat's log-probabilities.
#[derive(Debug, Serialize)]
struct ChatLogprobs {
    content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Serialize)]
struct ChatTokenLogprob {
    token: String,
    logprob: f32,
    /// The UTF-8 bytes of `token`.
    bytes: Vec<u8>,
    top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Serialize)]
struct ChatTopLogprob {
    token: String,
    logprob: f32,
    bytes: Vec<u8>,
}

/// The identity of one answer: every chunk of a stream carries the same.
#[derive(Debug)]
pub(crate) struct Answer {
    api: Api,
    id: String,
    created: u64,
    model: String,
}

impl Answer {
    /// A new answer from `model` (the served model's id, whatever the request named).
    pub fn new(api: Api, model: &str) -> Self {
        let prefix = match api {
            Api::Completions => "cmpl",
            Api::Chat => "chatcmpl",
        };
        Self {
            api,
            id: format!("{prefix}-{:016x}", rand::random::<u64>()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            model: model.to_string(),
        }
    }

    fn envelope<C>(&self, object: &'static str, choices: Vec<C>, usage: Option<Usage>) -> Value
    where
        C: Serialize,
    {
        let envelope = Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        // Only fails for maps with non-string keys, which these types do not have.
        serde_json::to_value(envelope).unwrap_or(Value::Null)
    }

    fn chunk_object(&self) -> &'static str {
        match self.api {
            Api::Completions => "text_completion",
            Api::Chat => "chat.completion.chunk",
        }
    }

    /// The whole answer.
    pub fn whole(&self, choices: &[Choice], usage: Usage, tokenizer: &Tokenizer) -> Value {
        match self.api {
            Api::Completions => {
                let choices = choices
                    .iter()
                    .map(|choice| TextChoice {
                        text: choice.content.clone(),
                        index: choice.index,
                        logprobs: text_logprobs(&choice.logprobs, tokenizer),
                        finish_reason: choice.finish_reason,
                    })
                    .collect();
                self.envelope("text_completion", choices, Some(usage))
            }
            Api::Chat => {
                let choices = choices
                    .iter()
                    .map(|choice| ChatChoice {
                        index: choice.index,
                        message: AssistantMessage {
                            role: "assistant",
                            content: choice.content.clone(),
                        },
                        logprobs: chat_logprobs(&choice.logprobs, tokenizer),
                        finish_reason: choice.finish_reason,
                    })
                    .collect();
                self.envelope("chat.completion", choices, Some(usage))
            }
        }
    }

    /// The chunk that opens choice `index` of a stream: chat's `role`, nothing for
    /// completions.
    pub fn opening(&self, index: usize) -> Option<Value> {
        match self.api {
            Api::Completions => None,
            Api::Chat => {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                let choice = ChatChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                };
                Some(self.envelope(self.chunk_object(), vec![choice], None))
            }
        }
    }

    /// The chunk for a token of choice `index`; `None` when it adds nothing to send (its text
    /// is held back, no log-probabilities were asked for, and the choice goes on).
    pub fn chunk(&self, index: usize, step: Step, tokenizer: &Tokenizer) -> Option<Value> {
        if step.text.is_empty() && step.logprob.is_none() && step.finish_reason.is_none() {
            return None;
        }
        let logprobs = step.logprob.as_slice();
        Some(match self.api {
            Api::Completions => {
                let choice = TextChoice {
                    text: step.text,
                    index,
                    logprobs: text_logprobs(logprobs, tokenizer),
                    finish_reason: step.finish_reason,
                };
                self.envelope(self.chunk_object(), vec![choice], None)
            }
            Api::Chat => {
                let choice = ChatChunkChoice {
                    index,
                    delta: Delta {
                        role: None,
                        content: (!step.text.is_empty()).then_some(step.text),
                    },
                    logprobs: chat_logprobs(logprobs, tokenizer),
                    finish_reason: step.finish_reason,
                };
                self.envelope(self.chunk_object(), vec![choice], None)
            }
        })
    }

    /// The last chunk of a stream that asked for `include_usage`: no choices, the counts.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        self.envelope::<TextChoice>(self.chunk_object(), Vec::new(), Some(usage))
    }
}

/// A token as text: its own decoding, special tokens written out (U+FFFD for a part of a
/// character).
fn token_text(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer
        .decode(&[id], false)
        .ok()
        .or_else(|| tokenizer.id_to_token(id))
        .unwrap_or_default()
}

fn text_logprobs(logprobs: &[PlacedLogprob], tokenizer: &Tokenizer) -> Option<TextLogprobs> {
    if logprobs.is_empty() {
        return None;
    }
    let mut out = TextLogprobs::default();
    for placed in logprobs {
        out.tokens.push(token_text(tokenizer, placed.id));
        out.token_logprobs.push(placed.logprob.logprob);
        out.top_logprobs.push(
            placed
                .logprob
                .top_logprobs
                .iter()
                .map(|top| (token_text(tokenizer, top.id), Value::from(top.logprob)))
                .collect(),
        );
        out.text_offset.push(placed.text_offset);
    }
    Some(out)
}

fn chat_logprobs(logprobs: &[PlacedLogprob], tokenizer: &Tokenizer) -> Option<ChatLogprobs> {
    if logprobs.is_empty() {
        return None;
    }
    let content = logprobs
        .iter()
        .map(|placed| {
            let token = token_text(tokenizer, placed.id);
            ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: placed.logprob.logprob,
                top_logprobs: placed
                    .logprob
                    .top_logprobs
                    .iter()
                    .map(|top| {
                        let token = token_text(tokenizer, top.id);
                        ChatTopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob: top.logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    Some(ChatLogprobs { content })
}
