//! The one error type of the library. Every variant says what went wrong and what to do about it,
//! and keeps its source so the real cause is never lost.

use std::path::PathBuf;
use std::sync::Arc;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong when finding, loading, running or pushing a model.
///
/// New variants may come in any release: match with a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file the model needs is in neither the folder, the cache nor the Hub repository.
    #[error("{file} not found for model `{model}`: {hint}")]
    MissingFile {
        /// The model id or folder asked for.
        model: String,
        /// The file, relative to the model's root.
        file: String,
        /// What to do about it.
        hint: String,
    },

    /// Offline mode is on and the cache does not hold the file.
    #[error(
        "{file} of `{model}` (revision `{revision}`) is not in the Hub cache at {cache}, and \
         HF_HUB_OFFLINE is set: download it once with network access, or unset HF_HUB_OFFLINE"
    )]
    NotCached {
        /// The Hub model id.
        model: String,
        /// Branch, tag or commit asked for.
        revision: String,
        /// The file, relative to the repository root.
        file: String,
        /// The Hub cache that was searched.
        cache: PathBuf,
    },

    /// The Hub request failed (network, authentication, server).
    #[error(
        "downloading {file} of `{model}` from the Hub failed: {source}. Check the model id, \
             the revision, your network and HF_TOKEN (gated or private repositories need one)"
    )]
    Hub {
        /// The Hub model id.
        model: String,
        /// The file being downloaded.
        file: String,
        /// What the Hub client reported (the HTTP status, if any, is in [`HubError::status`]).
        #[source]
        source: HubError,
    },

    /// The Hub refused the token (401) while pushing to a repository: there is none, or it is
    /// invalid or expired.
    #[error(
        "pushing to `{repo}` failed at {step}: the Hub refused the token (401: {source}). The \
         token is missing or invalid: set HF_TOKEN to a token with the write role \
         (https://huggingface.co/settings/tokens) or run `huggingface-cli login`. The Hub also \
         answers 401 for a repository it does not show you: check the id and the repository type"
    )]
    UploadUnauthorized {
        /// The repository id pushed to.
        repo: String,
        /// The step that failed (repository creation, preupload, LFS batch, ..., commit).
        step: String,
        /// The Hub's answer; [`HubError::status`] is 401.
        #[source]
        source: HubError,
    },

    /// The token cannot write to the repository or create it in that namespace (403).
    #[error(
        "pushing to `{repo}` failed at {step}: the token cannot write there (403: {source}). \
         Use a token with the write role, or a fine-grained token with write access to this \
         repository or its namespace (https://huggingface.co/settings/tokens), and check that \
         the namespace is yours or an organization you can write to"
    )]
    UploadForbidden {
        /// The repository id pushed to.
        repo: String,
        /// The step that failed.
        step: String,
        /// The Hub's answer; [`HubError::status`] is 403.
        #[source]
        source: HubError,
    },

    /// The Hub refused the push because of a conflict (409): the branch moved since the parent
    /// commit given, or another operation on the repository is under way.
    #[error(
        "pushing to `{repo}` failed at {step}: conflict (409: {source}). The branch moved since \
         the parent commit given (someone pushed meanwhile), or another operation on the \
         repository is under way: push again (from the branch's new head if you give a parent \
         commit), and check the repository type if a repository of that name exists as another"
    )]
    UploadConflict {
        /// The repository id pushed to.
        repo: String,
        /// The step that failed.
        step: String,
        /// The Hub's answer; [`HubError::status`] is 409.
        #[source]
        source: HubError,
    },

    /// Any other failure while pushing: the network, a server error, a missing repository or
    /// branch, an answer that is not what the Hub sends.
    #[error(
        "pushing to `{repo}` failed at {step}: {source}. Check the repository id, its type, that \
         the revision is an existing branch, and your network; pushing again resumes (files \
         already stored on the Hub are not sent twice)"
    )]
    Upload {
        /// The repository id pushed to.
        repo: String,
        /// The step that failed.
        step: String,
        /// What failed; [`HubError::status`] is the Hub's status when it answered.
        #[source]
        source: HubError,
    },

    /// A model file resolves outside the model folder or cache (a symlink or a `..` path).
    #[error("{path} leads outside {root}; refusing to read it: model files must stay inside the model folder")]
    UnsafePath {
        /// The file as named.
        path: PathBuf,
        /// The folder it had to stay in.
        root: PathBuf,
    },

    /// Reading a local file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config, tokenizer config, shard index) does not parse or has a bad field.
    #[error("{path} is not valid: {source}. Fix the file or re-download the model")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// `config.json` names an architecture this library does not implement.
    #[error("unknown model_type `{model_type}` in {path}; supported model types: {supported}")]
    UnknownModelType {
        /// The `model_type` found.
        model_type: String,
        /// The `config.json` it was found in.
        path: PathBuf,
        /// The model types this library implements, comma-separated.
        supported: String,
    },

    /// A config value is impossible (zero layers, sizes that do not divide, ...).
    #[error("invalid config: {0}")]
    InvalidConfig(String),

    /// The model was loaded as one architecture but its config is another.
    #[error("cannot load a `{model_type}` checkpoint as {wanted}; load it with a {model_type} model class")]
    WrongArchitecture {
        /// The checkpoint's `model_type`.
        model_type: String,
        /// The architecture the caller asked for.
        wanted: &'static str,
    },

    /// The architecture has no model for this task.
    #[error("{model_type} models cannot do {task}; pick a checkpoint of an architecture that can")]
    UnsupportedTask {
        /// The checkpoint's `model_type`.
        model_type: &'static str,
        /// The task asked for.
        task: &'static str,
    },

    /// The weights do not contain what the architecture expects.
    #[error("invalid weights: {0}")]
    InvalidWeights(String),

    /// The tokenizer files are missing, do not parse, or fail on an input.
    #[error("tokenizer error: {message}")]
    Tokenizer {
        /// What failed, and on which file or input.
        message: String,
        /// The `tokenizers` crate's error, when it raised one.
        #[source]
        source: Option<tokenizers::Error>,
    },

    /// An input is longer than the model's position embeddings allow.
    #[error(
        "input has {length} tokens but the model accepts at most {max}: enable truncation or \
         shorten the input"
    )]
    InputTooLong {
        /// Tokens in the input.
        length: usize,
        /// Tokens the model accepts.
        max: usize,
    },

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

    /// A row of a training dataset file does not hold what its task needs (a missing column,
    /// a value of the wrong type, a class id out of range), or the file has no rows.
    #[error(
        "{path}:{line}: {message}. Fix that row, or read the file as the task and label kind \
         its columns hold"
    )]
    InvalidDataset {
        /// The dataset file.
        path: PathBuf,
        /// The 1-based line the row starts on (CSV: the header is line 1).
        line: usize,
        /// What is wrong with the row.
        message: String,
    },

    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// What runs inputs together (a server's batching queue) is shutting down and takes no
    /// new inputs.
    #[error(
        "the service is shutting down and takes no new requests: send the request to another \
         replica, or retry once it is back"
    )]
    ShuttingDown,

    /// The thread that runs inputs together stopped before it answered this one (it
    /// panicked; its message is in the log).
    #[error(
        "the {thread} thread stopped before answering: retry, and if it keeps happening restart \
         the service and report the panic in its log"
    )]
    WorkerStopped {
        /// Which thread (`batching`, `decoding`).
        thread: &'static str,
    },

    /// The thread that runs inputs together could not be started.
    #[error(
        "cannot start the {thread} thread: {source}. The system is out of threads or memory: \
         lower the load, or raise the limit on processes and threads (`ulimit -u`)"
    )]
    WorkerSpawn {
        /// Which thread (`batching`, `decoding`).
        thread: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A forward pass shared by several inputs failed: each of them gets this error, with the
    /// one failure as its source.
    #[error("the batch this input was run in failed: {source}")]
    BatchFailed {
        /// The failure of the shared forward pass.
        #[source]
        source: Arc<Error>,
    },
}

/// A failed request to the Hub, as the HTTP client reported it.
///
/// The client's own error is its [`source`](std::error::Error::source), so the whole chain
/// prints; [`HubError::status`] tells a server's answer (401 needs a token, 404 a correct
/// model id or revision, 5xx a retry) from a failure to reach it at all.
#[derive(Debug)]
pub struct HubError {
    status: Option<u16>,
    // Boxed: hf-hub's error is large; the HTTP client's types stay out of our API.
    source: Box<dyn std::error::Error + Send + Sync>,
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
        Self::with_status(status, source)
    }

    /// A failure of our own requests (the uploads): `status` when the Hub answered.
    pub(crate) fn with_status(
        status: Option<u16>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
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
    /// A failed read or write of `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// `path` is not the JSON it should be.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
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
