//! The training graph's heavy steps with their backward passes: linear layers, layer
//! normalisation, multi-head attention (scaled, masked softmax and dropout inside) and the
//! activations. Each is a function over f32 slices, which the fused encoder layer
//! ([`layer`](super::layer)) composes, and the linear, norm and activation steps also a
//! single candle op, for the embeddings and the heads.
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
use crate::models::layers::Activation;

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

/// The mean and 1/std of a row, as PyTorch computes them (biased variance).
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (variance + eps).sqrt())
}

/// Layer normalisation of each `weight.len()`-wide row of `x`, in place.
pub(crate) fn layer_norm_in_place(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = weight.len();
    x.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| {
        for row in rows.chunks_mut(width) {
            let (mean, rstd) = moments(row, eps);
            for ((v, &w), &b) in row.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * rstd * w + b;
            }
        }
    });
}

/// The gradients of a layer normalisation of `x`'s rows given `grad`, the output's.
pub(crate) struct NormGradients {
    pub input: Vec<f32>,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

pub(crate) fn layer_norm_backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    eps: f32,
) -> NormGradients {
    let width = weight.len();
    let mut dx = vec![0f32; x.len()];
    // Each task sums its rows' weight and bias gradients; the sums are added after.
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .zip(grad.par_chunks(width * ROWS_PER_TASK))
        .map(|((dx, x), g)| {
            let (mut dw, mut db) = (vec![0f32; width], vec![0f32; width]);
            for ((dx, row), g) in dx
                .chunks_mut(width)
                .zip(x.chunks(width))
                .zip(g.chunks(width))
            {
                let (mean, rstd) = moments(row, eps);
                let (mut sum_dy, mut sum_dy_xhat) = (0f32, 0f32);
                for i in 0..width {
                    let xhat = (row[i] - mean) * rstd;
                    let dy = g[i] * weight[i];
                    sum_dy += dy;
                    sum_dy_xhat += dy * xhat;
                    dw[i] += g[i] * xhat;
                    db[i] += g[i];
                }
                let n = width as f32;
                for i in 0..width {
                    let xhat = (row[i] - mean) * rstd;
                    dx[i] = rstd * (g[i] * weight[i] - sum_dy / n - xhat * sum_dy_xhat / n);
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
    NormGradients {
        input: dx,
        weight: dw,
        bias: db,
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
        let (x, w, b) = three_slices(self.name(), (x, x_layout), (w, w_layout), (b, b_layout))?;
        let mut out = x.to_vec();
        layer_norm_in_place(&mut out, w, b, self.eps);
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
        let gradients = layer_norm_backward(&xs, &w, &g, self.eps);
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(gradients.input, x.shape(), device)?),
            Some(Tensor::from_vec(gradients.weight, width, device)?),
            Some(Tensor::from_vec(gradients.bias, width, device)?),
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

/// An activation applied element-wise, with a backward pass.
pub(crate) fn activation(kind: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Activate(kind))?)
}

struct Activate(Activation);

/// Φ(x), the standard normal distribution function.
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// √(2/π), GELU's tanh approximation's factor.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

/// The activation of `x`, as PyTorch computes it: exact GELU `x · Φ(x)`; `gelu_new`'s
/// `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`; ReLU; SiLU `x · σ(x)`; tanh.
fn activate(kind: Activation, x: f32) -> f32 {
    match kind {
        Activation::Gelu => x * normal_cdf(x),
        Activation::GeluNew => {
            0.5 * x * (1.0 + (SQRT_TWO_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Relu => x.max(0.0),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
    }
}

/// The activation's derivative at `x` (ReLU's is 0 at 0, as PyTorch's).
fn derivative(kind: Activation, x: f32) -> f32 {
    match kind {
        Activation::Gelu => {
            // 1/√(2π).
            const DENSITY: f32 = 0.398_942_3;
            normal_cdf(x) + x * DENSITY * (-0.5 * x * x).exp()
        }
        Activation::GeluNew => {
            let t = (SQRT_TWO_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
            0.5 * (1.0 + t)
                + 0.5 * x * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::Relu => f32::from(x > 0.0),
        Activation::Silu => {
            let sigmoid = 1.0 / (1.0 + (-x).exp());
            sigmoid * (1.0 + x * (1.0 - sigmoid))
        }
        Activation::Tanh => 1.0 - x.tanh() * x.tanh(),
    }
}

const CHUNK: usize = 1 << 14;

/// `kind` applied to each of `x`.
pub(crate) fn activated(kind: Activation, x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    out.par_chunks_mut(CHUNK)
        .for_each(|out| out.iter_mut().for_each(|v| *v = activate(kind, *v)));
    out
}

/// `grad ⊙ kind'(x)`, in `grad`'s place: the gradient through the activation of `x`.
pub(crate) fn activation_backward_in_place(kind: Activation, x: &[f32], grad: &mut [f32]) {
    grad.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(g, x)| {
            g.iter_mut()
                .zip(x)
                .for_each(|(g, &v)| *g *= derivative(kind, v))
        });
}

impl CustomOp1 for Activate {
    fn name(&self) -> &'static str {
        "training-activation"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, self.name())?;
        Ok((
            CpuStorage::F32(activated(self.0, x)),
            layout.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let x = values(arg)?;
        let mut dx = values(grad)?.to_vec();
        activation_backward_in_place(self.0, &x, &mut dx);
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

/// `x (rows × in) · weightᵀ + bias` for `weight` (out × in) row-major, `bias` (out).
pub(crate) fn linear_rows(x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let outputs = bias.len();
    let inputs = weight.len() / outputs.max(1);
    let rows = x.len() / inputs.max(1);
    let mut y = vec![0f32; rows * outputs];
    y.par_chunks_mut(outputs.max(1) * ROWS_PER_TASK)
        .for_each(|rows| {
            rows.chunks_mut(outputs.max(1))
                .for_each(|row| row.copy_from_slice(bias))
        });
    // y += x (rows × in) · wᵀ (in × out); wᵀ's element (i, o) is w[o · in + i].
    product_onto(
        (rows, outputs, inputs),
        &mut y,
        (x, inputs as isize, 1),
        (weight, 1, inputs as isize),
    );
    y
}

/// The gradients of `weight` and `bias` in a linear layer's backward pass: `gradᵀ · x` and
/// `grad`'s column sums, for `grad` (rows × out) and `x` (rows × in).
pub(crate) fn linear_parameter_gradients(
    x: &[f32],
    grad: &[f32],
    inputs: usize,
    outputs: usize,
) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / inputs.max(1);
    // dw (out × in) = gᵀ (out × rows) · x (rows × in); gᵀ's element (o, r) is g[r · out + o].
    let dw = new_product(
        (outputs, inputs, rows),
        (grad, 1, outputs as isize),
        (x, inputs as isize, 1),
        all_threads(),
    );
    (dw, column_sums(grad, outputs))
}

/// `grad (rows × out) · weight (out × in)`: the input's gradient in a linear layer's
/// backward pass.
pub(crate) fn linear_input_gradient(grad: &[f32], weight: &[f32], outputs: usize) -> Vec<f32> {
    let inputs = weight.len() / outputs.max(1);
    let rows = grad.len() / outputs.max(1);
    new_product(
        (rows, inputs, outputs),
        (grad, outputs as isize, 1),
        (weight, inputs as isize, 1),
        all_threads(),
    )
}

/// `dx (rows × in) += grad (rows × out) · weight (out × in)`: the input's gradient in a
/// linear layer's backward pass, summed onto what `dx` holds.
pub(crate) fn linear_input_gradient_onto(
    dx: &mut [f32],
    grad: &[f32],
    weight: &[f32],
    outputs: usize,
) {
    let inputs = weight.len() / outputs.max(1);
    let rows = grad.len() / outputs.max(1);
    product_onto(
        (rows, inputs, outputs),
        dx,
        (grad, outputs as isize, 1),
        (weight, inputs as isize, 1),
    );
}

/// The sum of each column of `rows` (rows × width).
fn column_sums(rows: &[f32], width: usize) -> Vec<f32> {
    rows.par_chunks(width.max(1) * ROWS_PER_TASK)
        .map(|rows| {
            let mut sums = vec![0f32; width];
            for row in rows.chunks(width.max(1)) {
                sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            sums
        })
        .reduce(
            || vec![0f32; width],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

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
        let y = linear_rows(x, w, b);
        let mut shape = x_layout.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = b.len();
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
        let (xs, w, g) = (values(x)?, values(weight)?, values(grad)?);
        let dx = linear_input_gradient(&g, &w, outputs);
        let (dw, db) = linear_parameter_gradients(&xs, &g, inputs, outputs);
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, (outputs, inputs), device)?),
            Some(Tensor::from_vec(db, outputs, device)?),
        ))
    }
}

/// The shape of a multi-head attention over packed projections: each of `batch · seq` rows
/// holds the queries, keys and values side by side, `heads · head` values each.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head: usize,
}

/// Which third of a packed projection row.
#[derive(Clone, Copy)]
enum Part {
    Query = 0,
    Key = 1,
    Value = 2,
}

impl AttentionShape {
    pub fn width(&self) -> usize {
        self.heads * self.head
    }

    /// Where head `h` of sequence `b` starts in the packed projections, and its row and
    /// column strides.
    fn head_of<'a>(
        &self,
        qkv: &'a [f32],
        part: Part,
        b: usize,
        h: usize,
    ) -> (&'a [f32], isize, isize) {
        let row = 3 * self.width();
        let start = b * self.seq * row + part as usize * self.width() + h * self.head;
        (&qkv[start..], row as isize, 1)
    }

    /// Where head `h` of sequence `b` starts in an output (or its gradient), (rows, width).
    fn output_head_of<'a>(&self, out: &'a [f32], b: usize, h: usize) -> (&'a [f32], isize, isize) {
        let start = b * self.seq * self.width() + h * self.head;
        (&out[start..], self.width() as isize, 1)
    }

    /// Copy each (sequence, head)'s blocks, (seq, head) each, into rows of `row` values: the
    /// `i`-th block of a head at column `i · width + h · head`. In parallel over sequences.
    fn scatter<const N: usize>(&self, blocks: &[[Vec<f32>; N]], row: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.batch * self.seq * row];
        out.par_chunks_mut(self.seq * row)
            .enumerate()
            .for_each(|(b, rows)| {
                for h in 0..self.heads {
                    for (part, block) in blocks[b * self.heads + h].iter().enumerate() {
                        let column = part * self.width() + h * self.head;
                        for (i, values) in block.chunks(self.head).enumerate() {
                            let start = i * row + column;
                            rows[start..start + self.head].copy_from_slice(values);
                        }
                    }
                }
            });
        out
    }
}

/// Multi-head attention: per sequence and head, `softmax(q kᵀ · scale + mask)`, dropped out
/// by `dropout` ((batch, heads, seq, seq) factors, 0 or 1/keep) when given, times v. No head
/// is copied out: the products read the projections through strides. The backward pass
/// recomputes the probabilities instead of keeping them (one more product of the four, and
/// no (batch, heads, seq, seq) tensor held from the forward pass to the backward one but the
/// dropout's).
pub(crate) struct Attention<'a> {
    pub shape: AttentionShape,
    /// Additive, (batch, seq).
    pub mask: &'a [f32],
    pub scale: f32,
    pub dropout: Option<&'a [f32]>,
    /// The instruction set of the kernels' softmax.
    pub isa: Isa,
}

impl Attention<'_> {
    /// The probabilities of sequence `b`, head `h`: (seq, seq), before dropout.
    fn probabilities(&self, qkv: &[f32], b: usize, h: usize) -> Vec<f32> {
        let AttentionShape { seq, head, .. } = self.shape;
        let (k_head, rs, cs) = self.shape.head_of(qkv, Part::Key, b, h);
        // q kᵀ: kᵀ's element (d, j) is k[j · row + d].
        let mut scores = new_product(
            (seq, seq, head),
            self.shape.head_of(qkv, Part::Query, b, h),
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
        if let Some(dropout) = self.dropout {
            let block = self.shape.seq * self.shape.seq;
            let start = (b * self.shape.heads + h) * block;
            probabilities
                .iter_mut()
                .zip(&dropout[start..start + block])
                .for_each(|(p, d)| *p *= d);
        }
        probabilities
    }

    /// The attended values, (batch · seq, width), of the packed projections `qkv`.
    pub fn forward(&self, qkv: &[f32]) -> Vec<f32> {
        let AttentionShape {
            batch,
            seq,
            heads,
            head,
        } = self.shape;
        let blocks: Vec<[Vec<f32>; 1]> = (0..batch * heads)
            .into_par_iter()
            .map(|index| {
                let (b, h) = (index / heads, index % heads);
                let p = self.dropped(self.probabilities(qkv, b, h), b, h);
                [new_product(
                    (seq, head, seq),
                    (&p, seq as isize, 1),
                    self.shape.head_of(qkv, Part::Value, b, h),
                    HERE,
                )]
            })
            .collect();
        self.shape.scatter(&blocks, self.shape.width())
    }

    /// The gradient of the packed projections, laid out as they are, given `grad`, the
    /// attended values' (batch · seq, width).
    pub fn backward(&self, qkv: &[f32], grad: &[f32]) -> Vec<f32> {
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
                let p = self.probabilities(qkv, b, h);
                let dropped = self.dropped(p.clone(), b, h);
                let g_head = self.shape.output_head_of(grad, b, h);
                // dv = dropped(p)ᵀ · g.
                let dv = new_product((seq, head, seq), (&dropped, 1, seq as isize), g_head, HERE);
                // d(dropped p) = g · vᵀ, then through the dropout.
                let (v_head, rs, cs) = self.shape.head_of(qkv, Part::Value, b, h);
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
                    self.shape.head_of(qkv, Part::Key, b, h),
                    HERE,
                );
                let dk = new_product(
                    (seq, head, seq),
                    (&ds, 1, seq as isize),
                    self.shape.head_of(qkv, Part::Query, b, h),
                    HERE,
                );
                [dq, dk, dv]
            })
            .collect();
        self.shape.scatter(&blocks, 3 * self.shape.width())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Each op's gradients against the same computation in candle's primitives, whose
    //! backward passes candle derives: dropout on, padding in the mask.

    use candle_core::{Device, Tensor, Var, D};

    use super::*;

    pub(crate) fn random(shape: &[usize], seed: u64) -> Var {
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

    pub(crate) fn max_gap(a: &Tensor, b: &Tensor) -> f32 {
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

    /// Multi-head attention of (batch, seq, heads · head) projections in candle's primitives:
    /// `mask` (batch, 1, 1, seq) additive, `factors` (batch, heads, seq, seq) dropout.
    pub(crate) fn primitive_attention(
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        heads: usize,
        mask: &Tensor,
        scale: f64,
        factors: Option<&[f32]>,
    ) -> Tensor {
        let (batch, seq, width) = q.dims3().unwrap();
        let head = width / heads;
        let split = |t: &Tensor| {
            t.reshape((batch, seq, heads, head))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scores = (split(q).matmul(&split(k).t().unwrap()).unwrap() * scale).unwrap();
        let scores = scores.broadcast_add(mask).unwrap();
        let shifted = scores
            .broadcast_sub(&scores.max_keepdim(D::Minus1).unwrap().detach())
            .unwrap()
            .exp()
            .unwrap();
        let mut p = shifted
            .broadcast_div(&shifted.sum_keepdim(D::Minus1).unwrap())
            .unwrap();
        if let Some(factors) = factors {
            let factors = Tensor::from_slice(factors, (batch, heads, seq, seq), &Device::Cpu);
            p = p.mul(&factors.unwrap()).unwrap();
        }
        p.matmul(&split(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((batch, seq, width))
            .unwrap()
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
        let factors: Vec<f32> = (0..batch * heads * seq * seq)
            .map(|i| if i % 7 == 3 { 0.0 } else { 1.0 / 0.9 })
            .collect();
        let scale = 0.5;
        let attention = Attention {
            shape: AttentionShape {
                batch,
                seq,
                heads,
                head,
            },
            mask: &mask,
            scale,
            dropout: Some(&factors),
            isa: Isa::current(),
        };
        let qkv = Tensor::cat(&[q.as_tensor(), k.as_tensor(), v.as_tensor()], 2).unwrap();
        let qkv = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let fused = attention.forward(&qkv);
        let weights = random(&[batch, seq, width], 99);
        let grad = weights.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let fused_grads = attention.backward(&qkv, &grad);

        let mask = Tensor::from_vec(mask.clone(), (batch, 1, 1, seq), &Device::Cpu).unwrap();
        let primitive =
            primitive_attention((&q, &k, &v), heads, &mask, scale as f64, Some(&factors));
        let fused = Tensor::from_vec(fused, (batch, seq, width), &Device::Cpu).unwrap();
        assert!(
            max_gap(&fused, &primitive) < 1e-5,
            "attention: outputs differ"
        );
        let store = primitive
            .mul(weights.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let fused_grads =
            Tensor::from_vec(fused_grads, (batch, seq, 3 * width), &Device::Cpu).unwrap();
        for (part, var) in [&q, &k, &v].into_iter().enumerate() {
            let fused = fused_grads.narrow(2, part * width, width).unwrap();
            let gap = max_gap(&fused, store.get(var).unwrap());
            assert!(gap < 1e-5, "attention: gradient {part} differs by {gap}");
        }
    }

    #[test]
    fn layer_norm_linear_and_activations_have_the_primitives_gradients() {
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

        let scaled = (x.as_tensor() * 3.0).unwrap();
        for (kind, primitive) in [
            (Activation::Gelu, scaled.gelu_erf().unwrap()),
            (Activation::GeluNew, scaled.gelu().unwrap()),
            (Activation::Relu, scaled.relu().unwrap()),
            (Activation::Silu, scaled.silu().unwrap()),
            (Activation::Tanh, scaled.tanh().unwrap()),
        ] {
            let fused = activation(kind, &scaled).unwrap();
            assert_same_gradients(fused, primitive, &[&x], &format!("{kind:?}"));
        }
    }
}
