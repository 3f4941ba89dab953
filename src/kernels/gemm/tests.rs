//! The GEMM against reference products, on every instruction set this CPU has.

use super::block::{micro_panels_of, SHARED_GROUPS, SHARED_ROWS};
use super::pack::{bf16_value, quantize_pairs};
use super::tile::{MR, MR_WIDE};
use super::weights::Panels;
use super::*;

/// The AVX2 quantizer gives the scalar one's bits: ties (x.5) away from zero, the row's
/// largest value at ±32767, NaN as 0, odd lengths with a zero high half in the last pair.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_quantizer_matches_scalar() {
    if !crate::kernels::isa::test_can_run(Isa::Avx2, "avx2_quantizer_matches_scalar") {
        return;
    }
    for len in [1usize, 15, 16, 17, 33, 64, 101] {
        let mut values: Vec<f32> = (0..len)
            .map(|i| (i as f32 - 20.0) * 0.5 + if i % 3 == 0 { 0.25 } else { 0.0 })
            .collect();
        let inverse = 32767.0 / values.iter().fold(0f32, |m, v| m.max(v.abs()));
        values[len / 2] = f32::NAN;
        for inverse in [1.0, inverse] {
            let (mut scalar, mut avx2) = (vec![7; len.div_ceil(2)], vec![7; len.div_ceil(2)]);
            quantize_pairs(&values, inverse, &mut scalar);
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { avx2::quantize_pairs(&values, inverse, &mut avx2) };
            assert_eq!(scalar, avx2, "len {len}, inverse {inverse}");
        }
    }
}

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

/// Values in [-1, 1] from an xorshift sequence seeded by `seed`.
pub(crate) fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
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

/// Micro-panels cover a block's rows in order, MR (or MR_WIDE) at most, and end in a panel of
/// 1 or 2 rows only when that is the whole block.
#[test]
fn micro_panels_cover_the_rows_without_a_short_tail() {
    for most in [MR, MR_WIDE] {
        for start in [0, 5] {
            for len in 1..80 {
                let panels: Vec<_> = micro_panels_of(start..start + len, most).collect();
                let mut next = start;
                for &(r0, mr) in &panels {
                    assert_eq!(r0, next, "{len} rows: {panels:?}");
                    assert!((1..=most).contains(&mr), "{len} rows: {panels:?}");
                    assert!(mr >= 3 || len <= 2, "{len} rows: {panels:?}");
                    next += mr;
                }
                assert_eq!(next, start + len, "{len} rows: {panels:?}");
                assert_eq!(panels.len(), len.div_ceil(most), "{len} rows: {panels:?}");
            }
        }
    }
}

/// The layouts a product can meet: the one-input-per-row panels that portable and AVX2 code
/// are packed for, and on AVX-512 machines the grouped ones (bf16 pairs, int8 quads).
fn layouts() -> Vec<Isa> {
    let mut layouts = vec![Isa::Portable];
    if Isa::of_cpu().has_avx512() {
        layouts.push(Isa::of_cpu());
    }
    layouts
}

/// How far a product may be from the f64 product of the stored weights and the exact
/// inputs, for output (r, o), from how the layout treats the activations: f32 (and bf16 with
/// f32 activations) only sums in f32; 16-bit int8 rounds each input by at most half a step of
/// max|x_row| / 32767; bf16 pairs round each input to 8 bits (relative error ≤ 2⁻⁹); u8 quads
/// by at most half a step of the row's range / 255. Each rounding error meets one weight.
fn bound(packed: &PackedWeights, x: &[f32], stored: &[f32], r: usize, o: usize, e: f32) -> f32 {
    let (k, row) = (packed.inner, &x[r * packed.inner..(r + 1) * packed.inner]);
    let weights = &stored[o * k..(o + 1) * k];
    let sum_abs_w = weights.iter().map(|w| w.abs()).sum::<f32>();
    let rounding = match &packed.panels {
        Panels::F32(_) | Panels::Bf16(_) => 0.0,
        Panels::Int8 { .. } => {
            let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            sum_abs_w * max / 65534.0
        }
        Panels::Bf16Pairs(_) => {
            let products: f32 = row.iter().zip(weights).map(|(x, w)| (x * w).abs()).sum();
            products / 512.0
        }
        Panels::Int8Quads { .. } => {
            let (lo, hi) = row
                .iter()
                .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            sum_abs_w * (hi - lo) / 255.0 / 2.0
        }
    };
    rounding * 1.001 + 1e-4 * (1.0 + e.abs())
}

/// `matmul` on every instruction set this CPU has, each result checked against the f64
/// reference of the weights as stored within `bound` (NaN-aware: the output starts as NaN,
/// and a NaN anywhere fails); returns the results.
#[allow(clippy::too_many_arguments)]
fn check_every_isa(
    what: &str,
    packed: &PackedWeights,
    x: &[f32],
    m: usize,
    bias: &[f32],
    epilogue: Epilogue,
    residual: Option<&[f32]>,
    f: fn(f32) -> f32,
) -> Vec<Vec<f32>> {
    let (k, n) = (packed.inner, packed.outer);
    let stored = packed.unpack();
    let product = reference(x, m, &stored, k, n, bias);
    let mut results = Vec::new();
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; m * n];
        matmul(x, m, packed, Some(bias), epilogue, residual, &mut out, isa);
        for (index, (&o, &p)) in out.iter().zip(&product).enumerate() {
            let e = f(p) + residual.map_or(0.0, |r| r[index]);
            let (r, c) = (index / n, index % n);
            // GELU's slope is below 1.13: the product's error passes through it at most so.
            let allowed = 1.13 * bound(packed, x, &stored, r, c, e);
            assert!(
                o.is_finite() && (o - e).abs() <= allowed,
                "{what} {m}x{k}x{n} {:?} on {}: ({r}, {c}) = {o}, expected {e} ± {allowed}",
                packed.panels_name(),
                isa.name()
            );
        }
        results.push(out);
    }
    results
}

impl PackedWeights {
    fn panels_name(&self) -> &'static str {
        match self.panels {
            Panels::F32(_) => "f32",
            Panels::Bf16(_) => "bf16",
            Panels::Bf16Pairs(_) => "bf16 pairs",
            Panels::Int8 { .. } => "int8 pairs",
            Panels::Int8Quads { .. } => "int8 quads",
        }
    }
}

/// Every row count, ragged panels and several K blocks, on every kernel, format and layout:
/// against an f64 reference product of the weights each format stores. Integer layouts give
/// the same bits on every instruction set.
#[test]
fn matches_reference_product() {
    for isa in Isa::available() {
        eprintln!(
            "matches_reference_product: running the {} kernels",
            isa.name()
        );
    }
    for &(m, k, n) in &[
        (1, 7, 5),
        (7, 40, 33),
        (13, 800, 17),
        (80, 390, 48),
        // Blocks of 66 and 62 rows: the second ends in two panels of four.
        (128, 70, 40),
        (2, 1, 1),
        (1, 600, 40),
        // One row: panels in groups of four, three, two and one, edge panels, and
        // int8 sums over more than one block of pairs.
        (1, 300, 147),
        (1, 257, 208),
        // One row, three whole panels: one group of three.
        (1, 96, 48),
        // A micro-panel of five rows alone, and after one of six.
        (5, 64, 80),
        (11, 33, 49),
        // Several K blocks (KC = 768 inputs) with blocked rows, on every format; two whole
        // panels and an edge panel for the AVX-512 kernels' pairs of panels.
        (19, 1700, 72),
        (7, 1537, 40),
    ] {
        let x = pseudo_random(m * k, 1);
        let w = pseudo_random(n * k, 2);
        let bias = pseudo_random(n, 3);
        for layout in layouts() {
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
                let packed = PackedWeights::pack_for(layout, k, n, format, |o, i| w[o * k + i]);
                let identity = (|v| v) as fn(f32) -> f32;
                let results = check_every_isa(
                    "product",
                    &packed,
                    &x,
                    m,
                    &bias,
                    Epilogue::None,
                    None,
                    identity,
                );
                // Integer sums are exact: every int8 kernel gives the same sums, and the
                // same scaling order gives the same bits.
                if format == WeightFormat::Int8 {
                    assert!(
                        results.windows(2).all(|pair| pair[0] == pair[1]),
                        "{m}x{k}x{n} {}: int8 kernels differ",
                        packed.panels_name()
                    );
                }
                // Storage error: bf16 keeps 8 bits, int8 a 127th of the row's largest weight.
                let bound = match format {
                    WeightFormat::F32 => 0.0,
                    WeightFormat::Bf16 => 1.0 / 256.0,
                    WeightFormat::Int8 => 0.5 / 127.0,
                };
                for (s, w) in packed.unpack().iter().zip(&w) {
                    assert!((s - w).abs() <= bound * 1.0001, "{format:?}: {s} vs {w}");
                }
            }
        }
    }
}

/// GELU (both forms) and the residual are applied after the bias, on every kernel, format
/// and layout, over several K blocks.
#[test]
fn epilogue_and_residual_follow_the_product() {
    for &(m, k, n) in &[(9, 300, 40), (13, 1600, 48), (1, 800, 64)] {
        let x = pseudo_random(m * k, 4);
        let w = pseudo_random(n * k, 5);
        let bias = pseudo_random(n, 6);
        let residual = pseudo_random(m * n, 7);
        for layout in layouts() {
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
                let packed = PackedWeights::pack_for(layout, k, n, format, |o, i| w[o * k + i]);
                for (epilogue, f) in [
                    (Epilogue::None, (|v| v) as fn(f32) -> f32),
                    (Epilogue::GeluErf, super::super::gelu_erf_scalar),
                    (Epilogue::GeluTanh, super::super::gelu_tanh_scalar),
                ] {
                    let what = format!("{epilogue:?} + residual");
                    let r = Some(residual.as_slice());
                    check_every_isa(&what, &packed, &x, m, &bias, epilogue, r, f);
                }
            }
        }
    }
}

/// A product nested in one that holds this thread's shared rows (a caller's own rayon work
/// calling back into the GEMM) packs its rows per task instead, with the same results, for
/// every format and layout.
#[test]
fn nested_product_packs_its_own_rows() {
    let (m, k, n) = (40, 300, 96);
    let x = pseudo_random(m * k, 8);
    let w = pseudo_random(n * k, 9);
    let bias = pseudo_random(n, 10);
    for layout in layouts() {
        for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
            let packed = PackedWeights::pack_for(layout, k, n, format, |o, i| w[o * k + i]);
            let product =
                |what| check_every_isa(what, &packed, &x, m, &bias, Epilogue::None, None, |v| v);
            let alone = product("alone");
            let nested = SHARED_ROWS.with(|rows| {
                SHARED_GROUPS.with(|groups| {
                    let _held = (rows.borrow_mut(), groups.borrow_mut());
                    product("nested")
                })
            });
            assert_eq!(
                alone,
                nested,
                "{}: the nested path packs the same rows",
                packed.panels_name()
            );
        }
    }
}

/// The AVX-512 row conversions give the portable ones' bits: u8 quads (ties, NaN rows, odd
/// lengths) exactly, bf16 pairs exactly on normal numbers (the instruction reads denormals as
/// zero).
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_row_conversions_match_portable() {
    if !crate::kernels::isa::test_can_run(Isa::Avx512, "avx512_row_conversions_match_portable") {
        return;
    }
    for (m, k) in [(3, 1), (2, 15), (4, 16), (3, 33), (5, 100), (2, 768)] {
        let mut x = pseudo_random(m * k, 13);
        // Exact halves of a step and a NaN in one row.
        x[0] = 0.5;
        x[m * k / 2] = f32::NAN;
        let (portable, avx512) = (
            pack::GroupedRows::u8_quads(&x, m, k, Isa::Portable),
            pack::GroupedRows::u8_quads(&x, m, k, Isa::Avx512),
        );
        assert_eq!(portable.values[..], avx512.values[..], "{m}x{k}: u8 quads");
        assert_eq!(portable.scales, avx512.scales, "{m}x{k}: scales");
        assert_eq!(
            portable.zero_points, avx512.zero_points,
            "{m}x{k}: zero points"
        );
        let (portable, avx512) = (
            pack::GroupedRows::bf16_pairs(&x, m, k, Isa::Portable),
            pack::GroupedRows::bf16_pairs(&x, m, k, Isa::Avx512),
        );
        assert_eq!(
            portable.values[..],
            avx512.values[..],
            "{m}x{k}: bf16 pairs"
        );
    }
}

/// The AVX-512 layouts and kernels exist where the CPU has them: bf16 pairs and int8 quads
/// are what `pack` chooses there, and the AVX-512 kernels give the portable kernels' results.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_kernels_match_portable_on_their_layouts() {
    if !crate::kernels::isa::test_can_run(Isa::Avx512, "avx512_kernels_match_portable") {
        return;
    }
    let (m, k, n) = (17, 900, 80);
    let x = pseudo_random(m * k, 11);
    let w = pseudo_random(n * k, 12);
    for (format, layout) in [
        (WeightFormat::F32, "f32"),
        (WeightFormat::Bf16, "bf16 pairs"),
        (WeightFormat::Int8, "int8 quads"),
    ] {
        let packed = PackedWeights::pack_for(Isa::Avx512, k, n, format, |o, i| w[o * k + i]);
        assert_eq!(packed.panels_name(), layout);
        let run = |isa| {
            let mut out = vec![f32::NAN; m * n];
            matmul(&x, m, &packed, None, Epilogue::None, None, &mut out, isa);
            out
        };
        let (portable, avx512) = (run(Isa::Portable), run(Isa::Avx512));
        for (p, a) in portable.iter().zip(&avx512) {
            assert!(
                a.is_finite() && (p - a).abs() <= 1e-4 * (1.0 + p.abs()),
                "{layout}: AVX-512 {a} against portable {p}"
            );
        }
        if format == WeightFormat::Int8 {
            assert_eq!(portable, avx512, "int8 quads: integer sums differ");
        }
    }
}

/// u8 quantization of a row: the extremes map to 0 and 255 (or zero to the zero point when
/// the row is one-signed), every value comes back within half a step, NaN and infinity give
/// a zero row, as the 16-bit quantizer does.
#[test]
fn u8_quads_round_trip_within_half_a_step() {
    let rows = [
        vec![-1.0, 0.5, 2.0, -0.25, 1.0, 0.0, 3.0],
        vec![0.1, 0.2, 0.3, 0.4, 0.5],
        vec![-0.17, -0.05, 0.0, 0.4, 2.5, 7.25, 0.01, 0.3, 1.0],
        vec![0.0; 6],
        vec![1.0, f32::NAN, 2.0],
        vec![1.0, f32::INFINITY, 2.0],
    ];
    for row in rows {
        let k = row.len();
        let quads = pack::GroupedRows::u8_quads(&row, 1, k, Isa::Portable);
        let (scale, zero) = (quads.scales[0], quads.zero_points[0]);
        let value = |i: usize| ((quads.values[i / 4] as u32 >> (8 * (i % 4))) & 0xff) as i32;
        if row.iter().any(|v| !v.is_finite()) || row.iter().all(|&v| v == 0.0) {
            assert_eq!(scale, 0.0, "{row:?}");
            assert!(quads.values.iter().all(|&q| q == 0), "{row:?}");
            continue;
        }
        for (i, &v) in row.iter().enumerate() {
            let back = (value(i) - zero) as f32 * scale;
            assert!(
                (back - v).abs() <= scale * 0.5001,
                "{row:?}[{i}]: {back} vs {v}"
            );
        }
        // The last quad is padded with zero bytes, which meet zero weights.
        assert!(k % 4 == 0 || value(k) == 0, "{row:?}: padding");
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

/// A bf16 output is the f32 output rounded as a bf16-pair product rounds its input, bit for
/// bit, and a bf16 input gives what its widened f32 values give: on every layout and
/// instruction set, with bias, GELU and a residual, ragged panels, odd widths (a copied
/// rather than borrowed input), several K blocks and one row. So a feed-forward layer that
/// hands its intermediate over in bf16 (`Linear::forward_into_linear`) gives the same bits.
#[test]
fn bf16_input_and_output_give_the_f32_paths_bits() {
    for isa in Isa::available() {
        eprintln!(
            "bf16_input_and_output_give_the_f32_paths_bits: running the {} kernels",
            isa.name()
        );
    }
    for &(m, k, n) in &[
        (9, 300, 40),
        (13, 1600, 48),
        (1, 800, 64),
        (20, 77, 35),
        (75, 64, 96),
    ] {
        let x = pseudo_random(m * k, 11);
        let w = pseudo_random(n * k, 12);
        let bias = pseudo_random(n, 13);
        let residual = pseudo_random(m * n, 14);
        for layout in layouts() {
            for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
                let packed = PackedWeights::pack_for(layout, k, n, format, |o, i| w[o * k + i]);
                for isa in Isa::available() {
                    let what = format!("{m}x{k}x{n} {} on {}", packed.panels_name(), isa.name());
                    let mut f32_out = vec![f32::NAN; m * n];
                    let (r, e) = (Some(&residual[..]), Epilogue::GeluErf);
                    matmul(&x, m, &packed, Some(&bias), e, r, &mut f32_out, isa);
                    let mut bits = vec![MaybeUninit::new(0x7fc1u16); m * n];
                    let out = Output::Bf16(&mut bits);
                    matmul_into(
                        Activations::F32(&x),
                        m,
                        &packed,
                        Some(&bias),
                        e,
                        r,
                        out,
                        isa,
                    );
                    let bits: Vec<u16> = bits.iter().map(|b| unsafe { b.assume_init() }).collect();
                    for (row, (got, f32_row)) in bits.chunks(n).zip(f32_out.chunks(n)).enumerate() {
                        assert!(
                            f32_row.iter().all(|v| v.is_finite()),
                            "{what}: row {row} not finite"
                        );
                        let mut pairs = vec![0i32; n.div_ceil(2)];
                        bf16_pairs_row(isa, f32_row, &mut pairs);
                        let expected: Vec<u16> = pairs
                            .iter()
                            .flat_map(|&p| [p as u16, (p >> 16) as u16])
                            .take(n)
                            .collect();
                        assert_eq!(got, &expected[..], "{what}: bf16 output row {row}");
                    }

                    let widened: Vec<f32> = bits.iter().map(|&b| bf16_value(b)).collect();
                    let next = PackedWeights::pack_for(layout, n, k, format, |o, i| w[i * k + o]);
                    let mut from_f32 = vec![f32::NAN; m * k];
                    let mut from_bf16 = vec![MaybeUninit::new(f32::NAN); m * k];
                    // Over bf16 pairs, the f32 output itself; elsewhere, its bf16 values.
                    let input = match next.reads_bf16_rows() {
                        true => &f32_out,
                        false => &widened,
                    };
                    matmul(
                        input,
                        m,
                        &next,
                        None,
                        Epilogue::None,
                        None,
                        &mut from_f32,
                        isa,
                    );
                    let out = Output::F32(&mut from_bf16);
                    let x = Activations::Bf16(&bits);
                    matmul_into(x, m, &next, None, Epilogue::None, None, out, isa);
                    let from_bf16: Vec<f32> = from_bf16
                        .iter()
                        .map(|v| unsafe { v.assume_init() })
                        .collect();
                    assert!(
                        from_f32.iter().all(|v| v.is_finite()),
                        "{what}: next product"
                    );
                    let same = from_f32
                        .iter()
                        .zip(&from_bf16)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what}: the next product differs on its bf16 input");
                }
            }
        }
    }
}
