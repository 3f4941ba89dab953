//! The one error type of the library. Every variant says what went wrong and what to do about it,
//! and keeps its source so the real cause is never lost.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong when finding, loading or running a model.
///
/// New variants may come in any release: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file the model needs is in neither the folder, the cache nor the Hub repository.
    #[error("{file} not found for model `{model}`: {hint}")]
    MissingFile {
        model: String,
        file: String,
        hint: String,
    },

    /// Offline mode is on and the cache does not hold the file.
    #[error(
        "{file} of `{model}` (revision `{revision}`) is not in the Hub cache at {cache}, and \
         HF_HUB_OFFLINE is set: download it once with network access, or unset HF_HUB_OFFLINE"
    )]
    NotCached {
        model: String,
        revision: String,
        file: String,
        cache: PathBuf,
    },

    /// The Hub request failed (network, authentication, server).
    #[error(
        "downloading {file} of `{model}` from the Hub failed: {source}. Check the model id, \
             the revision, your network and HF_TOKEN (gated or private repositories need one)"
    )]
    Hub {
        model: String,
        file: String,
        #[source]
        source: HubError,
    },

    /// A model file resolves outside the model folder or cache (a symlink or a `..` path).
    #[error("{path} leads outside {root}; refusing to read it: model files must stay inside the model folder")]
    UnsafePath { path: PathBuf, root: PathBuf },

    /// Reading a local file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config, tokenizer config, shard index) does not parse or has a bad field.
    #[error("{path} is not valid: {source}. Fix the file or re-download the model")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// `config.json` names an architecture this library does not implement.
    #[error("unknown model_type `{model_type}` in {path}; supported model types: {supported}")]
    UnknownModelType {
        model_type: String,
        path: PathBuf,
        supported: String,
    },

    /// A config value is impossible (zero layers, sizes that do not divide, ...).
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// The model was loaded as one architecture but its config is another.
    #[error("cannot load a `{model_type}` checkpoint as {wanted}; load it with a {model_type} model class")]
    WrongArchitecture {
        model_type: String,
        wanted: &'static str,
    },

    /// The architecture has no model for this task.
    #[error("{model_type} models cannot do {task}; pick a checkpoint of an architecture that can")]
    UnsupportedTask {
        model_type: &'static str,
        task: &'static str,
    },

    /// The weights do not contain what the architecture expects.
    #[error("invalid weights: {0}")]
    InvalidWeights(String),

    /// The tokenizer files are missing, do not parse, or fail on an input.
    #[error("tokenizer error: {message}")]
    Tokenizer {
        message: String,
        #[source]
        source: Option<tokenizers::Error>,
    },

    /// An input is longer than the model's position embeddings allow.
    #[error(
        "input has {length} tokens but the model accepts at most {max}: enable truncation or \
         shorten the input"
    )]
    InputTooLong { length: usize, max: usize },

    /// A generation setting is out of range or settings contradict each other.
    #[error("invalid generation setting: {0}")]
    InvalidGeneration(String),

    /// A chat template failed to parse or render, or raised an exception of its own
    /// (`raise_exception`), whose message this carries.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// The caller passed inputs that do not fit together (mismatched shapes, empty batch, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A failed request to the Hub, as the HTTP client reported it.
///
/// The client's own error is its [`source`](std::error::Error::source), so the whole chain
/// prints; [`HubError::status`] tells a server's answer (401 needs a token, 404 a correct
/// model id or revision, 5xx a retry) from a failure to reach it at all.
#[derive(Debug)]
pub struct HubError {
    status: Option<u16>,
    // Boxed: hf-hub's error is large, and its type stays out of our API.
    source: Box<hf_hub::api::sync::ApiError>,
}

impl HubError {
    pub(crate) fn new(source: hf_hub::api::sync::ApiError) -> Self {
        let status = match &source {
            hf_hub::api::sync::ApiError::RequestError(error) => match error.as_ref() {
                ureq::Error::Status(status, _) => Some(*status),
                ureq::Error::Transport(_) => None,
            },
            _ => None,
        };
        Self {
            status,
            source: Box::new(source),
        }
    }

    /// The HTTP status the Hub answered with; `None` when the request got no answer
    /// (network, DNS, TLS) or failed after it (writing the file to the cache).
    pub fn status(&self) -> Option<u16> {
        self.status
    }
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for HubError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::Json {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tokenizer(message: impl Into<String>, source: tokenizers::Error) -> Self {
        Error::Tokenizer {
            message: message.into(),
            source: Some(source),
        }
    }
}
