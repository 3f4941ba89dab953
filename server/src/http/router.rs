//! The routes, and the layers around them: API key, slots, draining, metrics, body limits,
//! CORS and request ids.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::http::error::{Flavor, ServeError};
use crate::http::shutdown::{self, Draining};
use crate::http::{metrics, request_log};
use crate::routes::openai::completions;
use crate::routes::{chat_page, inference, openai, tei};
use crate::state::AppState;

pub(crate) fn cors_layer(origins: &[String]) -> std::io::Result<Option<CorsLayer>> {
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

pub(crate) fn router(shared: AppState, cors: Option<CorsLayer>, draining: Draining) -> Router {
    let router = Router::new()
        .route("/embed", post(tei::embed))
        .route("/embed_all", post(tei::embed_all))
        .route("/embed_sparse", post(tei::embed_sparse))
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
