//! The block kernels on AVX2 (with FMA and F16C): the integer products by `vpmaddubsw`
//! (unsigned weight bytes × signed activation bytes, adjacent pairs summed in i16, which no
//! block's values can overflow: at most 2 · 63 · 127) and `vpmaddwd`.

use std::arch::x86_64::{
    __m256i, _mm256_abs_epi8, _mm256_add_epi16, _mm256_add_epi32, _mm256_and_si256,
    _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_or_si256, _mm256_set1_epi16, _mm256_set1_epi32,
    _mm256_sign_epi8, _mm256_slli_epi32, _mm_prefetch, _MM_HINT_T0,
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
/// weights of at most `BITS` bits (7 at most: `vpmaddubsw` saturates above): the pairs'
/// 16-bit sums are added in 16 bits over as many registers as cannot overflow (each at most
/// 2 · (2^BITS − 1) · 127: 8 registers of 4-bit weights, 4 of 5-bit ones) before widening.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn small_dots<const BITS: u32>(acc: __m256i, w: &[__m256i; 8], x: &[__m256i; 8]) -> __m256i {
    small_dots_scaled::<BITS>(acc, w, x, _mm256_set1_epi16(1))
}

/// `acc` plus [`small_dots`]' sums each times its lane's scale (in `scale_form`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn small_dots_scaled<const BITS: u32>(
    acc: __m256i,
    w: &[__m256i; 8],
    x: &[__m256i; 8],
    scale: __m256i,
) -> __m256i {
    let run = (i16::MAX as usize / (2 * ((1 << BITS) - 1) * 127)).clamp(1, 8);
    let mut acc = acc;
    for start in (0..8).step_by(run) {
        let mut pairs = _mm256_maddubs_epi16(w[start], x[start]);
        for i in start + 1..(start + run).min(8) {
            pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(w[i], x[i]));
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale));
    }
    acc
}

/// Signed weight bytes as [`signed_dots`] takes them: as they are.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed_weights(w: __m256i) -> __m256i {
    w
}

/// `acc` plus, in each i32 lane, the sum of the products of the 8 pairs of registers, for
/// signed weights: `vpmaddubsw` of their magnitudes and the activations with their signs,
/// one register at a time (a pair's sum is at most 2 · 128 · 127, inside i16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed_dots(acc: __m256i, w: &[__m256i; 8], x: &[__m256i; 8], _block_sum: i32) -> __m256i {
    let mut acc = acc;
    for (w, x) in w.iter().zip(x) {
        let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(*w), _mm256_sign_epi8(*x, *w));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
    acc
}

/// Ask for the cache lines of the `bytes` bytes that start `PREFETCH_AHEAD` bytes past `p`:
/// a group kernel's block (or a Q6_K row's) a few blocks ahead. On the Zen 3 VM one decoding product waited on
/// memory at about one instruction per cycle with no prefetch, below the bandwidth (Q4_0
/// 1×2048→8192 at 20–24 GB/s against a 32–34 GB/s triad); 1 KiB ahead it streamed 10–20%
/// faster (`quant_gemv`, three alternating rounds), 2 KiB ahead no better on the wide shapes
/// and worse on the head's. Addresses past the group are only hints: a prefetch never faults.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead(p: *const u8, bytes: usize) {
    const PREFETCH_AHEAD: usize = 1024;
    for line in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + line).cast());
    }
}

block_kernels!("avx2,fma,f16c");
group_kernels!("avx2,fma,f16c");
