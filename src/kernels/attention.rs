//! Fused multi-head self-attention for encoders on the CPU: for each (batch, head) pair, in
//! parallel, `softmax(Q Kᵀ · scale + bias + mask) V` with the head's rows read in place from the
//! packed (batch, seq, 3 · hidden) projections and the result written in place into a
//! (batch, seq, hidden) output. No head transposes, no (batch, heads, seq, seq) score tensor:
//! each task keeps one head's scores in a buffer of its own.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::{bf16_column_pairs, bf16_pairs_product, bf16_pairs_row, NR};
use super::isa::Isa;
use super::{f32_slice, reference, softmax_row};

/// The precision of attention's two products (scores and the weighted sum of values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionProducts {
    /// f32 throughout.
    F32,
    /// Queries, keys, values and the probabilities rounded to bf16, products summed in f32
    /// (`vdpbf16ps`), softmax in f32: what PyTorch's bf16 attention computes. Models with bf16
    /// weights ask for it; it runs on CPUs with AVX-512 BF16, and elsewhere products are f32.
    Bf16,
}

/// What a model adds to every sequence's scores, per head, beside the padding mask.
#[derive(Clone, Copy, Debug)]
pub enum PositionBias<'a> {
    /// Additive f32, (heads, seq, seq): MPNet's relative position buckets.
    Table(&'a Tensor),
    /// ALiBi's symmetric bias, `-slope_h · |i − j|` for query i and key j, one slope per head
    /// (JinaBERT). The fused kernel computes each query's row as it needs it: a table would
    /// grow with the square of the input, 3.2 GB for 12 heads at JinaBERT's 8,192 tokens.
    Alibi(&'a [f64]),
}

impl PositionBias<'_> {
    /// The bias as a (heads, seq, seq) table, for the path that adds it to the scores whole.
    fn table(self, len: usize, device: &candle_core::Device) -> candle_core::Result<Tensor> {
        match self {
            PositionBias::Table(table) => Ok(table.clone()),
            PositionBias::Alibi(slopes) => {
                let values: Vec<f32> = slopes
                    .iter()
                    .flat_map(|&slope| {
                        (0..len).flat_map(move |i| (0..len).map(move |j| alibi(slope, i, j)))
                    })
                    .collect();
                Tensor::from_vec(values, (slopes.len(), len, len), device)
            }
        }
    }
}

/// ALiBi's bias of query `i` for key `j`: `-slope · |i − j|`, in f64, rounded once to f32.
fn alibi(slope: f64, i: usize, j: usize) -> f32 {
    (-slope * i.abs_diff(j) as f64) as f32
}

/// Attention over packed projections `qkv`: (batch, seq, 3 · heads · head_dim), query, key
/// and value side by side as one GEMM makes them. Returns (batch, seq, heads · head_dim).
/// `mask`: additive f32, (batch, 1, 1, seq), as `layers::padding_mask` makes it.
/// `position_bias`: the same for every sequence of the batch; `None` for the encoders without
/// one. On the CPU in f32 this is one fused kernel; elsewhere the heads are split and
/// `reference::attention` runs.
pub fn multi_head_attention(
    qkv: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    position_bias: Option<PositionBias>,
    scale: f64,
    products: AttentionProducts,
) -> candle_core::Result<Tensor> {
    let fused = super::use_kernels(qkv)
        && mask.is_none_or(|m| m.dims().len() == 4 && m.dim(2).ok() == Some(1));
    if !fused {
        let len = qkv.dim(1)?;
        let table = position_bias
            .map(|bias| bias.table(len, qkv.device()))
            .transpose()?;
        return split_heads_attention(qkv, heads, mask, table.as_ref(), scale);
    }
    let host = |t: &Tensor| {
        t.to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()
    };
    let op = FusedAttention {
        heads,
        scale: scale as f32,
        mask: mask.map(host).transpose()?,
        position_bias: position_bias
            .map(|bias| -> candle_core::Result<HostBias> {
                Ok(match bias {
                    PositionBias::Table(table) => HostBias::Table(host(table)?),
                    PositionBias::Alibi(slopes) => HostBias::Alibi(slopes.to_vec()),
                })
            })
            .transpose()?,
        products,
    };
    qkv.contiguous()?.apply_op1_no_bwd(&op)
}

/// The portable path: each of q, k, v to (batch, heads, seq, d), attention, and back. A
/// position bias joins the mask, (batch or 1, heads, seq, seq).
fn split_heads_attention(
    qkv: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    position_bias: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (batch, len, packed) = qkv.dims3()?;
    let width = packed / 3;
    let split = |i: usize| -> candle_core::Result<Tensor> {
        qkv.narrow(D::Minus1, i * width, width)?
            .reshape((batch, len, heads, width / heads))?
            .transpose(1, 2)
    };
    let additive = match (mask, position_bias) {
        (mask, None) => mask.cloned(),
        (None, Some(bias)) => Some(bias.unsqueeze(0)?),
        (Some(mask), Some(bias)) => Some(mask.broadcast_add(&bias.unsqueeze(0)?)?),
    };
    let context =
        reference::attention(&split(0)?, &split(1)?, &split(2)?, additive.as_ref(), scale)?;
    context.transpose(1, 2)?.reshape((batch, len, width))
}

struct FusedAttention {
    heads: usize,
    scale: f32,
    /// (batch, k_seq) additive mask, on the host.
    mask: Option<Vec<f32>>,
    position_bias: Option<HostBias>,
    products: AttentionProducts,
}

/// [`PositionBias`] on the host.
enum HostBias {
    /// (heads, q_seq, k_seq) additive.
    Table(Vec<f32>),
    /// One slope per head.
    Alibi(Vec<f64>),
}

/// One head's part of a [`HostBias`].
#[derive(Clone, Copy)]
enum HeadBias<'a> {
    /// (q_seq, k_seq) additive.
    Table(&'a [f32]),
    Alibi(f64),
}

/// What is added to one head's scores before the softmax: its sequence's padding mask, the
/// same for every query, and the head's (q_seq, k_seq) position bias where the model has one.
#[derive(Clone, Copy)]
struct ScoreBias<'a> {
    mask: &'a [f32],
    position: Option<HeadBias<'a>>,
}

impl<'a> ScoreBias<'a> {
    /// The values added to query `i`'s scores, in `buffer` when they are a sum. transformers
    /// adds the bias, then the mask (`scores + position_bias + attention_mask`); here the two
    /// are summed first, which changes nothing where the mask is 0 and leaves `f32::MIN`
    /// where it is not (a bias is far below one of its units in the last place).
    fn row<'b>(self, i: usize, buffer: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        let Some(position) = self.position else {
            return self.mask;
        };
        let len = self.mask.len();
        buffer.clear();
        match position {
            HeadBias::Table(table) => buffer.extend(
                self.mask
                    .iter()
                    .zip(&table[i * len..(i + 1) * len])
                    .map(|(mask, bias)| mask + bias),
            ),
            HeadBias::Alibi(slope) => buffer.extend(
                self.mask
                    .iter()
                    .enumerate()
                    .map(|(j, mask)| mask + alibi(slope, i, j)),
            ),
        }
        buffer
    }
}

thread_local! {
    /// Each worker's buffers for bf16 heads, kept from call to call: fresh ones for each
    /// batch of tasks cost 1.5% of a bf16 BERT-base 1×128 forward pass in zero-filling.
    static BF16_HEAD: std::cell::RefCell<Bf16Head> = std::cell::RefCell::new(Bf16Head::default());
}

/// One head's operands in bf16 pairs, as the `vdpbf16ps` tile kernels read them, and its
/// scores.
#[derive(Default)]
struct Bf16Head {
    /// Query rows: seq × head_dim / 2 pairs.
    queries: Vec<i32>,
    /// Keys as panels: key j is column j % NR of panel j / NR, its head_dim / 2 pairs down
    /// the panel; keys past seq are zero.
    keys: Vec<i32>,
    /// Scores, then probabilities: seq × keys (seq rounded up to whole panels).
    scores: Vec<f32>,
    /// Probabilities as pairs of consecutive keys: seq × keys / 2.
    probabilities: Vec<i32>,
    /// Values as panels: column c of panel c / NR, pairs of consecutive keys down the panel.
    values: Vec<i32>,
    /// One row's pairs on their way into a panel.
    row: Vec<i32>,
    /// One query's mask plus position bias (`ScoreBias::row`).
    additive: Vec<f32>,
}

/// A pointer that parallel tasks write through, each to its own disjoint (rows, head) block.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `cpu_fwd`), and the buffer outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The element `offset` places in. (A method, so closures capture the whole `Send` value,
    /// not its raw-pointer field.)
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(qkv, layout, self.name())?;
        let (batch, len, packed) = layout.shape().dims3()?;
        if packed % 3 != 0 || (packed / 3) % self.heads != 0 {
            candle_core::bail!(
                "fused-attention: packed width {packed} does not split into 3 x {} heads",
                self.heads
            )
        }
        let width = packed / 3;
        if let Some(mask) = &self.mask {
            if mask.len() != batch * len {
                candle_core::bail!(
                    "fused-attention: mask of {} values for {batch} x {len}",
                    mask.len()
                )
            }
        }
        match &self.position_bias {
            Some(HostBias::Table(table)) if table.len() != self.heads * len * len => {
                candle_core::bail!(
                    "fused-attention: position bias of {} values for {} heads x {len} x {len}",
                    table.len(),
                    self.heads
                )
            }
            Some(HostBias::Alibi(slopes)) if slopes.len() != self.heads => {
                candle_core::bail!(
                    "fused-attention: {} ALiBi slopes for {} heads",
                    slopes.len(),
                    self.heads
                )
            }
            _ => {}
        }
        let head_dim = width / self.heads;
        let no_mask = vec![0f32; len];
        let isa = Isa::current();
        // Not zero-filled: the heads' products write every value (`read_dst` false).
        let mut out = Vec::<f32>::with_capacity(batch * len * width);
        let shared = SharedOut(out.as_mut_ptr());
        let dims = HeadDims {
            len,
            packed,
            width,
            head_dim,
        };
        let bias = |b: usize, h: usize| ScoreBias {
            mask: match &self.mask {
                Some(mask) => &mask[b * len..(b + 1) * len],
                None => &no_mask[..],
            },
            position: self.position_bias.as_ref().map(|bias| match bias {
                HostBias::Table(table) => {
                    HeadBias::Table(&table[h * len * len..(h + 1) * len * len])
                }
                HostBias::Alibi(slopes) => HeadBias::Alibi(slopes[h]),
            }),
        };
        // The bf16 kernels take whole panels of a head's output columns.
        let bf16 = self.products == AttentionProducts::Bf16
            && isa.has_avx512()
            && head_dim.is_multiple_of(NR);
        if bf16 {
            (0..batch * self.heads).into_par_iter().for_each(|task| {
                let (b, h) = (task / self.heads, task % self.heads);
                BF16_HEAD.with(|buffers| {
                    let buffers = &mut buffers.borrow_mut();
                    self.head_bf16(isa, qkv, dims, b, h, bias(b, h), buffers, shared);
                });
            });
        } else {
            (0..batch * self.heads).into_par_iter().for_each_init(
                || (vec![0f32; len * len], Vec::new()),
                |(scores, additive), task| {
                    let (b, h) = (task / self.heads, task % self.heads);
                    let bias = bias(b, h);
                    self.head_f32(isa, qkv, dims, b, h, bias, scores, additive, shared);
                },
            );
        }
        // SAFETY: the (batch, head) tasks wrote every row of every head's columns.
        unsafe { out.set_len(batch * len * width) };
        Ok((CpuStorage::F32(out), Shape::from((batch, len, width))))
    }
}

/// The shape of the packed projections: `len` rows of `packed` values per sequence; each of
/// q, k and v `width` wide; heads `head_dim` wide.
#[derive(Clone, Copy)]
struct HeadDims {
    len: usize,
    packed: usize,
    width: usize,
    head_dim: usize,
}

impl HeadDims {
    /// Where head `h`'s query row `i` of sequence `b` starts in the projections; its key and
    /// value rows start `width` and `2 · width` further on.
    fn query(&self, b: usize, h: usize, i: usize) -> usize {
        (b * self.len + i) * self.packed + h * self.head_dim
    }

    /// Where head `h`'s output row 0 of sequence `b` starts; rows are `width` apart.
    fn output(&self, b: usize, h: usize) -> usize {
        b * self.len * self.width + h * self.head_dim
    }
}

impl FusedAttention {
    /// Head `h` of sequence `b` in f32, with the `gemm` crate's kernels, into its (rows, head)
    /// block of `out`.
    #[allow(clippy::too_many_arguments)]
    fn head_f32(
        &self,
        isa: Isa,
        qkv: &[f32],
        dims: HeadDims,
        b: usize,
        h: usize,
        bias: ScoreBias,
        scores: &mut [f32],
        additive: &mut Vec<f32>,
        out: SharedOut,
    ) {
        let HeadDims {
            len,
            packed,
            width,
            head_dim,
        } = dims;
        let q = dims.query(b, h, 0);
        let (k, v) = (q + width, q + 2 * width);
        // SAFETY: every pointer stays inside its buffer: rows b·len .. (b+1)·len, and the
        // head's d columns of the q, k or v part of a row. This task alone writes the
        // (rows, head) block of `out`.
        unsafe {
            // scores (len × len) = scale · Q_bh (len × d) · K_bhᵀ (d × len)
            gemm::gemm(
                len,
                len,
                head_dim,
                scores.as_mut_ptr(),
                1,
                len as isize,
                false,
                qkv.as_ptr().add(q),
                1,
                packed as isize,
                qkv.as_ptr().add(k),
                packed as isize,
                1,
                0.0,
                self.scale,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
        for (i, row) in scores.chunks_mut(len).enumerate() {
            softmax_row(isa, row, bias.row(i, additive), 1.0);
        }
        unsafe {
            // out rows (len × d) = P (len × len) · V_bh (len × d)
            gemm::gemm(
                len,
                head_dim,
                len,
                out.at(dims.output(b, h)),
                1,
                width as isize,
                false,
                scores.as_ptr(),
                1,
                len as isize,
                qkv.as_ptr().add(v),
                1,
                packed as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    }

    /// Head `h` of sequence `b` with bf16 products (`AttentionProducts::Bf16`), into its
    /// (rows, head) block of `out`. The operands are rounded into the layouts of the GEMM's
    /// bf16 tile kernels: queries as rows of pairs, keys as panels (one key per column), the
    /// probabilities as rows of pairs of consecutive keys, values as panels of such pairs.
    /// Keys are padded with zeros to whole panels; their probabilities are zero.
    #[allow(clippy::too_many_arguments)]
    fn head_bf16(
        &self,
        isa: Isa,
        qkv: &[f32],
        dims: HeadDims,
        b: usize,
        h: usize,
        bias: ScoreBias,
        buffers: &mut Bf16Head,
        out: SharedOut,
    ) {
        let HeadDims {
            len,
            width,
            head_dim,
            ..
        } = dims;
        let half = head_dim / 2;
        let keys = len.next_multiple_of(NR);
        let key_pairs = keys / 2;
        let row = |i: usize, part: usize| &qkv[dims.query(b, h, i) + part * width..][..head_dim];
        let Bf16Head {
            queries,
            keys: key_panels,
            scores,
            probabilities,
            values,
            row: pairs,
            additive,
        } = buffers;

        queries.resize(len * half, 0);
        for (i, out) in queries.chunks_mut(half).enumerate() {
            bf16_pairs_row(isa, row(i, 0), out);
        }
        key_panels.clear();
        key_panels.resize(keys * half, 0);
        pairs.resize(head_dim, 0);
        for j in 0..len {
            bf16_pairs_row(isa, row(j, 1), &mut pairs[..half]);
            let panel = &mut key_panels[j / NR * half * NR..][..half * NR];
            for (lane, &pair) in panel
                .iter_mut()
                .skip(j % NR)
                .step_by(NR)
                .zip(&pairs[..half])
            {
                *lane = pair;
            }
        }

        scores.resize(len * keys, 0.0);
        // SAFETY: `scores` holds len rows of `keys` values.
        unsafe {
            bf16_pairs_product(
                isa,
                queries,
                half,
                len,
                key_panels,
                half,
                keys / NR,
                scores.as_mut_ptr(),
                keys,
            )
        };
        probabilities.resize(len * key_pairs, 0);
        for (i, (scores, out)) in scores
            .chunks_mut(keys)
            .zip(probabilities.chunks_mut(key_pairs))
            .enumerate()
        {
            let (real, padding) = scores.split_at_mut(len);
            softmax_row(isa, real, bias.row(i, additive), self.scale);
            padding.fill(0.0);
            bf16_pairs_row(isa, scores, out);
        }

        values.clear();
        values.resize(head_dim * key_pairs, 0);
        // The partner of an odd sequence's last key.
        let zero_row = vec![0f32; if len.is_multiple_of(2) { 0 } else { head_dim }];
        for g in 0..len.div_ceil(2) {
            let even = row(2 * g, 2);
            let odd = match 2 * g + 1 < len {
                true => row(2 * g + 1, 2),
                false => &zero_row[..],
            };
            bf16_column_pairs(isa, even, odd, pairs);
            for (panel, pairs) in pairs.chunks(NR).enumerate() {
                values[(panel * key_pairs + g) * NR..][..NR].copy_from_slice(pairs);
            }
        }
        // SAFETY: the head's (rows, columns) block of `out`, `width` apart, is this task's
        // alone to write.
        unsafe {
            bf16_pairs_product(
                isa,
                probabilities,
                key_pairs,
                len,
                values,
                key_pairs,
                head_dim / NR,
                out.at(dims.output(b, h)),
                width,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::pseudo_random;
    use crate::kernels::gemm::{bf16_bits, bf16_value};

    fn bf16(x: f32) -> f64 {
        bf16_value(bf16_bits(x)) as f64
    }

    /// Random q/k/v, (batch, len, 3 · heads · d), from `seed`, and an additive mask that pads
    /// the last `padding` positions of the second row.
    fn padded_qkv(
        (batch, len, heads, d): (usize, usize, usize, usize),
        seed: u32,
        padding: usize,
    ) -> (Tensor, Tensor) {
        let device = candle_core::Device::Cpu;
        let width = 3 * heads * d;
        let qkv = Tensor::from_vec(
            pseudo_random(batch * len * width, seed),
            (batch, len, width),
            &device,
        )
        .expect("a tensor of its own size");
        let mut mask = vec![0f32; batch * len];
        mask[2 * len - padding..].fill(f32::MIN);
        let mask = Tensor::from_vec(mask, (batch, 1, 1, len), &device).expect("mask");
        (qkv, mask)
    }

    /// An attention's output, flattened.
    fn values(output: candle_core::Result<Tensor>) -> Vec<f32> {
        output
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("attention runs")
    }

    /// The largest difference between `a` and `b`; NaN when any difference is NaN, so that a
    /// comparison against a bound fails on it.
    fn max_gap(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(
                0f32,
                |worst, gap| if gap.is_nan() { gap } else { worst.max(gap) },
            )
    }

    /// What the bf16 products promise, in f64: q, k, v and the probabilities rounded to bf16,
    /// everything else exact; `bias` (heads, len, len) added to the scores before the mask.
    /// Returns (batch, len, width).
    fn bf16_reference(
        qkv: &[f32],
        (batch, len, heads, d): (usize, usize, usize, usize),
        mask: &[f32],
        bias: Option<&[f32]>,
        scale: f64,
    ) -> Vec<f64> {
        let width = heads * d;
        let at = |b: usize, i: usize, part: usize, h: usize, c: usize| {
            bf16(qkv[(b * len + i) * 3 * width + part * width + h * d + c])
        };
        let mut out = vec![0f64; batch * len * width];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..len {
                    let scores: Vec<f64> = (0..len)
                        .map(|j| {
                            let dot: f64 =
                                (0..d).map(|c| at(b, i, 0, h, c) * at(b, j, 1, h, c)).sum();
                            let bias = bias.map_or(0.0, |bias| bias[(h * len + i) * len + j]);
                            dot * scale + bias as f64 + mask[b * len + j] as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = exps.iter().sum();
                    for c in 0..d {
                        out[(b * len + i) * width + h * d + c] = (0..len)
                            .map(|j| bf16((exps[j] / total) as f32) * at(b, j, 2, h, c))
                            .sum();
                    }
                }
            }
        }
        out
    }

    /// The bf16 products (queries × keys, probabilities × values) against the f64 product
    /// of the same bf16-rounded operands: sequences that fill whole key panels (128) and that
    /// do not (13, odd: a zero partner for the last key), heads of 32 and 64, a padding mask
    /// on the second sequence, peaked scores (|q|, |k| up to 2); without and with a position
    /// bias per head (MPNet's, within ±1). Differences come from the f32 sums and softmax, and
    /// from a probability that f32 rounds to the neighbouring bf16 (2^-8 of its share of an
    /// output).
    #[test]
    fn bf16_products_match_the_rounded_reference() {
        let name = "attention::bf16_products_match_the_rounded_reference";
        if !crate::kernels::isa::test_can_run(Isa::Avx512, name) || !Isa::current().has_avx512() {
            eprintln!("{name}: SKIPPED: the bf16 products run on AVX-512 only");
            return;
        }
        let cases = [(13, 2, 64), (128, 2, 64), (37, 3, 32)];
        for ((len, heads, d), with_bias) in cases.into_iter().flat_map(|c| [(c, false), (c, true)])
        {
            let batch = 2;
            let width = heads * d;
            let mut qkv: Vec<f32> = pseudo_random(batch * len * 3 * width, len as u32)
                .into_iter()
                .map(|v| v * 2.0)
                .collect();
            // Values within ±1.
            for (i, v) in qkv.iter_mut().enumerate() {
                if (i / width) % 3 == 2 {
                    *v /= 2.0;
                }
            }
            let mut mask = vec![0f32; batch * len];
            for j in len - len / 3..len {
                mask[len + j] = f32::MIN;
            }
            let scale = 1.0 / (d as f64).sqrt();
            let tensor =
                Tensor::from_slice(&qkv, (batch, len, 3 * width), &candle_core::Device::Cpu)
                    .expect("a tensor of its own size");
            let mask_tensor =
                Tensor::from_slice(&mask, (batch, 1, 1, len), &candle_core::Device::Cpu)
                    .expect("a tensor of its own size");
            let bias = with_bias.then(|| pseudo_random(heads * len * len, 7));
            let bias_tensor = bias.as_ref().map(|bias| {
                Tensor::from_slice(bias, (heads, len, len), &candle_core::Device::Cpu)
                    .expect("a tensor of its own size")
            });
            let run = |products| {
                let (mask, bias) = (
                    Some(&mask_tensor),
                    bias_tensor.as_ref().map(PositionBias::Table),
                );
                multi_head_attention(&tensor, heads, mask, bias, scale, products)
                    .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                    .expect("attention runs")
            };
            let (got, f32_path) = (run(AttentionProducts::Bf16), run(AttentionProducts::F32));
            let expected =
                bf16_reference(&qkv, (batch, len, heads, d), &mask, bias.as_deref(), scale);
            assert_eq!(got.len(), expected.len());
            let mut worst = 0f64;
            for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                assert!(g.is_finite(), "len {len}, d {d}: output {i} is {g}");
                worst = worst.max((g as f64 - e).abs());
            }
            let drift = got
                .iter()
                .zip(&f32_path)
                .map(|(&g, &f)| (g - f).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "len {len}, d {d}, bias {with_bias}: {worst:.2e} from the rounded reference, \
                 {drift:.2e} from f32"
            );
            assert!(
                worst <= BF16_ATTENTION_BOUND,
                "len {len}, d {d}, bias {with_bias}: {worst} > bound"
            );
        }
    }

    /// ALiBi computed row by row in the fused kernel (f32 and, where the CPU has it, bf16
    /// products) equals its table added whole on the split heads, for a head count that is no
    /// power of two, with padding.
    #[test]
    fn alibi_rows_in_the_fused_kernel_match_the_table() {
        let (len, heads, d) = (21, 3, 32);
        let (qkv, mask) = padded_qkv((2, len, heads, d), 21, 6);
        let slopes = [0.5, 0.125, 0.0078125];
        let alibi = PositionBias::Alibi(&slopes);
        let table = alibi
            .table(len, &candle_core::Device::Cpu)
            .expect("the table");
        let scale = 1.0 / (d as f64).sqrt();
        let split = values(split_heads_attention(
            &qkv,
            heads,
            Some(&mask),
            Some(&table),
            scale,
        ));
        let unbiased = values(split_heads_attention(&qkv, heads, Some(&mask), None, scale));
        assert!(
            max_gap(&split, &unbiased) > 1e-2,
            "ALiBi must change the output"
        );
        for products in [AttentionProducts::F32, AttentionProducts::Bf16] {
            let run = |bias| {
                values(multi_head_attention(
                    &qkv,
                    heads,
                    Some(&mask),
                    Some(bias),
                    scale,
                    products,
                ))
            };
            let (rows, whole) = (run(alibi), run(PositionBias::Table(&table)));
            eprintln!(
                "ALiBi rows, {products:?} products asked, {:?} kernels (bf16 products need \
                 AVX-512; elsewhere they are f32)",
                Isa::current()
            );
            assert!(rows.iter().all(|v| v.is_finite()));
            assert_eq!(
                rows.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{products:?}: the rows computed in the kernel are the table's"
            );
            if products == AttentionProducts::F32 {
                let error = max_gap(&rows, &split);
                assert!(error <= 1e-5, "fused against split heads: {error}");
            }
        }
    }

    /// The fused f32 kernel with a position bias (MPNet's) and a padding mask against candle's
    /// ops on the split heads (`reference::attention`, the path off the CPU): the bias is read
    /// for the right head, query and key. (tests/kernel_paths.rs runs MPNet on each
    /// instruction set.)
    #[test]
    fn position_bias_in_the_fused_kernel_matches_the_split_heads() {
        let (len, heads, d) = (19, 3, 8);
        let (qkv, mask) = padded_qkv((2, len, heads, d), 11, 5);
        let bias = Tensor::from_vec(
            pseudo_random(heads * len * len, 12),
            (heads, len, len),
            &candle_core::Device::Cpu,
        )
        .expect("bias");
        let scale = 1.0 / (d as f64).sqrt();
        let split = values(split_heads_attention(
            &qkv,
            heads,
            Some(&mask),
            Some(&bias),
            scale,
        ));
        let unbiased = values(split_heads_attention(&qkv, heads, Some(&mask), None, scale));
        assert!(
            max_gap(&split, &unbiased) > 1e-2,
            "the bias must change the output"
        );
        let fused = values(multi_head_attention(
            &qkv,
            heads,
            Some(&mask),
            Some(PositionBias::Table(&bias)),
            scale,
            AttentionProducts::F32,
        ));
        let error = max_gap(&fused, &split);
        eprintln!(
            "{}: {error:.1e} from the split heads",
            Isa::current().name()
        );
        assert!(error <= 1e-6, "{error} from the split heads");
    }

    /// See `bf16_products_match_the_rounded_reference`. Measured on the Zen 5: 1.2e-4 (128
    /// keys), 7.6e-6 and 6e-8 (37 and 13); the same outputs are 3.1e-3 to 3.8e-3 from the f32
    /// products', which is the rounding itself.
    const BF16_ATTENTION_BOUND: f64 = 1e-3;
}
