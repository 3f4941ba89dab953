//! Requests served together, knowing nothing of HTTP: the encoder routes' queue (one batched
//! forward for many requests) and the decoding thread of the generation routes (continuous
//! batching). Both answer with the library's errors; the routes map them to status codes.

pub(crate) mod generation;
pub(crate) mod queue;
