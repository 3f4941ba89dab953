//! Named-entity recognition, with words grouped into entities.
//!
//!     cargo run --release --example ner -- dslim/bert-base-NER "My name is Wolfgang and I live in Berlin"

use ferroformers::pipelines::{
    AggregationStrategy, Pipeline, TokenClassificationOptions, TokenClassificationPipeline,
};
use ferroformers::LoadOptions;

fn main() -> ferroformers::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map_or("dslim/bert-base-NER", String::as_str);
    let text = args
        .get(1)
        .map_or("My name is Wolfgang and I live in Berlin", String::as_str);
    let pipeline = TokenClassificationPipeline::from_pretrained(model, &LoadOptions::default())?;
    let options = TokenClassificationOptions::default()
        .with_aggregation_strategy(AggregationStrategy::Simple);
    for entity in pipeline.run_one(text, &options)? {
        let label = entity.entity_group.unwrap_or_default();
        println!(
            "{label:<6} {:.4}  {:>3}..{:<3} {}",
            entity.score, entity.start, entity.end, entity.word
        );
    }
    Ok(())
}
