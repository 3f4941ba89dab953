//! Every kernel path against a reference: each weight format (f32, bf16, int8) in each kernel
//! mode (candle's reference ops, our portable kernels, our kernels on each instruction set
//! this CPU has) against PyTorch's outputs on the fixtures; and the GEMM itself, on shapes
//! that cross its blocks, against an f64 product computed here. Each case says on stderr
//! which path it ran (`cargo test --test kernel_paths -- --nocapture`); `skipped_paths` lists
//! the paths this CPU cannot run (.ci/run prints it uncaptured).

mod common;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use common::{
    fixture_model, ids_and_mask, lengths, real_positions, reference, reference_input, row,
};
use ferroformers::kernels::gemm::{self, Epilogue, PackedWeights, WeightFormat};
use ferroformers::kernels::isa::{set_isa_limit, skipped_paths_summary, test_can_run, Isa};
use ferroformers::kernels::{
    erf, exp, gelu_erf_scalar, gelu_tanh_scalar, set_kernel_mode, KernelMode,
};
use ferroformers::{
    BertForMaskedLM, DType, DistilBertForQuestionAnswering, FromPretrained, Gemma3TextModel,
    Gpt2LMHeadModel, LlamaForCausalLM, LoadOptions, MpNetForMaskedLM,
    RobertaForTokenClassification, Tensor, WeightType,
};

/// f32 weights, any path: the project's bar against PyTorch.
const F32_TOLERANCE: f32 = 1e-4;

// The reduced-precision bars: the worst max-abs error against PyTorch's f32 logits over the
// four fixtures, measured at 13c8206 (the same on every path of our kernels to the three
// digits printed), with ~1.5x headroom. Re-measure with
// `cargo test --test kernel_paths every_weight -- --nocapture` when a kernel's arithmetic
// changes (the AVX-512 bf16 and VNNI int8 kernels will).
// MPNet's masked LM, added later, measured on a Zen 4: bf16 2.7e-2 (portable, AVX2) and
// 3.5e-2 (AVX-512), 6.1e-2 on candle's ops; int8 3.9e-2 and 5.3e-2 (AVX-512): within the bars.

/// bf16 weights on our kernels: each weight rounded to 8 significant bits (relative error up
/// to 2^-8), the activations kept in f32. Measured 3.3e-2 (GPT-2 and BERT logits). The
/// AVX-512 kernel (`vdpbf16ps`) will round the activations to bf16 too, as PyTorch does: its
/// error may approach candle's below.
const BF16_TOLERANCE: f32 = 5e-2;

/// bf16 weights on candle's ops (reference mode): candle computes in bf16 throughout, every
/// activation rounded to 8 significant bits, so the error grows through the layers.
/// Measured 6.0e-2 (BERT logits).
const BF16_REFERENCE_TOLERANCE: f32 = 9e-2;

/// int8 weights (our kernels only): each weight off by up to half a step of its output
/// channel's scale, max|w_row| / 254, so by more than bf16 for all but the row's largest
/// weights; activations quantised to 16 bits per row (negligible beside that). Measured
/// 5.5e-2 (GPT-2 logits). A VNNI kernel (`vpdpbusd`) quantises the activations to 8 bits.
const INT8_TOLERANCE: f32 = 8e-2;

/// The kernel mode and the instruction-set limit are process-wide, and the tests of one
/// binary run on parallel threads: every test that sets them or reports the path it ran holds
/// this lock.
static PROCESS_WIDE: Mutex<()> = Mutex::new(());

fn hold_process_wide() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the others still run.
    PROCESS_WIDE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The largest absolute difference between two tensors of one shape, after checking that
/// every value of both is finite: a NaN or an infinity on either side fails the test (a max
/// over differences would skip a NaN).
fn max_abs_error(actual: &Tensor, expected: &Tensor, what: &str) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shapes differ");
    let values = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_else(|e| panic!("{what}: reading the values: {e}"))
    };
    let (actual, expected) = (values(actual), values(expected));
    assert!(!actual.is_empty(), "{what}: no values to compare");
    max_abs_error_of(&actual, &expected, what)
}

fn max_abs_error_of(actual: &[f32], expected: &[f32], what: &str) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let mut worst = 0f32;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            a.is_finite() && e.is_finite(),
            "{what}: value {i} is not finite: {a} against {e}"
        );
        worst = worst.max((a - e).abs());
    }
    worst
}

#[test]
#[should_panic(expected = "not finite")]
fn a_nan_in_the_output_fails_the_comparison() {
    let expected = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &ferroformers::Device::Cpu).unwrap();
    let actual = Tensor::new(&[1f32, f32::NAN, 3.0, 4.0], &ferroformers::Device::Cpu).unwrap();
    max_abs_error(&actual, &expected, "NaN in the second value");
}

#[test]
#[should_panic(expected = "not finite")]
fn an_infinity_in_the_reference_fails_the_comparison() {
    max_abs_error_of(&[1.0, 2.0], &[1.0, f32::INFINITY], "infinity");
}

/// The bar for weights stored as `weights` on the kernels' `mode`.
fn tolerance(weights: WeightType, mode: KernelMode) -> f32 {
    match (weights, mode) {
        (WeightType::F32, _) => F32_TOLERANCE,
        (WeightType::Bf16, KernelMode::Reference) => BF16_REFERENCE_TOLERANCE,
        (WeightType::Bf16, _) => BF16_TOLERANCE,
        (WeightType::Int8, _) => INT8_TOLERANCE,
        (WeightType::F16, _) => unreachable!("f16 weights are not among the paths checked"),
        (WeightType::Q8_0 | WeightType::Q4_0, _) => {
            unreachable!("llama.cpp's block types are checked in tests/gguf.rs")
        }
    }
}

/// The five fixtures' models (encoders with exact GELU and the fused attention, MPNet's with
/// its position bias too, GPT-2 with gelu_new and the decoder attention), and with f32 weights
/// the Llama family's and Gemma 3's text model, loaded with `options` in the current mode,
/// against PyTorch. Returns the worst error, after asserting
/// each within `tolerance`.
fn check_fixtures(options: &LoadOptions, tolerance: f32, path: &str) -> f32 {
    let mut worst = 0f32;
    let mut check = |actual: &Tensor, expected: &Tensor, model: &str| {
        let what = format!("{path} {model}");
        let error = max_abs_error(actual, expected, &what);
        eprintln!("  {what}: max abs error {error:.2e}");
        assert!(
            error <= tolerance,
            "{what}: max abs error {error:e} exceeds {tolerance:e}"
        );
        worst = worst.max(error);
    };

    let expected = reference("bert/masked-lm");
    let model = BertForMaskedLM::from_pretrained(&fixture_model("bert/masked-lm"), options)
        .expect("bert loads");
    let logits = model.forward(&reference_input(&expected)).unwrap();
    check(&logits, &expected["logits"], "bert masked-lm");

    let expected = reference("roberta/token-classification");
    let model = RobertaForTokenClassification::from_pretrained(
        &fixture_model("roberta/token-classification"),
        options,
    )
    .expect("roberta loads");
    let logits = model.forward(&reference_input(&expected)).unwrap();
    check(&logits, &expected["logits"], "roberta token-classification");

    let expected = reference("distilbert/question-answering");
    let model = DistilBertForQuestionAnswering::from_pretrained(
        &fixture_model("distilbert/question-answering"),
        options,
    )
    .expect("distilbert loads");
    let output = model.forward(&reference_input(&expected)).unwrap();
    check(
        &output.start_logits,
        &expected["start_logits"],
        "distilbert start",
    );
    check(
        &output.end_logits,
        &expected["end_logits"],
        "distilbert end",
    );

    let expected = reference("mpnet/masked-lm");
    let model = MpNetForMaskedLM::from_pretrained(&fixture_model("mpnet/masked-lm"), options)
        .expect("mpnet loads");
    let logits = model.forward(&reference_input(&expected)).unwrap();
    check(&logits, &expected["logits"], "mpnet masked-lm");

    // The decoders, left-padded: only the real positions of each row are compared.
    let mut check_real_positions =
        |logits: &Tensor, expected: &HashMap<String, Tensor>, model: &str| {
            for (i, len) in lengths(expected).into_iter().enumerate() {
                check(
                    &real_positions(logits, i, len),
                    &real_positions(&expected["logits"], i, len),
                    &format!("{model} lm-head row {i}"),
                );
            }
        };
    let expected = reference("gpt2/lm-head");
    let model = Gpt2LMHeadModel::from_pretrained(&fixture_model("gpt2/lm-head"), options)
        .expect("gpt2 loads");
    let (ids, mask) = ids_and_mask(&expected);
    let logits = model.forward(&ids, Some(&mask), None).unwrap();
    check_real_positions(&logits, &expected, "gpt2");

    // The Llama family (RMSNorm, the q/k/v split with Qwen3's head norms and the rotation,
    // SwiGLU, grouped-query attention), left-padded, in f32: its reduced-precision drift has
    // bars of its own in tests/llama.rs.
    if options.weight_type != WeightType::F32 {
        return worst;
    }
    for family in ["llama", "mistral", "qwen2", "qwen3"] {
        let expected = reference(&format!("{family}/lm-head"));
        let model = LlamaForCausalLM::from_pretrained(
            &fixture_model(&format!("{family}/lm-head")),
            options,
        )
        .expect("the decoder loads");
        let (ids, mask) = ids_and_mask(&expected);
        let logits = model.forward(&ids, Some(&mask), None).unwrap();
        check_real_positions(&logits, &expected, family);
    }

    // Gemma 3's bidirectional text model (its norms of 1 + weight, GeGLU, the windowed and
    // full masks), right-padded: the first `len` positions of each row. Its reduced-precision
    // drift has bars of its own in tests/gemma3.rs.
    let name = "gemma3/sentence-transformers";
    let expected = reference(name);
    let model =
        Gemma3TextModel::from_pretrained(&fixture_model(name), options).expect("gemma3 loads");
    let hidden = model
        .forward(&reference_input(&expected))
        .unwrap()
        .last_hidden_state;
    for (i, len) in lengths(&expected).into_iter().enumerate() {
        check(
            &row(&hidden, i, Some(len)),
            &row(&expected["last_hidden_state"], i, Some(len)),
            &format!("gemma3 row {i}"),
        );
    }
    worst
}

#[test]
fn every_weight_format_mode_and_isa_matches_pytorch() {
    let _lock = hold_process_wide();
    let name = "every_weight_format_mode_and_isa_matches_pytorch";
    // The paths: reference and portable once, then our kernels with each instruction set in
    // turn (a CPU without one skips it, saying so, or fails under FERROFORMERS_EXPECT_ISA).
    let mut paths = vec![
        (KernelMode::Reference, Isa::of_cpu()),
        (KernelMode::Portable, Isa::of_cpu()),
    ];
    for isa in Isa::all() {
        if test_can_run(isa, name) {
            paths.push((KernelMode::Auto, isa));
        }
    }
    for (mode, isa) in paths {
        set_kernel_mode(mode);
        set_isa_limit(isa);
        let path = match mode {
            KernelMode::Auto => format!("{mode:?} {}", isa.name()),
            _ => format!("{mode:?}"),
        };
        for weights in [WeightType::F32, WeightType::Bf16, WeightType::Int8] {
            let options = LoadOptions::default().with_weight_type(weights);
            let path = format!("{path} {weights:?}");
            if weights == WeightType::Int8 && mode == KernelMode::Reference {
                // int8 weights need our GEMM: with candle's ops it is a load error.
                let loaded =
                    BertForMaskedLM::from_pretrained(&fixture_model("bert/masked-lm"), &options);
                assert!(loaded.is_err(), "{path}: int8 loads with candle's ops");
                eprintln!("{path}: a load error, as it should be");
                continue;
            }
            let tolerance = tolerance(weights, mode);
            let worst = check_fixtures(&options, tolerance, &path);
            eprintln!("{path}: worst error {worst:.2e} (bar {tolerance:.0e})");
        }
    }
    set_kernel_mode(KernelMode::Auto);
    set_isa_limit(Isa::of_cpu());
}

/// A deterministic spread of values in [-1, 1).
fn spread(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The largest slope of exact GELU (at x ≈ 1.41): an error before the epilogue grows by at
/// most this much through it.
const GELU_SLOPE: f64 = 1.13;

/// Summation in f32 over up to ~2000 products: each output is off by about the unit roundoff
/// (2^-24 = 6e-8) times Σ|x·w| (measured: 8.3e-8 at most, in the order each path sums).
/// Bar: 16 unit roundoffs, well below a wrong or missing block of products (off by the order
/// of the output itself).
const F32_SUM_RELATIVE: f64 = 1e-6;

/// The relative roundoff of the activations in a bf16 product on `isa`: the AVX-512 kernel
/// (`vdpbf16ps`) rounds them to bf16, as PyTorch does (2^-9; the bound takes 2^-8); the
/// other paths multiply the f32 activations by the widened weights.
fn bf16_activation_roundoff(isa: Isa) -> f64 {
    match isa.has_avx512() {
        true => 2f64.powi(-8),
        false => 0.0,
    }
}

/// The quantization step of a row of activations in an int8 product on `isa`: 16 bits per
/// sign over ±max|x| (`vpmaddwd`), or on AVX-512 (`vpdpbusd`) 255 steps over the row's range
/// widened to hold 0.
fn int8_activation_step(isa: Isa, row: &[f32]) -> f64 {
    let (lo, hi) = row.iter().fold((0f64, 0f64), |(l, h), &v| {
        (l.min(v as f64), h.max(v as f64))
    });
    match isa.has_avx512() {
        true => (hi - lo) / 255.0,
        false => lo.abs().max(hi) / 32767.0,
    }
}

/// The weights as the product of `format` sees them: f32 as given; bf16 rounded to nearest
/// even; int8 as `q · s`, `s = max|w_row| / 127`, `q = round(w / s)` (per output channel,
/// as `WeightFormat::Int8` documents).
fn weights_as_stored(w: &[f32], inner: usize, format: WeightFormat) -> Vec<f64> {
    match format {
        WeightFormat::F32 => w.iter().map(|&v| v as f64).collect(),
        WeightFormat::Bf16 => w
            .iter()
            .map(|&v| f32::from_bits((gemm::bf16_bits(v) as u32) << 16) as f64)
            .collect(),
        WeightFormat::Int8 => w
            .chunks(inner)
            .flat_map(|row| {
                let scale = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                row.iter().map(move |&v| {
                    let q = (v / scale).round().clamp(-127.0, 127.0);
                    q as f64 * scale as f64
                })
            })
            .collect(),
    }
}

/// `gemm::matmul` for each weight format on each instruction set, on shapes that cross its
/// blocks: inner sizes past two K blocks (768 inputs each; odd, so that int8's last pair is
/// half empty), one row and row counts past one micro-panel (6 rows) and one block of rows
/// (72), outputs that leave a partial 16-column panel; with bias, exact GELU and a residual.
/// Against an f64 product of the weights as stored, within a bound derived per output from
/// the arithmetic each format does. The output starts as NaN, so a tile left unwritten fails.
#[test]
fn gemm_matches_an_f64_product_across_blocks_on_every_isa() {
    let _lock = hold_process_wide();
    let name = "gemm_matches_an_f64_product_across_blocks_on_every_isa";
    set_kernel_mode(KernelMode::Auto);
    let isas: Vec<Isa> = Isa::all()
        .into_iter()
        .filter(|&isa| test_can_run(isa, name))
        .collect();
    for (m, inner, outer) in [(1, 1601, 48), (13, 1600, 40), (80, 1700, 19)] {
        // Rows of different magnitudes, so that per-row scales matter.
        let x: Vec<f32> = spread(m * inner, 1)
            .chunks(inner)
            .enumerate()
            .flat_map(|(r, row)| row.iter().map(move |v| v * (1.0 + r as f32 % 3.0)))
            .collect();
        // Weights ~ 1/√inner, each output channel its own magnitude (int8's per-channel
        // scales differ, so a scale read for the wrong channel fails).
        let w: Vec<f32> = spread(outer * inner, 2)
            .chunks(inner)
            .enumerate()
            .flat_map(|(o, row)| {
                let magnitude = (1.0 + (o % 4) as f32) / (inner as f32).sqrt();
                row.iter().map(move |v| v * magnitude)
            })
            .collect();
        let bias = spread(outer, 3);
        let residual = spread(m * outer, 4);
        for format in [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8] {
            let stored = weights_as_stored(&w, inner, format);
            for &isa in &isas {
                // Packed for `isa`: on AVX-512, bf16 and int8 weights are grouped (pairs, quads).
                let packed =
                    PackedWeights::pack_for(isa, inner, outer, format, |o, i| w[o * inner + i]);
                let mut out = vec![f32::NAN; m * outer];
                gemm::matmul(
                    &x,
                    m,
                    &packed,
                    Some(&bias),
                    Epilogue::GeluErf,
                    Some(&residual),
                    &mut out,
                    isa,
                );
                let what = format!("gemm {m}x{inner}x{outer} {format:?} on {}", isa.name());
                let (mut worst_share, mut worst_relative) = (0f64, 0f64);
                for r in 0..m {
                    let row = &x[r * inner..(r + 1) * inner];
                    let step = int8_activation_step(isa, row);
                    for o in 0..outer {
                        let weights = &stored[o * inner..(o + 1) * inner];
                        let (mut sum, mut magnitude, mut weight_mass) = (0f64, 0f64, 0f64);
                        for (&xi, &wi) in row.iter().zip(weights) {
                            sum += xi as f64 * wi;
                            magnitude += (xi as f64 * wi).abs();
                            weight_mass += wi.abs();
                        }
                        let pre = sum + bias[o] as f64;
                        let gelu = 0.5 * pre * (1.0 + libm_erf(pre / std::f64::consts::SQRT_2));
                        let expected = gelu + residual[r * outer + o] as f64;
                        // Before the epilogue: f32 sums, plus what the format's activations
                        // lose (bf16: their unit roundoff; int8: half a step of the row's
                        // scale each).
                        let mut bound = F32_SUM_RELATIVE * (magnitude + bias[o].abs() as f64);
                        if format == WeightFormat::Bf16 {
                            bound += magnitude * bf16_activation_roundoff(isa);
                        }
                        if format == WeightFormat::Int8 {
                            bound += weight_mass * step / 2.0;
                        }
                        // Through GELU (its approximation within 2e-6), then the residual
                        // added in f32.
                        let rounding = 1.2e-7 * (gelu.abs() + residual[r * outer + o].abs() as f64);
                        let bound = GELU_SLOPE * bound + 2e-6 + rounding;
                        let got = out[r * outer + o];
                        let error = (got as f64 - expected).abs();
                        assert!(
                            got.is_finite() && error <= bound,
                            "{what}: row {r} column {o}: {got} against {expected} (bound {bound:e})"
                        );
                        worst_share = worst_share.max(error / bound);
                        worst_relative = worst_relative.max(error / magnitude);
                    }
                }
                eprintln!(
                    "{what}: worst error {worst_share:.3} of its bound, \
                     {worst_relative:.1e} of Σ|x·w|"
                );
            }
        }
    }
}

#[test]
fn scalar_approximations_are_within_their_stated_error() {
    // Against f64 references over a dense grid.
    let mut worst = (0f64, 0f64, 0f64);
    let mut worst_tanh = 0f64;
    for i in -40_000..=40_000 {
        let x = i as f32 * 2.5e-4; // -10 .. 10
        let e = (exp(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp();
        let erf_ref = libm_erf(x as f64);
        let r = (erf(x) as f64 - erf_ref).abs();
        let gelu_ref = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / std::f64::consts::SQRT_2));
        let g = (gelu_erf_scalar(x) as f64 - gelu_ref).abs();
        // `max` would skip a NaN: a non-finite result fails here.
        assert!(
            exp(x).is_finite() && erf(x).is_finite() && gelu_erf_scalar(x).is_finite(),
            "non-finite at {x}"
        );
        worst = (worst.0.max(e), worst.1.max(r), worst.2.max(g));
        let x64 = x as f64;
        let y = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
        let tanh_ref = 0.5 * x64 * (1.0 + y.tanh());
        assert!(
            gelu_tanh_scalar(x).is_finite(),
            "gelu (tanh) non-finite at {x}"
        );
        worst_tanh =
            worst_tanh.max((gelu_tanh_scalar(x) as f64 - tanh_ref).abs() / (1.0 + x64.abs()));
    }
    assert!(
        worst_tanh < 1e-6,
        "gelu (tanh) error {worst_tanh} · (1 + |x|)"
    );
    assert!(worst.0 < 3e-7, "exp relative error {}", worst.0);
    assert!(worst.1 < 6e-7, "erf absolute error {}", worst.1);
    assert!(worst.2 < 2e-6, "gelu absolute error {}", worst.2);
}

/// erf in f64 by its Taylor series (|x| small) or continued fraction (|x| large).
fn libm_erf(x: f64) -> f64 {
    if x.abs() < 3.0 {
        let mut sum = x;
        let mut term = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc by Lentz's continued fraction.
        let z = x.abs();
        let mut f = z;
        for n in (1..60).rev() {
            f = z + (n as f64 / 2.0) / f;
        }
        let erfc = (-z * z).exp() / (std::f64::consts::PI.sqrt() * f);
        (1.0 - erfc).copysign(x)
    }
}

/// The kernel paths this CPU cannot run, which the tests here and the library's unit tests
/// skip, one `skipped: <path> (<why>)` line each, or `no kernel path skipped`: .ci/run runs
/// this test with `--nocapture`, so that a skip shows in CI's log. A skip of a path
/// `FERROFORMERS_EXPECT_ISA` promises fails instead (`test_can_run`); so does it here.
#[test]
fn skipped_paths() {
    let summary = skipped_paths_summary();
    println!("{summary}");
    for isa in Isa::all() {
        // Panics on a path the CPU was expected to run and cannot.
        let runs = test_can_run(isa, "skipped_paths");
        let listed = summary.starts_with(&format!("skipped: {} (", isa.name()))
            || summary.contains(&format!("\nskipped: {} (", isa.name()));
        assert_eq!(listed, !runs, "{}: {summary}", isa.name());
    }
}
