//! `GET /metrics` in Prometheus' text format: requests by route and status, their
//! durations, and the requests in flight.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::batching::queue::BatchMetrics;
use crate::state::AppState;

/// The routes counted under their own name; any other path counts as `unmatched`, so that
/// clients probing random paths cannot grow the label set without bound.
const ROUTES: [&str; 15] = [
    "/",
    "/embed",
    "/embed_all",
    "/embed_sparse",
    "/rerank",
    "/predict",
    "/tokenize",
    "/decode",
    "/info",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/chat/completions",
];

/// One server's metrics, in a registry of its own.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    /// Sequences being generated now; drops as soon as a stream ends or its client leaves.
    pub(crate) active_sequences: IntGauge,
    /// What the batching thread of the encoder routes reports.
    pub(crate) batch: BatchMetrics,
}

impl Metrics {
    pub(crate) fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ferroformers_requests_total",
                "HTTP requests answered, by route and status code",
            ),
            &["route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ferroformers_request_duration_seconds",
                "Time from a request's headers to its response, by route",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["route"],
        )?;
        let in_flight = IntGauge::new(
            "ferroformers_requests_in_flight",
            "Requests being answered now (this one included)",
        )?;
        let active_sequences = IntGauge::new(
            "ferroformers_active_sequences",
            "Sequences being generated now",
        )?;
        let batch = BatchMetrics {
            batch_requests: Histogram::with_opts(
                HistogramOpts::new(
                    "ferroformers_batch_size",
                    "Requests per batched forward of the encoder routes",
                )
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 10)?),
            )?,
            batch_tokens: Histogram::with_opts(
                HistogramOpts::new(
                    "ferroformers_batch_tokens",
                    "Padded tokens (longest input × inputs) per batch of the encoder routes",
                )
                .buckets(prometheus::exponential_buckets(16.0, 2.0, 12)?),
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "ferroformers_batch_inference_seconds",
                    "Time a batch of the encoder routes takes in the model, its forwards together \
                     (TEI's te_batch_inference_duration)",
                )
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            )?,
            forwards: IntCounter::new(
                "ferroformers_forward_passes_total",
                "Forward passes the encoder routes' batching thread ran",
            )?,
            abandoned: IntCounter::new(
                "ferroformers_queue_abandoned_total",
                "Queued requests dropped unrun because their client left",
            )?,
        };
        registry.register(Box::new(batch.batch_requests.clone()))?;
        registry.register(Box::new(batch.batch_tokens.clone()))?;
        registry.register(Box::new(batch.batch_seconds.clone()))?;
        registry.register(Box::new(batch.forwards.clone()))?;
        registry.register(Box::new(batch.abandoned.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(active_sequences.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            in_flight,
            active_sequences,
            batch,
        })
    }
}

/// Lowers the in-flight gauge when the request ends, also when its client leaves and the
/// request's future is dropped half-way.
struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Count and time every request, including those turned away (401, 413, 429).
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let route = ROUTES
        .iter()
        .find(|route| **route == path)
        .copied()
        .unwrap_or("unmatched");
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    let _in_flight = InFlight(metrics.in_flight.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    response
}

pub(crate) async fn render(State(state): State<AppState>) -> Response {
    let encoder = TextEncoder::new();
    let mut text = Vec::new();
    if let Err(error) = encoder.encode(&state.metrics.registry.gather(), &mut text) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the metrics: {error}"),
        )
            .into_response();
    }
    let mut response = text.into_response();
    if let Ok(content_type) = HeaderValue::from_str(encoder.format_type()) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}
