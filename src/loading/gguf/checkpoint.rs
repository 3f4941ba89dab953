//! A GGUF file's tensors under transformers' checkpoint names, so that the models that read a
//! safetensors checkpoint read a GGUF one unchanged.
//!
//! llama.cpp's converter renames every tensor (`model.layers.0.self_attn.q_proj.weight` is
//! `blk.0.attn_q.weight`) and changes the layout of some: GPT-2's `Conv1D` weights are stored
//! transposed, as linear layers, and the Llama architecture's q and k projections have the rows
//! of each head reordered for llama.cpp's rotation of interleaved pairs. Each model family
//! says, per checkpoint name, where the tensor is and how it was changed
//! ([`StoredTensor`]); this module undoes the change. Float tensors come out as candle tensors
//! through the `VarBuilder` backend; quantized weights can also be taken as their blocks
//! ([`GgufCheckpoint::blocks`]), rows in the checkpoint's order, for kernels that multiply
//! them as they are.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::{GgmlType, GgufFile, GgufTensor};
use crate::error::{Error, Result};

/// How the converter changed a tensor on its way into the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredLayout {
    /// Stored as the checkpoint holds it.
    AsIs,
    /// A matrix stored transposed: GPT-2's `Conv1D` weights, (in, out) in the checkpoint,
    /// are stored as linear layers' (out, in).
    Transposed,
    /// The rows of each of `heads` heads reordered from transformers' rotation of halves to
    /// llama.cpp's rotation of interleaved pairs: row `2i + j` of a head is the checkpoint's
    /// row `j · head_dim/2 + i`.
    /// (`LlamaModel.permute` in llama.cpp's `conversion/llama.py`, as vendored in the
    /// llama-cpp-python 0.3.36 sdist on PyPI.)
    InterleavedRotary {
        /// Heads of the projection (key-value heads for k).
        heads: usize,
    },
}

impl StoredLayout {
    /// The checkpoint tensor `values` of (PyTorch) `shape` changed as the converter changes
    /// it, with the stored tensor's shape: what reading undoes.
    pub fn store(
        self,
        values: Vec<f32>,
        shape: &[usize],
        name: &str,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        match self {
            StoredLayout::AsIs => Ok((values, shape.to_vec())),
            StoredLayout::Transposed => {
                let &[rows, columns] = shape else {
                    return Err(Error::InvalidWeights(format!(
                        "`{name}` should be a matrix but has shape {shape:?}"
                    )));
                };
                let mut stored = vec![0f32; values.len()];
                for (r, row) in values.chunks_exact(columns.max(1)).enumerate() {
                    for (c, &v) in row.iter().enumerate() {
                        stored[c * rows + r] = v;
                    }
                }
                Ok((stored, vec![columns, rows]))
            }
            StoredLayout::InterleavedRotary { heads } => {
                let rows = shape.first().copied().unwrap_or(0);
                let row = values.len() / rows.max(1);
                let mut stored = vec![0f32; values.len()];
                for (checkpoint, at) in rotary_row_order(rows, heads, name)?.into_iter().enumerate()
                {
                    stored[at * row..(at + 1) * row]
                        .copy_from_slice(&values[checkpoint * row..(checkpoint + 1) * row]);
                }
                Ok((stored, shape.to_vec()))
            }
        }
    }
}

/// Where a checkpoint tensor lives in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensor {
    /// The GGUF tensor's name.
    pub name: String,
    /// How it was changed.
    pub layout: StoredLayout,
}

impl StoredTensor {
    /// The tensor `name`, stored as the checkpoint holds it.
    pub fn as_is(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            layout: StoredLayout::AsIs,
        }
    }
}

/// The map from checkpoint names to GGUF tensors that a model family gives; `None` for a name
/// the file cannot hold.
pub type TensorNames = dyn Fn(&str) -> Option<StoredTensor> + Send + Sync;

/// A quantized weight matrix as stored: `outer` rows of `inner` values, each row whole blocks
/// of `ggml_type`, the rows in the checkpoint's order.
#[derive(Debug, Clone)]
pub struct StoredBlocks<'a> {
    /// The block format.
    pub ggml_type: GgmlType,
    /// Values per row (the layer's inputs).
    pub inner: usize,
    /// Rows (the layer's outputs).
    pub outer: usize,
    /// The rows' bytes, one after another.
    pub bytes: Cow<'a, [u8]>,
}

/// A GGUF file read through a model family's [`TensorNames`]; clones share both.
#[derive(Clone)]
pub struct GgufCheckpoint {
    file: Arc<GgufFile>,
    names: Arc<TensorNames>,
}

impl GgufCheckpoint {
    /// Read `file` through `names`.
    pub fn new(file: Arc<GgufFile>, names: Arc<TensorNames>) -> Self {
        Self { file, names }
    }

    /// The file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn stored(&self, name: &str) -> Option<(&GgufTensor, StoredLayout)> {
        let stored = (self.names)(name)?;
        let tensor = self.file.tensor(&stored.name).ok()?;
        Some((tensor, stored.layout))
    }

    /// The checkpoint tensor `name` as it is stored, with transformers' shape, or an error
    /// naming it when the file lacks it.
    fn located(&self, name: &str) -> Result<(&GgufTensor, StoredLayout, Vec<usize>)> {
        let (tensor, layout) = self.stored(name).ok_or_else(|| {
            let stored = (self.names)(name).map_or_else(
                || "no GGUF tensor stands for it".to_string(),
                |s| format!("the file has no `{}`", s.name),
            );
            Error::InvalidWeights(format!(
                "the GGUF file lacks the tensor `{name}`: {stored}. Convert the model again \
                 with llama.cpp's convert_hf_to_gguf.py"
            ))
        })?;
        // ggml lists the contiguous dimension first: PyTorch's shape reversed.
        let mut shape: Vec<usize> = tensor.dims.iter().rev().copied().collect();
        if layout == StoredLayout::Transposed {
            shape.reverse();
        }
        Ok((tensor, layout, shape))
    }

    /// The quantized weight matrix `name` as its blocks, rows in the checkpoint's order;
    /// `None` when the file stores it as floats (or does not hold it: reading it as a tensor
    /// says so). A `Transposed` matrix comes as stored: the linear layer's (out, in).
    pub fn blocks(&self, name: &str) -> Result<Option<StoredBlocks<'_>>> {
        let Some((tensor, layout)) = self.stored(name) else {
            return Ok(None);
        };
        if matches!(
            tensor.ggml_type,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
        ) {
            return Ok(None);
        }
        let &[inner, outer] = tensor.dims.as_slice() else {
            return Err(Error::InvalidWeights(format!(
                "the GGUF tensor `{}` is quantized but not a matrix (dims {:?})",
                tensor.name, tensor.dims
            )));
        };
        let data = self.file.data(tensor);
        let bytes = match layout {
            StoredLayout::AsIs | StoredLayout::Transposed => Cow::Borrowed(data),
            StoredLayout::InterleavedRotary { heads } => {
                Cow::Owned(rotary_rows_in_order(data, outer, heads, &tensor.name)?)
            }
        };
        Ok(Some(StoredBlocks {
            ggml_type: tensor.ggml_type,
            inner,
            outer,
            bytes,
        }))
    }

    /// Hand back the mapped pages wholly inside `bytes`, if they are the file's
    /// ([`GgufFile::release_bytes`]).
    pub fn release_bytes(&self, bytes: &[u8]) {
        self.file.release_bytes(bytes);
    }

    /// Hand back the mapped pages of the tensor behind `name` once its blocks have been
    /// copied ([`GgufFile::release`]).
    pub fn release(&self, name: &str) {
        if let Some((tensor, _)) = self.stored(name) {
            self.file.release(tensor);
        }
    }

    /// The tensor `name` in transformers' shape and order, as f32 values.
    fn values(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (tensor, layout, shape) = self.located(name)?;
        let stored = self.file.dequantized(tensor)?;
        self.file.release(tensor);
        let values = match layout {
            StoredLayout::AsIs => stored,
            StoredLayout::Transposed => {
                let &[rows, columns] = shape.as_slice() else {
                    return Err(not_a_matrix(tensor));
                };
                // Stored (columns, rows): the checkpoint's (rows, columns) transposed.
                let mut values = vec![0f32; stored.len()];
                for (c, stored_row) in stored.chunks_exact(rows.max(1)).enumerate() {
                    for (r, &v) in stored_row.iter().enumerate() {
                        values[r * columns + c] = v;
                    }
                }
                values
            }
            StoredLayout::InterleavedRotary { heads } => {
                let outer = shape.first().copied().unwrap_or(0);
                rotary_rows_in_order(&stored, outer, heads, &tensor.name)?
            }
        };
        Ok((values, shape))
    }
}

fn not_a_matrix(tensor: &GgufTensor) -> Error {
    Error::InvalidWeights(format!(
        "the GGUF tensor `{}` should be a matrix but has dims {:?}",
        tensor.name, tensor.dims
    ))
}

/// The `rows` rows of a q or k projection of `heads` heads (values or block bytes, each row
/// the same length) in the checkpoint's order (see [`StoredLayout::InterleavedRotary`]).
fn rotary_rows_in_order<T: Copy>(
    stored: &[T],
    rows: usize,
    heads: usize,
    name: &str,
) -> Result<Vec<T>> {
    let row = stored.len() / rows.max(1);
    let order = rotary_row_order(rows, heads, name)?;
    Ok(order
        .into_iter()
        .flat_map(|s| stored[s * row..(s + 1) * row].iter().copied())
        .collect())
}

/// For each checkpoint row of a q or k projection of `heads` heads, the stored row holding it
/// (see [`StoredLayout::InterleavedRotary`]).
fn rotary_row_order(rows: usize, heads: usize, name: &str) -> Result<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(Error::InvalidWeights(format!(
            "the GGUF tensor `{name}` has {rows} rows, which {heads} heads of an even size \
             cannot split: the file's head counts do not fit its tensors"
        )));
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    Ok((0..rows)
        .map(|row| {
            let (head, within) = (row / head_dim, row % head_dim);
            let (j, i) = (within / half, within % half);
            head * head_dim + 2 * i + j
        })
        .collect())
}

impl SimpleBackend for GgufCheckpoint {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, device)?;
        crate::loading::weights::check_shape(name, shape, tensor.dims())?;
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (values, shape) = self.values(name).map_err(candle_core::Error::wrap)?;
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.stored(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::rotary_row_order;

    #[test]
    fn rotary_rows_undo_the_converters_permutation() {
        // convert_hf_to_gguf's permute: reshape(heads, 2, head_dim/2, ...).swapaxes(1, 2).
        let (heads, head_dim) = (2, 6);
        let checkpoint: Vec<usize> = (0..heads * head_dim).collect();
        let mut stored = vec![0; checkpoint.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..head_dim / 2 {
                    stored[h * head_dim + 2 * i + j] = checkpoint[h * head_dim + j * 3 + i];
                }
            }
        }
        let order = rotary_row_order(heads * head_dim, heads, "q").unwrap();
        let restored: Vec<usize> = order.iter().map(|&s| stored[s]).collect();
        assert_eq!(restored, checkpoint);
        assert!(rotary_row_order(12, 5, "q").is_err());
        // Storing is the converter's permutation.
        let values: Vec<f32> = checkpoint.iter().map(|&v| v as f32).collect();
        let layout = super::StoredLayout::InterleavedRotary { heads };
        let (written, shape) = layout.store(values, &[heads * head_dim, 1], "q").unwrap();
        assert_eq!(shape, [heads * head_dim, 1]);
        assert_eq!(
            written,
            stored.iter().map(|&v| v as f32).collect::<Vec<_>>()
        );
        assert!(rotary_row_order(12, 0, "q").is_err());
    }
}
