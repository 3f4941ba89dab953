//! A request id on every log line: each request gets one (the client's `x-request-id` when it
//! sends a sane one, else a new UUID), the response carries it back, and everything logged
//! while the request is served sits in a `request` span with the id, the method and the path,
//! ending with one info line with the status and the latency (as TEI logs).

use axum::extract::Request;
use axum::http::HeaderName;
use axum::middleware;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, MakeSpan, TraceLayer};
use tower_http::LatencyUnit;
use tracing::{Level, Span};

/// The header that carries the id both ways.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-given id kept: ids go into every log line of the request.
const MAX_CLIENT_ID_LENGTH: usize = 128;

/// Drop a client's `x-request-id` that is empty, too long or has other characters than
/// letters, digits and `-_.:`, so that a made-up one takes its place: ids land in log lines,
/// where a client must not be able to forge lines or fill the disk.
async fn drop_odd_client_id(mut request: Request, next: Next) -> Response {
    let sane = request.headers().get(&REQUEST_ID).map(|id| {
        let id = id.as_bytes();
        !id.is_empty()
            && id.len() <= MAX_CLIENT_ID_LENGTH
            && id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    });
    if sane == Some(false) {
        request.headers_mut().remove(&REQUEST_ID);
    }
    next.run(request).await
}

/// Opens the `request` span (set after the id is, so it always finds one).
#[derive(Debug, Clone, Copy)]
struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        let id = request
            .extensions()
            .get::<RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            .unwrap_or("none");
        // At ERROR level so that the span is on whenever any log line is: a span's level
        // only decides when it is recorded, and under the default filter (warnings) a
        // warning about a request must carry its id too.
        tracing::error_span!(
            "request",
            request_id = %id,
            method = %request.method(),
            path = %request.uri().path(),
        )
    }
}

/// Give every request an id and log it under that id: outermost, so that every answer
/// (404s, 401s, CORS preflights, 503s while shutting down) carries and logs one.
pub(crate) fn with_request_ids(router: Router) -> Router {
    router
        // Innermost: the span sees the id set below, and its closing line is logged once the
        // answer is made: info for every answer, a warning for 5xx (a server that failed or is
        // shutting down) and for a response body that broke off.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(RequestSpan)
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                )
                .on_failure(
                    DefaultOnFailure::new()
                        .level(Level::WARN)
                        .latency_unit(LatencyUnit::Millis),
                ),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(drop_odd_client_id))
}
