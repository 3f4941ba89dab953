//! The choices of a request as their tokens arrive: each one's text cut before its first stop
//! string, as OpenAI cuts it (the generator keeps the stop string, as transformers does), and
//! held back while its end could still turn into one, so that a stream never sends what the
//! whole answer leaves out.

use std::sync::Arc;

use futures_util::future::select_all;

use crate::batching::generation::TokenReceiver;
use crate::http::error::ServeError;
use ferroformers::generation::{FinishReason, StreamToken, TokenLogprob};

/// A choice's text, released as far as no stop string can start in it. It begins with the
/// prompt's end, which is never released: a stop string may start in the prompt, as the
/// generator matches it (over the whole text); OpenAI then leaves the whole continuation out.
#[derive(Debug)]
struct StopCut {
    stop: Arc<[String]>,
    /// Bytes of a stop string but one: how far back a match can start.
    reach: usize,
    /// The prompt's end, then the tokens' text.
    text: String,
    /// Where the continuation starts in `text`.
    continuation: usize,
    /// Characters of the continuation (for OpenAI's `text_offset`, which counts characters).
    chars: usize,
    /// End of the text given out.
    released: usize,
    /// Where the first stop string starts (at the continuation's start when it starts in the
    /// prompt), once one has appeared.
    cut: Option<usize>,
}

impl StopCut {
    fn new(stop: Arc<[String]>, prompt: &str) -> Self {
        let reach = stop.iter().map(String::len).max().unwrap_or(1).max(1) - 1;
        let context = &prompt[char_boundary_before(prompt, prompt.len().saturating_sub(reach))..];
        Self {
            stop,
            reach,
            text: context.to_string(),
            continuation: context.len(),
            chars: 0,
            released: context.len(),
            cut: None,
        }
    }

    /// Add a token's text; returns what can be given out now.
    fn push(&mut self, piece: &str) -> &str {
        let start = self.released;
        if self.cut.is_none() {
            // Text before holds no stop string that reaches the continuation: only one that
            // reaches into the new piece can be new.
            let from = self.text.len().saturating_sub(self.reach);
            self.text.push_str(piece);
            self.chars += piece.chars().count();
            self.cut = self
                .matches_from(char_boundary_before(&self.text, from))
                .map(|at| at.max(self.continuation));
        }
        let end = match self.cut {
            Some(cut) => cut,
            None => self.undecided_from(),
        };
        self.released = end.max(start);
        &self.text[start..self.released]
    }

    /// The rest at the end of the sequence. When the generator says a stop string ended it
    /// but none was seen here (the two decode special tokens differently), nothing more.
    fn finish(&mut self, ended_by_stop_string: bool) -> &str {
        let start = self.released;
        let end = match self.cut {
            Some(cut) => cut,
            None if ended_by_stop_string => start,
            None => self.text.len(),
        };
        self.released = end.max(start);
        &self.text[start..self.released]
    }

    /// The first start, from `from`, of a stop string that reaches the continuation.
    fn matches_from(&self, from: usize) -> Option<usize> {
        (from..self.text.len())
            .filter(|&at| self.text.is_char_boundary(at))
            .find(|&at| {
                self.stop.iter().any(|stop| {
                    self.text[at..].starts_with(stop.as_str())
                        && at + stop.len() > self.continuation
                })
            })
    }

    /// Where the text's end could still become a stop string: the first position at which
    /// the rest is the beginning of one (the text's length if there is none).
    fn undecided_from(&self) -> usize {
        let from = char_boundary_before(&self.text, self.text.len().saturating_sub(self.reach));
        (from..self.text.len())
            .filter(|&at| self.text.is_char_boundary(at))
            .find(|&at| {
                let rest = &self.text[at..];
                self.stop.iter().any(|stop| stop.starts_with(rest))
            })
            .unwrap_or(self.text.len())
    }

    /// Whether a stop string has appeared: the choice is over.
    fn stopped(&self) -> bool {
        self.cut.is_some()
    }
}

/// The last character boundary of `text` at or before `at`.
fn char_boundary_before(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// A generated token's log-probabilities and where its text starts in the choice's text.
#[derive(Debug, Clone)]
pub(crate) struct PlacedLogprob {
    /// The token.
    pub id: u32,
    /// Its log-probability and the most likely alternatives.
    pub logprob: TokenLogprob,
    /// Characters of the choice's text (stop strings included) before this token's text.
    pub text_offset: usize,
}

/// What one token added to a choice.
#[derive(Debug)]
pub(crate) struct Step {
    /// Text to give out now (empty while held back).
    pub text: String,
    /// The token's log-probabilities, when asked for.
    pub logprob: Option<PlacedLogprob>,
    /// Set once the choice is over: OpenAI's `finish_reason`.
    pub finish_reason: Option<&'static str>,
}

/// One choice of the answer.
#[derive(Debug)]
pub(crate) struct Choice {
    /// Its `index` in the answer.
    pub index: usize,
    text: StopCut,
    /// The text given out so far: the whole answer once the choice is over.
    pub content: String,
    /// Tokens generated (the end token and a token that completed a stop string included).
    pub completion_tokens: usize,
    /// One per token, when asked for.
    pub logprobs: Vec<PlacedLogprob>,
    /// Set once the choice is over.
    pub finish_reason: Option<&'static str>,
}

impl Choice {
    fn new(index: usize, stop: Arc<[String]>, prompt: &str) -> Self {
        Self {
            index,
            text: StopCut::new(stop, prompt),
            content: String::new(),
            completion_tokens: 0,
            logprobs: Vec::new(),
            finish_reason: None,
        }
    }

    fn push(&mut self, token: StreamToken) -> Step {
        self.completion_tokens += 1;
        let logprob = token.logprob.map(|logprob| PlacedLogprob {
            id: token.id,
            logprob,
            text_offset: self.text.chars,
        });
        let mut text = self.text.push(&token.text).to_string();
        let finish_reason = if self.text.stopped() {
            Some("stop")
        } else if let Some(reason) = token.finish_reason {
            text.push_str(self.text.finish(reason == FinishReason::StopString));
            Some(openai_finish_reason(reason))
        } else {
            None
        };
        self.content.push_str(&text);
        self.logprobs.extend(logprob.clone());
        self.finish_reason = finish_reason;
        Step {
            text,
            logprob,
            finish_reason,
        }
    }
}

/// OpenAI's name: an end token and a stop string are both `stop`.
fn openai_finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::EndOfSequence | FinishReason::StopString => "stop",
        FinishReason::MaxTokens => "length",
        FinishReason::Cancelled => "cancelled",
    }
}

/// The choices of one request, generating: their tokens are read together, whichever comes
/// first, so that no choice waits on another. A finished choice's receiver is dropped, which
/// also stops its sequence when it ended on a stop string the generator did not see yet.
#[derive(Debug)]
pub(crate) struct Running {
    stop: Arc<[String]>,
    /// Receivers of the choices not over yet, with their index.
    live: Vec<(usize, TokenReceiver)>,
    /// All the choices, by index.
    pub choices: Vec<Choice>,
}

impl Running {
    /// No choice yet; every choice will stop before the first of `stop`.
    pub fn new(stop: &[String]) -> Self {
        Self {
            stop: stop.into(),
            live: Vec::new(),
            choices: Vec::new(),
        }
    }

    /// The next choice: the tokens of `receiver`, which continue `prompt`.
    pub fn add(&mut self, receiver: TokenReceiver, prompt: &str) {
        let index = self.choices.len();
        self.choices
            .push(Choice::new(index, Arc::clone(&self.stop), prompt));
        self.live.push((index, receiver));
    }

    /// The next token of any choice, with the choice's index; `None` when all are over.
    pub async fn next(&mut self) -> Option<Result<(usize, Step), ServeError>> {
        if self.live.is_empty() {
            return None;
        }
        let waiting = self
            .live
            .iter_mut()
            .map(|(_, receiver)| Box::pin(receiver.recv()));
        let (token, position, _) = select_all(waiting).await;
        let index = self.live[position].0;
        let step = match token {
            Some(Ok(token)) => self.choices[index].push(token),
            Some(Err(error)) => return Some(Err(error.into())),
            None => {
                self.live.swap_remove(position);
                return Some(Err(ServeError::Internal(format!(
                    "the generation of choice {index} ended without a finish reason"
                ))));
            }
        };
        if step.finish_reason.is_some() {
            self.live.swap_remove(position);
        }
        Some(Ok((index, step)))
    }

    /// Read every choice to its end.
    pub async fn finish(mut self) -> Result<Vec<Choice>, ServeError> {
        while let Some(step) = self.next().await {
            step?;
        }
        Ok(self.choices)
    }

    /// Tokens generated by all choices so far.
    pub fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.completion_tokens).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `pieces` (the last one ends the sequence with `reason`) and return what each
    /// push gave out.
    fn run(stop: &[&str], prompt: &str, pieces: &[&str], reason: FinishReason) -> Vec<String> {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut choice = Choice::new(0, stop.into(), prompt);
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                let last = i + 1 == pieces.len();
                choice
                    .push(StreamToken {
                        id: 0,
                        text: piece.to_string(),
                        logprob: None,
                        finish_reason: last.then_some(reason),
                    })
                    .text
            })
            .collect()
    }

    #[test]
    fn text_that_may_start_a_stop_string_waits_until_it_is_decided() {
        // "<e" may begin "<end>": held back; "<x" does not: given out with the next token.
        assert_eq!(
            run(
                &["<end>"],
                "p",
                &["a <", "x b <", "e", "n", "d>"],
                FinishReason::StopString
            ),
            ["a ", "<x b ", "", "", ""]
        );
        assert_eq!(
            run(&["<end>"], "p", &["a <", "e", "x"], FinishReason::MaxTokens),
            ["a ", "", "<ex"]
        );
    }

    #[test]
    fn the_first_stop_string_cuts_and_ends_the_choice() {
        let stop: Vec<String> = vec!["yz".into(), "b".into()];
        let mut choice = Choice::new(3, stop.into(), "prompt");
        let token = |text: &str| StreamToken {
            id: 1,
            text: text.to_string(),
            logprob: None,
            finish_reason: None,
        };
        assert_eq!(choice.push(token("xy")).text, "x");
        let step = choice.push(token("zab"));
        assert_eq!((step.text.as_str(), step.finish_reason), ("", Some("stop")));
        assert_eq!(choice.content, "x");
        assert_eq!(choice.completion_tokens, 2);
    }

    #[test]
    fn a_stop_string_that_starts_in_the_prompt_leaves_the_continuation_out() {
        // "end" starts with the prompt's last character: nothing of "nd" goes out.
        assert_eq!(
            run(&["end"], "the e", &["n", "d"], FinishReason::StopString),
            ["", ""]
        );
        // A stop string wholly inside the prompt does not count (as the generator's).
        assert_eq!(
            run(&["end"], "the end", &["a", "b"], FinishReason::MaxTokens),
            ["a", "b"]
        );
    }

    #[test]
    fn without_stop_strings_every_piece_goes_out_at_once() {
        assert_eq!(
            run(&[], "p", &["é", "", "x"], FinishReason::EndOfSequence),
            ["é", "", "x"]
        );
    }
}
