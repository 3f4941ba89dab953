//! Operating `ferroformers serve`: request ids in responses and log lines, timeouts that free
//! connections from slow clients, and a shutdown under load that cuts no answer off.
//! Embeddings are compared with the library pipeline called directly on the same fixture
//! (f32, tolerance 1e-4 on every value).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::server::{
    answer, client, config, floats, load, post, send_json, HeldRequest, TestServer,
};
use common::{assert_close_slices, checked_max_abs_diff, fixture_model};
use ferroformers::pipelines::{EmbeddingsOptions, Pipeline};
use ferroformers::Task;
use ferroformers_server::ServerConfig;
use serde_json::{json, Value};

const TOLERANCE: f32 = 1e-4;
const MODEL: &str = "bert/sentence-transformers";
const TEXT: &str = "The cat sat on the mat.";

/// What `/embed` answers for [`TEXT`] (TEI normalizes by default).
fn expected_embedding() -> Vec<f32> {
    load(Task::Embeddings, MODEL)
        .as_embeddings()
        .expect("an embeddings pipeline")
        .run_one(
            TEXT,
            &EmbeddingsOptions::default().with_normalize_embeddings(true),
        )
        .expect("the pipeline embeds")
}

/// `ferroformers serve` on a free port, its log (stderr) collected line by line.
struct Binary {
    child: Child,
    address: String,
    log: JoinHandle<Vec<String>>,
}

impl Binary {
    fn start(rust_log: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferroformers"))
            .args(["serve", "-m", &fixture_model(MODEL), "--port", "0"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let log = std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect());
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut ready)
            .expect("the ready line");
        let address = ready
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("the ready line has the address: {ready}"))
            .to_string();
        Self {
            child,
            address,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Wait for the exit (at most `limit`) and return the log.
    fn wait(mut self, limit: Duration) -> Vec<String> {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the child") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("still running {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log.join().expect("the log reader");
        assert!(status.success(), "exit {status}; log:\n{}", log.join("\n"));
        log
    }
}

/// A UUID as tower-http's `MakeRequestUuid` writes it (v4, hyphenated, lowercase hex).
fn is_uuid(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

#[test]
fn every_request_gets_an_id_that_its_log_lines_carry() {
    let expected = expected_embedding();
    // Info lines, and the debug line the pipeline's blocking task logs when it is done.
    let server = Binary::start("info,ferroformers_server=debug", &[]);
    let client = client();
    let embed = |id: Option<&str>| {
        let mut request = client.post(&server.url("/embed"));
        if let Some(id) = id {
            request = request.set("x-request-id", id);
        }
        let answer = send_json(request, &json!({ "inputs": TEXT }));
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_close_slices(&floats(&answer.json()[0]), &expected, TOLERANCE, "/embed");
        answer
            .header("x-request-id")
            .expect("the answer carries x-request-id")
            .to_string()
    };
    // A sane id of the client's is kept.
    let chosen = "client-7.retry:2_b";
    assert_eq!(embed(Some(chosen)), chosen);
    // None, or one too long or with other characters (a forged log line): a new UUID each.
    let made = embed(None);
    let long = "a".repeat(129);
    let odd = "x\" status=200 fake";
    let replaced = [embed(Some(&long)), embed(Some(odd))];
    for id in [&made, &replaced[0], &replaced[1]] {
        assert!(is_uuid(id), "{id:?} is not a UUID");
    }
    assert!(made != replaced[0] && made != replaced[1] && replaced[0] != replaced[1]);
    // Errors carry one too.
    let missing = answer(client.get(&server.url("/nowhere")).call());
    assert_eq!(missing.status, 404);
    let missing_id = missing.header("x-request-id").expect("an id").to_string();
    assert!(is_uuid(&missing_id), "{missing_id}");
    server.terminate();
    let log = server.wait(Duration::from_secs(30));
    let text = log.join("\n");

    // One closing line per request, each with its own id, method, path and status.
    let finished: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("finished processing request"))
        .collect();
    assert_eq!(finished.len(), 5, "{text}");
    for (id, path, status) in [
        (chosen, "/embed", 200),
        (made.as_str(), "/embed", 200),
        (replaced[0].as_str(), "/embed", 200),
        (replaced[1].as_str(), "/embed", 200),
        (missing_id.as_str(), "/nowhere", 404),
    ] {
        let method = if path == "/embed" { "POST" } else { "GET" };
        let span = format!("request{{request_id={id} method={method} path={path}}}");
        let lines: Vec<&&String> = finished.iter().filter(|l| l.contains(&span)).collect();
        assert_eq!(lines.len(), 1, "one closing line in span {span}:\n{text}");
        assert!(
            lines[0].contains(&format!("status={status}")),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(" INFO "), "{}", lines[0]);
    }
    // What the blocking pool logged while running the pipeline carries the request's id too.
    let pipeline_lines: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("pipeline done"))
        .collect();
    assert_eq!(pipeline_lines.len(), 4, "{text}");
    for (line, id) in pipeline_lines
        .iter()
        .zip([chosen, &made, &replaced[0], &replaced[1]])
    {
        let span = format!("request{{request_id={id} method=POST path=/embed}}");
        assert!(line.contains(&span), "{line} is not in {span}");
    }
    // The refused client ids appear nowhere in the log.
    assert!(!text.contains(&long) && !text.contains("fake"), "{text}");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let expected = expected_embedding();
    let timeout = Duration::from_secs(1);
    let server = TestServer::start(
        load(Task::Embeddings, MODEL),
        ServerConfig {
            header_read_timeout: timeout,
            ..config()
        },
    );
    // Before the connection opens: the server's clock starts when it accepts it.
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.address).unwrap();
    slow.write_all(b"POST /embed HTTP/1.1\r\nHost: test\r\nContent-Ty")
        .unwrap();
    // Another client is served meanwhile.
    let (status, body) = post(&client(), &server.url("/embed"), &json!({ "inputs": TEXT }));
    assert_eq!(status, 200, "{body}");
    assert_close_slices(&floats(&body[0]), &expected, TOLERANCE, "/embed");
    // The server closes the slow one after the timeout, without an answer.
    slow.set_read_timeout(Some(timeout * 10)).unwrap();
    let mut received = Vec::new();
    let closed = slow.read_to_end(&mut received);
    let waited = started.elapsed();
    assert!(
        closed.is_ok() || matches!(&closed, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the server did not close the connection within {:?}: {closed:?}",
        timeout * 10
    );
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        waited >= timeout,
        "closed after {waited:?}, before the timeout"
    );
}

#[test]
fn a_body_that_stops_arriving_gets_408() {
    let timeout = Duration::from_secs(1);
    let server = TestServer::start(
        load(Task::Embeddings, MODEL),
        ServerConfig {
            body_read_timeout: timeout,
            ..config()
        },
    );
    for (path, flavor) in [("/embed", "tei"), ("/v1/embeddings", "openai")] {
        let mut slow = TcpStream::connect(server.address).unwrap();
        // Before the write: the server's body timeout starts once it has read the head this
        // sends, so a clock started after the write could start late and show less than it
        // waited.
        let started = Instant::now();
        write!(
            slow,
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: 40\r\n\r\n{{\"inputs\""
        )
        .unwrap();
        slow.set_read_timeout(Some(timeout * 10)).unwrap();
        let response = read_response(&mut slow).expect("an answer");
        assert!(started.elapsed() >= timeout);
        assert_eq!(response.status, 408, "{path}: {}", response.body);
        let body: Value = serde_json::from_str(&response.body).expect("a JSON body");
        let message = match flavor {
            "tei" => body["error"].as_str(),
            _ => body["error"]["message"].as_str(),
        };
        assert!(
            message.is_some_and(|m| m.contains("timeout")),
            "{path}: {body}"
        );
    }
}

/// One whole HTTP/1.1 response as read off the socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    closes: bool,
    body: String,
}

/// How a request on a raw connection ended.
#[derive(Debug)]
enum Outcome {
    Answered(RawResponse),
    /// The connection ended before the first byte of an answer: the server never took it.
    NotTaken(String),
    /// Part of an answer came, then the connection ended: what must never happen.
    CutOff(String),
}

/// Read one response with a `Content-Length` body (what the server sends for JSON).
fn read_response(stream: &mut TcpStream) -> Result<RawResponse, (usize, String)> {
    let mut received = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut byte) {
            Ok(0) => return Err((received.len(), "closed".into())),
            Ok(n) => received.extend_from_slice(&byte[..n]),
            Err(e) => return Err((received.len(), e.to_string())),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or((received.len(), format!("no status: {head}")))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
    };
    let length: usize = header("content-length")
        .and_then(|n| n.parse().ok())
        .ok_or((received.len(), format!("no content-length: {head}")))?;
    while received.len() < head_end + length {
        match stream.read(&mut byte) {
            Ok(0) => return Err((received.len(), "closed mid-body".into())),
            Ok(n) => received.extend_from_slice(&byte[..n]),
            Err(e) => return Err((received.len(), e.to_string())),
        }
    }
    Ok(RawResponse {
        status,
        closes: header("connection") == Some("close"),
        body: String::from_utf8_lossy(&received[head_end..head_end + length]).into_owned(),
    })
}

/// Send `request` (whole) and read the answer.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> Outcome {
    if let Err(e) = stream.write_all(request) {
        return Outcome::NotTaken(e.to_string());
    }
    match read_response(stream) {
        Ok(response) => Outcome::Answered(response),
        Err((0, why)) => Outcome::NotTaken(why),
        Err((received, why)) => Outcome::CutOff(format!("{why} after {received} bytes")),
    }
}

/// `POST path` with a JSON body, as bytes on the wire (keep-alive: HTTP/1.1's default).
fn raw_post(path: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: test\r\n\r\n";

/// The answer on `stream`, which must be whole.
fn answered(stream: &mut TcpStream, request: &str) -> RawResponse {
    match exchange(stream, request.as_bytes()) {
        Outcome::Answered(response) => response,
        other => panic!("{request}: {other:?}"),
    }
}

#[test]
fn requests_on_open_connections_get_503_while_stopping() {
    let expected = expected_embedding();
    let mut server = TestServer::start(load(Task::Embeddings, MODEL), config());
    let address = server.address;
    let connect = move || TcpStream::connect(address).unwrap();
    // One request in flight through the whole shutdown: its body comes at the end.
    let mut held = HeldRequest::embed(address, &json!({ "inputs": TEXT }).to_string());
    server.wait_for_in_flight(1);
    // Three keep-alive connections, each answered once.
    let (tei, openai) = (
        raw_post("/embed", &json!({ "inputs": TEXT })),
        raw_post("/v1/embeddings", &json!({ "input": TEXT })),
    );
    let (mut embed, mut v1, mut health) = (connect(), connect(), connect());
    for (stream, request) in [
        (&mut embed, &tei),
        (&mut v1, &openai),
        (&mut health, &HEALTH.to_string()),
    ] {
        let response = answered(stream, request);
        assert_eq!(response.status, 200, "{}", response.body);
        assert!(!response.closes);
    }

    // Spare keep-alive connections for /health: an answer given as the server stops accepting,
    // before it starts draining, is a 200 that closes its connection, and no new one can be
    // opened then.
    let mut spares: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut spare = connect();
            assert_eq!(answered(&mut spare, HEALTH).status, 200);
            spare
        })
        .collect();

    server.begin_shutdown();
    // /health answers 503 once the server has the signal...
    let started = Instant::now();
    let refusal = loop {
        let response = answered(&mut health, HEALTH);
        if response.status != 200 {
            break response;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "/health stays 200"
        );
        if response.closes {
            health = spares.pop().expect("a spare connection for /health");
        }
    };
    let check = |response: RawResponse, path: &str| {
        assert_eq!(response.status, 503, "{path}: {}", response.body);
        assert!(response.closes, "{path}: the connection stays open");
        let body: Value = serde_json::from_str(&response.body).expect("JSON");
        let message = if path.starts_with("/v1/") {
            assert_eq!(body["error"]["type"], "server_error", "{body}");
            &body["error"]["message"]
        } else {
            assert_eq!(body["error_type"], "unhealthy", "{body}");
            &body["error"]
        };
        assert!(
            message
                .as_str()
                .is_some_and(|m| m.contains("shutting down")),
            "{body}"
        );
    };
    check(refusal, "/health");
    // ...and so do requests on the connections already open, in either error shape.
    check(answered(&mut embed, &tei), "/embed");
    check(answered(&mut v1, &openai), "/v1/embeddings");
    // New connections are refused: the server closed its listening socket before it began
    // answering 503.
    assert!(!server.accepting(), "still accepting");
    // The request in flight at the signal finishes, and its connection closes after it.
    held.send_rest();
    let response = read_response(&mut held.stream).expect("a whole answer");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.closes);
    let vectors: Value = serde_json::from_str(&response.body).expect("JSON");
    assert_close_slices(&floats(&vectors[0]), &expected, TOLERANCE, "held /embed");
    server.join();
}

/// A request and how it ended; `sent` is when its first byte went out.
struct Record {
    sent: Instant,
    path: &'static str,
    outcome: Outcome,
}

/// Send `request` over and over on keep-alive connections (a new one when the server closes
/// one) until the server closes one after the shutdown was sent.
fn keep_sending(
    address: String,
    path: &'static str,
    request: Vec<u8>,
    shutdown_sent: Arc<Mutex<Option<Instant>>>,
    embedded: Arc<AtomicUsize>,
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut connection: Option<TcpStream> = None;
    loop {
        let stream = match &mut connection {
            Some(stream) => stream,
            None => {
                // Connect under the lock the shutdown is sent under: a connection made before
                // the signal reaches this server's listener, and none is tried after it, when
                // the freed port may be another test's server.
                let sent = shutdown_sent.lock().unwrap();
                if sent.is_some() {
                    return records;
                }
                let stream = TcpStream::connect(&address).unwrap_or_else(|error| {
                    panic!("{path}: connection refused before the shutdown: {error}")
                });
                drop(sent);
                connection.insert(stream)
            }
        };
        let sent = Instant::now();
        let outcome = exchange(stream, &request);
        let keep = matches!(&outcome, Outcome::Answered(r) if !r.closes);
        if path != "/health" && matches!(&outcome, Outcome::Answered(r) if r.status == 200) {
            embedded.fetch_add(1, Ordering::SeqCst);
        }
        records.push(Record {
            sent,
            path,
            outcome,
        });
        if !keep {
            connection = None;
        }
        if path == "/health" {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn sigterm_under_load_finishes_or_refuses_every_request_cleanly() {
    const CLIENTS: usize = 8;
    let expected = expected_embedding();
    let server = Binary::start("warn", &[]);
    let shutdown_sent = Arc::new(Mutex::new(None));
    let embedded = Arc::new(AtomicUsize::new(0));
    let tei = raw_post("/embed", &json!({ "inputs": TEXT }));
    let openai = raw_post("/v1/embeddings", &json!({ "input": TEXT }));
    let health = HEALTH.to_string();
    // Both error shapes: TEI's and, under /v1, OpenAI's.
    let clients: Vec<_> = std::iter::repeat_n(("/embed", tei), CLIENTS - 2)
        .chain(std::iter::repeat_n(("/v1/embeddings", openai), 2))
        .chain([("/health", health)])
        .map(|(path, request)| {
            let (address, shutdown_sent, embedded) = (
                server.address.clone(),
                Arc::clone(&shutdown_sent),
                Arc::clone(&embedded),
            );
            std::thread::spawn(move || {
                keep_sending(address, path, request.into_bytes(), shutdown_sent, embedded)
            })
        })
        .collect();
    // Under load: every client has been answered a few times.
    let started = Instant::now();
    while embedded.load(Ordering::SeqCst) < 10 * CLIENTS {
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
        std::thread::sleep(Duration::from_millis(10));
    }
    {
        let mut sent = shutdown_sent.lock().unwrap();
        *sent = Some(Instant::now());
        server.terminate();
    }
    let log = server.wait(Duration::from_secs(30));
    let shutdown_at = shutdown_sent.lock().unwrap().expect("sent");
    let records: Vec<Record> = clients
        .into_iter()
        .flat_map(|client| client.join().expect("a client thread"))
        .collect();

    let (mut served, mut refused, mut not_taken, mut health_refused) = (0, 0, 0, 0);
    let mut closing = 0;
    for record in &records {
        let path = record.path;
        match &record.outcome {
            Outcome::Answered(response) if response.status == 200 => {
                if path != "/health" {
                    let body: Value = serde_json::from_str(&response.body).expect("JSON");
                    let row = match path {
                        "/embed" => &body[0],
                        _ => &body["data"][0]["embedding"],
                    };
                    let diff = checked_max_abs_diff(&floats(row), &expected)
                        .unwrap_or_else(|why| panic!("{path} answer: {why}"));
                    assert!(diff <= TOLERANCE, "{path} off by {diff:e}");
                    served += 1;
                    closing += usize::from(response.closes);
                }
            }
            Outcome::Answered(response) if response.status == 503 => {
                // A clean refusal: an error body, and the connection closes after it.
                let body: Value = serde_json::from_str(&response.body).expect("JSON");
                let message = if path.starts_with("/v1/") {
                    assert_eq!(body["error"]["type"], "server_error", "{path}: {body}");
                    &body["error"]["message"]
                } else {
                    assert_eq!(body["error_type"], "unhealthy", "{path}: {body}");
                    &body["error"]
                };
                assert!(message
                    .as_str()
                    .is_some_and(|m| m.contains("shutting down")));
                assert!(response.closes, "{path}: 503 without Connection: close");
                if path == "/health" {
                    health_refused += 1;
                } else {
                    refused += 1;
                    closing += 1;
                }
            }
            Outcome::Answered(response) => {
                panic!("{path}: status {}: {}", response.status, response.body)
            }
            Outcome::NotTaken(why) => {
                // Only a request sent after the signal may find its connection closed (an
                // idle keep-alive connection the server closed as it stopped).
                assert!(
                    record.sent >= shutdown_at,
                    "{path}: a request sent before SIGTERM got no answer: {why}"
                );
                not_taken += 1;
            }
            Outcome::CutOff(why) => panic!("{path}: an answer was cut off: {why}"),
        }
    }
    eprintln!(
        "{served} served ({closing} closing), {refused} refused with 503, {not_taken} not taken, \
         /health 503 {health_refused} times; log:\n{}",
        log.join("\n")
    );
    assert!(served >= 10 * CLIENTS);
    // Requests in flight at the signal were answered (200) or refused (503), and told their
    // clients to close the connection rather than send more on it.
    assert!(
        closing > 0,
        "no answer closed its connection while stopping"
    );
    assert!(
        health_refused > 0,
        "/health never answered 503 while stopping"
    );
    // The warnings about the 503s name their request.
    for line in log.iter().filter(|line| line.contains(" WARN ")) {
        assert!(line.contains("request{request_id="), "{line}");
    }
}
