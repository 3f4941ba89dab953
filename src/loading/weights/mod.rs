//! Finding and opening a checkpoint's weights: `model.safetensors`, a sharded
//! `model.safetensors.index.json` with exactly the shards it lists, or `pytorch_model.bin`
//! when the repository has no safetensors (transformers' order of preference).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::loading::hub::ModelSource;
use crate::loading::json::read_json;

pub(crate) mod pickle;
mod released;
use released::ReleasedSafetensors;
pub(crate) use released::{check_shape, release, Rounding};

const SAFETENSORS: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const PYTORCH: &str = "pytorch_model.bin";

/// The weight files of a checkpoint, on local disk.
#[derive(Debug, Clone)]
pub enum WeightFiles {
    /// One or more safetensors files, memory-mapped when opened and read tensor by tensor,
    /// each tensor's pages of the files released once it is read.
    Safetensors(Vec<PathBuf>),
    /// A PyTorch pickle, used only when no safetensors exist.
    PyTorch(PathBuf),
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl WeightFiles {
    /// Find (and download, for a Hub model) the weight files, fetching nothing more than needed.
    pub fn resolve(source: &ModelSource) -> Result<Self> {
        if let Some(path) = source.get(SAFETENSORS)? {
            return Ok(WeightFiles::Safetensors(vec![path]));
        }
        if let Some(index_path) = source.get(SAFETENSORS_INDEX)? {
            let index: ShardIndex = read_json(&index_path)?;
            let shards: BTreeSet<&String> = index.weight_map.values().collect();
            if shards.is_empty() {
                return Err(Error::InvalidWeights(format!(
                    "{} lists no shards in its weight_map",
                    index_path.display()
                )));
            }
            let paths = shards
                .into_iter()
                .map(|shard| {
                    check_shard_name(shard)?;
                    source.get(shard)?.ok_or_else(|| {
                        source.missing(
                            shard,
                            &format!("this shard is listed in {SAFETENSORS_INDEX}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(WeightFiles::Safetensors(paths));
        }
        if let Some(path) = source.get(PYTORCH)? {
            return Ok(WeightFiles::PyTorch(path));
        }
        Err(source.missing(
            SAFETENSORS,
            &format!(
                "no weights found: looked for {SAFETENSORS}, {SAFETENSORS_INDEX} and {PYTORCH}"
            ),
        ))
    }

    /// The checkpoint's tensors, each name with its shape, sorted by name; from the files'
    /// headers, without reading the tensors.
    pub fn tensor_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let corrupt = |e: candle_core::Error| {
            Error::InvalidWeights(format!(
                "cannot read the tensor table of {self:?}: {e}. The file is damaged; download \
                 it again"
            ))
        };
        let mut shapes: Vec<(String, Vec<usize>)> = match self {
            // SAFETY: as in `var_builder`: files in the Hub cache are never changed in place.
            WeightFiles::Safetensors(paths) => unsafe { ReleasedSafetensors::open(paths) }
                .map_err(corrupt)?
                .shapes(),
            WeightFiles::PyTorch(path) => {
                crate::loading::weights::pickle::check_torch_checkpoint(path)?;
                candle_core::pickle::PthTensors::new(path, None)
                    .map_err(corrupt)?
                    .tensor_infos()
                    .iter()
                    .map(|(name, info)| (name.clone(), info.layout.dims().to_vec()))
                    .collect()
            }
        };
        shapes.sort_unstable();
        Ok(shapes)
    }

    /// The checkpoint's tensors as f32 values, one tensor at a time, to write them elsewhere
    /// (a GGUF file).
    pub fn values(&self) -> Result<CheckpointValues> {
        Ok(match self {
            // SAFETY: as in `var_builder`: files in the Hub cache are never changed in place.
            WeightFiles::Safetensors(paths) => CheckpointValues(ValueReader::Safetensors(
                unsafe { ReleasedSafetensors::open(paths) }.map_err(|e| {
                    Error::InvalidWeights(format!("cannot read {paths:?}: {e}. Download it again"))
                })?,
            )),
            WeightFiles::PyTorch(_) => CheckpointValues(ValueReader::Tensors(
                self.var_builder(DType::F32, &Device::Cpu)?,
            )),
        })
    }

    /// A `VarBuilder` that reads every tensor as `dtype`, on `device`.
    ///
    /// Opening checks each safetensors header (length, JSON, dtypes, offsets inside the file
    /// and not overlapping); a PyTorch pickle is vetted before it is read.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        let corrupt = |files: &dyn std::fmt::Debug, e: candle_core::Error| {
            Error::InvalidWeights(format!(
                "cannot read {files:?}: {e}. The file is damaged or not what its name says; \
                 download it again"
            ))
        };
        match self {
            // SAFETY: the files are memory-mapped; they must not be modified while the model
            // loads. Files in the Hub cache are written once and never changed in place.
            WeightFiles::Safetensors(paths) => unsafe { ReleasedSafetensors::open(paths) }
                .map(|files| VarBuilder::from_backend(Box::new(files), dtype, device.clone()))
                .map_err(|e| corrupt(paths, e)),
            WeightFiles::PyTorch(path) => {
                crate::loading::weights::pickle::check_torch_checkpoint(path)?;
                VarBuilder::from_pth(path, dtype, device).map_err(|e| corrupt(path, e))
            }
        }
    }
}

/// A checkpoint's tensors read as f32 values ([`WeightFiles::values`]).
pub struct CheckpointValues(ValueReader);

enum ValueReader {
    /// Safetensors, read straight into the values.
    Safetensors(ReleasedSafetensors),
    /// A PyTorch pickle, read through candle.
    Tensors(VarBuilder<'static>),
}

impl CheckpointValues {
    /// The values of the tensor `name`, row-major.
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let values = match &self.0 {
            ValueReader::Safetensors(files) => files.f32_values(name),
            ValueReader::Tensors(tensors) => tensors
                .get_unchecked_dtype(name, DType::F32)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>()),
        };
        values.map_err(|e| Error::InvalidWeights(format!("cannot read the tensor `{name}`: {e}")))
    }
}

/// Shard names come from a file in the repository; they must be plain file names beside it.
fn check_shard_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && !name.contains(['/', '\\'])
        && name != "."
        && name != ".."
        && name.ends_with(".safetensors");
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidWeights(format!(
            "{SAFETENSORS_INDEX} names the shard `{name}`, which is not a .safetensors file \
             name in the model folder"
        )))
    }
}
