//! Arguments that several subcommands take, and their validators.

use std::io::BufRead;

use clap::Args;
use ferroformers::pipelines::DEFAULT_BATCH_SIZE;

use crate::error::{CliError, Result};

/// Batching, shared by the encoder pipelines.
#[derive(Debug, Args)]
pub struct Batching {
    /// Inputs per forward pass (sorted by length; results keep input order).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = at_least_one)]
    pub batch_size: usize,
}

/// Truncation on request, as fill-mask and classify take it: by default a text longer than
/// the model's maximum is an error, as in transformers.
#[derive(Debug, Args)]
pub struct Truncation {
    /// Cut texts longer than --max-length (or the model's maximum) instead of failing.
    #[arg(long)]
    pub truncation: bool,
    /// The length --truncation cuts at.
    #[arg(long, requires = "truncation")]
    pub max_length: Option<usize>,
}

/// The texts to run, from the command line or stdin.
#[derive(Debug, Args)]
pub struct Texts {
    /// Texts; `-` or none reads stdin, one per line.
    texts: Vec<String>,
}

impl Texts {
    /// The texts of the command line, or stdin's lines.
    pub fn read(self) -> Result<Vec<String>> {
        inputs(self.texts)
    }
}

/// The texts of the command line, or stdin's lines when there are none or the only one is `-`.
pub fn inputs(texts: Vec<String>) -> Result<Vec<String>> {
    if !texts.is_empty() && texts != ["-"] {
        return Ok(texts);
    }
    let mut lines = Vec::new();
    for line in std::io::stdin().lock().lines() {
        lines.push(line.map_err(CliError::Stdin)?);
    }
    if lines.is_empty() {
        return Err(CliError::Usage(
            "no input: pass text as an argument or on stdin".to_string(),
        ));
    }
    Ok(lines)
}

/// A count that must be positive (a batch of 0 inputs, a timeout of 0 s make no sense).
pub fn at_least_one(value: &str) -> std::result::Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
