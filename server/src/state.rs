//! What every handler shares, and the helpers they all call.

use std::sync::Arc;
use std::time::Instant;

use ferroformers::pipelines::{AnyPipeline, Truncation};
use ferroformers::tokenizer::EncodeOptions;
use tokio::sync::Semaphore;

use crate::batching::generation::DecodeQueue;
use crate::batching::queue::Queue;
use crate::config::ServerConfig;
use crate::http::error::ServeError;
use crate::http::metrics::Metrics;

/// What every handler shares.
pub(crate) struct Shared {
    pub(crate) pipeline: AnyPipeline,
    pub(crate) config: ServerConfig,
    /// `config.max_input_length`, or the model's.
    pub(crate) max_input_length: usize,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) metrics: Metrics,
    /// Where the encoder routes queue their forwards.
    pub(crate) queue: Arc<Queue>,
    /// Sequences waiting for the decoding thread (text generation only).
    pub(crate) decode_queue: DecodeQueue,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    /// The pipelines' truncation for a request's `truncate`: at `--max-input-length` when set,
    /// else at the model's own limit.
    pub(crate) fn truncation(&self, enabled: bool) -> Truncation {
        Truncation {
            enabled,
            max_length: self.config.max_input_length,
        }
    }

    /// TEI's 413 for more inputs than `max_client_batch_size`.
    pub(crate) fn check_client_batch(&self, inputs: usize) -> Result<(), ServeError> {
        let max = self.config.max_client_batch_size;
        if inputs > max {
            return Err(ServeError::Validation(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "batch size {inputs} > maximum allowed batch size {max}: send at most {max} \
                     inputs per request"
                ),
            ));
        }
        Ok(())
    }

    /// Token counts of `texts` (special tokens included, the model's prompt not), capped at
    /// `max_input_length` when `truncate` is on; else TEI's 413 for the first text over it.
    pub(crate) fn count_tokens(
        &self,
        texts: &[&str],
        truncate: bool,
    ) -> Result<Vec<usize>, ServeError> {
        let tokenizer = self.pipeline.tokenizer();
        let mut counts = Vec::with_capacity(texts.len());
        for text in texts {
            let length = tokenizer.encode(*text, &EncodeOptions::default())?.len();
            if !truncate && length > self.max_input_length {
                return Err(too_long(length, self.max_input_length));
            }
            counts.push(length.min(self.max_input_length));
        }
        Ok(counts)
    }
}

/// TEI's message for an input over the limit.
pub(crate) fn too_long(length: usize, max: usize) -> ServeError {
    ServeError::Validation(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Input validation error: `inputs` must have less than {max} tokens. Given: {length}. \
             Shorten it or set `truncate: true`"
        ),
    )
}

/// Run `job` on tokio's blocking pool: the pipeline takes the CPU for a while and must not
/// stall the tasks that serve other connections.
pub(crate) async fn run_blocking<T: Send + 'static>(
    state: &AppState,
    job: impl FnOnce(&Shared) -> Result<T, ServeError> + Send + 'static,
) -> Result<T, ServeError> {
    let state = Arc::clone(state);
    // The request's span goes along, so that what the pipeline logs carries its id.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let started = Instant::now();
            let result = job(&state);
            // Beside the request's latency: how much of it the pipeline took.
            tracing::debug!(elapsed = ?started.elapsed(), "pipeline done");
            result
        })
    })
    .await
    .map_err(|e| ServeError::Internal(format!("the inference task failed: {e}")))?
}
