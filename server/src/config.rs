//! How the server listens and what it accepts.

use std::time::Duration;

use ferroformers::WeightType;

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model's name in `/info` and `/v1/models` (its Hub id or folder).
    pub model_id: String,
    /// How the model's weights are stored, which `/info` reports by its
    /// [name](WeightType::name) (`float32`, `float16`, `bfloat16`, `int8`); set it to the
    /// [`LoadOptions::weight_type`](ferroformers::LoadOptions::weight_type) the model was
    /// loaded with.
    pub model_dtype: WeightType,
    /// Address to bind; loopback unless told otherwise.
    pub host: String,
    /// Port to bind; 0 picks a free one ([`Server::local_addr`](crate::Server::local_addr)
    /// tells which).
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
    /// Requests per batched forward of the encoder routes (within `max_batch_tokens`); `None`:
    /// 8 (see `batching::queue::DEFAULT_MAX_REQUESTS`), `Some(1)`: one request at a time. For
    /// text generation, the sequences decoded together (continuous batching; more wait in a
    /// queue), 32 when `None`.
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
            model_dtype: WeightType::F32,
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
