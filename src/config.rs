//! `config.json`: parsed into a typed config chosen by `model_type`, the Rust form of
//! transformers' `AutoConfig`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::bert::BertConfig;

/// A model's configuration, dispatched on the `model_type` field of `config.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "model_type", rename_all = "lowercase")]
pub enum ModelConfig {
    Bert(BertConfig),
}

impl ModelConfig {
    /// The `model_type` values this library implements.
    pub const SUPPORTED: &'static [&'static str] = &["bert"];

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
        let config: Self = serde_json::from_str(text).map_err(|e| Error::json(path, e))?;
        config.validate()?;
        Ok(config)
    }

    /// The `model_type` string.
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Bert(_) => "bert",
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Bert(config) => config.validate(),
        }
    }
}

/// `id2label` as transformers writes it: string keys holding integers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Labels(Vec<String>);

impl Labels {
    /// The label of class `id`, or `LABEL_<id>` as transformers names unnamed classes.
    pub fn name(&self, id: usize) -> String {
        self.0
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{id}"))
    }

    /// Number of labels listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

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

impl ModelConfig {
    /// The BERT config. Loading another architecture's checkpoint as BERT is an error.
    pub fn bert(&self) -> Result<&BertConfig> {
        match self {
            ModelConfig::Bert(config) => Ok(config),
        }
    }
}
