//! The training graph's heavy steps as single candle ops with backward passes: linear layers,
//! layer normalisation, multi-head attention (scaled, masked softmax and dropout inside) and
//! exact GELU.
//!
//! Written from candle's primitives they were a dozen passes each way over their tensors,
//! each a fresh allocation, most of them on one thread: 0.34× PyTorch's step time on MiniLM
//! before, most of it outside the matrix products. Each op here is one parallel pass forward
//! and one backward, and keeps only what its backward needs. `tests/training.rs` holds them
//! to PyTorch's gradients through the parity cases.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::isa::Isa;
use crate::kernels::math::erf;
use crate::kernels::{f32_slice, softmax_row};

/// Rows handed to one rayon task: enough work to outweigh the task's cost.
const ROWS_PER_TASK: usize = 64;

/// The three inputs of a [`CustomOp3`] as f32 slices.
fn three_slices<'a>(
    op: &str,
    (a, a_layout): (&'a CpuStorage, &Layout),
    (b, b_layout): (&'a CpuStorage, &Layout),
    (c, c_layout): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a [f32], &'a [f32], &'a [f32])> {
    Ok((
        f32_slice(a, a_layout, op)?,
        f32_slice(b, b_layout, op)?,
        f32_slice(c, c_layout, op)?,
    ))
}

/// A tensor's values as one f32 slice: borrowed from its storage when it is contiguous on
/// the CPU (the backward passes read activations and gradients of tens of megabytes), else
/// copied.
pub(crate) enum Values<'a> {
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

pub(crate) fn values(tensor: &Tensor) -> candle_core::Result<Values<'_>> {
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
        let (x_values, w, b) =
            three_slices(self.name(), (x, x_layout), (w, w_layout), (b, b_layout))?;
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

/// `dx = scale · p ⊙ (g − Σ g ⊙ p)` for one row: the softmax's backward pass.
fn softmax_row_backward(dx: &mut [f32], p: &[f32], g: &[f32], scale: f32) {
    let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
    for ((d, &p), &g) in dx.iter_mut().zip(p).zip(g) {
        *d = scale * p * (g - dot);
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

/// `x @ weight.T + bias` for `x` (..., in), `weight` (out, in), `bias` (out), without a
/// reshape (whose backward pass would be one more accumulation of the gradient): the bias
/// written first and the product summed onto it by one GEMM; backward, two GEMMs and a
/// column sum, with no transposed copies.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let inputs = x.dims().last().copied().unwrap_or(0);
    let (outputs, weight_inputs) = weight.dims2()?;
    if weight_inputs != inputs || bias.dims() != [outputs] {
        return Err(Error::InvalidInput(format!(
            "a linear layer of weight {:?} and bias {:?} cannot take inputs {:?}",
            weight.dims(),
            bias.dims(),
            x.dims()
        )));
    }
    Ok(x.contiguous()?
        .apply_op3(&weight.contiguous()?, bias, Linear)?)
}

struct Linear;

/// `dst (m × n) += lhs (m × k) · rhs (k × n)`, each operand given by its row and column
/// strides, on every rayon thread.
fn product_onto(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
) {
    let (m, n, _) = shape;
    assert!(dst.len() >= m * n);
    // SAFETY: `dst` holds the m × n values read and written.
    unsafe { gemm_into(shape, dst.as_mut_ptr(), true, lhs, rhs, all_threads()) }
}

/// `lhs (m × k) · rhs (k × n)` in a new row-major vector, computed on `threads`.
fn new_product(
    shape: (usize, usize, usize),
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
    threads: gemm::Parallelism,
) -> Vec<f32> {
    let (m, n, _) = shape;
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: without `read`, the GEMM writes every one of the m × n values and reads none,
    // so the vector's length covers initialised values only once it returns.
    unsafe {
        gemm_into(shape, out.as_mut_ptr(), false, lhs, rhs, threads);
        out.set_len(m * n);
    }
    out
}

/// The GEMM on the calling thread alone (inside a parallel loop).
const HERE: gemm::Parallelism = gemm::Parallelism::None;

fn all_threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads())
}

/// # Safety
/// `dst` must be valid for writes of `m · n` values (and reads, with `read`).
unsafe fn gemm_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    read: bool,
    lhs: (&[f32], isize, isize),
    rhs: (&[f32], isize, isize),
    threads: gemm::Parallelism,
) {
    let (lhs, lhs_rs, lhs_cs) = lhs;
    let (rhs, rhs_rs, rhs_cs) = rhs;
    // The last element each operand's strides reach must lie inside its slice.
    let reach = |rows: usize, cols: usize, rs: isize, cs: isize| {
        (rows.max(1) - 1) * rs as usize + (cols.max(1) - 1) * cs as usize
    };
    assert!(
        reach(m, k, lhs_rs, lhs_cs) < lhs.len().max(1)
            && reach(k, n, rhs_rs, rhs_cs) < rhs.len().max(1)
    );
    // SAFETY: every element the (non-negative) strides address lies inside its slice
    // (checked above), and the caller vouches for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
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
            threads,
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
        let (x, w, b) = three_slices(self.name(), (x, x_layout), (w, w_layout), (b, b_layout))?;
        let inputs = w.len() / b.len().max(1);
        let rows = x.len() / inputs.max(1);
        let outputs = b.len();
        let mut y: Vec<f32> = b.iter().copied().cycle().take(rows * outputs).collect();
        // y += x (rows × in) · wᵀ (in × out); wᵀ's element (i, o) is w[o · in + i].
        product_onto(
            (rows, outputs, inputs),
            &mut y,
            (x, inputs as isize, 1),
            (w, 1, inputs as isize),
        );
        let mut shape = x_layout.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = outputs;
        }
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (outputs, inputs) = weight.dims2()?;
        let rows = x.elem_count() / inputs.max(1);
        let (xs, w, g) = (values(x)?, values(weight)?, values(grad)?);
        // dx (rows × in) = g (rows × out) · w (out × in).
        let dx = new_product(
            (rows, inputs, outputs),
            (&g, outputs as isize, 1),
            (&w, inputs as isize, 1),
            all_threads(),
        );
        // dw (out × in) = gᵀ (out × rows) · x (rows × in); gᵀ's element (o, r) is g[r · out + o].
        let dw = new_product(
            (outputs, inputs, rows),
            (&g, 1, outputs as isize),
            (&xs, inputs as isize, 1),
            all_threads(),
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
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, (outputs, inputs), device)?),
            Some(Tensor::from_vec(db, outputs, device)?),
        ))
    }
}

/// Multi-head attention over `query`, `key` and `value`, each (batch, seq, heads · head_dim)
/// as the projections make them: per sequence and head, `softmax(q kᵀ · scale + mask)`,
/// dropped out by `dropout` ((batch, heads, seq, seq) factors, 0 or 1/keep) when given, times
/// v; returns (batch, seq, heads · head_dim). No head is copied out: the products read the
/// projections through strides. The backward pass recomputes the probabilities instead of
/// keeping them (one more product of the four, and no (batch, heads, seq, seq) tensor held
/// from the forward pass to the backward one but the dropout's).
pub(crate) fn attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    heads: usize,
    mask: &Tensor,
    scale: f32,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    let (batch, seq, width) = query.dims3()?;
    let shapes_agree = key.dims() == query.dims() && value.dims() == query.dims();
    if !shapes_agree || width % heads != 0 || mask.dims() != [batch, 1, 1, seq] {
        return Err(Error::InvalidInput(format!(
            "attention over q {:?}, k {:?}, v {:?} with {heads} heads and a mask {:?}",
            query.dims(),
            key.dims(),
            value.dims(),
            mask.dims()
        )));
    }
    if dropout
        .as_ref()
        .is_some_and(|d| d.len() != batch * heads * seq * seq)
    {
        return Err(Error::InvalidInput(
            "the attention dropout mask has another size".into(),
        ));
    }
    let op = Attention {
        shape: AttentionShape {
            batch,
            seq,
            heads,
            head: width / heads,
        },
        mask: values(mask)?.to_vec(),
        scale,
        dropout,
        isa: Isa::current(),
    };
    Ok(query
        .contiguous()?
        .apply_op3(&key.contiguous()?, &value.contiguous()?, op)?)
}

#[derive(Clone, Copy)]
struct AttentionShape {
    batch: usize,
    seq: usize,
    heads: usize,
    head: usize,
}

impl AttentionShape {
    fn width(&self) -> usize {
        self.heads * self.head
    }

    /// Where head `h` of sequence `b` starts in a (batch, seq, width) tensor, and its row
    /// and column strides.
    fn head_of<'a>(&self, data: &'a [f32], b: usize, h: usize) -> (&'a [f32], isize, isize) {
        let start = b * self.seq * self.width() + h * self.head;
        (&data[start..], self.width() as isize, 1)
    }

    /// Write each (sequence, head)'s (seq, head_dim) block into a (batch, seq, width) tensor.
    fn gather(&self, blocks: &[Vec<f32>]) -> Vec<f32> {
        let mut out = vec![0f32; self.batch * self.seq * self.width()];
        for (index, block) in blocks.iter().enumerate() {
            let (b, h) = (index / self.heads, index % self.heads);
            for (i, row) in block.chunks(self.head).enumerate() {
                let start = (b * self.seq + i) * self.width() + h * self.head;
                out[start..start + self.head].copy_from_slice(row);
            }
        }
        out
    }
}

struct Attention {
    shape: AttentionShape,
    /// Additive, (batch, seq).
    mask: Vec<f32>,
    scale: f32,
    dropout: Option<Vec<f32>>,
    /// The instruction set of the kernels' softmax, decided once per op.
    isa: Isa,
}

impl Attention {
    /// The probabilities of sequence `b`, head `h`: (seq, seq), before dropout.
    fn probabilities(&self, q: &[f32], k: &[f32], b: usize, h: usize) -> Vec<f32> {
        let AttentionShape { seq, head, .. } = self.shape;
        let (k_head, rs, cs) = self.shape.head_of(k, b, h);
        // q kᵀ: kᵀ's element (d, j) is k[j · width + d].
        let mut scores = new_product(
            (seq, seq, head),
            self.shape.head_of(q, b, h),
            (k_head, cs, rs),
            HERE,
        );
        let mask = &self.mask[b * seq..(b + 1) * seq];
        for row in scores.chunks_mut(seq) {
            softmax_row(self.isa, row, mask, self.scale);
        }
        scores
    }

    /// The probabilities after dropout, for sequence `b`, head `h`.
    fn dropped(&self, mut probabilities: Vec<f32>, b: usize, h: usize) -> Vec<f32> {
        if let Some(dropout) = &self.dropout {
            let block = self.shape.seq * self.shape.seq;
            let start = (b * self.shape.heads + h) * block;
            probabilities
                .iter_mut()
                .zip(&dropout[start..start + block])
                .for_each(|(p, d)| *p *= d);
        }
        probabilities
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "training-attention"
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
        let (q, k, v) = three_slices(self.name(), (q, q_layout), (k, k_layout), (v, v_layout))?;
        let AttentionShape {
            batch,
            seq,
            heads,
            head,
        } = self.shape;
        let blocks: Vec<Vec<f32>> = (0..batch * heads)
            .into_par_iter()
            .map(|index| {
                let (b, h) = (index / heads, index % heads);
                let p = self.dropped(self.probabilities(q, k, b, h), b, h);
                new_product(
                    (seq, head, seq),
                    (&p, seq as isize, 1),
                    self.shape.head_of(v, b, h),
                    HERE,
                )
            })
            .collect();
        Ok((
            CpuStorage::F32(self.shape.gather(&blocks)),
            q_layout.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, g) = (values(query)?, values(key)?, values(value)?, values(grad)?);
        let AttentionShape {
            batch,
            seq,
            heads,
            head,
        } = self.shape;
        let blocks: Vec<[Vec<f32>; 3]> = (0..batch * heads)
            .into_par_iter()
            .map(|index| {
                let (b, h) = (index / heads, index % heads);
                let p = self.probabilities(&q, &k, b, h);
                let dropped = self.dropped(p.clone(), b, h);
                let g_head = self.shape.head_of(&g, b, h);
                // dv = dropped(p)ᵀ · g.
                let dv = new_product((seq, head, seq), (&dropped, 1, seq as isize), g_head, HERE);
                // d(dropped p) = g · vᵀ, then through the dropout.
                let (v_head, rs, cs) = self.shape.head_of(&v, b, h);
                let dp = new_product((seq, seq, head), g_head, (v_head, cs, rs), HERE);
                let dp = self.dropped(dp, b, h);
                let mut ds = vec![0f32; seq * seq];
                for ((ds, p), dp) in ds.chunks_mut(seq).zip(p.chunks(seq)).zip(dp.chunks(seq)) {
                    softmax_row_backward(ds, p, dp, self.scale);
                }
                // dq = ds · k; dk = dsᵀ · q.
                let dq = new_product(
                    (seq, head, seq),
                    (&ds, seq as isize, 1),
                    self.shape.head_of(&k, b, h),
                    HERE,
                );
                let dk = new_product(
                    (seq, head, seq),
                    (&ds, 1, seq as isize),
                    self.shape.head_of(&q, b, h),
                    HERE,
                );
                [dq, dk, dv]
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for [q, k, v] in blocks {
            dq.push(q);
            dk.push(k);
            dv.push(v);
        }
        let device = query.device();
        let tensor = |blocks: &[Vec<f32>]| {
            Tensor::from_vec(self.shape.gather(blocks), query.shape(), device)
        };
        Ok((Some(tensor(&dq)?), Some(tensor(&dk)?), Some(tensor(&dv)?)))
    }
}

#[cfg(test)]
mod tests {
    //! Each op's gradients against the same computation in candle's primitives, whose
    //! backward passes candle derives: dropout on, padding in the mask.

    use candle_core::{Device, Tensor, Var, D};

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Var {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_gap(a: &Tensor, b: &Tensor) -> f32 {
        let gap = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(gap.is_finite());
        gap
    }

    /// The gradients of `Σ out ⊙ weights` for the fused op and the primitive one, for `vars`.
    fn assert_same_gradients(fused: Tensor, primitive: Tensor, vars: &[&Var], what: &str) {
        assert!(max_gap(&fused, &primitive) < 1e-5, "{what}: outputs differ");
        let weights = random(fused.dims(), 99);
        let fused = fused
            .mul(weights.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let primitive = primitive
            .mul(weights.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, var) in vars.iter().enumerate() {
            let (a, b) = (fused.get(var).unwrap(), primitive.get(var).unwrap());
            let gap = max_gap(a, b);
            assert!(gap < 1e-5, "{what}: gradient {i} differs by {gap}");
        }
    }

    #[test]
    fn attention_with_padding_and_dropout_has_the_primitives_gradients() {
        let (batch, seq, heads, head) = (2, 5, 3, 4);
        let width = heads * head;
        let (q, k, v) = (
            random(&[batch, seq, width], 1),
            random(&[batch, seq, width], 2),
            random(&[batch, seq, width], 3),
        );
        // The second sequence has two padding positions.
        let mask: Vec<f32> = (0..batch * seq)
            .map(|i| if i >= seq + 3 { f32::MIN } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (batch, 1, 1, seq), &Device::Cpu).unwrap();
        let factors: Vec<f32> = (0..batch * heads * seq * seq)
            .map(|i| if i % 7 == 3 { 0.0 } else { 1.0 / 0.9 })
            .collect();
        let scale = 0.5;
        let fused = attention(&q, &k, &v, heads, &mask, scale, Some(factors.clone())).unwrap();
        let split = |t: &Tensor| {
            t.reshape((batch, seq, heads, head))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scores = (split(&q).matmul(&split(&k).t().unwrap()).unwrap() * scale as f64).unwrap();
        let scores = scores.broadcast_add(&mask).unwrap();
        let shifted = scores
            .broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap().detach())
            .unwrap()
            .exp()
            .unwrap();
        let p = shifted
            .broadcast_div(&shifted.sum_keepdim(D::Minus1).unwrap())
            .unwrap();
        let p = p
            .mul(&Tensor::from_vec(factors, (batch, heads, seq, seq), &Device::Cpu).unwrap())
            .unwrap();
        let primitive = p
            .matmul(&split(&v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((batch, seq, width))
            .unwrap();
        assert_same_gradients(fused, primitive, &[&q, &k, &v], "attention");
    }

    #[test]
    fn layer_norm_linear_and_gelu_have_the_primitives_gradients() {
        let (x, w, b) = (random(&[6, 8], 4), random(&[8], 5), random(&[8], 6));
        let fused = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let centred = x
            .broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
            .unwrap();
        let variance = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let primitive = centred
            .broadcast_div(&(variance + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert_same_gradients(fused, primitive, &[&x, &w, &b], "layer norm");

        let (weight, bias) = (random(&[5, 8], 7), random(&[5], 8));
        let fused = linear(&x, &weight, &bias).unwrap();
        let primitive = x
            .matmul(&weight.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        assert_same_gradients(fused, primitive, &[&x, &weight, &bias], "linear");

        let fused = gelu_erf(&x).unwrap();
        let primitive = x.gelu_erf().unwrap();
        assert_same_gradients(fused, primitive, &[&x], "gelu");
    }
}
