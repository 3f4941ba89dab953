//! Writing GGUF files (version 3), the inverse of [`GgufHeader::parse`]: the header, the
//! metadata in the order given, the tensor table, then each tensor's data at the next multiple
//! of the alignment (32 bytes, ggml's default, which the file then need not state).
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>
//!
//! The table needs every tensor's offset before any data is written, and a model's tensors
//! together can be larger than the memory one wants to spend, so the tensors are planned
//! first (name, shape, type: sizes follow) and their bytes made one at a time while the file
//! is written.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::{GgmlType, GgufValue, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::error::{Error, Result};

/// The version written.
const VERSION: u32 = 3;

/// A tensor to be written: its table entry; the data comes later.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// The tensor's name in the file (llama.cpp's: `blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Its shape in ggml's order, contiguous dimension first (PyTorch's reversed).
    pub dims: Vec<usize>,
    /// How its values are stored.
    pub ggml_type: GgmlType,
}

impl PlannedTensor {
    /// The bytes its data takes, or an error when its rows are not whole blocks.
    pub fn bytes(&self) -> Result<usize> {
        let (block, block_bytes) = self.ggml_type.block();
        let first = self.dims.first().copied().unwrap_or(0);
        if self.dims.is_empty() || self.dims.len() > MAX_DIMS || !first.is_multiple_of(block) {
            return Err(Error::InvalidInput(format!(
                "the GGUF tensor `{}` of dims {:?} cannot be stored as {:?} (1 to {MAX_DIMS} \
                 dimensions, rows of whole blocks of {block})",
                self.name, self.dims, self.ggml_type
            )));
        }
        Ok(self.dims.iter().product::<usize>() / block * block_bytes)
    }
}

/// Write a GGUF file at `path`: `metadata` in its order, then `tensors`, the data of each made
/// by `data` when its turn comes and checked against its planned size. The file is written
/// beside `path` and renamed into place when whole, so a failure leaves no half file.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, GgufValue)],
    tensors: &[PlannedTensor],
    mut data: impl FnMut(&PlannedTensor) -> Result<Vec<u8>>,
) -> Result<()> {
    let partial = path.with_extension("gguf.partial");
    let written = (|| {
        let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut out = Counted {
            inner: BufWriter::new(file),
            written: 0,
            path: &partial,
        };
        let sizes = tensors
            .iter()
            .map(PlannedTensor::bytes)
            .collect::<Result<Vec<_>>>()?;
        // Readers refuse a file that names a key or a tensor twice (llama.cpp's and ours).
        let mut keys = std::collections::HashSet::new();
        if let Some((twice, _)) = metadata.iter().find(|(key, _)| !keys.insert(key)) {
            return Err(Error::InvalidInput(format!(
                "the GGUF key `{twice}` is written twice"
            )));
        }
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = tensors.iter().find(|t| !names.insert(&t.name)) {
            return Err(Error::InvalidInput(format!(
                "the GGUF tensor `{}` is written twice",
                twice.name
            )));
        }
        write_header(&mut out, metadata, tensors, &sizes)?;
        for (tensor, &size) in tensors.iter().zip(&sizes) {
            out.pad_to(DEFAULT_ALIGNMENT)?;
            let bytes = data(tensor)?;
            if bytes.len() != size {
                return Err(Error::InvalidInput(format!(
                    "the GGUF tensor `{}` came to {} bytes where its dims {:?} in {:?} take {size}",
                    tensor.name,
                    bytes.len(),
                    tensor.dims,
                    tensor.ggml_type
                )));
            }
            out.write(&bytes)?;
        }
        out.inner.flush().map_err(|e| Error::io(&partial, e))
    })();
    match written {
        Ok(()) => std::fs::rename(&partial, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// The header, metadata and tensor table; offsets count from the data section's start.
fn write_header(
    out: &mut Counted<'_>,
    metadata: &[(String, GgufValue)],
    tensors: &[PlannedTensor],
    sizes: &[usize],
) -> Result<()> {
    out.write(&MAGIC.to_le_bytes())?;
    out.write(&VERSION.to_le_bytes())?;
    out.write(&(tensors.len() as u64).to_le_bytes())?;
    out.write(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        out.string(key)?;
        out.write(&value_type(value)?.to_le_bytes())?;
        out.value(value)?;
    }
    let mut offset = 0usize;
    for (tensor, &size) in tensors.iter().zip(sizes) {
        out.string(&tensor.name)?;
        out.write(&(tensor.dims.len() as u32).to_le_bytes())?;
        for &dim in &tensor.dims {
            out.write(&(dim as u64).to_le_bytes())?;
        }
        out.write(&tensor.ggml_type.id().to_le_bytes())?;
        out.write(&(offset as u64).to_le_bytes())?;
        offset = (offset + size).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    Ok(())
}

/// `gguf_type` of a value.
fn value_type(value: &GgufValue) -> Result<u32> {
    Ok(match value {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    })
}

/// A writer that counts what it wrote, to pad the data to the alignment.
struct Counted<'a> {
    inner: BufWriter<std::fs::File>,
    written: usize,
    path: &'a Path,
}

impl Counted<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner
            .write_all(bytes)
            .map_err(|e| Error::io(self.path, e))?;
        self.written += bytes.len();
        Ok(())
    }

    fn pad_to(&mut self, alignment: usize) -> Result<()> {
        let padding = self.written.div_ceil(alignment) * alignment - self.written;
        self.write(&vec![0; padding])
    }

    fn string(&mut self, s: &str) -> Result<()> {
        self.write(&(s.len() as u64).to_le_bytes())?;
        self.write(s.as_bytes())
    }

    fn value(&mut self, value: &GgufValue) -> Result<()> {
        match value {
            GgufValue::U8(v) => self.write(&v.to_le_bytes()),
            GgufValue::I8(v) => self.write(&v.to_le_bytes()),
            GgufValue::U16(v) => self.write(&v.to_le_bytes()),
            GgufValue::I16(v) => self.write(&v.to_le_bytes()),
            GgufValue::U32(v) => self.write(&v.to_le_bytes()),
            GgufValue::I32(v) => self.write(&v.to_le_bytes()),
            GgufValue::F32(v) => self.write(&v.to_le_bytes()),
            GgufValue::Bool(v) => self.write(&[u8::from(*v)]),
            GgufValue::String(s) => self.string(s),
            GgufValue::U64(v) => self.write(&v.to_le_bytes()),
            GgufValue::I64(v) => self.write(&v.to_le_bytes()),
            GgufValue::F64(v) => self.write(&v.to_le_bytes()),
            GgufValue::Array(values) => {
                // An array holds values of one type; an empty one says strings, as gguf-py's
                // writer does for an empty list.
                let element = values.first().map_or(Ok(8), value_type)?;
                if values.iter().any(|v| value_type(v).ok() != Some(element)) {
                    return Err(Error::InvalidInput(
                        "a GGUF array must hold values of one type".into(),
                    ));
                }
                self.write(&element.to_le_bytes())?;
                self.write(&(values.len() as u64).to_le_bytes())?;
                values.iter().try_for_each(|v| self.value(v))
            }
        }
    }
}
