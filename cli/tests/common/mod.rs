//! The library's test helpers (`tests/common` at the workspace root) and the server's.

#[path = "../../../tests/common/mod.rs"]
mod shared;
pub use shared::*;

#[path = "../../../server/tests/common/server.rs"]
pub mod server;
