//! `ferroformers serve`: load the pipeline, bind, print one line when ready, serve until
//! Ctrl-C or SIGTERM.

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ferroformers::pipelines::{pipeline, AnyPipeline};
use ferroformers::LoadOptions;
use ferroformers_server::{detect_task, shutdown_signal, ServeTask, Server, ServerConfig};

use crate::cli::{at_least_one, CliError};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliServeTask {
    /// From config.json's `architectures` and the sentence-transformers files.
    Auto,
    /// Sentence embeddings: /embed, /v1/embeddings.
    Embed,
    /// Sequence classification: /predict.
    Classify,
    /// A cross-encoder: /rerank.
    Rerank,
    /// Masked-token prediction: POST /.
    FillMask,
    /// Token classification: POST /.
    Ner,
    /// Question answering: POST /.
    Qa,
    /// Text generation: /v1/completions, and /v1/chat/completions with the model's chat template.
    Generate,
    /// Text generation for chat: as generate, refused at start without a chat template.
    Chat,
}

/// The options of `serve` besides the model's.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What to serve.
    #[arg(long, value_enum, default_value_t = CliServeTask::Auto)]
    task: CliServeTask,
    /// Address to listen on (0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed when ready).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Longest input in tokens (default: the model's); longer ones get 413 unless the request
    /// sets `truncate`.
    #[arg(long, value_parser = at_least_one)]
    max_input_length: Option<usize>,
    /// Largest request body: bytes, or with a unit (kB, MB, GB, KiB, MiB, GiB).
    #[arg(long, default_value = "2MB", value_parser = byte_size)]
    payload_limit: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "FERROFORMERS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// An origin browsers may call from (repeat for more; `*` for any). Default: none.
    #[arg(long)]
    cors_allow_origin: Vec<String>,
    /// Requests in flight at once; more get 429.
    #[arg(long, default_value_t = 512, value_parser = at_least_one)]
    max_concurrent_requests: usize,
    /// Padded tokens (longest input × inputs) per batched forward of the encoder routes:
    /// concurrent requests are served together up to this.
    #[arg(long, default_value_t = 16384, value_parser = at_least_one)]
    max_batch_tokens: usize,
    /// Requests per batched forward (default: as many as fit in --max-batch-tokens; 1: one
    /// request at a time); with --task generate or chat, the sequences decoded together
    /// (default: 32; more wait in a queue).
    #[arg(long, value_parser = at_least_one)]
    max_batch_requests: Option<usize>,
    /// Inputs one request may send; more get 413.
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    max_client_batch_size: usize,
    /// Seconds a client may take to send a request head; idle keep-alive connections close
    /// after it too.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    header_read_timeout_secs: usize,
    /// Longest pause, in seconds, while a request body arrives (408 past it).
    #[arg(long, default_value_t = 30, value_parser = at_least_one)]
    body_read_timeout_secs: usize,
    /// Seconds the requests in flight may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout_secs: usize,
}

/// `2MB`, `512kB`, `1MiB` or a plain number of bytes.
fn byte_size(value: &str) -> Result<usize, String> {
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

/// Load, bind and serve; `dtype` as /info reports it.
pub fn run(
    model: &str,
    load: LoadOptions,
    dtype: &str,
    args: ServeArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (task, why) = match args.task {
        CliServeTask::Auto => detect_task(model, &load.hub)?,
        chosen => (
            match chosen {
                CliServeTask::Embed | CliServeTask::Auto => ServeTask::Embed,
                CliServeTask::Classify => ServeTask::Classify,
                CliServeTask::Rerank => ServeTask::Rerank,
                CliServeTask::FillMask => ServeTask::FillMask,
                CliServeTask::Ner => ServeTask::Ner,
                CliServeTask::Qa => ServeTask::Qa,
                CliServeTask::Generate => ServeTask::Generate,
                CliServeTask::Chat => ServeTask::Chat,
            },
            "--task".to_string(),
        ),
    };
    tracing::info!(%task, reason = %why, "serving {model}");
    let pipeline = pipeline(task.task(), model, &load)?;
    if let (ServeTask::Chat, AnyPipeline::TextGeneration(generation)) = (task, &pipeline) {
        if generation.chat_template()?.is_none() {
            return Err(ferroformers::Error::InvalidInput(format!(
                "{model} has no chat template (no `chat_template` in its tokenizer_config.json): \
                 serve it with --task generate for /v1/completions"
            ))
            .into());
        }
    }
    let config = ServerConfig {
        model_dtype: dtype.to_string(),
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = Server::bind(pipeline, config).await?;
        writeln!(
            out,
            "ferroformers serve: listening on http://{}, model {model}, task {task} ({why})",
            server.local_addr()
        )?;
        out.flush()?;
        server.run(shutdown_signal()).await?;
        Ok::<(), CliError>(())
    })
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
