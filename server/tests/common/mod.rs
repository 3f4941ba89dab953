//! The library's test helpers (`tests/common` at the workspace root), and a server on an
//! ephemeral port for the tests of this package and the command's.

#[path = "../../../tests/common/mod.rs"]
mod shared;
pub use shared::*;

pub mod server;
