//! Text generation: transformers' `TextGenerationPipeline` over [`crate::generation`].

use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::Result;
use crate::generation::{Generated, GenerationConfig, Generator};
use crate::models::gpt2::Gpt2LMHeadModel;
use crate::pipelines::in_batches;
use crate::pretrained::{LoadOptions, Pretrained};
use crate::tokenizer::{EncodeOptions, Tokenizer};

/// One generated text, as transformers' pipeline returns it, plus the new token ids.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedText {
    /// The prompt and its continuation (or the continuation alone, without
    /// `return_full_text`).
    pub generated_text: String,
    /// The new tokens only.
    pub generated_token_ids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct TextGenerationPipeline {
    model: Gpt2LMHeadModel,
    tokenizer: Tokenizer,
    config: GenerationConfig,
    model_config: ModelConfig,
    /// Prompts generated together (left-padded).
    pub batch_size: usize,
}

impl TextGenerationPipeline {
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        Ok(Self {
            model: pretrained.load::<Gpt2LMHeadModel>(options)?,
            tokenizer: pretrained.tokenizer()?,
            config: pretrained.generation_config()?,
            model_config: pretrained.config().clone(),
            batch_size: super::DEFAULT_BATCH_SIZE,
        })
    }

    /// The model's generation settings: start from these and override what you need.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// The model's `config.json`.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }

    pub fn model(&self) -> &Gpt2LMHeadModel {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `num_return_sequences` texts per prompt, prompts in input order.
    pub fn generate(
        &self,
        prompts: &[&str],
        config: &GenerationConfig,
        return_full_text: bool,
    ) -> Result<Vec<Vec<GeneratedText>>> {
        let lengths = prompts
            .iter()
            .map(|p| Ok(self.tokenizer.encode(*p, &EncodeOptions::default())?.len()))
            .collect::<Result<Vec<_>>>()?;
        let generator = Generator::new(&self.model, &self.tokenizer);
        in_batches(&lengths, self.batch_size, |indices| {
            let batch: Vec<&str> = indices.iter().map(|&i| prompts[i]).collect();
            let outputs = generator.generate(&batch, config)?;
            outputs
                .chunks(config.num_return_sequences)
                .zip(&batch)
                .map(|(sequences, prompt)| {
                    let decoded = self.decoded_prompt(prompt)?;
                    sequences
                        .iter()
                        .map(|g| self.to_output(prompt, &decoded, g, return_full_text))
                        .collect()
                })
                .collect()
        })
    }

    /// Generate from one prompt, passing text pieces to `on_piece` as they decode.
    pub fn generate_stream(
        &self,
        prompt: &str,
        config: &GenerationConfig,
        return_full_text: bool,
        on_piece: impl FnMut(&str),
    ) -> Result<GeneratedText> {
        let generated = Generator::new(&self.model, &self.tokenizer)
            .generate_stream(prompt, config, on_piece)?;
        self.to_output(
            prompt,
            &self.decoded_prompt(prompt)?,
            &generated,
            return_full_text,
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
        Ok(GeneratedText {
            generated_text: if return_full_text {
                format!("{prompt}{continuation}")
            } else {
                continuation
            },
            generated_token_ids: generated.token_ids.clone(),
        })
    }
}
