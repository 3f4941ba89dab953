//! BGE-M3's two heads over its XLM-RoBERTa encoder, which FlagEmbedding saves beside the
//! checkpoint as PyTorch state dicts rather than in it: `sparse_linear.pt` (hidden → 1, a
//! weight per token) and `colbert_linear.pt` (hidden → hidden, a vector per token).
//! As FlagEmbedding 1.4.2 (<https://pypi.org/project/FlagEmbedding/1.4.2/>) applies them in
//! `FlagEmbedding/finetune/embedder/encoder_only/m3/modeling.py` (`_sparse_embedding`,
//! `_colbert_embedding`).

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::loading::hub::ModelSource;
use crate::loading::weights::WeightFiles;
use crate::models::layers::Linear;
use crate::models::pretrained::checkpoint_mismatch;
use crate::models::weight_type::WeightType;
use crate::models::weights::ModelWeights;

/// The file of the sparse head, and of the multi-vector (ColBERT) head.
pub const SPARSE_HEAD: &str = "sparse_linear.pt";
/// See [`SPARSE_HEAD`].
pub const COLBERT_HEAD: &str = "colbert_linear.pt";

/// `sparse_linear` and `colbert_linear`, kept in f32 whatever the encoder's weights: together
/// they are one hidden × hidden product, small beside the encoder's.
#[derive(Debug, Clone)]
pub struct BgeM3Heads {
    sparse: Linear,
    colbert: Linear,
}

impl BgeM3Heads {
    /// Both heads of an encoder of `hidden` values per token, each file vetted as a
    /// checkpoint's pickle is.
    pub fn load(source: &ModelSource, hidden: usize, device: &Device) -> Result<Self> {
        let head = |file: &str, outputs: usize| -> Result<Linear> {
            let path = source.require(file)?;
            let weights = ModelWeights::open(&WeightFiles::PyTorch(path), WeightType::F32, device)?;
            Linear::load(weights, hidden, outputs).map_err(checkpoint_mismatch)
        };
        Ok(Self {
            sparse: head(SPARSE_HEAD, 1)?,
            colbert: head(COLBERT_HEAD, hidden)?,
        })
    }

    /// Each token's lexical weight, (batch, seq): `relu(sparse_linear(hidden))`.
    pub fn token_weights(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.sparse.forward(hidden)?.relu()?.squeeze(2)?)
    }

    /// Each token's multi-vector, (batch, seq − 1, hidden): `colbert_linear` on every token
    /// but the first (`[CLS]`, whose vector is the dense embedding), not yet normalised.
    pub fn colbert_vectors(&self, hidden: &Tensor) -> Result<Tensor> {
        let tokens = hidden.dim(1)?;
        self.colbert
            .forward(&hidden.narrow(1, 1, tokens.saturating_sub(1))?)
    }
}
