//! `ferroformers convert`: a checkpoint written as a GGUF file, as llama.cpp's
//! `convert_hf_to_gguf.py --outtype` writes one.

use std::io::Write;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use ferroformers::loading::gguf::GgmlType;
use ferroformers::{Pretrained, GGUF_OUTTYPES};

use crate::cli::Common;
use crate::error::Result;

/// The options of `convert` besides the model's.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The type of the file's matrices (norms, biases and position embeddings stay f32):
    /// convert_hf_to_gguf.py's f32, f16, bf16 and q8_0, or q4_0 and q4_1 as
    /// `llama-quantize --pure` makes them.
    #[arg(long, value_parser = outtypes(), default_value = "f16")]
    outtype: GgmlType,
    /// The file to write.
    #[arg(long)]
    outfile: PathBuf,
}

/// `--outtype`'s values: the types a GGUF file is written in, by llama.cpp's lower-case names.
fn outtypes() -> impl TypedValueParser<Value = GgmlType> {
    PossibleValuesParser::new(GGUF_OUTTYPES.map(GgmlType::name)).try_map(|name| {
        // The possible values are these names: the search cannot fail.
        GGUF_OUTTYPES
            .into_iter()
            .find(|ty| ty.name() == name)
            .ok_or_else(|| format!("unknown type {name}"))
    })
}

/// `ferroformers convert`: one line per tensor with its type, then the file's size.
pub fn convert(common: &Common, args: ConvertArgs, out: &mut impl Write) -> Result<()> {
    let pretrained = Pretrained::open_with(common.model(), &common.load_options()?)?;
    let written = pretrained.save_gguf(args.outtype, &args.outfile)?;
    for (name, ty) in &written.tensors {
        writeln!(out, "{name}: {}", ty.name())?;
    }
    writeln!(
        out,
        "wrote {} ({} tensors, {:.1} MB)",
        args.outfile.display(),
        written.tensors.len(),
        written.bytes as f64 / 1e6
    )?;
    Ok(())
}
