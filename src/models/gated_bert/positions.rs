//! How positions enter the encoder's attention: q and k rotated (GTE, NomicBERT) or a bias on
//! the scores (JinaBERT's ALiBi). Neither has a position table in the embeddings.

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::kernels::PositionBias;
use crate::models::rope::RotaryEmbedding;

/// A family's positions, held by the encoder.
#[derive(Debug, Clone)]
pub(crate) enum Positions {
    /// Positions count from 0 in every row (`position_ids = arange(seq)`), padding on the
    /// right, and the heads of q and k are rotated as the Llama family rotates them
    /// (`rotate_half`).
    Rotary(RotaryEmbedding),
    /// ALiBi's slopes, one per head; the kernel adds `-slope · |i − j|` to query i's score of
    /// key j, symmetric, as JinaBERT's remote code builds its table for a bidirectional model
    /// (`rebuild_alibi_tensor`). Distances are between positions of the padded row, so right
    /// padding does not move a real token's biases.
    Alibi(Vec<f64>),
}

impl Positions {
    /// What every layer of one forward applies, for inputs of `seq` tokens whose hidden states
    /// are `like`'s dtype and device.
    pub fn for_length(&self, seq: usize, like: &Tensor) -> Result<LengthPositions<'_>> {
        Ok(match self {
            Positions::Rotary(rotary) => {
                LengthPositions::Rotated(Rotation::new(rotary, seq, like)?)
            }
            Positions::Alibi(slopes) => LengthPositions::Alibi(slopes),
        })
    }
}

/// [`Positions`] made for one input length.
pub(crate) enum LengthPositions<'a> {
    Rotated(Rotation),
    Alibi(&'a [f64]),
}

impl LengthPositions<'_> {
    /// The q/k/v product, (batch, seq, 3 · hidden), as attention takes it, and the bias it
    /// adds to the scores.
    pub fn apply(&self, qkv: Tensor, heads: usize) -> Result<(Tensor, Option<PositionBias<'_>>)> {
        Ok(match self {
            LengthPositions::Rotated(rotation) => (rotation.rotate_qk(&qkv, heads)?, None),
            LengthPositions::Alibi(slopes) => (qkv, Some(PositionBias::Alibi(slopes))),
        })
    }
}

/// Cosines and sines of positions 0..seq, (seq, head_dim / 2) each: the first half of
/// transformers' `cat(freqs, freqs)`, which is all `rope_thd` reads.
pub(crate) struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

impl Rotation {
    fn new(rotary: &RotaryEmbedding, seq: usize, like: &Tensor) -> Result<Self> {
        let positions: Vec<u32> = (0..seq as u32).collect();
        let (cos, sin) = rotary.cos_sin(&positions, 1, like.device())?;
        let half = |t: Tensor| -> Result<Tensor> {
            let dim = t.dim(D::Minus1)?;
            Ok(t.narrow(D::Minus1, 0, dim / 2)?
                .reshape((seq, dim / 2))?
                .to_dtype(like.dtype())?
                .contiguous()?)
        };
        Ok(Self {
            cos: half(cos)?,
            sin: half(sin)?,
        })
    }

    /// `qkv` with the heads of its q and k thirds rotated, v as it was.
    fn rotate_qk(&self, qkv: &Tensor, heads: usize) -> Result<Tensor> {
        let (batch, seq, width) = qkv.dims3()?;
        let hidden = width / 3;
        let head_dim = hidden / heads;
        let rotated = |part: usize| -> Result<Tensor> {
            let heads = qkv
                .narrow(D::Minus1, part * hidden, hidden)?
                .contiguous()?
                .reshape((batch, seq, heads, head_dim))?;
            Ok(
                candle_nn::rotary_emb::rope_thd(&heads, &self.cos, &self.sin)?
                    .reshape((batch, seq, hidden))?,
            )
        };
        let value = qkv.narrow(D::Minus1, 2 * hidden, hidden)?;
        Ok(Tensor::cat(&[rotated(0)?, rotated(1)?, value], D::Minus1)?)
    }
}
