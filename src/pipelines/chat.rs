//! Chat. With a chat template in `tokenizer_config.json` ([`ChatTemplate`]), the messages are
//! rendered as transformers renders them and the model continues the rendering. Without one,
//! as DialoGPT: each turn ends with the end-of-text token and the model continues the whole
//! history. Either way the oldest turns are dropped when the history no longer fits the
//! context (a system message stays).

use std::sync::Arc;

pub use crate::tokenizer::chat_template::{ChatTemplate, Message, Role};

use crate::error::{Error, Result};
use crate::generation::{GenerationConfig, Generator, PromptBatch};
use crate::pipelines::text_generation::TextGenerationPipeline;
use crate::pipelines::Pipeline;

/// A message and its token ids as DialoGPT's joining feeds them to the model (the text and
/// end-of-text for the user's turns, the reply's tokens as generated); unused with a template.
#[derive(Debug, Clone)]
struct Turn {
    message: Message,
    ids: Vec<u32>,
}

/// A conversation with a shared pipeline: holds the messages, not a borrow, so it can live as
/// long as a session does.
#[derive(Debug, Clone)]
pub struct Conversation {
    pipeline: Arc<TextGenerationPipeline>,
    turns: Vec<Turn>,
}

impl Conversation {
    /// An empty conversation with `pipeline`, rendered with its chat template if it has one.
    pub fn new(pipeline: Arc<TextGenerationPipeline>) -> Self {
        Self {
            pipeline,
            turns: Vec::new(),
        }
    }

    /// Start with a system message.
    pub fn with_system(mut self, content: &str) -> Result<Self> {
        let message = Message::new(Role::System, content);
        let eos = &self.pipeline.generation_config().eos_token_id;
        let ids = match self.pipeline.chat_template()? {
            Some(_) => Vec::new(),
            None => self.pipeline.encode_turn(content, eos)?,
        };
        self.turns.push(Turn { message, ids });
        Ok(self)
    }

    /// Forget the history.
    pub fn reset(&mut self) {
        self.turns.clear();
    }

    /// Number of messages kept (user turns and replies, and the system message).
    pub fn len(&self) -> usize {
        self.turns.len()
    }

    /// No message yet.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// The messages kept, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        self.turns.iter().map(|t| t.message.clone()).collect()
    }

    /// Add the user's message, generate and return the reply (`config.max_new_tokens` long
    /// at most).
    pub fn respond(&mut self, user: &str, config: &GenerationConfig) -> Result<String> {
        let new_tokens = config.max_new_tokens.ok_or_else(|| {
            Error::InvalidGeneration("chat needs max_new_tokens, the length of a reply".to_string())
        })?;
        let room = self.pipeline.model().max_positions();
        let ids = match self.pipeline.chat_template()? {
            Some(_) => Vec::new(),
            None => self.pipeline.encode_turn(user, &config.eos_token_id)?,
        };
        self.turns.push(Turn {
            message: Message::new(Role::User, user),
            ids,
        });
        // Drop the oldest turns (after a system message) until history plus reply fits.
        let prompt = loop {
            let prompt = self.prompt()?;
            if prompt.len() + new_tokens <= room {
                break prompt;
            }
            let first = usize::from(self.turns[0].message.role == Role::System);
            if self.turns.len() - first <= 1 {
                self.turns.pop();
                return Err(Error::InputTooLong {
                    length: prompt.len() + new_tokens,
                    max: room,
                });
            }
            self.turns.remove(first);
        };
        let config = GenerationConfig {
            max_new_tokens: Some(new_tokens),
            ..config.clone()
        };
        let tokenizer = self.pipeline.tokenizer();
        let pad = config.fill_token().unwrap_or(0);
        let batch = PromptBatch::left_padded(vec![prompt.clone()], pad)?;
        let sequence = Generator::new(self.pipeline.model(), tokenizer)
            .generate_ids(&batch, &config)?
            .remove(0);
        // The reply as generated, its end token included when there is one.
        let mut reply = sequence[prompt.len()..].to_vec();
        if let Some(end) = reply.iter().position(|t| config.eos_token_id.contains(t)) {
            reply.truncate(end + 1);
        }
        let text = tokenizer.decode(&reply, true)?;
        self.turns.push(Turn {
            message: Message::new(Role::Assistant, text.clone()),
            ids: reply,
        });
        Ok(text)
    }

    /// The token ids the model continues: the rendered template, or the joined turns.
    fn prompt(&self) -> Result<Vec<u32>> {
        match self.pipeline.chat_template()? {
            Some(template) => Ok(self.pipeline.encode_chat(template, &self.messages())?.1),
            None => Ok(self.turns.iter().flat_map(|t| t.ids.clone()).collect()),
        }
    }
}
