//! The block kernels on AVX2 (with FMA and F16C): the integer products by `vpmaddubsw`
//! (unsigned weight bytes × signed activation bytes, adjacent pairs summed in i16, which no
//! block's values can overflow: at most 2 · 63 · 127) and `vpmaddwd`.

use std::arch::x86_64::{
    __m256i, _mm256_add_epi16, _mm256_add_epi32, _mm256_and_si256, _mm256_madd_epi16,
    _mm256_maddubs_epi16, _mm256_or_si256, _mm256_set1_epi16, _mm256_set1_epi32, _mm256_slli_epi32,
};

/// `acc` plus the sums of each lane's four products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_add(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(w, x);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Each i32 scale as the pair of i16 that `vpmaddwd` multiplies the two i16 sums of a lane by.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_form(scales: __m256i) -> __m256i {
    let low = _mm256_and_si256(scales, _mm256_set1_epi32(0xFFFF));
    _mm256_or_si256(low, _mm256_slli_epi32::<16>(scales))
}

/// Each lane's four products summed, times its scale (in `scale_form`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_scaled(w: __m256i, x: __m256i, scale: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), scale)
}

/// `acc` plus, in each i32 lane, the sum of the products of the 8 pairs of registers, for
/// weights of at most 4 bits: the pairs' 16-bit sums are added in 16 bits (at most
/// 16 · 15 · 127 = 30480 per lane) and widened once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_dots(acc: __m256i, w: &[__m256i; 8], x: &[__m256i; 8]) -> __m256i {
    _mm256_add_epi32(
        acc,
        _mm256_madd_epi16(nibble_pairs(w, x), _mm256_set1_epi16(1)),
    )
}

/// [`nibble_dots`] from zero, each lane's sum times its scale (in `scale_form`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_dots_scaled(w: &[__m256i; 8], x: &[__m256i; 8], scale: __m256i) -> __m256i {
    _mm256_madd_epi16(nibble_pairs(w, x), scale)
}

/// The 16-bit sums of adjacent products, added over the 8 pairs of registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibble_pairs(w: &[__m256i; 8], x: &[__m256i; 8]) -> __m256i {
    let sum = |i: usize| {
        let a = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[i], x[i]),
            _mm256_maddubs_epi16(w[i + 1], x[i + 1]),
        );
        let b = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[i + 2], x[i + 2]),
            _mm256_maddubs_epi16(w[i + 3], x[i + 3]),
        );
        _mm256_add_epi16(a, b)
    };
    _mm256_add_epi16(sum(0), sum(4))
}

block_kernels!("avx2,fma,f16c");
group_kernels!("avx2,fma,f16c");
