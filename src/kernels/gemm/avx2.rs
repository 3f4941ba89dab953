//! AVX2 + FMA micro-kernels (Haswell, Zen 1 and later): 6 rows × one 16-column panel in
//! twelve 8-lane accumulators, one-row kernels over up to four panels side by side, and the
//! AVX2 forms of packing and of the 16-bit quantizer. Every function here needs AVX2 and FMA:
//! callers reach them only through `Isa::has_avx2`.

use std::arch::x86_64::*;

use super::pack::INT8_PANEL_ROW;
use super::tile::{
    prefetch_distance, Ahead, Target, AHEAD_STEP, INT8_PAIRS_PER_SUM, MR, ROW_STREAMS,
};
use super::NR;

/// [`quantize_pairs`] on AVX2, 16 values at a time: it runs before every int8 product, on
/// one core while the others wait (scalar, 3072 inputs took ~3.5 µs).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_pairs(values: &[f32], inverse: f32, pairs: &mut [i32]) {
    let whole = values.len() / 16 * 16;
    assert!(pairs.len() * 2 >= values.len());
    let (scale, half, sign) = (
        _mm256_set1_ps(inverse),
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(-0.0),
    );
    let quantize = |v: __m256| {
        let scaled = _mm256_mul_ps(v, scale);
        // + 0.5 with the value's sign, then truncate: half away from zero.
        let rounded = _mm256_add_ps(scaled, _mm256_or_ps(half, _mm256_and_ps(scaled, sign)));
        // NaN to 0, as the scalar `as` conversion does (`cvttps` would give i32::MIN).
        let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(rounded, rounded);
        _mm256_cvttps_epi32(_mm256_and_ps(rounded, ordered))
    };
    for i in (0..whole).step_by(16) {
        let low = quantize(_mm256_loadu_ps(values.as_ptr().add(i)));
        let high = quantize(_mm256_loadu_ps(values.as_ptr().add(i + 8)));
        // To 16 bits per 128-bit half (low 0–3, high 0–3 | low 4–7, high 4–7), then the
        // 64-bit quarters in input order: 16 values, two per i32, even input low.
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(low, high));
        _mm256_storeu_si256(pairs.as_mut_ptr().add(i / 2).cast(), packed);
    }
    super::pack::quantize_pairs(&values[whole..], inverse, &mut pairs[whole / 2..]);
}

/// The first columns of six rows (`sources`, of equal length) into `panel` as `pack_rows`
/// lays them out, 8 columns at a time by an 8 × 8 transpose (the last two rows zero) with
/// 8-wide stores 6 values apart, each over the previous one's two zeros. Returns the columns
/// done: all but the last 1–8, whose last store would run past the panel. Scalar packing
/// took 1.3% of a BERT-base 1×128 forward pass.
#[target_feature(enable = "avx2")]
pub(super) fn pack_six_rows(sources: &[&[f32]; MR], panel: &mut [f32]) -> usize {
    let kc = sources[0].len();
    assert!(sources.iter().all(|s| s.len() == kc) && panel.len() >= kc * MR);
    let zero = _mm256_setzero_ps();
    let mut p0 = 0;
    // A group's last store ends at 6·p0 + 56 values: inside the panel while p0 + 9 <= kc.
    while p0 + 9 <= kc {
        // SAFETY: columns p0 .. p0 + 8 < kc of each source; stores end inside the panel.
        unsafe {
            let r: [__m256; MR] =
                std::array::from_fn(|i| _mm256_loadu_ps(sources[i].as_ptr().add(p0)));
            let (t0, t1) = (
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
            );
            let (t2, t3) = (
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
            );
            let (t4, t5) = (
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
            );
            // Columns (0, 4), (1, 5), (2, 6), (3, 7) of rows 0–3, then of rows 4–5.
            let low = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            let high = [
                _mm256_shuffle_ps::<0x44>(t4, zero),
                _mm256_shuffle_ps::<0xEE>(t4, zero),
                _mm256_shuffle_ps::<0x44>(t5, zero),
                _mm256_shuffle_ps::<0xEE>(t5, zero),
            ];
            let out = panel.as_mut_ptr().add(p0 * MR);
            for c in 0..4 {
                let column = _mm256_permute2f128_ps::<0x20>(low[c], high[c]);
                _mm256_storeu_ps(out.add(c * MR), column);
            }
            for c in 0..4 {
                let column = _mm256_permute2f128_ps::<0x31>(low[c], high[c]);
                _mm256_storeu_ps(out.add((c + 4) * MR), column);
            }
        }
        p0 += 8;
    }
    p0
}

/// Instantiate the AVX2 micro-kernels for one weight type (`$load` turns 16 packed weights
/// at a pointer into two f32 registers): the tile kernel, and the one-row kernel over up to
/// [`ROW_STREAMS`] panels (`$prefetch`: whether it asks for its weights `PREFETCH_AHEAD` bytes
/// early).
macro_rules! tile_kernels {
    ($avx2:ident, $row:ident, $row_avx2:ident, $ty:ty, $load:expr, $prefetch:expr) => {
        /// The AVX2 micro-kernel: `M` rows of `a` (packed) × one panel of `kc` rows.
        ///
        /// # Safety
        /// The CPU has AVX2 and FMA; `a` holds kc·M values and `b` kc·NR; `target` as
        /// [`store`] needs it.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn $avx2<const M: usize>(
            kc: usize,
            a: *const f32,
            b: *const $ty,
            target: Target,
            ahead: Ahead,
        ) {
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            let step = |acc: &mut [[__m256; 2]; M], p: usize| {
                let (w0, w1) = $load(b.add(p * NR));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(p * M + i));
                    acc[0] = _mm256_fmadd_ps(av, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, w1, acc[1]);
                }
            };
            let whole = kc / AHEAD_STEP * AHEAD_STEP;
            let mut line = 0;
            for p0 in (0..whole).step_by(AHEAD_STEP) {
                if line < ahead.lines {
                    // A hint only: it never faults, whatever the address.
                    _mm_prefetch::<_MM_HINT_T1>(ahead.address(line).cast());
                    line += 1;
                }
                for p in p0..p0 + AHEAD_STEP {
                    step(&mut acc, p);
                }
            }
            for p in whole..kc {
                step(&mut acc, p);
            }
            store(&acc, target);
        }

        /// One row `a` (k inputs) times `targets.len()` whole panels that follow each other
        /// in `b`, each stored to its target. Only for `Isa::Avx2` (see `row_groups`).
        pub(super) fn $row(a: &[f32], b: &[$ty], targets: &[Target]) {
            assert!(b.len() == targets.len() * a.len() * NR);
            // SAFETY: only called on the AVX2 path (`Isa::Avx2`: the CPU has AVX2 and FMA);
            // `b` holds P panels of k rows × NR, which is what the kernel reads.
            unsafe {
                match targets.len() {
                    1 => $row_avx2::<1>(a, b.as_ptr(), targets),
                    2 => $row_avx2::<2>(a, b.as_ptr(), targets),
                    3 => $row_avx2::<3>(a, b.as_ptr(), targets),
                    _ => $row_avx2::<ROW_STREAMS>(a, b.as_ptr(), targets),
                }
            }
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn $row_avx2<const P: usize>(a: &[f32], b: *const $ty, targets: &[Target]) {
            let k = a.len();
            let row_bytes = NR * std::mem::size_of::<$ty>();
            let mut acc = [[_mm256_setzero_ps(); 2]; P];
            for (p, &x) in a.iter().enumerate() {
                let av = _mm256_set1_ps(x);
                for (j, acc) in acc.iter_mut().enumerate() {
                    let w = b.add((j * k + p) * NR);
                    if $prefetch && (p * row_bytes) % 64 == 0 {
                        let distance = prefetch_distance(p * row_bytes, k * row_bytes, P);
                        let ahead = w.cast::<i8>().wrapping_add(distance);
                        _mm_prefetch::<_MM_HINT_T0>(ahead);
                    }
                    let (w0, w1) = $load(w);
                    acc[0] = _mm256_fmadd_ps(av, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, w1, acc[1]);
                }
            }
            for (acc, &target) in acc.iter().zip(targets) {
                store(&[*acc], target);
            }
        }
    };
}

tile_kernels!(
    tile_f32,
    row_f32,
    row_f32_avx2,
    f32,
    |b: *const f32| { (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))) },
    false
);

tile_kernels!(
    tile_bf16,
    row_bf16,
    row_bf16_avx2,
    u16,
    |b: *const u16| {
        // bf16 → f32: a zero below each 16-bit value. The unpacks interleave within each
        // 128-bit half, which the packed order (`bf16_lane`) undoes.
        let row = _mm256_loadu_si256(b as *const __m256i);
        let zero = _mm256_setzero_si256();
        (
            _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, row)),
            _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, row)),
        )
    },
    true
);

/// The AVX2 int8 micro-kernel: `vpmaddwd` of 16-bit input pairs and 16-bit-widened weights.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds pc·M pairs and `b` pc panel rows.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_int8<const M: usize>(
    pc: usize,
    a: *const i32,
    b: *const i8,
    target: Target,
) {
    let mut sums = [[_mm256_setzero_ps(); 2]; M];
    let mut q = 0;
    while q < pc {
        let end = pc.min(q + INT8_PAIRS_PER_SUM);
        let mut acc = [[_mm256_setzero_si256(); 2]; M];
        while q < end {
            // Columns 0–7 and 8–15, each as (even, odd) pairs of 16-bit weights.
            let row = b.add(q * INT8_PANEL_ROW);
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row as *const __m128i));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.add(16) as *const __m128i));
            for (i, acc) in acc.iter_mut().enumerate() {
                let pair = _mm256_set1_epi32(*a.add(q * M + i));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(pair, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(pair, w1));
            }
            q += 1;
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            sums[0] = _mm256_add_ps(sums[0], _mm256_cvtepi32_ps(acc[0]));
            sums[1] = _mm256_add_ps(sums[1], _mm256_cvtepi32_ps(acc[1]));
        }
    }
    store(&sums, target);
}

/// The int8 kernel for one row (`a`: its pairs of 16-bit inputs) and `targets.len()` whole
/// panels that follow each other in `b`: the same integer sums in the same order as
/// `tile_int8`, so the same results. Only for `Isa::Avx2` (see `Block::row_groups`).
pub(super) fn row_int8(a: &[i32], b: &[i8], targets: &[Target]) {
    assert!(b.len() == targets.len() * a.len() * INT8_PANEL_ROW);
    // SAFETY: only called on the AVX2 path (`Isa::Avx2`: the CPU has AVX2 and FMA); `b`
    // holds P panels of `a.len()` pair rows, which is what the kernel reads.
    unsafe {
        match targets.len() {
            1 => row_int8_avx2::<1>(a, b.as_ptr(), targets),
            2 => row_int8_avx2::<2>(a, b.as_ptr(), targets),
            3 => row_int8_avx2::<3>(a, b.as_ptr(), targets),
            _ => row_int8_avx2::<ROW_STREAMS>(a, b.as_ptr(), targets),
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_int8_avx2<const P: usize>(a: &[i32], b: *const i8, targets: &[Target]) {
    let pairs = a.len();
    let mut sums = [[_mm256_setzero_ps(); 2]; P];
    for (block, a) in a.chunks(INT8_PAIRS_PER_SUM).enumerate() {
        let mut acc = [[_mm256_setzero_si256(); 2]; P];
        for (offset, &pair) in a.iter().enumerate() {
            let q = block * INT8_PAIRS_PER_SUM + offset;
            let pair = _mm256_set1_epi32(pair);
            let ahead = prefetch_distance(q * INT8_PANEL_ROW, pairs * INT8_PANEL_ROW, P);
            for (j, acc) in acc.iter_mut().enumerate() {
                let row = b.add((j * pairs + q) * INT8_PANEL_ROW);
                if q.is_multiple_of(2) {
                    // Two panel rows are a cache line.
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(ahead));
                }
                let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row as *const __m128i));
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.add(16) as *const __m128i));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(pair, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(pair, w1));
            }
        }
        for (sums, acc) in sums.iter_mut().zip(&acc) {
            sums[0] = _mm256_add_ps(sums[0], _mm256_cvtepi32_ps(acc[0]));
            sums[1] = _mm256_add_ps(sums[1], _mm256_cvtepi32_ps(acc[1]));
        }
    }
    for (sums, &target) in sums.iter().zip(targets) {
        store(&[*sums], target);
    }
}

/// Write a kernel's sums as `target` says: × column scale × row scale, then + bias on the
/// first K block or + what the output holds on the others.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn store<const M: usize>(
    sums: &[[std::arch::x86_64::__m256; 2]; M],
    target: Target,
) {
    for (i, sums) in sums.iter().enumerate() {
        let row = target.c.add(i * target.ldc);
        for (h, &sum) in sums.iter().enumerate() {
            let mut v = sum;
            if !target.scales.is_null() {
                v = _mm256_mul_ps(v, _mm256_loadu_ps(target.scales.add(8 * h)));
            }
            if !target.row_scales.is_null() {
                v = _mm256_mul_ps(v, _mm256_set1_ps(*target.row_scales.add(i)));
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
