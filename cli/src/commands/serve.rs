//! `ferroformers serve`: load the pipeline, bind, print one line when ready, serve until
//! Ctrl-C or SIGTERM. Every flag can come from a `FERROFORMERS_*` environment variable, as
//! TEI's come from theirs, for containers.

use std::ffi::OsStr;
use std::io::Write;
use std::time::Duration;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, ValueEnum};
use ferroformers::pipelines::{pipeline, AnyPipeline, Task};
use ferroformers_server::{shutdown_signal, Server, ServerConfig};

use crate::args::at_least_one;
use crate::cli::Common;
use crate::error::{CliError, Result};

/// What `--task` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskChoice {
    /// `None`: `auto`, from the model's files.
    task: Option<Task>,
    /// `chat`: text generation checked at start for what chat needs (a chat template, or an
    /// end-of-text token to join turns with, as DialoGPT expects).
    for_chat: bool,
}

/// A `--task` name as `serve` has always named them, what it means, and its help.
struct ServeTaskName {
    name: &'static str,
    choice: TaskChoice,
    help: &'static str,
}

/// `--task`'s own names, which `--help` lists; Task's transformers names and aliases
/// (`text-classification`, `sentiment-analysis`, ...) are accepted too.
const SERVE_TASKS: [ServeTaskName; 10] = [
    ServeTaskName {
        name: "auto",
        choice: TaskChoice {
            task: None,
            for_chat: false,
        },
        help: "From config.json's `architectures` and the sentence-transformers files",
    },
    ServeTaskName {
        name: "embed",
        choice: TaskChoice::named(Task::Embeddings),
        help: "Sentence embeddings: /embed, /v1/embeddings",
    },
    ServeTaskName {
        name: "splade",
        choice: TaskChoice::named(Task::SparseEmbeddings),
        help: "SPLADE sparse embeddings of a masked LM (a SparseEncoder, or any ForMaskedLM \
               checkpoint): /embed_sparse",
    },
    ServeTaskName {
        name: "classify",
        choice: TaskChoice::named(Task::TextClassification),
        help: "Sequence classification: /predict",
    },
    ServeTaskName {
        name: "rerank",
        choice: TaskChoice::named(Task::Rerank),
        help: "A cross-encoder: /rerank",
    },
    ServeTaskName {
        name: "fill-mask",
        choice: TaskChoice::named(Task::FillMask),
        help: "Masked-token prediction: POST /",
    },
    ServeTaskName {
        name: "ner",
        choice: TaskChoice::named(Task::TokenClassification),
        help: "Token classification: POST /",
    },
    ServeTaskName {
        name: "qa",
        choice: TaskChoice::named(Task::QuestionAnswering),
        help: "Question answering: POST /",
    },
    ServeTaskName {
        name: "generate",
        choice: TaskChoice::named(Task::TextGeneration),
        help: "Text generation: /v1/completions, and /v1/chat/completions (the model's chat \
               template, or DialoGPT's turns ended by the end-of-text token)",
    },
    ServeTaskName {
        name: "chat",
        choice: TaskChoice {
            task: Some(Task::TextGeneration),
            for_chat: true,
        },
        help: "Text generation for chat: as generate, refused at start if the model can chat \
               neither with a template nor by joining turns with its end-of-text token",
    },
];

impl TaskChoice {
    /// `task` itself, no more.
    const fn named(task: Task) -> Self {
        Self {
            task: Some(task),
            for_chat: false,
        }
    }

    /// `--task`'s name, or a transformers task name or alias.
    fn from_name(name: &str) -> Option<Self> {
        SERVE_TASKS
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.choice)
            .or_else(|| name.parse().ok().map(Self::named))
    }

    /// The `--task` name of `task`, as the ready line and the log show it.
    fn name(task: Task, for_chat: bool) -> &'static str {
        let wanted = TaskChoice {
            task: Some(task),
            for_chat,
        };
        SERVE_TASKS
            .iter()
            .find(|entry| entry.choice == wanted)
            .map_or(task.name(), |entry| entry.name)
    }
}

/// Parses `--task`; a value parser of its own so that `--help` lists `--task`'s names (with
/// their help) while transformers' names work too.
#[derive(Debug, Clone, Copy)]
struct TaskParser;

impl TypedValueParser for TaskParser {
    type Value = TaskChoice;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> std::result::Result<TaskChoice, clap::Error> {
        if let Some(choice) = value.to_str().and_then(TaskChoice::from_name) {
            return Ok(choice);
        }
        // clap's own message for a value that is not among the possible ones.
        let mut error = clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
        let arg = arg.map_or_else(|| "--task".to_string(), ToString::to_string);
        let names = SERVE_TASKS.iter().map(|entry| entry.name.to_string());
        error.insert(ContextKind::InvalidArg, ContextValue::String(arg));
        error.insert(
            ContextKind::InvalidValue,
            ContextValue::String(value.to_string_lossy().into_owned()),
        );
        error.insert(
            ContextKind::ValidValue,
            ContextValue::Strings(names.collect()),
        );
        Err(error)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(SERVE_TASKS.iter().map(|entry| {
            PossibleValue::new(entry.name).help(entry.help)
        })))
    }
}

/// What `--pooling` takes: TEI's `--pooling` values that change the task. The dense poolings
/// (mean, cls, ...) come from the model's sentence-transformers files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServePooling {
    /// SPLADE vectors of a masked LM on /embed_sparse, as TEI's `--pooling splade`.
    Splade,
}

/// The options of `serve` besides the model's.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What to serve (transformers' task names work too: text-classification,
    /// sentiment-analysis, token-classification, ...).
    #[arg(long, env = "FERROFORMERS_TASK", default_value = "auto", value_parser = TaskParser)]
    task: TaskChoice,
    /// Pool as TEI's `--pooling` does: `splade` serves a ForMaskedLM checkpoint's SPLADE
    /// vectors (as --task splade; a SparseEncoder model is detected without it).
    #[arg(long, env = "FERROFORMERS_POOLING", value_enum)]
    pooling: Option<ServePooling>,
    /// Address to listen on (0.0.0.0 to accept other machines).
    #[arg(long, env = "FERROFORMERS_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed when ready).
    #[arg(long, env = "FERROFORMERS_PORT", default_value_t = 8080)]
    port: u16,
    /// Longest input in tokens (default: the model's); longer ones get 413 unless the request
    /// sets `truncate`.
    #[arg(long, env = "FERROFORMERS_MAX_INPUT_LENGTH", value_parser = at_least_one)]
    max_input_length: Option<usize>,
    /// Largest request body: bytes, or with a unit (kB, MB, GB, KiB, MiB, GiB).
    #[arg(long, env = "FERROFORMERS_PAYLOAD_LIMIT", default_value = "2MB", value_parser = byte_size)]
    payload_limit: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "FERROFORMERS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// An origin browsers may call from (repeat for more, or list them with commas; `*` for
    /// any). Default: none.
    #[arg(long, env = "FERROFORMERS_CORS_ALLOW_ORIGIN", value_delimiter = ',')]
    cors_allow_origin: Vec<String>,
    /// Requests in flight at once; more get 429.
    #[arg(long, env = "FERROFORMERS_MAX_CONCURRENT_REQUESTS", default_value_t = 512, value_parser = at_least_one)]
    max_concurrent_requests: usize,
    /// Padded tokens (longest input × inputs) per batched forward of the encoder routes:
    /// concurrent requests are served together up to this.
    #[arg(long, env = "FERROFORMERS_MAX_BATCH_TOKENS", default_value_t = 16384, value_parser = at_least_one)]
    max_batch_tokens: usize,
    /// Requests per batched forward, within --max-batch-tokens (default: 8; 1: one request at
    /// a time); with --task generate or chat, the sequences decoded together (default: 32;
    /// more wait in a queue).
    #[arg(long, env = "FERROFORMERS_MAX_BATCH_REQUESTS", value_parser = at_least_one)]
    max_batch_requests: Option<usize>,
    /// Threads that serve HTTP (tokio's workers), beside the model's --threads. Default: one
    /// per CPU this process may run on.
    #[arg(long, env = "FERROFORMERS_HTTP_WORKERS", value_parser = at_least_one)]
    http_workers: Option<usize>,
    /// Inputs one request may send; more get 413.
    #[arg(long, env = "FERROFORMERS_MAX_CLIENT_BATCH_SIZE", default_value_t = 32, value_parser = at_least_one)]
    max_client_batch_size: usize,
    /// Seconds a client may take to send a request head; idle keep-alive connections close
    /// after it too.
    #[arg(long, env = "FERROFORMERS_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = at_least_one)]
    header_read_timeout_secs: usize,
    /// Longest pause, in seconds, while a request body arrives (408 past it).
    #[arg(long, env = "FERROFORMERS_BODY_READ_TIMEOUT_SECS", default_value_t = 30, value_parser = at_least_one)]
    body_read_timeout_secs: usize,
    /// Seconds the requests in flight may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "FERROFORMERS_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    shutdown_timeout_secs: usize,
}

/// `2MB`, `512kB`, `1MiB` or a plain number of bytes.
fn byte_size(value: &str) -> std::result::Result<usize, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{value}` is not a size: write e.g. 2MB or 2000000"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit `{other}`: use kB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{value}` is too large"))
}

fn seconds(count: usize) -> Duration {
    Duration::from_secs(u64::try_from(count).unwrap_or(u64::MAX))
}

/// `ferroformers serve`: load, bind and serve.
pub fn serve(common: &Common, args: ServeArgs, out: &mut impl Write) -> Result<()> {
    let model = common.model();
    let load = common.load_options()?;
    let (task, why) = match (args.task.task, args.pooling) {
        (None | Some(Task::SparseEmbeddings), Some(ServePooling::Splade)) => {
            (Task::SparseEmbeddings, "--pooling splade".to_string())
        }
        (Some(task), Some(ServePooling::Splade)) => {
            return Err(CliError::Usage(format!(
                "--pooling splade serves sparse embeddings, not --task {}",
                TaskChoice::name(task, args.task.for_chat)
            )))
        }
        (None, None) if load.gguf_file.is_some() => (
            Task::TextGeneration,
            "a GGUF file (--gguf-file)".to_string(),
        ),
        (None, None) => Task::detect(model, &load.hub)?,
        (Some(task), None) => (task, "--task".to_string()),
    };
    let name = TaskChoice::name(task, args.task.for_chat);
    tracing::info!(task = name, reason = %why, "serving {model}");
    let pipeline = pipeline(task, model, &load)?;
    if args.task.for_chat {
        check_chat_template(model, &pipeline)?;
    }
    let config = ServerConfig {
        model_dtype: load.weight_type,
        host: args.host,
        port: args.port,
        max_input_length: args.max_input_length,
        payload_limit: args.payload_limit,
        api_key: args.api_key,
        cors_allow_origins: args.cors_allow_origin,
        max_concurrent_requests: args.max_concurrent_requests,
        max_batch_tokens: args.max_batch_tokens,
        max_batch_requests: args.max_batch_requests,
        max_client_batch_size: args.max_client_batch_size,
        header_read_timeout: seconds(args.header_read_timeout_secs),
        body_read_timeout: seconds(args.body_read_timeout_secs),
        shutdown_timeout: seconds(args.shutdown_timeout_secs),
        ..ServerConfig::new(model)
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.http_workers {
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        let server = Server::bind(pipeline, config).await?;
        // The signal handlers go in before the ready line, which is when clients (and
        // supervisors) may start sending signals.
        let shutdown = shutdown_signal();
        writeln!(
            out,
            "ferroformers serve: listening on http://{}, model {model}, task {name} ({why})",
            server.local_addr()
        )?;
        out.flush()?;
        server.run(shutdown).await?;
        Ok::<(), CliError>(())
    })
}

/// `--task chat` serves /v1/chat/completions: refuse to start rather than answer every
/// request with an error when the model can chat neither way. A model without a template chats
/// as `ferroformers chat` chats with it (DialoGPT's turns, each ended by the end-of-text token),
/// so the server and the command agree.
fn check_chat_template(model: &str, pipeline: &AnyPipeline) -> Result<()> {
    let Some(generation) = pipeline.as_text_generation() else {
        return Ok(());
    };
    if generation.chat_template()?.is_some() {
        return Ok(());
    }
    if generation.generation_config().eos_token_id.is_empty() {
        return Err(ferroformers::Error::InvalidInput(format!(
            "{model} has no chat template and no end-of-text token to join turns with: serve it \
             with --task generate for /v1/completions"
        ))
        .into());
    }
    tracing::warn!(
        "{model} has no chat template: chats join turns with the end-of-text token, as \
         DialoGPT expects (and as `ferroformers chat` does)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::byte_size;

    #[test]
    fn payload_limits_read_as_tei_writes_them() {
        assert_eq!(byte_size("2MB"), Ok(2_000_000));
        assert_eq!(byte_size("512kB"), Ok(512_000));
        assert_eq!(byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(byte_size("1500"), Ok(1500));
        assert!(byte_size("2 parsecs").is_err());
        assert!(byte_size("MB").is_err());
        assert!(byte_size("99999999999999999999GB").is_err());
    }
}
