//! Attention of a decoder's new queries over its KV cache, on the CPU: the keys and values
//! are read in place from the cache buffers (a view of their first `len` positions), with
//! no transposed or contiguous copies, so a decoding step costs O(len) reads per head
//! rather than O(len) copies and a (batch, heads, new, len) score tensor.
//!
//! Each task takes one key and value head and the group of query heads that share it
//! (grouped-query attention), so the head is read from memory once for its group; a bf16
//! cache is widened to f32 once per task, into the task's scratch. A query row spans only its
//! keys from the first to the last that the mask leaves open: the causal future of a prompt's
//! rows, half of a prefill's scores, and the keys before a sliding window (ModernBERT's local
//! layers) are neither computed nor read.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use half::bf16;
use rayon::prelude::*;

use super::isa::Isa;
use super::{reference, softmax_row};

/// `softmax(q kᵀ · scale + mask) v` per head. `q`: (batch, heads, new, d); `k`, `v`:
/// (batch, kv_heads, len, d), any strides (views of a cache), where `kv_heads` divides `heads`
/// and each key and value head serves a group of `heads / kv_heads` query heads (grouped-query
/// attention; transformers' `repeat_kv`, without the copies); `mask`: additive f32 that
/// broadcasts to (batch, 1, new, len). Our kernel on the CPU for f32 queries over f32 or bf16
/// keys and values; elsewhere `reference::attention` on repeated keys and values in `q`'s dtype.
pub fn decoder_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let cache_dtype = matches!(k.dtype(), DType::F32 | DType::BF16) && v.dtype() == k.dtype();
    if !super::use_kernels(q) || !cache_dtype {
        let group = q.dim(1)? / k.dim(1)?.max(1);
        let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
        return reference::attention(
            q,
            &repeat_kv(&k, group)?,
            &repeat_kv(&v, group)?,
            mask,
            scale,
        );
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

/// (batch, kv_heads, len, d) keys or values with each head repeated `group` times in a row,
/// as transformers' `repeat_kv` makes them for grouped-query attention.
/// <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/llama/modeling_llama.py#L117>
fn repeat_kv(x: &Tensor, group: usize) -> candle_core::Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (batch, kv_heads, len, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((batch, kv_heads, group, len, d))?
        .reshape((batch, kv_heads * group, len, d))
}

struct DecoderAttention {
    scale: f32,
    /// (batch, new, len), on the host.
    mask: Option<Vec<f32>>,
}

/// A strided (batch, heads, len, d) view: its data and where (b, h, t) starts.
struct View<'a, T> {
    data: &'a [T],
    start: usize,
    stride: [usize; 4],
}

impl<'a, T> View<'a, T> {
    fn new(data: &'a [T], layout: &Layout) -> candle_core::Result<Self> {
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

    fn row(&self, b: usize, h: usize, t: usize, d: usize) -> &'a [T] {
        let at = self.head(b, h) + t * self.stride[2];
        &self.data[at..at + d]
    }

    /// Where head (b, h) starts.
    fn head(&self, b: usize, h: usize) -> usize {
        self.start + b * self.stride[0] + h * self.stride[1]
    }
}

/// Cached keys or values, as stored.
enum Cached<'a> {
    F32(View<'a, f32>),
    Bf16(View<'a, bf16>),
}

impl<'a> Cached<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<Self> {
        match storage {
            CpuStorage::F32(data) => Ok(Self::F32(View::new(data, layout)?)),
            CpuStorage::BF16(data) => Ok(Self::Bf16(View::new(data, layout)?)),
            _ => candle_core::bail!("decoder-attention: f32 or bf16 keys and values only"),
        }
    }

    /// The first `count` rows of head (b, h) as f32 rows `stride` apart: the cache itself, or
    /// bf16 rows widened into `scratch` (d apart).
    fn rows<'s>(
        &self,
        isa: Isa,
        b: usize,
        h: usize,
        count: usize,
        d: usize,
        scratch: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize)
    where
        'a: 's,
    {
        match self {
            Cached::F32(view) => (&view.data[view.head(b, h)..], view.stride[2]),
            Cached::Bf16(view) => {
                scratch.resize(count * d, 0.0);
                for (t, out) in scratch.chunks_mut(d.max(1)).enumerate() {
                    widen_bf16(isa, view.row(b, h, t, d), out);
                }
                (&scratch[..], d)
            }
        }
    }
}

/// The output buffer, written by tasks at disjoint rows.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes only the rows of its own (batch, query heads, new rows) block,
// and the buffer outlives the parallel loop.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// `len` values from `offset` on.
    ///
    /// # Safety
    /// They lie inside the buffer, and no other task reads or writes them meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// Query rows per task of a prompt's attention: enough tasks for the cores when key and value
/// heads are few (one, in multi-query attention), few enough that a task's widened bf16 rows
/// serve many queries.
const ROWS_PER_TASK: usize = 16;

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
        let grouped = kh > 0 && heads % kh == 0;
        if (kb, kd) != (batch, d) || !grouped || v_layout.shape() != k_layout.shape() {
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
        let CpuStorage::F32(q) = q else {
            candle_core::bail!("decoder-attention: f32 queries only")
        };
        let (q, k, v) = (
            View::new(q, q_layout)?,
            Cached::new(k, k_layout)?,
            Cached::new(v, v_layout)?,
        );
        let isa = super::isa::Isa::current();
        let rows = RowKernels::new(isa, d);
        let no_mask = vec![0f32; len];
        let mask_of = |b: usize, i: usize| match &self.mask {
            Some(mask) => &mask[(b * new + i) * len..(b * new + i + 1) * len],
            None => &no_mask[..],
        };
        // Keys each (batch, query) row attends to: from its first to its last one the mask
        // leaves open, found once here for every key/value head's task. The keys outside,
        // closed with f32::MIN (the models' masks) or -inf (two of those added), would get
        // weights of e^-87 at most (exp's clamp), below any sum's last bit: the causal future
        // of a prompt's rows, a left-padded row's padding, the keys before a sliding window.
        let open: Vec<(usize, usize)> = (0..batch * new)
            .map(|row| {
                let mask = mask_of(row / new, row % new);
                match mask.iter().rposition(|&m| m > f32::MIN) {
                    Some(last) => (
                        mask.iter().position(|&m| m > f32::MIN).unwrap_or(0),
                        last + 1,
                    ),
                    None => (0, len),
                }
            })
            .collect();
        let group = heads / kh;
        let chunks = new.div_ceil(ROWS_PER_TASK).max(1);
        let mut out = vec![0f32; batch * heads * new * d];
        let shared = SharedOut(out.as_mut_ptr());
        (0..batch * kh * chunks).into_par_iter().for_each_init(
            || (vec![0f32; len], Vec::new(), Vec::new()),
            |(scores, keys, values), task| {
                let (b, kv, chunk) = (task / (kh * chunks), task / chunks % kh, task % chunks);
                let first = chunk * ROWS_PER_TASK;
                let query_rows = first..new.min(first + ROWS_PER_TASK);
                let open = |i: usize| open[b * new + i];
                let needed = query_rows.clone().map(|i| open(i).1).max().unwrap_or(0);
                let (key_rows, key_stride) = k.rows(isa, b, kv, needed, d, keys);
                let (value_rows, value_stride) = v.rows(isa, b, kv, needed, d, values);
                for i in query_rows {
                    let (first, end) = open(i);
                    let scores = &mut scores[..end - first];
                    let keys = &key_rows[first * key_stride..];
                    let values = &value_rows[first * value_stride..];
                    for h in kv * group..(kv + 1) * group {
                        rows.dot(q.row(b, h, i, d), keys, key_stride, scores);
                        softmax_row(isa, scores, &mask_of(b, i)[first..end], self.scale);
                        // SAFETY: row (b, h, i) belongs to this task alone (h in its group, i
                        // in its chunk), and lies inside `out`.
                        let out_row = unsafe { shared.slice(((b * heads + h) * new + i) * d, d) };
                        rows.weighted(scores, values, value_stride, out_row);
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((batch, heads, new, d))))
    }
}

dispatch! {
    /// bf16 values to f32: exact, the upper half of the f32's bits.
    fn widen_bf16(isa: Isa, values: &[bf16], out: &mut [f32]) {
        for (out, value) in out.iter_mut().zip(values) {
            *out = f32::from_bits(u32::from(value.to_bits()) << 16);
        }
    }
}

dispatch! {
    /// `scores[t] = query · rows[t·stride ..][..d]`, with 8 lanes so that it vectorises.
    fn dot_rows(isa: Isa, query: &[f32], rows: &[f32], stride: usize, scores: &mut [f32]) {
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
    fn weighted_rows(isa: Isa, weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = out.len();
        out.fill(0.0);
        for (t, &w) in weights.iter().enumerate() {
            for (o, &r) in out.iter_mut().zip(&rows[t * stride..t * stride + d]) {
                *o += w * r;
            }
        }
    }
}

/// The row kernels for one op: the AVX2 ones when the instruction set has them and the head
/// size is a multiple of 8, else the `dispatch!` ones on that instruction set.
#[derive(Clone, Copy)]
enum RowKernels {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Dispatched(Isa),
}

impl RowKernels {
    fn new(isa: Isa, d: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if d.is_multiple_of(8) && isa.min(Isa::of_cpu()).has_avx2() {
            return RowKernels::Avx2;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = d;
        RowKernels::Dispatched(isa)
    }

    /// `scores[t] = query · rows[t·stride ..][..d]`.
    fn dot(self, query: &[f32], rows: &[f32], stride: usize, scores: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            RowKernels::Avx2 => dot_rows_avx2(query, rows, stride, scores),
            RowKernels::Dispatched(isa) => dot_rows(isa, query, rows, stride, scores),
        }
    }

    /// `out = Σ_t weights[t] · rows[t·stride ..][..d]`.
    fn weighted(self, weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            RowKernels::Avx2 => weighted_rows_avx2(weights, rows, stride, out),
            RowKernels::Dispatched(isa) => weighted_rows(isa, weights, rows, stride, out),
        }
    }
}

/// Whether `rows` holds `count` rows of `d` values `stride` apart, `d` a multiple of 8: what
/// the AVX2 row kernels read.
#[cfg(target_arch = "x86_64")]
fn holds_rows(rows: &[f32], count: usize, stride: usize, d: usize) -> bool {
    d.is_multiple_of(8) && (count == 0 || rows.len() >= (count - 1) * stride + d)
}

/// [`dot_rows`] on AVX2 for `query.len()` a multiple of 8: four rows at a time, so that four
/// chains of multiply-adds are in flight (one row's chain is bound by the FMA latency).
#[cfg(target_arch = "x86_64")]
fn dot_rows_avx2(query: &[f32], rows: &[f32], stride: usize, scores: &mut [f32]) {
    assert!(holds_rows(rows, scores.len(), stride, query.len()));
    // SAFETY: only chosen when the CPU has AVX2 and FMA (`RowKernels::new`); every row read,
    // `rows[t·stride ..][..d]` for t < scores.len(), is inside `rows` (asserted above).
    unsafe { dot_rows_avx2_unchecked(query, rows.as_ptr(), stride, scores) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2_unchecked(
    query: &[f32],
    rows: *const f32,
    stride: usize,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = query.len();
    let q = query.as_ptr();
    let mut t = 0;
    while t + 4 <= scores.len() {
        let row = |j: usize| rows.add((t + j) * stride);
        let mut acc = [_mm256_setzero_ps(); 4];
        for c in (0..d).step_by(8) {
            let x = _mm256_loadu_ps(q.add(c));
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(row(j).add(c)), *acc);
            }
        }
        // Each 128-bit half of `sums` holds a partial sum of rows 0..4; add the halves.
        let sums = _mm256_hadd_ps(
            _mm256_hadd_ps(acc[0], acc[1]),
            _mm256_hadd_ps(acc[2], acc[3]),
        );
        let sums = _mm_add_ps(
            _mm256_castps256_ps128(sums),
            _mm256_extractf128_ps::<1>(sums),
        );
        _mm_storeu_ps(scores.as_mut_ptr().add(t), sums);
        t += 4;
    }
    while t < scores.len() {
        let row = rows.add(t * stride);
        let mut acc = _mm256_setzero_ps();
        for c in (0..d).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), _mm256_loadu_ps(row.add(c)), acc);
        }
        let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        scores[t] = _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
        t += 1;
    }
}

/// [`weighted_rows`] on AVX2 for `out.len()` a multiple of 8: up to 32 outputs at a time,
/// kept in registers over every row (not loaded and stored again for each one).
#[cfg(target_arch = "x86_64")]
fn weighted_rows_avx2(weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    assert!(holds_rows(rows, weights.len(), stride, out.len()));
    // SAFETY: as for `dot_rows_avx2`: AVX2 and FMA are there, and every row read is inside
    // `rows` (asserted above).
    unsafe { weighted_rows_avx2_unchecked(weights, rows.as_ptr(), stride, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_rows_avx2_unchecked(
    weights: &[f32],
    rows: *const f32,
    stride: usize,
    out: &mut [f32],
) {
    let mut c = 0;
    while c + 32 <= out.len() {
        weighted_columns::<4>(weights, rows.add(c), stride, out.as_mut_ptr().add(c));
        c += 32;
    }
    while c < out.len() {
        weighted_columns::<1>(weights, rows.add(c), stride, out.as_mut_ptr().add(c));
        c += 8;
    }
}

/// `W` registers of outputs (8·W columns from `out`) over every row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_columns<const W: usize>(
    weights: &[f32],
    rows: *const f32,
    stride: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); W];
    for (t, &w) in weights.iter().enumerate() {
        let w = _mm256_set1_ps(w);
        let row = rows.add(t * stride);
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(8 * i)), *acc);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(8 * i), *acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Grouped heads over f32 and bf16 caches, against candle's attention on keys and values
    /// repeated per query head (in f32, from the same bf16-rounded values): two sequences, a
    /// causal mask whose closed keys end each row (the keys the kernel leaves out), one row
    /// with padding in front, and more query rows than one task takes.
    #[test]
    fn grouped_heads_over_f32_and_bf16_caches_match_repeated_heads() {
        let (batch, heads, kv_heads, new, past, d) = (2, 6, 2, 21, 4, 16);
        let len = past + new;
        let value =
            |i: usize, seed: usize| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0;
        let tensor = |shape: (usize, usize, usize, usize), seed: usize| {
            let count = shape.0 * shape.1 * shape.2 * shape.3;
            Tensor::from_vec(
                (0..count).map(|i| value(i, seed)).collect::<Vec<_>>(),
                shape,
                &Device::Cpu,
            )
            .unwrap()
        };
        let q = tensor((batch, heads, new, d), 1);
        let mut mask = vec![0f32; batch * new * len];
        for b in 0..batch {
            for i in 0..new {
                for t in 0..len {
                    // The models close keys with f32::MIN; -inf where two closings add up.
                    let future = t > past + i;
                    let padding = b == 1 && t < 3;
                    if future || padding {
                        mask[(b * new + i) * len + t] = match (future, padding) {
                            (true, true) => f32::NEG_INFINITY,
                            _ => f32::MIN,
                        };
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (batch, 1, new, len), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let k = tensor((batch, kv_heads, len, d), 2)
                .to_dtype(dtype)
                .unwrap();
            let v = tensor((batch, kv_heads, len, d), 3)
                .to_dtype(dtype)
                .unwrap();
            let ours = decoder_attention(&q, &k, &v, Some(&mask), 0.25).unwrap();
            let group = heads / kv_heads;
            let (k, v) = (
                k.to_dtype(DType::F32).unwrap(),
                v.to_dtype(DType::F32).unwrap(),
            );
            let expected = reference::attention(
                &q,
                &repeat_kv(&k, group).unwrap(),
                &repeat_kv(&v, group).unwrap(),
                Some(&mask),
                0.25,
            )
            .unwrap();
            let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(ours.len(), expected.len());
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{dtype:?} output {i}: {a} against {b}"
                );
            }
        }
    }

    /// The row kernels of every instruction set this CPU has against a plain f64 sum, on head
    /// sizes that use whole groups of 32 outputs, single registers or both, on row counts with
    /// and without a group of four, and on head sizes that are not a multiple of 8 (the
    /// `dispatch!` forms). The outputs start as NaN, so a kernel that skips one fails.
    #[test]
    fn row_kernels_match_plain_sums_on_every_isa() {
        let name = "decoder_attention::row_kernels_match_plain_sums_on_every_isa";
        let isas = Isa::all().into_iter();
        for isa in isas.filter(|&isa| crate::kernels::isa::test_can_run(isa, name)) {
            for (d, len, stride) in [
                (8, 1, 8),
                (64, 7, 64),
                (40, 9, 48),
                (72, 12, 80),
                (96, 3, 96),
                (20, 6, 24),
                (3, 5, 3),
            ] {
                let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
                let query: Vec<f32> = (0..d).map(|i| value(i + 5)).collect();
                let rows: Vec<f32> = (0..len * stride).map(value).collect();
                let row = |t: usize| &rows[t * stride..t * stride + d];
                let kernels = RowKernels::new(isa, d);
                let mut scores = vec![f32::NAN; len];
                kernels.dot(&query, &rows, stride, &mut scores);
                for (t, &score) in scores.iter().enumerate() {
                    let want: f64 = query
                        .iter()
                        .zip(row(t))
                        .map(|(&x, &y)| x as f64 * y as f64)
                        .sum();
                    assert!(
                        (score as f64 - want).abs() < 1e-4,
                        "{} d {d} t {t}: {score} vs {want}",
                        isa.name()
                    );
                }
                let mut out = vec![f32::NAN; d];
                kernels.weighted(&scores, &rows, stride, &mut out);
                for (c, &o) in out.iter().enumerate() {
                    let want: f64 = (0..len).map(|t| scores[t] as f64 * row(t)[c] as f64).sum();
                    assert!(
                        (o as f64 - want).abs() < 1e-3,
                        "{} d {d} column {c}: {o} vs {want}",
                        isa.name()
                    );
                }
            }
        }
    }
}
