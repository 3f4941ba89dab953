//! Attention of a decoder's new queries over its KV cache, on the CPU: the keys and values
//! are read in place from the cache buffers (a view of their first `len` positions), with
//! no transposed or contiguous copies, so a decoding step costs O(len) reads per head
//! rather than O(len) copies and a (batch, heads, new, len) score tensor.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::softmax_row;

/// `softmax(q kᵀ · scale + mask) v` per head. `q`: (batch, heads, new, d); `k`, `v`:
/// (batch, heads, len, d), any strides (views of a cache); `mask`: additive f32 that
/// broadcasts to (batch, 1, new, len). Our kernel on the CPU in f32; elsewhere
/// `layers::attention`.
pub fn decoder_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if !super::use_kernels(q) || k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return crate::layers::attention(q, k, v, mask, scale);
    }
    let (batch, _, new, _) = q.dims4()?;
    let len = k.dim(2)?;
    let mask = match mask {
        Some(mask) => Some(
            mask.to_dtype(candle_core::DType::F32)?
                .broadcast_as((batch, 1, new, len))?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?,
        ),
        None => None,
    };
    q.contiguous()?.apply_op3_no_bwd(
        k,
        v,
        &DecoderAttention {
            scale: scale as f32,
            mask,
        },
    )
}

struct DecoderAttention {
    scale: f32,
    /// (batch, new, len), on the host.
    mask: Option<Vec<f32>>,
}

/// A strided (batch, heads, len, d) f32 view: its data and where (b, h, t) starts.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 4],
}

impl<'a> View<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("decoder-attention: f32 only")
        };
        let stride: [usize; 4] = match layout.stride() {
            [a, b, c, d] => [*a, *b, *c, *d],
            _ => candle_core::bail!("decoder-attention: rank-4 inputs only"),
        };
        if stride[3] != 1 {
            candle_core::bail!("decoder-attention: rows must be contiguous")
        }
        Ok(Self {
            data,
            start: layout.start_offset(),
            stride,
        })
    }

    fn row(&self, b: usize, h: usize, t: usize, d: usize) -> &'a [f32] {
        let at = self.head(b, h) + t * self.stride[2];
        &self.data[at..at + d]
    }

    /// Where head (b, h) starts.
    fn head(&self, b: usize, h: usize) -> usize {
        self.start + b * self.stride[0] + h * self.stride[1]
    }
}

impl CustomOp3 for DecoderAttention {
    fn name(&self) -> &'static str {
        "decoder-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, heads, new, d) = q_layout.shape().dims4()?;
        let (kb, kh, len, kd) = k_layout.shape().dims4()?;
        if (kb, kh, kd) != (batch, heads, d) || v_layout.shape() != k_layout.shape() {
            candle_core::bail!(
                "decoder-attention: q {:?}, k {:?}, v {:?} do not fit",
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape()
            )
        }
        if self
            .mask
            .as_ref()
            .is_some_and(|m| m.len() != batch * new * len)
        {
            candle_core::bail!("decoder-attention: the mask does not cover (batch, new, len)")
        }
        let (q, k, v) = (
            View::new(q, q_layout)?,
            View::new(k, k_layout)?,
            View::new(v, v_layout)?,
        );
        let no_mask = vec![0f32; len];
        let mut out = vec![0f32; batch * heads * new * d];
        out.par_chunks_mut(new * d).enumerate().for_each_init(
            || vec![0f32; len],
            |scores, (task, out)| {
                let (b, h) = (task / heads, task % heads);
                for (i, out_row) in out.chunks_mut(d).enumerate() {
                    let query = q.row(b, h, i, d);
                    dot_rows(query, &k.data[k.head(b, h)..], k.stride[2], scores);
                    let mask = match &self.mask {
                        Some(mask) => &mask[(b * new + i) * len..(b * new + i + 1) * len],
                        None => &no_mask[..],
                    };
                    softmax_row(scores, mask, self.scale);
                    weighted_rows(scores, &v.data[v.head(b, h)..], v.stride[2], out_row);
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((batch, heads, new, d))))
    }
}

dispatch! {
    /// `scores[t] = query · rows[t·stride ..][..d]`, with 8 lanes so that it vectorises.
    fn dot_rows(query: &[f32], rows: &[f32], stride: usize, scores: &mut [f32]) {
        let d = query.len();
        for (t, score) in scores.iter_mut().enumerate() {
            let row = &rows[t * stride..t * stride + d];
            let mut lanes = [0f32; 8];
            let (q_chunks, r_chunks) = (query.chunks_exact(8), row.chunks_exact(8));
            let tail: f32 = q_chunks
                .remainder()
                .iter()
                .zip(r_chunks.remainder())
                .map(|(x, y)| x * y)
                .sum();
            for (x, y) in q_chunks.zip(r_chunks) {
                for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
                    *lane += x * y;
                }
            }
            *score = lanes.iter().sum::<f32>() + tail;
        }
    }
}

dispatch! {
    /// `out = Σ_t weights[t] · rows[t·stride ..][..d]`.
    fn weighted_rows(weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = out.len();
        out.fill(0.0);
        for (t, &w) in weights.iter().enumerate() {
            for (o, &r) in out.iter_mut().zip(&rows[t * stride..t * stride + d]) {
                *o += w * r;
            }
        }
    }
}
