//! CPU kernels for the hot paths, as candle custom ops. Each has a portable Rust loop written
//! to auto-vectorise (AVX2/AVX-512 where the target allows) and runs across the CPU's cores;
//! other devices and dtypes fall back to candle's own ops, so results agree everywhere.

mod attention;
pub mod gemm;
pub mod host;
pub mod isa;
pub(crate) mod math;
mod reference;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use attention::{multi_head_attention, AttentionProducts, PositionBias};
pub use decoder_attention::decoder_attention;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

pub use math::{erf, exp, gelu_erf_scalar, gelu_tanh_scalar};

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation the hot paths use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    /// Our kernels, with the best instruction set the CPU has (the default).
    Auto,
    /// Our kernels, in portable code only (no AVX2/AVX-512 paths).
    Portable,
    /// candle's own ops, no custom kernels.
    Reference,
}

/// 0 = not chosen yet (read `FERROFORMERS_KERNELS`), else `KernelMode as u8 + 1`.
static MODE: AtomicU8 = AtomicU8::new(0);

/// The kernel mode: set by [`set_kernel_mode`], else by `FERROFORMERS_KERNELS`
/// (`auto`, `portable`, `reference`), else `Auto`.
pub fn kernel_mode() -> KernelMode {
    let decode = |v: u8| match v {
        2 => KernelMode::Portable,
        3 => KernelMode::Reference,
        _ => KernelMode::Auto,
    };
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let mode = match std::env::var("FERROFORMERS_KERNELS").as_deref() {
                Ok("portable") => KernelMode::Portable,
                Ok("reference") => KernelMode::Reference,
                _ => KernelMode::Auto,
            };
            set_kernel_mode(mode);
            mode
        }
        v => decode(v),
    }
}

/// Force a kernel mode for the whole process (for testing every path in turn).
pub fn set_kernel_mode(mode: KernelMode) {
    let value = match mode {
        KernelMode::Auto => 1,
        KernelMode::Portable => 2,
        KernelMode::Reference => 3,
    };
    MODE.store(value, Ordering::Relaxed);
}

/// Run `work` on one of rayon's worker threads (directly, when already on one). A model's
/// forward pass runs there, so its many parallel kernels are joined by the workers
/// themselves; called from another thread, each kernel would hand its work to the pool and
/// put the caller to sleep until it is done, two context switches per kernel.
pub fn on_worker<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::join(work, || ()).0
    }
}

/// The contiguous f32 data of one input of the custom op `op`.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: contiguous f32 inputs only"),
    }
}

/// Whether the custom CPU kernels apply to `x`.
fn use_kernels(x: &Tensor) -> bool {
    kernel_mode() != KernelMode::Reference
        && x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
}

/// Compile `$body` (a function of slices) three times: for AVX-512, for AVX2 with FMA, and
/// portable. `$name` takes the instruction set to run as its first argument (callers read
/// [`isa::Isa::current`] once per op; tests pass each path in turn) and runs that variant, or the
/// best below it that the CPU has, so that no argument can make it run an instruction the
/// CPU lacks.
macro_rules! dispatch {
    (
        $(#[$meta:meta])*
        fn $name:ident($isa:ident: Isa, $($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$meta])*
        fn $name($isa: $crate::kernels::isa::Isa, $($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernels::isa::Isa;
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    portable($($arg),*)
                }
                match $isa.min(Isa::of_cpu()) {
                    // SAFETY: the CPU has the features the function was compiled for.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Portable => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = $isa;
            portable($($arg),*)
        }
    };
}

mod decoder_attention;
mod decoder_block;
pub mod quant;

pub use decoder_block::{rms_norm, rotated_heads, swiglu, HeadNorms, RotatedHeads};

/// Exact GELU in place, with `isa`'s kernel.
fn gelu_erf_on(isa: isa::Isa, values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = simd::Avx512::on(isa) {
        return avx512.gelu_erf(values);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = simd::Avx2::on(isa) {
        return avx2.gelu_erf(values);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    for v in values.iter_mut() {
        *v = gelu_erf_scalar(*v);
    }
}

dispatch! {
    /// GELU, tanh approximation, in place.
    fn gelu_tanh_on(isa: Isa, values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = gelu_tanh_scalar(*v);
        }
    }
}

dispatch! {
    /// `values += other`, element by element.
    fn add_on(isa: Isa, values: &mut [f32], other: &[f32]) {
        for (v, &o) in values.iter_mut().zip(other) {
            *v += o;
        }
    }
}

/// `row = softmax(row * scale + mask)`, in place, with `isa`'s kernel.
pub(crate) fn softmax_row(isa: isa::Isa, out: &mut [f32], mask: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = simd::Avx512::on(isa) {
        return avx512.softmax(out, mask, scale);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = simd::Avx2::on(isa) {
        return avx2.softmax(out, mask, scale);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    for (o, &bias) in out.iter_mut().zip(mask) {
        *o = *o * scale + bias;
    }
    let max = math::max(out);
    for o in out.iter_mut() {
        *o = exp(*o - max);
    }
    let inverse = 1.0 / math::sum(out);
    for o in out.iter_mut() {
        *o *= inverse;
    }
}

dispatch! {
    /// Layer norm of one row: `(x − mean) / sqrt(var + eps) · weight + bias`, the mean first
    /// and then the variance around it (two passes, as PyTorch computes it).
    fn layer_norm_row(
        isa: Isa,
        out: &mut [MaybeUninit<f32>],
        row: &[f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32
    ) {
        let len = row.len() as f32;
        let mean = math::sum(row) / len;
        let inverse_std = 1.0 / (math::sum_squared_deviations(row, mean) / len + eps).sqrt();
        let params = weight.iter().zip(bias);
        for ((out, &x), (&w, &b)) in out.iter_mut().zip(row).zip(params) {
            out.write((x - mean) * inverse_std * w + b);
        }
    }
}

/// Layer normalisation over the last dimension with `weight` and `bias` of its size, as
/// `torch.nn.functional.layer_norm`. On the CPU in f32 it runs our kernel: rows in parallel,
/// no zero-filled output. Elsewhere candle's `layer_norm`.
pub fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    let params_f32 = weight.dtype() == candle_core::DType::F32 && bias.dtype() == weight.dtype();
    if use_kernels(x) && params_f32 {
        x.contiguous()?
            .apply_op3_no_bwd(weight, bias, &LayerNorm { eps })
    } else {
        candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps)
    }
}

struct LayerNorm {
    eps: f32,
}

impl candle_core::CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, weight, bias) = (
            f32_slice(x, x_layout, self.name())?,
            f32_slice(weight, weight_layout, self.name())?,
            f32_slice(bias, bias_layout, self.name())?,
        );
        let size = x_layout.shape().dims().last().copied().unwrap_or(0);
        if size == 0 || weight.len() != size || bias.len() != size {
            candle_core::bail!(
                "layer-norm: input {:?} against weight {:?} and bias {:?}",
                x_layout.shape(),
                weight_layout.shape(),
                bias_layout.shape()
            )
        }
        let isa = isa::Isa::current();
        // SAFETY: `layer_norm_row` writes each of its `size` outputs (weight and bias are
        // `size` long, checked above).
        let out = unsafe {
            map_rows(x, size, size, |out, row| {
                layer_norm_row(isa, out, row, weight, bias, self.eps)
            })
        };
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// Elements per parallel task: large enough to amortise scheduling, small enough to share the
/// work between cores.
const CHUNK: usize = 16 * 1024;

/// `x` as rows of `in_size` values, each mapped by `row` to `out_size` outputs, rows in
/// parallel tasks of about [`CHUNK`] inputs, into an output that is never zero-filled.
///
/// # Safety
/// `row` writes every one of the outputs it is given; `in_size` is not 0.
unsafe fn map_rows(
    x: &[f32],
    in_size: usize,
    out_size: usize,
    row: impl Fn(&mut [MaybeUninit<f32>], &[f32]) + Sync + Send,
) -> Vec<f32> {
    let rows = x.len() / in_size;
    let mut out = Vec::with_capacity(rows * out_size);
    let rows_per_task = (CHUNK / in_size).max(1);
    out.spare_capacity_mut()[..rows * out_size]
        .par_chunks_mut((rows_per_task * out_size).max(1))
        .zip(x.par_chunks(rows_per_task * in_size))
        .for_each(|(out, x)| {
            for (out, input) in out.chunks_mut(out_size.max(1)).zip(x.chunks(in_size)) {
                row(out, input);
            }
        });
    // SAFETY: `row` wrote every output of every row (the caller's promise).
    unsafe { out.set_len(rows * out_size) };
    out
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`, as `torch.nn.functional.gelu`. On the CPU in f32
/// it runs our vectorised kernel (within 2e-6 of the exact value); elsewhere candle's
/// `gelu_erf`.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if use_kernels(x) {
        x.contiguous()?.apply_op1_no_bwd(&GeluErf)
    } else {
        x.gelu_erf()
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("gelu-erf kernel: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu-erf kernel: contiguous input only")
        };
        let mut output = data[start..end].to_vec();
        let isa = isa::Isa::current();
        output
            .par_chunks_mut(CHUNK)
            .for_each(|chunk| gelu_erf_on(isa, chunk));
        Ok((CpuStorage::F32(output), layout.shape().clone()))
    }
}

/// `softmax(scores * scale + mask)` over the last dimension, in one pass. `scores`:
/// (batch, heads, q, k); `mask`: additive, (batch or 1, heads or 1, q or 1, k): a padding
/// mask, or one with MPNet's per-head position bias in it. On the CPU in f32 one
/// kernel does it all, without the intermediate tensors; elsewhere candle's ops, in f32.
pub fn scaled_masked_softmax(
    scores: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let fast = use_kernels(scores)
        && mask.is_none_or(|m| m.dtype() == candle_core::DType::F32 && m.rank() == 4);
    match mask {
        Some(mask) if fast => scores.contiguous()?.apply_op2_no_bwd(
            &mask.contiguous()?,
            &ScaledMaskedSoftmax {
                scale: scale as f32,
            },
        ),
        None if fast => {
            let (batch, _, _, k) = scores.dims4()?;
            let zeros = Tensor::zeros((batch, 1, 1, k), candle_core::DType::F32, scores.device())?;
            scores.contiguous()?.apply_op2_no_bwd(
                &zeros,
                &ScaledMaskedSoftmax {
                    scale: scale as f32,
                },
            )
        }
        _ => {
            let scores = (scores.to_dtype(candle_core::DType::F32)? * scale)?;
            let scores = match mask {
                Some(mask) => scores.broadcast_add(mask)?,
                None => scores,
            };
            candle_nn::ops::softmax_last_dim(&scores)
        }
    }
}

struct ScaledMaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "scaled-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        scores: &CpuStorage,
        scores_layout: &Layout,
        mask: &CpuStorage,
        mask_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(scores), CpuStorage::F32(mask)) = (scores, mask) else {
            candle_core::bail!("scaled-masked-softmax kernel: f32 only")
        };
        let (Some((s_start, s_end)), Some((m_start, m_end))) = (
            scores_layout.contiguous_offsets(),
            mask_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("scaled-masked-softmax kernel: contiguous inputs only")
        };
        let (scores, mask) = (&scores[s_start..s_end], &mask[m_start..m_end]);
        let (batch, heads, q, k) = scores_layout.shape().dims4()?;
        let (mask_batch, mask_heads, mask_q, mask_k) = mask_layout.shape().dims4()?;
        if !(mask_heads == 1 || mask_heads == heads)
            || mask_k != k
            || !(mask_batch == 1 || mask_batch == batch)
            || !(mask_q == 1 || mask_q == q)
        {
            candle_core::bail!(
                "scaled-masked-softmax: mask shape {:?} does not fit scores {:?}",
                mask_layout.shape(),
                scores_layout.shape()
            )
        }
        let mut output = vec![0f32; scores.len()];
        let rows_per_task = (CHUNK / k.max(1)).max(1);
        let isa = isa::Isa::current();
        output
            .par_chunks_mut(rows_per_task * k)
            .enumerate()
            .for_each(|(task, out)| {
                for (i, out_row) in out.chunks_mut(k).enumerate() {
                    let row = task * rows_per_task + i;
                    let (b, h, qi) = (row / (heads * q), row / q % heads, row % q);
                    let mask_row = ((if mask_batch == 1 { 0 } else { b }) * mask_heads
                        + if mask_heads == 1 { 0 } else { h })
                        * mask_q
                        + if mask_q == 1 { 0 } else { qi };
                    let m = &mask[mask_row * k..(mask_row + 1) * k];
                    out_row.copy_from_slice(&scores[row * k..(row + 1) * k]);
                    softmax_row(isa, out_row, m, self.scale);
                }
            });
        Ok((CpuStorage::F32(output), scores_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::isa::{test_can_run, Isa};
    use super::*;
    use candle_core::{Device, Tensor};

    /// Values across the range that matters, of a length with a remainder past 16 lanes.
    fn spread(len: usize, offset: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i + offset) * 37 % 1001) as f32 / 100.0 - 5.0)
            .collect()
    }

    /// Each kernel with an instruction-set variant (the `dispatch!`ed ones, and exact GELU and
    /// softmax with their AVX2 forms), run on each instruction set in turn by its explicit
    /// argument (not the process-wide limit, which other tests share), against the scalar
    /// form computed here. Outputs start as NaN where the kernel writes them, so a variant
    /// that skips values fails; comparisons are `<`, which NaN fails.
    #[test]
    fn every_isa_variant_matches_the_scalar_form() {
        let name = "kernels::every_isa_variant_matches_the_scalar_form";
        for isa in Isa::all()
            .into_iter()
            .filter(|&isa| test_can_run(isa, name))
        {
            let what = |kernel: &str, i: usize| format!("{} {kernel} at {i}", isa.name());
            let x = spread(1003, 0);

            let mut values = x.clone();
            gelu_tanh_on(isa, &mut values);
            for (i, (&got, &v)) in values.iter().zip(&x).enumerate() {
                let want = gelu_tanh_scalar(v);
                assert!(
                    (got - want).abs() < 1e-6,
                    "{}: {got} vs {want}",
                    what("gelu-tanh", i)
                );
            }

            let mut values = x.clone();
            gelu_erf_on(isa, &mut values);
            for (i, (&got, &v)) in values.iter().zip(&x).enumerate() {
                let want = gelu_erf_scalar(v);
                assert!(
                    (got - want).abs() < 1e-6 * (1.0 + v.abs()),
                    "{}: {got} vs {want}",
                    what("gelu-erf", i)
                );
            }

            let other = spread(x.len(), 11);
            let mut values = x.clone();
            add_on(isa, &mut values, &other);
            for (i, ((&got, &v), &o)) in values.iter().zip(&x).zip(&other).enumerate() {
                assert!(got == v + o, "{}: {got} vs {}", what("add", i), v + o);
            }

            for len in [5, 16, 131] {
                let row = &x[..len];
                let mask: Vec<f32> = (0..len)
                    .map(|i| if i % 7 == 3 { f32::MIN } else { 0.0 })
                    .collect();
                let mut out = row.to_vec();
                softmax_row(isa, &mut out, &mask, 0.5);
                let shifted: Vec<f64> = row
                    .iter()
                    .zip(&mask)
                    .map(|(&v, &m)| v as f64 * 0.5 + m as f64)
                    .collect();
                let max = shifted.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = shifted.iter().map(|s| (s - max).exp()).sum();
                for (i, (&got, s)) in out.iter().zip(&shifted).enumerate() {
                    let want = (s - max).exp() / total;
                    assert!(
                        (got as f64 - want).abs() < 1e-6,
                        "{}: {got} vs {want}",
                        what("softmax", i)
                    );
                }

                let weight = spread(len, 3);
                let bias = spread(len, 7);
                let mut out = vec![MaybeUninit::new(f32::NAN); len];
                layer_norm_row(isa, &mut out, row, &weight, &bias, 1e-5);
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
                let variance =
                    row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
                for (i, got) in out.iter().enumerate() {
                    // SAFETY: filled with NaN above, so initialised whatever the kernel wrote.
                    let got = unsafe { got.assume_init() } as f64;
                    let normalised = (row[i] as f64 - mean) / (variance + 1e-5).sqrt();
                    let want = normalised * weight[i] as f64 + bias[i] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{}: {got} vs {want}",
                        what("layer-norm", i)
                    );
                }
            }
        }
    }

    /// Rows far from zero, of several lengths (a remainder past the 16 lanes too): against
    /// f64, within 1e-4. The variance is taken around the mean; `E[x²] − mean²` in f32 loses
    /// most of the spread's digits at an offset of 100.
    #[test]
    fn layer_norm_matches_f64_on_rows_far_from_zero() {
        for size in [7, 16, 768, 1000] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * size)
                .map(|i| 100.0 + ((i * 37 % 101) as f32 / 50.0 - 1.0))
                .collect();
            let weight: Vec<f32> = (0..size).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
            let bias: Vec<f32> = (0..size).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
            let eps = 1e-12;
            let tensor = |values: &[f32], shape: &[usize]| {
                Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
            };
            let out = super::layer_norm(
                &tensor(&x, &[rows, size]),
                &tensor(&weight, &[size]),
                &tensor(&bias, &[size]),
                eps,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            for (r, row) in x.chunks(size).enumerate() {
                let n = size as f64;
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                for (j, &v) in row.iter().enumerate() {
                    let expected = (v as f64 - mean) / (var + eps as f64).sqrt() * weight[j] as f64
                        + bias[j] as f64;
                    let got = out[r * size + j] as f64;
                    assert!(
                        (got - expected).abs() < 1e-4,
                        "size {size}, row {r}, column {j}: {got} against {expected}"
                    );
                }
            }
        }
    }
}
