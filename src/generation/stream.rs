//! Incremental decoding for streaming: text pieces come out as soon as they are valid UTF-8,
//! so a character whose bytes span several tokens is never split, and the pieces concatenate
//! to exactly the full decode.

use crate::error::Result;
use crate::generation::search::Decoder;
use crate::generation::{
    CausalLM, FinishReason, Generated, GenerationConfig, Generator, StreamToken, TokenLogprob,
};
use crate::tokenizer::Tokenizer;

/// Generation from one prompt as an iterator of [`StreamToken`]s, made by
/// [`Generator::stream`].
///
/// It owns the KV cache and runs one forward pass per `next()`, and none ahead: taking `k`
/// items runs exactly `k` forward passes (the first also reads the prompt), and dropping the
/// stream stops the work, with no thread left running. An error ends the stream.
#[derive(Debug)]
pub struct GenerationStream<'a, M: CausalLM> {
    generator: Generator<'a, M>,
    decoder: Decoder<'a, M>,
    text: TokenStream<'a>,
    prompt: Vec<u32>,
    config: GenerationConfig,
    logprobs: Vec<TokenLogprob>,
    failed: bool,
}

impl<'a, M: CausalLM> GenerationStream<'a, M> {
    pub(crate) fn new(
        generator: Generator<'a, M>,
        tokenizer: &'a Tokenizer,
        decoder: Decoder<'a, M>,
        prompt: Vec<u32>,
        config: GenerationConfig,
    ) -> Self {
        Self {
            generator,
            decoder,
            text: TokenStream::new(tokenizer),
            prompt,
            config,
            logprobs: Vec::new(),
            failed: false,
        }
    }

    /// The result so far: the whole sequence once the stream has ended, or what was generated
    /// before the caller stopped, with [`FinishReason::Cancelled`].
    pub fn generated(&self) -> Result<Generated> {
        let reason = self
            .decoder
            .finish_reason(0)
            .unwrap_or(FinishReason::Cancelled);
        let logprobs = self.config.logprobs.then(|| self.logprobs.clone());
        self.generator.result(
            &self.prompt,
            self.decoder.new_tokens(0),
            reason,
            logprobs,
            &self.config,
        )
    }

    fn step(&mut self) -> Result<StreamToken> {
        let step = self.decoder.step()?.swap_remove(0);
        self.logprobs.extend(step.logprob.clone());
        stream_token(&mut self.text, step.token, step.finish, step.logprob)
    }
}

/// The stream item of token `id` just chosen: the text it completes (and, when it ends the
/// sequence, whatever an incomplete character left), its finish reason and log-probability.
pub(crate) fn stream_token(
    text: &mut TokenStream,
    id: u32,
    finish_reason: Option<FinishReason>,
    logprob: Option<TokenLogprob>,
) -> Result<StreamToken> {
    let mut piece = text.push(id)?.unwrap_or_default();
    if finish_reason.is_some() {
        piece.extend(text.finish()?);
    }
    Ok(StreamToken {
        id,
        text: piece,
        logprob,
        finish_reason,
    })
}

impl<M: CausalLM> Iterator for GenerationStream<'_, M> {
    type Item = Result<StreamToken>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.decoder.done() {
            return None;
        }
        let token = self.step();
        self.failed = token.is_err();
        Some(token)
    }
}

/// Turns generated token ids, one at a time, into text pieces.
///
/// Each step decodes the tokens since the last emitted piece together with the few before it
/// (some tokenizers decode a token differently at the start of a text), and emits the new text
/// only once it no longer ends in an incomplete character (U+FFFD).
#[derive(Debug)]
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the context decoded with the unread tokens.
    prefix_offset: usize,
    /// End of what was already emitted.
    read_offset: usize,
}

impl<'a> TokenStream<'a> {
    /// An empty stream that decodes with `tokenizer`.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Add one token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let context = self.decode(self.prefix_offset, self.read_offset)?;
        let text = self.decode(self.prefix_offset, self.ids.len())?;
        if text.len() <= context.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(piece) = text.strip_prefix(context.as_str()) else {
            // Decoding with one more token rewrote earlier text; emit from the first change.
            let common = common_prefix(&context, &text);
            return Ok(Some(self.advance(&text[common..])));
        };
        Ok(Some(self.advance(piece)))
    }

    /// Whatever is left at the end of generation (possibly an incomplete character, shown as
    /// U+FFFD exactly as the full decode shows it).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let context = self.decode(self.prefix_offset, self.read_offset)?;
        let text = self.decode(self.prefix_offset, self.ids.len())?;
        let common = common_prefix(&context, &text);
        let piece = text[common..].to_string();
        self.read_offset = self.ids.len();
        Ok((!piece.is_empty()).then_some(piece))
    }

    fn advance(&mut self, piece: &str) -> String {
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        piece.to_string()
    }

    fn decode(&self, start: usize, end: usize) -> Result<String> {
        self.tokenizer.decode(&self.ids[start..end], true)
    }
}

/// Length in bytes of the longest common prefix, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}
