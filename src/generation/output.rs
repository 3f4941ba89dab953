//! What generation returns: results with their finish reason and token counts, streamed
//! tokens, and log-probabilities.

use serde::Serialize;

/// Why a sequence stopped.
///
/// Serialized as OpenAI's `finish_reason`: [`EndOfSequence`](FinishReason::EndOfSequence) and
/// [`StopString`](FinishReason::StopString) are both `"stop"` (OpenAI does not tell them
/// apart), [`MaxTokens`](FinishReason::MaxTokens) is `"length"`, and
/// [`Cancelled`](FinishReason::Cancelled), which OpenAI has no name for, is `"cancelled"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token (`eos_token_id`).
    #[serde(rename = "stop")]
    EndOfSequence,
    /// `max_new_tokens` (or `max_length`) was reached.
    #[serde(rename = "length")]
    MaxTokens,
    /// The text came to contain one of the `stop_strings`.
    #[serde(rename = "stop")]
    StopString,
    /// The caller stopped generation early: a dropped stream or a callback that broke.
    #[serde(rename = "cancelled")]
    Cancelled,
}

/// One of the most likely tokens at a position, with its log-probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TopLogprob {
    /// Token id.
    pub id: u32,
    /// Natural log of its probability.
    pub logprob: f32,
}

/// The log-probability of a generated token, as OpenAI reports it: the log-softmax of the
/// model's raw logits at that step (transformers' `output_logits`), before the repetition
/// penalty, temperature, top-k or top-p change them. So it is the model's own distribution,
/// the same whatever the sampling settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// Natural log of the chosen token's probability.
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens, best first (ties: lower id first).
    pub top_logprobs: Vec<TopLogprob>,
}

/// A generated sequence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generated {
    /// Prompt plus continuation, decoded without special tokens (what transformers' pipeline
    /// returns as `generated_text`). A stop string is kept, as transformers keeps it.
    pub text: String,
    /// The new tokens only, up to and including the one that ended the sequence; no filler.
    pub token_ids: Vec<u32>,
    /// Why the sequence ended.
    pub finish_reason: FinishReason,
    /// Tokens of the prompt (without padding).
    pub prompt_tokens: usize,
    /// New tokens: the length of `token_ids`.
    pub completion_tokens: usize,
    /// With [`FinishReason::StopString`], the stop string that ended the text (the first to
    /// occur in the continuation), so that a server can cut the text before it as OpenAI does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_string: Option<String>,
    /// One per new token when the config asks for `logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// One new token of a stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamToken {
    /// Token id.
    pub id: u32,
    /// The text this token completes. Empty while a character spans several tokens and is
    /// not yet complete; it then comes with the token that completes it. The pieces of a
    /// stream concatenate to the continuation exactly (the last one also carries whatever an
    /// incomplete character left, as U+FFFD, as the full decode shows it).
    pub text: String,
    /// When the config asks for `logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprob: Option<TokenLogprob>,
    /// Set on the last token: why the sequence ended.
    pub finish_reason: Option<FinishReason>,
}
