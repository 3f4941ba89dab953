//! Text generation: transformers' `TextGenerationPipeline` over [`crate::generation`].

use std::ops::ControlFlow;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::generation::{
    FinishReason, Generated, GenerationConfig, GenerationStream, Generator, StreamToken,
    TokenLogprob,
};
use crate::models::config::ModelConfig;
use crate::models::gpt2::Gpt2LMHeadModel;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::chat::ChatTemplate;
use crate::pipelines::{in_batches, Pipeline, Text};
use crate::tokenizer::{EncodeOptions, Tokenizer};

/// One generated text, as transformers' pipeline returns it, plus what a server reports:
/// the new token ids, why generation finished, the token counts and, when asked for, the
/// log-probabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedText {
    /// The prompt and its continuation (or the continuation alone, without
    /// `return_full_text`). A stop string is kept, as transformers keeps it.
    pub generated_text: String,
    /// The new tokens only.
    pub generated_token_ids: Vec<u32>,
    /// Why generation finished (`"stop"`, `"length"`, `"cancelled"` in JSON, as OpenAI).
    pub finish_reason: FinishReason,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// New tokens.
    pub completion_tokens: usize,
    /// The stop string that ended generation, and the byte offset in `generated_text` where
    /// it starts: cut there for OpenAI's behaviour, which leaves the stop string out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopMatch>,
    /// One per new token, when the generation config asks for `logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// Where a stop string ended a generated text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopMatch {
    /// The stop string.
    pub string: String,
    /// Byte offset in `generated_text` of its first occurrence after the prompt (the start of
    /// the continuation when the match began inside the prompt).
    pub offset: usize,
}

/// Settings of one [`TextGenerationPipeline::run`].
#[derive(Debug, Clone)]
pub struct TextGenerationOptions {
    /// The generation settings; `None` uses the model's own
    /// ([`TextGenerationPipeline::generation_config`]).
    pub generation: Option<GenerationConfig>,
    /// Overrides the new-token limit of the generation settings.
    pub max_new_tokens: Option<usize>,
    /// Put the prompt in front of the continuation (transformers' default, `true`).
    pub return_full_text: bool,
    /// Prompts generated together (left-padded).
    pub batch_size: usize,
}

impl Default for TextGenerationOptions {
    fn default() -> Self {
        Self {
            generation: None,
            max_new_tokens: None,
            return_full_text: true,
            batch_size: super::DEFAULT_BATCH_SIZE,
        }
    }
}

impl TextGenerationOptions {
    /// Generate with these settings instead of the model's.
    pub fn with_generation(mut self, generation: GenerationConfig) -> Self {
        self.generation = Some(generation);
        self
    }

    /// Generate at most `max_new_tokens` new tokens.
    pub fn with_max_new_tokens(mut self, max_new_tokens: usize) -> Self {
        self.max_new_tokens = Some(max_new_tokens);
        self
    }

    /// Whether the prompt comes before the continuation in `generated_text`.
    pub fn with_return_full_text(mut self, return_full_text: bool) -> Self {
        self.return_full_text = return_full_text;
        self
    }

    /// How many prompts generate together.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
}

/// Text generation with a GPT-2 model: owns its model and tokenizer, so it is
/// `Send + Sync + 'static` and can be shared between threads (and by [`super::Conversation`])
/// with an `Arc`.
#[derive(Debug, Clone)]
pub struct TextGenerationPipeline {
    model: Gpt2LMHeadModel,
    tokenizer: Tokenizer,
    generation_config: GenerationConfig,
    model_config: ModelConfig,
    /// The model's chat template, or why it could not be read.
    chat_template: std::result::Result<Option<ChatTemplate>, String>,
}

impl TextGenerationPipeline {
    /// Load `model` (a Hub id or a local folder): weights, tokenizer, `generation_config.json`
    /// and the `chat_template` of `tokenizer_config.json` when it has one.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        // A template this crate cannot render fails the chats that need it, not the load:
        // plain generation does not use it.
        let chat_template = match pretrained.source().get("tokenizer_config.json")? {
            Some(path) => {
                ChatTemplate::from_tokenizer_config(&path, None).map_err(|error| error.to_string())
            }
            None => Ok(None),
        };
        Ok(Self {
            model: pretrained.load::<Gpt2LMHeadModel>(options)?,
            tokenizer: pretrained.tokenizer()?,
            generation_config: GenerationConfig::from_source(pretrained.source())?,
            model_config: pretrained.config().clone(),
            chat_template,
        })
    }

    /// Use `template` for chat instead of the model's (`None`: DialoGPT's end-of-text joining).
    pub fn with_chat_template(mut self, template: Option<ChatTemplate>) -> Self {
        self.chat_template = Ok(template);
        self
    }

    /// The model's generation settings: start from these and override what you need.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation_config
    }

    /// The model.
    pub fn model(&self) -> &Gpt2LMHeadModel {
        &self.model
    }

    /// The chat template of `tokenizer_config.json`, if the model has one; an error if it has
    /// one that cannot be parsed.
    pub fn chat_template(&self) -> Result<Option<&ChatTemplate>> {
        match &self.chat_template {
            Ok(template) => Ok(template.as_ref()),
            Err(message) => Err(Error::ChatTemplate(message.clone())),
        }
    }

    /// The generation settings `options` resolve to.
    pub fn settings(&self, options: &TextGenerationOptions) -> GenerationConfig {
        let mut config = options
            .generation
            .clone()
            .unwrap_or_else(|| self.generation_config.clone());
        if let Some(max_new_tokens) = options.max_new_tokens {
            config.max_new_tokens = Some(max_new_tokens);
        }
        config
    }

    /// Generate from one prompt as an iterator of tokens, one decoding step per item;
    /// dropping it stops generation. See [`Generator::stream`].
    pub fn stream(
        &self,
        prompt: &str,
        options: &TextGenerationOptions,
    ) -> Result<GenerationStream<'_, Gpt2LMHeadModel>> {
        Generator::new(&self.model, &self.tokenizer).stream(prompt, &self.settings(options))
    }

    /// Generate from one prompt, passing each token to `on_token` as it is chosen;
    /// [`ControlFlow::Break`] stops generation (see [`Generator::generate_stream`]).
    pub fn run_streaming(
        &self,
        prompt: &str,
        options: &TextGenerationOptions,
        on_token: impl FnMut(&StreamToken) -> ControlFlow<()>,
    ) -> Result<GeneratedText> {
        let generated = Generator::new(&self.model, &self.tokenizer).generate_stream(
            prompt,
            &self.settings(options),
            on_token,
        )?;
        self.to_output(
            prompt,
            &self.decoded_prompt(prompt)?,
            &generated,
            options.return_full_text,
        )
    }

    /// The prompt as the tokenizer decodes it back, which is what the full decode starts with.
    fn decoded_prompt(&self, prompt: &str) -> Result<String> {
        let prompt_ids = self.tokenizer.encode(prompt, &EncodeOptions::default())?;
        self.tokenizer.decode(prompt_ids.get_ids(), true)
    }

    /// The pipeline's text, as transformers builds it: the continuation is the full decode
    /// minus the decoded prompt, and the full text puts the prompt as given in front of it.
    fn to_output(
        &self,
        prompt: &str,
        decoded_prompt: &str,
        generated: &Generated,
        return_full_text: bool,
    ) -> Result<GeneratedText> {
        let continuation = match generated.text.get(decoded_prompt.len()..) {
            Some(rest) if generated.text.starts_with(decoded_prompt) => rest.to_string(),
            _ => self.tokenizer.decode(&generated.token_ids, true)?,
        };
        let before = if return_full_text { prompt.len() } else { 0 };
        let stop = generated.stop_string.as_ref().map(|string| StopMatch {
            offset: before + continuation.find(string.as_str()).unwrap_or(0),
            string: string.clone(),
        });
        Ok(GeneratedText {
            generated_text: if return_full_text {
                format!("{prompt}{continuation}")
            } else {
                continuation
            },
            generated_token_ids: generated.token_ids.clone(),
            finish_reason: generated.finish_reason,
            prompt_tokens: generated.prompt_tokens,
            completion_tokens: generated.completion_tokens,
            stop,
            logprobs: generated.logprobs.clone(),
        })
    }
}

impl Pipeline for TextGenerationPipeline {
    type Kind = Text;
    type Options = TextGenerationOptions;
    /// `num_return_sequences` texts for one prompt.
    type Output = Vec<GeneratedText>;

    fn run_inputs(
        &self,
        prompts: &[&str],
        options: &TextGenerationOptions,
    ) -> Result<Vec<Vec<GeneratedText>>> {
        let config = self.settings(options);
        let lengths = prompts
            .iter()
            .map(|p| Ok(self.tokenizer.encode(*p, &EncodeOptions::default())?.len()))
            .collect::<Result<Vec<_>>>()?;
        let generator = Generator::new(&self.model, &self.tokenizer);
        in_batches(&lengths, options.batch_size, |indices| {
            let batch: Vec<&str> = indices.iter().map(|&i| prompts[i]).collect();
            let outputs = generator.generate(&batch, &config)?;
            outputs
                .chunks(config.num_return_sequences)
                .zip(&batch)
                .map(|(sequences, prompt)| {
                    let decoded = self.decoded_prompt(prompt)?;
                    sequences
                        .iter()
                        .map(|g| self.to_output(prompt, &decoded, g, options.return_full_text))
                        .collect()
                })
                .collect()
        })
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn config(&self) -> &ModelConfig {
        &self.model_config
    }
}
