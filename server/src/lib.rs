//! The HTTP server of `ferroformers serve`, as a library: the pipelines over HTTP, with the routes of Hugging Face's
//! text-embeddings-inference (TEI 1.x), OpenAI's `/v1/embeddings` and the Inference API's
//! `POST /`, so that existing clients work unchanged.
//!
//! The encoder routes (`/embed`, `/embed_all`, `/embed_sparse`, `/v1/embeddings`, `/rerank`, `/predict`) tokenize on tokio's
//! blocking pool and queue their request; one batching thread runs the queued requests
//! together, one forward for as many as fit in `max_batch_tokens` (see `batching::queue`). `POST /`
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
//! use ferroformers_server::{Server, ServerConfig};
//! # async fn run() -> std::io::Result<()> {
//! let model = "sentence-transformers/all-MiniLM-L6-v2";
//! let embeddings = pipeline("feature-extraction", model, &Default::default()).expect("loads");
//! let server = Server::bind(embeddings, ServerConfig::new(model)).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(ferroformers_server::shutdown_signal()).await
//! # }
//! ```

mod batching;
mod config;
mod http;
mod routes;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use ferroformers::pipelines::AnyPipeline;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use batching::generation::DecodeQueue;
use batching::queue::{Batcher, Limits, DEFAULT_MAX_REQUESTS};
use http::connections::{self, Timeouts};
use http::metrics::Metrics;
use http::router::{cors_layer, router};
use http::shutdown::Draining;
use state::Shared;

pub use config::ServerConfig;
pub use http::shutdown::shutdown_signal;

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    router: Router,
    draining: Draining,
    timeouts: Timeouts,
    batcher: Batcher,
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
        let timeouts = Timeouts {
            header_read: config.header_read_timeout,
            shutdown: config.shutdown_timeout,
        };
        // Only fails on a bad metric name or a name used twice: fixed in the code.
        let metrics = Metrics::new()
            .map_err(|e| std::io::Error::other(format!("cannot set up the metrics: {e}")))?;
        let batcher = Batcher::start(
            pipeline.clone(),
            Limits {
                max_batch_tokens: config.max_batch_tokens,
                max_batch_requests: config.max_batch_requests.unwrap_or(DEFAULT_MAX_REQUESTS),
            },
            metrics.batch.clone(),
        )?;
        let shared = Arc::new(Shared {
            queue: batcher.queue(),
            max_input_length: config.max_input_length.unwrap_or(model_limit),
            in_flight: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            metrics,
            decode_queue: DecodeQueue::default(),
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
