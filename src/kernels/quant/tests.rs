//! The block kernels against straightforward references, on every instruction set this CPU
//! has.

use super::activations::{Q8KRows, Q8Rows};
use super::*;
use crate::kernels::gemm::tests::pseudo_random;

/// Error bar of a product, relative to |weight row| · |activation row|: the kernels sum
/// exact integer block products in f32, so they differ from an f64 sum of the same
/// (dequantized) values only by f32 rounding of at most a few dozen block terms. Measured
/// worst over the types, ISAs and shapes here: 2.9e-8 (Q6_K, AVX2 and AVX-512, 7×512×37);
/// the bar is about 4× that.
const TOLERANCE: f32 = 1.2e-7;

/// `outer` rows of `inner` values of random blocks of `ty`: random bytes, with each block's
/// f16 scale fields set to finite values (as for the dequantization fixture).
fn random_blocks(ty: GgmlType, inner: usize, outer: usize, seed: u32) -> Vec<u8> {
    let (block, block_bytes) = ty.block();
    let blocks = inner / block * outer;
    let noise = pseudo_random(blocks * block_bytes, seed);
    let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    let fields: &[(usize, f32)] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 => &[(0, 0.1)],
        GgmlType::Q4_1 => &[(0, 0.1), (2, 0.5)],
        GgmlType::Q8_0 => &[(0, 0.01)],
        GgmlType::Q4_K | GgmlType::Q5_K => &[(0, 0.01), (2, 0.01)],
        GgmlType::Q6_K => &[(208, 0.01)],
        other => panic!("no blocks of {other:?}"),
    };
    let scales = pseudo_random(blocks * fields.len(), seed + 1);
    for (b, block) in bytes.chunks_exact_mut(block_bytes).enumerate() {
        for (f, &(offset, scale)) in fields.iter().enumerate() {
            let value = half::f16::from_f32(scales[b * fields.len() + f] * scale);
            block[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
        }
    }
    bytes
}

/// Activations with some structure: a spread of magnitudes, exact zeros, and ties.
fn activations(len: usize, seed: u32) -> Vec<f32> {
    let mut x: Vec<f32> = pseudo_random(len, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i % 7) as f32))
        .collect();
    // A zero block of 32 (a zero scale) when there is room for one past the first.
    if len >= 64 {
        x[32..64].fill(0.0);
    }
    x
}

/// llama.cpp's `quantize_row_q8_0` as the build for `isa` has it, as plainly as it is
/// written: the reference (`quantize_row_q8_0_ref`) for portable code, the x86 one
/// (`ggml-cpu/arch/x86/quants.c`: `127 / max`, `_mm256_round_ps` to nearest even) otherwise.
fn reference_q8(x: &[f32], isa: Isa) -> (Vec<i8>, Vec<f32>) {
    let (mut values, mut scales) = (Vec::new(), Vec::new());
    for block in x.chunks_exact(32) {
        let mut amax = 0f32;
        for &v in block {
            amax = if amax > v.abs() { amax } else { v.abs() };
        }
        let d = amax / 127.0;
        scales.push(half::f16::from_f32(d).to_f32());
        if isa == Isa::Portable {
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            values.extend(block.iter().map(|&v| (v * id).round() as i8));
        } else {
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            values.extend(block.iter().map(|&v| (v * id).round_ties_even() as i8));
        }
    }
    (values, scales)
}

/// llama.cpp's `quantize_row_q8_K_ref`.
fn reference_q8k(x: &[f32]) -> (Vec<i8>, Vec<f32>) {
    let (mut values, mut scales) = (Vec::new(), Vec::new());
    for block in x.chunks_exact(256) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in block {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            scales.push(0.0);
            values.extend([0i8; 256]);
            continue;
        }
        let iscale = -127.0 / max;
        for &v in block {
            let nearest = (iscale * v).round_ties_even() as i32;
            values.push(nearest.min(127) as i8);
        }
        scales.push(1.0 / iscale);
    }
    (values, scales)
}

fn sums(values: &[i8], per: usize) -> Vec<i32> {
    values
        .chunks_exact(per)
        .map(|c| c.iter().map(|&v| i32::from(v)).sum())
        .collect()
}

/// (a) The activations' blocks, on every ISA, are the reference's bit for bit.
#[test]
fn activations_are_quantized_as_llama_cpp_rounds_them() {
    let (m, k) = (3, 768);
    let mut x = activations(m * k, 5);
    // Ties: 0.5 and 2.5 steps of a block whose largest value is 127 steps.
    x[0] = 127.0;
    x[1] = 0.5;
    x[2] = -2.5;
    x[3] = 126.5;
    for isa in Isa::available() {
        let q8 = Q8Rows::quantize(&x, m, k, isa);
        let q8k = Q8KRows::quantize(&x, m, k, isa);
        for r in 0..m {
            let row = &x[r * k..(r + 1) * k];
            let (values, scales) = reference_q8(row, isa);
            let got = q8.row(r);
            assert_eq!(got.values, &values[..], "{isa:?} row {r}");
            assert_eq!(bits(got.scales), bits(&scales), "{isa:?} row {r}");
            assert_eq!(got.sums, &sums(&values, 32)[..]);
            let (values, scales) = reference_q8k(row);
            let got = q8k.row(r);
            assert_eq!(got.values, &values[..], "{isa:?} row {r}");
            assert_eq!(bits(got.scales), bits(&scales), "{isa:?} row {r}");
            assert_eq!(got.sums16, &sums(&values, 16)[..]);
            assert_eq!(got.sums32, &sums(&values, 32)[..]);
        }
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// The f64 product of the dequantized weights and the dequantized activations, as the
/// kernels see them, and each output's scale (|weight row| · |activation row|).
fn reference_product(
    weights: &QuantizedWeights,
    x: &[f32],
    m: usize,
    bias: &[f32],
    residual: &[f32],
    isa: Isa,
) -> (Vec<f32>, Vec<f32>) {
    let (k, n) = (weights.inner(), weights.outer());
    let mut out = vec![0f32; m * n];
    let mut scale = vec![0f32; m * n];
    let mut w_row = vec![0f32; k];
    for o in 0..n {
        weights.unpack_row(o, &mut w_row);
        let k_quant = matches!(
            weights
                .segments()
                .iter()
                .find(|(_, rows)| rows.contains(&o))
                .unwrap()
                .0,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
        );
        for r in 0..m {
            let row = &x[r * k..(r + 1) * k];
            let (values, scales, block) = if k_quant {
                let (v, s) = reference_q8k(row);
                (v, s, 256)
            } else {
                let (v, s) = reference_q8(row, isa);
                (v, s, 32)
            };
            let x_deq: Vec<f64> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| f64::from(v) * f64::from(scales[i / block]))
                .collect();
            let dot: f64 = w_row
                .iter()
                .zip(&x_deq)
                .map(|(&w, &x)| f64::from(w) * x)
                .sum();
            out[r * n + o] = (dot as f32 + bias[o]) + residual[r * n + o];
            let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|v| v * v).sum::<f64>().sqrt();
            let w_norm = norm(&mut w_row.iter().map(|&w| f64::from(w)));
            scale[r * n + o] = (w_norm * norm(&mut x_deq.iter().copied())) as f32;
        }
    }
    (out, scale)
}

/// The largest |got − expected| / scale, failing on a non-finite value.
fn worst_gap(got: &[f32], expected: &[f32], scale: &[f32]) -> f32 {
    let mut worst = 0f32;
    for ((&g, &e), &s) in got.iter().zip(expected).zip(scale) {
        assert!(g.is_finite() && e.is_finite(), "got {g}, expected {e}");
        let gap = (g - e).abs() / s.max(f32::MIN_POSITIVE);
        assert!(gap.is_finite());
        worst = worst.max(gap);
    }
    worst
}

fn product(
    weights: &QuantizedWeights,
    x: &[f32],
    m: usize,
    bias: &[f32],
    residual: &[f32],
    isa: Isa,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * weights.outer()];
    matmul(x, m, weights, Some(bias), Some(residual), &mut out, isa);
    out
}

/// (b) and (c): for every type and ISA, the product is within [`TOLERANCE`] of the f64
/// product of what it multiplies (the activations rounded as that ISA's llama.cpp build
/// rounds them, so the ISAs are not compared with each other directly: x86 and portable
/// round a few values a step apart); (d) each row of a batch is, bit for bit, that row's
/// product alone.
#[test]
fn products_match_the_f64_reference_on_every_isa() {
    let mut worst = 0f32;
    for (t, &ty) in KERNEL_TYPES.iter().enumerate() {
        for (inner, outer, m) in [(512, 37, 7), (768, 5, 1)] {
            let seed = 100 * t as u32 + inner as u32;
            let bytes = random_blocks(ty, inner, outer, seed);
            let weights = QuantizedWeights::from_blocks(ty, inner, outer, &bytes).unwrap();
            let x = activations(m * inner, seed + 7);
            let bias = pseudo_random(outer, seed + 8);
            let residual = pseudo_random(m * outer, seed + 9);
            for isa in Isa::available() {
                let (expected, scale) = reference_product(&weights, &x, m, &bias, &residual, isa);
                let got = product(&weights, &x, m, &bias, &residual, isa);
                let gap = worst_gap(&got, &expected, &scale);
                eprintln!("{ty:?} {isa:?} {m}×{inner}×{outer}: {gap:.2e} from f64");
                assert!(gap <= TOLERANCE, "{ty:?} {isa:?}: {gap:e}");
                worst = worst.max(gap);
                for r in 0..m {
                    let alone = product(
                        &weights,
                        &x[r * inner..(r + 1) * inner],
                        1,
                        &bias,
                        &residual[r * outer..(r + 1) * outer],
                        isa,
                    );
                    assert_eq!(
                        bits(&alone),
                        bits(&got[r * outer..(r + 1) * outer]),
                        "{ty:?} {isa:?} row {r}"
                    );
                }
            }
        }
    }
    eprintln!("worst gap: {worst:.2e}");
}

/// (f) A stack of parts of different types gives each part's product, bit for bit, and
/// each part's rows; rows held in groups give what the same rows held as the file holds them
/// give: the Q4_K parts are one group across the two and three rows past it (alone, rows
/// as the file holds them), the Q8_0 ones likewise (alone, six and five rows as the file
/// holds them), the Q4_0 ones two groups across the two and four rows past
/// them (alone, the first is one group and five rows past it), the Q5_0 ones two groups
/// (alone, seven rows as the file holds them, and a group and a row).
#[test]
fn stacked_types_give_each_parts_product() {
    let (inner, m) = (512, 5);
    let types = [
        GgmlType::Q4_K,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q5_0,
    ];
    let outers = [5, 6, 3, 4, 6, 5, 13, 7, 7, 9];
    let part_bytes: Vec<Vec<u8>> = types
        .iter()
        .zip(outers)
        .enumerate()
        .map(|(i, (&ty, outer))| random_blocks(ty, inner, outer, 40 + i as u32))
        .collect();
    let blocks: Vec<Blocks> = types
        .iter()
        .zip(outers)
        .zip(&part_bytes)
        .map(|((&ty, outer), bytes)| Blocks {
            ty,
            inner,
            outer,
            bytes: bytes[..].into(),
        })
        .collect();
    let parts: Vec<QuantizedWeights> = blocks
        .iter()
        .map(|b| QuantizedWeights::from_blocks(b.ty, b.inner, b.outer, &b.bytes).unwrap())
        .collect();
    let stacked = QuantizedWeights::stack(&blocks).unwrap();
    let n: usize = outers.iter().sum();
    assert_eq!((stacked.inner(), stacked.outer()), (inner, n));
    assert_eq!(
        stacked.bytes(),
        parts.iter().map(|p| p.bytes()).sum::<usize>()
    );
    // Parts of one type one after another join into one segment.
    let expected_segments = vec![
        (GgmlType::Q4_K, 0..11),
        (GgmlType::Q6_K, 11..18),
        (GgmlType::Q8_0, 18..29),
        (GgmlType::Q4_0, 29..49),
        (GgmlType::Q5_0, 49..65),
    ];
    assert_eq!(stacked.segments(), expected_segments);
    let x = activations(m * inner, 3);
    for isa in Isa::available() {
        let mut out = vec![f32::NAN; m * n];
        matmul(&x, m, &stacked, None, None, &mut out, isa);
        let mut first = 0;
        for part in &parts {
            let mut part_out = vec![f32::NAN; m * part.outer()];
            matmul(&x, m, part, None, None, &mut part_out, isa);
            for r in 0..m {
                let stacked_row = &out[r * n + first..r * n + first + part.outer()];
                let part_row = &part_out[r * part.outer()..(r + 1) * part.outer()];
                assert_eq!(bits(stacked_row), bits(part_row), "{isa:?} row {r}");
            }
            first += part.outer();
        }
    }
    let mut row = vec![0f32; inner];
    let mut part_row = vec![0f32; inner];
    let mut first = 0;
    for (part, bytes) in parts.iter().zip(&part_bytes) {
        let row_bytes = bytes.len() / part.outer();
        for o in 0..part.outer() {
            stacked.unpack_row(first + o, &mut row);
            part.unpack_row(o, &mut part_row);
            assert_eq!(bits(&row), bits(&part_row), "row {}", first + o);
            let mut file_row = vec![0f32; inner];
            dequantize(
                part.segments[0].ty,
                &bytes[o * row_bytes..][..row_bytes],
                &mut file_row,
            )
            .unwrap();
            assert_eq!(bits(&row), bits(&file_row), "row {}", first + o);
        }
        first += part.outer();
    }
}

/// (e) `quantize` writes the blocks of gguf-py's `quantize`, bit for bit (the committed
/// fixture, made by make_fixtures.py `--only gguf`).
#[test]
fn quantize_writes_the_gguf_packages_blocks() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf/dequantize.safetensors"
    );
    let file = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let input: Vec<f32> = tensors
        .tensor("quantize.input")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
        let expected = tensors.tensor(&format!("quantize.{ty:?}.blocks")).unwrap();
        let weights = QuantizedWeights::quantize(ty, &input, 64, 2).unwrap();
        let segment = &weights.segments[0];
        let bytes = [segment.row_blocks(0), segment.row_blocks(1)].concat();
        assert_eq!(bytes, expected.data(), "{ty:?}");
    }
    assert!(QuantizedWeights::quantize(GgmlType::Q4_K, &input, 64, 2).is_err());
    assert!(QuantizedWeights::quantize(GgmlType::Q8_0, &input, 64, 3).is_err());
    assert!(QuantizedWeights::quantize(GgmlType::Q8_0, &input[..96], 48, 2).is_err());
}

/// (g) Data that does not fit the shape, shapes that are not whole blocks, types without
/// kernels, and stacks that do not fit together are errors, not panics.
#[test]
fn hostile_shapes_are_errors() {
    let bytes = random_blocks(GgmlType::Q4_K, 256, 2, 1);
    let q4k = GgmlType::Q4_K;
    assert!(QuantizedWeights::from_blocks(q4k, 256, 2, &bytes).is_ok());
    assert!(QuantizedWeights::from_blocks(q4k, 256, 2, &bytes[1..]).is_err());
    assert!(QuantizedWeights::from_blocks(q4k, 256, 3, &bytes).is_err());
    assert!(QuantizedWeights::from_blocks(q4k, 128, 4, &bytes).is_err());
    assert!(QuantizedWeights::from_blocks(q4k, 256, usize::MAX, &bytes).is_err());
    assert!(QuantizedWeights::from_blocks(GgmlType::Q8_0, usize::MAX - 31, 2, &bytes).is_err());
    assert!(QuantizedWeights::from_blocks(GgmlType::Q8_K, 256, 1, &[0; 292]).is_err());
    assert!(QuantizedWeights::from_blocks(GgmlType::F32, 1, 2, &[0; 8]).is_err());
    let a = Blocks {
        ty: q4k,
        inner: 256,
        outer: 2,
        bytes: bytes[..].into(),
    };
    let b = Blocks {
        ty: GgmlType::Q8_0,
        inner: 32,
        outer: 1,
        bytes: vec![0; 34].into(),
    };
    assert!(QuantizedWeights::stack(&[a.clone(), b]).is_err());
    let short = Blocks {
        outer: 3,
        ..a.clone()
    };
    assert!(QuantizedWeights::stack(&[a, short]).is_err());
    assert!(QuantizedWeights::stack(&[]).is_err());
}

/// The tasks' runs cover a segment's rows in order, in whole groups (but the last), no
/// longer than a task's sums; decoding's runs differ by at most a group.
#[test]
fn runs_cover_the_rows_in_whole_groups() {
    for (rows, n, m) in [
        (960, 960, 1),
        (1600, 1600, 1),
        (128, 1152, 1),
        (37, 37, 1),
        (151_936, 151_936, 1),
        (4864, 4864, 512),
        (5, 9, 3),
        (0, 8, 1),
    ] {
        let runs: Vec<Range<usize>> = runs(rows, n, m, 2).collect();
        assert_eq!(runs.first().map(|run| run.start), Some(0));
        assert_eq!(runs.last().map(|run| run.end), Some(rows));
        for pair in runs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
            assert_eq!(pair[0].end % interleave::ROWS, 0, "{rows} rows");
        }
        let lengths = runs.iter().map(|run| run.len());
        assert!(lengths.clone().all(|length| length <= MAX_RUN));
        if m == 1 && rows % interleave::ROWS == 0 {
            let spread = lengths.clone().max().unwrap() - lengths.min().unwrap();
            assert!(spread <= interleave::ROWS, "{rows} rows: {runs:?}");
        }
    }
}
