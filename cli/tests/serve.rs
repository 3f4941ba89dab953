//! `ferroformers serve` over HTTP: every route's answer against the library pipeline called
//! directly on the same fixture model (f32, tolerance 1e-4 on every score and vector), token
//! counts against the tokenizer, and the status codes and error bodies of bad requests.
//! Each test starts its own server in-process on an ephemeral port (port 0) and talks to it
//! with ureq (blocking); the last one runs the `ferroformers serve` binary.

mod common;

use std::io::{BufRead, BufReader, Read};

use base64::Engine;
use common::server::{
    answer, client, config, floats, get, load, post, sample, send_json, Answer, HeldRequest,
    TestServer,
};
use common::{
    assert_close_slices, assert_json_close, assert_same_len, fixture, fixture_json, fixture_model,
};
use ferroformers::pipelines::{
    AggregationStrategy, CrossEncoderActivation, EmbeddingsOptions, FillMaskOptions, Pipeline,
    Prompt, QaInput, QuestionAnsweringOptions, RerankOptions, ScoreFunction,
    SparseEmbeddingsOptions, SparseValue, TextClassificationOptions, TokenClassificationOptions,
    TruncationOptions,
};
use ferroformers::{EncodeOptions, HubOptions, Task, TextInput};
use ferroformers_server::ServerConfig;
use serde_json::{json, Value};

const TOLERANCE: f32 = 1e-4;

const TEXTS: [&str; 3] = [
    "The cat sat on the mat.",
    "Rust is a systems programming language",
    "hello",
];

/// `dimensions` (TEI's and OpenAI's): the first values of each embedding, unit length again,
/// as the pipeline's `truncate_dim` with `normalize_embeddings` gives them; 0 or more than the
/// model has is a 422 naming the field.
#[test]
fn dimensions_truncate_the_embeddings_as_the_pipeline_does() {
    let pipeline = load(Task::Embeddings, "bert/sentence-transformers");
    let server = TestServer::start(pipeline.clone(), config());
    let embeddings = pipeline.as_embeddings().unwrap();
    let client = client();
    let options = EmbeddingsOptions::default()
        .with_normalize_embeddings(true)
        .with_truncate_dim(5);
    let expected = embeddings.run(TEXTS, &options).unwrap();
    for (route, body) in [
        ("/embed", json!({ "inputs": TEXTS, "dimensions": 5 })),
        ("/v1/embeddings", json!({ "input": TEXTS, "dimensions": 5 })),
    ] {
        let (status, answer) = post(&client, &server.url(route), &body);
        assert_eq!(status, 200, "{route}: {answer}");
        let rows: Vec<Vec<f32>> = match route {
            "/embed" => answer.as_array().unwrap().iter().map(floats).collect(),
            _ => answer["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| floats(&item["embedding"]))
                .collect(),
        };
        assert_same_len(&rows, &expected, route);
        for (row, expected) in rows.iter().zip(&expected) {
            assert_eq!(row.len(), 5, "{route}");
            assert_close_slices(row, expected, TOLERANCE, route);
        }
    }
    let width = embeddings
        .run(["hello"], &EmbeddingsOptions::default())
        .unwrap()[0]
        .len();
    for dimensions in [0, width + 1] {
        for (route, body) in [
            (
                "/embed",
                json!({ "inputs": "hello", "dimensions": dimensions }),
            ),
            (
                "/v1/embeddings",
                json!({ "input": "hello", "dimensions": dimensions }),
            ),
        ] {
            let (status, answer) = post(&client, &server.url(route), &body);
            assert_eq!(status, 422, "{route} dimensions {dimensions}: {answer}");
            assert!(
                answer.to_string().contains("dimensions"),
                "{route}: {answer}"
            );
        }
    }
}

/// Decoder embedders served: Qwen3-Embedding's layout (causal, last-token pooling) and
/// EmbeddingGemma's (bidirectional Gemma 3, mean pooling, two Dense modules): `/embed` equals
/// the pipeline, without a prompt and with `prompt_name` "query", and `/info` names the
/// pooling as TEI does.
#[test]
fn decoder_embedders_serve_as_the_pipeline_embeds() {
    for (name, pooling) in [
        ("qwen3/sentence-transformers", "last_token"),
        ("gemma3/sentence-transformers", "mean"),
    ] {
        let pipeline = load(Task::Embeddings, name);
        let server = TestServer::start(pipeline.clone(), config());
        let client = client();
        for prompt in [None, Some("query")] {
            let options = match prompt {
                Some(prompt) => {
                    EmbeddingsOptions::default().with_prompt(Prompt::Named(prompt.into()))
                }
                None => EmbeddingsOptions::default(),
            };
            let expected = pipeline
                .as_embeddings()
                .unwrap()
                .run(TEXTS, &options)
                .unwrap();
            let mut request = json!({ "inputs": TEXTS });
            if let Some(prompt) = prompt {
                request["prompt_name"] = prompt.into();
            }
            let what = format!("{name} /embed, prompt {prompt:?}");
            let (status, answer) = post(&client, &server.url("/embed"), &request);
            assert_eq!(status, 200, "{what}: {answer}");
            let rows: Vec<Vec<f32>> = answer.as_array().unwrap().iter().map(floats).collect();
            assert_same_len(&rows, &expected, &what);
            for (row, expected) in rows.iter().zip(&expected) {
                assert_close_slices(row, expected, TOLERANCE, &what);
            }
        }
        let info = get(&client, &server.url("/info")).json();
        assert_eq!(
            info["model_type"]["embedding"]["pooling"], pooling,
            "{name}"
        );
    }
}

/// `/embed_all`: every token's vector of each input, as the pipeline's token embeddings, and
/// each input alone gives the rows it gets in a batch.
#[test]
fn embed_all_gives_every_tokens_vector_as_the_pipeline_does() {
    let pipeline = load(Task::Embeddings, "bert/sentence-transformers");
    let server = TestServer::start(pipeline.clone(), config());
    let embeddings = pipeline.as_embeddings().unwrap();
    let client = client();
    let expected = embeddings
        .run_token_embeddings(&TEXTS, &EmbeddingsOptions::default())
        .unwrap();
    let matrices = |answer: &Value| -> Vec<Vec<Vec<f32>>> {
        answer
            .as_array()
            .unwrap()
            .iter()
            .map(|rows| rows.as_array().unwrap().iter().map(floats).collect())
            .collect()
    };
    let (status, answer) = post(
        &client,
        &server.url("/embed_all"),
        &json!({ "inputs": TEXTS }),
    );
    assert_eq!(status, 200, "{answer}");
    let batched = matrices(&answer);
    assert_same_len(&batched, &expected, "/embed_all inputs");
    for (i, (ours, theirs)) in batched.iter().zip(&expected).enumerate() {
        assert_same_len(ours, theirs, &format!("input {i}: tokens"));
        for (row, expected) in ours.iter().zip(theirs) {
            assert_close_slices(row, expected, TOLERANCE, &format!("/embed_all input {i}"));
        }
        let (status, alone) = post(
            &client,
            &server.url("/embed_all"),
            &json!({ "inputs": TEXTS[i] }),
        );
        assert_eq!(status, 200, "{alone}");
        let alone = matrices(&alone);
        assert_same_len(&alone[0], ours, &format!("input {i} alone"));
        for (row, batched) in alone[0].iter().zip(ours) {
            assert_close_slices(row, batched, TOLERANCE, &format!("input {i} alone"));
        }
    }
}

#[test]
fn embed_and_openai_embeddings_match_the_pipeline() {
    let pipeline = load(Task::Embeddings, "bert/sentence-transformers");
    let server = TestServer::start(pipeline.clone(), config());
    let embeddings = pipeline.as_embeddings().unwrap();
    let client = client();
    let normalized = embeddings
        .run(
            TEXTS,
            &EmbeddingsOptions::default().with_normalize_embeddings(true),
        )
        .unwrap();
    let raw = embeddings
        .run(TEXTS, &EmbeddingsOptions::default())
        .unwrap();

    // TEI normalizes by default; a list in, a list of vectors out.
    let (status, body) = post(&client, &server.url("/embed"), &json!({ "inputs": TEXTS }));
    assert_eq!(status, 200, "{body}");
    let rows = body.as_array().unwrap();
    assert_same_len(rows, &normalized, "/embed rows");
    for (row, expected) in rows.iter().zip(&normalized) {
        assert_close_slices(&floats(row), expected, TOLERANCE, "/embed");
    }
    // One string in: still a list of one vector; normalize false gives the raw pooling.
    let (status, body) = post(
        &client,
        &server.url("/embed"),
        &json!({ "inputs": TEXTS[1], "normalize": false }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_close_slices(
        &floats(&body[0]),
        &raw[1],
        TOLERANCE,
        "/embed normalize false",
    );

    // OpenAI: floats, then base64 of the little-endian f32 bytes; usage counts the tokens.
    let tokens: usize = TEXTS
        .iter()
        .map(|t| {
            pipeline
                .tokenizer()
                .encode(*t, &EncodeOptions::default())
                .unwrap()
                .len()
        })
        .sum();
    let (status, body) = post(
        &client,
        &server.url("/v1/embeddings"),
        &json!({ "input": TEXTS, "model": "fixture" }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "fixture");
    assert_eq!(body["usage"]["prompt_tokens"], tokens);
    assert_eq!(body["usage"]["total_tokens"], tokens);
    for (i, expected) in normalized.iter().enumerate() {
        assert_eq!(body["data"][i]["index"], i);
        assert_eq!(body["data"][i]["object"], "embedding");
        assert_close_slices(
            &floats(&body["data"][i]["embedding"]),
            expected,
            TOLERANCE,
            "/v1/embeddings",
        );
    }
    let (status, body) = post(
        &client,
        &server.url("/v1/embeddings"),
        &json!({ "input": TEXTS[0], "encoding_format": "base64" }),
    );
    assert_eq!(status, 200, "{body}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(
            body["data"][0]["embedding"]
                .as_str()
                .expect("a base64 string"),
        )
        .expect("valid base64");
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_close_slices(&decoded, &normalized[0], TOLERANCE, "base64 embedding");

    // The one model, by the name it was given.
    let models = get(&client, &server.url("/v1/models")).json();
    assert_eq!(models["data"][0]["id"], "fixture");
    assert_eq!(models["data"][0]["object"], "model");
    let info = get(&client, &server.url("/info")).json();
    assert_eq!(info["model_id"], "fixture");
    assert_eq!(info["task"], "feature-extraction");
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(info["max_input_length"], 64);
}

#[test]
fn tokenize_and_decode_match_the_tokenizer() {
    let pipeline = load(Task::Embeddings, "bert/base");
    let server = TestServer::start(pipeline.clone(), config());
    let client = client();
    let tokenizer = pipeline.tokenizer();
    let (status, body) = post(
        &client,
        &server.url("/tokenize"),
        &json!({ "inputs": TEXTS }),
    );
    assert_eq!(status, 200, "{body}");
    for (tokens, text) in body.as_array().unwrap().iter().zip(TEXTS) {
        let encoding = tokenizer.encode(text, &EncodeOptions::default()).unwrap();
        let ids: Vec<u64> = tokens
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = encoding.get_ids().iter().map(|&id| u64::from(id)).collect();
        assert_eq!(ids, expected, "{text}");
        // [CLS] first, special, without offsets; the next token is the text's first word.
        assert_eq!(tokens[0]["special"], true);
        assert_eq!(tokens[0]["start"], Value::Null);
        let (start, stop) = encoding.get_offsets()[1];
        assert_eq!(tokens[1]["start"], start);
        assert_eq!(tokens[1]["text"], text[start..stop].to_string());
    }
    // Decoding the ids gives the tokenizer's decoding, specials skipped by default.
    let ids = tokenizer
        .encode(TEXTS[0], &EncodeOptions::default())
        .unwrap()
        .get_ids()
        .to_vec();
    let (status, body) = post(&client, &server.url("/decode"), &json!({ "ids": ids }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([tokenizer.decode(&ids, true).unwrap()]));
    let (_, body) = post(
        &client,
        &server.url("/decode"),
        &json!({ "ids": [ids.clone(), ids.clone()], "skip_special_tokens": false }),
    );
    let with_specials = tokenizer.decode(&ids, false).unwrap();
    assert!(with_specials.contains("[CLS]"), "{with_specials}");
    assert_eq!(body, json!([with_specials.clone(), with_specials]));
}

/// A cross-encoder, and an LLM reranker (Qwen3-Reranker's yes/no scores).
#[test]
fn rerank_matches_the_pipeline() {
    for name in ["bert/cross-encoder", "qwen3/reranker"] {
        rerank_matches_the_pipeline_on(name);
    }
}

fn rerank_matches_the_pipeline_on(name: &str) {
    let pipeline = load(Task::Rerank, name);
    let server = TestServer::start(pipeline.clone(), config());
    let rerank = pipeline.as_rerank().unwrap();
    let client = client();
    let query = "what do cats do?";
    for raw_scores in [false, true] {
        let mut options = RerankOptions::default().with_return_documents(true);
        if raw_scores {
            options = options.with_activation(CrossEncoderActivation::Identity);
        }
        let expected = rerank.rank(query, &TEXTS, &options).unwrap();
        let (status, body) = post(
            &client,
            &server.url("/rerank"),
            &json!({ "query": query, "texts": TEXTS, "return_text": true, "raw_scores": raw_scores }),
        );
        assert_eq!(status, 200, "{body}");
        let ranks = body.as_array().unwrap();
        assert_same_len(ranks, &expected, "ranks");
        for (rank, document) in ranks.iter().zip(&expected) {
            assert_eq!(rank["index"], document.corpus_id);
            assert_eq!(rank["text"], document.text.clone().unwrap());
            assert_close_slices(
                &[rank["score"].as_f64().unwrap() as f32],
                &[document.score],
                TOLERANCE,
                "score",
            );
        }
    }
    // Without return_text, no text field.
    let (_, body) = post(
        &client,
        &server.url("/rerank"),
        &json!({ "query": query, "texts": TEXTS }),
    );
    assert!(body[0].get("text").is_none(), "{body}");
}

#[test]
fn predict_matches_the_classifier() {
    let pipeline = load(Task::TextClassification, "bert/sequence-classification");
    let server = TestServer::start(pipeline.clone(), config());
    let classifier = pipeline.as_text_classification().unwrap();
    let client = client();
    let all = TextClassificationOptions::default().with_top_k(None);
    let as_json = |labels: Vec<ferroformers::pipelines::LabelScore>| -> Value {
        labels
            .into_iter()
            .map(|l| json!({ "score": l.score, "label": l.label }))
            .collect()
    };
    // One text: one list of labels, best first.
    let expected = as_json(classifier.run_one(TEXTS[0], &all).unwrap());
    let (status, body) = post(
        &client,
        &server.url("/predict"),
        &json!({ "inputs": TEXTS[0] }),
    );
    assert_eq!(status, 200, "{body}");
    assert_json_close(&body, &expected, f64::from(TOLERANCE), "/predict one");
    // A batch of a text and a pair, raw scores.
    let raw = all.clone().with_function_to_apply(ScoreFunction::None);
    let inputs = [
        TextInput::Single(TEXTS[1]),
        TextInput::Pair(TEXTS[0], TEXTS[2]),
    ];
    let expected: Value = classifier
        .run(inputs, &raw)
        .unwrap()
        .into_iter()
        .map(as_json)
        .collect();
    let (status, body) = post(
        &client,
        &server.url("/predict"),
        &json!({ "inputs": [TEXTS[1], [TEXTS[0], TEXTS[2]]], "raw_scores": true }),
    );
    assert_eq!(status, 200, "{body}");
    assert_json_close(&body, &expected, f64::from(TOLERANCE), "/predict batch");
    let info = get(&client, &server.url("/info")).json();
    assert_eq!(
        info["model_type"]["classifier"]["id2label"]
            .as_object()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn inference_api_answers_what_the_cli_prints() {
    let client = client();
    // fill-mask: one text gives its predictions; a list gives one list per text.
    let pipeline = load(Task::FillMask, "bert/masked-lm");
    let server = TestServer::start(pipeline.clone(), config());
    let texts = [
        "Paris is the [MASK] of France.",
        "The [MASK] sat on the mat.",
    ];
    let options = FillMaskOptions::default().with_top_k(3);
    let expected = serde_json::to_value(
        pipeline
            .as_fill_mask()
            .unwrap()
            .run(texts, &options)
            .unwrap(),
    )
    .unwrap();
    let (status, body) = post(
        &client,
        &server.url("/"),
        &json!({ "inputs": texts, "parameters": { "top_k": 3 } }),
    );
    assert_eq!(status, 200, "{body}");
    assert_json_close(&body, &expected, f64::from(TOLERANCE), "fill-mask");
    let (_, body) = post(
        &client,
        &server.url("/"),
        &json!({ "inputs": texts[0], "parameters": { "top_k": 3 } }),
    );
    assert_json_close(&body, &expected[0], f64::from(TOLERANCE), "fill-mask one");
    // An unknown parameter is named.
    let (status, body) = post(
        &client,
        &server.url("/"),
        &json!({ "inputs": texts[0], "parameters": { "topk": 3 } }),
    );
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("topk"), "{body}");
    drop(server);

    // NER, aggregated as `simple` by default (the CLI's default).
    let pipeline = load(Task::TokenClassification, "bert/token-classification");
    let server = TestServer::start(pipeline.clone(), config());
    let options = TokenClassificationOptions::default()
        .with_aggregation_strategy(AggregationStrategy::Simple);
    let expected = serde_json::to_value(
        pipeline
            .as_token_classification()
            .unwrap()
            .run_one(TEXTS[0], &options)
            .unwrap(),
    )
    .unwrap();
    let (status, body) = post(&client, &server.url("/"), &json!({ "inputs": TEXTS[0] }));
    assert_eq!(status, 200, "{body}");
    assert_json_close(&body, &expected, f64::from(TOLERANCE), "ner");
    drop(server);

    // QA: the best answer, or the top_k answers.
    let pipeline = load(Task::QuestionAnswering, "bert/question-answering");
    let server = TestServer::start(pipeline.clone(), config());
    let qa = pipeline.as_question_answering().unwrap();
    let question = QaInput {
        question: "Where does the cat sit?",
        context: "The cat sat on the mat in the sun.",
    };
    let answers = qa
        .run_one(question, &QuestionAnsweringOptions::default().with_top_k(2))
        .unwrap();
    let inputs = json!({ "question": question.question, "context": question.context });
    let (status, body) = post(&client, &server.url("/"), &json!({ "inputs": inputs }));
    assert_eq!(status, 200, "{body}");
    assert_json_close(
        &body,
        &serde_json::to_value(&answers[0]).unwrap(),
        f64::from(TOLERANCE),
        "qa best",
    );
    let (_, body) = post(
        &client,
        &server.url("/"),
        &json!({ "inputs": inputs, "parameters": { "top_k": 2 } }),
    );
    assert_json_close(
        &body,
        &serde_json::to_value(&answers).unwrap(),
        f64::from(TOLERANCE),
        "qa top 2",
    );
}

fn assert_tei_error(status: u16, body: &Value, expected: u16, error_type: &str, mentions: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error_type"], error_type, "{body}");
    let message = body["error"].as_str().expect("an error message");
    assert!(
        message.contains(mentions),
        "`{message}` does not mention `{mentions}`"
    );
}

#[test]
fn bad_requests_get_tei_and_openai_errors() {
    let pipeline = load(Task::Embeddings, "bert/sentence-transformers");
    let server = TestServer::start(
        pipeline.clone(),
        ServerConfig {
            api_key: Some("secret".to_string()),
            payload_limit: 1_000,
            max_input_length: Some(8),
            ..config()
        },
    );
    let client = client();
    let with_key = |request: ureq::Request| request.set("authorization", "Bearer secret");
    let send = |answer: Answer| {
        let body = serde_json::from_str::<Value>(&answer.body).unwrap_or(Value::Null);
        (answer.status, body)
    };

    // 401 without the key or with a wrong one, in each route's shape; /health needs none.
    let (status, body) = send(send_json(
        client.post(&server.url("/embed")),
        &json!({ "inputs": "a" }),
    ));
    assert_tei_error(status, &body, 401, "validation", "API key");
    let (status, body) = send(send_json(
        client
            .post(&server.url("/v1/embeddings"))
            .set("authorization", "Bearer wrong"),
        &json!({ "input": "a" }),
    ));
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(get(&client, &server.url("/health")).status, 200);

    // 413 past the payload limit.
    let big = "word ".repeat(400);
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/embed"))),
        &json!({ "inputs": big }),
    ));
    assert_tei_error(status, &body, 413, "validation", "length limit");

    // 422 for JSON that does not parse, a missing field, a field of the wrong type.
    let (status, body) = send(answer(
        with_key(client.post(&server.url("/embed")))
            .set("content-type", "application/json")
            .send_string("{\"inputs\": "),
    ));
    assert_tei_error(status, &body, 422, "validation", "JSON");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/embed"))),
        &json!({ "input": "a" }),
    ));
    assert_tei_error(status, &body, 422, "validation", "`inputs`");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/embed"))),
        &json!({ "inputs": "a", "normalize": "yes" }),
    ));
    assert_tei_error(status, &body, 422, "validation", "normalize");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/v1/embeddings"))),
        &json!({ "input": 5 }),
    ));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["param"], "input", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/embed"))),
        &json!({ "inputs": "a", "truncation_direction": "Left" }),
    ));
    assert_tei_error(status, &body, 422, "validation", "Left");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/embed"))),
        &json!({ "inputs": [] }),
    ));
    assert_tei_error(status, &body, 400, "empty", "empty");

    // An input over max_input_length: 413 as TEI, unless truncate, which cuts it there.
    let long = "one two three four five six seven eight nine ten";
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/embed"))),
        &json!({ "inputs": long }),
    ));
    assert_tei_error(status, &body, 413, "validation", "less than 8 tokens");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/embed"))),
        &json!({ "inputs": long, "truncate": true }),
    ));
    assert_eq!(status, 200, "{body}");
    let expected = pipeline
        .as_embeddings()
        .unwrap()
        .run_one(
            long,
            &EmbeddingsOptions::default()
                .with_normalize_embeddings(true)
                .with_max_length(8),
        )
        .unwrap();
    assert_close_slices(&floats(&body[0]), &expected, TOLERANCE, "truncated /embed");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/v1/embeddings"))),
        &json!({ "input": long }),
    ));
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("less than 8 tokens"),
        "{body}"
    );

    // 404 for an unknown route, 400 for a route of another task.
    let (status, body) = send(answer(with_key(client.get(&server.url("/nothing"))).call()));
    assert_tei_error(status, &body, 404, "validation", "/nothing");
    let (status, body) = send(answer(
        with_key(client.get(&server.url("/v1/nothing"))).call(),
    ));
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_url", "{body}");
    let (status, body) = send(send_json(
        with_key(client.post(&server.url("/rerank"))),
        &json!({ "query": "q", "texts": ["a"] }),
    ));
    assert_tei_error(status, &body, 400, "validation", "cross-encoder");
}

#[test]
fn requests_past_max_concurrent_requests_get_429() {
    let pipeline = load(Task::Embeddings, "bert/base");
    let server = TestServer::start(
        pipeline,
        ServerConfig {
            max_concurrent_requests: 1,
            ..config()
        },
    );
    let client = client();
    // Hold the only slot: a request whose body has not all arrived yet.
    let mut held = HeldRequest::embed(server.address, r#"{"inputs": "hello"}"#);
    // The slot is taken once the server has read the headers. Wait for that on /metrics, which
    // needs no slot: a request that took the slot first would get the held one a 429 instead.
    server.wait_for_in_flight(1);
    let overloaded = get(&client, &server.url("/info"));
    assert_eq!(
        overloaded.status, 429,
        "a second request in flight gets 429"
    );
    let overloaded = overloaded.json();
    assert_eq!(overloaded["error_type"], "overloaded", "{overloaded}");
    // The held request completes, and frees its slot.
    held.send_rest();
    let mut reader = BufReader::new(held.stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    assert_eq!(get(&client, &server.url("/info")).status, 200);
}

#[test]
fn auto_task_follows_the_model_files() {
    let hub = HubOptions::from_env();
    for (name, expected) in [
        ("bert/sentence-transformers", Task::Embeddings),
        ("bert/base", Task::Embeddings),
        ("bert/cross-encoder", Task::Rerank),
        ("bert/sequence-classification", Task::TextClassification),
        ("bert/masked-lm", Task::FillMask),
        ("bert/token-classification", Task::TokenClassification),
        ("bert/question-answering", Task::QuestionAnswering),
        ("gpt2/lm-head", Task::TextGeneration),
    ] {
        let (task, why) = Task::detect(&fixture_model(name), &hub).unwrap();
        assert_eq!(task, expected, "{name}: {why}");
    }
}

/// The binary's first line on stdout, which must name `task`, and the address in it; the rest
/// of stdout stays readable.
fn ready_address(
    child: &mut std::process::Child,
    task: &str,
) -> (BufReader<std::process::ChildStdout>, String) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert!(ready.contains(task), "{ready}");
    let address = ready
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the ready line has the address")
        .to_string();
    (stdout, address)
}

#[test]
fn the_command_prints_its_address_serves_and_stops_on_sigterm() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroformers"))
        .args([
            "serve",
            "-m",
            &fixture_model("bert/sequence-classification"),
            "--dtype",
            "bf16",
            "--port",
            "0",
            "--quiet",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let (mut stdout, address) = ready_address(&mut child, "task classify");
    assert!(
        address.starts_with("127.0.0.1:"),
        "binds loopback by default: {address}"
    );
    let info = get(&client(), &format!("http://{address}/info")).json();
    assert_eq!(info["task"], "text-classification");
    // `--dtype` reaches /info by TEI's name for it.
    assert_eq!(info["model_dtype"], "bfloat16");
    // SIGTERM: stops accepting, exits 0.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
}

/// Every `serve` flag also comes from a `FERROFORMERS_*` variable, the model too: here the
/// model, the port (0), the task (a transformers alias, where `auto` would rerank), and one
/// HTTP worker thread, which serves it alone.
#[test]
fn the_command_takes_its_flags_from_the_environment() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroformers"))
        .args(["serve", "--quiet"])
        .env("FERROFORMERS_MODEL_ID", fixture_model("bert/cross-encoder"))
        .env("FERROFORMERS_PORT", "0")
        .env("FERROFORMERS_TASK", "sentiment-analysis")
        .env("FERROFORMERS_HTTP_WORKERS", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let (_stdout, address) = ready_address(&mut child, "task classify (--task)");
    assert!(
        !address.ends_with(":8080"),
        "FERROFORMERS_PORT=0 picks a free port: {address}"
    );
    let info = get(&client(), &format!("http://{address}/info")).json();
    assert_eq!(info["task"], "text-classification");
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn prompt_name_picks_the_models_prompt() {
    // prompts {query: "query: ", passage: "passage: "}, default_prompt_name "query".
    let pipeline = load(
        Task::Embeddings,
        "xlm-roberta/sentence-transformers-prompts",
    );
    let server = TestServer::start(pipeline.clone(), config());
    let embeddings = pipeline.as_embeddings().unwrap();
    let client = client();
    for prompt in [None, Some("passage")] {
        let options = EmbeddingsOptions::default()
            .with_normalize_embeddings(true)
            .with_prompt(prompt.map_or(Prompt::ModelDefault, |name| Prompt::Named(name.into())));
        let expected = embeddings.run_one(TEXTS[0], &options).unwrap();
        let (status, body) = post(
            &client,
            &server.url("/embed"),
            &json!({ "inputs": TEXTS[0], "prompt_name": prompt }),
        );
        assert_eq!(status, 200, "{body}");
        assert_close_slices(&floats(&body[0]), &expected, TOLERANCE, "prompted /embed");
    }
    // The two prompts give different embeddings (else the comparison above proves nothing).
    let (_, query) = post(
        &client,
        &server.url("/embed"),
        &json!({ "inputs": TEXTS[0] }),
    );
    let (_, passage) = post(
        &client,
        &server.url("/embed"),
        &json!({ "inputs": TEXTS[0], "prompt_name": "passage" }),
    );
    assert_ne!(query, passage);
    let (status, body) = post(
        &client,
        &server.url("/embed"),
        &json!({ "inputs": TEXTS[0], "prompt_name": "nope" }),
    );
    assert_tei_error(status, &body, 422, "validation", "nope");
}

#[test]
fn cors_preflight_is_answered_before_the_api_key_is_asked() {
    let server = TestServer::start(
        load(Task::Embeddings, "bert/base"),
        ServerConfig {
            api_key: Some("secret".to_string()),
            cors_allow_origins: vec!["https://app.example".to_string()],
            ..config()
        },
    );
    let response = answer(
        client()
            .request("OPTIONS", &server.url("/embed"))
            .set("origin", "https://app.example")
            .set("access-control-request-method", "POST")
            .set(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .call(),
    );
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // Another origin is not allowed.
    let response = answer(
        client()
            .request("OPTIONS", &server.url("/embed"))
            .set("origin", "https://elsewhere.example")
            .set("access-control-request-method", "POST")
            .call(),
    );
    assert!(response.header("access-control-allow-origin").is_none());
}

#[test]
fn shutdown_lets_the_request_in_flight_finish_and_accepts_no_more() {
    let mut server = TestServer::start(load(Task::Embeddings, "bert/base"), config());
    let mut held = HeldRequest::embed(server.address, r#"{"inputs": "hello"}"#);
    // The server has the request before it is told to stop.
    server.wait_for_in_flight(1);
    server.begin_shutdown();
    // It stops accepting (closes its listening socket) while the request is still in flight.
    server.wait_until_not_accepting();
    held.send_rest();
    let mut answer = String::new();
    BufReader::new(held.stream)
        .read_to_string(&mut answer)
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.join();
}

#[test]
fn metrics_count_requests_by_route_and_status() {
    let server = TestServer::start(
        load(Task::Embeddings, "bert/base"),
        ServerConfig {
            api_key: Some("secret".to_string()),
            ..config()
        },
    );
    let client = client();
    for body in [
        json!({ "inputs": "a" }),
        json!({ "inputs": ["b"] }),
        json!({ "input": "c" }),
    ] {
        send_json(
            client
                .post(&server.url("/embed"))
                .set("authorization", "Bearer secret"),
            &body,
        );
    }
    send_json(
        client.post(&server.url("/embed")),
        &json!({ "inputs": "a" }),
    );
    answer(
        client
            .get(&server.url("/nothing/here"))
            .set("authorization", "Bearer secret")
            .call(),
    );
    let unauthorized = get(&client, &server.url("/metrics"));
    assert_eq!(unauthorized.status, 401);
    let response = answer(
        client
            .get(&server.url("/metrics"))
            .set("authorization", "Bearer secret")
            .call(),
    );
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .expect("a content-type")
        .starts_with("text/plain"));
    let metrics = response.body;
    let count = |series: &str| sample(&metrics, series);
    assert_eq!(
        count(r#"ferroformers_requests_total{route="/embed",status="200"}"#),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        count(r#"ferroformers_requests_total{route="/embed",status="422"}"#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"ferroformers_requests_total{route="/embed",status="401"}"#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"ferroformers_requests_total{route="unmatched",status="404"}"#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"ferroformers_requests_total{route="/metrics",status="401"}"#),
        Some(1.0)
    );
    assert_eq!(
        count(r#"ferroformers_request_duration_seconds_count{route="/embed"}"#),
        Some(4.0)
    );
    // The scrape itself is the one request in flight.
    assert_eq!(count("ferroformers_requests_in_flight"), Some(1.0));
}

/// `ferroformers serve` with `args` (the model's among them), once its ready line names
/// `ready`, asked for a greedy reply of 12 tokens to "Hi there" on `/v1/chat/completions`:
/// the answer's JSON, after SIGTERM stopped the server cleanly.
fn serve_one_chat(args: &[&str], ready: &str) -> Value {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroformers"))
        .args(["serve", "--port", "0", "--quiet"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let (_stdout, address) = ready_address(&mut child, ready);
    let (status, body) = post(
        &client(),
        &format!("http://{address}/v1/chat/completions"),
        &serde_json::json!({"messages": [{"role": "user", "content": "Hi there"}],
                            "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    body
}

/// The pipeline's own greedy reply of 12 tokens to "Hi there", as `ferroformers chat` makes it.
fn pipeline_chat_reply(pipeline: ferroformers::pipelines::TextGenerationPipeline) -> String {
    let pipeline = std::sync::Arc::new(pipeline);
    let config = pipeline
        .generation_config()
        .clone()
        .greedy()
        .with_max_new_tokens(12);
    ferroformers::pipelines::Conversation::new(pipeline)
        .respond("Hi there", &config)
        .unwrap()
}

/// `serve --task chat` on a model without a chat template (the GPT-2 fixture, as DialoGPT)
/// serves chats joined as `ferroformers chat` joins them, instead of refusing to start: the
/// server and the command agree about the same model.
#[test]
fn chat_serves_a_model_without_a_template_as_the_command_chats() {
    let model = fixture_model("gpt2/lm-head");
    let body = serve_one_chat(&["-m", &model, "--task", "chat"], "task chat");
    let pipeline = ferroformers::pipelines::TextGenerationPipeline::from_pretrained(
        &model,
        &ferroformers::LoadOptions::default(),
    )
    .unwrap();
    let reply = pipeline_chat_reply(pipeline);
    assert_eq!(body["choices"][0]["message"]["content"], reply.as_str());
}

/// A GGUF file (llama.cpp's Q4_K_M of a Llama) served as it is: the task found from the file,
/// the chat template and tokenizer from its metadata, and the reply the pipeline gives.
#[test]
fn a_gguf_file_serves_chat_with_the_template_it_holds() {
    let model = fixture("gguf/llama256-q4_k_m.gguf")
        .to_string_lossy()
        .into_owned();
    let body = serve_one_chat(&["-m", &model], "task generate (a GGUF file)");
    let pipeline = ferroformers::pipelines::TextGenerationPipeline::from_pretrained(
        &model,
        &ferroformers::LoadOptions::default(),
    )
    .unwrap();
    let template = pipeline
        .chat_template()
        .unwrap()
        .expect("the GGUF holds a template");
    assert!(
        template.source().contains("start_header_id"),
        "Llama 3's template"
    );
    let reply = pipeline_chat_reply(pipeline);
    assert_eq!(body["choices"][0]["message"]["content"], reply.as_str());
    assert_eq!(body["usage"]["completion_tokens"], 12, "{body}");
}

/// A sparse embedding's entries from `/embed_sparse`'s JSON: `[{"index", "value"}, ...]`, each
/// entry exactly those two fields.
fn sparse_rows(answer: &Value) -> Vec<Vec<SparseValue>> {
    answer
        .as_array()
        .expect("one array per input")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("an array of entries")
                .iter()
                .map(|entry| {
                    assert_eq!(entry.as_object().unwrap().len(), 2, "{entry}");
                    SparseValue {
                        index: entry["index"].as_u64().unwrap() as usize,
                        value: entry["value"].as_f64().unwrap() as f32,
                    }
                })
                .collect()
        })
        .collect()
}

/// The fixture's `SparseEncoder.encode` rows (`{"indices", "values"}`) as entries.
fn sparse_reference(rows: &Value) -> Vec<Vec<SparseValue>> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let indices = row["indices"].as_array().unwrap();
            let values = row["values"].as_array().unwrap();
            indices
                .iter()
                .zip(values)
                .map(|(index, value)| SparseValue {
                    index: index.as_u64().unwrap() as usize,
                    value: value.as_f64().unwrap() as f32,
                })
                .collect()
        })
        .collect()
}

/// The same indices and values within `tolerance`, input by input.
fn assert_same_sparse(
    ours: &[Vec<SparseValue>],
    theirs: &[Vec<SparseValue>],
    tolerance: f32,
    what: &str,
) {
    assert_same_len(ours, theirs, what);
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let indices = |row: &[SparseValue]| row.iter().map(|e| e.index).collect::<Vec<_>>();
        assert_eq!(indices(a), indices(b), "{what}: input {i}'s indices");
        let values = |row: &[SparseValue]| row.iter().map(|e| e.value).collect::<Vec<_>>();
        assert_close_slices(
            &values(a),
            &values(b),
            tolerance,
            &format!("{what}: input {i}"),
        );
    }
}

/// `/embed_sparse` on a SparseEncoder: TEI's shape, sentence-transformers' values (the fixture's
/// `SparseEncoder.encode`, 1e-5) and the pipeline's, one input or several, with a prompt; the
/// other embedding routes answer a SPLADE model as TEI does.
#[test]
fn embed_sparse_serves_splade_vectors_as_sentence_transformers_encodes_them() {
    let pipeline = load(Task::SparseEmbeddings, "splade/sparse-encoder");
    let server = TestServer::start(pipeline.clone(), config());
    let sparse = pipeline.as_sparse_embeddings().unwrap();
    let client = client();
    let reference = fixture_json("splade/reference.json");
    let sentences = reference["sentences"].clone();
    let (status, answer) = post(
        &client,
        &server.url("/embed_sparse"),
        &json!({ "inputs": sentences }),
    );
    assert_eq!(status, 200, "{answer}");
    let theirs = sparse_reference(&reference["sparse_encoder"]);
    assert_same_sparse(&sparse_rows(&answer), &theirs, 1e-5, "/embed_sparse");
    let (status, answer) = post(
        &client,
        &server.url("/embed_sparse"),
        &json!({ "inputs": sentences, "prompt_name": "query" }),
    );
    assert_eq!(status, 200, "{answer}");
    let query = sparse_reference(&reference["query"]);
    assert_same_sparse(&sparse_rows(&answer), &query, 1e-5, "/embed_sparse query");
    // One text: a list of one vector, as TEI answers; against the pipeline on other texts.
    let expected = sparse
        .run(&TEXTS, &SparseEmbeddingsOptions::default())
        .unwrap();
    for (i, text) in TEXTS.iter().enumerate() {
        let (status, answer) = post(
            &client,
            &server.url("/embed_sparse"),
            &json!({ "inputs": text }),
        );
        assert_eq!(status, 200, "{answer}");
        assert_same_sparse(
            &sparse_rows(&answer),
            &expected[i..=i],
            TOLERANCE,
            "one text",
        );
    }

    let info = get(&client, &server.url("/info")).json();
    assert_eq!(
        info["model_type"],
        json!({ "embedding": { "pooling": "splade" } })
    );
    assert_eq!(info["task"], "sparse-embeddings");
    // TEI's /embed gives a SPLADE model's whole vectors, without `normalize` only.
    let (status, body) = post(&client, &server.url("/embed"), &json!({ "inputs": TEXTS }));
    assert_tei_error(
        status,
        &body,
        424,
        "backend",
        "`normalize` is not available for SPLADE",
    );
    let (status, answer) = post(
        &client,
        &server.url("/embed"),
        &json!({ "inputs": TEXTS, "normalize": false }),
    );
    assert_eq!(status, 200, "{answer}");
    for (i, (row, entries)) in answer.as_array().unwrap().iter().zip(&expected).enumerate() {
        let row = floats(row);
        assert_eq!(
            row.len(),
            sparse.vocab_size(),
            "input {i}: a vocabulary-sized vector"
        );
        let mut dense = vec![0f32; row.len()];
        for entry in entries {
            dense[entry.index] = entry.value;
        }
        assert_close_slices(&row, &dense, TOLERANCE, &format!("/embed input {i}"));
    }
    let (status, body) = post(
        &client,
        &server.url("/embed_all"),
        &json!({ "inputs": "a" }),
    );
    assert_tei_error(
        status,
        &body,
        424,
        "backend",
        "`embed_all` is not available for SPLADE",
    );
}

/// `/embed_sparse` checks its request as `/embed` does, and a model without SPLADE pooling
/// gets TEI's 424.
#[test]
fn embed_sparse_refuses_bad_requests_and_models_without_splade() {
    let pipeline = load(Task::SparseEmbeddings, "splade/sparse-encoder");
    let server = TestServer::start(
        pipeline,
        ServerConfig {
            max_input_length: Some(8),
            max_client_batch_size: 2,
            ..config()
        },
    );
    let client = client();
    let url = server.url("/embed_sparse");
    let (status, body) = post(&client, &url, &json!({ "inputs": [] }));
    assert_tei_error(status, &body, 400, "empty", "empty");
    let (status, body) = post(&client, &url, &json!({ "inputs": ["a", "b", "c"] }));
    assert_tei_error(status, &body, 413, "validation", "batch size 3");
    let long = "the quick brown fox jumps over the lazy dog";
    let (status, body) = post(&client, &url, &json!({ "inputs": long }));
    assert_tei_error(status, &body, 413, "validation", "less than 8 tokens");
    let (status, answer) = post(&client, &url, &json!({ "inputs": long, "truncate": true }));
    assert_eq!(status, 200, "{answer}");
    let (status, body) = post(
        &client,
        &url,
        &json!({ "inputs": "a", "truncation_direction": "Left" }),
    );
    assert_tei_error(status, &body, 422, "validation", "truncation_direction");
    let (status, body) = post(
        &client,
        &url,
        &json!({ "inputs": "a", "prompt_name": "nope" }),
    );
    assert_tei_error(status, &body, 422, "validation", "no prompt named `nope`");
    let (status, body) = post(&client, &url, &json!({ "input": "a" }));
    assert_tei_error(status, &body, 422, "validation", "`inputs`");
    // The route counts under its own name.
    let metrics = get(&client, &server.url("/metrics")).body;
    let count = |series: &str| sample(&metrics, series);
    assert_eq!(
        count(r#"ferroformers_requests_total{route="/embed_sparse",status="413"}"#),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        count(r#"ferroformers_requests_total{route="/embed_sparse",status="200"}"#),
        Some(1.0)
    );

    let dense = TestServer::start(
        load(Task::Embeddings, "bert/sentence-transformers"),
        config(),
    );
    let (status, body) = post(
        &client,
        &dense.url("/embed_sparse"),
        &json!({ "inputs": "a" }),
    );
    assert_tei_error(
        status,
        &body,
        424,
        "backend",
        "Model is not an embedding model with SPLADE pooling",
    );
}

/// `serve --pooling splade` serves a plain masked LM's SPLADE vectors (TEI's flag), which
/// `--task auto` would serve for fill-mask; a SparseEncoder is detected without it.
#[test]
fn the_command_serves_a_masked_lm_with_splade_pooling() {
    let hub = HubOptions::from_env();
    let (task, why) = Task::detect(&fixture_model("splade/sparse-encoder"), &hub).unwrap();
    assert_eq!(task, Task::SparseEmbeddings, "{why}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferroformers"))
        .args([
            "serve",
            "-m",
            &fixture_model("bert/masked-lm"),
            "--pooling",
            "splade",
            "--port",
            "0",
            "--quiet",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let (_stdout, address) = ready_address(&mut child, "task splade (--pooling splade)");
    let reference = fixture_json("splade/reference.json");
    let (status, answer) = post(
        &client(),
        &format!("http://{address}/embed_sparse"),
        &json!({ "inputs": reference["sentences"] }),
    );
    assert_eq!(status, 200, "{answer}");
    // bert/masked-lm is the SparseEncoder's transformer: the same vectors.
    let theirs = sparse_reference(&reference["sparse_encoder"]);
    assert_same_sparse(&sparse_rows(&answer), &theirs, 1e-5, "--pooling splade");
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
}
