//! The AVX2 and AVX-512 kernels over rows held in groups (`interleave`), written once as
//! `group_kernels!(features)` beside `block_kernels!` in the same module, whose helpers they
//! use, over the products of 8 registers of small weights that `avx2` and `avx512` give them
//! (`small_dots`, and `small_dots_scaled` for a sub-block's scale in each lane).
//!
//! A group's block is one register per four bytes of each row, a row per 32-bit lane: the
//! integer products of all eight rows take one product per register and activation row,
//! against four activation bytes broadcast to every lane, and the eight scales convert and
//! multiply as one vector. For Q4_0, per block of eight rows that is 8 products, 12 nibble
//! operations and 4 per-block ones (scales, conversion, multiply-add), where the row-by-row
//! kernels spend about 12 operations on each row's block. Each row sums its blocks in one
//! f32 lane, block after block, whatever `R` is.

macro_rules! group_kernels {
    ($features:literal) => {
        use super::interleave::ROWS;

        /// `out[o][r]` = weight row o · activation row r, for `w` holding whole groups of
        /// rows of `ty` (`row_bytes` each) in the interleaved layout.
        #[target_feature(enable = $features)]
        pub(super) fn dot_groups<const R: usize>(
            ty: GgmlType,
            w: &[u8],
            row_bytes: usize,
            x: &[ActRow; R],
            out: &mut [[f32; R]],
        ) {
            let (q8, q8k) = (x.map(|row| row.q8), x.map(|row| row.q8k));
            for (group, out) in w
                .chunks_exact(ROWS * row_bytes)
                .zip(out.chunks_exact_mut(ROWS))
            {
                let sums = match ty {
                    GgmlType::Q8_0 => q8_0_group(group, &q8),
                    GgmlType::Q4_0 => q4_0_group(group, &q8),
                    GgmlType::Q5_0 => q5_0_group(group, &q8),
                    GgmlType::Q4_K => q4_k_group(group, &q8k),
                    other => unreachable!("{other:?} rows are not held in groups"),
                };
                for (r, &sums) in sums.iter().enumerate() {
                    let mut lanes = [0f32; ROWS];
                    // SAFETY: `lanes` holds the 8 f32 of a register.
                    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
                    for (out, lane) in out.iter_mut().zip(lanes) {
                        out[r] = lane;
                    }
                }
            }
        }

        /// The 4 bytes at `p` in every 32-bit lane.
        ///
        /// # Safety
        /// `p` must point at 4 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn broadcast4(p: *const i8) -> __m256i {
            _mm256_set1_epi32(p.cast::<i32>().read_unaligned())
        }

        /// A block's 32 activations at `values` as the group kernels pair them with their
        /// weight registers: register 2j holds values 4j..4j + 4 in every lane, register
        /// 2j + 1 values 16 + 4j.. (a nibble register's low and high halves).
        ///
        /// # Safety
        /// `values` must point at 32 readable bytes.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn block_activations(values: *const i8) -> [__m256i; 8] {
            let mut xs = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                // SAFETY: 4j + 4 and 16 + 4j + 4 are within the 32 bytes.
                unsafe {
                    xs[2 * j] = broadcast4(values.add(4 * j));
                    xs[2 * j + 1] = broadcast4(values.add(16 + 4 * j));
                }
            }
            xs
        }

        /// `acc` plus a block's integer sums scaled by each row's `d` and the activation
        /// row's scale `dx`.
        #[inline]
        #[target_feature(enable = $features)]
        fn add_scaled(acc: __m256, dot: __m256i, d: __m256, dx: f32) -> __m256 {
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(dx));
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc)
        }

        /// A group of Q8_0 rows: per block, 8 `d` (f16), then eight registers of signed
        /// bytes, register c holding values 4c..4c + 4 of each row (taken in
        /// [`block_activations`]' order).
        #[inline]
        #[target_feature(enable = $features)]
        fn q8_0_group<const R: usize>(w: &[u8], x: &[Q8Row; R]) -> [__m256; R] {
            const BLOCK: usize = ROWS * 34;
            let blocks = w.len() / BLOCK;
            check32(x, blocks);
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..blocks {
                // SAFETY: block b is inside the group, and block b of each activation row
                // inside it (`check32`).
                unsafe {
                    let p = w.as_ptr().add(b * BLOCK);
                    prefetch_ahead(p, BLOCK);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
                    let mut q = [_mm256_setzero_si256(); 8];
                    for j in 0..4 {
                        q[2 * j] = signed_weights(load32(p.add(16 + 32 * j)));
                        q[2 * j + 1] = signed_weights(load32(p.add(16 + 32 * (4 + j))));
                    }
                    for r in 0..R {
                        let xs = block_activations(x[r].values.as_ptr().add(b * 32));
                        let sum = *x[r].sums.get_unchecked(b);
                        let dot = signed_dots(_mm256_setzero_si256(), &q, &xs, sum);
                        acc[r] = add_scaled(acc[r], dot, d, *x[r].scales.get_unchecked(b));
                    }
                }
            }
            acc
        }

        /// A group of Q4_0 rows: per block, 8 `d` (f16), then four registers of nibbles.
        #[inline]
        #[target_feature(enable = $features)]
        fn q4_0_group<const R: usize>(w: &[u8], x: &[Q8Row; R]) -> [__m256; R] {
            const BLOCK: usize = ROWS * 18;
            let blocks = w.len() / BLOCK;
            check32(x, blocks);
            let mut acc = [_mm256_setzero_ps(); R];
            let low_nibbles = _mm256_set1_epi8(0x0F);
            for b in 0..blocks {
                // SAFETY: block b is inside the group, and block b of each activation row
                // inside it (`check32`).
                unsafe {
                    let p = w.as_ptr().add(b * BLOCK);
                    prefetch_ahead(p, BLOCK);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
                    // Register 2j: values 4j..4j + 4 of each row (low nibbles); 2j + 1:
                    // values 16 + 4j.. (high nibbles).
                    let mut q = [_mm256_setzero_si256(); 8];
                    for j in 0..4 {
                        let bytes = load32(p.add(16 + 32 * j));
                        q[2 * j] = _mm256_and_si256(bytes, low_nibbles);
                        q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low_nibbles);
                    }
                    for r in 0..R {
                        let xs = block_activations(x[r].values.as_ptr().add(b * 32));
                        // The offset 8 of every weight, through the block sum.
                        let offset = _mm256_set1_epi32(-8 * *x[r].sums.get_unchecked(b));
                        let dot = small_dots::<4>(offset, &q, &xs);
                        acc[r] = add_scaled(acc[r], dot, d, *x[r].scales.get_unchecked(b));
                    }
                }
            }
            acc
        }

        /// A group of Q5_0 rows: per block, 8 `d` (f16), the 8 rows' fifth bits (in the
        /// order `interleave::hold_fifth_bits` gives them), then four registers of nibbles.
        #[inline]
        #[target_feature(enable = $features)]
        fn q5_0_group<const R: usize>(w: &[u8], x: &[Q8Row; R]) -> [__m256; R] {
            const BLOCK: usize = ROWS * 22;
            let blocks = w.len() / BLOCK;
            check32(x, blocks);
            let mut acc = [_mm256_setzero_ps(); R];
            let low_nibbles = _mm256_set1_epi8(0x0F);
            let fifth = _mm256_set1_epi8(0x10);
            for b in 0..blocks {
                // SAFETY: as in `q4_0_group`.
                unsafe {
                    let p = w.as_ptr().add(b * BLOCK);
                    prefetch_ahead(p, BLOCK);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
                    let qh = load32(p.add(16));
                    // Register 2j: values 4j..4j + 4 of each row, their fifth bits at bit
                    // j of each byte of `qh`; 2j + 1: values 16 + 4j.., at bit 4 + j.
                    let mut q = [_mm256_setzero_si256(); 8];
                    for j in 0..4 {
                        let bytes = load32(p.add(48 + 32 * j));
                        let shift = _mm_cvtsi32_si128(j as i32);
                        let low_fifth = _mm256_sll_epi32(qh, _mm_cvtsi32_si128(4 - j as i32));
                        q[2 * j] = _mm256_or_si256(
                            _mm256_and_si256(bytes, low_nibbles),
                            _mm256_and_si256(low_fifth, fifth),
                        );
                        q[2 * j + 1] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low_nibbles),
                            _mm256_and_si256(_mm256_srl_epi32(qh, shift), fifth),
                        );
                    }
                    for r in 0..R {
                        let xs = block_activations(x[r].values.as_ptr().add(b * 32));
                        // The offset 16 of every weight, through the block sum.
                        let offset = _mm256_set1_epi32(-16 * *x[r].sums.get_unchecked(b));
                        let dot = small_dots::<5>(offset, &q, &xs);
                        acc[r] = add_scaled(acc[r], dot, d, *x[r].scales.get_unchecked(b));
                    }
                }
            }
            acc
        }

        /// Byte `i` (0..4) of each lane.
        #[inline]
        #[target_feature(enable = $features)]
        fn byte_of_lanes(v: __m256i, i: usize) -> __m256i {
            let shifted = _mm256_srlv_epi32(v, _mm256_set1_epi32(8 * i as i32));
            _mm256_and_si256(shifted, _mm256_set1_epi32(0xFF))
        }

        /// A group of Q4_K rows: per block, 8 `d`, 8 `dmin` (f16), the three words of each
        /// row's packed scales and minimums (a register each), then 32 registers of
        /// nibbles, eight per 64 values (low nibbles: the first sub-block of 32, high: the
        /// second).
        #[inline]
        #[target_feature(enable = $features)]
        fn q4_k_group<const R: usize>(w: &[u8], x: &[Q8KRow; R]) -> [__m256; R] {
            const BLOCK: usize = ROWS * 144;
            let blocks = w.len() / BLOCK;
            check256(x, blocks);
            let mut acc = [_mm256_setzero_ps(); R];
            let low_nibbles = _mm256_set1_epi8(0x0F);
            let six_bits = _mm256_set1_epi8(0x3F);
            let top_bits = _mm256_set1_epi8(0x30);
            for b in 0..blocks {
                // SAFETY: block b is inside the group, and block b of each activation row
                // inside it (`check256`).
                unsafe {
                    let p = w.as_ptr().add(b * BLOCK);
                    prefetch_ahead(p, BLOCK);
                    let [a, m, c] = [32, 64, 96].map(|at| load32(p.add(at)));
                    // Byte s of each lane of `scales[0]`: sub-block s's scale; of
                    // `scales[1]`: sub-block 4 + s's (their top two bits in `a`'s bytes);
                    // the same for the minimums (in `m`).
                    let high_bits =
                        |v: __m256i| _mm256_and_si256(_mm256_srli_epi32::<2>(v), top_bits);
                    let scales = [
                        _mm256_and_si256(a, six_bits),
                        _mm256_or_si256(_mm256_and_si256(c, low_nibbles), high_bits(a)),
                    ];
                    let mins = [
                        _mm256_and_si256(m, six_bits),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi32::<4>(c), low_nibbles),
                            high_bits(m),
                        ),
                    ];
                    let mut dots = [_mm256_setzero_si256(); R];
                    for s in 0..8 {
                        // Sub-block s: the low (even s) or high nibbles of 64 values' bytes.
                        let columns = p.add(128 + 256 * (s / 2));
                        let mut q = [_mm256_setzero_si256(); 8];
                        for (t, q) in q.iter_mut().enumerate() {
                            let bytes = load32(columns.add(32 * t));
                            let bytes = if s % 2 == 0 {
                                bytes
                            } else {
                                _mm256_srli_epi16::<4>(bytes)
                            };
                            *q = _mm256_and_si256(bytes, low_nibbles);
                        }
                        let scale = scale_form(byte_of_lanes(scales[s / 4], s % 4));
                        for r in 0..R {
                            let values = x[r].values.as_ptr().add(b * 256 + 32 * s);
                            let mut xs = [_mm256_setzero_si256(); 8];
                            for (t, xs) in xs.iter_mut().enumerate() {
                                *xs = broadcast4(values.add(4 * t));
                            }
                            dots[r] = small_dots_scaled::<4>(dots[r], &q, &xs, scale);
                        }
                    }
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast()));
                    for r in 0..R {
                        let sums = x[r].sums32.as_ptr().add(b * 8);
                        let mut min_dot = _mm256_setzero_si256();
                        for s in 0..8 {
                            let sum = _mm256_set1_epi32(*sums.add(s));
                            let product =
                                _mm256_mullo_epi32(byte_of_lanes(mins[s / 4], s % 4), sum);
                            min_dot = _mm256_add_epi32(min_dot, product);
                        }
                        let dx = *x[r].scales.get_unchecked(b);
                        acc[r] = add_scaled(acc[r], dots[r], d, dx);
                        let dx = _mm256_set1_ps(dx);
                        acc[r] = _mm256_fnmadd_ps(
                            _mm256_cvtepi32_ps(min_dot),
                            _mm256_mul_ps(dmin, dx),
                            acc[r],
                        );
                    }
                }
            }
            acc
        }
    };
}
