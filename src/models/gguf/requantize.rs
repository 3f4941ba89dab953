//! A GGUF file of float tensors written again with its matrices in another type, as
//! `llama-quantize --pure` rewrites one: the same metadata (but the file type and the
//! alignment, which is written as the default) and tensors, typed by the converter's rule
//! ([`planned`]). A file whose tensors are quantized already is refused, as llama-quantize
//! refuses it without `--allow-requantize`: quantizing blocks' rounded values again loses
//! more than quantizing the originals once.

use std::path::Path;

use super::export::{encode, file_type, planned, GgufWritten};
use crate::error::{Error, Result};
use crate::loading::gguf::{write_gguf, GgmlType, GgufFile, GgufValue, PlannedTensor};

/// Write `file`'s model to `path` with its matrices in `outtype`.
pub(super) fn requantize(file: &GgufFile, outtype: GgmlType, path: &Path) -> Result<GgufWritten> {
    let file_type = file_type(outtype)?;
    let header = file.header();
    if let Some(quantized) = header
        .tensors
        .iter()
        .find(|t| !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
    {
        return Err(Error::InvalidInput(format!(
            "the GGUF file is quantized already (`{}` is {}); write the new file from an f32, \
             f16 or bf16 GGUF file or from the safetensors checkpoint",
            quantized.name,
            quantized.ggml_type.name()
        )));
    }
    let mut metadata: Vec<(String, GgufValue)> = header
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() != "general.alignment")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    for (key, value) in [
        ("general.file_type", file_type),
        ("general.quantization_version", 2),
    ] {
        metadata.retain(|(k, _)| k != key);
        metadata.push((key.to_string(), GgufValue::U32(value)));
    }
    let tensors: Vec<PlannedTensor> = header
        .tensors
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t.dims.iter().rev().copied().collect();
            planned(&t.name, &shape, outtype)
        })
        .collect();
    write_gguf(path, &metadata, &tensors, |tensor| {
        let stored = file.tensor(&tensor.name)?;
        let values = file.dequantized(stored)?;
        file.release(stored);
        encode(tensor, &values)
    })?;
    GgufWritten::of(tensors, path)
}
