//! Branch-free f32 approximations that the compiler vectorises, for the kernels. Their
//! constants are shared with the AVX2 forms in `simd`, so both paths approximate alike.

/// ln 2 split in two: `n · LN2_HI` is exact for the n that `exp` meets.
pub(super) const LN2_HI: f32 = 0.693_145_75;
pub(super) const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5 · 2^23: adding and subtracting it rounds to nearest, branch-free and vectorisable
/// (f32::round is a library call).
pub(super) const ROUND: f32 = 12_582_912.0;
/// Abramowitz and Stegun 7.1.26: `erf(a) ≈ 1 − t (A1 + t (A2 + … + t A5)) e^{−a²}`,
/// `t = 1 / (1 + ERF_P · a)`; `ERF_A` holds A1 … A5.
pub(super) const ERF_P: f32 = 0.327_591_1;
pub(super) const ERF_A: [f32; 5] = [
    0.254_829_6,
    -0.284_496_74,
    1.421_413_8,
    -1.453_152,
    1.061_405_4,
];

/// e^x, by 2^n · e^r with |r| <= ln2/2 and a degree-6 polynomial: relative error below 2e-7
/// over the f32 range (inputs beyond it saturate to 0 or f32::MAX).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from n's bits: `shifted` holds n in its low mantissa bits (n ∈ [-126, 127] after
    // the clamp). Integer lane arithmetic, where `n as i32` (saturating, NaN-checked) would
    // be a scalar conversion per value and keep the loop from vectorising.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(n_bits.wrapping_add(127) << 23) * p
}

/// erf(x), Abramowitz and Stegun 7.1.26: absolute error below 1.5e-7 in exact arithmetic,
/// 6e-7 in f32 (tests/kernel_paths.rs checks it).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let [a1, a2, a3, a4, a5] = ERF_A;
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// Exact (erf) GELU of one value.
#[inline(always)]
pub fn gelu_erf_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU with the tanh approximation (`gelu_new`), tanh(y) taken as 1 − 2 / (e^{2y} + 1):
/// within 1e-6 · (1 + |x|) of the formula in f64 (tests/kernel_paths.rs checks it).
#[inline(always)]
pub fn gelu_tanh_scalar(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// Σ term(v) with 16 independent accumulators, so the loop vectorises.
#[inline(always)]
fn lane_sum(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += term(v);
        }
    }
    let tail = chunks.remainder().iter().map(|&v| term(v));
    lanes.iter().sum::<f32>() + tail.sum::<f32>()
}

/// Sum with 16 independent accumulators, so the loop vectorises.
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    lane_sum(values, |v| v)
}

/// Σ (v − center)², with 16 independent accumulators.
#[inline(always)]
pub fn sum_squared_deviations(values: &[f32], center: f32) -> f32 {
    lane_sum(values, |v| (v - center) * (v - center))
}

/// `1 / √(mean(v²) + eps)`, as ggml's RMS norm computes it: each square rounded to f32, summed
/// in f64, the mean rounded to f32. Summed in f32, the mean moved by an ulp on some rows, and
/// the normed row then rounded to different int8 activations than llama.cpp's on a Q8_0 file
/// (a 1e-3 change in every later logit of that sequence).
/// <https://github.com/ggml-org/llama.cpp/blob/0c1e57098bba43ac29e6e3b677cdceebdd22334f/ggml/src/ggml-cpu/ops.cpp#L4140-L4147>
#[inline(always)]
pub fn inverse_rms(values: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f64; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v * v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v * v)).sum();
    let mean = ((lanes.iter().sum::<f64>() + tail) / values.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// Maximum with 16 independent lanes.
#[inline(always)]
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(lanes.iter())
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's RMS scale of one row, as its loop computes it (in order, in f64).
    fn ggml_inverse_rms(values: &[f32], eps: f32) -> f32 {
        let mut sum = 0f64;
        for &v in values {
            sum += f64::from(v * v);
        }
        let mean = (sum / values.len() as f64) as f32;
        1.0 / (mean + eps).sqrt()
    }

    /// `inverse_rms` gives ggml's bits on rows of widths with and without a tail, where the f32
    /// sum it replaced does not on some of them.
    #[test]
    fn inverse_rms_is_ggmls_bit_for_bit() {
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32 - 0.5) * 6.0
        };
        let mut f32_sum_differs = 0;
        for width in [64, 896, 2048, 3 * 64 + 5] {
            for _ in 0..200 {
                let row: Vec<f32> = (0..width).map(|_| next()).collect();
                let expected = ggml_inverse_rms(&row, 1e-5);
                assert!(expected.is_finite());
                assert_eq!(
                    inverse_rms(&row, 1e-5).to_bits(),
                    expected.to_bits(),
                    "{width}"
                );
                let f32_sum =
                    1.0 / (sum_squared_deviations(&row, 0.0) / width as f32 + 1e-5).sqrt();
                f32_sum_differs += usize::from(f32_sum.to_bits() != expected.to_bits());
            }
        }
        assert!(f32_sum_differs > 0, "no row tells the two sums apart");
        eprintln!("{f32_sum_differs} of 800 rows differ with an f32 sum");
    }
}
