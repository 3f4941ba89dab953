//! Files in: the Hub and its cache (or a local folder), JSON files, and weights
//! (safetensors, sharded or not, vetted `pytorch_model.bin` pickles, and GGUF files' headers);
//! and files out: a folder pushed to the Hub in one commit, GGUF files written.

// The cargo-fuzz targets' door to the pickle check; not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod gguf;
pub mod hub;
pub mod json;
pub mod upload;
// Public for the benches and fuzz targets (the weight-file parser); not part of the API.
#[doc(hidden)]
pub mod weights;
