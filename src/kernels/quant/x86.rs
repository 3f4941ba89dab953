//! The AVX2 and AVX-512 block kernels, written once: `block_kernels!(features)` expands them
//! in a module that defines the integer dot product of unsigned weight bytes and signed
//! activation bytes (`avx2`: `vpmaddubsw` then `vpmaddwd`; `avx512`: VNNI's `vpdpbusd`) as
//! three functions:
//!
//! - `dot_add(acc, w, x)`: `acc` plus, in each i32 lane, the sum of its four products;
//! - `scale_form(scales)`: 8 i32 scales in the form `dot_scaled` takes them;
//! - `dot_scaled(w, x, scale)`: in each i32 lane, its products' sum times its lane's scale.
//!
//! The kernels work on 256-bit registers, 32 values each: one block of the 32-value types,
//! a sub-block pair of a K-quant. Weights are made unsigned for the products: Q8_0's through
//! the sign of each weight moved onto the activation (`|w| · sign(x, w)`), the others as
//! stored (0..15, 0..31, 0..63), their offsets (8, 16, 32) taken out through the activations'
//! block sums. Each row keeps two f32 accumulators, one for even blocks and one for odd,
//! so that consecutive blocks' multiply-adds do not wait on each other; the same sequence of
//! operations for a row whatever `R` is, so a row's product does not depend on the others.
//!
//! For VNNI on 512-bit registers (two blocks per instruction) Zen 4 splits each into two
//! 256-bit halves, and the blocks would have to be gathered from two places: not done.

/// `$body` for each block `$b` of `$blocks`, with `$acc` the row accumulators of even blocks
/// (`$even`) or of odd ones (`$odd`): the loop is unrolled by two so that each accumulator is
/// a register, not an array slot indexed at run time (which kept them in memory).
macro_rules! each_block {
    ($blocks:expr, $even:ident, $odd:ident, |$b:ident, $acc:ident| $body:block) => {
        let blocks = $blocks;
        let mut start = 0;
        while start + 2 <= blocks {
            {
                let ($b, $acc) = (start, &mut $even);
                $body
            }
            {
                let ($b, $acc) = (start + 1, &mut $odd);
                $body
            }
            start += 2;
        }
        if start < blocks {
            let ($b, $acc) = (start, &mut $even);
            $body
        }
    };
}

macro_rules! block_kernels {
    ($features:literal) => {
        use super::activations::{ActRow, Q8KRow, Q8Row};
        use super::GgmlType;
        use std::arch::x86_64::*;

        /// `out[o][r]` = weight row o (of `w`, `row_bytes` each, of type `ty`) ·
        /// activation row r.
        #[target_feature(enable = $features)]
        pub(super) fn dot_rows<const R: usize>(
            ty: GgmlType,
            w: &[u8],
            row_bytes: usize,
            x: &[ActRow; R],
            out: &mut [[f32; R]],
        ) {
            let (q8, q8k) = (x.map(|row| row.q8), x.map(|row| row.q8k));
            for (row, out) in w.chunks_exact(row_bytes).zip(out) {
                *out = match ty {
                    GgmlType::Q8_0 => q8_0(row, &q8),
                    GgmlType::Q4_0 => q4_0(row, &q8),
                    GgmlType::Q4_1 => q4_1(row, &q8),
                    GgmlType::Q5_0 => q5_0(row, &q8),
                    GgmlType::Q4_K => q4_k(row, &q8k),
                    GgmlType::Q5_K => q5_k(row, &q8k),
                    GgmlType::Q6_K => q6_k(row, &q8k),
                    other => unreachable!("QuantizedWeights holds no {other:?}"),
                };
            }
        }

        /// The f16 at `p`, as f32.
        ///
        /// # Safety
        /// `p` must point at 2 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16_at(p: *const u8) -> f32 {
            let bits = p.cast::<u16>().read_unaligned();
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }

        /// # Safety
        /// `p` must point at 32 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn load32<T>(p: *const T) -> __m256i {
            _mm256_loadu_si256(p.cast())
        }

        /// The sum of the 8 lanes.
        #[inline]
        #[target_feature(enable = $features)]
        fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }

        /// The sum of the 8 lanes (exact: a block's products fit in i32).
        #[inline]
        #[target_feature(enable = $features)]
        fn hsum_i32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
        }

        /// Each row's two accumulators, summed.
        #[inline]
        #[target_feature(enable = $features)]
        fn finish<const R: usize>(even: &[__m256; R], odd: &[__m256; R]) -> [f32; R] {
            let mut out = [0f32; R];
            for r in 0..R {
                out[r] = hsum(_mm256_add_ps(even[r], odd[r]));
            }
            out
        }

        /// Panics unless each activation row holds `blocks` blocks of 32.
        fn check32<const R: usize>(x: &[Q8Row; R], blocks: usize) {
            for x in x {
                assert!(x.values.len() >= blocks * 32);
                assert!(x.scales.len() >= blocks && x.sums.len() >= blocks);
            }
        }

        /// Panics unless each activation row holds `blocks` blocks of 256.
        fn check256<const R: usize>(x: &[Q8KRow; R], blocks: usize) {
            for x in x {
                assert!(x.values.len() >= blocks * 256 && x.scales.len() >= blocks);
                assert!(x.sums16.len() >= blocks * 16 && x.sums32.len() >= blocks * 8);
            }
        }

        /// 16 bytes of nibbles as 32 bytes 0..15: low nibbles first, then high.
        #[inline]
        #[target_feature(enable = $features)]
        fn nibbles(bytes: __m128i) -> __m256i {
            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(bytes), bytes);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
        }

        /// `acc += dot · scale`, in f32.
        #[inline]
        #[target_feature(enable = $features)]
        fn accumulate(acc: &mut __m256, dot: __m256i, scale: f32) {
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), *acc);
        }

        /// An i32 vector with `value` in lane 0: the start of a block's sum that takes out
        /// the weights' offset.
        #[inline]
        #[target_feature(enable = $features)]
        fn lane0(value: i32) -> __m256i {
            _mm256_setr_epi32(value, 0, 0, 0, 0, 0, 0, 0)
        }

        /// Q8_0 rows: in the order of the rows held in groups (`x86_groups`), block after
        /// block in one f32 sum, as `q4_0`.
        #[inline]
        #[target_feature(enable = $features)]
        fn q8_0<const R: usize>(w: &[u8], x: &[Q8Row; R]) -> [f32; R] {
            let blocks = w.len() / 34;
            check32(x, blocks);
            let mut acc = [_mm_setzero_ps(); R];
            for b in 0..blocks {
                // SAFETY: block b is inside the row, and block b of each activation row
                // inside it (`check32`).
                unsafe {
                    let p = w.as_ptr().add(b * 34);
                    let d = f16_at(p);
                    let q = load32(p.add(2));
                    let magnitudes = _mm256_abs_epi8(q);
                    for r in 0..R {
                        let values = load32(x[r].values.as_ptr().add(b * 32));
                        let signed = _mm256_sign_epi8(values, q);
                        let dot = dot_add(_mm256_setzero_si256(), magnitudes, signed);
                        let dot = _mm_cvtsi32_ss(_mm_setzero_ps(), hsum_i32(dot));
                        let scale = _mm_set_ss(d * *x[r].scales.get_unchecked(b));
                        acc[r] = _mm_fmadd_ss(dot, scale, acc[r]);
                    }
                }
            }
            acc.map(|acc| _mm_cvtss_f32(acc))
        }

        /// Q4_0 rows: in the order of the rows held in groups (`x86_groups`), block after
        /// block in one f32 sum, so that a row's product does not depend on its layout (a
        /// segment's last rows, past its whole groups, are held as the file holds them).
        #[inline]
        #[target_feature(enable = $features)]
        fn q4_0<const R: usize>(w: &[u8], x: &[Q8Row; R]) -> [f32; R] {
            let blocks = w.len() / 18;
            check32(x, blocks);
            let mut acc = [_mm_setzero_ps(); R];
            for b in 0..blocks {
                // SAFETY: as in `q8_0`.
                unsafe {
                    let p = w.as_ptr().add(b * 18);
                    let d = f16_at(p);
                    let q = nibbles(_mm_loadu_si128(p.add(2).cast()));
                    for r in 0..R {
                        let values = load32(x[r].values.as_ptr().add(b * 32));
                        let offset = lane0(-8 * *x[r].sums.get_unchecked(b));
                        let dot =
                            _mm_cvtsi32_ss(_mm_setzero_ps(), hsum_i32(dot_add(offset, q, values)));
                        let scale = _mm_set_ss(d * *x[r].scales.get_unchecked(b));
                        acc[r] = _mm_fmadd_ss(dot, scale, acc[r]);
                    }
                }
            }
            acc.map(|acc| _mm_cvtss_f32(acc))
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn q4_1<const R: usize>(w: &[u8], x: &[Q8Row; R]) -> [f32; R] {
            let blocks = w.len() / 20;
            check32(x, blocks);
            let (mut even, mut odd) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            each_block!(blocks, even, odd, |b, acc| {
                // SAFETY: as in `q8_0`.
                unsafe {
                    let p = w.as_ptr().add(b * 20);
                    let (d, m) = (f16_at(p), f16_at(p.add(2)));
                    let q = nibbles(_mm_loadu_si128(p.add(4).cast()));
                    for r in 0..R {
                        let values = load32(x[r].values.as_ptr().add(b * 32));
                        let dot = dot_add(_mm256_setzero_si256(), q, values);
                        let dx = *x[r].scales.get_unchecked(b);
                        accumulate(&mut acc[r], dot, d * dx);
                        // The minimums' share, m · Σx, in lane 0.
                        let sum = *x[r].sums.get_unchecked(b) as f32;
                        let min_share = _mm256_setr_ps(m * (dx * sum), 0., 0., 0., 0., 0., 0., 0.);
                        acc[r] = _mm256_add_ps(acc[r], min_share);
                    }
                }
            });
            finish(&even, &odd)
        }

        /// The 32 bits of `qh` as 32 bytes, 0x10 where the bit is set.
        #[inline]
        #[target_feature(enable = $features)]
        fn fifth_bits(qh: u32) -> __m256i {
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(qh as i32),
                _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                    3, 3, 3, 3, 3, 3,
                ),
            );
            let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }

        /// Q5_0 rows: in the order of the rows held in groups, as `q4_0`.
        #[inline]
        #[target_feature(enable = $features)]
        fn q5_0<const R: usize>(w: &[u8], x: &[Q8Row; R]) -> [f32; R] {
            let blocks = w.len() / 22;
            check32(x, blocks);
            let mut acc = [_mm_setzero_ps(); R];
            for b in 0..blocks {
                // SAFETY: as in `q8_0`.
                unsafe {
                    let p = w.as_ptr().add(b * 22);
                    let d = f16_at(p);
                    let qh = p.add(2).cast::<u32>().read_unaligned();
                    let low = nibbles(_mm_loadu_si128(p.add(6).cast()));
                    let q = _mm256_or_si256(low, fifth_bits(u32::from_le(qh)));
                    for r in 0..R {
                        let values = load32(x[r].values.as_ptr().add(b * 32));
                        let offset = lane0(-16 * *x[r].sums.get_unchecked(b));
                        let dot =
                            _mm_cvtsi32_ss(_mm_setzero_ps(), hsum_i32(dot_add(offset, q, values)));
                        let scale = _mm_set_ss(d * *x[r].scales.get_unchecked(b));
                        acc[r] = _mm_fmadd_ss(dot, scale, acc[r]);
                    }
                }
            }
            acc.map(|acc| _mm_cvtss_f32(acc))
        }

        /// The eight 6-bit scales and minimums of a Q4_K/Q5_K block (the 12 bytes at `p`)
        /// as two vectors of 8 i32: the same unpacking as `scales_and_mins`, four bytes at
        /// a time.
        ///
        /// # Safety
        /// `p` must point at 12 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn k_scales(p: *const u8) -> (__m256i, __m256i) {
            let words = p.cast::<[u32; 3]>().read_unaligned().map(u32::from_le);
            let [a, b, c] = words;
            let scales_low = a & 0x3F3F_3F3F;
            let mins_low = b & 0x3F3F_3F3F;
            let scales_high = (c & 0x0F0F_0F0F) | ((a >> 6) & 0x0303_0303) << 4;
            let mins_high = ((c >> 4) & 0x0F0F_0F0F) | ((b >> 6) & 0x0303_0303) << 4;
            let scales = u64::from(scales_low) | u64::from(scales_high) << 32;
            let mins = u64::from(mins_low) | u64::from(mins_high) << 32;
            (
                _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(scales as i64)),
                _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mins as i64)),
            )
        }

        /// Lane `i` of `v` in every lane.
        #[inline]
        #[target_feature(enable = $features)]
        fn lane(v: __m256i, i: i32) -> __m256i {
            _mm256_permutevar8x32_epi32(v, _mm256_set1_epi32(i))
        }

        /// A Q4_K or Q5_K block's f32 contribution to each row, from its integer sums
        /// `dots` and its minimums `mins` (8 i32, one per sub-block of 32).
        ///
        /// # Safety
        /// `p` must point at the block; block `b` of each row must exist.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn k_finish<const R: usize>(
            p: *const u8,
            b: usize,
            x: &[Q8KRow; R],
            mins: __m256i,
            dots: &[__m256i; R],
            acc: &mut [__m256; R],
        ) {
            let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
            for r in 0..R {
                let sums = load32(x[r].sums32.as_ptr().add(b * 8));
                let min_dot = _mm256_mullo_epi32(mins, sums);
                let dx = *x[r].scales.get_unchecked(b);
                accumulate(&mut acc[r], dots[r], d * dx);
                acc[r] = _mm256_fnmadd_ps(
                    _mm256_cvtepi32_ps(min_dot),
                    _mm256_set1_ps(dmin * dx),
                    acc[r],
                );
            }
        }

        /// Q4_K rows: in the order of the rows held in groups (`x86_groups`): per block
        /// the scaled sub-block products and the minimums' products summed in i32, then
        /// added to one f32 sum, so that a row's product does not depend on its layout.
        #[inline]
        #[target_feature(enable = $features)]
        fn q4_k<const R: usize>(w: &[u8], x: &[Q8KRow; R]) -> [f32; R] {
            let blocks = w.len() / 144;
            check256(x, blocks);
            let mut acc = [_mm_setzero_ps(); R];
            let low_nibbles = _mm256_set1_epi8(0x0F);
            for b in 0..blocks {
                // SAFETY: block b is inside the row, and block b of each activation row
                // inside it (`check256`).
                unsafe {
                    let p = w.as_ptr().add(b * 144);
                    let (scales, mins) = k_scales(p.add(4));
                    let mut dots = [_mm256_setzero_si256(); R];
                    for j in 0..4 {
                        let q = load32(p.add(16 + 32 * j));
                        let low = _mm256_and_si256(q, low_nibbles);
                        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low_nibbles);
                        let scale_low = scale_form(lane(scales, 2 * j as i32));
                        let scale_high = scale_form(lane(scales, 2 * j as i32 + 1));
                        for r in 0..R {
                            let values = x[r].values.as_ptr().add(b * 256 + 64 * j);
                            let sum = _mm256_add_epi32(
                                dot_scaled(low, load32(values), scale_low),
                                dot_scaled(high, load32(values.add(32)), scale_high),
                            );
                            dots[r] = _mm256_add_epi32(dots[r], sum);
                        }
                    }
                    let (d, dmin) = (f16_at(p), f16_at(p.add(2)));
                    for r in 0..R {
                        let sums = load32(x[r].sums32.as_ptr().add(b * 8));
                        let min_dot = hsum_i32(_mm256_mullo_epi32(mins, sums));
                        let dx = *x[r].scales.get_unchecked(b);
                        let dot = _mm_cvtsi32_ss(_mm_setzero_ps(), hsum_i32(dots[r]));
                        acc[r] = _mm_fmadd_ss(dot, _mm_set_ss(d * dx), acc[r]);
                        let min_dot = _mm_cvtsi32_ss(_mm_setzero_ps(), min_dot);
                        acc[r] = _mm_fnmadd_ss(min_dot, _mm_set_ss(dmin * dx), acc[r]);
                    }
                }
            }
            acc.map(|acc| _mm_cvtss_f32(acc))
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn q5_k<const R: usize>(w: &[u8], x: &[Q8KRow; R]) -> [f32; R] {
            let blocks = w.len() / 176;
            check256(x, blocks);
            let (mut even, mut odd) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            let low_nibbles = _mm256_set1_epi8(0x0F);
            let fifth = _mm256_set1_epi8(0x10);
            each_block!(blocks, even, odd, |b, acc| {
                // SAFETY: as in `q4_k`.
                unsafe {
                    let p = w.as_ptr().add(b * 176);
                    let (scales, mins) = k_scales(p.add(4));
                    // Bit s of each byte is the fifth bit of sub-block s: shifted down two
                    // bits per pair of sub-blocks (a 16-bit shift, but no bit crosses into
                    // the bits read in three shifts).
                    let mut qh = load32(p.add(16));
                    let mut dots = [_mm256_setzero_si256(); R];
                    for j in 0..4 {
                        let q = load32(p.add(48 + 32 * j));
                        let low = _mm256_or_si256(
                            _mm256_and_si256(q, low_nibbles),
                            _mm256_and_si256(_mm256_slli_epi16::<4>(qh), fifth),
                        );
                        let high = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(q), low_nibbles),
                            _mm256_and_si256(_mm256_slli_epi16::<3>(qh), fifth),
                        );
                        qh = _mm256_srli_epi16::<2>(qh);
                        let scale_low = scale_form(lane(scales, 2 * j as i32));
                        let scale_high = scale_form(lane(scales, 2 * j as i32 + 1));
                        for r in 0..R {
                            let values = x[r].values.as_ptr().add(b * 256 + 64 * j);
                            let sum = _mm256_add_epi32(
                                dot_scaled(low, load32(values), scale_low),
                                dot_scaled(high, load32(values.add(32)), scale_high),
                            );
                            dots[r] = _mm256_add_epi32(dots[r], sum);
                        }
                    }
                    k_finish(p, b, x, mins, &dots, acc);
                }
            });
            finish(&even, &odd)
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn q6_k<const R: usize>(w: &[u8], x: &[Q8KRow; R]) -> [f32; R] {
            let blocks = w.len() / 210;
            check256(x, blocks);
            let (mut even, mut odd) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            let low_nibbles = _mm256_set1_epi8(0x0F);
            let top_bits = _mm256_set1_epi8(0x30);
            // Register i of a half holds sub-blocks 2i and 2i + 1 of its eight.
            let pairs = [
                _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
                _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
                _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5),
                _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7),
            ];
            each_block!(blocks, even, odd, |b, acc| {
                // SAFETY: as in `q4_k`.
                unsafe {
                    let p = w.as_ptr().add(b * 210);
                    // Q6_K stays in rows (not groups of 8) but streams the same way: the tied
                    // head of a Q4_K_M file is Q6_K. On the Zen 3 VM, 12 alternating pairs of
                    // binaries: 1×2048→128256 8% and 1×8192→2048 10% faster (medians of the
                    // pairs' ratios; 11 of 12 pairs faster in each).
                    prefetch_ahead(p, 210);
                    let scale_bytes = p.add(192);
                    let scales = [
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(scale_bytes.cast())),
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(scale_bytes.add(8).cast())),
                    ];
                    let mut dots = [_mm256_setzero_si256(); R];
                    for (n, &half_scales) in scales.iter().enumerate() {
                        let low0 = load32(p.add(64 * n));
                        let low1 = load32(p.add(64 * n + 32));
                        let qh = load32(p.add(128 + 32 * n));
                        let q = [
                            _mm256_or_si256(
                                _mm256_and_si256(low0, low_nibbles),
                                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), top_bits),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(low1, low_nibbles),
                                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), top_bits),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(low0), low_nibbles),
                                _mm256_and_si256(qh, top_bits),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(low1), low_nibbles),
                                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), top_bits),
                            ),
                        ];
                        for i in 0..4 {
                            let scale =
                                scale_form(_mm256_permutevar8x32_epi32(half_scales, pairs[i]));
                            for r in 0..R {
                                let values = x[r].values.as_ptr().add(b * 256 + 128 * n + 32 * i);
                                let dot = dot_scaled(q[i], load32(values), scale);
                                dots[r] = _mm256_add_epi32(dots[r], dot);
                            }
                        }
                    }
                    let d = f16_at(p.add(208));
                    for r in 0..R {
                        // The offset 32 of every value, through the sub-blocks' sums.
                        let sums = x[r].sums16.as_ptr().add(b * 16);
                        let offsets = _mm256_add_epi32(
                            _mm256_mullo_epi32(scales[0], load32(sums)),
                            _mm256_mullo_epi32(scales[1], load32(sums.add(8))),
                        );
                        let dot = _mm256_sub_epi32(dots[r], _mm256_slli_epi32::<5>(offsets));
                        accumulate(&mut acc[r], dot, d * *x[r].scales.get_unchecked(b));
                    }
                }
            });
            finish(&even, &odd)
        }
    };
}
