//! Entry points for the cargo-fuzz targets in `fuzz/`, to parsers that the public API reaches
//! only through files on disk. Hidden from the docs and not part of the API: the pickle check
//! is private because callers should load checkpoints, not vet pickles, but a fuzzer should
//! hand it bytes directly rather than pay for a zip archive and a file per input.

use crate::error::{Error, Result};

/// Vet the pickle of a `pytorch_model.bin` (its `data.pkl`) exactly as loading does.
pub fn check_pickle(pickle: &[u8]) -> Result<()> {
    crate::loading::weights::pickle::check_pickle(pickle).map_err(Error::InvalidWeights)
}
