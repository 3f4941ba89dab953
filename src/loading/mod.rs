//! Files in: the Hub and its cache (or a local folder), JSON files, and weights
//! (safetensors, sharded or not, and vetted `pytorch_model.bin` pickles).

// The cargo-fuzz targets' door to the pickle check; not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod json;
// Public for the benches and fuzz targets (the weight-file parser); not part of the API.
#[doc(hidden)]
pub mod weights;
