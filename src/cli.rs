//! Arguments and subcommands of the `ferroformers` command.

use std::io::{BufRead, Write};

use crate::bench;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferroformers::generation::GenerationConfig;
use ferroformers::pipelines::{
    AggregationStrategy, ClassifyOptions, Conversation, EmbeddingsPipeline, FillMaskOptions,
    FillMaskPipeline, QuestionAnsweringOptions, QuestionAnsweringPipeline,
    TextClassificationPipeline, TextGenerationPipeline, TokenClassificationPipeline,
};
use ferroformers::{DType, Device, HubOptions, LoadOptions, Pooling, Quantization, TextInput};
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
    #[arg(long, value_enum, default_value_t = CliDType::F32)]
    dtype: CliDType,
    #[arg(long, value_enum, default_value_t = CliDevice::Cpu)]
    device: CliDevice,
    /// Threads that run the model (default: RAYON_NUM_THREADS, else one per logical CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// No progress bars and no log lines but errors (RUST_LOG, when set, still decides the log).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliDType {
    F32,
    F16,
    Bf16,
    /// Linear layers quantized to int8 at load (one scale per output channel), the rest f32.
    Int8,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliDevice {
    Cpu,
    Cuda,
    Metal,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliPooling {
    Mean,
    Cls,
    Max,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliAggregation {
    None,
    Simple,
    First,
    Average,
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
        #[arg(long)]
        json: bool,
        /// Texts; `-` or none reads stdin, one per line.
        texts: Vec<String>,
    },
    /// Predict the masked word.
    FillMask {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long)]
        json: bool,
        text: Option<String>,
    },
    /// Text classification (sentiment and the like).
    Classify {
        #[command(flatten)]
        common: Common,
        /// Classes per input (all when absent).
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        json: bool,
        texts: Vec<String>,
    },
    /// Named entities.
    Ner {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value_t = CliAggregation::Simple)]
        aggregation: CliAggregation,
        #[arg(long)]
        json: bool,
        text: Option<String>,
    },
    /// Extractive question answering.
    Qa {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        question: String,
        #[arg(long)]
        context: String,
        #[arg(long)]
        json: bool,
    },
    /// Text generation (streamed without --json).
    Generate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        settings: GenerationArgs,
        #[arg(long)]
        json: bool,
        prompt: Option<String>,
    },
    /// Time the encoder's forward pass on random token ids: median milliseconds and
    /// sequences/s. With --generate, time GPT-2's greedy decoding instead: prefill and
    /// tokens/s, against the memory bandwidth measured in the same run. Both report the
    /// instruction set the kernels ran and the resident memory (peak, after load, after the
    /// runs).
    Bench {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq: usize,
        #[arg(long)]
        generate: bool,
        #[arg(long, default_value_t = 32)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Timed runs, after two warm-up runs.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// With --generate: also load the model in this dtype and time the two in turn, run
        /// by run, and report the paired ratio of their decoding speeds.
        #[arg(long, value_enum, requires = "generate")]
        against: Option<CliDType>,
        #[arg(long)]
        json: bool,
    },
    /// Chat with a DialoGPT-style model, one line per turn on stdin.
    Chat {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        settings: GenerationArgs,
    },
}

#[derive(Debug, Args)]
struct GenerationArgs {
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    #[arg(long)]
    num_beams: Option<usize>,
    #[arg(long)]
    repetition_penalty: Option<f32>,
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    #[arg(long)]
    do_sample: bool,
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop once the text ends with this (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl GenerationArgs {
    /// The model's settings with these flags on top.
    fn apply(&self, base: &GenerationConfig) -> GenerationConfig {
        let mut config = base.clone().with_max_new_tokens(self.max_new_tokens);
        config.do_sample = self.do_sample;
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
        config.seed = self.seed.or(config.seed);
        config.stop_strings.extend(self.stop.iter().cloned());
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
    #[error("{0}")]
    Usage(String),
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
        let line = line.map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
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
            json,
            texts,
        } => {
            let texts = inputs(texts)?;
            let mut pipeline =
                EmbeddingsPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            if let Some(pooling) = pooling {
                pipeline = pipeline.with_pooling(match pooling {
                    CliPooling::Mean => Pooling::Mean,
                    CliPooling::Cls => Pooling::Cls,
                    CliPooling::Max => Pooling::Max,
                });
            }
            if normalize {
                pipeline = pipeline.with_normalize(true);
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (text, embedding) in texts.iter().zip(pipeline.embed(&refs)?) {
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
            json,
            text,
        } => {
            let texts = inputs(text.into_iter().collect())?;
            let pipeline =
                FillMaskPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let options = FillMaskOptions {
                top_k,
                targets: None,
            };
            for predictions in pipeline.fill(&refs, &options)? {
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
            json,
            texts,
        } => {
            let texts = inputs(texts)?;
            let pipeline = TextClassificationPipeline::from_pretrained(
                &common.model,
                &common.load_options()?,
            )?;
            let refs: Vec<TextInput> = texts.iter().map(|t| TextInput::Single(t)).collect();
            let options = ClassifyOptions {
                top_k,
                ..ClassifyOptions::default()
            };
            for (text, labels) in texts.iter().zip(pipeline.classify(&refs, &options)?) {
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
            json,
            text,
        } => {
            let texts = inputs(text.into_iter().collect())?;
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
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for entities in pipeline.entities(&refs, strategy)? {
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
            json,
        } => {
            let pipeline =
                QuestionAnsweringPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let answers =
                pipeline.answer(&question, &context, &QuestionAnsweringOptions::default())?;
            let best = answers
                .first()
                .ok_or_else(|| CliError::Usage("the model found no answer".to_string()))?;
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
            prompt,
        } => {
            let prompts = inputs(prompt.into_iter().collect())?;
            let pipeline =
                TextGenerationPipeline::from_pretrained(&common.model, &common.load_options()?)?;
            let config = settings.apply(pipeline.config());
            for prompt in &prompts {
                if json {
                    for generated in pipeline.generate(&[prompt], &config, true)?.remove(0) {
                        json_line(out, &generated)?;
                    }
                } else if config.num_beams > 1 {
                    for generated in pipeline.generate(&[prompt], &config, true)?.remove(0) {
                        writeln!(out, "{}", generated.generated_text)?;
                    }
                } else {
                    write!(out, "{prompt}")?;
                    out.flush()?;
                    let mut failed = None;
                    pipeline.generate_stream(prompt, &config, true, |piece| {
                        if failed.is_none() {
                            failed = write!(out, "{piece}").and_then(|()| out.flush()).err();
                        }
                    })?;
                    if let Some(error) = failed {
                        return Err(error.into());
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
            let config = settings.apply(pipeline.config());
            let mut conversation = Conversation::new(&pipeline);
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
    }
    Ok(())
}
