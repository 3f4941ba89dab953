//! AVX-512 micro-kernels, for CPUs with AVX-512 F/BW/VL, BF16 and VNNI (Zen 4 and 5,
//! Sapphire Rapids and later): 6 rows × two 16-column panels in twelve 16-lane accumulators,
//! over f32 weights (`vfmadd231ps`: one product per lane), bf16 pairs (`vdpbf16ps`: two) and
//! int8 quads (`vpdpbusd`: four); and one-row kernels over bf16 pairs and int8 quads for
//! decoding. Every function here needs those features: callers reach them only through
//! `Isa::has_avx512`, and the layouts they read are built by `pack` (`grouped_panels`,
//! `GroupedRows`).
//!
//! Why two panels: a step then loads two weight registers and broadcasts six inputs for
//! twelve multiply-adds, where one panel would need an input broadcast per multiply-add,
//! more loads than the two load ports give. Twelve independent accumulators also cover the
//! 4–6 cycle latency of two 512-bit pipes. On the 2-core Zen 5 VM a loop of independent
//! 512-bit FMAs runs at ~2× the AVX2 rate (179 against 91 GFLOP/s on one core), `vdpbf16ps`
//! at ~2× that in products, and `vpdpbusd` at ~2× again.

use std::arch::x86_64::*;
use std::mem::transmute;

use super::tile::{prefetch_distance, Ahead, Target, AHEAD_STEP, ROW_STREAMS};
use super::NR;

/// `step(p)` for p in 0..steps, asking L2 for one line of `ahead` every [`AHEAD_STEP`] steps
/// (the AVX2 kernels' scheme, see [`Ahead`]).
#[inline(always)]
fn steps_with_prefetch(steps: usize, ahead: Ahead, mut step: impl FnMut(usize)) {
    let whole = steps / AHEAD_STEP * AHEAD_STEP;
    let mut line = 0;
    for p0 in (0..whole).step_by(AHEAD_STEP) {
        if line < ahead.lines {
            // SAFETY: a hint only: it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.address(line).cast()) };
            line += 1;
        }
        for p in p0..p0 + AHEAD_STEP {
            step(p);
        }
    }
    for p in whole..steps {
        step(p);
    }
}

/// Asks for the lines of `target`'s M rows × P panels, which the kernel writes at its end:
/// issued first, their misses overlap the kernel's products instead of stalling its stores.
/// A batch's outputs (BERT-base 32×128: 12–50 MB per product) are in no cache, and a tile's
/// lines filled the store queue at each kernel's end (the samples fell on the caller's
/// first stores). Same-binary pairs on the 2-core Zen 4, BERT-base 32×128: int8 1207–1214 →
/// 1124–1141 ms, f32 −2%, bf16 unchanged.
#[inline(always)]
unsafe fn prefetch_target<const M: usize, const P: usize>(target: Target) {
    for i in 0..M {
        for j in 0..P {
            // SAFETY: a hint only: it never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(target.c.wrapping_add(i * target.ldc + NR * j).cast());
        }
    }
}

/// f32: `M` packed rows of `a` (kc·M values) × `P` panels of `b` (kc·NR values each,
/// `stride` values apart).
///
/// # Safety
/// The CPU has `Isa::Avx512`'s features; the pointers hold what is said above; `target` holds
/// M rows of P·NR columns (or is a one-panel tile, P = 1).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn tile_f32<const M: usize, const P: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    stride: usize,
    target: Target,
    ahead: Ahead,
) {
    prefetch_target::<M, P>(target);
    let mut acc = [[_mm512_setzero_ps(); P]; M];
    steps_with_prefetch(kc, ahead, |p| {
        let mut w = [_mm512_setzero_ps(); P];
        for (j, w) in w.iter_mut().enumerate() {
            *w = _mm512_loadu_ps(b.add(j * stride + p * NR));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(p * M + i));
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_fmadd_ps(av, w, *acc);
            }
        }
    });
    store_f32(&acc, target);
}

/// bf16 pairs: `M` rows of `a` (gc pairs of bf16 each, read in place, `lda` pairs apart) ×
/// `P` panels of `b` (gc pair rows of 2·NR values each, `stride` values apart); each lane sums
/// two products per step.
///
/// # Safety
/// As [`tile_f32`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn tile_bf16<const M: usize, const P: usize>(
    gc: usize,
    a: *const i32,
    lda: usize,
    b: *const u16,
    stride: usize,
    target: Target,
    ahead: Ahead,
) {
    let weights = |q: usize| -> [__m512bh; P] {
        std::array::from_fn(|j| {
            transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                b.add(j * stride + q * 2 * NR).cast(),
            ))
        })
    };
    let row =
        |i: usize, q: usize| transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(i * lda + q)));
    if gc == 0 {
        return store_f32(&[[_mm512_setzero_ps(); P]; M], target);
    }
    prefetch_target::<M, P>(target);
    // The first step's products start the sums: a zeroed array of nine to twelve rows of
    // accumulators was set by a call to `memset` and loaded back, every call (4% of a bf16
    // BERT-base 32×128 forward pass).
    let w = weights(0);
    let mut acc: [[__m512; P]; M] = std::array::from_fn(|i| {
        let av = row(i, 0);
        std::array::from_fn(|j| _mm512_dpbf16_ps(_mm512_setzero_ps(), av, w[j]))
    });
    steps_with_prefetch(gc - 1, ahead, |q| {
        let w = weights(q + 1);
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = row(i, q + 1);
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_dpbf16_ps(*acc, av, w);
            }
        }
    });
    store_f32(&acc, target);
}

/// int8 quads: `M` rows of `a` (gc quads of u8 each, read in place, `lda` quads apart) × `P`
/// panels of `b` (gc quad rows of 4·NR signed bytes, `stride` bytes apart), exact in i32.
///
/// # Safety
/// As [`tile_f32`]; a target with column sums holds P·NR of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn tile_int8<const M: usize, const P: usize>(
    gc: usize,
    a: *const i32,
    lda: usize,
    b: *const i8,
    stride: usize,
    target: Target,
    ahead: Ahead,
) {
    let weights = |q: usize| -> [__m512i; P] {
        std::array::from_fn(|j| _mm512_loadu_si512(b.add(j * stride + q * 4 * NR).cast()))
    };
    let row = |i: usize, q: usize| _mm512_set1_epi32(*a.add(i * lda + q));
    if gc == 0 {
        return store_i32(&[[_mm512_setzero_si512(); P]; M], target);
    }
    prefetch_target::<M, P>(target);
    // As in `tile_bf16`: the first step starts the sums.
    let w = weights(0);
    let mut acc: [[__m512i; P]; M] = std::array::from_fn(|i| {
        let av = row(i, 0);
        std::array::from_fn(|j| _mm512_dpbusd_epi32(_mm512_setzero_si512(), av, w[j]))
    });
    steps_with_prefetch(gc - 1, ahead, |q| {
        let w = weights(q + 1);
        for (i, acc) in acc.iter_mut().enumerate() {
            let av = row(i, q + 1);
            for (acc, &w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_dpbusd_epi32(*acc, av, w);
            }
        }
    });
    store_i32(&acc, target);
}

/// One row of bf16 pairs `a` × `targets.len()` whole panels that follow each other in `b`,
/// each stored to its target. Only on `Isa::Avx512` (see `Block::row_groups`).
pub(super) fn row_bf16(a: &[i32], b: &[u16], targets: &[Target]) {
    assert!(b.len() == targets.len() * a.len() * 2 * NR);
    // SAFETY: only called on the AVX-512 path (the CPU has its features); `b` holds P panels
    // of `a.len()` pair rows, which is what the kernel reads.
    unsafe {
        match targets.len() {
            1 => row_bf16_panels::<1>(a, b.as_ptr(), targets),
            2 => row_bf16_panels::<2>(a, b.as_ptr(), targets),
            3 => row_bf16_panels::<3>(a, b.as_ptr(), targets),
            _ => row_bf16_panels::<ROW_STREAMS>(a, b.as_ptr(), targets),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
unsafe fn row_bf16_panels<const P: usize>(a: &[i32], b: *const u16, targets: &[Target]) {
    let groups = a.len();
    let mut acc = [_mm512_setzero_ps(); P];
    for (q, &pair) in a.iter().enumerate() {
        let av = transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
        // A panel row is one cache line: ask for each one ahead, into the next group of
        // panels near the end (as the AVX2 one-row kernels do).
        let distance = prefetch_distance(q * 64, groups * 64, P);
        for (j, acc) in acc.iter_mut().enumerate() {
            let row = b.add((j * groups + q) * 2 * NR);
            _mm_prefetch::<_MM_HINT_T0>(row.cast::<i8>().wrapping_add(distance));
            let w = transmute::<__m512i, __m512bh>(_mm512_loadu_si512(row.cast()));
            *acc = _mm512_dpbf16_ps(*acc, av, w);
        }
    }
    for (&acc, &target) in acc.iter().zip(targets) {
        store_f32(&[[acc]], target);
    }
}

/// One row of u8 quads `a` × `targets.len()` whole panels of int8 quads that follow each
/// other in `b`, each stored to its target (with its scales, zero point and column sums).
/// Only on `Isa::Avx512` (see `Block::row_groups`).
pub(super) fn row_int8(a: &[i32], b: &[i8], targets: &[Target]) {
    assert!(b.len() == targets.len() * a.len() * 4 * NR);
    // SAFETY: as in `row_bf16`.
    unsafe {
        match targets.len() {
            1 => row_int8_panels::<1>(a, b.as_ptr(), targets),
            2 => row_int8_panels::<2>(a, b.as_ptr(), targets),
            3 => row_int8_panels::<3>(a, b.as_ptr(), targets),
            _ => row_int8_panels::<ROW_STREAMS>(a, b.as_ptr(), targets),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
unsafe fn row_int8_panels<const P: usize>(a: &[i32], b: *const i8, targets: &[Target]) {
    let groups = a.len();
    let mut acc = [_mm512_setzero_si512(); P];
    for (q, &quad) in a.iter().enumerate() {
        let av = _mm512_set1_epi32(quad);
        let distance = prefetch_distance(q * 64, groups * 64, P);
        for (j, acc) in acc.iter_mut().enumerate() {
            let row = b.add((j * groups + q) * 4 * NR);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(distance));
            *acc = _mm512_dpbusd_epi32(*acc, av, _mm512_loadu_si512(row.cast()));
        }
    }
    for (&acc, &target) in acc.iter().zip(targets) {
        store_i32(&[[acc]], target);
    }
}

/// Integer sums to f32, less `zero_points[i] · column_sums[j]` (in i32, exact) where the
/// target has column sums, then stored as [`store_f32`] does.
///
/// # Safety
/// As [`store_f32`].
#[inline(always)]
unsafe fn store_i32<const M: usize, const P: usize>(acc: &[[__m512i; P]; M], target: Target) {
    let mut sums = [[_mm512_setzero_ps(); P]; M];
    for (i, (sums, acc)) in sums.iter_mut().zip(acc).enumerate() {
        for (j, (sum, &acc)) in sums.iter_mut().zip(acc).enumerate() {
            let mut acc = acc;
            if !target.column_sums.is_null() {
                let zero_point = _mm512_set1_epi32(*target.zero_points.add(i));
                let column_sums = _mm512_loadu_si512(target.column_sums.add(NR * j).cast());
                acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(zero_point, column_sums));
            }
            *sum = _mm512_cvtepi32_ps(acc);
        }
    }
    store_f32(&sums, target);
}

/// Write sums as `target` says: × column scale × row scale, then + bias on the first K block
/// or + what the output holds on the others; panel j at column 16·j. The same operations in
/// the same order as `Block::store`, so a tile and a direct store give the same bits.
///
/// Always inlined into the kernels, which is why it has no `target_feature` of its own (Rust
/// refuses `inline(always)` with one): out of line, a kernel spilled its accumulators to the
/// stack and this read them back, every call. Inlined, bf16 BERT-base 32×128 took 7% less
/// time (901/903/883 → 836/839/823 ms, same-binary pairs on the 2-core Zen 5), 1×128 4% less.
///
/// # Safety
/// Called only from the kernels of this file (the CPU has `Isa::Avx512`'s features); `target`
/// holds M rows of P·NR columns.
#[inline(always)]
unsafe fn store_f32<const M: usize, const P: usize>(sums: &[[__m512; P]; M], target: Target) {
    for (i, sums) in sums.iter().enumerate() {
        let row = target.c.add(i * target.ldc);
        for (j, &sum) in sums.iter().enumerate() {
            let mut v = sum;
            if !target.scales.is_null() {
                v = _mm512_mul_ps(v, _mm512_loadu_ps(target.scales.add(NR * j)));
            }
            if !target.row_scales.is_null() {
                v = _mm512_mul_ps(v, _mm512_set1_ps(*target.row_scales.add(i)));
            }
            if !target.first {
                v = _mm512_add_ps(v, _mm512_loadu_ps(row.add(NR * j)));
            } else if !target.bias.is_null() {
                v = _mm512_add_ps(v, _mm512_loadu_ps(target.bias.add(NR * j)));
            }
            _mm512_storeu_ps(row.add(NR * j), v);
        }
    }
}

/// `row` rounded to bf16, two to an i32 (`vcvtne2ps2bf16`: to nearest even, as `bf16_bits`,
/// except that denormal inputs count as zero), 32 values at a time. Returns the values done:
/// the caller converts the rest.
///
/// # Safety
/// The CPU has `Isa::Avx512`'s features; `pairs` holds at least `row.len() / 2` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn bf16_pairs(row: &[f32], pairs: &mut [i32]) -> usize {
    let whole = row.len() / 32 * 32;
    assert!(pairs.len() * 2 >= whole);
    for i in (0..whole).step_by(32) {
        let low = _mm512_loadu_ps(row.as_ptr().add(i));
        let high = _mm512_loadu_ps(row.as_ptr().add(i + 16));
        let packed = transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(high, low));
        _mm512_storeu_si512(pairs.as_mut_ptr().add(i / 2).cast(), packed);
    }
    whole
}

/// `values` rounded to bf16 bits (`vcvtneps2bf16`: as [`bf16_pairs`] rounds), 16 at a time;
/// `values.len()` is a multiple of 16.
///
/// # Safety
/// The CPU has `Isa::Avx512`'s features; `out` is at least as long as `values`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn bf16_values(values: &[f32], out: &mut [std::mem::MaybeUninit<u16>]) {
    assert!(values.len().is_multiple_of(16) && out.len() >= values.len());
    for c in (0..values.len()).step_by(16) {
        let bits = transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(_mm512_loadu_ps(
            values.as_ptr().add(c),
        )));
        _mm256_storeu_si256(out.as_mut_ptr().add(c).cast(), bits);
    }
}

/// `out[c]` = (`even[c]`, `odd[c]`) as bf16 in the low and high half, 16 columns at a time
/// (`vcvtne2ps2bf16` puts the two rows' halves side by side, `vpermw` interleaves them).
/// Returns the columns done: the caller pairs the rest.
///
/// # Safety
/// The CPU has `Isa::Avx512`'s features; `odd` and `out` are at least as long as `even`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn bf16_column_pairs(even: &[f32], odd: &[f32], out: &mut [i32]) -> usize {
    let whole = even.len() / 16 * 16;
    assert!(odd.len() >= whole && out.len() >= whole);
    // Word 2c of the result is word c of the converted pair (even's), word 2c + 1 is word
    // 16 + c (odd's).
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    for c in (0..whole).step_by(16) {
        let halves = transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
            _mm512_loadu_ps(odd.as_ptr().add(c)),
            _mm512_loadu_ps(even.as_ptr().add(c)),
        ));
        let pairs = _mm512_permutexvar_epi16(interleave, halves);
        _mm512_storeu_si512(out.as_mut_ptr().add(c).cast(), pairs);
    }
    whole
}

/// The smallest and largest of `row` and 0, and whether every value is finite, 16 lanes at
/// a time (a NaN or infinity turns `0 · v` into NaN).
///
/// # Safety
/// The CPU has `Isa::Avx512`'s features.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn range(row: &[f32]) -> (f32, f32, bool) {
    let (chunks, tail) = row.as_chunks::<16>();
    let zero = _mm512_setzero_ps();
    let (mut low, mut high, mut poison) = (zero, zero, zero);
    for chunk in chunks {
        let v = _mm512_loadu_ps(chunk.as_ptr());
        low = _mm512_min_ps(low, v);
        high = _mm512_max_ps(high, v);
        poison = _mm512_fmadd_ps(v, zero, poison);
    }
    let (mut lo, mut hi) = (_mm512_reduce_min_ps(low), _mm512_reduce_max_ps(high));
    let mut finite = !_mm512_reduce_add_ps(poison).is_nan();
    for &v in tail {
        (lo, hi, finite) = (lo.min(v), hi.max(v), finite && v.is_finite());
    }
    (lo, hi, finite)
}

/// `pack::quantize_quads` 16 values at a time, with the same bits: `v · inverse + zero`
/// (a multiply, then an add), rounded to nearest even by `vcvtps2dq`, clamped to 0..=255
/// (`vpmaxsd`, then `vpmovusdb`'s unsigned saturation; NaN converts to i32::MIN, hence 0).
/// Returns the values done: the caller quantizes the rest.
///
/// # Safety
/// The CPU has `Isa::Avx512`'s features; `quads` holds at least `row.len() / 4` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni,avx2,fma")]
pub(super) unsafe fn quantize_quads(
    row: &[f32],
    inverse: f32,
    zero: f32,
    quads: &mut [i32],
) -> usize {
    let whole = row.len() / 16 * 16;
    assert!(quads.len() * 4 >= whole);
    let (inverse, zero, floor) = (
        _mm512_set1_ps(inverse),
        _mm512_set1_ps(zero),
        _mm512_setzero_si512(),
    );
    for i in (0..whole).step_by(16) {
        let v = _mm512_add_ps(
            _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(i)), inverse),
            zero,
        );
        let q = _mm512_max_epi32(_mm512_cvtps_epi32(v), floor);
        _mm_storeu_si128(
            quads.as_mut_ptr().add(i / 4).cast(),
            _mm512_cvtusepi32_epi8(q),
        );
    }
    whole
}
