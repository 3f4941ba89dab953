//! The `ferroformers` command: every pipeline from the shell, with JSON Lines output.
//!
//!     ferroformers classify -m distilbert-base-uncased-finetuned-sst-2-english "I love it"
//!     echo "Paris is the [MASK] of France." | ferroformers fill-mask -m bert-base-uncased --json
//!     ferroformers push ./my-model my-org/my-model
//!
//! Usage errors print clap's message (what is wrong, the usage line, allowed values) and exit
//! with 2; runtime errors are one line on stderr and exit with 1.
//! Log lines go to stderr: warnings by default, `RUST_LOG` (e.g.
//! `RUST_LOG=ferroformers=debug`) to see more, `--quiet` for errors only.

mod args;
mod cli;
mod commands;
mod error;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use error::CliError;

fn main() -> ExitCode {
    ferroformers::runtime::allocator::keep_freed_memory();
    let args = match commands::Cli::try_parse() {
        Ok(args) => args,
        Err(error) => {
            // --help and --version are not errors; print them whole.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if args.trains() {
        // Training only: a training step gained 3–10% (MiniLM, 2 cores), while inference lost
        // 1–2% (BERT-base) and more when decoding, where candle's pool helps.
        ferroformers::runtime::threads::run_candle_ops_inline();
    }
    init_logging(args.quiet());
    if let Some(threads) = args.threads() {
        if let Err(error) = ferroformers::set_num_threads(threads) {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match commands::run(args, &mut out).and_then(|()| out.flush().map_err(CliError::from)) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not an error.
        Err(CliError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(CliError::Usage(message)) => {
            eprintln!("error: {message}\n\nFor more information, try '--help'.");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {}", error.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Log to stderr: `RUST_LOG` when set, else warnings (errors only with `--quiet`).
fn init_logging(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "error" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
