//! The training graph's memory-bound steps as single candle ops with backward passes: layer
//! normalisation, the attention's scaled, masked softmax, and exact GELU.
//!
//! Written from candle's primitives they were a dozen passes each way over their tensors,
//! each a fresh allocation, most of them on one thread: 0.34× PyTorch's step time on MiniLM
//! before, most of it outside the matrix products. Each op here is one parallel pass forward
//! and one backward, and keeps only what its backward needs. `tests/training.rs` holds them
//! to PyTorch's gradients through the parity cases.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::math::erf;

/// Rows handed to one rayon task: enough work to outweigh the task's cost.
const ROWS_PER_TASK: usize = 64;

fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: contiguous input only")
    };
    Ok(&data[start..end])
}

/// A tensor's values as one f32 slice: borrowed from its storage when it is contiguous on
/// the CPU (the backward passes read activations and gradients of tens of megabytes), else
/// copied.
enum Values<'a> {
    Stored(candle_core::StorageRef<'a>, usize, usize),
    Copied(Vec<f32>),
}

impl std::ops::Deref for Values<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Values::Stored(storage, start, end) => match &**storage {
                candle_core::Storage::Cpu(CpuStorage::F32(data)) => &data[*start..*end],
                _ => &[],
            },
            Values::Copied(values) => values,
        }
    }
}

fn values(tensor: &Tensor) -> candle_core::Result<Values<'_>> {
    let (storage, layout) = tensor.storage_and_layout();
    if let (candle_core::Storage::Cpu(CpuStorage::F32(_)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        return Ok(Values::Stored(storage, start, end));
    }
    drop(storage);
    Ok(Values::Copied(tensor.flatten_all()?.to_vec1::<f32>()?))
}

/// `LayerNorm(x) * weight + bias` over the last dimension; gradients for all three.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNorm { eps: eps as f32 };
    Ok(x.contiguous()?.apply_op3(weight, bias, op)?)
}

struct LayerNorm {
    eps: f32,
}

impl LayerNorm {
    /// The mean and 1/std of a row, as PyTorch computes them (biased variance).
    fn moments(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (variance + self.eps).sqrt())
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "training-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x_values = f32_slice(x, x_layout, self.name())?;
        let (w, b) = (
            f32_slice(w, w_layout, self.name())?,
            f32_slice(b, b_layout, self.name())?,
        );
        let width = w.len();
        let mut out = vec![0f32; x_values.len()];
        out.par_chunks_mut(width * ROWS_PER_TASK)
            .zip(x_values.par_chunks(width * ROWS_PER_TASK))
            .for_each(|(out, x)| {
                for (out, row) in out.chunks_mut(width).zip(x.chunks(width)) {
                    let (mean, rstd) = self.moments(row);
                    for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(w).zip(b) {
                        *o = (v - mean) * rstd * w + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xs, w, g) = (values(x)?, values(weight)?, values(grad)?);
        let width = w.len();
        let mut dx = vec![0f32; xs.len()];
        // Each task sums its rows' weight and bias gradients; the sums are added after.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(width * ROWS_PER_TASK)
            .zip(xs.par_chunks(width * ROWS_PER_TASK))
            .zip(g.par_chunks(width * ROWS_PER_TASK))
            .map(|((dx, x), g)| {
                let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
                for ((dx, row), g) in dx
                    .chunks_mut(width)
                    .zip(x.chunks(width))
                    .zip(g.chunks(width))
                {
                    let (mean, rstd) = self.moments(row);
                    let (mut sum_dy, mut sum_dy_xhat) = (0f32, 0f32);
                    for i in 0..width {
                        let xhat = (row[i] - mean) * rstd;
                        let dy = g[i] * w[i];
                        sum_dy += dy;
                        sum_dy_xhat += dy * xhat;
                        dw[i] += g[i] * xhat;
                        db[i] += g[i];
                    }
                    let n = width as f32;
                    for i in 0..width {
                        let xhat = (row[i] - mean) * rstd;
                        dx[i] = rstd * (g[i] * w[i] - sum_dy / n - xhat * sum_dy_xhat / n);
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
        for (pw, pb) in partial {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, width, device)?),
            Some(Tensor::from_vec(db, width, device)?),
        ))
    }
}

/// `softmax(scores * scale + mask)` over the last dimension; `scores` (batch, heads, q, k),
/// `mask` additive (batch, 1, 1, k). The gradient goes to `scores` (the mask is a constant).
pub(crate) fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f32) -> Result<Tensor> {
    let (batch, heads, queries, keys) = scores.dims4()?;
    if mask.dims() != [batch, 1, 1, keys] {
        return Err(Error::InvalidInput(format!(
            "the attention mask has shape {:?}, not ({batch}, 1, 1, {keys})",
            mask.dims()
        )));
    }
    let op = MaskedSoftmax {
        mask: values(mask)?.to_vec(),
        rows_per_item: heads * queries,
        keys,
        scale,
    };
    Ok(scores.contiguous()?.apply_op1(op)?)
}

struct MaskedSoftmax {
    /// (batch, keys).
    mask: Vec<f32>,
    rows_per_item: usize,
    keys: usize,
    scale: f32,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "training-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = f32_slice(storage, layout, self.name())?;
        let k = self.keys;
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(k * ROWS_PER_TASK)
            .zip(scores.par_chunks(k * ROWS_PER_TASK))
            .enumerate()
            .for_each(|(task, (out, scores))| {
                for (r, (out, row)) in out.chunks_mut(k).zip(scores.chunks(k)).enumerate() {
                    let item = (task * ROWS_PER_TASK + r) / self.rows_per_item;
                    let mask = &self.mask[item * k..(item + 1) * k];
                    let mut max = f32::NEG_INFINITY;
                    for ((o, &s), &m) in out.iter_mut().zip(row).zip(mask) {
                        *o = s * self.scale + m;
                        max = max.max(*o);
                    }
                    let mut sum = 0f32;
                    for o in out.iter_mut() {
                        *o = (*o - max).exp();
                        sum += *o;
                    }
                    out.iter_mut().for_each(|o| *o /= sum);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `dx = scale · p ⊙ (g − Σ g ⊙ p)`, row by row.
    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (p, g) = (values(res)?, values(grad)?);
        let k = self.keys;
        let mut dx = vec![0f32; p.len()];
        dx.par_chunks_mut(k * ROWS_PER_TASK)
            .zip(p.par_chunks(k * ROWS_PER_TASK))
            .zip(g.par_chunks(k * ROWS_PER_TASK))
            .for_each(|((dx, p), g)| {
                for ((dx, p), g) in dx.chunks_mut(k).zip(p.chunks(k)).zip(g.chunks(k)) {
                    let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                    for ((d, &p), &g) in dx.iter_mut().zip(p).zip(g) {
                        *d = self.scale * p * (g - dot);
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Exact GELU, `x · Φ(x)`, with its gradient `Φ(x) + x · φ(x)`.
pub(crate) fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluErf)?)
}

struct GeluErf;

/// Φ(x), the standard normal distribution function.
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

const CHUNK: usize = 1 << 14;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "training-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(out, x)| {
                out.iter_mut()
                    .zip(x)
                    .for_each(|(o, &v)| *o = v * normal_cdf(v))
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (x, g) = (values(arg)?, values(grad)?);
        // 1/sqrt(2π).
        const DENSITY: f32 = 0.398_942_3;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|((dx, x), g)| {
                for ((d, &v), &g) in dx.iter_mut().zip(x).zip(g) {
                    *d = g * (normal_cdf(v) + v * DENSITY * (-0.5 * v * v).exp());
                }
            });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `x @ weight.T + bias` for `x` (rows, in), `weight` (out, in), `bias` (out): the bias
/// written first and the product summed onto it by one GEMM; backward, two GEMMs and a
/// column sum, with no transposed copies.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (rows, inputs) = x.dims2()?;
    let (outputs, weight_inputs) = weight.dims2()?;
    if weight_inputs != inputs || bias.dims() != [outputs] {
        return Err(Error::InvalidInput(format!(
            "a linear layer of weight {:?} and bias {:?} cannot take inputs ({rows}, {inputs})",
            weight.dims(),
            bias.dims()
        )));
    }
    Ok(x.contiguous()?
        .apply_op3(&weight.contiguous()?, bias, Linear)?)
}

struct Linear;

/// `dst (m × n) = read · dst + lhs (m × k) · rhs (k × n)`, each operand given by its row and
/// column strides, on every rayon thread.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    read: bool,
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
) {
    let (lhs, lhs_rs, lhs_cs) = lhs;
    let (rhs, rhs_rs, rhs_cs) = rhs;
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the strides address only elements inside the slices, whose lengths were
    // checked above against the shapes (all strides are those of dense row-major matrices
    // of these shapes, or their transposes).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "training-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            f32_slice(x, x_layout, self.name())?,
            f32_slice(w, w_layout, self.name())?,
            f32_slice(b, b_layout, self.name())?,
        );
        let (rows, inputs) = x_layout.shape().dims2()?;
        let outputs = b.len();
        let mut y: Vec<f32> = b.iter().copied().cycle().take(rows * outputs).collect();
        // y += x (rows × in) · wᵀ (in × out); wᵀ's element (i, o) is w[o · in + i].
        product(
            (rows, outputs, inputs),
            &mut y,
            true,
            (x, inputs as isize, 1),
            (w, 1, inputs as isize),
        );
        Ok((CpuStorage::F32(y), Shape::from((rows, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, inputs) = x.dims2()?;
        let outputs = weight.dim(0)?;
        let (xs, w, g) = (values(x)?, values(weight)?, values(grad)?);
        // dx (rows × in) = g (rows × out) · w (out × in).
        let mut dx = vec![0f32; rows * inputs];
        product(
            (rows, inputs, outputs),
            &mut dx,
            false,
            (&g, outputs as isize, 1),
            (&w, inputs as isize, 1),
        );
        // dw (out × in) = gᵀ (out × rows) · x (rows × in); gᵀ's element (o, r) is g[r · out + o].
        let mut dw = vec![0f32; outputs * inputs];
        product(
            (outputs, inputs, rows),
            &mut dw,
            false,
            (&g, 1, outputs as isize),
            (&xs, inputs as isize, 1),
        );
        let db = g
            .par_chunks(outputs * ROWS_PER_TASK)
            .map(|rows| {
                let mut sums = vec![0f32; outputs];
                for row in rows.chunks(outputs) {
                    sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                }
                sums
            })
            .reduce(
                || vec![0f32; outputs],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (rows, inputs), device)?),
            Some(Tensor::from_vec(dw, (outputs, inputs), device)?),
            Some(Tensor::from_vec(db, outputs, device)?),
        ))
    }
}
