//! The block kernels with AVX-512 VNNI on 256-bit registers (`Isa::Avx512`): the integer
//! products by `vpdpbusd` (unsigned weight bytes × signed activation bytes, four per i32
//! lane, added in one instruction), sub-block scales by `vpmulld`.

use std::arch::x86_64::{
    __m256i, _mm256_add_epi32, _mm256_dpbusd_epi32, _mm256_mullo_epi32, _mm256_set1_epi32,
    _mm256_set1_epi8, _mm256_setzero_si256, _mm256_xor_si256,
};

/// `acc` plus the sums of each lane's four products.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_add(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, w, x)
}

/// The scales as they are: `dot_scaled` multiplies i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn scale_form(scales: __m256i) -> __m256i {
    scales
}

/// Each lane's four products summed, times its scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_scaled(w: __m256i, x: __m256i, scale: __m256i) -> __m256i {
    _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x), scale)
}

/// `acc` plus, in each i32 lane, the sum of the products of the 8 pairs of registers (the
/// weights' `BITS` matter to AVX2's form only), in two chains that do not wait on each other.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn small_dots<const BITS: u32>(acc: __m256i, w: &[__m256i; 8], x: &[__m256i; 8]) -> __m256i {
    let (mut even, mut odd) = (acc, _mm256_setzero_si256());
    for i in (0..8).step_by(2) {
        even = _mm256_dpbusd_epi32(even, w[i], x[i]);
        odd = _mm256_dpbusd_epi32(odd, w[i + 1], x[i + 1]);
    }
    _mm256_add_epi32(even, odd)
}

/// `acc` plus [`small_dots`]' sums each times its lane's scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn small_dots_scaled<const BITS: u32>(
    acc: __m256i,
    w: &[__m256i; 8],
    x: &[__m256i; 8],
    scale: __m256i,
) -> __m256i {
    let dots = small_dots::<BITS>(_mm256_setzero_si256(), w, x);
    _mm256_add_epi32(acc, _mm256_mullo_epi32(dots, scale))
}

/// Signed weight bytes as [`signed_dots`] takes them: their sign bit flipped, which is 128
/// added, so that `vpdpbusd` reads them unsigned.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn signed_weights(w: __m256i) -> __m256i {
    _mm256_xor_si256(w, _mm256_set1_epi8(i8::MIN))
}

/// `acc` plus, in each i32 lane, the sum of the products of the 8 pairs of registers, for
/// signed weights as [`signed_weights`] gives them; `block_sum` is the sum of the 32
/// activations that each lane multiplies, through which the offset 128 comes out (exactly:
/// `vpdpbusd` sums in i32, and 255 · 127 · 32 is far inside it).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn signed_dots(acc: __m256i, w: &[__m256i; 8], x: &[__m256i; 8], block_sum: i32) -> __m256i {
    let offset = _mm256_add_epi32(acc, _mm256_set1_epi32(-128 * block_sum));
    small_dots::<8>(offset, w, x)
}

/// The AVX2 kernels' prefetch of a block ahead (`avx2::prefetch_ahead`) is not asked for
/// here: on the Zen 4 VM it streamed no faster (`quant_gemv`, three alternating rounds of two
/// builds, 2026-12-08: the 22 decoding shapes and types at 0.78–1.37× the GB/s without it,
/// the medians of each one's three ratios 0.86–1.09×, 1.00× over all), where on Zen 3 it gave
/// 10–20%.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn prefetch_ahead(_p: *const u8, _bytes: usize) {}

block_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
group_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
