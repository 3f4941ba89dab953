//! The options every subcommand takes (model, revision, dtype, device, threads, quiet), and
//! the load options they make.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use ferroformers::{Device, HubOptions, LoadOptions, WeightType};

use crate::error::Result;

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Hub model id (org/name), local folder, or a `.gguf` file.
    #[arg(short, long)]
    model: String,
    /// The GGUF file of the Hub repository or folder to load (Q4_K_M, Q8_0, ... files, as
    /// llama.cpp runs them); its metadata stands for config.json. Its quantized layers stay
    /// as stored; --dtype applies to its float tensors.
    #[arg(long)]
    gguf_file: Option<String>,
    /// Branch, tag or commit of the Hub repository.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Weight and activation type.
    #[arg(long, value_parser = weight_types(), default_value_t = WeightType::F32)]
    dtype: WeightType,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = CliDevice::Cpu)]
    device: CliDevice,
    /// Threads that run the model (default: RAYON_NUM_THREADS, else one per logical CPU).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// No progress bars and no log lines but errors (RUST_LOG, when set, still decides the log).
    #[arg(long, short)]
    quiet: bool,
}

/// `--dtype`'s values: the library's names of its weight types, each with its help line.
pub fn weight_types() -> impl TypedValueParser<Value = WeightType> {
    let values = WeightType::ALL.map(|weight_type| {
        let value = PossibleValue::new(weight_type.short_name());
        let value = match weight_type {
            WeightType::Q8_0 => value.alias("q8"),
            WeightType::Q4_0 => value.alias("q4"),
            _ => value,
        };
        value.help(match weight_type {
            WeightType::F32 => "32-bit floats",
            WeightType::F16 => "16-bit floats",
            WeightType::Bf16 => "bfloat16",
            WeightType::Int8 => {
                "Linear layers quantized to int8 at load (one scale per output channel), the rest f32"
            }
            WeightType::Q8_0 => {
                "Linear layers quantized to llama.cpp's Q8_0 at load (alias q8), the rest f32"
            }
            WeightType::Q4_0 => {
                "Linear layers quantized to llama.cpp's Q4_0 at load (alias q4), the rest f32"
            }
        })
    });
    // The possible values (aliases too) are names `WeightType` parses: the parse cannot fail.
    PossibleValuesParser::new(values).try_map(|name| name.parse::<WeightType>())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliDevice {
    /// The CPU, with this crate's own kernels.
    Cpu,
    /// The first CUDA GPU (needs the `cuda` feature).
    Cuda,
    /// The Apple GPU (needs the `metal` feature).
    Metal,
}

impl Common {
    /// The thread count asked for with `--threads`.
    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }

    /// Whether `--quiet` was given.
    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// The weight type of `--dtype`.
    pub fn weight_type(&self) -> WeightType {
        self.dtype
    }

    /// The Hub model id or folder of `--model`.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn load_options(&self) -> Result<LoadOptions> {
        self.load_options_as(self.dtype)
    }

    pub fn load_options_as(&self, weight_type: WeightType) -> Result<LoadOptions> {
        let device = match self.device {
            CliDevice::Cpu => Device::Cpu,
            CliDevice::Cuda => Device::new_cuda(0).map_err(ferroformers::Error::from)?,
            CliDevice::Metal => Device::new_metal(0).map_err(ferroformers::Error::from)?,
        };
        let options = LoadOptions::default()
            .with_hub(
                HubOptions::from_env()
                    .with_revision(self.revision.clone())
                    .with_progress(!self.quiet),
            )
            .with_weight_type(weight_type)
            .with_device(device);
        Ok(match &self.gguf_file {
            Some(file) => options.with_gguf_file(file),
            None => options,
        })
    }
}
