//! Batching across requests on the encoder routes: many clients at once (threads with ureq),
//! each answer against the library pipeline called alone on that request's input (f32,
//! tolerance 1e-4 on every vector and score, NaN and inf fail), and the batching itself read
//! from `/metrics` (`ferroformers_batch_size`, `ferroformers_batch_tokens`,
//! `ferroformers_batch_inference_seconds`, `ferroformers_forward_passes_total`).

mod common;

use std::sync::{Arc, Barrier};

use common::server::{client, config, load, post, TestServer};
use common::{assert_close_slices, assert_json_close, assert_same_len};
use ferroformers::pipelines::{
    CrossEncoderActivation, EmbeddingsOptions, LabelScore, Pipeline, Prompt, RerankOptions,
    ScoreFunction, SparseEmbeddingsOptions, TextClassificationOptions,
};
use ferroformers::{EncodeOptions, Task};
use ferroformers_server::ServerConfig;
use serde_json::{json, Value};

const TOLERANCE: f32 = 1e-4;

/// Concurrent clients in each test: more than the fixture's forward can keep up with one by one.
const CLIENTS: usize = 24;

/// A different text for every client, of 5 to 15 tokens (so that batches pad; the fixtures
/// cut at 32).
fn text(client: usize, part: usize) -> String {
    let words = [
        "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "on", "while", "rust",
    ];
    let mut text = format!("{client} {part}");
    for word in words
        .iter()
        .cycle()
        .skip(client + part)
        .take(1 + (client * 3 + part) % 9)
    {
        text.push(' ');
        text.push_str(word);
    }
    text
}

/// Run `request(client)` from `CLIENTS` threads released together; their answers in order.
fn concurrently<T: Send + 'static>(request: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let request = Arc::new(request);
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let request = Arc::clone(&request);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                request(i)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| thread.join().expect("a client thread"))
        .collect()
}

/// The value of `series` (a sample line's name and labels) in Prometheus text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} in the metrics:\n{metrics}"))
}

fn metrics(server: &TestServer) -> String {
    common::server::get(&client(), &server.url("/metrics")).body
}

/// Batches run, requests they held, and forward passes, as `/metrics` counts them.
struct Batching {
    batches: f64,
    requests: f64,
    forwards: f64,
}

/// The counts of `/metrics`; every batch's time in the model is timed once.
fn batching(server: &TestServer) -> Batching {
    let text = metrics(server);
    let batches = sample(&text, "ferroformers_batch_size_count");
    let timed = sample(&text, "ferroformers_batch_inference_seconds_count");
    assert_eq!(timed, batches, "one time in the model per batch");
    assert!(
        batches == 0.0 || sample(&text, "ferroformers_batch_inference_seconds_sum") > 0.0,
        "batches took time:\n{text}"
    );
    Batching {
        batches,
        requests: sample(&text, "ferroformers_batch_size_sum"),
        forwards: sample(&text, "ferroformers_forward_passes_total"),
    }
}

fn embeddings_of(body: &Value) -> Vec<Vec<f32>> {
    body.as_array()
        .expect("a list of embeddings")
        .iter()
        .map(common::server::floats)
        .collect()
}

#[test]
fn concurrent_embed_and_openai_requests_each_get_what_the_pipeline_gives_alone() {
    // No Normalize module: `normalize` changes the answer.
    let pipeline = load(Task::Embeddings, "bert/base");
    let server = Arc::new(TestServer::start(pipeline.clone(), config()));
    let url = server.url("");
    // Odd clients ask /v1/embeddings, even ones /embed with normalize on or off (a setting of
    // the postprocess: such requests share forwards), one to three texts each.
    let answers = concurrently(move |i| {
        let texts: Vec<String> = (0..1 + i % 3).map(|part| text(i, part)).collect();
        let (route, body) = match i % 4 {
            1 | 3 => (
                "/v1/embeddings",
                json!({ "input": texts, "model": "fixture" }),
            ),
            0 => ("/embed", json!({ "inputs": texts, "normalize": true })),
            _ => ("/embed", json!({ "inputs": texts, "normalize": false })),
        };
        let (status, body) = post(&client(), &format!("{url}{route}"), &body);
        (texts, status, body)
    });
    let embeddings = pipeline.as_embeddings().expect("an embeddings pipeline");
    for (i, (texts, status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}: {body}");
        let normalize = i % 4 != 2;
        let options = EmbeddingsOptions::default().with_normalize_embeddings(normalize);
        let expected = embeddings.run(&texts, &options).expect("the pipeline runs");
        let actual = match i % 4 {
            1 | 3 => {
                let tokens: usize = texts
                    .iter()
                    .map(|t| {
                        let encoding = embeddings
                            .tokenizer()
                            .encode(t.as_str(), &EncodeOptions::default());
                        encoding.expect("encodes").len()
                    })
                    .sum();
                assert_eq!(body["usage"]["prompt_tokens"], tokens, "client {i}");
                body["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .map(|item| common::server::floats(&item["embedding"]))
                    .collect()
            }
            _ => embeddings_of(&body),
        };
        assert_same_len(&actual, &expected, "embeddings");
        for (row, (actual, expected)) in actual.iter().zip(&expected).enumerate() {
            assert_close_slices(
                actual,
                expected,
                TOLERANCE,
                &format!("client {i} text {row}"),
            );
        }
    }
    // normalize: false must differ from true here (else the comparison proves nothing about
    // the postprocess being per request): the model's embeddings are not unit length.
    let raw = embeddings
        .run_one(text(2, 0), &EmbeddingsOptions::default())
        .expect("the pipeline runs");
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "norm {norm}");
    let counted = batching(&server);
    assert_eq!(counted.requests, CLIENTS as f64, "every request ran once");
}

#[test]
fn concurrent_requests_with_different_prompts_each_get_their_own() {
    // prompts {query: "query: ", passage: "passage: "}, default "query"; the pooling includes
    // the prompt, so both kinds share forwards.
    let pipeline = load(
        Task::Embeddings,
        "xlm-roberta/sentence-transformers-prompts",
    );
    let server = TestServer::start(pipeline.clone(), config());
    let url = server.url("/embed");
    let prompt = |i: usize| (i % 2 == 1).then_some("passage");
    // The fixture's tokenizer spends a token per letter or two, and cuts at 32: short texts.
    let short = |i: usize| format!("{i} fox");
    let answers = concurrently(move |i| {
        let body = json!({ "inputs": short(i), "prompt_name": prompt(i) });
        post(&client(), &url, &body)
    });
    let embeddings = pipeline.as_embeddings().expect("an embeddings pipeline");
    for (i, (status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}: {body}");
        let options = EmbeddingsOptions::default()
            .with_normalize_embeddings(true)
            .with_prompt(prompt(i).map_or(Prompt::ModelDefault, |name| Prompt::Named(name.into())));
        let expected = embeddings.run_one(short(i), &options).expect("runs");
        assert_close_slices(
            &embeddings_of(&body)[0],
            &expected,
            TOLERANCE,
            &format!("client {i}"),
        );
    }
    assert_eq!(batching(&server).requests, CLIENTS as f64);
}

#[test]
fn concurrent_embed_sparse_requests_each_get_what_the_pipeline_gives_alone() {
    let pipeline = load(Task::SparseEmbeddings, "splade/sparse-encoder");
    let server = TestServer::start(pipeline.clone(), config());
    let url = server.url("/embed_sparse");
    let answers = concurrently(move |i| {
        let texts: Vec<String> = (0..1 + i % 3).map(|part| text(i, part)).collect();
        let (status, body) = post(&client(), &url, &json!({ "inputs": texts }));
        (texts, status, body)
    });
    let splade = pipeline.as_sparse_embeddings().expect("a SPLADE pipeline");
    for (i, (texts, status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}: {body}");
        let expected = splade
            .run(&texts, &SparseEmbeddingsOptions::default())
            .expect("SPLADE vectors");
        let rows = body.as_array().expect("a list of sparse vectors");
        assert_same_len(rows, &expected, "vectors");
        // Compared whole: a batch moves the logits by ~1e-7, which may turn an entry that is
        // nearly zero into zero or not.
        let width = splade.vocab_size();
        for (row, entries) in rows.iter().zip(&expected) {
            let mut ours = vec![0f32; width];
            for entry in row.as_array().expect("a list of entries") {
                let index = entry["index"].as_u64().expect("an index") as usize;
                ours[index] = entry["value"].as_f64().expect("a value") as f32;
            }
            let mut alone = vec![0f32; width];
            for entry in entries {
                alone[entry.index] = entry.value;
            }
            assert_close_slices(&ours, &alone, TOLERANCE, &format!("client {i}"));
        }
    }
    assert_eq!(batching(&server).requests, CLIENTS as f64);
}

#[test]
fn concurrent_rerank_requests_each_get_what_the_pipeline_gives_alone() {
    let pipeline = load(Task::Rerank, "bert/cross-encoder");
    let server = TestServer::start(pipeline.clone(), config());
    let url = server.url("/rerank");
    let answers = concurrently(move |i| {
        let query = text(i, 9);
        let texts: Vec<String> = (0..2 + i % 3).map(|part| text(i, part)).collect();
        let raw_scores = i % 2 == 1;
        let body = json!({ "query": query, "texts": texts, "raw_scores": raw_scores, "return_text": i % 3 == 0 });
        let (status, body) = post(&client(), &url, &body);
        (query, texts, status, body)
    });
    let rerank = pipeline.as_rerank().expect("a rerank pipeline");
    for (i, (query, texts, status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}: {body}");
        let mut options = RerankOptions::default().with_return_documents(i % 3 == 0);
        if i % 2 == 1 {
            options = options.with_activation(CrossEncoderActivation::Identity);
        }
        let expected = rerank.rank(&query, &texts, &options).expect("ranks");
        let ranks = body.as_array().expect("a list of ranks");
        assert_same_len(ranks, &expected, "ranks");
        for (rank, document) in ranks.iter().zip(&expected) {
            assert_eq!(rank["index"], document.corpus_id, "client {i}: {body}");
            assert_eq!(
                rank.get("text").and_then(Value::as_str),
                document.text.as_deref()
            );
            let score = rank["score"].as_f64().expect("a score") as f32;
            assert_close_slices(&[score], &[document.score], TOLERANCE, "score");
        }
    }
    assert_eq!(batching(&server).requests, CLIENTS as f64);
}

#[test]
fn concurrent_predict_requests_each_get_what_the_pipeline_gives_alone() {
    let pipeline = load(Task::TextClassification, "bert/sequence-classification");
    let server = TestServer::start(pipeline.clone(), config());
    let url = server.url("/predict");
    // One text, or a batch of a text and a pair; raw scores on every other client.
    let answers = concurrently(move |i| {
        let inputs = match i % 2 {
            0 => json!(text(i, 0)),
            _ => json!([text(i, 0), [text(i, 1), text(i, 2)]]),
        };
        let body = json!({ "inputs": inputs, "raw_scores": i % 3 == 0 });
        post(&client(), &url, &body)
    });
    let classifier = pipeline
        .as_text_classification()
        .expect("a classification pipeline");
    let as_json = |labels: Vec<LabelScore>| -> Value {
        labels
            .into_iter()
            .map(|l| json!({ "score": l.score, "label": l.label }))
            .collect()
    };
    for (i, (status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}: {body}");
        let mut options = TextClassificationOptions::default().with_top_k(None);
        if i % 3 == 0 {
            options = options.with_function_to_apply(ScoreFunction::None);
        }
        let expected = match i % 2 {
            0 => as_json(classifier.run_one(text(i, 0), &options).expect("runs")),
            _ => {
                let (a, b, c) = (text(i, 0), text(i, 1), text(i, 2));
                let inputs = [
                    ferroformers::TextInput::Single(&a),
                    ferroformers::TextInput::Pair(&b, &c),
                ];
                Value::Array(
                    classifier
                        .run(inputs, &options)
                        .expect("runs")
                        .into_iter()
                        .map(as_json)
                        .collect(),
                )
            }
        };
        assert_json_close(
            &body,
            &expected,
            f64::from(TOLERANCE),
            &format!("client {i}"),
        );
    }
    assert_eq!(batching(&server).requests, CLIENTS as f64);
}

/// `rounds` requests from each of `CLIENTS` clients at once, four texts each; every answer is
/// checked to be a 200 with four embeddings.
fn load_embed(server: &TestServer, rounds: usize) {
    let url = server.url("/embed");
    let statuses = concurrently(move |i| {
        let client = client();
        (0..rounds)
            .map(|round| {
                let texts: Vec<String> = (0..4).map(|part| text(i + round, part)).collect();
                let (status, body) = post(&client, &url, &json!({ "inputs": texts }));
                (status, body.as_array().map_or(0, Vec::len))
            })
            .collect::<Vec<_>>()
    });
    for (status, embeddings) in statuses.into_iter().flatten() {
        assert_eq!((status, embeddings), (200, 4));
    }
}

#[test]
fn concurrent_requests_share_forwards() {
    let server = TestServer::start(
        load(Task::Embeddings, "bert/sentence-transformers"),
        config(),
    );
    let rounds = 4;
    load_embed(&server, rounds);
    let requests = (CLIENTS * rounds) as f64;
    let counted = batching(&server);
    assert_eq!(counted.requests, requests, "every request ran once");
    // 24 clients at once cannot all have been served one by one: the fixture's forward takes
    // longer than a request takes to arrive.
    assert!(
        counted.forwards < requests && counted.batches < requests,
        "{} requests took {} batches, {} forwards: none was batched with another",
        requests,
        counted.batches,
        counted.forwards
    );
}

#[test]
fn max_batch_requests_one_gives_one_forward_per_request() {
    let server = TestServer::start(
        load(Task::Embeddings, "bert/sentence-transformers"),
        ServerConfig {
            max_batch_requests: Some(1),
            ..config()
        },
    );
    let rounds = 2;
    load_embed(&server, rounds);
    let requests = (CLIENTS * rounds) as f64;
    let counted = batching(&server);
    assert_eq!(counted.requests, requests);
    assert_eq!(counted.batches, requests);
    assert_eq!(counted.forwards, requests);
    let info = common::server::get(&client(), &server.url("/info")).json();
    assert_eq!(info["max_batch_requests"], 1);
    assert_eq!(info["max_batch_tokens"], 16384);
    assert_eq!(info["max_client_batch_size"], 32);
}

#[test]
fn batches_stay_within_max_batch_tokens_and_an_oversize_request_runs_alone() {
    let max_batch_tokens = 64;
    let pipeline = load(Task::Embeddings, "bert/sentence-transformers");
    let server = TestServer::start(
        pipeline.clone(),
        ServerConfig {
            max_batch_tokens,
            ..config()
        },
    );
    // One text per small request, at most 16 tokens: four fit in 64 padded tokens.
    let length = |text: &str| {
        let encoding = pipeline.tokenizer().encode(text, &EncodeOptions::default());
        encoding.expect("encodes").len()
    };
    for i in 0..CLIENTS {
        assert!(length(&text(i, 0)) <= 16, "{}", text(i, 0));
    }
    // Eight texts of over 8 tokens: more than 64 padded tokens on their own.
    let large: Vec<String> = (0..8).map(|part| text(7, part)).collect();
    let longest = large.iter().map(|t| length(t)).max().unwrap_or(0);
    assert!(longest * large.len() > max_batch_tokens, "{longest}");
    let url = server.url("/embed");
    let request_large = large.clone();
    let answers = concurrently(move |i| {
        let texts = match i {
            0 => request_large.clone(),
            _ => vec![text(i, 0)],
        };
        let (status, body) = post(&client(), &url, &json!({ "inputs": texts }));
        (texts, status, body)
    });
    let embeddings = pipeline.as_embeddings().expect("an embeddings pipeline");
    let options = EmbeddingsOptions::default().with_normalize_embeddings(true);
    for (i, (texts, status, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}: {body}");
        let expected = embeddings.run(&texts, &options).expect("runs");
        let actual = embeddings_of(&body);
        assert_same_len(&actual, &expected, "embeddings");
        for (actual, expected) in actual.iter().zip(&expected) {
            assert_close_slices(actual, expected, TOLERANCE, &format!("client {i}"));
        }
    }
    let text = metrics(&server);
    let batches = sample(&text, "ferroformers_batch_tokens_count");
    let within = sample(&text, "ferroformers_batch_tokens_bucket{le=\"64\"}");
    assert_eq!(
        batches - within,
        1.0,
        "only the oversize request passed 64 tokens:\n{text}"
    );
    // It ran in forwards of at most 64 padded tokens: 64 / longest texts each.
    let counted = batching(&server);
    let per_forward = (max_batch_tokens / longest).max(1);
    let large_forwards = large.len().div_ceil(per_forward) as f64;
    assert!(large_forwards > 1.0);
    assert_eq!(counted.forwards, counted.batches - 1.0 + large_forwards);
}

#[test]
fn more_inputs_than_max_client_batch_size_get_413() {
    let server = TestServer::start(
        load(Task::Embeddings, "bert/sentence-transformers"),
        ServerConfig {
            max_client_batch_size: 2,
            ..config()
        },
    );
    let (status, body) = post(
        &client(),
        &server.url("/embed"),
        &json!({ "inputs": ["a", "b", "c"] }),
    );
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error_type"], "validation");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("batch size 3 > maximum allowed batch size 2"),
        "{body}"
    );
    let (status, body) = post(
        &client(),
        &server.url("/embed"),
        &json!({ "inputs": ["a", "b"] }),
    );
    assert_eq!((status, embeddings_of(&body).len()), (200, 2), "{body}");
}

/// The pipeline a route needs, asked of a server that runs another: 400, and nothing queued.
#[test]
fn a_wrong_route_queues_nothing() {
    let server = TestServer::start(
        load(Task::Embeddings, "bert/sentence-transformers"),
        config(),
    );
    let (status, body) = post(
        &client(),
        &server.url("/predict"),
        &json!({ "inputs": "hello" }),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(batching(&server).batches, 0.0);
}
