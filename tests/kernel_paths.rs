//! Every kernel path against PyTorch: candle's reference ops, our portable kernels, and our
//! kernels with the best instruction set of this CPU, forced in turn. One test in its own
//! binary, since the mode is process-wide.

mod common;

use common::*;
use ferroformers::kernels::{
    erf, exp, gelu_erf_scalar, gelu_tanh_scalar, set_kernel_mode, KernelMode,
};
use ferroformers::{
    BertForMaskedLM, DistilBertForQuestionAnswering, FromPretrained, Gpt2LMHeadModel, LoadOptions,
    RobertaForTokenClassification,
};

#[test]
fn every_kernel_path_matches_pytorch() {
    let options = LoadOptions::default();
    for mode in [
        KernelMode::Reference,
        KernelMode::Portable,
        KernelMode::Auto,
    ] {
        set_kernel_mode(mode);
        let what = |name: &str| format!("{mode:?} {name}");

        // int8 weights need our GEMM: with candle's ops (reference) it is a load error.
        let int8 = options
            .clone()
            .with_quantization(ferroformers::Quantization::Int8);
        let quantized = BertForMaskedLM::from_pretrained(&fixture_model("bert/masked-lm"), &int8);
        assert_eq!(
            quantized.is_err(),
            mode == KernelMode::Reference,
            "{mode:?}: int8 load"
        );

        let reference = common::reference("bert/masked-lm");
        let model =
            BertForMaskedLM::from_pretrained(&fixture_model("bert/masked-lm"), &options).unwrap();
        let logits = model.forward(&reference_input(&reference)).unwrap();
        assert_close(&logits, &reference["logits"], 1e-4, &what("bert masked-lm"));

        let reference = common::reference("roberta/token-classification");
        let model = RobertaForTokenClassification::from_pretrained(
            &fixture_model("roberta/token-classification"),
            &options,
        )
        .unwrap();
        let logits = model.forward(&reference_input(&reference)).unwrap();
        assert_close(
            &logits,
            &reference["logits"],
            1e-4,
            &what("roberta token-classification"),
        );

        let reference = common::reference("distilbert/question-answering");
        let model = DistilBertForQuestionAnswering::from_pretrained(
            &fixture_model("distilbert/question-answering"),
            &options,
        )
        .unwrap();
        let output = model.forward(&reference_input(&reference)).unwrap();
        assert_close(
            &output.start_logits,
            &reference["start_logits"],
            1e-4,
            &what("distilbert start"),
        );

        // GPT-2 (gelu_new, causal softmax through the fused softmax kernel): real positions.
        let reference = common::reference("gpt2/lm-head");
        let model =
            Gpt2LMHeadModel::from_pretrained(&fixture_model("gpt2/lm-head"), &options).unwrap();
        let input = reference_input(&reference);
        let logits = model
            .forward(&input.input_ids, input.attention_mask.as_ref(), None)
            .unwrap();
        let seq = logits.dim(1).unwrap();
        for (i, len) in lengths(&reference).into_iter().enumerate() {
            let ours = logits
                .narrow(0, i, 1)
                .unwrap()
                .narrow(1, seq - len, len)
                .unwrap();
            let theirs = reference["logits"]
                .narrow(0, i, 1)
                .unwrap()
                .narrow(1, seq - len, len)
                .unwrap();
            assert_close(&ours, &theirs, 1e-4, &what("gpt2 lm-head"));
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
        worst = (worst.0.max(e), worst.1.max(r), worst.2.max(g));
        let x64 = x as f64;
        let y = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
        let tanh_ref = 0.5 * x64 * (1.0 + y.tanh());
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
