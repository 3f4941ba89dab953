//! [`WeightType`]: how a model's weights are stored, the one setting that names both the dtype
//! the checkpoint is read as and the quantization of the linear layers.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;

use crate::error::{Error, Result};

/// How a model's weights are stored once loaded: a float type, or int8 linear layers.
///
/// Each has two names: the short one that `--dtype` takes (`f32`, `f16`, `bf16`, `int8`),
/// which [`FromStr`] parses and [`Display`](fmt::Display) writes, so a value printed (in a
/// benchmark report, say) can be given back as it is; and [`WeightType::name`], the name TEI's
/// `/info` and transformers' `torch_dtype` use (`float32`, ..., `int8`).
///
/// ```
/// use ferroformers::WeightType;
///
/// let weights: WeightType = "bf16".parse()?;
/// assert_eq!((weights.to_string(), weights.name()), ("bf16".to_string(), "bfloat16"));
/// # Ok::<(), ferroformers::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightType {
    /// 32-bit floats, the checkpoints' own precision for the models here.
    #[default]
    F32,
    /// 16-bit floats. On the CPU with the kernels on, the linear layers keep f32 weights,
    /// since the GEMM reads no f16.
    F16,
    /// bfloat16. On the CPU with the kernels on, the linear layers keep bf16 weights and
    /// compute with f32 activations.
    Bf16,
    /// Weight-only int8 linear layers, one scale per output channel, quantized at load from
    /// the f32 weights; everything else f32. Needs the CPU with the kernels on: elsewhere
    /// loading fails with [`Error::InvalidInput`].
    Int8,
    /// Linear layers quantized at load to llama.cpp's Q8_0 blocks (32 values, one scale),
    /// multiplied as llama.cpp multiplies them; everything else f32. CPU kernels only, as int8.
    Q8_0,
    /// Linear layers quantized at load to llama.cpp's Q4_0 blocks (32 4-bit values, one
    /// scale): a quarter of int8's bytes read per token less half. CPU kernels only.
    Q4_0,
}

impl WeightType {
    /// Every weight type, in the order `--dtype`'s help lists them.
    pub const ALL: [WeightType; 6] = [
        WeightType::F32,
        WeightType::F16,
        WeightType::Bf16,
        WeightType::Int8,
        WeightType::Q8_0,
        WeightType::Q4_0,
    ];

    /// The dtype the checkpoint's tensors are read as, which is the activations' dtype where
    /// candle's ops run (on the CPU with the kernels on, activations are f32 whatever this is).
    /// int8 reads f32 and quantizes the linear layers' weights from it.
    pub fn dtype(self) -> DType {
        match self {
            WeightType::F32 | WeightType::Int8 | WeightType::Q8_0 | WeightType::Q4_0 => DType::F32,
            WeightType::F16 => DType::F16,
            WeightType::Bf16 => DType::BF16,
        }
    }

    /// The name TEI's `/info` (`model_dtype`) and transformers (`torch_dtype`) give it:
    /// `float32`, `float16`, `bfloat16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "float32",
            WeightType::F16 => "float16",
            WeightType::Bf16 => "bfloat16",
            WeightType::Int8 => "int8",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4_0 => "q4_0",
        }
    }

    /// The short name that [`FromStr`] parses and [`Display`](fmt::Display) writes: `f32`,
    /// `f16`, `bf16` or `int8`.
    pub fn short_name(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Bf16 => "bf16",
            WeightType::Int8 => "int8",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4_0 => "q4_0",
        }
    }

    /// The llama.cpp block type the linear layers are quantized to at load, if any.
    pub fn block_type(self) -> Option<crate::loading::gguf::GgmlType> {
        use crate::loading::gguf::GgmlType;
        match self {
            WeightType::Q8_0 => Some(GgmlType::Q8_0),
            WeightType::Q4_0 => Some(GgmlType::Q4_0),
            _ => None,
        }
    }
}

impl fmt::Display for WeightType {
    /// The short name ([`WeightType::short_name`]), which parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

impl FromStr for WeightType {
    type Err = Error;

    /// A short name (`f32`, `f16`, `bf16`, `int8`, `q8_0`, `q4_0`; `q8` and `q4` as llama.cpp
    /// users shorten them); any other is an [`Error::InvalidInput`] that lists them.
    fn from_str(name: &str) -> Result<Self> {
        let name = match name {
            "q8" => "q8_0",
            "q4" => "q4_0",
            other => other,
        };
        WeightType::ALL
            .into_iter()
            .find(|weight_type| weight_type.short_name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = WeightType::ALL.iter().map(|w| w.short_name()).collect();
                Error::InvalidInput(format!(
                    "unknown weight type `{name}`: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_short_name_parses_back_and_has_its_long_name() {
        let names: Vec<_> = WeightType::ALL
            .iter()
            .map(|w| (w.to_string(), w.name(), w.dtype()))
            .collect();
        assert_eq!(
            names,
            [
                ("f32".to_string(), "float32", DType::F32),
                ("f16".to_string(), "float16", DType::F16),
                ("bf16".to_string(), "bfloat16", DType::BF16),
                ("int8".to_string(), "int8", DType::F32),
                ("q8_0".to_string(), "q8_0", DType::F32),
                ("q4_0".to_string(), "q4_0", DType::F32),
            ]
        );
        for weight_type in WeightType::ALL {
            assert_eq!(
                weight_type.to_string().parse::<WeightType>().unwrap(),
                weight_type
            );
        }
        assert_eq!(WeightType::default(), WeightType::F32);
    }

    #[test]
    fn an_unknown_name_is_an_error_that_lists_the_valid_ones() {
        // The long names are /info's, not the flag's; case matters, as for the flag.
        for name in ["float16", "F32", "fp16", "int4", ""] {
            match name.parse::<WeightType>() {
                Err(Error::InvalidInput(message)) => assert_eq!(
                    message,
                    format!(
                        "unknown weight type `{name}`: expected one of f32, f16, bf16, int8, \
                         q8_0, q4_0"
                    )
                ),
                other => panic!("{name:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn llama_cpps_short_names_are_aliases() {
        assert_eq!("q8".parse::<WeightType>().unwrap(), WeightType::Q8_0);
        assert_eq!("q4".parse::<WeightType>().unwrap(), WeightType::Q4_0);
        assert_eq!(
            WeightType::Q4_0.block_type(),
            Some(crate::loading::gguf::GgmlType::Q4_0)
        );
        assert_eq!(WeightType::Int8.block_type(), None);
    }
}
