//! The options every subcommand takes (model, revision, dtype, device, threads, quiet), and
//! the load options they make.

use clap::{Args, ValueEnum};
use ferroformers::{DType, Device, HubOptions, LoadOptions, Quantization};

use crate::error::Result;

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Hub model id (org/name) or local folder.
    #[arg(short, long)]
    model: String,
    /// Branch, tag or commit of the Hub repository.
    #[arg(long, default_value = "main")]
    revision: String,
    /// Weight and activation type.
    #[arg(long, value_enum, default_value_t = CliDType::F32)]
    dtype: CliDType,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CliDType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Linear layers quantized to int8 at load (one scale per output channel), the rest f32.
    Int8,
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

    /// The Hub model id or folder of `--model`.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn load_options(&self) -> Result<LoadOptions> {
        self.load_options_as(self.dtype)
    }

    /// `--dtype` as TEI's `/info` names weight types.
    pub fn dtype_name(&self) -> &'static str {
        match self.dtype {
            CliDType::F32 => "float32",
            CliDType::F16 => "float16",
            CliDType::Bf16 => "bfloat16",
            CliDType::Int8 => "int8",
        }
    }

    pub fn load_options_as(&self, dtype: CliDType) -> Result<LoadOptions> {
        let device = match self.device {
            CliDevice::Cpu => Device::Cpu,
            CliDevice::Cuda => Device::new_cuda(0).map_err(ferroformers::Error::from)?,
            CliDevice::Metal => Device::new_metal(0).map_err(ferroformers::Error::from)?,
        };
        let (dtype, quantization) = match dtype {
            CliDType::F32 => (DType::F32, Quantization::None),
            CliDType::F16 => (DType::F16, Quantization::None),
            CliDType::Bf16 => (DType::BF16, Quantization::None),
            CliDType::Int8 => (DType::F32, Quantization::Int8),
        };
        Ok(LoadOptions::default()
            .with_hub(
                HubOptions::from_env()
                    .with_revision(self.revision.clone())
                    .with_progress(!self.quiet),
            )
            .with_dtype(dtype)
            .with_quantization(quantization)
            .with_device(device))
    }
}
