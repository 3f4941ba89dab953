//! The subcommands: the command line's grammar, and `run`, which hands each subcommand to its
//! function.

mod bench;
mod convert;
mod encoders;
mod generate;
mod perplexity;
mod push;
mod serve;
mod train;

use std::io::Write;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::cli::Common;
use crate::error::Result;

#[derive(Debug, Parser)]
#[command(
    name = "ferroformers",
    version,
    about = "Transformer pipelines in pure Rust: embeddings, fill-mask, classification, NER, QA, generation, chat; and push to the Hub"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sentence embeddings (pooling from the model's sentence-transformers files); SPLADE vectors
    /// as their non-zero entries for a SparseEncoder or with --pooling splade.
    Embed {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: encoders::EmbedArgs,
    },
    /// Predict the masked word.
    FillMask {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: encoders::FillMaskArgs,
    },
    /// Text classification (sentiment and the like).
    Classify {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: encoders::ClassifyArgs,
    },
    /// Named entities.
    Ner {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: encoders::NerArgs,
    },
    /// Extractive question answering.
    Qa {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: encoders::QaArgs,
    },
    /// Text generation, streamed as it decodes (without --json); one run per prompt.
    Generate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: generate::GenerateArgs,
    },
    /// Perplexity of a text file, windowed as llama.cpp's llama-perplexity: windows of
    /// --ctx-size tokens, each scored over its second half; prints the running figure after
    /// each window and the final estimate with its error.
    Perplexity {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: perplexity::PerplexityArgs,
    },
    /// Fine-tune a BERT-family model on a JSON Lines or CSV file (classification,
    /// multi-label, regression, token classification, sentence embeddings, cross-encoder):
    /// AdamW with warmup and decay, an evaluation and a checkpoint each epoch, the best model
    /// saved to --output where transformers and sentence-transformers load it.
    Train {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: train::TrainArgs,
    },
    /// Time the encoder's forward pass on random token ids: median milliseconds and
    /// sequences/s. With --generate, time a decoder's greedy decoding instead (GPT-2 or a
    /// Llama-family model): prefill and tokens/s, against the memory bandwidth measured in the
    /// same run. Both report the instruction set the kernels ran and the resident memory (peak,
    /// after load, after the runs; the bandwidth probe's arrays not counted).
    Bench {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Chat, one line per turn on stdin: with the model's chat template when its
    /// tokenizer_config.json has one, else DialoGPT-style (turns joined by end-of-text).
    Chat {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: generate::GenerationArgs,
    },
    /// An HTTP server with the routes of text-embeddings-inference (/embed, /embed_sparse,
    /// /rerank, /predict, /tokenize, /decode, /info, /health, /metrics), OpenAI's /v1/embeddings and /v1/models,
    /// and the Inference API's POST / for fill-mask, NER and QA.
    // A server in a container is configured by its environment, as TEI's is: the model (and
    // its GGUF file) too, and only here (a one-shot command names its model on the command line).
    #[command(mut_arg("model", |model| model.env("FERROFORMERS_MODEL_ID")))]
    #[command(mut_arg("gguf_file", |file| file.env("FERROFORMERS_GGUF_FILE")))]
    Serve {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// Write a Llama, Mistral, Qwen2, Qwen3 or GPT-2 checkpoint as a GGUF file, as llama.cpp's
    /// convert_hf_to_gguf.py does (its tensor names, metadata and tokenizer), for llama.cpp,
    /// Ollama and --model FILE.gguf here; or an f32/f16/bf16 GGUF file again in --outtype, as
    /// llama-quantize --pure does. --dtype is not read: --outtype gives the file's type.
    Convert {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: convert::ConvertArgs,
    },
    /// Upload a folder to a Hub repository in one commit, creating the repository when it is
    /// missing (needs a write token: HF_TOKEN, `huggingface-cli login` or --token); prints the
    /// commit's URL.
    Push {
        #[command(flatten)]
        args: push::PushArgs,
    },
}

impl Cli {
    /// The options of the subcommands that run a model; `push` runs none.
    fn common(&self) -> Option<&Common> {
        match &self.command {
            Command::Embed { common, .. }
            | Command::FillMask { common, .. }
            | Command::Classify { common, .. }
            | Command::Ner { common, .. }
            | Command::Qa { common, .. }
            | Command::Generate { common, .. }
            | Command::Perplexity { common, .. }
            | Command::Train { common, .. }
            | Command::Bench { common, .. }
            | Command::Chat { common, .. }
            | Command::Serve { common, .. }
            | Command::Convert { common, .. } => Some(common),
            Command::Push { .. } => None,
        }
    }

    /// Whether `--quiet` was given.
    pub fn quiet(&self) -> bool {
        match &self.command {
            Command::Push { args } => args.quiet,
            _ => self.common().is_some_and(Common::quiet),
        }
    }

    /// The thread count asked for with `--threads`.
    pub fn threads(&self) -> Option<usize> {
        self.common().and_then(Common::threads)
    }

    /// Whether the subcommand trains (its backward pass sums gradients with candle's ops).
    pub fn trains(&self) -> bool {
        matches!(self.command, Command::Train { .. })
    }
}

/// Run the subcommand, its output on `out`.
pub fn run(cli: Cli, out: &mut impl Write) -> Result<()> {
    match cli.command {
        Command::Embed { common, args } => encoders::embed(&common, args, out),
        Command::FillMask { common, args } => encoders::fill_mask(&common, args, out),
        Command::Classify { common, args } => encoders::classify(&common, args, out),
        Command::Ner { common, args } => encoders::ner(&common, args, out),
        Command::Qa { common, args } => encoders::qa(&common, args, out),
        Command::Generate { common, args } => generate::generate(&common, args, out),
        Command::Perplexity { common, args } => perplexity::perplexity(&common, args, out),
        Command::Train { common, args } => train::train(&common, args, out),
        Command::Bench { common, args } => bench::bench(&common, args, out),
        Command::Chat { common, args } => generate::chat(&common, &args, out),
        Command::Serve { common, args } => serve::serve(&common, args, out),
        Command::Convert { common, args } => convert::convert(&common, args, out),
        Command::Push { args } => push::push(args, out),
    }
}

/// `value` as one line of JSON.
fn json_line(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
