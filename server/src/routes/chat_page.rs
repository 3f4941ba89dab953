//! `GET /`: the chat page of a text-generation server, one HTML file (`chat.html`, inline style
//! and script, no external assets) that talks to `POST /v1/chat/completions` with
//! `stream: true`.
//!
//! The page is served without the API key (a browser cannot send `Authorization` when it opens
//! a page; the page holds no data and asks for the key to send with its requests), under a
//! Content-Security-Policy that lets it run only its own inline style and script, marked with
//! a nonce fresh for each response, and talk only to this server.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;

use crate::http::error::{Flavor, ServeError};
use crate::state::AppState;
use ferroformers::pipelines::AnyPipeline;

/// The page, with [`NONCE_SLOT`] in its `<style>` and `<script>` tags.
const PAGE: &str = include_str!("chat.html");

/// Where the page takes each response's nonce.
const NONCE_SLOT: &str = "CSP_NONCE";

/// The chat page on a text-generation server; 404 (TEI's body) on the others, as before there
/// was a page.
pub(crate) async fn page(State(state): State<AppState>) -> Response {
    if !matches!(state.pipeline, AnyPipeline::TextGeneration(_)) {
        return ServeError::NotFound(format!(
            "GET / is the chat page of text-generation models, and this server runs a {} \
             model: see /info for what it serves",
            state.pipeline.task()
        ))
        .into_response_as(Flavor::Tei);
    }
    // 128 bits from the thread's CSPRNG (ChaCha, seeded by the OS), as CSP asks of a nonce.
    let nonce = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    // Base64 is visible ASCII, so this does not fail; if it did, no page goes out without
    // its policy.
    let Ok(policy) = HeaderValue::from_str(&policy) else {
        return ServeError::Internal("cannot write the chat page's security policy".to_string())
            .into_response_as(Flavor::Tei);
    };
    let mut response = Html(PAGE.replace(NONCE_SLOT, &nonce)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    // A nonce used twice is no nonce: no cache keeps the page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
