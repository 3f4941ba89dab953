//! Stopping without cutting anyone off: once the shutdown signal comes, the server stops
//! accepting connections, answers the requests that arrive on connections already open with
//! 503 (and `/health` with 503, so that load balancers take the server out), closes every
//! connection after its answer, and lets the requests in flight finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::http::error::{Flavor, ServeError};
use ferroformers::Error;

/// Whether the server is shutting down; shared by the connection loop, which sets it, and
/// the middleware, which reads it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Draining(Arc<AtomicBool>);

impl Draining {
    /// From now on, refuse new requests and close connections after their answer.
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// 503 for a request that arrives while shutting down; `Connection: close` on every answer
/// made while shutting down (those of requests that were in flight too), so that no client
/// sends another request on a connection about to close.
pub(crate) async fn refuse_when_draining(
    State(draining): State<Draining>,
    request: Request,
    next: Next,
) -> Response {
    let flavor = Flavor::of_path(request.uri().path());
    let health = request.uri().path() == "/health";
    let refusal = || ServeError::Library(Error::ShuttingDown).into_response_as(flavor);
    let mut response = if draining.is_on() {
        refusal()
    } else {
        next.run(request).await
    };
    // A health check that was running when the drain began answers as of its end: a 200
    // closing its connection would leave its client no chance to see the 503.
    if health && draining.is_on() {
        response = refusal();
    }
    if draining.is_on() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Completes on Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send). The handlers are
/// installed when this is called, not when the future is first polled: call it before saying
/// that the server is ready, so that a signal sent right after can never find the default
/// action (which would end the process at once, without draining). Call it inside a tokio
/// runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            // A handler that could not be installed never fires.
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {},
                () = wait(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received: finishing the requests in flight");
    }
}
