//! Semantic search: embed a few sentences and a query, rank by cosine.
//!
//!     cargo run --example semantic_search -- "How do I cook pasta?"
//!     cargo run --example semantic_search -- BAAI/bge-small-en-v1.5 "How do I cook pasta?"
//!
//! Arguments: `[MODEL] [QUERY]`, as every example takes them, with all-MiniLM-L6-v2 and a
//! pasta question by default. A single argument is the model when it names a local folder, or
//! looks like a Hub id (`org/name`, no spaces); otherwise it is the query, so the README's
//! first command (a query alone) keeps working.
//!
//! The model is fetched from the Hugging Face Hub, or read from its cache (see README.md for
//! a machine without Hub access). Pooling and normalisation come from the model's
//! sentence-transformers files.

use ferroformers::pipelines::{cosine_similarity, EmbeddingsOptions, EmbeddingsPipeline, Pipeline};
use ferroformers::LoadOptions;

const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const DEFAULT_QUERY: &str = "How do I cook pasta?";

const DOCUMENTS: &[&str] = &[
    "Boil the spaghetti in salted water for nine minutes.",
    "The stock market fell sharply after the announcement.",
    "A rust-coloured fox jumped over the sleeping dog.",
    "Rust's borrow checker prevents data races at compile time.",
    "Preheat the oven and bake the bread for forty minutes.",
    "The football match ended in a two-all draw.",
];

fn main() -> ferroformers::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, query) = match args.as_slice() {
        [] => (DEFAULT_MODEL.to_string(), DEFAULT_QUERY.to_string()),
        [one] if names_a_model(one) => (one.clone(), DEFAULT_QUERY.to_string()),
        [one] => (DEFAULT_MODEL.to_string(), one.clone()),
        [model, query @ ..] => (model.clone(), query.join(" ")),
    };
    let pipeline = EmbeddingsPipeline::from_pretrained(&model, &LoadOptions::default())?;
    let options = EmbeddingsOptions::default();
    let query_embedding = pipeline.run_one(&query, &options)?;
    let documents = pipeline.run(DOCUMENTS, &options)?;

    let mut ranked: Vec<(f32, &str)> = documents
        .iter()
        .zip(DOCUMENTS)
        .map(|(doc, text)| (cosine_similarity(&query_embedding, doc), *text))
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));

    println!("Query: {query}\n");
    for (rank, (score, text)) in ranked.iter().enumerate() {
        println!("{}. {score:.4}  {text}", rank + 1);
    }
    Ok(())
}

/// A local folder, or a Hub id such as `org/name` (ids have no spaces; queries usually do).
fn names_a_model(argument: &str) -> bool {
    std::path::Path::new(argument).is_dir()
        || (argument.contains('/') && !argument.contains(char::is_whitespace))
}
