//! `y = x · Wᵀ + b` against weights packed once, at load time, for the CPU.
//!
//! `W` is (out, in), as `torch.nn.Linear` stores it. Packing cuts it into panels of [`NR`]
//! output columns; a panel holds, for every input index, the panel's [`NR`] weights side by
//! side, so the micro-kernel streams a panel front to back and every weight is read once per
//! block of rows (once per token when decoding: the GEMV case). Weights can stay f32, or be
//! stored as bf16 (half the bytes) or as int8 with one scale per output channel (a quarter);
//! activations and accumulation stay f32 in every format.
//!
//! The product runs in tasks of up to [`MC`] rows × a run of panels, spread over the cores;
//! inside a task the input is cut into blocks of up to [`KC`] columns (a panel block then
//! stays in L1 while every row of the task uses it) and the task's rows are copied into
//! micro-panels of [`MR`] rows, read in order by the micro-kernel.

use rayon::prelude::*;

/// Output columns per panel: two AVX2 registers.
pub const NR: usize = 16;
/// Rows per micro-kernel call: 6 × 2 accumulators + 2 weight registers + 1 broadcast fit the
/// 16 AVX2 registers.
const MR: usize = 6;
/// Rows per task.
const MC: usize = 72;
/// Input columns per block: a 384 × 16 f32 panel block is 24 KiB, inside a 32 KiB L1.
const KC: usize = 384;

/// How the packed weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// bfloat16: the upper half of an f32, rounded to nearest even.
    Bf16,
    /// Symmetric int8 with one f32 scale per output channel: `w ≈ q · max|w_row| / 127`.
    Int8,
}

#[derive(Debug, Clone)]
enum Panels {
    F32(Aligned<f32>),
    Bf16(Aligned<u16>),
    Int8 {
        values: Aligned<i8>,
        scales: Vec<f32>,
    },
}

/// Element types that any bit pattern is a valid value of.
trait Plain: Copy {}
impl Plain for f32 {}
impl Plain for u16 {}
impl Plain for i8 {}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct CacheLine([u8; 64]);

/// Values starting on a cache line, so that panel rows (16 values) never straddle two lines.
#[derive(Clone)]
struct Aligned<T> {
    lines: Vec<CacheLine>,
    len: usize,
    element: std::marker::PhantomData<T>,
}

impl<T: Plain> From<Vec<T>> for Aligned<T> {
    fn from(values: Vec<T>) -> Self {
        let bytes = std::mem::size_of_val(values.as_slice());
        let mut lines = vec![CacheLine([0; 64]); bytes.div_ceil(64)];
        // SAFETY: `lines` has room for `bytes` bytes; both regions are plain bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr().cast::<u8>(),
                lines.as_mut_ptr().cast::<u8>(),
                bytes,
            );
        }
        Self {
            lines,
            len: values.len(),
            element: std::marker::PhantomData,
        }
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold `len` values of T written by `from` (any bits are a valid
        // T), and a cache line's alignment is a multiple of T's.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T> std::fmt::Debug for Aligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} values)", self.len)
    }
}

/// A weight matrix packed for [`matmul`].
#[derive(Debug, Clone)]
pub struct PackedWeights {
    /// Input features (`in`).
    inner: usize,
    /// Output features (`out`).
    outer: usize,
    panels: Panels,
}

/// f32 → bf16 bits, rounded to nearest even (as `torch.Tensor.to(torch.bfloat16)`).
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

impl PackedWeights {
    /// Pack `weight(o, i)` for `o < outer`, `i < inner` (a row-major (out, in) matrix is
    /// `|o, i| w[o * inner + i]`; a transposed (in, out) one, GPT-2's Conv1D, swaps them).
    pub fn pack(
        inner: usize,
        outer: usize,
        format: WeightFormat,
        weight: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        let panels = outer.div_ceil(NR);
        // Panel p, input i, lane j ↦ W[p·NR + j, i]; lanes past `outer` are zero.
        let packed_index = |index: usize| {
            let (panel, rest) = (index / (inner * NR), index % (inner * NR));
            let (i, lane) = (rest / NR, rest % NR);
            (panel * NR + lane, i)
        };
        let len = panels * inner * NR;
        let panels = match format {
            WeightFormat::F32 => Panels::F32(
                (0..len)
                    .into_par_iter()
                    .map(|index| match packed_index(index) {
                        (o, i) if o < outer => weight(o, i),
                        _ => 0.0,
                    })
                    .collect::<Vec<_>>()
                    .into(),
            ),
            WeightFormat::Bf16 => Panels::Bf16(
                (0..len)
                    .into_par_iter()
                    .map(|index| match packed_index(index) {
                        (o, i) if o < outer => bf16_bits(weight(o, i)),
                        _ => 0,
                    })
                    .collect::<Vec<_>>()
                    .into(),
            ),
            WeightFormat::Int8 => {
                let scales: Vec<f32> = (0..outer)
                    .into_par_iter()
                    .map(|o| (0..inner).fold(0f32, |m, i| m.max(weight(o, i).abs())) / 127.0)
                    .collect();
                let values = (0..len)
                    .into_par_iter()
                    .map(|index| match packed_index(index) {
                        (o, i) if o < outer && scales[o] > 0.0 => {
                            (weight(o, i) / scales[o]).round().clamp(-127.0, 127.0) as i8
                        }
                        _ => 0,
                    })
                    .collect::<Vec<_>>()
                    .into();
                Panels::Int8 { values, scales }
            }
        };
        Self {
            inner,
            outer,
            panels,
        }
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    pub fn outer(&self) -> usize {
        self.outer
    }

    pub fn format(&self) -> WeightFormat {
        match self.panels {
            Panels::F32(_) => WeightFormat::F32,
            Panels::Bf16(_) => WeightFormat::Bf16,
            Panels::Int8 { .. } => WeightFormat::Int8,
        }
    }

    /// Bytes of weights streamed per product (what one decoded token reads).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::Bf16(v) => v.len() * 2,
            Panels::Int8 { values, scales } => values.len() + scales.len() * 4,
        }
    }

    /// The weights as the product sees them, (out, in) row-major: for tests and for going back
    /// to candle's ops on other devices.
    pub fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.outer * self.inner];
        for (o, row) in out.chunks_mut(self.inner.max(1)).enumerate() {
            let (panel, lane) = (o / NR, o % NR);
            for (i, w) in row.iter_mut().enumerate() {
                let index = (panel * self.inner + i) * NR + lane;
                *w = match &self.panels {
                    Panels::F32(v) => v[index],
                    Panels::Bf16(v) => bf16_value(v[index]),
                    Panels::Int8 { values, scales } => values[index] as f32 * scales[o],
                };
            }
        }
        out
    }
}

/// What happens to each output after bias: nothing, or exact GELU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    GeluErf,
}

/// Which micro-kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The best the CPU has, or portable code when `portable` is asked for.
    pub fn detect(portable: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        if !portable && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
        let _ = portable;
        Isa::Portable
    }
}

/// Output rows written by parallel tasks, each to its own block of rows × columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint blocks (see `matmul`), and the buffer outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `out (m × outer) = epilogue(x (m × inner) · Wᵀ + bias) + residual`, all row-major.
///
/// Panics if a slice is shorter than its shape says: callers check shapes first.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    x: &[f32],
    m: usize,
    weights: &PackedWeights,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    out: &mut [f32],
    isa: Isa,
) {
    let (k, n) = (weights.inner, weights.outer);
    assert!(x.len() >= m * k && out.len() >= m * n);
    assert!(bias.is_none_or(|b| b.len() >= n) && residual.is_none_or(|r| r.len() >= m * n));
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let row_blocks = m.div_ceil(MC);
    // Enough tasks to balance the cores; whole rows of panels when the rows alone give that.
    let target = rayon::current_num_threads() * if m == 1 { 8 } else { 4 };
    let panels_per_task = if row_blocks >= target {
        panels
    } else {
        (panels * row_blocks).div_ceil(target).max(1)
    };
    let column_tasks = panels.div_ceil(panels_per_task);
    let shared = SharedOut(out.as_mut_ptr());
    (0..row_blocks * column_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (row_block, column_task) = (task / column_tasks, task % column_tasks);
            let rows = row_block * MC..(m).min((row_block + 1) * MC);
            let first_panel = column_task * panels_per_task;
            let panel_range = first_panel..panels.min(first_panel + panels_per_task);
            let block = Block {
                x,
                k,
                n,
                rows,
                panels: panel_range,
                weights,
                bias,
                out: shared,
            };
            A_PACK.with(|a_pack| block.run(&mut a_pack.borrow_mut(), isa));
            block.finish(epilogue, residual);
        });
}

thread_local! {
    /// Each worker's buffer for packed rows of `x`, kept between products: grown when a
    /// product needs more, never zeroed (every value read is written first).
    static A_PACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One task: `rows` × the columns of `panels`.
struct Block<'a> {
    x: &'a [f32],
    k: usize,
    n: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    weights: &'a PackedWeights,
    bias: Option<&'a [f32]>,
    out: SharedOut,
}

impl Block<'_> {
    fn columns(&self) -> std::ops::Range<usize> {
        self.panels.start * NR..self.n.min(self.panels.end * NR)
    }

    fn run(&self, a_pack: &mut Vec<f32>, isa: Isa) {
        let k = self.k;
        // A block of rows shares each panel block from L1; a single micro-panel of rows (a
        // decoded token) has nothing to share and streams each panel whole instead.
        let blocks = if self.rows.len() <= MR {
            1
        } else {
            k.div_ceil(KC).max(1)
        };
        let kc_step = k.div_ceil(blocks);
        if a_pack.len() < self.rows.len() * kc_step {
            a_pack.resize(self.rows.len() * kc_step, 0.0);
        }
        let mut tile = [[0f32; NR]; MR];
        for (block_index, k0) in (0..k).step_by(kc_step.max(1)).enumerate() {
            let kc = kc_step.min(k - k0);
            // Micro-panels of up to MR rows: for each input column, the rows side by side.
            let mut offset = 0;
            for r0 in self.rows.clone().step_by(MR) {
                let mr = MR.min(self.rows.end - r0);
                let panel = &mut a_pack[offset..offset + kc * mr];
                for i in 0..mr {
                    let row = &self.x[(r0 + i) * k + k0..][..kc];
                    for (slot, &v) in panel[i..].iter_mut().step_by(mr).zip(row) {
                        *slot = v;
                    }
                }
                offset += kc * mr;
            }
            for panel in self.panels.clone() {
                let mut offset = 0;
                for r0 in self.rows.clone().step_by(MR) {
                    let mr = MR.min(self.rows.end - r0);
                    let a = &a_pack[offset..offset + kc * mr];
                    offset += kc * mr;
                    let b_start = (panel * k + k0) * NR;
                    let b = b_start..b_start + kc * NR;
                    let c0 = panel * NR;
                    let scales = match &self.weights.panels {
                        Panels::Int8 { scales, .. } => Some(scales),
                        _ => None,
                    };
                    // A whole panel on AVX2: the kernel writes the output rows itself.
                    #[cfg(target_arch = "x86_64")]
                    if isa == Isa::Avx2 && c0 + NR <= self.n {
                        let target = Target {
                            // SAFETY: row r0 < m and column c0 < n are inside `out`.
                            c: unsafe { self.out.0.add(r0 * self.n + c0) },
                            ldc: self.n,
                            first: block_index == 0,
                            bias: self.bias.map_or(std::ptr::null(), |b| b[c0..].as_ptr()),
                            scales: scales.map_or(std::ptr::null(), |s| s[c0..].as_ptr()),
                        };
                        // SAFETY: the kernel writes mr rows × NR columns from (r0, c0), inside
                        // this task's block, which no other task writes.
                        unsafe { self.weights.panels.tile_avx2(mr, a, b, target) };
                        continue;
                    }
                    let target = Target::tile(&mut tile);
                    match &self.weights.panels {
                        Panels::F32(w) => tile_f32(isa, mr, a, &w[b], target),
                        Panels::Bf16(w) => tile_bf16(isa, mr, a, &w[b], target),
                        Panels::Int8 { values, .. } => tile_int8(isa, mr, a, &values[b], target),
                    }
                    self.store(&tile, r0, mr, panel, block_index == 0, scales);
                }
            }
        }
    }

    /// Write (first block: with bias) or add a tile to the output.
    fn store(
        &self,
        tile: &[[f32; NR]; MR],
        r0: usize,
        mr: usize,
        panel: usize,
        first: bool,
        scales: Option<&Vec<f32>>,
    ) {
        let c0 = panel * NR;
        let cols = NR.min(self.n - c0);
        for (i, tile_row) in tile.iter().enumerate().take(mr) {
            // SAFETY: row r0 + i < m and columns c0 .. c0 + cols < n lie in `out`, inside
            // this task's block, which no other task writes.
            let out = unsafe {
                std::slice::from_raw_parts_mut(self.out.0.add((r0 + i) * self.n + c0), cols)
            };
            let tile_row = &tile_row[..cols];
            match (scales, first, self.bias) {
                (Some(s), true, b) => {
                    for (j, (o, &t)) in out.iter_mut().zip(tile_row).enumerate() {
                        *o = t * s[c0 + j] + b.map_or(0.0, |b| b[c0 + j]);
                    }
                }
                (Some(s), false, _) => {
                    for (j, (o, &t)) in out.iter_mut().zip(tile_row).enumerate() {
                        *o += t * s[c0 + j];
                    }
                }
                (None, true, Some(b)) => {
                    for ((o, &t), &b) in out.iter_mut().zip(tile_row).zip(&b[c0..]) {
                        *o = t + b;
                    }
                }
                (None, true, None) => out.copy_from_slice(tile_row),
                (None, false, _) => {
                    for (o, &t) in out.iter_mut().zip(tile_row) {
                        *o += t;
                    }
                }
            }
        }
    }

    /// The epilogue and the residual, on this task's block while it is still in cache.
    fn finish(&self, epilogue: Epilogue, residual: Option<&[f32]>) {
        if epilogue == Epilogue::None && residual.is_none() {
            return;
        }
        let columns = self.columns();
        for r in self.rows.clone() {
            // SAFETY: as in `store`: this task's own block.
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out.0.add(r * self.n + columns.start),
                    columns.len(),
                )
            };
            if epilogue == Epilogue::GeluErf {
                super::gelu_in_place(out);
            }
            if let Some(residual) = residual {
                let res = &residual[r * self.n + columns.start..r * self.n + columns.end];
                super::add_in_place(out, res);
            }
        }
    }
}

/// Where a micro-kernel puts its mr × NR results: `c[i·ldc + j] = acc · scale[j] + bias[j]`
/// on the first K block, `c[i·ldc + j] += acc · scale[j]` on the others (null `scales` and
/// `bias` are 1 and 0).
#[derive(Clone, Copy)]
struct Target {
    c: *mut f32,
    ldc: usize,
    first: bool,
    bias: *const f32,
    scales: *const f32,
}

impl Target {
    /// The raw sums, into a tile on the stack.
    fn tile(tile: &mut [[f32; NR]; MR]) -> Self {
        Self {
            c: tile.as_mut_ptr().cast(),
            ldc: NR,
            first: true,
            bias: std::ptr::null(),
            scales: std::ptr::null(),
        }
    }
}

impl Panels {
    /// The AVX2 micro-kernel for this format, straight into `target`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `target` holds mr rows of NR writable values at stride ldc;
    /// `bias` and `scales`, when not null, hold NR values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn tile_avx2(&self, mr: usize, a: &[f32], b: std::ops::Range<usize>, target: Target) {
        match self {
            Panels::F32(w) => tile_f32(Isa::Avx2, mr, a, &w[b], target),
            Panels::Bf16(w) => tile_bf16(Isa::Avx2, mr, a, &w[b], target),
            Panels::Int8 { values, .. } => tile_int8(Isa::Avx2, mr, a, &values[b], target),
        }
    }
}

/// Portable micro-kernel: `tile[i][j] = Σ_p a[p·mr + i] · w(p, j)`.
#[inline(always)]
fn tile_portable<const M: usize, T: Copy>(
    a: &[f32],
    b: &[T],
    target: Target,
    load: impl Fn(T) -> f32,
) {
    let mut acc = [[0f32; NR]; M];
    for (a, b) in a.chunks_exact(M).zip(b.chunks_exact(NR)) {
        let mut w = [0f32; NR];
        for (w, &b) in w.iter_mut().zip(b) {
            *w = load(b);
        }
        for (acc, &a) in acc.iter_mut().zip(a) {
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc += a * w;
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: the portable path always targets a stack tile (`Target::tile`), MR × NR.
        let row = unsafe { std::slice::from_raw_parts_mut(target.c.add(i * target.ldc), NR) };
        row.copy_from_slice(acc);
    }
}

/// Instantiate the micro-kernels for one weight type: the portable one for each row count,
/// and the AVX2 one (`$load` turns 16 packed weights at a pointer into two f32 registers).
macro_rules! tile_kernels {
    ($name:ident, $avx2:ident, $ty:ty, $to_f32:expr, $load:expr) => {
        fn $name(isa: Isa, mr: usize, a: &[f32], b: &[$ty], target: Target) {
            debug_assert!(a.len() == (b.len() / NR) * mr);
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 and FMA; the
                // slices hold kc·mr and kc·NR values, which is what the kernel reads.
                Isa::Avx2 => unsafe {
                    let kc = b.len() / NR;
                    match mr {
                        1 => $avx2::<1>(kc, a.as_ptr(), b.as_ptr(), target),
                        2 => $avx2::<2>(kc, a.as_ptr(), b.as_ptr(), target),
                        3 => $avx2::<3>(kc, a.as_ptr(), b.as_ptr(), target),
                        4 => $avx2::<4>(kc, a.as_ptr(), b.as_ptr(), target),
                        5 => $avx2::<5>(kc, a.as_ptr(), b.as_ptr(), target),
                        _ => $avx2::<6>(kc, a.as_ptr(), b.as_ptr(), target),
                    }
                },
                Isa::Portable => match mr {
                    1 => tile_portable::<1, $ty>(a, b, target, $to_f32),
                    2 => tile_portable::<2, $ty>(a, b, target, $to_f32),
                    3 => tile_portable::<3, $ty>(a, b, target, $to_f32),
                    4 => tile_portable::<4, $ty>(a, b, target, $to_f32),
                    5 => tile_portable::<5, $ty>(a, b, target, $to_f32),
                    _ => tile_portable::<6, $ty>(a, b, target, $to_f32),
                },
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<const M: usize>(kc: usize, a: *const f32, b: *const $ty, target: Target) {
            use std::arch::x86_64::*;
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            // One row alone is a chain of dependent FMAs: a second set of accumulators
            // for odd steps keeps two chains in flight per register.
            let mut odd = [_mm256_setzero_ps(); 2];
            let mut p = 0;
            if M == 1 {
                while p + 2 <= kc {
                    let (w0, w1) = $load(b.add(p * NR));
                    let av = _mm256_broadcast_ss(&*a.add(p));
                    acc[0][0] = _mm256_fmadd_ps(av, w0, acc[0][0]);
                    acc[0][1] = _mm256_fmadd_ps(av, w1, acc[0][1]);
                    let (w0, w1) = $load(b.add((p + 1) * NR));
                    let av = _mm256_broadcast_ss(&*a.add(p + 1));
                    odd[0] = _mm256_fmadd_ps(av, w0, odd[0]);
                    odd[1] = _mm256_fmadd_ps(av, w1, odd[1]);
                    p += 2;
                }
            }
            while p < kc {
                let (w0, w1) = $load(b.add(p * NR));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(p * M + i));
                    acc[0] = _mm256_fmadd_ps(av, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, w1, acc[1]);
                }
                p += 1;
            }
            acc[0][0] = _mm256_add_ps(acc[0][0], odd[0]);
            acc[0][1] = _mm256_add_ps(acc[0][1], odd[1]);
            for (i, acc) in acc.iter().enumerate() {
                let row = target.c.add(i * target.ldc);
                for (h, &sum) in acc.iter().enumerate() {
                    let mut v = sum;
                    if !target.scales.is_null() {
                        v = _mm256_mul_ps(v, _mm256_loadu_ps(target.scales.add(8 * h)));
                    }
                    if !target.first {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(row.add(8 * h)));
                    } else if !target.bias.is_null() {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(target.bias.add(8 * h)));
                    }
                    _mm256_storeu_ps(row.add(8 * h), v);
                }
            }
        }
    };
}

tile_kernels!(tile_f32, tile_f32_avx2, f32, |w: f32| w, |b: *const f32| {
    use std::arch::x86_64::*;
    (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)))
});

tile_kernels!(
    tile_bf16,
    tile_bf16_avx2,
    u16,
    bf16_value,
    |b: *const u16| {
        use std::arch::x86_64::*;
        // bf16 → f32: widen each 16-bit value and shift it into the upper half.
        let widen = |p: *const u16| {
            _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
                16,
            ))
        };
        (widen(b), widen(b.add(8)))
    }
);

tile_kernels!(
    tile_int8,
    tile_int8_avx2,
    i8,
    |q: i8| q as f32,
    |b: *const i8| {
        use std::arch::x86_64::*;
        let widen = |p: *const i8| {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
        };
        (widen(b), widen(b.add(8)))
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for o in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[o * k + i] as f64)
                    .sum();
                out[r * n + o] = dot as f32 + bias[o];
            }
        }
        out
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every row count, ragged panels and several K blocks, on every kernel and format:
    /// against an f64 reference product of the weights each format stores.
    #[test]
    fn matches_reference_product() {
        for &(m, k, n) in &[
            (1, 7, 5),
            (7, 40, 33),
            (13, 800, 17),
            (80, 390, 48),
            (2, 1, 1),
        ] {
            let x = pseudo_random(m * k, 1);
            let w = pseudo_random(n * k, 2);
            let bias = pseudo_random(n, 3);
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
                let packed = PackedWeights::pack(k, n, format, |o, i| w[o * k + i]);
                let stored = packed.unpack();
                let expected = reference(&x, m, &stored, k, n, &bias);
                for isa in [Isa::Portable, Isa::detect(false)] {
                    let mut out = vec![f32::NAN; m * n];
                    matmul(
                        &x,
                        m,
                        &packed,
                        Some(&bias),
                        Epilogue::None,
                        None,
                        &mut out,
                        isa,
                    );
                    for (o, e) in out.iter().zip(&expected) {
                        assert!(
                            (o - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{m}x{k}x{n} {format:?} {isa:?}: {o} vs {e}"
                        );
                    }
                }
                // Storage error: bf16 keeps 8 bits, int8 a 127th of the row's largest weight.
                let bound = match format {
                    WeightFormat::F32 => 0.0,
                    WeightFormat::Bf16 => 1.0 / 256.0,
                    WeightFormat::Int8 => 0.5 / 127.0,
                };
                for (s, w) in stored.iter().zip(&w) {
                    assert!((s - w).abs() <= bound * 1.0001, "{format:?}: {s} vs {w}");
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
    }
}
