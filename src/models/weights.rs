//! [`ModelWeights`]: a checkpoint's tensors as the models read them, with the [`WeightType`]
//! they are stored as, so that the choice reaches every linear layer as an argument.

use candle_core::{Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::kernels::quant::{Blocks, QuantizedWeights, KERNEL_TYPES};
use crate::kernels::{kernel_mode, KernelMode};
use crate::loading::gguf::{GgufCheckpoint, StoredBlocks};
use crate::loading::weights::WeightFiles;
use crate::models::weight_type::WeightType;

/// A weight matrix (out, in) as a linear layer takes it.
#[derive(Debug)]
pub enum Matrix {
    /// Values, read as the weight type's dtype.
    Dense(Tensor),
    /// A GGUF file's quantized blocks, kept as stored for the block kernels.
    Blocks(QuantizedWeights),
}

/// The tensors of a checkpoint under a key prefix, read as a [`WeightType`] on a device.
///
/// The models walk it as their checkpoint keys nest (`vb.pp("encoder").pp("layer")`), like
/// candle's `VarBuilder`, which it wraps; the weight type travels with it into every layer,
/// where each linear layer stores its weights as it says.
#[derive(Clone)]
pub struct ModelWeights {
    tensors: VarBuilder<'static>,
    weight_type: WeightType,
    /// The GGUF file the tensors come from, whose quantized weights can be read as blocks.
    gguf: Option<GgufCheckpoint>,
}

impl ModelWeights {
    /// Open `files`, reading every tensor as `weight_type`'s [dtype](WeightType::dtype) on
    /// `device`. Opening checks the files' headers; the tensors are read when asked for.
    pub fn open(files: &WeightFiles, weight_type: WeightType, device: &Device) -> Result<Self> {
        Ok(Self {
            tensors: files.var_builder(weight_type.dtype(), device)?,
            weight_type,
            gguf: None,
        })
    }

    /// The tensors of a GGUF file under their checkpoint names, float ones read as
    /// `weight_type`'s dtype (quantized ones dequantized to it, unless a layer takes their
    /// [`blocks`](Self::blocks)).
    pub fn from_gguf(checkpoint: GgufCheckpoint, weight_type: WeightType, device: &Device) -> Self {
        Self {
            tensors: VarBuilder::from_backend(
                Box::new(checkpoint.clone()),
                weight_type.dtype(),
                device.clone(),
            ),
            weight_type,
            gguf: Some(checkpoint),
        }
    }

    /// The quantized weight matrix `name` under this prefix as stored in a GGUF file, rows in
    /// the checkpoint's order; `None` for other checkpoints and for float tensors.
    pub fn blocks(&self, name: &str) -> Result<Option<StoredBlocks<'_>>> {
        let Some(gguf) = &self.gguf else {
            return Ok(None);
        };
        gguf.blocks(&self.path(name))
    }

    /// The checkpoint name of `name` under this prefix.
    fn path(&self, name: &str) -> String {
        let prefix = self.tensors.prefix();
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    }

    /// The weights under `prefix.` (a checkpoint key's next component).
    pub fn pp(&self, prefix: impl ToString) -> Self {
        Self {
            tensors: self.tensors.pp(prefix),
            weight_type: self.weight_type,
            gguf: self.gguf.clone(),
        }
    }

    /// The tensor `name` under this prefix, which must have `shape`; an error naming the
    /// tensor when the checkpoint lacks it or holds another shape.
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        Ok(self.tensors.get(shape, name)?)
    }

    /// The weight matrix `name` under this prefix, `(out, in)`: a GGUF file's quantized matrix
    /// as its blocks when the CPU's kernels multiply that block type, else its values (a
    /// block type without kernels dequantized).
    pub fn matrix(&self, (outer, inner): (usize, usize), name: &str) -> Result<Matrix> {
        self.matrix_or((outer, inner), name, || self.get((outer, inner), name))
    }

    /// [`ModelWeights::matrix`] of a checkpoint that stores the matrix transposed, (in, out),
    /// as GPT-2's `Conv1D` does; a GGUF file stores it as a linear layer's (out, in).
    pub fn transposed_matrix(&self, (outer, inner): (usize, usize), name: &str) -> Result<Matrix> {
        self.matrix_or((outer, inner), name, || {
            Ok(self.get((inner, outer), name)?.t()?)
        })
    }

    fn matrix_or(
        &self,
        (outer, inner): (usize, usize),
        name: &str,
        dense: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Matrix> {
        if let Some(blocks) = self.kernel_blocks((outer, inner), name)? {
            let weights = self.stack_blocks(&[blocks])?;
            self.release(name);
            return Ok(Matrix::Blocks(weights));
        }
        Ok(Matrix::Dense(dense()?))
    }

    /// The matrices `<part>.weight` of `parts` (name, outputs) under this prefix, one below the
    /// other, each of `inner` inputs: a fused q/k/v or gate/up projection. Blocks when every
    /// part is a GGUF file's quantized matrix of a type with kernels (the types may differ),
    /// copied from the file once; otherwise the parts' values, concatenated.
    pub fn stacked_matrix(&self, parts: &[(&str, usize)], inner: usize) -> Result<Matrix> {
        let names: Vec<String> = parts
            .iter()
            .map(|(name, _)| format!("{name}.weight"))
            .collect();
        let blocks = parts
            .iter()
            .zip(&names)
            .map(|(&(_, outer), name)| self.kernel_blocks((outer, inner), name))
            .collect::<Result<Option<Vec<_>>>>()?;
        if let Some(blocks) = blocks {
            let weights = self.stack_blocks(&blocks)?;
            names.iter().for_each(|name| self.release(name));
            return Ok(Matrix::Blocks(weights));
        }
        let weights = parts
            .iter()
            .zip(&names)
            .map(|(&(_, outer), name)| self.get((outer, inner), name))
            .collect::<Result<Vec<_>>>()?;
        Ok(Matrix::Dense(Tensor::cat(&weights, 0)?))
    }

    /// The matrix `name` as its GGUF blocks when the file holds it in a type the CPU's block
    /// kernels multiply (and those kernels run); an error when its shape is not `(outer,
    /// inner)`.
    fn kernel_blocks(
        &self,
        (outer, inner): (usize, usize),
        name: &str,
    ) -> Result<Option<Blocks<'_>>> {
        let kernels = self.tensors.device().is_cpu() && kernel_mode() != KernelMode::Reference;
        let Some(stored) = self
            .blocks(name)?
            .filter(|b| kernels && KERNEL_TYPES.contains(&b.ggml_type))
        else {
            return Ok(None);
        };
        if (stored.outer, stored.inner) != (outer, inner) {
            return Err(Error::InvalidWeights(format!(
                "the GGUF tensor for `{}` is {} × {}, the config makes it {outer} × {inner}: \
                 the file's metadata does not fit its tensors",
                self.path(name),
                stored.outer,
                stored.inner
            )));
        }
        Ok(Some(Blocks {
            ty: stored.ggml_type,
            inner,
            outer,
            bytes: stored.bytes,
        }))
    }

    /// The block kernels' matrix of `blocks`, the file's pages handed back piece by piece as
    /// they are copied (an embedding table is not resident twice at the load's peak).
    fn stack_blocks(&self, blocks: &[Blocks]) -> Result<QuantizedWeights> {
        match &self.gguf {
            Some(gguf) => {
                QuantizedWeights::stack_copied(blocks, &mut |piece| gguf.release_bytes(piece))
            }
            None => QuantizedWeights::stack(blocks),
        }
    }

    /// Hand back the mapped pages of the GGUF tensor behind `name` once it has been copied.
    fn release(&self, name: &str) {
        if let Some(gguf) = &self.gguf {
            gguf.release(&self.path(name));
        }
    }

    /// Whether the checkpoint has the tensor `name` under this prefix.
    pub fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_tensor(name)
    }

    /// The device the tensors are read onto.
    pub fn device(&self) -> &Device {
        self.tensors.device()
    }

    /// How the weights are stored once loaded.
    pub fn weight_type(&self) -> WeightType {
        self.weight_type
    }
}

impl std::fmt::Debug for ModelWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // candle's VarBuilder has no Debug; its prefix is what tells one place from another.
        f.debug_struct("ModelWeights")
            .field("prefix", &self.tensors.prefix())
            .field("weight_type", &self.weight_type)
            .finish()
    }
}
