//! Run every fixture model on a device and compare with the PyTorch references.
//!
//!     cargo run --example device_check -- cpu
//!     cargo run --release --features cuda --example device_check -- cuda
//!
//! It loads each tiny checkpoint in tests/fixtures on the device, in f32 and bf16, runs the
//! reference batch, and prints the largest difference from PyTorch's f32 outputs. It also
//! decodes 32 GPT-2 steps with the KV cache and compares them with full recomputation. The
//! exit code is non-zero when any difference exceeds its tolerance. Made for checking the CUDA
//! and Metal backends on machines that have them; CI runs the same comparisons on the CPU
//! through `cargo test`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferroformers::{
    BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertModel, DType, Device, DistilBertForMaskedLM,
    DistilBertForQuestionAnswering, DistilBertForSequenceClassification,
    DistilBertForTokenClassification, DistilBertModel, FromPretrained,
    Gpt2ForSequenceClassification, Gpt2LMHeadModel, Gpt2Model, HubOptions, LoadOptions, ModelInput,
    Result, RobertaForMaskedLM, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification, RobertaModel, Tensor, WeightType,
};

type Outputs = Vec<(&'static str, Tensor)>;

struct Checker {
    fixtures: PathBuf,
    device: Device,
    weight_type: WeightType,
    tolerance: f32,
    failures: usize,
}

impl Checker {
    fn options(&self) -> LoadOptions {
        LoadOptions::default()
            .with_hub(HubOptions::default().with_offline(true))
            .with_weight_type(self.weight_type)
            .with_device(self.device.clone())
    }

    fn reference(&self, name: &str) -> Result<HashMap<String, Tensor>> {
        let path = self.fixtures.join(name).join("reference.safetensors");
        Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
    }

    fn input(&self, reference: &HashMap<String, Tensor>) -> Result<ModelInput> {
        let get = |key: &str| -> Result<Tensor> {
            Ok(reference[key]
                .to_dtype(DType::U32)?
                .to_device(&self.device)?)
        };
        Ok(ModelInput {
            input_ids: get("input_ids")?,
            attention_mask: Some(get("attention_mask")?),
            token_type_ids: Some(get("token_type_ids")?),
        })
    }

    /// Load `name` as `M`, run `forward` on the reference batch, compare each named output.
    /// `real_only` keeps, per row, the positions the mask marks real (GPT-2's left padding).
    fn check<M: FromPretrained>(
        &mut self,
        name: &str,
        real_only: bool,
        forward: impl Fn(&M, &ModelInput) -> Result<Outputs>,
    ) -> Result<()> {
        let model =
            M::from_pretrained(&self.fixtures.join(name).to_string_lossy(), &self.options())?;
        let reference = self.reference(name)?;
        let mask = reference["attention_mask"].to_dtype(DType::F32)?;
        for (key, actual) in forward(&model, &self.input(&reference)?)? {
            let actual = actual.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let mut diff = (actual - &reference[key])?.abs()?;
            if real_only {
                diff = diff.broadcast_mul(&mask.unsqueeze(2)?)?;
            }
            let max = diff.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            self.report(&format!("{name} {key}"), max);
        }
        Ok(())
    }

    fn report(&mut self, what: &str, max: f32) {
        let ok = max <= self.tolerance;
        if !ok {
            self.failures += 1;
        }
        println!(
            "{:<6} {:<5} {what:<44} max |diff| {max:.2e} (tolerance {:.1e})",
            if ok { "ok" } else { "FAIL" },
            self.weight_type.to_string(),
            self.tolerance
        );
    }

    fn all(&mut self) -> Result<()> {
        let hidden = |o: ferroformers::EncoderOutput| -> Outputs {
            let mut outputs = vec![("last_hidden_state", o.last_hidden_state)];
            outputs.extend(o.pooler_output.map(|p| ("pooler_output", p)));
            outputs
        };
        let qa = |o: ferroformers::QuestionAnsweringOutput| -> Outputs {
            vec![
                ("start_logits", o.start_logits),
                ("end_logits", o.end_logits),
            ]
        };
        self.check("bert/base", false, |m: &BertModel, i| {
            Ok(hidden(m.forward(i)?))
        })?;
        self.check("bert/masked-lm", false, |m: &BertForMaskedLM, i| {
            Ok(vec![("logits", m.forward(i)?)])
        })?;
        self.check(
            "bert/sequence-classification",
            false,
            |m: &BertForSequenceClassification, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.check(
            "bert/token-classification",
            false,
            |m: &BertForTokenClassification, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.check(
            "bert/question-answering",
            false,
            |m: &BertForQuestionAnswering, i| Ok(qa(m.forward(i)?)),
        )?;
        self.check("roberta/base", false, |m: &RobertaModel, i| {
            Ok(hidden(m.forward(i)?))
        })?;
        self.check("roberta/masked-lm", false, |m: &RobertaForMaskedLM, i| {
            Ok(vec![("logits", m.forward(i)?)])
        })?;
        self.check(
            "roberta/sequence-classification",
            false,
            |m: &RobertaForSequenceClassification, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.check(
            "roberta/token-classification",
            false,
            |m: &RobertaForTokenClassification, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.check(
            "roberta/question-answering",
            false,
            |m: &RobertaForQuestionAnswering, i| Ok(qa(m.forward(i)?)),
        )?;
        self.check("distilbert/base", false, |m: &DistilBertModel, i| {
            Ok(hidden(m.forward(i)?))
        })?;
        self.check(
            "distilbert/masked-lm",
            false,
            |m: &DistilBertForMaskedLM, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.check(
            "distilbert/sequence-classification",
            false,
            |m: &DistilBertForSequenceClassification, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.check(
            "distilbert/token-classification",
            false,
            |m: &DistilBertForTokenClassification, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.check(
            "distilbert/question-answering",
            false,
            |m: &DistilBertForQuestionAnswering, i| Ok(qa(m.forward(i)?)),
        )?;
        self.check("gpt2/base", true, |m: &Gpt2Model, i| {
            Ok(vec![(
                "last_hidden_state",
                m.forward(&i.input_ids, i.attention_mask.as_ref(), None)?,
            )])
        })?;
        self.check("gpt2/lm-head", true, |m: &Gpt2LMHeadModel, i| {
            Ok(vec![(
                "logits",
                m.forward(&i.input_ids, i.attention_mask.as_ref(), None)?,
            )])
        })?;
        self.check(
            "gpt2/sequence-classification",
            false,
            |m: &Gpt2ForSequenceClassification, i| Ok(vec![("logits", m.forward(i)?)]),
        )?;
        self.cached_decoding()
    }

    /// 32 greedy steps with the KV cache against full recomputation, on the device.
    fn cached_decoding(&mut self) -> Result<()> {
        let name = "gpt2/lm-head";
        let model = Gpt2LMHeadModel::from_pretrained(
            &self.fixtures.join(name).to_string_lossy(),
            &self.options(),
        )?;
        let input = self.input(&self.reference(name)?)?;
        let mut ids = input.input_ids;
        let mut mask = input
            .attention_mask
            .ok_or_else(|| ferroformers::Error::InvalidInput("the reference has no mask".into()))?;
        let batch = ids.dim(0)?;
        let mut cache = model.new_cache();
        let mut logits = model.forward(&ids, Some(&mask), Some(&mut cache))?;
        let mut worst = 0f32;
        for _ in 0..32 {
            let next = logits.narrow(1, logits.dim(1)? - 1, 1)?.argmax(2)?;
            ids = Tensor::cat(&[&ids, &next], 1)?;
            mask = Tensor::cat(
                &[&mask, &Tensor::ones((batch, 1), DType::U32, &self.device)?],
                1,
            )?;
            logits = model.forward(&next, Some(&mask), Some(&mut cache))?;
            let full = model.forward(&ids, Some(&mask), None)?;
            let last = full.narrow(1, ids.dim(1)? - 1, 1)?;
            let diff = (logits.to_dtype(DType::F32)? - last.to_dtype(DType::F32)?)?.abs()?;
            worst = worst.max(
                diff.flatten_all()?
                    .max(0)?
                    .to_device(&Device::Cpu)?
                    .to_scalar::<f32>()?,
            );
        }
        self.report("gpt2 32 cached steps vs recompute", worst);
        Ok(())
    }
}

fn device(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        "metal" => Device::new_metal(0)?,
        other => {
            return Err(ferroformers::Error::InvalidInput(format!(
                "unknown device `{other}`: use cpu, cuda or metal"
            )))
        }
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let device = device(args.get(1).map_or("cpu", String::as_str))?;
    let fixtures = args
        .get(2)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    println!("device: {device:?}");
    let mut failures = 0;
    // bf16 keeps 8 bits of mantissa: its tolerance is the one tests/bert.rs states for logits.
    for (weight_type, tolerance) in [(WeightType::F32, 1e-4), (WeightType::Bf16, 1.2e-1)] {
        let mut checker = Checker {
            fixtures: fixtures.clone(),
            device: device.clone(),
            weight_type,
            tolerance,
            failures: 0,
        };
        checker.all()?;
        failures += checker.failures;
    }
    if failures > 0 {
        eprintln!("{failures} comparison(s) exceeded their tolerance");
        std::process::exit(1);
    }
    println!("all comparisons within tolerance");
    Ok(())
}
