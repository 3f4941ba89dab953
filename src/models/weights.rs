//! [`ModelWeights`]: a checkpoint's tensors as the models read them, with the [`WeightType`]
//! they are stored as, so that the choice reaches every linear layer as an argument.

use candle_core::{Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};
use crate::kernels::quant::{Blocks, KERNEL_TYPES};
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
    Blocks(BlockMatrix),
}

/// A matrix's GGUF blocks, rows in the checkpoint's order, copied out of the file (whose pages
/// are then handed back): a layer's weights are made of one or several of these at once.
#[derive(Debug)]
pub struct BlockMatrix {
    ty: crate::loading::gguf::GgmlType,
    inner: usize,
    outer: usize,
    bytes: Vec<u8>,
}

impl BlockMatrix {
    /// The blocks, as the kernels' constructors take them.
    pub fn blocks(&self) -> Blocks<'_> {
        Blocks {
            ty: self.ty,
            inner: self.inner,
            outer: self.outer,
            bytes: &self.bytes,
        }
    }
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
        let kernels = self.tensors.device().is_cpu() && kernel_mode() != KernelMode::Reference;
        if kernels {
            if let Some(blocks) = self.blocks(name)? {
                if KERNEL_TYPES.contains(&blocks.ggml_type) {
                    if (blocks.outer, blocks.inner) != (outer, inner) {
                        return Err(Error::InvalidWeights(format!(
                            "the GGUF tensor for `{}.{name}` is {} × {}, the config makes it                              {outer} × {inner}: the file's metadata does not fit its tensors",
                            self.tensors.prefix(),
                            blocks.outer,
                            blocks.inner
                        )));
                    }
                    let matrix = BlockMatrix {
                        ty: blocks.ggml_type,
                        inner,
                        outer,
                        bytes: blocks.bytes.into_owned(),
                    };
                    if let Some(gguf) = &self.gguf {
                        gguf.release(&self.path(name));
                    }
                    return Ok(Matrix::Blocks(matrix));
                }
            }
        }
        Ok(Matrix::Dense(dense()?))
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
