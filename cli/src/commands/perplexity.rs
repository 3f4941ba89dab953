//! `ferroformers perplexity`: a text file's perplexity, as llama.cpp's `llama-perplexity`
//! reports it.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use ferroformers::pipelines::{PerplexityOptions, PerplexityPipeline, Pipeline};

use super::json_line;
use crate::cli::Common;
use crate::error::Result;

/// The options of `perplexity` besides the model's.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// The text to score (llama.cpp's `--file`).
    #[arg(short, long)]
    file: PathBuf,
    /// Tokens per window (llama.cpp's `--ctx-size`).
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx_size: usize,
    /// Score only the first N windows (llama.cpp's `--chunks`).
    #[arg(long)]
    chunks: Option<usize>,
    /// One JSON line: perplexity, error, tokens, scored, running.
    #[arg(long)]
    json: bool,
}

/// `ferroformers perplexity`.
pub fn perplexity(common: &Common, args: PerplexityArgs, out: &mut impl Write) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.file).map_err(|e| ferroformers::Error::io(&args.file, e))?;
    let pipeline = PerplexityPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let options = PerplexityOptions {
        context: args.ctx_size,
        max_windows: args.chunks,
    };
    let result = pipeline.run([text.as_str()], &options)?.remove(0);
    if args.json {
        return json_line(out, &result);
    }
    let running: Vec<String> = result
        .running
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}]{p:.4}", i + 1))
        .collect();
    writeln!(out, "{}", running.join(","))?;
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5} ({} tokens, {} scored)",
        result.perplexity, result.error, result.tokens, result.scored
    )?;
    Ok(())
}
