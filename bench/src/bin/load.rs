//! A load generator for `ferroformers serve` (or any HTTP server): `--clients` threads, each
//! with its own keep-alive connection, POST `--body` to `--url` one request after another for
//! `--seconds`, then one JSON line: requests, errors (by status, `transport` when no answer
//! came), throughput and latency percentiles over the successful requests.
//!
//! ```text
//! cargo run --release -p ferroformers-bench --bin load -- \
//!     --url http://127.0.0.1:8080/embed --body '{"inputs":"hello"}' --clients 32 --seconds 60
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

/// What to send, how hard and for how long.
struct Load {
    url: String,
    body: String,
    clients: usize,
    duration: Duration,
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// Seconds each successful request took.
    latencies: Vec<f64>,
    /// Failed requests by status code, or `transport`.
    errors: BTreeMap<String, u64>,
}

const USAGE: &str = "usage: load --url URL --body JSON [--clients 32] [--seconds 60]";

fn parse(args: impl Iterator<Item = String>) -> Result<Load, String> {
    let mut url = None;
    let mut body = None;
    let mut clients = 32;
    let mut seconds = 60.0;
    let mut args = args.skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |what: &str| format!("{flag} takes {what}, not `{value}`");
        match flag.as_str() {
            "--url" => url = Some(value),
            "--body" => body = Some(value),
            "--clients" => clients = value.parse().map_err(|_| number("a count"))?,
            "--seconds" => seconds = value.parse().map_err(|_| number("seconds"))?,
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if clients == 0 {
        return Err("--clients must be at least 1".to_string());
    }
    Ok(Load {
        url: url.ok_or_else(|| format!("--url is required\n{USAGE}"))?,
        body: body.ok_or_else(|| format!("--body is required\n{USAGE}"))?,
        clients,
        duration: Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("--seconds takes a positive number, not {seconds}"))?,
    })
}

/// Send requests until `until`, one at a time on one keep-alive connection.
fn client(load: &Load, until: Instant) -> Tally {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let mut tally = Tally::default();
    while Instant::now() < until {
        let started = Instant::now();
        let outcome = agent
            .post(&load.url)
            .set("content-type", "application/json")
            .send_string(&load.body);
        // Read the whole body, so that the connection is reused and the time includes it.
        match outcome.map(|response| response.into_string()) {
            Ok(Ok(_)) => tally.latencies.push(started.elapsed().as_secs_f64()),
            Ok(Err(_)) | Err(ureq::Error::Transport(_)) => {
                *tally.errors.entry("transport".to_string()).or_default() += 1
            }
            Err(ureq::Error::Status(status, _)) => {
                *tally.errors.entry(status.to_string()).or_default() += 1
            }
        }
    }
    tally
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (q * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied()
}

fn main() -> ExitCode {
    let load = match parse(std::env::args()) {
        Ok(load) => load,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let until = started + load.duration;
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..load.clients)
            .map(|_| scope.spawn(|| client(&load, until)))
            .collect();
        clients
            .into_iter()
            .map(|client| client.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = tallies.iter().flat_map(|t| t.latencies.clone()).collect();
    latencies.sort_by(f64::total_cmp);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for tally in &tallies {
        for (kind, count) in &tally.errors {
            *errors.entry(kind.clone()).or_default() += count;
        }
    }
    let failed: u64 = errors.values().sum();
    let ms = |q| quantile(&latencies, q).map(|s| s * 1000.0);
    println!(
        "{}",
        json!({
            "url": load.url,
            "clients": load.clients,
            "seconds": elapsed,
            "requests": latencies.len() as u64 + failed,
            "ok": latencies.len(),
            "errors": failed,
            "errors_by_kind": errors,
            "throughput_rps": latencies.len() as f64 / elapsed,
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
        })
    );
    ExitCode::SUCCESS
}
