//! What can go wrong in the command; `main` turns each kind into its exit code.

/// What can go wrong in the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Library(#[from] ferroformers::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The command line asks for nothing to do (exit code 2, as clap's usage errors).
    #[error("{0}")]
    Usage(String),
    #[error("cannot read stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, CliError>;
