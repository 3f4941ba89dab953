//! `--task auto`: which pipeline a model is for, from its files.

use std::fmt;

use serde::Deserialize;

use ferroformers::error::{Error, Result};
use ferroformers::loading::hub::{HubOptions, ModelSource};
use ferroformers::models::config::ModelConfig;
use ferroformers::pipelines::Task;

/// What `ferroformers serve` runs, as `--task` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeTask {
    /// Sentence embeddings: `/embed`, `/v1/embeddings`.
    Embed,
    /// Sequence classification: `/predict`.
    Classify,
    /// A cross-encoder: `/rerank`.
    Rerank,
    /// Masked-token prediction: `POST /`.
    FillMask,
    /// Token classification: `POST /`.
    Ner,
    /// Extractive question answering: `POST /`.
    Qa,
    /// Text generation: `/v1/completions`, and `/v1/chat/completions` when the model has a
    /// chat template.
    Generate,
    /// Text generation for a model that must have a chat template (checked at start).
    Chat,
}

impl ServeTask {
    /// The library pipeline that serves it.
    pub fn task(self) -> Task {
        match self {
            ServeTask::Embed => Task::Embeddings,
            ServeTask::Classify => Task::TextClassification,
            ServeTask::Rerank => Task::Rerank,
            ServeTask::FillMask => Task::FillMask,
            ServeTask::Ner => Task::TokenClassification,
            ServeTask::Qa => Task::QuestionAnswering,
            ServeTask::Generate | ServeTask::Chat => Task::TextGeneration,
        }
    }

    /// Its `--task` name.
    pub fn name(self) -> &'static str {
        match self {
            ServeTask::Embed => "embed",
            ServeTask::Classify => "classify",
            ServeTask::Rerank => "rerank",
            ServeTask::FillMask => "fill-mask",
            ServeTask::Ner => "ner",
            ServeTask::Qa => "qa",
            ServeTask::Generate => "generate",
            ServeTask::Chat => "chat",
        }
    }
}

impl fmt::Display for ServeTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The task for `model` and why: a sentence-transformers model (`modules.json`) embeds;
/// otherwise the first of `config.json`'s `architectures` decides (`…ForSequenceClassification`
/// classifies, or reranks with one label; `…ForMaskedLM` fills masks;
/// `…ForTokenClassification` is NER; `…ForQuestionAnswering` is QA; `…LMHeadModel` and
/// `…ForCausalLM` generate), and a base model embeds.
pub fn detect_task(model: &str, hub: &HubOptions) -> Result<(ServeTask, String)> {
    let source = ModelSource::new(model, hub)?;
    if source.get("modules.json")?.is_some() {
        return Ok((
            ServeTask::Embed,
            "a sentence-transformers model (modules.json)".to_string(),
        ));
    }
    let path = source.require("config.json")?;
    #[derive(Deserialize)]
    struct Architectures {
        #[serde(default)]
        architectures: Vec<String>,
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let found: Architectures = serde_json::from_str(&text).map_err(|e| Error::json(&path, e))?;
    let Some(architecture) = found.architectures.first() else {
        return Ok((
            ServeTask::Embed,
            "config.json names no architecture: a base model".to_string(),
        ));
    };
    let because = format!("config.json's architecture {architecture}");
    let task = if architecture.ends_with("ForSequenceClassification") {
        match ModelConfig::from_json(&text, &path)?.num_labels() {
            1 => ServeTask::Rerank,
            _ => ServeTask::Classify,
        }
    } else if architecture.ends_with("ForMaskedLM") {
        ServeTask::FillMask
    } else if architecture.ends_with("ForTokenClassification") {
        ServeTask::Ner
    } else if architecture.ends_with("ForQuestionAnswering") {
        ServeTask::Qa
    } else if architecture.ends_with("LMHeadModel") || architecture.ends_with("ForCausalLM") {
        ServeTask::Generate
    } else if architecture.ends_with("Model") {
        ServeTask::Embed
    } else {
        return Err(Error::InvalidInput(format!(
            "cannot serve {architecture} models yet: pass --task embed, classify, rerank, \
             fill-mask, ner, qa, generate or chat if the checkpoint is one of those"
        )));
    };
    Ok((task, because))
}
