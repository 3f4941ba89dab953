//! A server on an ephemeral port for the serve tests, and a blocking HTTP client (ureq) that
//! returns every answer, whatever its status.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ferroformers::pipelines::{pipeline, AnyPipeline};
use ferroformers::{LoadOptions, Task};
use ferroformers_server::{Server, ServerConfig};
use serde_json::Value;
use ureq::Agent;

use super::fixture_model;

/// A server on its own thread and runtime, stopped (gracefully) when dropped.
pub struct TestServer {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(pipeline: AnyPipeline, config: ServerConfig) -> Self {
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
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
            .recv_timeout(Duration::from_secs(30))
            .expect("the server reports its address");
        Self {
            address,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Send the shutdown signal (as SIGTERM would); the server finishes what is in flight.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).expect("the server is running");
        }
    }

    /// Wait until the server has stopped (after [`TestServer::begin_shutdown`]).
    pub fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
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
