//! `stream: true`: the answer as server-sent events, `data: {chunk}` per token as it comes,
//! then `data: [DONE]`, as OpenAI sends them.
//!
//! The event stream owns the choices' receivers: when the client leaves, the server drops
//! the stream, and with it the receivers, which stops their sequences.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::choice::Running;
use super::response::{Answer, Usage};
use crate::state::AppState;

/// The events of one streamed answer, produced as its tokens come.
struct Events {
    state: AppState,
    answer: Answer,
    running: Running,
    prompt_tokens: usize,
    include_usage: bool,
    /// Made and not yet sent.
    ready: VecDeque<Event>,
    /// `[DONE]` is queued: nothing follows.
    done: bool,
}

impl Events {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            match self.running.next().await {
                Some(Ok((index, step))) => {
                    let tokenizer = self.state.pipeline.tokenizer();
                    if let Some(chunk) = self.answer.chunk(index, step, tokenizer) {
                        self.ready.push_back(data(&chunk));
                    }
                }
                Some(Err(error)) => {
                    // The status is sent already: the error goes in the stream, as OpenAI's
                    // and vLLM's servers send it.
                    self.ready.push_back(data(&error.openai_body()));
                    self.finish();
                }
                None => {
                    if self.include_usage {
                        let usage =
                            Usage::new(self.prompt_tokens, self.running.completion_tokens());
                        self.ready.push_back(data(&self.answer.usage_chunk(usage)));
                    }
                    self.finish();
                }
            }
        }
    }

    fn finish(&mut self) {
        self.ready.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

fn data(chunk: &Value) -> Event {
    Event::default().data(chunk.to_string())
}

/// The streamed answer: each choice's opening chunk, then the tokens of all choices as they
/// come.
pub(crate) fn respond(
    state: AppState,
    answer: Answer,
    running: Running,
    prompt_tokens: usize,
    include_usage: bool,
) -> Response {
    let ready = (0..running.choices.len())
        .filter_map(|index| answer.opening(index))
        .map(|chunk| data(&chunk))
        .collect();
    let events = Events {
        state,
        answer,
        running,
        prompt_tokens,
        include_usage,
        ready,
        done: false,
    };
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let event = events.next().await?;
        Some((Ok::<_, Infallible>(event), events))
    });
    Sse::new(stream).into_response()
}
