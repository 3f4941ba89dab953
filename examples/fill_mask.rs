//! Fill-mask: the most likely words for the mask.
//!
//!     cargo run --release --example fill_mask -- distilroberta-base "Paris is the <mask> of France."

use ferroformers::pipelines::{FillMaskOptions, FillMaskPipeline, Pipeline};
use ferroformers::LoadOptions;

fn main() -> ferroformers::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or("distilroberta-base", String::as_str);
    let text = args
        .get(1)
        .map_or("Paris is the <mask> of France.", String::as_str);
    let pipeline = FillMaskPipeline::from_pretrained(model, &LoadOptions::default())?;
    for prediction in pipeline.run_one(text, &FillMaskOptions::default())? {
        println!(
            "{:.4}  {:?}  {}",
            prediction.score, prediction.token_str, prediction.sequence
        );
    }
    Ok(())
}
