//! The generation worker: what the OpenAI completion routes submit a prompt to, and get its
//! tokens back from, one [`StreamToken`] at a time over a channel.
//!
//! Each submitted sequence decodes on tokio's blocking pool, one forward pass per token. A
//! client that leaves drops its receiver: the next send fails and the sequence stops there,
//! within one decoding step.

use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::mpsc;

use super::error::ServeError;
use super::Shared;
use crate::generation::{GenerationConfig, StreamToken};
use crate::pipelines::{AnyPipeline, TextGenerationOptions, TextGenerationPipeline};

/// Tokens a stream may run ahead of a slow client before decoding waits for it.
const CHANNEL_TOKENS: usize = 16;

/// A prompt and the settings to continue it with.
#[derive(Debug, Clone)]
pub(crate) struct GenerationRequest {
    /// The text the model continues (a chat already rendered by its template).
    pub prompt: String,
    /// Sampling, length and stop settings, validated.
    pub config: GenerationConfig,
}

/// The tokens of one submitted sequence, in order; the last one carries its finish reason.
/// Dropping it cancels the sequence.
pub(crate) type TokenReceiver = mpsc::Receiver<Result<StreamToken, ServeError>>;

/// The text-generation pipeline of `shared`, or the error a non-generation server answers.
pub(crate) fn generation_pipeline(shared: &Shared) -> Result<&TextGenerationPipeline, ServeError> {
    match &shared.pipeline {
        AnyPipeline::TextGeneration(pipeline) => Ok(pipeline),
        other => Err(ServeError::WrongTask(format!(
            "this server runs a {} model, which does not generate text: completions need a \
             text-generation model (serve one with --task generate)",
            other.task()
        ))),
    }
}

/// Start generating `request` and return its tokens as they come.
pub(crate) fn submit(
    shared: &Arc<Shared>,
    request: GenerationRequest,
) -> Result<TokenReceiver, ServeError> {
    generation_pipeline(shared)?;
    let (sender, receiver) = mpsc::channel(CHANNEL_TOKENS);
    let shared = Arc::clone(shared);
    // The request's span goes along, so that what decoding logs carries the request's id.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _request = span.enter();
        let active = ActiveSequence::start(&shared.metrics.active_sequences);
        let result = generation_pipeline(&shared).and_then(|pipeline| {
            let options = TextGenerationOptions::default().with_generation(request.config);
            let stream = pipeline.stream(&request.prompt, &options)?;
            for token in stream {
                let failed = token.is_err();
                if sender
                    .blocking_send(token.map_err(ServeError::from))
                    .is_err()
                    || failed
                {
                    break;
                }
            }
            Ok(())
        });
        drop(active);
        if let Err(error) = result {
            // The client may be gone already; then nobody needs the error.
            let _ = sender.blocking_send(Err(error));
        }
    });
    Ok(receiver)
}

/// Counts a sequence in the active-sequences gauge while it decodes.
struct ActiveSequence(IntGauge);

impl ActiveSequence {
    fn start(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ActiveSequence {
    fn drop(&mut self) {
        self.0.dec();
    }
}
