//! HTTP itself: connections and their timeouts, the graceful stop, request ids and logs,
//! metrics, error bodies, and the router with its layers.

pub(crate) mod connections;
pub(crate) mod error;
pub(crate) mod metrics;
pub(crate) mod request_log;
pub(crate) mod router;
pub(crate) mod shutdown;
