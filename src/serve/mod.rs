//! `ferroformers serve`: the pipelines over HTTP, with the routes of Hugging Face's
//! text-embeddings-inference (TEI 1.x), OpenAI's `/v1/embeddings` and the Inference API's
//! `POST /`, so that existing clients work unchanged.
//!
//! The encoder routes (`/embed`, `/v1/embeddings`, `/rerank`, `/predict`) tokenize on tokio's
//! blocking pool and queue their request; one batching thread runs the queued requests
//! together, one forward for as many as fit in `max_batch_tokens` (see `queue.rs`). `POST /`
//! runs each request on its own on the blocking pool. A semaphore caps the
//! requests in flight (429 past it), axum's body limit caps the payload (413), and an API
//! key, when set, guards every route but `/health` (401).
//!
//! Every request gets an id (`x-request-id`, the client's when sane) that its answer and its
//! log lines carry. A client that does not finish its request head within
//! `header_read_timeout`, or pauses its body longer than `body_read_timeout` (408), is
//! disconnected. On the shutdown signal the server stops accepting, answers 503 to requests
//! that come on open connections (and on `/health`), and lets those in flight finish.
//!
//! ```no_run
//! use ferroformers::pipelines::{pipeline, AnyPipeline};
//! use ferroformers::serve::{Server, ServerConfig};
//! # async fn run() -> std::io::Result<()> {
//! let model = "sentence-transformers/all-MiniLM-L6-v2";
//! let embeddings = pipeline("feature-extraction", model, &Default::default()).expect("loads");
//! let server = Server::bind(embeddings, ServerConfig::new(model)).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(ferroformers::serve::shutdown_signal()).await
//! # }
//! ```

mod chat_page;
mod completions;
mod connections;
mod error;
mod generation;
mod inference;
mod metrics;
mod openai;
mod queue;
mod request_log;
mod shutdown;
mod task;
mod tei;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::pipelines::AnyPipeline;
use crate::tokenizer::EncodeOptions;
use error::{Flavor, ServeError};
use shutdown::Draining;

pub use shutdown::shutdown_signal;
pub use task::{detect_task, ServeTask};

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model's name in `/info` and `/v1/models` (its Hub id or folder).
    pub model_id: String,
    /// The weight type `/info` reports (`float32`, `float16`, `bfloat16`, `int8`).
    pub model_dtype: String,
    /// Address to bind; loopback unless told otherwise.
    pub host: String,
    /// Port to bind; 0 picks a free one ([`Server::local_addr`] tells which).
    pub port: u16,
    /// Longest input in tokens; `None` is the model's (`model_max_length`, at most its
    /// position table). Longer inputs are refused with 413 unless the request sets `truncate`.
    pub max_input_length: Option<usize>,
    /// Largest request body in bytes (413 past it).
    pub payload_limit: usize,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>` (401 without).
    pub api_key: Option<String>,
    /// Origins allowed to call from a browser (CORS); none by default, `*` for any.
    pub cors_allow_origins: Vec<String>,
    /// Requests in flight at once; more get 429.
    pub max_concurrent_requests: usize,
    /// Padded tokens (the longest input × the inputs) per batched forward of the encoder
    /// routes; a request larger than this alone runs alone, in several forwards.
    pub max_batch_tokens: usize,
    /// Requests per batched forward of the encoder routes; `None`: as many as fit in
    /// `max_batch_tokens`, `Some(1)`: one request at a time. For text generation, the
    /// sequences decoded together (continuous batching; more wait in a queue), 32 when `None`.
    pub max_batch_requests: Option<usize>,
    /// Inputs one request may send at once; more get 413.
    pub max_client_batch_size: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// How long a connection may take to send a whole request head; idle keep-alive
    /// connections close after it too. Frees the connections of clients that stall.
    pub header_read_timeout: Duration,
    /// Longest pause while a request body arrives (408 past it), so that a client that stops
    /// sending does not hold a slot among `max_concurrent_requests`. Answers are not timed:
    /// a long generation stream runs as long as it needs.
    pub body_read_timeout: Duration,
}

impl ServerConfig {
    /// TEI's defaults (2 MB payload, 512 concurrent requests, 16384 batch tokens, 32 inputs
    /// per request) on 127.0.0.1:8080; 30 s to finish on shutdown, 10 s for a request head,
    /// 30 s of silence in a request body.
    pub fn new(model_id: impl Into<String>) -> Self {
        Self {
            model_id: model_id.into(),
            model_dtype: "float32".to_string(),
            host: "127.0.0.1".to_string(),
            port: 8080,
            max_input_length: None,
            payload_limit: 2_000_000,
            api_key: None,
            cors_allow_origins: Vec::new(),
            max_concurrent_requests: 512,
            max_batch_tokens: 16384,
            max_batch_requests: None,
            max_client_batch_size: 32,
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler shares.
struct Shared {
    pipeline: AnyPipeline,
    config: ServerConfig,
    /// `config.max_input_length`, or the model's.
    max_input_length: usize,
    in_flight: Arc<Semaphore>,
    metrics: metrics::Metrics,
    /// Where the encoder routes queue their forwards.
    queue: Arc<queue::Queue>,
    /// Sequences waiting for the decoding thread (text generation only).
    decode_queue: generation::DecodeQueue,
}

type AppState = Arc<Shared>;

impl Shared {
    /// TEI's 413 for more inputs than `max_client_batch_size`.
    fn check_client_batch(&self, inputs: usize) -> Result<(), ServeError> {
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
    fn count_tokens(&self, texts: &[&str], truncate: bool) -> Result<Vec<usize>, ServeError> {
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
fn too_long(length: usize, max: usize) -> ServeError {
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
async fn run_blocking<T: Send + 'static>(
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

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    router: Router,
    draining: Draining,
    timeouts: connections::Timeouts,
    batcher: queue::Batcher,
}

impl Server {
    /// Bind `config.host:config.port` and set up the routes for `pipeline`'s task.
    pub async fn bind(pipeline: AnyPipeline, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        let model_limit = {
            let positions = pipeline.config().max_position_embeddings();
            pipeline
                .tokenizer()
                .model_max_length()
                .map_or(positions, |length| length.min(positions))
        };
        let cors = cors_layer(&config.cors_allow_origins)?;
        let timeouts = connections::Timeouts {
            header_read: config.header_read_timeout,
            shutdown: config.shutdown_timeout,
        };
        // Only fails on a bad metric name or a name used twice: fixed in the code.
        let metrics = metrics::Metrics::new()
            .map_err(|e| std::io::Error::other(format!("cannot set up the metrics: {e}")))?;
        let batcher = queue::Batcher::start(
            pipeline.clone(),
            queue::Limits {
                max_batch_tokens: config.max_batch_tokens,
                max_batch_requests: config.max_batch_requests,
            },
            metrics.batch.clone(),
        )?;
        let shared = Arc::new(Shared {
            queue: batcher.queue(),
            max_input_length: config.max_input_length.unwrap_or(model_limit),
            in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            metrics,
            decode_queue: generation::DecodeQueue::default(),
            pipeline,
            config,
        });
        let draining = Draining::default();
        let router = router(shared, cors, draining.clone());
        Ok(Self {
            listener,
            router,
            draining,
            timeouts,
            batcher,
        })
    }

    /// The address the server listens on (with the port chosen when `port` was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serve until `shutdown` completes; then stop accepting, answer 503 to requests that
    /// come on open connections, and let in-flight requests finish, for at most the
    /// config's `shutdown_timeout`; the batching thread ends with them.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        connections::serve(
            self.listener,
            self.router,
            self.draining,
            self.timeouts,
            shutdown,
        )
        .await;
        // No connection is left, or the shutdown timeout passed: stop here what the routes
        // feed besides the connections (a batching thread); no request will reach it.
        self.batcher.stop().await;
        Ok(())
    }
}

fn cors_layer(origins: &[String]) -> std::io::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin).map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "`{origin}` is not a valid CORS origin: pass e.g. https://example.com"
                        ),
                    )
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([request_log::REQUEST_ID]),
    ))
}

fn router(shared: AppState, cors: Option<CorsLayer>, draining: Draining) -> Router {
    let router = Router::new()
        .route("/embed", post(tei::embed))
        .route("/rerank", post(tei::rerank))
        .route("/predict", post(tei::predict))
        .route("/tokenize", post(tei::tokenize))
        .route("/decode", post(tei::decode))
        .route("/info", get(tei::info))
        .route("/v1/models", get(openai::models))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/", post(inference::run))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            take_slot,
        ))
        // Scraped even when the server is full; needs the key as every route but /health.
        .route("/metrics", get(metrics::render))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            check_key,
        ))
        // Health checks need no key and are never turned away.
        .route("/health", get(tei::health))
        // Nor does the chat page: a browser cannot send the key when it opens a page, and the
        // page holds nothing but asks for the key to send with its requests. `POST /` on the
        // same path keeps the layers above.
        .route("/", get(chat_page::page))
        // Inside the metrics, which count its 503s; /health included, so that load
        // balancers take a stopping server out.
        .layer(middleware::from_fn_with_state(
            draining,
            shutdown::refuse_when_draining,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            metrics::record,
        ))
        // axum's limit rather than tower-http's: the Json extractor then reports it (413) in
        // the route's own error body.
        .layer(DefaultBodyLimit::max(shared.config.payload_limit))
        .layer(RequestBodyTimeoutLayer::new(
            shared.config.body_read_timeout,
        ))
        .with_state(shared);
    let router = match cors {
        // Outside the routes, so that preflight requests (which carry no key) get their answer.
        Some(cors) => router.layer(cors),
        None => router,
    };
    request_log::with_request_ids(router)
}

/// 401 unless the request brings the API key (when one is set).
async fn check_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same_secret(given.as_bytes(), key.as_bytes())) {
            return ServeError::Unauthorized
                .into_response_as(Flavor::of_path(request.uri().path()));
        }
    }
    next.run(request).await
}

/// A slot among `max_concurrent_requests`, held until the response is made (a stream's:
/// until its last event is sent or its client leaves); 429 when none is free.
async fn take_slot(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Ok(slot) = Arc::clone(&state.in_flight).try_acquire_owned() else {
        return ServeError::Overloaded.into_response_as(Flavor::of_path(request.uri().path()));
    };
    let response = next.run(request).await;
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        return response;
    }
    // The body owns the slot: dropped with it, when it ends or its connection closes.
    response.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _slot = &slot;
            chunk
        }))
    })
}

/// Compare without stopping at the first difference, so that response times do not tell how
/// much of a guessed key was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

async fn not_found(uri: Uri) -> Response {
    ServeError::NotFound(format!(
        "no route {}: see /info for what this server serves",
        uri.path()
    ))
    .into_response_as(Flavor::of_path(uri.path()))
}
