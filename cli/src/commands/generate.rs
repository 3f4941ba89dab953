//! The text generation commands: `generate` and `chat`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use clap::Args;
use ferroformers::generation::GenerationConfig;
use ferroformers::pipelines::{
    Conversation, Pipeline, TextGenerationOptions, TextGenerationPipeline,
};

use super::json_line;
use crate::args::inputs;
use crate::cli::Common;
use crate::error::Result;

/// The options of `generate` besides the model's.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    settings: GenerationArgs,
    /// One JSON line per generated text: generated_text, generated_token_ids,
    /// finish_reason ("stop" or "length"), prompt_tokens, completion_tokens.
    #[arg(long)]
    json: bool,
    /// Prompts; `-` or none reads stdin, one prompt per line.
    prompts: Vec<String>,
}

/// Generation settings. Unset ones come from the model's generation_config.json, `do_sample`
/// included.
#[derive(Debug, Args)]
pub struct GenerationArgs {
    /// New tokens to generate at most.
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    /// Beams of beam search (1: greedy search or sampling).
    #[arg(long)]
    num_beams: Option<usize>,
    /// Divide the scores of tokens already present by this (1.0: no penalty).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Never repeat an n-gram of this many tokens.
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    /// Sample the next token (`--do-sample` or `--do-sample=true`), or not
    /// (`--do-sample=false`). Default: the model's generation_config.json.
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        conflicts_with = "greedy"
    )]
    do_sample: Option<bool>,
    /// Greedy decoding whatever generation_config.json says (the same as --do-sample=false).
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature (needs sampling: without it, a warning, and no effect).
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample among the k most likely tokens (needs sampling).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities sum to p (needs sampling).
    #[arg(long)]
    top_p: Option<f32>,
    /// Seed of the sampling, so that runs repeat.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop once the text ends with this (repeatable); the stop string stays in the text.
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// With --json: each new token's log-probability, and this many most likely tokens per
    /// position (0 to 20).
    #[arg(long)]
    top_logprobs: Option<usize>,
}

impl GenerationArgs {
    /// The model's settings with these flags on top, and a warning on stderr for each sampling
    /// flag that has no effect because the run does not sample (transformers warns the same).
    fn apply(&self, base: &GenerationConfig) -> GenerationConfig {
        let mut config = base.clone().with_max_new_tokens(self.max_new_tokens);
        config.do_sample = match (self.do_sample, self.greedy) {
            (Some(do_sample), _) => do_sample,
            (None, true) => false,
            (None, false) => base.do_sample,
        };
        if let Some(value) = self.num_beams {
            config.num_beams = value;
        }
        if let Some(value) = self.repetition_penalty {
            config.repetition_penalty = value;
        }
        if let Some(value) = self.no_repeat_ngram_size {
            config.no_repeat_ngram_size = value;
        }
        if let Some(value) = self.temperature {
            config.temperature = value;
        }
        if let Some(value) = self.top_k {
            config.top_k = Some(value);
        }
        if let Some(value) = self.top_p {
            config.top_p = value;
        }
        if let Some(top) = self.top_logprobs {
            config = config.with_logprobs(top);
        }
        config.seed = self.seed.or(config.seed);
        config.stop_strings.extend(self.stop.iter().cloned());
        if !config.do_sample {
            let unused: Vec<&str> = [
                ("--temperature", self.temperature.is_some()),
                ("--top-k", self.top_k.is_some()),
                ("--top-p", self.top_p.is_some()),
            ]
            .into_iter()
            .filter_map(|(flag, set)| set.then_some(flag))
            .collect();
            if !unused.is_empty() {
                eprintln!(
                    "warning: {} ignored: sampling settings, and this run does not sample (the \
                     model's generation_config.json or a flag says so); add --do-sample",
                    unused.join(", ")
                );
            }
        }
        config
    }
}

/// `ferroformers generate`: each prompt's continuation, streamed token by token unless the
/// output is JSON or beam search decides only at the end.
pub fn generate(common: &Common, args: GenerateArgs, out: &mut impl Write) -> Result<()> {
    let prompts = inputs(args.prompts)?;
    let pipeline =
        TextGenerationPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let config = args.settings.apply(pipeline.generation_config());
    let beams = config.num_beams > 1;
    let options = TextGenerationOptions::default().with_generation(config);
    if !args.json && !beams {
        return stream(&pipeline, &prompts, &options, out);
    }
    // Beam search knows its best sequences only at the end: nothing to stream.
    for generated in pipeline.run(&prompts, &options)?.into_iter().flatten() {
        match args.json {
            true => json_line(out, &generated)?,
            false => writeln!(out, "{}", generated.generated_text)?,
        }
    }
    Ok(())
}

/// Each prompt, then its new tokens as they are decoded.
fn stream(
    pipeline: &TextGenerationPipeline,
    prompts: &[String],
    options: &TextGenerationOptions,
    out: &mut impl Write,
) -> Result<()> {
    for prompt in prompts {
        write!(out, "{prompt}")?;
        out.flush()?;
        // A closed stdout ends the loop, and dropping the stream stops generating, not only
        // printing.
        for token in pipeline.stream(prompt, options)? {
            write!(out, "{}", token?.text)?;
            out.flush()?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `ferroformers chat`: a reply to each line of stdin, until its end.
pub fn chat(common: &Common, settings: &GenerationArgs, out: &mut impl Write) -> Result<()> {
    let pipeline =
        TextGenerationPipeline::from_pretrained(common.model(), &common.load_options()?)?;
    let config = settings.apply(pipeline.generation_config());
    let mut conversation = Conversation::new(Arc::new(pipeline));
    let stdin = std::io::stdin();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            writeln!(out)?;
            return Ok(());
        }
        let user = line.trim();
        if user.is_empty() {
            continue;
        }
        let reply = conversation.respond(user, &config)?;
        writeln!(out, "{}", reply.trim())?;
    }
}
