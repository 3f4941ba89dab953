//! The accept loop: each connection served by hyper's HTTP/1 connection with a timer, so that
//! a client that never finishes its request head is disconnected (axum::serve sets no header
//! timeout), and the graceful stop of [`super::shutdown`].

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::http::shutdown::Draining;

/// How long, once shutting down, connections that are open but idle are left open so that
/// a request their client already sent arrives and gets its 503 (rather than the connection
/// closing under it); connections that answered close by themselves before.
const IDLE_CONNECTION_LINGER: Duration = Duration::from_millis(500);

/// How often the linger checks whether every connection closed.
const LINGER_CHECK: Duration = Duration::from_millis(10);

/// The timeouts of [`serve`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// Longest wait for a request head (idle keep-alive connections included).
    pub header_read: Duration,
    /// How long requests in flight may take to finish after the shutdown signal.
    pub shutdown: Duration,
}

/// Serve `router` on `listener` until `shutdown` completes, then drain (see the module docs).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    draining: Draining,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let connections = GracefulShutdown::new();
    let serve_one = |stream: TcpStream| {
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            // Closed by the client, or by the header timeout: nobody to tell.
            if let Err(error) = connection.await {
                tracing::debug!("connection closed: {error}");
            }
        });
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_one(stream),
                Err(error) => pause_after(error).await,
            },
        }
    }
    // Connections the kernel completed but not yet handed over were accepted as far as
    // their clients know: serve them rather than reset them.
    loop {
        tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_one(stream),
                Err(_) => break,
            },
            () = std::future::ready(()) => break,
        }
    }
    drop(listener);
    // Only now, so that a 503 (from /health, say) tells that no connection is accepted.
    draining.start();

    let deadline = Instant::now() + timeouts.shutdown;
    let linger_until = Instant::now() + IDLE_CONNECTION_LINGER.min(timeouts.shutdown);
    while connections.count() > 0 && Instant::now() < linger_until {
        tokio::time::sleep(LINGER_CHECK).await;
    }
    // Idle connections close now; busy ones after their answer.
    if tokio::time::timeout_at(deadline, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running {:?} after the shutdown signal: stopping anyway",
            timeouts.shutdown
        );
    }
}

/// After a failed accept: go on at once when only that connection failed; else (out of file
/// descriptors, say) wait a second rather than spin, as axum::serve does.
async fn pause_after(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("cannot accept connections: {error}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
