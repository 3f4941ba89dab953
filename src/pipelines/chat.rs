//! Chat with DialoGPT-style GPT-2 models: each turn ends with the end-of-text token, the model
//! continues the whole history, and the oldest turns are dropped when the history no longer
//! fits the context.

use crate::error::{Error, Result};
use crate::generation::{GenerationConfig, Generator};
use crate::pipelines::text_generation::TextGenerationPipeline;
use crate::tokenizer::EncodeOptions;

/// A conversation: the history as token ids, turn by turn.
#[derive(Debug)]
pub struct Conversation<'a> {
    pipeline: &'a TextGenerationPipeline,
    /// Token ids of each past turn (user turns and replies), each as the model saw it.
    turns: Vec<Vec<u32>>,
}

impl<'a> Conversation<'a> {
    pub fn new(pipeline: &'a TextGenerationPipeline) -> Self {
        Self {
            pipeline,
            turns: Vec::new(),
        }
    }

    /// Forget the history.
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Number of turns kept (user turns and replies).
    pub fn len(&self) -> usize {
        self.turns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Add the user's message, generate and return the reply.
    pub fn respond(&mut self, user: &str, config: &GenerationConfig) -> Result<String> {
        let tokenizer = self.pipeline.tokenizer();
        let eos = config.eos_token_id.first().copied().ok_or_else(|| {
            Error::InvalidGeneration("chat needs an end-of-text token (eos_token_id)".to_string())
        })?;
        let mut user_turn = tokenizer
            .encode(user, &EncodeOptions::default())?
            .get_ids()
            .to_vec();
        user_turn.push(eos);
        let room = self.pipeline.model().config().n_positions;
        let new_tokens = config.max_new_tokens.ok_or_else(|| {
            Error::InvalidGeneration("chat needs max_new_tokens, the length of a reply".to_string())
        })?;
        if user_turn.len() + new_tokens > room {
            return Err(Error::InputTooLong {
                length: user_turn.len() + new_tokens,
                max: room,
            });
        }
        self.turns.push(user_turn);
        // Drop the oldest turns until history plus reply fits the context.
        while self.turns.iter().map(Vec::len).sum::<usize>() + new_tokens > room {
            self.turns.remove(0);
        }
        let prompt: Vec<u32> = self.turns.concat();
        let config = GenerationConfig {
            max_new_tokens: Some(new_tokens),
            ..config.clone()
        };
        let batch = crate::generation::PromptBatch::left_padded(vec![prompt.clone()], eos)?;
        let sequence = Generator::new(self.pipeline.model(), tokenizer)
            .generate_ids(&batch, &config)?
            .remove(0);
        // The reply as generated, its end token included when there is one.
        let mut reply = sequence[prompt.len()..].to_vec();
        if let Some(end) = reply.iter().position(|&t| t == eos) {
            reply.truncate(end + 1);
        }
        let text = tokenizer.decode(&reply, true)?;
        self.turns.push(reply);
        Ok(text)
    }
}
