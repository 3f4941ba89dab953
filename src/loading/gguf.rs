//! Reading GGUF files, llama.cpp's format for quantized checkpoints: a header, key-value
//! metadata (architecture, hyper-parameters, tokenizer, chat template), a table of tensors
//! (name, shape, ggml type, offset) and the tensors' data, aligned.
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>
//!
//! candle has a reader, but it allocates whatever a length field says (a string of 2^60 bytes,
//! a shape of 2^32 dimensions) before reading it, so a hostile file aborts the process. Here
//! every count and length is checked against the bytes that remain before anything is
//! allocated, and every tensor's data against the file's end, so a lying file is an
//! [`Error::InvalidWeights`], never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

mod checkpoint;
mod dequantize;
mod write;
pub use checkpoint::{GgufCheckpoint, StoredBlocks, StoredLayout, StoredTensor, TensorNames};
pub use dequantize::dequantize;
pub(crate) use dequantize::scales_and_mins;
pub use write::{write_gguf, PlannedTensor};

/// `GGUF`, read as a little-endian u32.
const MAGIC: u32 = u32::from_le_bytes(*b"GGUF");
/// The alignment of the tensor data when `general.alignment` does not say.
const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: usize = 4;

/// A metadata value, typed as the file types it (`gguf_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `GGUF_TYPE_UINT8`.
    U8(u8),
    /// `GGUF_TYPE_INT8`.
    I8(i8),
    /// `GGUF_TYPE_UINT16`.
    U16(u16),
    /// `GGUF_TYPE_INT16`.
    I16(i16),
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_INT32`.
    I32(i32),
    /// `GGUF_TYPE_FLOAT32`.
    F32(f32),
    /// `GGUF_TYPE_BOOL`.
    Bool(bool),
    /// `GGUF_TYPE_STRING` (UTF-8).
    String(String),
    /// `GGUF_TYPE_ARRAY`: values of one type.
    Array(Vec<GgufValue>),
    /// `GGUF_TYPE_UINT64`.
    U64(u64),
    /// `GGUF_TYPE_INT64`.
    I64(i64),
    /// `GGUF_TYPE_FLOAT64`.
    F64(f64),
}

impl GgufValue {
    /// The value as an unsigned integer, whatever integer type holds it (the files use
    /// several for the same key); `None` for negatives and non-integers.
    pub fn to_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, from either float type.
    pub fn to_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, for a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&str> for GgufValue {
    fn from(value: &str) -> Self {
        GgufValue::String(value.to_string())
    }
}

impl From<String> for GgufValue {
    fn from(value: String) -> Self {
        GgufValue::String(value)
    }
}

/// A tensor's element type (`ggml_type`): plain floats, or blocks of quantized values that
/// share scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: an f16 scale and 32 4-bit values.
    Q4_0,
    /// 32 values: f16 scale and minimum, 32 4-bit values.
    Q4_1,
    /// 32 values: an f16 scale, 32 5-bit values.
    Q5_0,
    /// 32 values: f16 scale and minimum, 32 5-bit values.
    Q5_1,
    /// 32 values: an f16 scale and 32 int8 values.
    Q8_0,
    /// 32 values: f16 scale and sum, 32 int8 values.
    Q8_1,
    /// 256 values in 16 sub-blocks, 2-bit.
    Q2_K,
    /// 256 values in 16 sub-blocks, 3-bit.
    Q3_K,
    /// 256 values in 8 sub-blocks, 4-bit, 6-bit sub-block scales and minimums.
    Q4_K,
    /// 256 values in 8 sub-blocks, 5-bit.
    Q5_K,
    /// 256 values in 16 sub-blocks, 6-bit, 8-bit sub-block scales.
    Q6_K,
    /// 256 values, int8 with an f32 scale and block sums.
    Q8_K,
}

impl GgmlType {
    /// Every type, in ggml's order of ids.
    const ALL: [GgmlType; 15] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::Q8_K,
        Self::BF16,
    ];

    /// The type of ggml's id (`enum ggml_type` in ggml.h), or an error naming the id.
    pub fn from_id(id: u32) -> Result<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id).ok_or_else(|| {
            Error::InvalidWeights(format!(
                "a GGUF tensor has ggml type {id}, which this library does not read \
                 (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and the \
                 K-quants Q2_K to Q8_K): convert the model to one of those"
            ))
        })
    }

    /// ggml's id of the type (`enum ggml_type`), as a file's tensor table holds it.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::Q8_K => 15,
            Self::BF16 => 30,
        }
    }

    /// llama.cpp's lower-case name of the type (`q4_0`, `bf16`), as its tools take it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q8_1 => "q8_1",
            Self::Q2_K => "q2_k",
            Self::Q3_K => "q3_k",
            Self::Q4_K => "q4_k",
            Self::Q5_K => "q5_k",
            Self::Q6_K => "q6_k",
            Self::Q8_K => "q8_k",
        }
    }

    /// Values per block, and bytes per block (ggml's `blck_size` and `type_size`).
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 2 + 16),
            Self::Q4_1 => (32, 2 + 2 + 16),
            Self::Q5_0 => (32, 2 + 4 + 16),
            Self::Q5_1 => (32, 2 + 2 + 4 + 16),
            Self::Q8_0 => (32, 2 + 32),
            Self::Q8_1 => (32, 2 + 2 + 32),
            Self::Q2_K => (256, 16 + 64 + 2 + 2),
            Self::Q3_K => (256, 32 + 64 + 12 + 2),
            Self::Q4_K => (256, 2 + 2 + 12 + 128),
            Self::Q5_K => (256, 2 + 2 + 12 + 32 + 128),
            Self::Q6_K => (256, 128 + 64 + 16 + 2),
            Self::Q8_K => (256, 4 + 256 + 32),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// The tensor's name (llama.cpp's: `blk.0.attn_q.weight`, ...).
    pub name: String,
    /// Its shape in ggml's order: the first dimension is the one whose values are contiguous
    /// (for a weight matrix, the input size; PyTorch's shape reversed).
    pub dims: Vec<usize>,
    /// How its values are stored.
    pub ggml_type: GgmlType,
    /// Where its data starts, from the start of the file.
    pub start: usize,
    /// Its data's length in bytes.
    pub bytes: usize,
}

impl GgufTensor {
    /// The number of values.
    pub fn elements(&self) -> usize {
        // Checked to fit when the table was read.
        self.dims.iter().product()
    }
}

/// A GGUF file's header, metadata and tensor table, read from its bytes.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// The tensor table, in file order.
    pub tensors: Vec<GgufTensor>,
}

impl GgufHeader {
    /// Read and check the header of `bytes`, the whole file: every length and count within
    /// the bytes that remain, every tensor's data within the file, aligned, not overlapping.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut reader = Reader { bytes, position: 0 };
        let magic = reader.u32()?;
        if magic != MAGIC {
            return Err(invalid("it does not start with `GGUF`: not a GGUF file"));
        }
        let version = reader.u32()?;
        if !(2..=3).contains(&version) {
            return Err(invalid(&format!(
                "it is GGUF version {version}; versions 2 and 3 are read (convert a version-1 \
                 file again with llama.cpp's convert_hf_to_gguf.py)"
            )));
        }
        let tensor_count = reader.u64()?;
        let metadata_count = reader.u64()?;
        let mut metadata = BTreeMap::new();
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        for _ in 0..reader.count(metadata_count, 13)? {
            let key = reader.string()?;
            let value = reader.value(0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(invalid(&format!("the metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => value
                .to_u64()
                .and_then(|a| usize::try_from(a).ok())
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    invalid(&format!(
                        "general.alignment is {value:?}, not a power of two"
                    ))
                })?,
        };
        // A tensor entry takes at least 8 (name length) + 4 (dimensions) + 4 (type) + 8.
        let count = reader.count(tensor_count, 24)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let name = reader.string()?;
            let n_dims = reader.u32()? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(invalid(&format!(
                    "the tensor `{name}` has {n_dims} dimensions; ggml tensors have 1 to {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let dim = usize::try_from(reader.u64()?).map_err(|_| too_large(&name))?;
                dims.push(dim);
            }
            let ggml_type = GgmlType::from_id(reader.u32()?)?;
            let offset = usize::try_from(reader.u64()?).map_err(|_| too_large(&name))?;
            entries.push((name, dims, ggml_type, offset));
        }
        let data_start = reader.position.div_ceil(alignment) * alignment;
        let mut tensors: Vec<GgufTensor> = Vec::with_capacity(entries.len());
        for (name, dims, ggml_type, offset) in entries {
            let elements = dims
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| too_large(&name))?;
            let (block, block_bytes) = ggml_type.block();
            if dims[0] % block != 0 {
                return Err(invalid(&format!(
                    "the tensor `{name}` ({ggml_type:?}) has rows of {} values, not a multiple \
                     of its blocks of {block}",
                    dims[0]
                )));
            }
            let size = (elements / block)
                .checked_mul(block_bytes)
                .ok_or_else(|| too_large(&name))?;
            if offset % alignment != 0 {
                return Err(invalid(&format!(
                    "the tensor `{name}` starts at offset {offset}, not a multiple of the \
                     alignment {alignment}"
                )));
            }
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| too_large(&name))?;
            let end = start.checked_add(size).ok_or_else(|| too_large(&name))?;
            if end > bytes.len() {
                return Err(invalid(&format!(
                    "the tensor `{name}` ends at byte {end}, past the file's end at {}: the \
                     file is cut short; download it again",
                    bytes.len()
                )));
            }
            if tensors.iter().any(|t| t.name == name) {
                return Err(invalid(&format!("the tensor `{name}` appears twice")));
            }
            tensors.push(GgufTensor {
                name,
                dims,
                ggml_type,
                start,
                bytes: size,
            });
        }
        let mut spans: Vec<(usize, usize, &str)> = tensors
            .iter()
            .map(|t| (t.start, t.start + t.bytes, t.name.as_str()))
            .collect();
        spans.sort_unstable();
        if let Some(pair) = spans.windows(2).find(|pair| pair[1].0 < pair[0].1) {
            return Err(invalid(&format!(
                "the data of the tensors `{}` and `{}` overlap",
                pair[0].2, pair[1].2
            )));
        }
        Ok(Self {
            version,
            metadata,
            tensors,
        })
    }

    /// A metadata value, or an error naming the key.
    pub fn get(&self, key: &str) -> Result<&GgufValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| invalid(&format!("its metadata has no `{key}`")))
    }

    /// `general.architecture`: llama.cpp's name of the model's architecture (`llama`, `qwen2`,
    /// `gpt2`, ...), which prefixes its hyper-parameters' keys.
    pub fn architecture(&self) -> Result<&str> {
        self.string("general.architecture")
    }

    /// A string value, or an error naming the key.
    pub fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| invalid(&format!("its metadata `{key}` is not a string")))
    }

    /// A count or size, or an error naming the key.
    pub fn count(&self, key: &str) -> Result<usize> {
        self.optional_count(key)?
            .ok_or_else(|| invalid(&format!("its metadata has no `{key}`")))
    }

    /// A count or size when the metadata has `key`; an error when it holds something else
    /// (a negative number, a list: per-layer values that no model here has).
    pub fn optional_count(&self, key: &str) -> Result<Option<usize>> {
        self.metadata
            .get(key)
            .map(|value| {
                value
                    .to_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| {
                        invalid(&format!(
                            "its metadata `{key}` is not a single non-negative integer"
                        ))
                    })
            })
            .transpose()
    }

    /// A number when the metadata has `key`; an error when it holds something else.
    pub fn optional_number(&self, key: &str) -> Result<Option<f64>> {
        self.metadata
            .get(key)
            .map(|value| {
                value
                    .to_f64()
                    .or_else(|| value.to_u64().map(|v| v as f64))
                    .ok_or_else(|| invalid(&format!("its metadata `{key}` is not a number")))
            })
            .transpose()
    }
}

/// Whether `model` names a GGUF file (an existing `.gguf` file), which loads on its own rather
/// than as a repository.
pub fn is_gguf_file(model: &Path) -> bool {
    model.is_file() && model.extension().is_some_and(|e| e == "gguf")
}

/// A GGUF file, memory-mapped, with its header read.
#[derive(Debug)]
pub struct GgufFile {
    header: GgufHeader,
    map: memmap2::Mmap,
}

impl GgufFile {
    /// Map `path` and read its header (see [`GgufHeader::parse`]).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is mapped read-only; it must not change while it is mapped, which
        // holds for model files (the Hub cache writes each blob once).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = GgufHeader::parse(&map).map_err(|e| match e {
            Error::InvalidWeights(why) => {
                Error::InvalidWeights(format!("{}: {why}", path.display()))
            }
            other => other,
        })?;
        Ok(Self { header, map })
    }

    /// The header: metadata and tensor table.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The bytes of `tensor`, one of this file's.
    pub fn data(&self, tensor: &GgufTensor) -> &[u8] {
        // Within the file: checked when the header was read.
        &self.map[tensor.start..tensor.start + tensor.bytes]
    }

    /// Hand the pages of `tensor`'s data back once it has been read (converted or copied), so
    /// that the mapped file does not count in the process's resident memory beside what was
    /// made of it (see `loading::weights::released`); reading it again faults them back in.
    pub fn release(&self, tensor: &GgufTensor) {
        crate::loading::weights::release(
            self.data(tensor),
            crate::loading::weights::Rounding::Outward,
        );
    }

    /// Hand back the pages wholly inside `bytes` when they are part of this file's mapping
    /// (as [`GgufFile::release`]); bytes elsewhere (a copy on the heap) are left alone.
    pub fn release_bytes(&self, bytes: &[u8]) {
        let map = self.map.as_ptr_range();
        let inside = map.start <= bytes.as_ptr() && bytes.as_ptr_range().end <= map.end;
        if inside {
            crate::loading::weights::release(bytes, crate::loading::weights::Rounding::Inward);
        }
    }

    /// The values of `tensor`, one of this file's, as f32 (see [`dequantize`]).
    pub fn dequantized(&self, tensor: &GgufTensor) -> Result<Vec<f32>> {
        let mut out = vec![0f32; tensor.elements()];
        dequantize(tensor.ggml_type, self.data(tensor), &mut out)?;
        Ok(out)
    }

    /// The tensor named `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&GgufTensor> {
        self.header
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| invalid(&format!("it has no tensor `{name}`")))
    }
}

fn invalid(why: &str) -> Error {
    Error::InvalidWeights(format!("GGUF file: {why}"))
}

fn too_large(name: &str) -> Error {
    invalid(&format!(
        "the tensor `{name}` has a size or offset too large for this machine"
    ))
}

/// The bytes of a file and where reading has got to; every read checks what remains.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

/// Nesting of arrays within arrays that a file may use (the spec allows it; no model does).
const MAX_NESTING: usize = 2;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let remaining = self.bytes.len() - self.position;
        if n > remaining {
            return Err(invalid(&format!(
                "it ends at byte {} where {n} more bytes were due: it is cut short or damaged; \
                 download it again",
                self.bytes.len()
            )));
        }
        let slice = &self.bytes[self.position..self.position + n];
        self.position += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_bytes` each, checked against the bytes that remain
    /// so that a lying count fails before anything is allocated for it.
    fn count(&self, count: u64, min_bytes: usize) -> Result<usize> {
        let remaining = (self.bytes.len() - self.position) / min_bytes;
        match usize::try_from(count) {
            Ok(count) if count <= remaining => Ok(count),
            _ => Err(invalid(&format!(
                "it says {count} entries follow where {remaining} at most fit: it is damaged"
            ))),
        }
    }

    fn string(&mut self) -> Result<String> {
        let length = self.u64()?;
        let length = self.count(length, 1)?;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid("a string is not UTF-8"))
    }

    /// A value of the type id that comes first; `depth` arrays deep.
    fn value(&mut self, depth: usize) -> Result<GgufValue> {
        let kind = self.u32()?;
        self.value_of(kind, depth)
    }

    fn value_of(&mut self, kind: u32, depth: usize) -> Result<GgufValue> {
        Ok(match kind {
            0 => GgufValue::U8(u8::from_le_bytes(self.array()?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                other => return Err(invalid(&format!("a boolean holds {other}"))),
            },
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(invalid("its arrays nest deeper than any model's"));
                }
                let element = self.u32()?;
                let length = self.u64()?;
                let length = self.count(length, element_bytes(element)?)?;
                let mut values = Vec::with_capacity(length);
                for _ in 0..length {
                    values.push(self.value_of(element, depth + 1)?);
                }
                GgufValue::Array(values)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(invalid(&format!("a value has the unknown type {other}"))),
        })
    }
}

/// The fewest bytes a value of type `kind` takes (a string its length field, an array its
/// type and count), to bound an array's count by the bytes that remain.
fn element_bytes(kind: u32) -> Result<usize> {
    Ok(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        other => return Err(invalid(&format!("an array holds the unknown type {other}"))),
    })
}

#[cfg(test)]
mod tests;
