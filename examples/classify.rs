//! Text classification: sentiment with transformers' default model for the task.
//!
//!     cargo run --release --example classify -- distilbert-base-uncased-finetuned-sst-2-english "I love Rust"

use ferroformers::pipelines::{Pipeline, TextClassificationOptions, TextClassificationPipeline};
use ferroformers::LoadOptions;

fn main() -> ferroformers::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or(
        "distilbert-base-uncased-finetuned-sst-2-english",
        String::as_str,
    );
    let texts: Vec<&str> = match args.get(1..) {
        Some(rest) if !rest.is_empty() => rest.iter().map(String::as_str).collect(),
        _ => vec!["I love this library.", "This was a waste of time."],
    };
    let pipeline = TextClassificationPipeline::from_pretrained(model, &LoadOptions::default())?;
    for (text, labels) in texts
        .iter()
        .zip(pipeline.run(&texts, &TextClassificationOptions::default())?)
    {
        println!("{:<10} {:.4}  {text}", labels[0].label, labels[0].score);
    }
    Ok(())
}
