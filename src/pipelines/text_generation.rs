//! Text generation: transformers' `TextGenerationPipeline` over [`crate::generation`].

use serde::Serialize;

use crate::error::{Error, Result};
use crate::generation::{
    FinishReason, Generated, GenerationConfig, GenerationStream, Generator, StreamToken,
    TokenLogprob,
};
use crate::models::auto::AutoModelForCausalLM;
use crate::models::pretrained::{LoadOptions, Pretrained};
use crate::pipelines::{in_batches, BatchOptions, Pipeline, PipelineBase, Text};
// From the tokenizer, not from `chat`: chat builds on this pipeline, not the reverse.
use crate::tokenizer::chat_template::{ChatTemplate, Message};
use crate::tokenizer::EncodeOptions;

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
}

impl BatchOptions for TextGenerationOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// Text generation with a decoder (GPT-2 or the Llama family): owns its model and tokenizer, so it is
/// `Send + Sync + 'static` and can be shared between threads (and by a chat's
/// `Conversation`) with an `Arc`.
#[derive(Debug, Clone)]
pub struct TextGenerationPipeline {
    base: PipelineBase<AutoModelForCausalLM>,
    generation_config: GenerationConfig,
    /// The model's chat template, or why it could not be read.
    chat_template: std::result::Result<Option<ChatTemplate>, String>,
}

impl TextGenerationPipeline {
    /// Load `model` (a Hub id or a local folder): weights, tokenizer, `generation_config.json`
    /// and its chat template (`chat_template.jinja`, or `tokenizer_config.json`'s) when it has
    /// one.
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open_with(model, options)?;
        // A GGUF file holds the model whole: its metadata stands for the generation settings
        // (as transformers' `from_model_config`) and holds the chat template.
        let (chat_template, generation_config) = match pretrained.gguf() {
            Some(file) => (
                ChatTemplate::from_gguf(file.header()),
                GenerationConfig::from_model_config(pretrained.config()),
            ),
            None => (
                ChatTemplate::from_source(pretrained.source(), None),
                GenerationConfig::from_source(pretrained.source())?,
            ),
        };
        Ok(Self {
            base: PipelineBase::load(&pretrained, options)?,
            generation_config,
            // A template this crate cannot render fails the chats that need it, not the load:
            // plain generation does not use it.
            chat_template: chat_template.map_err(|error| error.to_string()),
        })
    }

    /// Wrap a model already loaded. Its generation settings are the end and pad tokens of
    /// its config, as transformers' `GenerationConfig.from_model_config` makes them for a
    /// model without `generation_config.json` (generate with others through
    /// [`TextGenerationOptions::with_generation`]); chat joins turns as DialoGPT does
    /// unless [`with_chat_template`](Self::with_chat_template) gives a template.
    pub fn from_parts(base: PipelineBase<AutoModelForCausalLM>) -> Result<Self> {
        Ok(Self {
            generation_config: GenerationConfig::from_model_config(base.config()),
            base,
            chat_template: Ok(None),
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

    /// The chat template of `tokenizer_config.json`, if the model has one; an error if it has
    /// one that cannot be parsed.
    pub fn chat_template(&self) -> Result<Option<&ChatTemplate>> {
        match &self.chat_template {
            Ok(template) => Ok(template.as_ref()),
            Err(message) => Err(Error::ChatTemplate(message.clone())),
        }
    }

    /// A chat as the model reads it, its text and token ids: `messages` rendered by `template`
    /// with the assistant's turn opened, encoded without special tokens (the template writes
    /// them), as transformers' `apply_chat_template` does.
    pub fn encode_chat(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
    ) -> Result<(String, Vec<u32>)> {
        let text = template.render(messages, true)?;
        let options = EncodeOptions {
            add_special_tokens: false,
            ..EncodeOptions::default()
        };
        let ids = self
            .tokenizer()
            .encode(text.as_str(), &options)?
            .get_ids()
            .to_vec();
        Ok((text, ids))
    }

    /// A turn of a chat without a template, as DialoGPT reads one: `text`'s tokens and the
    /// end-of-text token (the first of `eos`).
    pub fn encode_turn(&self, text: &str, eos: &[u32]) -> Result<Vec<u32>> {
        let eos = eos.first().copied().ok_or_else(|| {
            Error::InvalidGeneration(
                "chat without a chat template needs an end-of-text token (eos_token_id)"
                    .to_string(),
            )
        })?;
        let mut ids = self
            .tokenizer()
            .encode(text, &EncodeOptions::default())?
            .get_ids()
            .to_vec();
        ids.push(eos);
        Ok(ids)
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

    /// Generate from one prompt, token by token: an iterator that runs one decoding step per
    /// item and none ahead, so dropping it (or taking only some items) stops generation;
    /// [`TextGenerationStream::generated_text`] then gives what [`Pipeline::run`] would
    /// have returned for it. Greedy or sampled, one sequence: see [`Generator::stream`].
    ///
    /// The one streaming call, an iterator rather than a callback: it runs at the caller's
    /// pace, composes with `take`, `by_ref` and `?`, and is what [`Generator::stream`]
    /// returns; a callback would be a second way to do the same.
    pub fn stream(
        &self,
        prompt: &str,
        options: &TextGenerationOptions,
    ) -> Result<TextGenerationStream<'_>> {
        let tokens = Generator::new(self.base.model(), self.base.tokenizer())
            .stream(prompt, &self.settings(options))?;
        Ok(TextGenerationStream {
            pipeline: self,
            tokens,
            prompt: prompt.to_string(),
            return_full_text: options.return_full_text,
        })
    }

    /// The prompt as the tokenizer decodes it back, which is what the full decode starts with.
    fn decoded_prompt(&self, prompt: &str) -> Result<String> {
        let prompt_ids = self
            .base
            .tokenizer()
            .encode(prompt, &EncodeOptions::default())?;
        self.base.tokenizer().decode(prompt_ids.get_ids(), true)
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
            _ => self.base.tokenizer().decode(&generated.token_ids, true)?,
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
    type Model = AutoModelForCausalLM;

    fn run_inputs(
        &self,
        prompts: &[&str],
        options: &TextGenerationOptions,
    ) -> Result<Vec<Vec<GeneratedText>>> {
        let config = self.settings(options);
        let lengths = prompts
            .iter()
            .map(|p| {
                Ok(self
                    .base
                    .tokenizer()
                    .encode(*p, &EncodeOptions::default())?
                    .len())
            })
            .collect::<Result<Vec<_>>>()?;
        let generator = Generator::new(self.base.model(), self.base.tokenizer());
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

    fn base(&self) -> &PipelineBase<AutoModelForCausalLM> {
        &self.base
    }
}

/// Generation from one prompt as an iterator of [`StreamToken`]s, made by
/// [`TextGenerationPipeline::stream`]: each `next()` runs one decoding step (the first also
/// reads the prompt); dropping it stops generation. An error ends it.
#[derive(Debug)]
pub struct TextGenerationStream<'a> {
    pipeline: &'a TextGenerationPipeline,
    tokens: GenerationStream<'a, AutoModelForCausalLM>,
    prompt: String,
    return_full_text: bool,
}

impl TextGenerationStream<'_> {
    /// The result so far, as the pipeline's `run` gives it: the whole text once the stream
    /// has ended, or what was generated before the caller stopped, with
    /// [`FinishReason::Cancelled`].
    pub fn generated_text(&self) -> Result<GeneratedText> {
        let generated = self.tokens.generated()?;
        let decoded_prompt = self.pipeline.decoded_prompt(&self.prompt)?;
        self.pipeline.to_output(
            &self.prompt,
            &decoded_prompt,
            &generated,
            self.return_full_text,
        )
    }
}

impl Iterator for TextGenerationStream<'_> {
    type Item = Result<StreamToken>;

    fn next(&mut self) -> Option<Self::Item> {
        self.tokens.next()
    }
}
