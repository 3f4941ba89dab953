//! `ferroformers bench`: time an encoder's forward pass, or GPT-2 decoding, for comparisons
//! run by scripts/bench_compare.py against PyTorch and ONNX Runtime on the same model files.

use std::io::Write;
use std::time::Instant;

use clap::Args;
use ferroformers::generation::{GenerationConfig, Generator, PromptBatch};
use ferroformers::kernels::isa::Isa;
use ferroformers::kernels::{kernel_mode, KernelMode};
use ferroformers::runtime::benchmark::resident_memory;
use ferroformers::{
    AutoModel, AutoModelForCausalLM, DType, LoadOptions, ModelInput, Tensor, WeightType,
};
use serde::Serialize;

use super::json_line;
use crate::cli::{weight_types, Common};
use crate::error::CliError;

/// The options of `bench` besides the model's.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Sequences per forward pass (prompts, with --generate).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Time a decoder's greedy decoding (GPT-2 or a Llama-family model) instead of the encoder.
    #[arg(long)]
    generate: bool,
    /// With --generate: prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// With --generate: tokens to decode.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed runs, after two warm-up runs.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// With --generate: also load the model in this dtype and time the two in turn, run
    /// by run, and report the paired ratio of their decoding speeds.
    #[arg(long, value_parser = weight_types(), requires = "generate")]
    against: Option<WeightType>,
    /// The report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `ferroformers bench`: time the encoder, or with --generate the decoding.
pub fn bench(common: &Common, args: BenchArgs, out: &mut impl Write) -> Result<(), CliError> {
    match args.generate {
        true => bench_decoding(common, &args, out),
        false => bench_encoder(common, &args, out),
    }
}

fn bench_encoder(common: &Common, args: &BenchArgs, out: &mut impl Write) -> Result<(), CliError> {
    let BenchArgs {
        batch, seq, runs, ..
    } = *args;
    let report = encoder(common.model(), &common.load_options()?, batch, seq, runs)?;
    if args.json {
        return json_line(out, &report);
    }
    writeln!(
        out,
        "{}: batch {batch} x {seq} tokens, {}: median {:.2} ms, {:.2} sequences/s \
         ({runs} runs); {}",
        common.model(),
        report.dtype,
        report.median_ms,
        report.sequences_per_second,
        report.setting.describe()
    )?;
    Ok(())
}

fn bench_decoding(common: &Common, args: &BenchArgs, out: &mut impl Write) -> Result<(), CliError> {
    let BenchArgs {
        batch,
        prompt_tokens,
        new_tokens,
        runs,
        ..
    } = *args;
    let mut options = vec![common.load_options()?];
    if let Some(against) = args.against {
        options.push(common.load_options_as(against)?);
    }
    let reports = decoders(
        common.model(),
        &options,
        batch,
        prompt_tokens,
        new_tokens,
        runs,
    )?;
    match (&reports[..], args.json) {
        ([report], true) => return json_line(out, report),
        ([first, second], true) => return json_line(out, &PairedDecode::new(first, second)),
        _ => {}
    }
    for report in &reports {
        writeln!(
            out,
            "{}: {batch} x ({prompt_tokens} prompt + {new_tokens} new tokens), \
             {}: prefill {:.2} ms, decode {:.2} tokens/s, {:.0}% of the {:.1} \
             GB/s triad bandwidth at {:.1} MB per step ({runs} runs); {}",
            common.model(),
            report.dtype,
            report.prefill_ms,
            report.decode_tokens_per_second,
            report.bandwidth_fraction * 100.0,
            report.triad_gb_per_second,
            report.weight_bytes_per_token as f64 / 1e6,
            report.setting.describe()
        )?;
    }
    if let [first, second] = &reports[..] {
        let paired = PairedDecode::new(first, second);
        writeln!(
            out,
            "{} vs {}: {:.2}x (median of {runs} runs paired in time: {})",
            second.dtype,
            first.dtype,
            paired.ratio,
            paired
                .ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    Ok(())
}

/// What ran the products and how much memory the process held; reported with every benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    /// The instruction set our kernels ran (`portable`, `avx2`, `avx512`), or `reference`
    /// when candle's own ops ran (`FERROFORMERS_KERNELS=reference`).
    pub isa: &'static str,
    /// The most memory resident at once (VmHWM), loading included, the bandwidth probe's
    /// arrays not; null where the system
    /// does not say (not Linux).
    pub peak_rss_bytes: Option<u64>,
    /// Resident memory once the model is loaded, before the first run (VmRSS).
    pub rss_after_load_bytes: Option<u64>,
    /// Resident memory after the last run (VmRSS): with the activations' buffers, which the
    /// allocator keeps for the next pass.
    pub rss_after_runs_bytes: Option<u64>,
}

impl Setting {
    /// Call once the model is loaded; [`Setting::runs_done`] after the runs.
    fn loaded() -> Self {
        let isa = match kernel_mode() {
            KernelMode::Reference => "reference",
            mode => Isa::detect(mode == KernelMode::Portable).name(),
        };
        Self {
            isa,
            peak_rss_bytes: None,
            rss_after_load_bytes: resident_memory().map(|m| m.current),
            rss_after_runs_bytes: None,
        }
    }

    fn runs_done(mut self) -> Self {
        let memory = resident_memory();
        self.peak_rss_bytes = memory.map(|m| m.peak);
        self.rss_after_runs_bytes = memory.map(|m| m.current);
        self
    }

    /// For the human output: `kernels avx2, peak RSS 337 MiB (after load 300, after the runs
    /// 320)`.
    pub fn describe(&self) -> String {
        let mib = |bytes: Option<u64>| match bytes {
            Some(bytes) => format!("{:.0}", bytes as f64 / (1u64 << 20) as f64),
            None => "?".to_string(),
        };
        format!(
            "kernels {}, peak RSS {} MiB (after load {}, after the runs {})",
            self.isa,
            mib(self.peak_rss_bytes),
            mib(self.rss_after_load_bytes),
            mib(self.rss_after_runs_bytes)
        )
    }
}

/// What one benchmark measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub batch: usize,
    pub seq: usize,
    pub dtype: String,
    pub runs: usize,
    pub median_ms: f64,
    pub sequences_per_second: f64,
    #[serde(flatten)]
    pub setting: Setting,
}

/// Median time of `runs` forward passes over a (batch, seq) input of random ids, after two
/// warm-up passes.
pub fn encoder(
    model: &str,
    options: &LoadOptions,
    batch: usize,
    seq: usize,
    runs: usize,
) -> Result<Report, ferroformers::Error> {
    let pretrained = ferroformers::Pretrained::open_with(model, options)?;
    let encoder = pretrained.load::<AutoModel>(options)?;
    if batch == 0 || seq == 0 || runs == 0 {
        return Err(ferroformers::Error::InvalidInput(
            "batch, seq and runs must be at least 1".to_string(),
        ));
    }
    let ids = token_ids(batch * seq, pretrained.config());
    let input = ModelInput {
        input_ids: Tensor::from_vec(ids, (batch, seq), &options.device)?,
        attention_mask: Some(Tensor::ones((batch, seq), DType::U32, &options.device)?),
        token_type_ids: None,
    };
    let setting = Setting::loaded();
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs + 2 {
        let start = Instant::now();
        let hidden = encoder.forward(&input)?.last_hidden_state;
        // Wait for the device: reading one value back ends the run.
        hidden
            .flatten_all()?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        if run >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median_ms = median(times);
    Ok(Report {
        batch,
        seq,
        dtype: options.weight_type.to_string(),
        runs,
        median_ms,
        sequences_per_second: batch as f64 * 1e3 / median_ms,
        setting: setting.runs_done(),
    })
}

fn token_ids(count: usize, config: &ferroformers::ModelConfig) -> Vec<u32> {
    let vocab = config.vocab_size();
    ferroformers::runtime::benchmark::token_ids(count, vocab)
}

/// What one decoding benchmark measured.
#[derive(Debug, Serialize)]
pub struct DecodeReport {
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub dtype: String,
    pub runs: usize,
    /// Median time to the first new token: the prompt's forward pass and one choice.
    pub prefill_ms: f64,
    /// Median new tokens per second after the first, all rows together.
    pub decode_tokens_per_second: f64,
    /// New tokens per second of each timed run, in the order they ran.
    pub decode_runs: Vec<f64>,
    /// Weight bytes one decoding step reads (linear layers and LM head).
    pub weight_bytes_per_token: usize,
    /// Memory bandwidth measured in the same run by a STREAM-like triad, GB/s: the median
    /// of measures taken before, between and after the runs.
    pub triad_gb_per_second: f64,
    /// Decoding speed as a fraction of the bandwidth ceiling: steps/s × bytes per step ÷ triad.
    pub bandwidth_fraction: f64,
    /// Memory after loading every decoder timed, and the peak, which includes the triad's
    /// three 128 MiB arrays.
    #[serde(flatten)]
    pub setting: Setting,
}

/// Greedy decoding of `new_tokens` after a `prompt_tokens` prompt in each of `batch` rows,
/// through the generation API with the KV cache, for the model loaded with each of
/// `options` in turn: every run times each of them once, one after the other, so that their
/// runs pair up in time (run i of one and run i of another saw the same state of a noisy
/// machine). Medians of `runs` after one warm-up.
pub fn decoders(
    model: &str,
    options: &[LoadOptions],
    batch: usize,
    prompt_tokens: usize,
    new_tokens: usize,
    runs: usize,
) -> Result<Vec<DecodeReport>, ferroformers::Error> {
    if batch == 0 || prompt_tokens == 0 || new_tokens < 2 || runs == 0 {
        return Err(ferroformers::Error::InvalidInput(
            "batch, prompt tokens and runs must be at least 1, new tokens at least 2".to_string(),
        ));
    }
    let decoders = options
        .iter()
        .map(|options| {
            let pretrained = ferroformers::Pretrained::open_with(model, options)?;
            let decoder = pretrained.load::<AutoModelForCausalLM>(options)?;
            Ok((decoder, pretrained.config().clone()))
        })
        .collect::<Result<Vec<_>, ferroformers::Error>>()?;
    let Some((_, config)) = decoders.first() else {
        return Ok(Vec::new());
    };
    let setting = Setting::loaded();
    let ids = token_ids(batch * prompt_tokens, config);
    let prompts =
        PromptBatch::left_padded(ids.chunks(prompt_tokens).map(<[u32]>::to_vec).collect(), 0)?;
    // No end token: every run makes exactly `new_tokens` tokens.
    let mut generation = GenerationConfig::default()
        .greedy()
        .with_max_new_tokens(new_tokens);
    generation.eos_token_id.clear();
    let mut timings = vec![(Vec::new(), Vec::new()); decoders.len()];
    let mut triad = Vec::new();
    for run in 0..runs + 1 {
        // Bandwidth drifts on shared machines: measure it between the runs, not once.
        triad.push(ferroformers::runtime::benchmark::triad_gb_per_second());
        for ((decoder, _), (prefill, decode)) in decoders.iter().zip(&mut timings) {
            let start = Instant::now();
            let mut first = None;
            Generator::without_tokenizer(decoder).generate_ids_streaming(
                &prompts,
                &generation,
                |_, _| {
                    first.get_or_insert_with(|| start.elapsed());
                },
            )?;
            let total = start.elapsed();
            let first = first.unwrap_or(total);
            if run >= 1 {
                prefill.push(first.as_secs_f64() * 1e3);
                decode.push((batch * (new_tokens - 1)) as f64 / (total - first).as_secs_f64());
            }
        }
    }
    triad.push(ferroformers::runtime::benchmark::triad_gb_per_second());
    let triad = median(triad);
    let setting = setting.runs_done();
    let reports = decoders.iter().zip(options).zip(timings);
    Ok(reports
        .map(|(((decoder, _), options), (prefill, decode))| {
            let decode_tokens_per_second = median(decode.clone());
            let weight_bytes_per_token = decoder.weight_bytes_per_token();
            let steps_per_second = decode_tokens_per_second / batch as f64;
            DecodeReport {
                batch,
                prompt_tokens,
                new_tokens,
                dtype: options.weight_type.to_string(),
                runs,
                prefill_ms: median(prefill),
                decode_tokens_per_second,
                decode_runs: decode,
                weight_bytes_per_token,
                triad_gb_per_second: triad,
                bandwidth_fraction: steps_per_second * weight_bytes_per_token as f64
                    / (triad * 1e9),
                setting: setting.clone(),
            }
        })
        .collect())
}

/// Two decoders timed in turn (`decoders` with two load options): the second's decoding
/// speed over the first's, run by run, and the median of those ratios.
#[derive(Debug, Serialize)]
pub struct PairedDecode<'a> {
    pub first: &'a DecodeReport,
    pub second: &'a DecodeReport,
    pub ratios: Vec<f64>,
    pub ratio: f64,
}

impl<'a> PairedDecode<'a> {
    pub fn new(first: &'a DecodeReport, second: &'a DecodeReport) -> Self {
        let ratios: Vec<f64> = (first.decode_runs.iter().zip(&second.decode_runs))
            .map(|(a, b)| b / a)
            .collect();
        Self {
            first,
            second,
            ratio: median(ratios.clone()),
            ratios,
        }
    }
}

/// The median of some values (the upper one of an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
