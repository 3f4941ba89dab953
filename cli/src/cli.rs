//! Arguments and subcommands of the `ferroformers` command.

use std::io::{BufRead, Write};
use std::sync::Arc;

use crate::bench;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferroformers::generation::GenerationConfig;
use ferroformers::pipelines::{
    AggregationStrategy, Conversation, EmbeddingsOptions, EmbeddingsPipeline, FillMaskOptions,
    FillMaskPipeline, Pipeline, QuestionAnsweringOptions, QuestionAnsweringPipeline,
    TextClassificationOptions, TextClassificationPipeline, TextGenerationOptions,
    TextGenerationPipeline, TokenClassificationOptions, TokenClassificationPipeline, Truncation,
    DEFAULT_BATCH_SIZE,
};
use ferroformers::{DType, Device, HubOptions, LoadOptions, Pooling, Quantization};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "ferroformers",
    version,
    about = "Transformer pipelines in pure Rust: embeddings, fill-mask, classification, NER, QA, generation, chat"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Hub model id (org/name) or local folder.
    #[arg(short, long)]
    model: String,
    /// Branch, tag or commit of the Hub repository.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Weight and activation type.
    #[arg(long, value_enum, default_value_t = CliDType::F32)]
    dtype: CliDType,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = CliDevice::Cpu)]
    device: CliDevice,
    /// Threads that run the model (default: RAYON_NUM_THREADS, else one per logical CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// No progress bars and no log lines but errors (RUST_LOG, when set, still decides the log).
    #[arg(long, short)]
    quiet: bool,
}

/// Batching, shared by the encoder pipelines.
#[derive(Debug, Args)]
struct Batching {
    /// Inputs per forward pass (sorted by length; results keep input order).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_parser = at_least_one)]
    batch_size: usize,
}

pub(crate) fn at_least_one(value: &str) -> std::result::Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliDType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Linear layers quantized to int8 at load (one scale per output channel), the rest f32.
    Int8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliDevice {
    /// The CPU, with this crate's own kernels.
    Cpu,
    /// The first CUDA GPU (needs the `cuda` feature).
    Cuda,
    /// The Apple GPU (needs the `metal` feature).
    Metal,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliPooling {
    /// Mean of the token embeddings.
    Mean,
    /// The first token's embedding.
    Cls,
    /// Element-wise maximum over the tokens.
    Max,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliAggregation {
    /// One entity per token.
    None,
    /// Adjacent tokens of the same type form a group.
    Simple,
    /// Words take their first token's label.
    First,
    /// Words take the label of their tokens' average scores.
    Average,
    /// Words take their most confident token's label.
    Max,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sentence embeddings (pooling from the model's sentence-transformers files).
    Embed {
        #[command(flatten)]
        common: Common,
        /// Override the model's pooling.
        #[arg(long, value_enum)]
        pooling: Option<CliPooling>,
        /// Scale embeddings to unit length.
        #[arg(long)]
        normalize: bool,
        /// Cut texts at this many tokens (default: the model's max_seq_length).
        #[arg(long)]
        max_length: Option<usize>,
        #[command(flatten)]
        batching: Batching,
        /// One JSON array per line instead of a summary.
        #[arg(long)]
        json: bool,
        /// Texts; `-` or none reads stdin, one per line.
        texts: Vec<String>,
    },
    /// Predict the masked word.
    FillMask {
        #[command(flatten)]
        common: Common,
        /// Candidates per text.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Cut texts longer than --max-length (or the model's maximum) instead of failing.
        #[arg(long)]
        truncation: bool,
        /// The length --truncation cuts at.
        #[arg(long, requires = "truncation")]
        max_length: Option<usize>,
        #[command(flatten)]
        batching: Batching,
        /// One JSON array of candidates per line.
        #[arg(long)]
        json: bool,
        /// Texts with one mask token each; `-` or none reads stdin, one per line.
        texts: Vec<String>,
    },
    /// Text classification (sentiment and the like).
    Classify {
        #[command(flatten)]
        common: Common,
        /// Classes per input (all when absent).
        #[arg(long)]
        top_k: Option<usize>,
        /// Cut texts longer than --max-length (or the model's maximum) instead of failing.
        #[arg(long)]
        truncation: bool,
        /// The length --truncation cuts at.
        #[arg(long, requires = "truncation")]
        max_length: Option<usize>,
        #[command(flatten)]
        batching: Batching,
        /// One JSON array of classes per line.
        #[arg(long)]
        json: bool,
        /// Texts; `-` or none reads stdin, one per line.
        texts: Vec<String>,
    },
    /// Named entities.
    Ner {
        #[command(flatten)]
        common: Common,
        /// How token predictions become entities.
        #[arg(long, value_enum, default_value_t = CliAggregation::Simple)]
        aggregation: CliAggregation,
        /// Tokens per text, or per window with --stride (default: the model's maximum).
        #[arg(long)]
        max_length: Option<usize>,
        /// Run long texts in overlapping windows sharing this many tokens, instead of cutting
        /// them at --max-length.
        #[arg(long)]
        stride: Option<usize>,
        #[command(flatten)]
        batching: Batching,
        /// One JSON array of entities per line.
        #[arg(long)]
        json: bool,
        /// Texts; `-` or none reads stdin, one per line.
        texts: Vec<String>,
    },
    /// Extractive question answering.
    Qa {
        #[command(flatten)]
        common: Common,
        /// The question.
        #[arg(long)]
        question: String,
        /// The text the answer is taken from.
        #[arg(long)]
        context: String,
        #[command(flatten)]
        batching: Batching,
        /// The answer as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Text generation, streamed as it decodes (without --json); one run per prompt.
    Generate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        settings: GenerationArgs,
        /// One JSON line per generated text: generated_text, generated_token_ids,
        /// finish_reason ("stop" or "length"), prompt_tokens, completion_tokens.
        #[arg(long)]
        json: bool,
        /// Prompts; `-` or none reads stdin, one prompt per line.
        prompts: Vec<String>,
    },
    /// Time the encoder's forward pass on random token ids: median milliseconds and
    /// sequences/s. With --generate, time GPT-2's greedy decoding instead: prefill and
    /// tokens/s, against the memory bandwidth measured in the same run. Both report the
    /// instruction set the kernels ran and the resident memory (peak, after load, after the
    /// runs).
    Bench {
        #[command(flatten)]
        common: Common,
        /// Sequences per forward pass (prompts, with --generate).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Time GPT-2's greedy decoding instead of the encoder.
        #[arg(long)]
        generate: bool,
        /// With --generate: prompt length in tokens.
        #[arg(long, default_value_t = 32)]
        prompt_tokens: usize,
        /// With --generate: tokens to decode.
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Timed runs, after two warm-up runs.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// With --generate: also load the model in this dtype and time the two in turn, run
        /// by run, and report the paired ratio of their decoding speeds.
        #[arg(long, value_enum, requires = "generate")]
        against: Option<CliDType>,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Chat, one line per turn on stdin: with the model's chat template when its
    /// tokenizer_config.json has one, else DialoGPT-style (turns joined by end-of-text).
    Chat {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        settings: GenerationArgs,
    },
    /// An HTTP server with the routes of text-embeddings-inference (/embed, /rerank,
    /// /predict, /tokenize, /decode, /info, /health, /metrics), OpenAI's /v1/embeddings and /v1/models,
    /// and the Inference API's POST / for fill-mask, NER and QA.
    Serve {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: crate::serve_command::ServeArgs,
    },
}

/// Generation settings. Unset ones come from the model's generation_config.json, `do_sample`
/// included.
#[derive(Debug, Args)]
struct GenerationArgs {
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
    #[error("{0}")]
    Failed(String),
}

type Result<T> = std::result::Result<T, CliError>;

impl Cli {
    /// The options every subcommand has.
    pub fn common(&self) -> &Common {
        match &self.command {
            Command::Embed { common, .. }
            | Command::FillMask { common, .. }
            | Command::Classify { common, .. }
            | Command::Ner { common, .. }
            | Command::Qa { common, .. }
            | Command::Generate { common, .. }
            | Command::Bench { common, .. }
            | Command::Chat { common, .. } => common,
            Command::Serve { common, .. } => common,
        }
    }
}

impl Common {
    /// The thread count asked for with `--threads`.
    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }

    /// Whether `--quiet` was given.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    fn load_options(&self) -> Result<LoadOptions> {
        self.load_options_as(self.dtype)
    }

    /// `--dtype` as TEI's `/info` names weight types.
    fn dtype_name(&self) -> &'static str {
        match self.dtype {
            CliDType::F32 => "float32",
            CliDType::F16 => "float16",
            CliDType::Bf16 => "bfloat16",
            CliDType::Int8 => "int8",
        }
    }

    fn load_options_as(&self, dtype: CliDType) -> Result<LoadOptions> {
        let device = match self.device {
            CliDevice::Cpu => Device::Cpu,
            CliDevice::Cuda => Device::new_cuda(0).map_err(ferroformers::Error::from)?,
            CliDevice::Metal => Device::new_metal(0).map_err(ferroformers::Error::from)?,
        };
        let (dtype, quantization) = match dtype {
            CliDType::F32 => (DType::F32, Quantization::None),
            CliDType::F16 => (DType::F16, Quantization::None),
            CliDType::Bf16 => (DType::BF16, Quantization::None),
            CliDType::Int8 => (DType::F32, Quantization::Int8),
        };
        Ok(LoadOptions::default()
            .with_hub(
                HubOptions::from_env()
                    .with_revision(self.revision.clone())
                    .with_progress(!self.quiet),
            )
            .with_dtype(dtype)
            .with_quantization(quantization)
            .with_device(device))
    }
}

/// The texts of the command line, or stdin's lines when there are none or the only one is `-`.
fn inputs(texts: Vec<String>) -> Result<Vec<String>> {
    if !texts.is_empty() && texts != ["-"] {
        return Ok(texts);
    }
    let mut lines = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| CliError::Failed(format!("cannot read stdin: {e}")))?;
        lines.push(line);
    }
    if lines.is_empty() {
        return Err(CliError::Usage(
            "no input: pass text as an argument or on stdin".to_string(),
        ));
    }
    Ok(lines)
}

fn json_line(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

pub fn run(cli: Cli, out: &mut impl Write) -> Result<()> {
    match cli.command {
        Command::Embed {
            common,
            pooling,
            normalize,
            max_length,
            batching,
            json,
            texts,
        } => {
            let texts = inputs(texts)?;
            let pipeline =
                EmbeddingsPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let options = EmbeddingsOptions {
                pooling: pooling.map(|pooling| match pooling {
                    CliPooling::Mean => Pooling::Mean,
                    CliPooling::Cls => Pooling::Cls,
                    CliPooling::Max => Pooling::Max,
                }),
                normalize_embeddings: normalize,
                truncation: Truncation {
                    max_length,
                    ..Truncation::ON
                },
                batch_size: batching.batch_size,
                ..EmbeddingsOptions::default()
            };
            for (text, embedding) in texts.iter().zip(pipeline.run(&texts, &options)?) {
                if json {
                    json_line(out, &embedding)?;
                } else {
                    let head: Vec<String> = embedding
                        .iter()
                        .take(6)
                        .map(|x| format!("{x:.4}"))
                        .collect();
                    writeln!(
                        out,
                        "{text}\n  [{}, ...] ({} dimensions)",
                        head.join(", "),
                        embedding.len()
                    )?;
                }
            }
        }
        Command::FillMask {
            common,
            top_k,
            truncation,
            max_length,
            batching,
            json,
            texts,
        } => {
            let texts = inputs(texts)?;
            let pipeline =
                FillMaskPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let options = FillMaskOptions {
                top_k,
                truncation: Truncation {
                    enabled: truncation,
                    max_length,
                },
                batch_size: batching.batch_size,
                ..FillMaskOptions::default()
            };
            for predictions in pipeline.run(&texts, &options)? {
                if json {
                    json_line(out, &predictions)?;
                } else {
                    for p in predictions {
                        writeln!(
                            out,
                            "{:.4}  {:<16} {}",
                            p.score,
                            format!("{:?}", p.token_str),
                            p.sequence
                        )?;
                    }
                }
            }
        }
        Command::Classify {
            common,
            top_k,
            truncation,
            max_length,
            batching,
            json,
            texts,
        } => {
            let texts = inputs(texts)?;
            let pipeline = TextClassificationPipeline::from_pretrained(
                &common.model,
                &common.load_options()?,
            )?;
            let options = TextClassificationOptions {
                top_k,
                truncation: Truncation {
                    enabled: truncation,
                    max_length,
                },
                batch_size: batching.batch_size,
                ..TextClassificationOptions::default()
            };
            for (text, labels) in texts.iter().zip(pipeline.run(&texts, &options)?) {
                if json {
                    json_line(out, &labels)?;
                } else {
                    let shown: Vec<String> = labels
                        .iter()
                        .map(|l| format!("{} {:.4}", l.label, l.score))
                        .collect();
                    writeln!(out, "{}\t{text}", shown.join(", "))?;
                }
            }
        }
        Command::Ner {
            common,
            aggregation,
            max_length,
            stride,
            batching,
            json,
            texts,
        } => {
            let texts = inputs(texts)?;
            let pipeline = TokenClassificationPipeline::from_pretrained(
                &common.model,
                &common.load_options()?,
            )?;
            let strategy = match aggregation {
                CliAggregation::None => AggregationStrategy::None,
                CliAggregation::Simple => AggregationStrategy::Simple,
                CliAggregation::First => AggregationStrategy::First,
                CliAggregation::Average => AggregationStrategy::Average,
                CliAggregation::Max => AggregationStrategy::Max,
            };
            let options = TokenClassificationOptions {
                aggregation_strategy: strategy,
                truncation: Truncation {
                    max_length,
                    ..Truncation::ON
                },
                stride,
                batch_size: batching.batch_size,
                ..TokenClassificationOptions::default()
            };
            for entities in pipeline.run(&texts, &options)? {
                if json {
                    json_line(out, &entities)?;
                } else {
                    for e in entities {
                        let label = e.entity_group.or(e.entity).unwrap_or_default();
                        writeln!(
                            out,
                            "{label:<8} {:.4}  {:>4}..{:<4} {}",
                            e.score, e.start, e.end, e.word
                        )?;
                    }
                }
            }
        }
        Command::Qa {
            common,
            question,
            context,
            batching,
            json,
        } => {
            let pipeline =
                QuestionAnsweringPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let options = QuestionAnsweringOptions {
                batch_size: batching.batch_size,
                ..QuestionAnsweringOptions::default()
            };
            let answers = pipeline.run_one((&question, &context), &options)?;
            let best = answers
                .first()
                .ok_or_else(|| CliError::Failed("the model found no answer".to_string()))?;
            if json {
                json_line(out, best)?;
            } else {
                writeln!(
                    out,
                    "{} (score {:.4}, characters {}..{})",
                    best.answer, best.score, best.start, best.end
                )?;
            }
        }
        Command::Generate {
            common,
            settings,
            json,
            prompts,
        } => {
            let prompts = inputs(prompts)?;
            let pipeline =
                TextGenerationPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let config = settings.apply(pipeline.generation_config());
            let beams = config.num_beams > 1;
            let options = TextGenerationOptions::default().with_generation(config);
            if json || beams {
                // Beam search knows its best sequences only at the end: nothing to stream.
                for generated in pipeline.run(&prompts, &options)?.into_iter().flatten() {
                    match json {
                        true => json_line(out, &generated)?,
                        false => writeln!(out, "{}", generated.generated_text)?,
                    }
                }
            } else {
                for prompt in &prompts {
                    write!(out, "{prompt}")?;
                    out.flush()?;
                    // A closed stdout ends the loop, and dropping the stream stops generating,
                    // not only printing.
                    for token in pipeline.stream(prompt, &options)? {
                        write!(out, "{}", token?.text)?;
                        out.flush()?;
                    }
                    writeln!(out)?;
                }
            }
        }
        Command::Bench {
            common,
            batch,
            generate: true,
            prompt_tokens,
            new_tokens,
            runs,
            against,
            json,
            ..
        } => {
            let mut options = vec![common.load_options()?];
            if let Some(against) = against {
                options.push(common.load_options_as(against)?);
            }
            let reports = bench::decoders(
                &common.model,
                &options,
                batch,
                prompt_tokens,
                new_tokens,
                runs,
            )?;
            match (&reports[..], json) {
                ([report], true) => json_line(out, report)?,
                ([first, second], true) => {
                    json_line(out, &bench::PairedDecode::new(first, second))?
                }
                (reports, _) => {
                    for report in reports {
                        writeln!(
                            out,
                            "{}: {batch} x ({prompt_tokens} prompt + {new_tokens} new tokens), \
                             {}: prefill {:.2} ms, decode {:.2} tokens/s, {:.0}% of the {:.1} \
                             GB/s triad bandwidth at {:.1} MB per step ({runs} runs); {}",
                            common.model,
                            report.dtype,
                            report.prefill_ms,
                            report.decode_tokens_per_second,
                            report.bandwidth_fraction * 100.0,
                            report.triad_gb_per_second,
                            report.weight_bytes_per_token as f64 / 1e6,
                            report.setting.describe()
                        )?;
                    }
                    if let [first, second] = reports {
                        let paired = bench::PairedDecode::new(first, second);
                        writeln!(
                            out,
                            "{} vs {}: {:.2}x (median of {runs} runs paired in time: {})",
                            second.dtype,
                            first.dtype,
                            paired.ratio,
                            paired
                                .ratios
                                .iter()
                                .map(|r| format!("{r:.2}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )?;
                    }
                }
            }
        }
        Command::Bench {
            common,
            batch,
            seq,
            runs,
            json,
            ..
        } => {
            let options = common.load_options()?;
            let report = bench::encoder(&common.model, &options, batch, seq, runs)?;
            if json {
                json_line(out, &report)?;
            } else {
                writeln!(
                    out,
                    "{}: batch {batch} x {seq} tokens, {}: median {:.2} ms, {:.2} sequences/s \
                     ({runs} runs); {}",
                    common.model,
                    report.dtype,
                    report.median_ms,
                    report.sequences_per_second,
                    report.setting.describe()
                )?;
            }
        }
        Command::Chat { common, settings } => {
            let pipeline =
                TextGenerationPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let config = settings.apply(pipeline.generation_config());
            let mut conversation = Conversation::new(Arc::new(pipeline));
            let stdin = std::io::stdin();
            loop {
                write!(out, "> ")?;
                out.flush()?;
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    writeln!(out)?;
                    break;
                }
                let user = line.trim();
                if user.is_empty() {
                    continue;
                }
                let reply = conversation.respond(user, &config)?;
                writeln!(out, "{}", reply.trim())?;
            }
        }
        Command::Serve { common, args } => crate::serve_command::run(
            &common.model,
            common.load_options()?,
            common.dtype_name(),
            args,
            out,
        )?,
    }
    Ok(())
}
