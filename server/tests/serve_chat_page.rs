//! `GET /`: the chat page on a text-generation server (the GPT-2 fixture), its security
//! headers and what it may load, the API key it does not need, and the 404 other servers keep.
//! The page at work in a browser is tests/browser/ (scripts/browser_test.sh).

mod common;

use common::server::{answer, client, config, get, load, send_json, Answer, TestServer};
use ferroformers::Task;
use ferroformers_server::ServerConfig;
use serde_json::json;

fn generation_server(config: ServerConfig) -> TestServer {
    TestServer::start(load(Task::TextGeneration, "gpt2/lm-head"), config)
}

/// The nonce of `'nonce-…'` in `directive` of the page's policy.
fn nonce_of<'a>(policy: &'a str, directive: &str) -> &'a str {
    let sources = policy
        .split(';')
        .map(str::trim)
        .find_map(|part| part.strip_prefix(directive))
        .unwrap_or_else(|| panic!("{directive} in {policy}"));
    sources
        .split_whitespace()
        .find_map(|source| source.strip_prefix("'nonce-")?.strip_suffix('\''))
        .unwrap_or_else(|| panic!("a nonce in {directive} of {policy}"))
}

fn policy_of(answer: &Answer) -> &str {
    answer
        .header("content-security-policy")
        .expect("a Content-Security-Policy header")
}

#[test]
fn a_generation_server_serves_the_chat_page_under_a_strict_policy() {
    let server = generation_server(config());
    let client = client();
    let page = get(&client, &server.url("/"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));

    // The form the browser test drives, and the route the page talks to.
    for part in [
        r#"<form id="composer""#,
        r#"<textarea id="prompt""#,
        r#"<button type="submit" id="send""#,
        r#"<button type="button" id="stop""#,
        r#"id="temperature""#,
        r#"id="max-tokens""#,
        r#"aria-live="polite""#,
        "v1/chat/completions",
    ] {
        assert!(page.body.contains(part), "the page has {part}");
    }

    // Only its own style and script run, by a nonce the policy names; it loads nothing from
    // elsewhere and talks only to this server.
    let policy = policy_of(&page);
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(
        !policy.contains("unsafe"),
        "no unsafe-inline or unsafe-eval: {policy}"
    );
    let nonce = nonce_of(policy, "script-src");
    assert_eq!(nonce_of(policy, "style-src"), nonce);
    assert!(nonce.len() >= 22, "a nonce of 128 bits or more: {nonce}");
    assert_eq!(
        page.body
            .matches(&format!(r#"<script nonce="{nonce}">"#))
            .count(),
        1
    );
    assert_eq!(
        page.body
            .matches(&format!(r#"<style nonce="{nonce}">"#))
            .count(),
        1
    );
    assert_eq!(page.body.matches("<script").count(), 1, "one script");
    assert_eq!(page.body.matches("<style").count(), 1, "one style sheet");
    assert!(
        !page.body.contains("CSP_NONCE"),
        "every nonce slot is filled"
    );
    for external in ["http://", "https://", "//cdn", "@import", "src="] {
        assert!(
            !page.body.contains(external),
            "nothing loaded from elsewhere: {external}"
        );
    }
    // Model output is written as text, never parsed as HTML.
    assert!(!page.body.contains("innerHTML"));

    // A fresh nonce for every response.
    let again = get(&client, &server.url("/"));
    assert_eq!(again.status, 200);
    assert_ne!(nonce_of(policy_of(&again), "script-src"), nonce);
}

#[test]
fn the_page_needs_no_api_key_but_what_it_calls_does() {
    let server = generation_server(ServerConfig {
        api_key: Some("secret".to_string()),
        ..config()
    });
    let client = client();
    let page = get(&client, &server.url("/"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(r#"id="api-key""#),
        "the page asks for the key"
    );
    // The model list the page reads, and Inference API's POST / on the same path, still do.
    assert_eq!(get(&client, &server.url("/v1/models")).status, 401);
    let post = send_json(client.post(&server.url("/")), &json!({ "inputs": "Hello" }));
    assert_eq!(post.status, 401, "{}", post.body);
    let keyed = answer(
        client
            .get(&server.url("/v1/models"))
            .set("authorization", "Bearer secret")
            .call(),
    );
    assert_eq!(keyed.status, 200, "{}", keyed.body);
}

#[test]
fn other_servers_answer_get_root_with_a_404_that_says_why() {
    let server = TestServer::start(
        load(Task::Embeddings, "bert/sentence-transformers"),
        config(),
    );
    let answer = get(&client(), &server.url("/"));
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert!(answer.header("content-security-policy").is_none());
    let body = answer.json();
    assert_eq!(body["error_type"], "validation");
    let message = body["error"].as_str().expect("TEI's error message");
    assert!(
        message.contains("chat page") && message.contains("/info"),
        "{message}"
    );
}
