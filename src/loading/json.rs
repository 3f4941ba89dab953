//! JSON files of a model: configs, modules' settings, shard indexes, a training run's state.

use std::path::Path;

use crate::error::{Error, Result};

/// Read and parse a JSON file of a model (a config, a module's settings, a shard index); the
/// errors name the file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(path, e))
}

/// Write `value` to `path` as pretty-printed JSON with a final newline, as transformers'
/// `save_pretrained` writes its JSON files; the errors name the file.
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::json(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
