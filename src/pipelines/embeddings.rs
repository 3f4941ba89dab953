//! Sentence embeddings: what sentence-transformers' `encode` computes, with the pooling and
//! normalisation read from the model's own `modules.json` and `1_Pooling/config.json`.

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

use crate::auto::AutoModel;
use crate::error::{Error, Result};
use crate::hub::ModelSource;
use crate::pipelines::{batch_input, encode_all, in_batches, DEFAULT_BATCH_SIZE};
use crate::pooling::{l2_normalize, Pooling};
use crate::pretrained::{LoadOptions, Pretrained};
use crate::tokenizer::{EncodeOptions, Tokenizer};

/// An entry of `modules.json`.
#[derive(Debug, Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`.
#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, e))
}

/// What the sentence-transformers files say: pooling, normalisation, maximum length.
struct SentenceTransformersSetup {
    pooling: Option<Pooling>,
    normalize: bool,
    max_seq_length: Option<usize>,
}

impl SentenceTransformersSetup {
    fn read(source: &ModelSource) -> Result<Self> {
        let Some(modules_path) = source.get("modules.json")? else {
            tracing::warn!(model = %source.name(), "no modules.json (not a sentence-transformers model): mean pooling, not normalised");
            return Ok(Self {
                pooling: None,
                normalize: false,
                max_seq_length: None,
            });
        };
        let modules: Vec<Module> = read_json(&modules_path)?;
        let mut pooling = None;
        for module in modules.iter().filter(|m| m.kind.ends_with(".Pooling")) {
            let file = format!("{}/config.json", module.path.trim_end_matches('/'));
            let config: PoolingConfig = read_json(&source.require(&file)?)?;
            pooling = Some(Self::pooling(&config, &file)?);
        }
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let max_seq_length = match source.get("sentence_bert_config.json")? {
            Some(path) => read_json::<SentenceBertConfig>(&path)?.max_seq_length,
            None => None,
        };
        Ok(Self {
            pooling,
            normalize,
            max_seq_length,
        })
    }

    fn pooling(config: &PoolingConfig, file: &str) -> Result<Pooling> {
        let modes = [
            (config.pooling_mode_mean_tokens, Some(Pooling::Mean)),
            (config.pooling_mode_cls_token, Some(Pooling::Cls)),
            (config.pooling_mode_max_tokens, Some(Pooling::Max)),
            (config.pooling_mode_mean_sqrt_len_tokens, None),
            (config.pooling_mode_weightedmean_tokens, None),
            (config.pooling_mode_lasttoken, None),
        ];
        let chosen: Vec<Option<Pooling>> = modes
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| *p)
            .collect();
        match chosen[..] {
            [Some(pooling)] => Ok(pooling),
            _ => Err(Error::InvalidConfig(format!(
                "{file} asks for a pooling this library does not implement: exactly one of mean, cls \
                 or max is supported"
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmbeddingsPipeline {
    model: AutoModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_seq_length: Option<usize>,
    device: Device,
    pub batch_size: usize,
}

impl EmbeddingsPipeline {
    /// Load a model; pooling and normalisation come from its sentence-transformers files,
    /// else mean pooling without normalisation (change them with `with_pooling`).
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        let pretrained = Pretrained::open(model, &options.hub)?;
        let setup = SentenceTransformersSetup::read(pretrained.source())?;
        Ok(Self {
            model: pretrained.load::<AutoModel>(options)?,
            tokenizer: pretrained.tokenizer()?,
            pooling: setup.pooling.unwrap_or(Pooling::Mean),
            normalize: setup.normalize,
            max_seq_length: setup.max_seq_length,
            device: options.device.clone(),
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// Use this pooling instead of the model's.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// Scale each embedding to unit length (or not).
    pub fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// One embedding per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        // Preprocess: truncated to max_seq_length as sentence-transformers does.
        let limit = self.max_seq_length.or(self.tokenizer.model_max_length());
        let encode = EncodeOptions {
            truncation: limit.is_some(),
            max_length: limit,
            ..EncodeOptions::default()
        };
        let (encodings, lengths) = encode_all(&self.tokenizer, texts.iter().copied(), &encode)?;
        // Forward, pooling included: it is part of the model in sentence-transformers.
        in_batches(&lengths, self.batch_size, |indices| {
            let input = batch_input(&self.tokenizer, &encodings, indices, &self.device)?;
            let hidden = self.model.forward(&input)?.last_hidden_state;
            let mask = input
                .attention_mask
                .as_ref()
                .ok_or_else(|| Error::InvalidInput("a padded batch has a mask".to_string()))?;
            let mut pooled = self.pooling.pool(&hidden, mask)?;
            if self.normalize {
                pooled = l2_normalize(&pooled)?;
            }
            Ok(pooled.to_vec2()?)
        })
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}
