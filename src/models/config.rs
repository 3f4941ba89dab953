//! `config.json`: parsed into a typed config chosen by `model_type`, the Rust form of
//! transformers' `AutoConfig`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::bert::BertConfig;
use crate::models::distilbert::DistilBertConfig;
use crate::models::gemma3::Gemma3TextConfig;
use crate::models::gpt2::Gpt2Config;
use crate::models::gte::GteConfig;
use crate::models::jina_bert::JinaBertConfig;
use crate::models::llama::{LlamaConfig, LlamaFamily};
use crate::models::modernbert::ModernBertConfig;
use crate::models::mpnet::MpNetConfig;
use crate::models::nomic_bert::NomicBertConfig;
use crate::models::roberta::RobertaConfig;

/// A model's configuration, dispatched on the `model_type` field of `config.json`.
///
/// New architectures come in minor releases: match with a `_` arm.
#[non_exhaustive]
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type", rename_all = "lowercase")]
pub enum ModelConfig {
    /// `"model_type": "bert"`.
    Bert(BertConfig),
    /// `"model_type": "roberta"`: BERT's fields, see [`RobertaConfig`].
    Roberta(RobertaConfig),
    /// XLM-RoBERTa: RoBERTa's architecture and config with a SentencePiece vocabulary.
    #[serde(rename = "xlm-roberta")]
    XlmRoberta(RobertaConfig),
    /// CamemBERT: RoBERTa's architecture and config with a SentencePiece vocabulary.
    Camembert(RobertaConfig),
    /// `"model_type": "distilbert"`.
    Distilbert(DistilBertConfig),
    /// `"model_type": "mpnet"`.
    MpNet(MpNetConfig),
    /// `"model_type": "gpt2"`.
    Gpt2(Gpt2Config),
    /// `"model_type": "llama"`: Llama 2 and 3, SmolLM, TinyLlama.
    Llama(LlamaConfig),
    /// `"model_type": "mistral"`: the Llama block with a sliding window.
    Mistral(LlamaConfig),
    /// `"model_type": "qwen2"`: Qwen2 and Qwen2.5, with q/k/v biases.
    Qwen2(LlamaConfig),
    /// `"model_type": "qwen3"`: with per-head q/k norms.
    Qwen3(LlamaConfig),
    /// `"model_type": "modernbert"`.
    Modernbert(ModernBertConfig),
    /// `"model_type": "gte"`: transformers 5's GTE.
    Gte(GteConfig),
    /// `"model_type": "new"`: GTE's checkpoints as its remote code wrote them.
    New(GteConfig),
    /// `"model_type": "nomic_bert"`.
    #[serde(rename = "nomic_bert")]
    NomicBert(NomicBertConfig),
    /// `"model_type": "gemma3_text"`: Gemma 3's text model (EmbeddingGemma).
    #[serde(rename = "gemma3_text")]
    Gemma3Text(Gemma3TextConfig),
    /// JinaBERT v2: a `"model_type": "bert"` config that [`JinaBertConfig`] describes
    /// (`position_embedding_type: alibi`, or a `feed_forward_type`, or a `JinaBert*`
    /// architecture). Never picked by the tag: [`ModelConfig::from_json`] picks it.
    #[serde(skip_deserializing)]
    JinaBert(JinaBertConfig),
}

impl ModelConfig {
    /// The `model_type` values this library implements.
    pub const SUPPORTED: &'static [&'static str] = &[
        "bert",
        "roberta",
        "xlm-roberta",
        "camembert",
        "distilbert",
        "mpnet",
        "gpt2",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "modernbert",
        "gte",
        "new",
        "nomic_bert",
        "gemma3_text",
    ];

    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parse `config.json` text; `path` is only used in messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Tag {
            model_type: Option<String>,
        }
        let tag: Tag = serde_json::from_str(text).map_err(|e| Error::json(path, e))?;
        let model_type = tag.model_type.unwrap_or_default();
        if !Self::SUPPORTED.contains(&model_type.as_str()) {
            return Err(Error::UnknownModelType {
                model_type,
                path: path.to_path_buf(),
                supported: Self::SUPPORTED.join(", "),
            });
        }
        // JinaBERT's remote code kept BERT's `model_type`; its config is told apart by what
        // plain BERT's cannot have (JinaBertConfig::describes).
        let jina = model_type == "bert" && {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| Error::json(path, e))?;
            JinaBertConfig::describes(&value)
        };
        let mut config: Self = if jina {
            ModelConfig::JinaBert(serde_json::from_str(text).map_err(|e| Error::json(path, e))?)
        } else {
            serde_json::from_str(text).map_err(|e| Error::json(path, e))?
        };
        // The Llama family shares one config struct; `model_type` says which family's
        // defaults apply.
        match &mut config {
            ModelConfig::Llama(c) => c.family = LlamaFamily::Llama,
            ModelConfig::Mistral(c) => c.family = LlamaFamily::Mistral,
            ModelConfig::Qwen2(c) => c.family = LlamaFamily::Qwen2,
            ModelConfig::Qwen3(c) => c.family = LlamaFamily::Qwen3,
            _ => {}
        }
        config.validate()?;
        Ok(config)
    }

    /// The `model_type` string.
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Bert(_) => "bert",
            ModelConfig::Roberta(_) => "roberta",
            ModelConfig::XlmRoberta(_) => "xlm-roberta",
            ModelConfig::Camembert(_) => "camembert",
            ModelConfig::Distilbert(_) => "distilbert",
            ModelConfig::MpNet(_) => "mpnet",
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(_) => "llama",
            ModelConfig::Mistral(_) => "mistral",
            ModelConfig::Qwen2(_) => "qwen2",
            ModelConfig::Qwen3(_) => "qwen3",
            ModelConfig::Modernbert(_) => "modernbert",
            ModelConfig::Gte(_) => "gte",
            ModelConfig::New(_) => "new",
            ModelConfig::NomicBert(_) => "nomic_bert",
            ModelConfig::Gemma3Text(_) => "gemma3_text",
            // Not a `model_type` of its own (the config says `bert`): the name messages show.
            ModelConfig::JinaBert(_) => "bert (JinaBERT)",
        }
    }

    /// Class names of classification heads (`id2label`).
    pub fn id2label(&self) -> &Labels {
        match self {
            ModelConfig::Bert(c)
            | ModelConfig::Roberta(c)
            | ModelConfig::XlmRoberta(c)
            | ModelConfig::Camembert(c) => &c.id2label,
            ModelConfig::Distilbert(c) => &c.id2label,
            ModelConfig::MpNet(c) => &c.id2label,
            ModelConfig::Gpt2(c) => &c.id2label,
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => &c.id2label,
            ModelConfig::Modernbert(c) => &c.id2label,
            ModelConfig::Gte(c) | ModelConfig::New(c) => &c.id2label,
            ModelConfig::NomicBert(c) => &c.id2label,
            ModelConfig::Gemma3Text(c) => &c.id2label,
            ModelConfig::JinaBert(c) => &c.id2label,
        }
    }

    /// Number of classes of classification heads.
    pub fn num_labels(&self) -> usize {
        match self {
            ModelConfig::Bert(c)
            | ModelConfig::Roberta(c)
            | ModelConfig::XlmRoberta(c)
            | ModelConfig::Camembert(c) => c.num_labels(),
            ModelConfig::Distilbert(c) => c.num_labels(),
            ModelConfig::MpNet(c) => c.num_labels(),
            ModelConfig::Gpt2(c) => c.num_labels(),
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => c.id2label.num_classes(),
            ModelConfig::Modernbert(c) => c.num_labels(),
            ModelConfig::Gte(c) | ModelConfig::New(c) => c.num_labels(),
            ModelConfig::NomicBert(c) => c.num_labels(),
            ModelConfig::Gemma3Text(c) => c.num_labels(),
            ModelConfig::JinaBert(c) => c.num_labels(),
        }
    }

    /// `problem_type`: `single_label_classification`, `multi_label_classification` or
    /// `regression`, when the config says.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            ModelConfig::Bert(c)
            | ModelConfig::Roberta(c)
            | ModelConfig::XlmRoberta(c)
            | ModelConfig::Camembert(c) => c.problem_type.as_deref(),
            ModelConfig::Distilbert(c) => c.problem_type.as_deref(),
            ModelConfig::MpNet(c) => c.problem_type.as_deref(),
            ModelConfig::Gpt2(c) => c.problem_type.as_deref(),
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => c.problem_type.as_deref(),
            ModelConfig::Modernbert(c) => c.problem_type.as_deref(),
            ModelConfig::Gte(c) | ModelConfig::New(c) => c.problem_type.as_deref(),
            ModelConfig::NomicBert(c) => c.problem_type.as_deref(),
            ModelConfig::Gemma3Text(c) => c.problem_type.as_deref(),
            ModelConfig::JinaBert(c) => c.problem_type.as_deref(),
        }
    }

    /// Rows of the position table: the longest input the model takes, less RoBERTa's offset
    /// of `pad_token_id + 1` for the RoBERTa family (and MPNet's of 2).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            ModelConfig::Bert(c)
            | ModelConfig::Roberta(c)
            | ModelConfig::XlmRoberta(c)
            | ModelConfig::Camembert(c) => c.max_position_embeddings,
            ModelConfig::Distilbert(c) => c.max_position_embeddings,
            ModelConfig::MpNet(c) => c.max_position_embeddings,
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => c.max_position_embeddings,
            ModelConfig::Modernbert(c) => c.max_position_embeddings,
            ModelConfig::Gte(c) | ModelConfig::New(c) => c.max_position_embeddings,
            ModelConfig::NomicBert(c) => c.max_position_embeddings,
            ModelConfig::Gemma3Text(c) => c.max_position_embeddings,
            ModelConfig::JinaBert(c) => c.max_position_embeddings,
        }
    }

    /// The end tokens of a decoder's `config.json` (none for encoders): generation's stop
    /// tokens when the model has no `generation_config.json`.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            ModelConfig::Gpt2(c) => c.eos_token_id.into_iter().collect(),
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => c.eos_token_id.clone(),
            _ => Vec::new(),
        }
    }

    /// The padding token of a decoder's `config.json`, if it names one (none for encoders,
    /// which only pad, never generate).
    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            ModelConfig::Gpt2(c) => c.pad_token_id,
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => c.pad_token_id,
            _ => None,
        }
    }

    /// The width of each token's hidden state.
    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c)
            | ModelConfig::Roberta(c)
            | ModelConfig::XlmRoberta(c)
            | ModelConfig::Camembert(c) => c.hidden_size,
            ModelConfig::Distilbert(c) => c.dim,
            ModelConfig::MpNet(c) => c.hidden_size,
            ModelConfig::Gpt2(c) => c.n_embd,
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => c.hidden_size,
            ModelConfig::Modernbert(c) => c.hidden_size,
            ModelConfig::Gte(c) | ModelConfig::New(c) => c.hidden_size,
            ModelConfig::NomicBert(c) => c.hidden_size,
            ModelConfig::Gemma3Text(c) => c.hidden_size,
            ModelConfig::JinaBert(c) => c.hidden_size,
        }
    }

    /// Tokens in the vocabulary (rows of the word embeddings).
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c)
            | ModelConfig::Roberta(c)
            | ModelConfig::XlmRoberta(c)
            | ModelConfig::Camembert(c) => c.vocab_size,
            ModelConfig::Distilbert(c) => c.vocab_size,
            ModelConfig::MpNet(c) => c.vocab_size,
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Llama(c)
            | ModelConfig::Mistral(c)
            | ModelConfig::Qwen2(c)
            | ModelConfig::Qwen3(c) => c.vocab_size,
            ModelConfig::Modernbert(c) => c.vocab_size,
            ModelConfig::Gte(c) | ModelConfig::New(c) => c.vocab_size,
            ModelConfig::NomicBert(c) => c.vocab_size,
            ModelConfig::Gemma3Text(c) => c.vocab_size,
            ModelConfig::JinaBert(c) => c.vocab_size,
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Bert(config)
            | ModelConfig::Roberta(config)
            | ModelConfig::XlmRoberta(config)
            | ModelConfig::Camembert(config) => config.validate(),
            ModelConfig::Distilbert(config) => config.validate(),
            ModelConfig::MpNet(config) => config.validate(),
            ModelConfig::Gpt2(config) => config.validate(),
            ModelConfig::Llama(config)
            | ModelConfig::Mistral(config)
            | ModelConfig::Qwen2(config)
            | ModelConfig::Qwen3(config) => config.validate(),
            ModelConfig::Modernbert(config) => config.validate(),
            ModelConfig::Gte(config) | ModelConfig::New(config) => config.validate(),
            ModelConfig::NomicBert(config) => config.validate(),
            ModelConfig::Gemma3Text(config) => config.validate(),
            ModelConfig::JinaBert(config) => config.validate(),
        }
    }
}

/// `id2label` as transformers writes it: string keys holding integers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Labels(Vec<String>);

impl Labels {
    /// The classes named `names`, class `i` being `names[i]` (a dataset's label vocabulary, or
    /// the names a caller gives it).
    pub fn from_names(names: Vec<String>) -> Self {
        Labels(names)
    }

    /// The names listed, by class id.
    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// The label of class `id`, or `LABEL_<id>` as transformers names unnamed classes.
    pub fn name(&self, id: usize) -> String {
        self.0
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{id}"))
    }

    /// Number of classes of a classification head: the labels listed, else transformers'
    /// default of 2.
    pub fn num_classes(&self) -> usize {
        if self.0.is_empty() {
            2
        } else {
            self.0.len()
        }
    }

    /// Number of labels listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when `config.json` has no `id2label`; [`Labels::num_classes`] is then 2.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = String;

    fn try_from(map: BTreeMap<String, String>) -> std::result::Result<Self, String> {
        let mut labels = vec![None; map.len()];
        for (key, label) in map {
            let id: usize = key
                .parse()
                .map_err(|_| format!("id2label key `{key}` is not a class index"))?;
            let slot = labels
                .get_mut(id)
                .ok_or_else(|| format!("id2label index {id} is out of range"))?;
            *slot = Some(label);
        }
        labels
            .into_iter()
            .enumerate()
            .map(|(id, label)| label.ok_or_else(|| format!("id2label has no label {id}")))
            .collect::<std::result::Result<_, _>>()
            .map(Labels)
    }
}

/// `ModelConfig::$name()`: the config of one architecture, or an error naming the real one.
/// The variants after the first are architectures that share its config and weights layout.
macro_rules! config_accessor {
    ($name:ident, $($variant:ident)|+, $config:ty, $wanted:literal) => {
        impl ModelConfig {
            #[doc = concat!("The config of a ", $wanted, " checkpoint; any other is an error.")]
            pub fn $name(&self) -> Result<&$config> {
                match self {
                    $(ModelConfig::$variant(config))|+ => Ok(config),
                    other => Err(Error::WrongArchitecture {
                        model_type: other.model_type().to_string(),
                        wanted: $wanted,
                    }),
                }
            }
        }
    };
}

config_accessor!(bert, Bert, BertConfig, "BERT");
// XLM-RoBERTa and CamemBERT are RoBERTa copies in transformers ("Copied from
// transformers.models.roberta..."), with the same `roberta.` prefix:
// https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/xlm_roberta/modeling_xlm_roberta.py#L668
// https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/camembert/modeling_camembert.py#L667
config_accessor!(
    roberta,
    Roberta | XlmRoberta | Camembert,
    RobertaConfig,
    "RoBERTa"
);
config_accessor!(distilbert, Distilbert, DistilBertConfig, "DistilBERT");
config_accessor!(mpnet, MpNet, MpNetConfig, "MPNet");
config_accessor!(gpt2, Gpt2, Gpt2Config, "GPT-2");
// Mistral, Qwen2 and Qwen3 are the Llama block with variants their configs name ("modular"
// files in transformers):
// https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/qwen3/modular_qwen3.py
config_accessor!(modernbert, Modernbert, ModernBertConfig, "ModernBERT");
config_accessor!(gte, Gte | New, GteConfig, "GTE");
config_accessor!(nomic_bert, NomicBert, NomicBertConfig, "NomicBERT");
config_accessor!(gemma3_text, Gemma3Text, Gemma3TextConfig, "Gemma 3 text");
config_accessor!(jina_bert, JinaBert, JinaBertConfig, "JinaBERT");
config_accessor!(
    llama,
    Llama | Mistral | Qwen2 | Qwen3,
    LlamaConfig,
    "Llama-family"
);

/// One token id or several, as `eos_token_id` may be written (Llama 3 lists several).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `deserialize_with` for an id or a list of ids: always a list.
pub(crate) fn token_ids<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<u32>, D::Error> {
    Ok(match Option::<TokenIds>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(TokenIds::One(id)) => vec![id],
        Some(TokenIds::Many(ids)) => ids,
    })
}
