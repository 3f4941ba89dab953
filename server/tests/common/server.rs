//! A server on an ephemeral port for the serve tests, and a blocking HTTP client (ureq) that
//! returns every answer, whatever its status.
#![allow(dead_code)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferroformers::pipelines::{pipeline, AnyPipeline};
use ferroformers::{LoadOptions, Task};
use ferroformers_server::{Server, ServerConfig};
use serde_json::Value;
use ureq::Agent;

use super::fixture_model;

/// How long the tests wait for a server to reach a state (a request in flight, the listener
/// closed, the thread ended) before they fail.
const DEADLINE: Duration = Duration::from_secs(30);

/// A server on its own thread and runtime, stopped (gracefully) when dropped.
pub struct TestServer {
    pub address: SocketAddr,
    /// The inode of its listening socket (see [`listening_sockets`]).
    listener: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Disconnected once the server's thread has ended, however it ended (in a mutex, which
    /// keeps the server `Sync` for the tests that share it between threads).
    ended: Mutex<Receiver<()>>,
}

impl TestServer {
    pub fn start(pipeline: AnyPipeline, config: ServerConfig) -> Self {
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ending, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // Dropped as the thread ends, a panic included.
            let _ending = ending;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let server = Server::bind(pipeline, config).await.expect("binds");
                address_tx
                    .send(server.local_addr())
                    .expect("the test waits");
                server
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serves");
            });
        });
        let address = address_rx
            .recv_timeout(DEADLINE)
            .expect("the server reports its address");
        let listener = listening_sockets()
            .into_iter()
            .find(|(local, _)| *local == proc_net_address(address))
            .map(|(_, inode)| inode)
            .unwrap_or_else(|| panic!("no socket listens on {address} in /proc/net/tcp"));
        Self {
            address,
            listener,
            stop: Some(stop),
            thread: Some(thread),
            ended: Mutex::new(ended),
        }
    }

    /// Whether the server's own listening socket is still open. Unlike trying to connect, this
    /// cannot be fooled by another test's server taking the port once it is free.
    pub fn accepting(&self) -> bool {
        listening_sockets()
            .iter()
            .any(|&(_, inode)| inode == self.listener)
    }

    /// Wait until the server has closed its listening socket (the first thing it does on the
    /// shutdown signal); fail past the deadline.
    pub fn wait_until_not_accepting(&self) {
        let start = Instant::now();
        while self.accepting() {
            assert!(
                start.elapsed() < DEADLINE,
                "the server still listens {DEADLINE:?} after the shutdown signal"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until `/metrics` shows `requests` requests in flight besides the scrape itself
    /// (a request is in flight, holding a slot, once its head has been read); fail past the
    /// deadline.
    pub fn wait_for_in_flight(&self, requests: usize) {
        let client = client();
        let start = Instant::now();
        loop {
            let metrics = get(&client, &self.url("/metrics")).body;
            let in_flight = sample(&metrics, "ferroformers_requests_in_flight");
            if in_flight.is_some_and(|n| n >= (requests + 1) as f64) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{requests} request(s) not in flight after {DEADLINE:?}: {in_flight:?} \
                 (with the scrape)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send the shutdown signal (as SIGTERM would); the server finishes what is in flight.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).expect("the server is running");
        }
    }

    /// Wait until the server has stopped (after [`TestServer::begin_shutdown`]); fail past
    /// the deadline.
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let ended = self.ended.get_mut().unwrap_or_else(PoisonError::into_inner);
            if let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(DEADLINE) {
                panic!("the server has not stopped {DEADLINE:?} after the shutdown signal");
            }
            thread.join().expect("the server thread ends cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn config() -> ServerConfig {
    ServerConfig {
        port: 0,
        ..ServerConfig::new("fixture")
    }
}

pub fn load(task: Task, name: &str) -> AnyPipeline {
    pipeline(task, &fixture_model(name), &LoadOptions::default()).expect("fixture loads")
}

pub fn client() -> Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// A whole answer, whatever its status: ureq reports 4xx and 5xx as errors.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// The answer to a request; panics only when the server did not answer (a transport error).
pub fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("the server answers: {error}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?.to_string();
            Some((name, value))
        })
        .collect();
    let body = response.into_string().expect("a text body");
    Answer {
        status,
        headers,
        body,
    }
}

/// Send `body` as JSON (ureq's `json` feature is off: serde_json writes it).
pub fn send_json(request: ureq::Request, body: &Value) -> Answer {
    answer(
        request
            .set("content-type", "application/json")
            .send_string(&body.to_string()),
    )
}

/// GET `url` and return the answer.
pub fn get(client: &Agent, url: &str) -> Answer {
    answer(client.get(url).call())
}

/// POST `body` and return the status and the JSON answer.
pub fn post(client: &Agent, url: &str, body: &Value) -> (u16, Value) {
    let answer = send_json(client.post(url), body);
    (answer.status, answer.json())
}

pub fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

/// The value of the sample `name{labels}` in Prometheus' text format.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// The TCP sockets in the LISTEN state, as (local address as the kernel writes it, inode),
/// from Linux's `/proc/net/tcp` and `tcp6`. An inode names one socket for as long as it
/// exists, whoever binds its port after it.
pub fn listening_sockets() -> Vec<(String, u64)> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        // tcp6 is absent where IPv6 is off.
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
        // inode ...; state 0A is TCP_LISTEN.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(&local), Some(&"0A"), Some(inode)) = (
                fields.get(1),
                fields.get(3),
                fields.get(9).and_then(|inode| inode.parse().ok()),
            ) {
                sockets.push((local.to_string(), inode));
            }
        }
    }
    sockets
}

/// `address` as `/proc/net/tcp` writes it: each 32-bit word of the IP address as it lies in
/// memory, read as a native integer, in hex; then `:` and the port in hex.
fn proc_net_address(address: SocketAddr) -> String {
    let octets = match address.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let words: String = octets
        .chunks_exact(4)
        .map(|word| {
            format!(
                "{:08X}",
                u32::from_ne_bytes([word[0], word[1], word[2], word[3]])
            )
        })
        .collect();
    format!("{words}:{:04X}", address.port())
}

/// A `POST /embed` whose body stops after its first 5 bytes: the server has the request in
/// flight (holding its slot) until [`HeldRequest::send_rest`]; the answer is read from
/// `stream`.
pub struct HeldRequest {
    pub stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldRequest {
    pub fn embed(address: SocketAddr, body: &str) -> Self {
        let mut stream = TcpStream::connect(address).expect("the server accepts");
        write!(
            stream,
            "POST /embed HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{}",
            body.len(),
            &body[..5]
        )
        .expect("the head is sent");
        stream.flush().expect("the head is sent");
        Self {
            stream,
            rest: body.as_bytes()[5..].to_vec(),
        }
    }

    /// Send the rest of the body.
    pub fn send_rest(&mut self) {
        self.stream
            .write_all(&self.rest)
            .expect("the rest of the body is sent");
    }
}
